"""Trial owners and liveness on a real SQLite study, without training: which RUNNING trials
count as dead, a heartbeat that outlives failing writes, reconcile leaving live runs alone,
and claims that let exactly one of several claimers have a promotion run."""

import subprocess
import sys
import threading
import time
from dataclasses import asdict

import optuna
import pytest
from mlflow.tracking import MlflowClient

from sweep.ownership import (
    Heartbeat,
    Owner,
    claim,
    fail_dead_trials,
    this_process,
    why_dead,
)
from sweep.promote import Claims
from sweep.records import BEAT_ATTR, OWNER_ATTR
from sweep.study import open_storage
from sweep.tracking import Tracker


@pytest.fixture
def stores(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = open_storage(url)
    study = optuna.create_study(study_name="own", storage=storage, direction="maximize")
    return url, storage, study


def trial_id(storage, study, number):
    return storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), number)


def test_a_trial_of_a_gone_process_on_this_host_is_dead_at_once(stores):
    url, storage, study = stores
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    owner = Owner.of(gone.pid)
    assert owner is None  # its pid is free
    live, dead = study.ask(), study.ask()
    claim(storage, trial_id(storage, study, live.number))
    recorded = {**asdict(this_process()), "pid": gone.pid}
    storage.set_trial_user_attr(trial_id(storage, study, dead.number), OWNER_ATTR, recorded)
    failed = fail_dead_trials(study, storage, grace_seconds=3600)
    assert [t.number for t in failed] == [dead.number]
    assert "is gone" in failed[0].user_attrs["error"]
    assert study.trials[live.number].state.name == "RUNNING"


def test_a_reused_pid_is_not_the_owner(stores):
    """Same pid, another start time: another process, so the owner is gone."""
    _, storage, study = stores
    trial = study.ask()
    me = this_process()
    reused = {**asdict(me), "started": me.started - 1}
    storage.set_trial_user_attr(trial_id(storage, study, trial.number), OWNER_ATTR, reused)
    assert "is gone" in why_dead(storage.get_trial(trial_id(storage, study, trial.number)), 3600)


def test_another_hosts_trial_is_dead_only_after_the_grace(stores):
    _, storage, study = stores
    trial = study.ask()
    tid = trial_id(storage, study, trial.number)
    storage.set_trial_user_attr(tid, OWNER_ATTR, {**asdict(this_process()), "host": "far"})
    storage.set_trial_user_attr(tid, BEAT_ATTR, time.time() - 100)
    frozen = storage.get_trial(tid)
    assert why_dead(frozen, grace_seconds=600) is None
    assert "no heartbeat for 10" in why_dead(frozen, grace_seconds=60)


def test_the_heartbeat_survives_failing_writes(stores, capsys):
    """Every other write raises; the beats that go through keep the trial's heartbeat fresh,
    and the thread is still beating at the end."""
    url, storage, study = stores
    trial = study.ask()
    tid = trial_id(storage, study, trial.number)
    heartbeat = Heartbeat(lambda: open_storage(url), interval=0.2)
    calls = []
    write = heartbeat.beat

    def flaky(trial_id):
        calls.append(trial_id)
        if len(calls) % 2 == 0:
            raise ConnectionError("injected")
        write(trial_id)

    heartbeat.beat = flaky
    heartbeat.add(tid)
    time.sleep(2.5)
    beats_before = len(calls)
    time.sleep(0.6)
    heartbeat.close()
    assert heartbeat.failures >= 3 and len(calls) > beats_before, "it kept beating"
    assert time.time() - storage.get_trial(tid).user_attrs[BEAT_ATTR] < 1.5
    assert "heartbeat write failed (ConnectionError: injected)" in capsys.readouterr().err


def test_reconcile_leaves_a_live_trials_run_alone(stores, tmp_path):
    url, storage, study = stores
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", study, created=True)
    live, done = study.ask(), study.ask()
    runs = {}
    for trial in (live, done):
        runs[trial.number] = tracker.start_child_run(
            f"trial-{trial.number}", {}, {"optuna.trial_number": str(trial.number)}, []).run_id
    study.tell(done, state=optuna.trial.TrialState.FAIL)
    assert tracker.reconcile() == 1
    client = MlflowClient(tracker.tracking_uri)
    assert client.get_run(runs[live.number]).info.status == "RUNNING"
    assert client.get_run(runs[done.number]).info.status == "FAILED"


def test_of_claimers_racing_for_one_run_exactly_one_wins(stores):
    """Eight threads claim the same promotion run at once, on their own storage objects:
    one claim survives, whatever the interleaving; a claim after it gets nothing."""
    url, _, study = stores
    results = []
    barrier = threading.Barrier(8)

    def claimer():
        claims = Claims("own", open_storage(url))
        barrier.wait()
        results.append(claims.claim("trial 0 seed 42 at {}"))

    threads = [threading.Thread(target=claimer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [r for r in results if r is not None]
    assert len(winners) == 1, results
    assert Claims("own", open_storage(url)).claim("trial 0 seed 42 at {}") is None

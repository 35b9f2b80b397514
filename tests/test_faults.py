"""Nothing lost under concurrency and faults: workers starting together on a new study,
heartbeat writes that fail, a trial failed by another host while it trains, Ctrl-C with
several workers, two promotes at once, and keep_models beside a registered model. After
each, the two stores agree on every trial (what `sweep check` checks)."""

import signal
import subprocess
import sys
import time

import mlflow
import optuna
import pandas as pd
import pytest
from quick_sweeps import small_experiment, sweep_main, wait_for_trial_processes
from sweep_helpers import (
    Background,
    client_for,
    explain,
    load_study,
    mlflow_runs,
    sweep_cli,
    sweep_env,
)

from bench.faults import other_host_checker, stop_checker
from sweep.agreement import disagreements
from sweep.records import OWNER_ATTR
from sweep.study import sqlite_lock

pytestmark = pytest.mark.spread  # each test stands alone (tests/conftest.py)


def assert_stores_agree(folder, study: str) -> None:
    """What `sweep check` checks (its command is tested in test_ensemble and test_many_hosts)."""
    assert disagreements(load_study(folder, study), client_for(folder)) == []


def running_runs(folder, study: str) -> list[str]:
    """The names of the study's RUNNING MLflow runs (none while its store is being made),
    read under the sweep's lock beside the database: opening a database whose tables another
    process is still making makes tables too, and the two makers collide."""
    try:
        with sqlite_lock(f"sqlite:///{folder / 'mlflow.db'}"):
            return mlflow_runs(folder, study).running()
    except Exception:  # no database, tables or experiment yet
        return []


def test_four_workers_on_a_new_study_lose_no_trial(tmp_path):
    """Four workers open a new study's stores, experiment, parent run and dataset inputs at
    the same moment, twice over: no trial fails."""
    small_experiment(tmp_path)
    for attempt in range(2):
        study = f"new{attempt}"
        result = sweep_cli(tmp_path, "run", "--trials", 4, "--workers", 4, "--experiment",
                           "exp.toml", "--study", study, timeout=900)
        assert result.returncode == 0, explain(result)
        states = [(t.number, t.state.name, t.user_attrs.get("error"))
                  for t in load_study(tmp_path, study).trials]
        assert [s for _, s, _ in states] == ["COMPLETE"] * 4, states
        assert len(mlflow_runs(tmp_path, study).parents) == 1
        assert_stores_agree(tmp_path, study)


def test_failed_heartbeat_writes_never_fail_a_live_trial(tmp_path):
    """Every second heartbeat write raises while a checker on another host (its own host
    name) fails whatever it judges dead with a 90-second grace: the trials complete. Then a
    SIGKILLed sweep's trial is failed by such a checker once its heartbeat is older than its
    grace: a 10-second one, as nothing but that dead trial is left to judge (waiting out 90
    seconds there would show nothing more). (The grace over live trials must outlast the
    store's own waits: SQLite waits up to 60 s for a lock, and with a 30-second grace a live
    trial's heartbeat was seen 31 s late on a busy machine.)"""
    small_experiment(tmp_path, epochs=3)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    checker = other_host_checker(storage, "beats", grace=90)
    try:
        sweep = subprocess.run(
            [sys.executable, "-m", "bench.faults", "worker", "--fail-every", "2", "--",
             "run", "--trials", "2", "--workers", "2", "--heartbeat", "1", "--experiment",
             "exp.toml", "--study", "beats"], cwd=tmp_path, env=sweep_env(tmp_path),
            capture_output=True, text=True, timeout=900)
    finally:
        live = stop_checker(checker)
    assert sweep.returncode == 0, explain(sweep)
    assert "heartbeat write failed (ConnectionError: injected" in sweep.stderr
    trials = load_study(tmp_path, "beats").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"], [
        t.user_attrs.get("error") for t in trials]
    assert "checker failed" not in live, live
    assert_stores_agree(tmp_path, "beats")

    checker = other_host_checker(storage, "beats", grace=10)
    try:
        doomed = Background(tmp_path, "run", "--trials", 1, "--heartbeat", 1,
                            "--experiment", "exp.toml", "--study", "beats")
        doomed.wait_for_line("trial 2 started:")
        doomed.kill()
        deadline = time.monotonic() + 240
        while load_study(tmp_path, "beats").trials[2].state.name == "RUNNING":
            assert time.monotonic() < deadline, "the dead trial was never failed"
            time.sleep(1)
    finally:
        output = stop_checker(checker)
    dead = load_study(tmp_path, "beats").trials[2]
    assert dead.state.name == "FAIL"
    separate = subprocess.run(["unshare", "--uts", "true"]).returncode == 0
    reason = "sent no heartbeat for" if separate else "is gone"  # no namespace: same host
    assert reason in dead.user_attrs["error"], dead.user_attrs
    assert "checker failed trial 2" in output and "trial 0" not in output, output
    assert dead.user_attrs[OWNER_ATTR]["pid"] == doomed.process.pid


def test_a_trial_failed_elsewhere_while_training_stops_and_logs_no_model(tmp_path):
    """A real partition: another host fails a live trial. Its process stops at the next
    evaluation, its run ends FAILED saying why, no model is logged, the sweep goes on."""
    small_experiment(tmp_path, epochs=30, extra="patience = 30")
    sweep = Background(tmp_path, "run", "--trials", 1, "--experiment", "exp.toml",
                       "--study", "split")
    sweep.wait_for_line("trial 0 started:")
    study = load_study(tmp_path, "split")
    deadline = time.monotonic() + 300
    while not study.trials[0].intermediate_values:  # training: its first epoch is reported
        assert time.monotonic() < deadline and sweep.process.poll() is None, sweep.output()
        time.sleep(0.5)
        study = load_study(tmp_path, "split")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name("split"), 0)
    storage.set_trial_user_attr(trial_id, "error", "failed by the partition test")
    storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
    assert sweep.wait(300) == 0, sweep.output()
    assert "Traceback" not in "\n".join(sweep.lines)
    trial = load_study(tmp_path, "split").trials[0]
    assert trial.state.name == "FAIL"
    assert len(trial.intermediate_values) < 30, "it stopped training"
    run = mlflow_runs(tmp_path, "split").by_name()["trial-0"]
    assert run.info.status == "FAILED"
    assert "ended as FAIL elsewhere" in run.data.tags["error"]
    assert "failed by the partition test" in run.data.tags["error"]
    assert client_for(tmp_path).search_logged_models(
        experiment_ids=[run.info.experiment_id]) == []
    assert "trial 0 FAIL" in "\n".join(sweep.lines)
    assert_stores_agree(tmp_path, "split")


def test_ctrl_c_with_two_workers_ends_both_trials(tmp_path):
    small_experiment(tmp_path, epochs=30, extra="patience = 30")
    sweep = Background(tmp_path, "run", "--trials", 2, "--workers", 2, "--experiment",
                       "exp.toml", "--study", "stop2")
    deadline = time.monotonic() + 300
    while len(running_runs(tmp_path, "stop2")) < 3:  # the parent and both trials
        assert time.monotonic() < deadline and sweep.process.poll() is None, sweep.output()
        time.sleep(0.5)
    wait_for_trial_processes(sweep, 2)  # both trials are in their processes
    interrupted = time.monotonic()
    sweep.signal(signal.SIGINT)
    assert sweep.wait(120) == 130, sweep.output()
    assert time.monotonic() - interrupted < 60, "the trials were not ended at once"
    assert sweep.group_is_gone()
    trials = load_study(tmp_path, "stop2").trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    assert all("interrupted" in t.user_attrs["error"] for t in trials)
    assert mlflow_runs(tmp_path, "stop2").running() == []
    assert_stores_agree(tmp_path, "stop2")
    small_experiment(tmp_path)
    again = sweep_cli(tmp_path, "run", "--trials", 1, "--experiment", "exp.toml",
                      "--study", "stop2")
    assert again.returncode == 0, explain(again)
    assert load_study(tmp_path, "stop2").trials[2].state.name == "COMPLETE"


def test_two_promotes_at_once_train_each_run_once(tmp_path):
    """Two `promote --control` started together split the four runs (the best trial and the
    defaults, two seeds each): each is trained once, none fails, both choose alike, and
    `best` shows the winner's margin over the defaults."""
    small_experiment(tmp_path)
    searched = sweep_cli(tmp_path, "run", "--trials", 2, "--experiment", "exp.toml",
                         "--study", "duo")
    assert searched.returncode == 0, explain(searched)
    assert load_study(tmp_path, "duo").trials[0].user_attrs["sweep.defaults"] is True
    promotes = [Background(tmp_path, "promote", "--study", "duo", "--top", 1, "--seeds", 2,
                           "--control") for _ in range(2)]
    for promote in promotes:
        assert promote.wait(900) == 0, promote.output()
    runs = [r for r in mlflow_runs(tmp_path, "duo").children
            if r.data.tags.get("sweep.stage") == "promotion"]
    pairs = sorted((r.data.tags["sweep.promotes_trial"], r.data.tags["sweep.seed"])
                   for r in runs)
    assert len(pairs) == 4 and len(set(pairs)) == 4, pairs
    assert {r.info.status for r in runs} == {"FINISHED"}
    control = [r for r in runs if r.data.tags.get("sweep.control") == "true"]
    assert sorted(r.info.run_name for r in control) == [
        "promote-defaults-seed-42", "promote-defaults-seed-43"]
    winners = [line for p in promotes for line in p.lines if line.startswith("promote: winner")]
    assert len(winners) == 2 and winners[0] == winners[1], winners
    best = sweep_main(tmp_path, "best", "--study", "duo")
    assert best.returncode == 0, explain(best)
    assert "over the defaults (promoted with seeds [42, 43]): val_accuracy " in best.stdout


def test_keep_models_never_deletes_a_registered_model(tmp_path, monkeypatch):
    """Two trials keep their models; the worst one's is registered (as `best --register`
    registers one); then keep_models = 1 and another trial: every model outside the best
    one is dropped but the registered one, which still loads and predicts. (Of the three
    trials, one at least is neither the best nor the registered one, so one is dropped.)"""
    small_experiment(tmp_path)
    first = sweep_cli(tmp_path, "run", "--trials", 2, "--experiment", "exp.toml",
                      "--study", "keep")
    assert first.returncode == 0, explain(first)
    worst = min((t for t in load_study(tmp_path, "keep").trials), key=lambda t: t.value)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(tracking)
    mlflow.register_model(worst.user_attrs["model_uri"], "demo")
    client_for(tmp_path).set_registered_model_alias("demo", "champion", "1")

    exp = tmp_path / "exp.toml"
    exp.write_text(exp.read_text().replace("[study]\n", "[study]\nkeep_models = 1\n"))
    second = sweep_cli(tmp_path, "run", "--trials", 1, "--experiment", "exp.toml",
                       "--study", "keep")
    assert second.returncode == 0, explain(second)
    completed = sorted((t for t in load_study(tmp_path, "keep").trials),
                       key=lambda t: (-t.value, t.number))
    client = client_for(tmp_path)
    for trial in completed:
        tags = client.get_run(trial.user_attrs["mlflow_run_id"]).data.tags
        kept = trial is completed[0] or trial.number == worst.number
        assert ("model_dropped" in tags) is not kept, (trial.number, worst.number)
    model = mlflow.pyfunc.load_model("models:/demo@champion")
    predicted = model.predict(pd.DataFrame({"text": ["wonderful great film", "awful film"]}))
    assert len(predicted) == 2
    assert_stores_agree(tmp_path, "keep")


@pytest.mark.parametrize("storage", ["journal.log"])
def test_journal_storage_fails_a_dead_workers_trial(tmp_path, storage):
    """Journal storage has no Optuna heartbeat; the owner check still finds the dead."""
    small_experiment(tmp_path, epochs=30, extra="patience = 30")
    doomed = Background(tmp_path, "run", "--trials", 1, "--experiment", "exp.toml",
                        "--study", "journal", "--storage", storage)
    doomed.wait_for_line("trial 0 started:")
    wait_for_trial_processes(doomed, 1)  # its trial process runs
    doomed.kill()
    small_experiment(tmp_path)
    again = sweep_cli(tmp_path, "run", "--trials", 1, "--experiment", "exp.toml",
                      "--study", "journal", "--storage", storage)
    assert again.returncode == 0, explain(again)
    study = optuna.load_study(study_name="journal", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / storage))))
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    assert "is gone" in study.trials[0].user_attrs["error"]

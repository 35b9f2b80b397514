"""Parallel workers on one study (SQLite, and PostgreSQL where CI provides it), and trials
that die of resource faults: the OOM killer (the sweep goes on), NaN loss and a full disk
(the trial process reports why). Crashes of the sweep itself (SIGKILL, Ctrl-C) are in
test_sweep.py."""

import os
import pickle
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from quick_sweeps import small_experiment, wait_for_trial_processes
from sweep_helpers import (
    Background,
    explain,
    load_study,
    mlflow_runs,
    sweep_cli,
    sweep_env,
    write_data,
    write_experiment,
)

from bertclf.run.config import TrainConfig
from sweep.processes import ChildFailed, ChildProcess
from sweep.trial import PRELOAD, TrialJob, run_job

POSTGRES_URL = os.environ.get("SWEEP_TEST_POSTGRES_URL")
POSTGRES_MLFLOW_URL = os.environ.get("SWEEP_TEST_POSTGRES_MLFLOW_URL")


pytestmark = pytest.mark.spread  # each test stands alone (tests/conftest.py)


def assert_one_run_per_trial(study: optuna.Study, client: MlflowClient, trials: int) -> None:
    """Exactly `trials` finished trials numbered 0..trials-1, one parent run, and exactly one
    finished child run per trial."""
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(trials)), numbers
    assert all(t.state.name == "COMPLETE" for t in study.trials), [
        (t.number, t.state.name, t.user_attrs.get("error")) for t in study.trials]
    experiment = client.get_experiment_by_name(study.study_name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == list(
        range(trials))
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_workers_flag_runs_exactly_the_requested_trials(tmp_path, monkeypatch):
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)  # the sweep's environment
    small_experiment(tmp_path)
    result = sweep_cli(tmp_path, "run", "--trials", 3, "--workers", 2, "--experiment",
                       "exp.toml", "--study", "par")
    assert result.returncode == 0, explain(result)
    assert_one_run_per_trial(load_study(tmp_path, "par"),
                             MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), 3)
    # Nothing from the environment reaches the stores, the artifacts or the output.
    stored = [tmp_path / "mlflow.db", tmp_path / "optuna.db",
              *(p for p in (tmp_path / "mlruns").rglob("*") if p.is_file())]
    leaks = [p for p in stored if secret.encode() in p.read_bytes()]
    assert leaks == [] and secret not in result.stdout + result.stderr, leaks


def run_two_commands(folder: Path, study: str, *store_flags: str) -> None:
    """Two `sweep run --trials 1` commands started together on one new study: both make or
    open its stores, study, defaults trial and parent run at once, and each trial runs
    while the other command's does."""
    commands = [Background(folder, "run", "--trials", 1, "--experiment", "exp.toml",
                           "--study", study, *store_flags) for _ in range(2)]
    for command in commands:
        assert command.wait(600) == 0, command.output()


def test_separate_commands_share_one_sqlite_study(tmp_path):
    write_experiment(tmp_path)
    run_two_commands(tmp_path, "shared")
    assert_one_run_per_trial(load_study(tmp_path, "shared"),
                             MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), 2)


@pytest.mark.skipif(not (POSTGRES_URL and POSTGRES_MLFLOW_URL),
                    reason="SWEEP_TEST_POSTGRES_URL and SWEEP_TEST_POSTGRES_MLFLOW_URL are "
                           "unset (.ci/run starts PostgreSQL and sets them)")
def test_separate_commands_share_one_postgres_study(tmp_path):
    write_experiment(tmp_path)
    study = f"pg-{uuid.uuid4().hex[:8]}"  # the database outlives the test
    run_two_commands(tmp_path, study, "--storage", POSTGRES_URL,
                     "--tracking-uri", POSTGRES_MLFLOW_URL)
    assert_one_run_per_trial(optuna.load_study(study_name=study, storage=POSTGRES_URL),
                             MlflowClient(POSTGRES_MLFLOW_URL), 2)


def test_trial_killed_like_the_oom_killer_fails_and_the_sweep_goes_on(tmp_path):
    write_experiment(tmp_path)
    sweep = Background(tmp_path, "run", "--trials", 2, "--experiment", "exp.toml",
                       "--study", "oom")
    sweep.wait_for_line("trial 0 started:")
    victims = wait_for_trial_processes(sweep, 1, timeout=120)
    time.sleep(3)  # into its imports or training
    os.kill(victims[0], signal.SIGKILL)
    assert sweep.wait(600) == 0, sweep.output()
    first, second = load_study(tmp_path, "oom").trials
    assert first.state.name == "FAIL"
    assert "died (signal SIGKILL)" in first.user_attrs["error"]
    assert second.state.name == "COMPLETE"
    runs = mlflow_runs(tmp_path, "oom").by_name()
    assert runs["trial-0"].info.status == "FAILED"
    assert "SIGKILL" in runs["trial-0"].data.tags["error"]
    assert runs["trial-1"].info.status == "FINISHED"


def trial_job(folder: Path, **overrides) -> TrialJob:
    """A one-epoch tiny trial's job on a small TSV, with its MLflow run in a SQLite store."""
    data = write_data(folder / "data.tsv")
    config = TrainConfig(data=str(data), encoder="tiny", seq_len=32, batch_size=16, epochs=1,
                         max_examples=60, precision="float32", **overrides)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment(
        "faults", artifact_location=(folder / "mlruns").as_uri()))
    return TrialJob(config=asdict(config), dataset=config.load_data(), run_id=run.info.run_id,
                    tracking_uri=uri)


def test_nan_loss_fails_the_trial_with_the_reason(tmp_path):
    """A trial process whose loss turns NaN reports why, its TrainingError arriving in the
    sweep as itself (the sweep records any trial failure in both stores: test_sweep.py's
    failing trial)."""
    from bertclf.errors import TrainingError

    job = trial_job(tmp_path, lr=1e9, lr_schedule="constant")
    with pytest.raises(TrainingError, match="training loss became NaN"):
        ChildProcess(PRELOAD).call(run_job, job)


def test_a_dead_trial_process_is_a_child_failed_with_its_signal():
    """A process that dies without answering (the OOM killer's SIGKILL) is ChildFailed."""
    process = ChildProcess()
    process.process.kill()
    with pytest.raises(ChildFailed, match="SIGKILL"):
        process.call(print, "never")


FILE_SIZE_LIMIT = """
import pickle, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]),) * 2)
from sweep.trial import run_job
run_job(pickle.loads(open(sys.argv[1], "rb").read()))
"""


def test_full_disk_while_saving_fails_the_trial_and_keeps_the_store(tmp_path):
    """Files may not grow past 2 MB: the store stays below it, the exported model's 4 MB of
    weights do not, so the trial fails saving its model, as on a full disk; its run and
    the curves it logged before stay readable."""
    from bertclf.encoders.map import get_encoder, install_builtins

    install_builtins(get_encoder("tiny"))  # built before the limit applies
    job = trial_job(tmp_path)
    (tmp_path / "job.pickle").write_bytes(pickle.dumps(job))
    result = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_LIMIT, str(tmp_path / "job.pickle"),
         str(2 * 1024 * 1024)],
        cwd=tmp_path, env=sweep_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "File too large" in result.stderr, result.stderr[-3000:]
    client = MlflowClient(job.tracking_uri)
    assert [m.step for m in client.get_metric_history(job.run_id, "val_accuracy")] == [1]
    assert "test_accuracy" in client.get_run(job.run_id).data.metrics

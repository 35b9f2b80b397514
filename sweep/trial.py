"""The work of one trial: fine-tune, then log curves, metrics, plots and the model to its run.

It runs in a child process by default (TensorFlow does not give memory back between
models) or in the sweep's own process for debugging; the result, a pruning decision or
an error goes back to the parent either way.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna

from bertclf.data import Dataset

MODEL_FILE = Path(__file__).with_name("mlflow_model.py")
PIP_REQUIREMENTS = ["tensorflow==2.21.0", "tensorflow-text==2.21.1", "pandas", "numpy"]


class TrialFailed(RuntimeError):
    """The trial raised or its process died; the message says why."""


@dataclass
class TrialJob:
    """Everything a trial process needs: no live objects, so it pickles."""

    config: dict
    dataset: Dataset
    run_id: str
    tracking_uri: str
    storage_url: str
    study_name: str
    trial_id: int


def _peak_rss_mb() -> float:
    """This process's own peak resident memory (ru_maxrss would include the peak of the
    parent it was spawned from)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _epoch_logger(client, run_id: str, started: float):
    import tensorflow as tf

    from sweep.tracking import log_metrics

    class EpochLogger(tf.keras.callbacks.Callback):
        """Per-epoch loss/accuracy (train and validation) with the epoch as step, and the
        trial's start-up time: from the job's start to the start of training (imports,
        stores, cached ids, model build)."""

        startup_seconds = float("nan")

        def on_train_begin(self, logs=None):
            self.startup_seconds = time.perf_counter() - started

        def on_epoch_end(self, epoch, logs=None):
            log_metrics(client, run_id, logs or {}, step=epoch + 1)

    return EpochLogger()


def _log_model(job: TrialJob, saved_model: Path) -> str:
    import mlflow

    mlflow.set_tracking_uri(job.tracking_uri)
    # The model takes a column of raw strings; MLflow's type-hint advice does not apply.
    warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")
    with mlflow.start_run(run_id=job.run_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(MODEL_FILE),
                                       artifacts={"saved_model": str(saved_model)},
                                       pip_requirements=PIP_REQUIREMENTS)
    return info.model_uri


def run_job(job: TrialJob, trial: optuna.Trial | None = None) -> dict:
    """Train the job's config with pruning and per-epoch logging; log everything to the run."""
    started = time.perf_counter()
    from mlflow.tracking import MlflowClient
    from optuna_integration import TFKerasPruningCallback

    from bertclf.artifacts import save_run
    from bertclf.config import TrainConfig
    from bertclf.train import train
    from sweep.study import open_storage
    from sweep.tracking import log_metrics

    if trial is None:
        study = optuna.load_study(study_name=job.study_name,
                                  storage=open_storage(job.storage_url, heartbeat=None))
        trial = optuna.trial.Trial(study, job.trial_id)
    client = MlflowClient(job.tracking_uri)
    logger = _epoch_logger(client, job.run_id, started)
    callbacks = [logger, TFKerasPruningCallback(trial, "val_accuracy")]
    result = train(TrainConfig(**job.config), dataset=job.dataset, callbacks=callbacks)

    outcome = {"best_val_accuracy": result.val_accuracy, "best_val_loss": result.val_loss,
               "test_accuracy": result.test_accuracy, "test_loss": result.test_loss,
               "best_epoch": result.best_epoch, "train_seconds": result.train_seconds,
               "startup_seconds": logger.startup_seconds, "peak_rss_mb": _peak_rss_mb()}
    log_metrics(client, job.run_id, outcome)  # the per-epoch curves are logged with steps
    for name, value in result.hardware.items():
        client.set_tag(job.run_id, f"hardware.{name}", str(value))
    with tempfile.TemporaryDirectory(prefix="sweep-trial-") as tmp:
        paths = save_run(result, tmp)
        for name in ("metrics", "curves"):
            client.log_artifact(job.run_id, str(paths[name]))
        outcome["model_uri"] = _log_model(job, paths["saved_model"])
    return outcome


def _die_with_parent() -> None:
    """End this process within a second of the sweep process dying, even SIGKILLed.

    (Linux's PR_SET_PDEATHSIG would follow the thread that started the process, and a
    sweep's worker threads come and go while the processes they start live on.)"""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _preload() -> None:
    """Import what every trial needs (TensorFlow above all) before the job arrives."""
    import mlflow  # noqa: F401
    import optuna_integration  # noqa: F401

    import bertclf.artifacts  # noqa: F401
    import bertclf.train  # noqa: F401


def _child_main(connection) -> None:
    _die_with_parent()
    # Ctrl-C reaches the whole process group: the parent decides, and ends this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _preload()
    job = connection.recv()
    try:
        connection.send(("ok", run_job(job)))
    except optuna.TrialPruned as e:
        connection.send(("pruned", str(e)))
    except BaseException as e:  # everything must reach the parent, not just Exceptions
        traceback.print_exc()
        connection.send(("error", f"{type(e).__name__}: {e}"))


class TrialProcess:
    """A spawned process that starts importing TensorFlow at once, then runs one job."""

    def __init__(self):
        context = multiprocessing.get_context("spawn")
        self.connection, child_end = context.Pipe()
        self.process = context.Process(target=_child_main, args=(child_end,), daemon=True)
        self.process.start()
        child_end.close()  # so recv() sees EOF if the child dies without answering

    def run(self, job: TrialJob) -> dict:
        """Run `job`; raise TrialPruned or TrialFailed as the trial did."""
        try:
            self.connection.send(job)
            message = self.connection.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            message = None
        except BaseException:  # Ctrl-C: stop the trial's process before giving up the trial
            self.process.kill()
            self.process.join()
            raise
        self.process.join()
        if message is None:
            code = self.process.exitcode
            how = (f"signal {signal.Signals(-code).name}" if code and code < 0
                   else f"exit code {code}")
            raise TrialFailed(f"trial process died ({how}), e.g. out of memory")
        kind, payload = message
        if kind == "pruned":
            raise optuna.TrialPruned(payload)
        if kind == "error":
            raise TrialFailed(payload)
        return payload

    def close(self) -> None:
        """End a process that got no job (it holds nothing worth waiting for)."""
        self.process.kill()
        self.process.join()
        self.connection.close()


class TrialProcesses:
    """A fresh process for every trial, the next one started while the current one trains,
    so that its TensorFlow imports are done by the time it gets its job."""

    def __init__(self):
        self._spares: list[TrialProcess] = []
        self._lock = threading.Lock()  # workers run trials from several threads

    def run(self, job: TrialJob) -> dict:
        with self._lock:
            process = self._spares.pop() if self._spares else TrialProcess()
            self._spares.append(TrialProcess())
        return process.run(job)

    def close(self) -> None:
        with self._lock:
            for spare in self._spares:
                spare.close()
            self._spares.clear()


def run_in_child(job: TrialJob) -> dict:
    """Run the job in one fresh spawned process (imports included, nothing started ahead)."""
    return TrialProcess().run(job)

"""The work of one trial, in its own process or the sweep's: fine-tune, report every epoch
(to Optuna for pruning, to MLflow as curves), then log metrics, curves and the model."""

from __future__ import annotations

import resource
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna

from bertclf.datasets import Dataset

MODEL_FILE = Path(__file__).with_name("mlflow_model.py")
PIP_REQUIREMENTS = ["tensorflow==2.21.0", "tensorflow-text==2.21.1", "pandas", "numpy"]
# What a trial process imports before its job arrives (TensorFlow above all).
PRELOAD = ("bertclf.tf_start", "mlflow", "bertclf.artifacts", "bertclf.train")


@dataclass
class TrialJob:
    """Everything a trial process needs: no live objects, so it pickles. With a study and
    trial id, each epoch's validation accuracy goes to that Optuna trial, which may prune."""

    config: dict
    dataset: Dataset
    run_id: str
    tracking_uri: str
    storage_url: str | None = None
    study_name: str | None = None
    trial_id: int | None = None
    pruner: object | None = None  # the experiment's sweep.experiment.Pruner; None: never prune
    max_epochs: int = 1


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


def _callbacks(job: TrialJob, trial: optuna.Trial | None, started: float):
    """Keras callbacks: per-epoch curves to the run (step = epoch, from 1), the trial's
    start-up time, and the epoch's validation accuracy to Optuna (same step), which prunes."""
    import tensorflow as tf
    from mlflow.tracking import MlflowClient

    from sweep.tracking import log_metrics

    client = MlflowClient(job.tracking_uri)

    class EpochReport(tf.keras.callbacks.Callback):
        startup_seconds = float("nan")
        pruned_at_epoch: int | None = None

        def on_train_begin(self, logs=None):
            self.startup_seconds = time.perf_counter() - started

        def on_epoch_end(self, epoch, logs=None):
            log_metrics(client, job.run_id, logs or {}, step=epoch + 1)
            if trial is None:
                return
            trial.report(float(logs["val_accuracy"]), step=epoch + 1)
            if trial.should_prune():
                self.pruned_at_epoch = epoch + 1
                raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}")

    return client, EpochReport()


def _optuna_trial(job: TrialJob) -> optuna.Trial | None:
    """The job's Optuna trial, reopened with the experiment's pruner."""
    if job.trial_id is None:
        return None
    from sweep.study import make_pruner, open_storage

    pruner = (make_pruner(job.pruner, job.max_epochs) if job.pruner is not None
              else optuna.pruners.NopPruner())
    study = optuna.load_study(study_name=job.study_name,
                              storage=open_storage(job.storage_url, heartbeat=None),
                              pruner=pruner)
    return optuna.trial.Trial(study, job.trial_id)


def _log_model(job: TrialJob, saved_model: Path) -> str:
    import mlflow

    from sweep.tracking import mlflow_stores

    # The model takes a column of raw strings; MLflow's type-hint advice does not apply.
    warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")
    with mlflow_stores(job.tracking_uri), mlflow.start_run(run_id=job.run_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(MODEL_FILE),
                                       artifacts={"saved_model": str(saved_model)},
                                       pip_requirements=PIP_REQUIREMENTS)
    return info.model_uri


def run_job(job: TrialJob, trial: optuna.Trial | None = None) -> dict:
    """Train the job's config, reporting every epoch, and log everything to its run. Returns
    the outcome: {"pruned_at_epoch": N} for a pruned trial, else the run's metrics and its
    model's URI. `trial` is the live Optuna trial in the sweep's own process."""
    started = time.perf_counter()
    from bertclf.artifacts import save_run
    from bertclf.config import TrainConfig
    from bertclf.train import train
    from sweep.tracking import log_metrics

    trial = trial or _optuna_trial(job)
    client, report = _callbacks(job, trial, started)
    try:
        result = train(TrainConfig(**job.config), dataset=job.dataset, callbacks=[report])
    except optuna.TrialPruned:
        return {"pruned_at_epoch": report.pruned_at_epoch}

    outcome = {"best_val_accuracy": result.val_accuracy, "best_val_loss": result.val_loss,
               "test_accuracy": result.test_accuracy, "test_loss": result.test_loss,
               "best_epoch": result.best_epoch, "train_seconds": result.train_seconds,
               "startup_seconds": report.startup_seconds, "peak_rss_mb": _peak_rss_mb()}
    log_metrics(client, job.run_id, outcome)  # the per-epoch curves are logged with steps
    for name, value in result.hardware.items():
        client.set_tag(job.run_id, f"hardware.{name}", str(value))
    with tempfile.TemporaryDirectory(prefix="sweep-trial-") as tmp:
        paths = save_run(result, tmp)
        for name in ("metrics", "curves"):
            client.log_artifact(job.run_id, str(paths[name]))
        outcome["model_uri"] = _log_model(job, paths["saved_model"])
    return outcome

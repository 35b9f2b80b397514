"""The work of one trial, in its own process or the sweep's: fine-tune, report every
evaluation (to Optuna for pruning, to MLflow as curves), then log metrics, curves and the
model."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import optuna

from bertclf.data.datasets import Dataset
from sweep.records import ERROR_ATTR

MODEL_FILE = Path(__file__).with_name("mlflow_model.py")
# What a logged model needs to load: the versions this trial ran with.
PIP_REQUIREMENTS = [f"{name}=={version(name)}" for name in ("tensorflow", "tensorflow-text")] + [
    "pandas", "numpy"]
# What a trial process imports before its job arrives (TensorFlow above all; bertclf.run.outputs
# imports matplotlib and the export module only where save_run uses them, so they are named).
PRELOAD = ("bertclf.tf_start", "mlflow", "bertclf.run.outputs", "bertclf.run.export",
           "matplotlib.pyplot", "bertclf.run.train")


class PrunedAt(optuna.TrialPruned):
    """The pruner stopped the trial after evaluation `step` (in epoch `epoch`)."""

    expected = True  # how a trial ends, not a failure: its process prints no traceback

    def __init__(self, step: int, epoch: float):
        super().__init__(f"pruned after step {step} (epoch {epoch:g})")
        self.step, self.epoch = step, epoch

    def __reduce__(self):  # arrives in the sweep's process as itself
        return type(self), (self.step, self.epoch)


class TrialLost(RuntimeError):
    """The trial was ended in the study by another process (its owner was taken for dead);
    this process stops training it and logs no model."""


@dataclass(frozen=True)
class TrialAddress:
    """Where a trial process reports: the Optuna trial by study and number, and the pruner."""

    storage_url: str
    study_name: str
    trial_number: int
    pruner: object | None = None  # the experiment's sweep.experiment.Pruner; None: never prune
    max_resource: int = 1  # the most evaluation steps a trial may run (Hyperband's resource)


@dataclass
class TrialJob:
    """Everything a trial process needs: no live objects, so it pickles. With an address,
    each evaluation's validation accuracy goes to that Optuna trial, which may prune."""

    config: dict
    dataset: Dataset
    run_id: str
    tracking_uri: str
    trial: TrialAddress | None = None


def _peak_rss_mb() -> float:
    """This process's own peak resident memory (VmHWM: ru_maxrss would include the peak of
    the process it was started from)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class LogCurves:
    """Each evaluation's metrics to the MLflow run, at the evaluation's step."""

    def __init__(self, tracking_uri: str, run_id: str):
        from mlflow.tracking import MlflowClient

        self.client, self.run_id = MlflowClient(tracking_uri), run_id

    def __call__(self, step: int, logs: dict) -> None:
        from sweep.tracking import log_metrics

        log_metrics(self.client, self.run_id,
                    {k: v for k, v in logs.items() if isinstance(v, int | float)}, step=step)


class ReportAndPrune:
    """Each evaluation's validation accuracy to the Optuna trial (same step as MLflow's);
    raises PrunedAt when the experiment's pruner says stop, TrialLost when the trial was
    ended elsewhere. Only Optuna's public storage API is used."""

    def __init__(self, address: TrialAddress):
        from sweep.study import make_pruner, open_storage

        self.storage = open_storage(address.storage_url)
        pruner = (make_pruner(address.pruner, address.max_resource) if address.pruner
                  else optuna.pruners.NopPruner())
        self.study = optuna.load_study(study_name=address.study_name, storage=self.storage,
                                       pruner=pruner)
        self.trial_id = self.storage.get_trial_id_from_study_id_trial_number(
            self.storage.get_study_id_from_name(address.study_name), address.trial_number)

    def __call__(self, step: int, logs: dict) -> None:
        from sweep.ownership import retry

        value = float(logs["val_accuracy"])
        try:
            retry(lambda: self.storage.set_trial_intermediate_value(self.trial_id, step, value))
        except optuna.exceptions.UpdateFinishedTrialError:
            raise self.lost() from None
        if self.study.pruner.prune(self.study, self.storage.get_trial(self.trial_id)):
            raise PrunedAt(step, float(logs.get("epoch", step)))

    def lost(self) -> TrialLost:
        trial = self.storage.get_trial(self.trial_id)
        why = trial.user_attrs.get(ERROR_ATTR, "")
        return TrialLost(f"the trial was ended as {trial.state.name} elsewhere while it "
                         f"trained{f' ({why})' if why else ''}")

    def check_running(self) -> None:
        """Raise TrialLost if the trial is no longer running (before its model is logged)."""
        if self.storage.get_trial(self.trial_id).state.is_finished():
            raise self.lost()


def log_saved_model(tracking_uri: str, run_id: str, saved_model: Path) -> str:
    """Log the exported model at `saved_model` to run `run_id` as the pyfunc model of
    `mlflow_model.py`; returns its models:/ URI."""
    import mlflow

    from sweep.tracking import mlflow_stores

    with mlflow_stores(tracking_uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(MODEL_FILE),
                                       artifacts={"saved_model": str(saved_model)},
                                       pip_requirements=PIP_REQUIREMENTS)
    return info.model_uri


def run_job(job: TrialJob) -> dict:
    """Train the job's config, reporting every evaluation, and log everything to its run.
    Returns the run's metrics and its model's URI; raises PrunedAt if the pruner stopped it,
    TrialLost if the trial was ended elsewhere."""
    arrived = time.perf_counter()
    import tensorflow as tf

    from bertclf.run.config import TrainConfig
    from bertclf.run.outputs import save_run
    from bertclf.run.train import train
    from sweep.tracking import log_metrics

    curves = LogCurves(job.tracking_uri, job.run_id)
    report = ReportAndPrune(job.trial) if job.trial else None

    def on_evaluation(step: int, logs: dict) -> None:
        curves(step, logs)
        if report:
            report(step, logs)

    fit_started = []  # the trial's start-up ends where its first training step begins
    startup = tf.keras.callbacks.LambdaCallback(
        on_train_begin=lambda logs: fit_started.append(time.perf_counter()))
    result = train(TrainConfig(**job.config), dataset=job.dataset, callbacks=[startup],
                   on_evaluation=on_evaluation)
    outcome = {"best_val_accuracy": result.val_accuracy, "best_val_loss": result.val_loss,
               "test_accuracy": result.test_accuracy, "test_loss": result.test_loss,
               "best_epoch": result.best_epoch, "train_seconds": result.train_seconds,
               "startup_seconds": fit_started[0] - arrived, "peak_rss_mb": _peak_rss_mb()}
    client = curves.client
    log_metrics(client, job.run_id, outcome)  # the curves were logged with their steps
    hardware = {**result.hardware, "cuda_visible_devices": os.environ.get(
        "CUDA_VISIBLE_DEVICES", "")}
    for name, value in hardware.items():
        client.set_tag(job.run_id, f"hardware.{name}", str(value))
    with tempfile.TemporaryDirectory(prefix="sweep-trial-") as tmp:
        paths = save_run(result, tmp)
        for name in ("metrics", "curves"):
            client.log_artifact(job.run_id, str(paths[name]))
        if report:
            report.check_running()
        outcome["model_uri"] = log_saved_model(job.tracking_uri, job.run_id,
                                                paths["saved_model"])
    return outcome

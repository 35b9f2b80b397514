"""The MLflow side: one experiment and one parent run per study, a child run per trial or
promotion run with its parameters, datasets and curves.

The parent run id lives in the study's user attributes, so every later command on the study,
and every worker, reopens the same parent instead of making a new one.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlflow
import optuna
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from bertclf.data.datasets import SPLIT_NAMES, Dataset, fingerprint
from bertclf.encoders.map import get_encoder
from bertclf.masking import mask
from bertclf.run.config import TrainConfig
from sweep.ownership import retry
from sweep.records import (
    BEST_TRIAL_TAG,
    DROPPED_TAG,
    ERROR_ATTR,
    ERROR_TAG,
    EXPERIMENT_FILE_TAG,
    PARENT_RUN_ATTR,
    PARENT_RUN_TAG,
    RUN_ID_ATTR,
    STATE_TAG,
    STUDY_TAG,
    TEST_ACCURACY_ATTR,
    TRIAL_NUMBER_TAG,
    WINNER_ATTR,
)
from sweep.study import retry_schema_race, sqlite_path

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store
PARENT_WAIT_SECONDS = 30
# Optuna trial state -> MLflow run status
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}
DATA_CONTEXTS = {"train": "training", "validation": "validation", "test": "test"}


def log_metrics(client: MlflowClient, run_id: str, values: dict[str, float],
                step: int = 0) -> None:
    """Log several metrics at one step in one call."""
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])


@contextmanager
def mlflow_stores(tracking_uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking and registry URIs set to `tracking_uri` in the block."""
    saved = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved[0])
        mlflow.set_registry_uri(saved[1])


def run_params(config: TrainConfig) -> dict:
    """Every training parameter of a run, with the encoder's handles."""
    spec = get_encoder(config.encoder, config.encoder_map)
    return {**asdict(config), "encoder_handle": spec.encoder,
            "preprocess_handle": spec.preprocess}


def dataset_inputs(dataset: Dataset) -> list[DatasetInput]:
    """The three splits as MLflow dataset inputs (metadata only: the texts stay where they
    are): named after the source, with a digest of the split's texts and labels, so another
    split, sample or seed shows another digest."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import HTTPDatasetSource, LocalArtifactDatasetSource
    from mlflow.types import ColSpec, DataType, Schema

    from bertclf.data.datasets import imdb_url

    if dataset.source == "imdb":
        source, name = HTTPDatasetSource(imdb_url()), "imdb"
    else:
        source, name = LocalArtifactDatasetSource(dataset.source), Path(dataset.source).name
    schema = Schema([ColSpec(DataType.string, "text"), ColSpec(DataType.long, "label")])
    inputs = []
    for split in SPLIT_NAMES:
        meta = MetaDataset(source, name=f"{name}:{split}",
                           digest=fingerprint(getattr(dataset, split))[:16], schema=schema)
        inputs.append(DatasetInput(meta._to_mlflow_entity(),
                                   [InputTag("mlflow.data.context", DATA_CONTEXTS[split])]))
    return inputs


def ui_link(tracking_uri: str, experiment_id: str) -> str:
    """An experiment in the MLflow UI, on its Model-training page (MLflow 3's UI otherwise
    opens the GenAI workflow, an empty traces page for a sweep); passwords masked."""
    remote = tracking_uri.startswith(("http://", "https://"))
    base = tracking_uri.rstrip("/") if remote else LOCAL_UI
    link = f"{base}/#/experiments/{experiment_id}?workflowType=machine_learning"
    if remote:
        return mask(link)
    return mask(f"{link} (serve it with: mlflow ui --backend-store-uri {tracking_uri})")


def study_ui_link(tracking_uri: str, study_name: str) -> str | None:
    """The link to a study's experiment, if the tracking store holds one (creating nothing)."""
    database = sqlite_path(tracking_uri)
    if database is not None and not database.is_file():
        return None
    experiment = MlflowClient(tracking_uri).get_experiment_by_name(study_name)
    return ui_link(tracking_uri, experiment.experiment_id) if experiment else None


@dataclass
class ChildRun:
    """A child run being recorded; what ends it: its state, error and extra tags."""

    run_id: str
    state: str = "COMPLETE"
    error: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


class Tracker:
    """MLflow runs for one study: opens (or reopens) the parent, makes and ends child runs."""

    def __init__(self, tracking_uri: str, study: optuna.Study, created: bool = True):
        self.tracking_uri = tracking_uri
        self.study = study

        def open_experiment() -> tuple[MlflowClient, str]:
            client = MlflowClient(tracking_uri)
            experiment = client.get_experiment_by_name(study.study_name)
            if experiment:
                return client, experiment.experiment_id
            # MLflow versions that read this tag open the experiment on its runs.
            return client, client.create_experiment(
                study.study_name, tags={"mlflow.experimentKind": "custom_model_development"})

        self.client, self.experiment_id = retry_schema_race(
            open_experiment, f"MLflow tracking at {tracking_uri}", tracking_uri)
        self.parent_run_id = self._parent_run(created)

    def _parent_run(self, created: bool) -> str:
        # Of several workers starting a new study at once, the one that created the study
        # makes the parent run; the others wait for its id to appear.
        deadline = time.monotonic() + (0 if created else PARENT_WAIT_SECONDS)
        while True:
            run_id = self.study.user_attrs.get(PARENT_RUN_ATTR)  # read afresh each time
            if run_id or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        if run_id:
            try:
                if self.client.get_run(run_id).info.lifecycle_stage == "active":
                    return run_id
            except Exception:  # deleted or from another tracking store: make a new parent
                pass
        run = self.client.create_run(self.experiment_id, run_name=self.study.study_name,
                                     tags={STUDY_TAG: self.study.study_name})
        self.study.set_user_attr(PARENT_RUN_ATTR, run.info.run_id)
        return run.info.run_id

    def ui_link(self) -> str:
        """The study's experiment in the MLflow UI (see `ui_link`)."""
        return ui_link(self.tracking_uri, self.experiment_id)

    def open_parent(self, experiment_file: str) -> None:
        """Mark the parent RUNNING for this session of work on the study."""
        self.client.update_run(self.parent_run_id, status="RUNNING")
        self.client.set_tag(self.parent_run_id, EXPERIMENT_FILE_TAG, experiment_file)

    def start_child_run(self, name: str, params: dict, tags: dict[str, str],
                        datasets: list[DatasetInput]) -> ChildRun:
        """A new child run of the parent holding `params` and `datasets`; end it with
        `end_run`."""
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={PARENT_RUN_TAG: self.parent_run_id, **tags})
        record = ChildRun(run.info.run_id)
        self.client.log_batch(record.run_id,
                              params=[Param(k, str(v)) for k, v in params.items()])
        # Workers starting together log the same datasets at once: the loser of MLflow's
        # unique-key race finds them there when it tries again.
        retry(lambda: self.client.log_inputs(record.run_id, datasets))
        return record

    def start_trial_run(self, trial: optuna.Trial, config: TrainConfig,
                        datasets: list[DatasetInput]) -> ChildRun:
        """The child run of `trial`, named trial-N; its id goes to the trial."""
        tags = {STUDY_TAG: self.study.study_name, TRIAL_NUMBER_TAG: str(trial.number),
                STATE_TAG: "RUNNING"}
        params = {**run_params(config), "trial_number": trial.number}
        run = self.start_child_run(f"trial-{trial.number}", params, tags, datasets)
        trial.set_user_attr(RUN_ID_ATTR, run.run_id)
        return run

    def end_run(self, run_id: str, state: str, error: str | None = None,
                tags: dict[str, str] | None = None) -> None:
        """Close a child run with its final Optuna state (and error, and extra tags)."""
        run_tags = [RunTag(k, v) for k, v in {**(tags or {}), STATE_TAG: state}.items()]
        if error:
            run_tags.append(RunTag(ERROR_TAG, error[:5000]))
        if run_tags:
            self.client.log_batch(run_id, tags=run_tags)
        self.client.set_terminated(run_id, RUN_STATUS.get(state, "FAILED"))

    def log_best(self, step: int) -> None:
        """Best-so-far validation (and its test) accuracy on the parent run."""
        try:
            best = self.study.best_trial
        except ValueError:  # no completed trial yet
            return
        values = {"best_val_accuracy": best.value}
        if TEST_ACCURACY_ATTR in best.user_attrs:
            values["best_test_accuracy"] = best.user_attrs[TEST_ACCURACY_ATTR]
        log_metrics(self.client, self.parent_run_id, values, step=step)
        self.client.set_tag(self.parent_run_id, BEST_TRIAL_TAG, str(best.number))

    def model_is_needed(self, run_id: str) -> str | None:
        """Why the logged model of `run_id` must stay (registered, or the promoted one
        `best` exports), or None."""
        versions = self.client.search_model_versions(f"run_id = '{run_id}'")
        if versions:
            v = versions[0]
            return f"registered as {v.name} version {v.version}"
        promotion = self.study.user_attrs.get(WINNER_ATTR) or {}
        if promotion.get("run_id") == run_id:
            return "the promoted winner's model"
        return None

    def drop_model(self, run_id: str, model_uri: str) -> bool:
        """Delete a logged model's files from the artifact store (the run, its metrics and
        curves stay) and tag the run `model_dropped`; a model that is registered or
        promoted stays. Idempotent: a model already gone is no error. True if dropped now."""
        from mlflow.exceptions import MlflowException
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        run = self.client.get_run(run_id)
        if run.data.tags.get(DROPPED_TAG) == "true":
            return False
        if self.model_is_needed(run_id):
            return False
        model_id = model_uri.removeprefix("models:/")
        try:
            location = self.client.get_logged_model(model_id).artifact_location
            # mlflow-artifacts:/ locations (a tracking server's proxy) are reached through
            # the tracking URI, which must be this study's, not the process default.
            get_artifact_repository(location, tracking_uri=self.tracking_uri,
                                    registry_uri=self.tracking_uri).delete_artifacts()
            self.client.delete_logged_model(model_id)
        except MlflowException as e:  # deleted by another worker, or before an interrupt
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        self.client.set_tag(run_id, DROPPED_TAG, "true")
        return True

    def close_parent(self, status: str = "FINISHED") -> None:
        """Attach the study plots and end the parent run, unless trials of the study are
        still running (other workers'): then it stays RUNNING for the last to end it."""
        self._log_study_plots()
        running = self.study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.RUNNING])
        if running:
            print(f"sweep: {len(running)} trial(s) of the study still running elsewhere: its "
                  "MLflow parent run stays RUNNING until the last of them ends", flush=True)
            return
        self.client.set_terminated(self.parent_run_id, status)

    def _log_study_plots(self) -> None:
        completed = [t for t in self.study.trials if t.state.name == "COMPLETE"]
        if not completed:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as optuna_plots

        plots = {"optimization_history.png": optuna_plots.plot_optimization_history}
        if len(completed) >= 2 and self.study.trials[0].distributions:
            plots["param_importances.png"] = optuna_plots.plot_param_importances
        for name, plot in plots.items():
            try:
                with warnings.catch_warnings():  # e.g. Optuna's "importances will be equal"
                    warnings.simplefilter("ignore")
                    axes = plot(self.study)
            except (ValueError, RuntimeError) as e:  # e.g. all parameters fixed
                print(f"sweep: skipped {name}: {e}")
                continue
            figure = axes.get_figure() if hasattr(axes, "get_figure") else axes
            self.client.log_figure(self.parent_run_id, figure, name)
            plt.close(figure)

    def reconcile(self) -> int:
        """End as FAILED every trial's child run left RUNNING whose trial has finished (its
        worker died); returns how many were fixed. Runs are read before trials: a trial
        started in between has no run yet, and a run's trial is always read."""
        runs = self.client.search_runs(
            [self.experiment_id], max_results=10000,
            filter_string=f"tags.`{PARENT_RUN_TAG}` = '{self.parent_run_id}' "
                          "and attributes.status = 'RUNNING'")
        trials = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        fixed = 0
        for run in runs:
            number = run.data.tags.get(TRIAL_NUMBER_TAG)
            trial = trials.get(int(number)) if number is not None else None
            if trial is None or not trial.state.is_finished():
                continue  # a promotion run (promote ends those), or a live trial
            error = (trial.user_attrs.get(ERROR_ATTR) or "worker died during the trial"
                     if trial.state.name == "FAIL" else None)
            self.end_run(run.info.run_id, trial.state.name, error=error)
            fixed += 1
        return fixed

"""The MLflow side: one parent run per study, one child run per trial, per-epoch curves.

The parent run id lives in the study's user attributes, so every later `sweep run` on
the study, and every worker, reopens the same parent instead of making a new one.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import optuna
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from bertclf.config import TrainConfig
from sweep.study import retry_schema_race

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PARENT_RUN_ATTR = "mlflow_parent_run_id"
RUN_ID_ATTR = "mlflow_run_id"
PARENT_WAIT_SECONDS = 30
# Optuna trial state -> MLflow run status
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}


def log_metrics(client: MlflowClient, run_id: str, values: dict[str, float],
                step: int = 0) -> None:
    """Log several metrics at one step in one call."""
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])


class Tracker:
    """MLflow runs for one study: opens (or reopens) the parent, makes and ends child runs."""

    def __init__(self, tracking_uri: str, study: optuna.Study, created: bool = True):
        self.tracking_uri = tracking_uri
        self.study = study

        def open_experiment() -> tuple[MlflowClient, str]:
            client = MlflowClient(tracking_uri)
            experiment = client.get_experiment_by_name(study.study_name)
            return client, (experiment.experiment_id if experiment else
                            client.create_experiment(study.study_name))

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
                                     tags={"optuna.study": self.study.study_name})
        self.study.set_user_attr(PARENT_RUN_ATTR, run.info.run_id)
        return run.info.run_id

    def open_parent(self, experiment_file: str) -> None:
        """Mark the parent RUNNING for this sweep session."""
        self.client.update_run(self.parent_run_id, status="RUNNING")
        self.client.set_tag(self.parent_run_id, "experiment_file", experiment_file)

    def start_trial(self, trial: optuna.Trial, config: TrainConfig, handles: dict) -> str:
        """A child run named after the trial, holding every parameter of the run."""
        tags = {"mlflow.parentRunId": self.parent_run_id, "optuna.study": self.study.study_name,
                "optuna.trial_number": str(trial.number), "optuna.trial_state": "RUNNING"}
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{trial.number}",
                                     tags=tags)
        params = {**asdict(config), **handles, "trial_number": trial.number}
        self.client.log_batch(run.info.run_id,
                              params=[Param(k, str(v)) for k, v in params.items()])
        trial.set_user_attr(RUN_ID_ATTR, run.info.run_id)
        return run.info.run_id

    def end_trial(self, run_id: str, state: str, error: str | None = None) -> None:
        """Record the trial's final Optuna state on its run and close the run."""
        tags = [RunTag("optuna.trial_state", state)]
        if error:
            tags.append(RunTag("error", error[:5000]))
        self.client.log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, RUN_STATUS.get(state, "FAILED"))

    def log_best(self, step: int) -> None:
        """Best-so-far validation (and its test) accuracy on the parent run."""
        try:
            best = self.study.best_trial
        except ValueError:  # no completed trial yet
            return
        values = {"best_val_accuracy": best.value}
        if "test_accuracy" in best.user_attrs:
            values["best_test_accuracy"] = best.user_attrs["test_accuracy"]
        log_metrics(self.client, self.parent_run_id, values, step=step)
        self.client.set_tag(self.parent_run_id, "best_trial", str(best.number))

    def close_parent(self, status: str = "FINISHED") -> None:
        """Attach the study plots and end the parent run."""
        self._log_study_plots()
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
                axes = plot(self.study)
            except (ValueError, RuntimeError) as e:  # e.g. all parameters fixed
                print(f"sweep: skipped {name}: {e}")
                continue
            figure = axes.get_figure() if hasattr(axes, "get_figure") else axes
            self.client.log_figure(self.parent_run_id, figure, name)
            plt.close(figure)

    def reconcile(self) -> int:
        """End as FAILED every child run left RUNNING whose trial is no longer running
        (a worker that died); returns how many were fixed."""
        states = {t.number: t.state.name for t in self.study.get_trials(deepcopy=False)}
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}' "
                          "and attributes.status = 'RUNNING'")
        fixed = 0
        for run in runs:
            number = int(run.data.tags.get("optuna.trial_number", -1))
            state = states.get(number, "FAIL")
            if state != "RUNNING":
                self.end_trial(run.info.run_id, state,
                               error=run.data.tags.get("error") or "worker died during the trial")
                fixed += 1
        return fixed

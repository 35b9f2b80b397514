"""Do the two stores agree? Every trial against its MLflow run and logged model: what a
load test counts as lost, and what `python -m sweep check` prints."""

from __future__ import annotations

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from sweep.records import DROPPED_TAG, RUN_ID_ATTR, STATE_TAG, TRIAL_NUMBER_TAG
from sweep.tracking import RUN_STATUS


def live_models(client: MlflowClient, experiment_id: str) -> dict[str, list[str]]:
    """Run id -> the ids of its logged models that still exist."""
    models: dict[str, list[str]] = {}
    token = None
    while True:
        page = client.search_logged_models(experiment_ids=[experiment_id], max_results=100,
                                           page_token=token)
        for model in page:
            models.setdefault(model.source_run_id, []).append(model.model_id)
        token = page.token
        if not token:
            return models


def disagreements(study: optuna.Study, client: MlflowClient) -> list[str]:
    """One line per trial whose Optuna state, MLflow run and logged model disagree (a
    RUNNING trial is checked only for having at most one run); empty when they all agree."""
    experiment = client.get_experiment_by_name(study.study_name)
    if experiment is None:
        return [f"no MLflow experiment for study {study.study_name!r}"]
    runs = {r.info.run_id: r for r in client.search_runs(
        [experiment.experiment_id], max_results=50000,
        filter_string=f"tags.`{TRIAL_NUMBER_TAG}` != ''")}
    models = live_models(client, experiment.experiment_id)
    found = []
    runs_of: dict[int, list[str]] = {}
    for run in runs.values():
        runs_of.setdefault(int(run.data.tags[TRIAL_NUMBER_TAG]), []).append(run.info.run_id)
    for trial in study.get_trials(deepcopy=False):
        where = f"trial {trial.number} ({trial.state.name})"
        own = runs_of.get(trial.number, [])
        if len(own) > 1:
            found.append(f"{where}: {len(own)} MLflow runs")
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        if trial.state == TrialState.RUNNING:
            continue
        if run_id is None:
            if own:
                found.append(f"{where}: MLflow run {own[0]} is not recorded on the trial")
            continue
        run = runs.get(run_id)
        if run is None:
            found.append(f"{where}: its MLflow run {run_id} does not exist")
            continue
        expected = RUN_STATUS.get(trial.state.name, "FAILED")
        if run.info.status != expected or run.data.tags.get(STATE_TAG) != trial.state.name:
            found.append(f"{where}: MLflow run is {run.info.status} tagged "
                         f"{run.data.tags.get(STATE_TAG)}")
        has_model = bool(models.get(run_id))
        dropped = run.data.tags.get(DROPPED_TAG) == "true"
        if trial.state == TrialState.COMPLETE and not has_model and not dropped:
            found.append(f"{where}: no logged model")
        if trial.state != TrialState.COMPLETE and has_model:
            found.append(f"{where}: a logged model exists for a trial that did not complete")
    return found

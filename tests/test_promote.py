"""`sweep promote`: the best configurations re-trained over seeds on the same split, each an
MLflow run under the study's parent; the best mean validation accuracy wins; a second call
continues; `best` shows and exports the winner with its `promotion` card, and registers it
under an alias that `mlflow models serve` serves; keep_models deletes the models of trials
outside the best K while promoted runs keep theirs."""

import json
import os
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow.exceptions import MlflowException
from promoted_study import promoted_copy
from servers import bin_command, group_is_gone, serving
from sweep_helpers import (
    STUDY,
    client_for,
    error_lines,
    explain,
    free_port,
    http_json,
    load_study,
    mlflow_runs,
    sweep_cli,
    sweep_env,
    write_experiment,
)

from sweep.experiment import load_experiment
from sweep.promote import top_trials, trial_config
from sweep.space import suggest_config


@pytest.fixture(scope="module")
def promoted(tmp_path_factory):
    """A copy of the session's promoted study (promoted_study): 3 trials searched with
    keep_models = 1, the top 2 promoted over 2 seeds, then promoted again."""
    folder, results = promoted_copy(tmp_path_factory, "promote")
    return folder, results["search"], results["first"], results["again"]


def promotion_runs(folder):
    return [r for r in mlflow_runs(folder).children
            if r.data.tags.get("sweep.stage") == "promotion"]


def test_the_top_configurations_are_retrained_over_seeds(promoted):
    folder, _, first, _ = promoted
    study = load_study(folder)
    top = sorted((t for t in study.trials if t.state.name == "COMPLETE"),
                 key=lambda t: (-t.value, t.number))[:2]
    runs = promotion_runs(folder)
    assert sorted((int(r.data.tags["sweep.promotes_trial"]), int(r.data.tags["sweep.seed"]))
                  for r in runs) == sorted((t.number, s) for t in top for s in (42, 43))
    parent = mlflow_runs(folder).parent.info.run_id
    trial_runs = {r.data.tags["optuna.trial_number"]: r for r in mlflow_runs(folder).children
                  if "optuna.trial_number" in r.data.tags}
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.data.tags["model_uri"].startswith("models:/")
        source = trial_runs[run.data.tags["sweep.promotes_trial"]]
        changed = {k for k, v in run.data.params.items() if source.data.params.get(k) != v}
        assert changed <= {"seed", "epochs", "promotes_trial"}, changed
        assert run.data.params["epochs"] == "1"
        assert run.data.params["split_seed"] == "42", "the split stays fixed"
        digests = [{d.dataset.name: d.dataset.digest for d in r.inputs.dataset_inputs}
                   for r in (run, source)]
        assert digests[0] == digests[1], "same data, same split"
    assert "4 to go" in first.stdout


def test_the_best_mean_validation_accuracy_wins(promoted):
    folder, *_ = promoted
    by_trial: dict[int, list] = {}
    for run in promotion_runs(folder):
        by_trial.setdefault(int(run.data.tags["sweep.promotes_trial"]), []).append(run)
    means = {n: statistics.fmean(r.data.metrics["best_val_accuracy"] for r in runs)
             for n, runs in by_trial.items()}
    winner = load_study(folder).user_attrs["promotion"]
    assert winner["trial"] == max(means, key=lambda n: (means[n], -n))
    assert winner["val_accuracy_mean"] == pytest.approx(means[winner["trial"]])
    assert mlflow_runs(folder).parent.data.tags["promoted_trial"] == str(winner["trial"])


def test_a_second_promote_continues(promoted):
    folder, _, _, again = promoted
    assert "4 run(s) done before, 0 to go" in again.stdout, again.stdout
    assert len(promotion_runs(folder)) == 4


def test_best_exports_the_promoted_winner(promoted):
    folder, *_ = promoted
    out = folder / "exported"
    result = sweep_cli(folder, "best", "--study", STUDY, "--export", out)
    assert result.returncode == 0, explain(result)
    winner = load_study(folder).user_attrs["promotion"]
    assert f"promoted winner: trial {winner['trial']}" in result.stdout
    card = json.loads((out / "model_card.json").read_text())
    runs = sorted((r for r in promotion_runs(folder)
                   if r.data.tags["sweep.promotes_trial"] == str(winner["trial"])),
                  key=lambda r: int(r.data.tags["sweep.seed"]))
    val = [r.data.metrics["best_val_accuracy"] for r in runs]
    test = [r.data.metrics["test_accuracy"] for r in runs]
    promotion = card["promotion"]
    assert promotion["trial"] == card["trial"] == winner["trial"]
    assert promotion["seeds"] == [42, 43]
    assert promotion["val_accuracy"] == pytest.approx(val)
    assert promotion["test_accuracy"] == pytest.approx(test)
    assert promotion["val_accuracy_mean"] == pytest.approx(statistics.fmean(val))
    assert promotion["val_accuracy_std"] == pytest.approx(statistics.stdev(val))
    assert promotion["test_accuracy_mean"] == pytest.approx(statistics.fmean(test))
    chosen = max(runs, key=lambda r: r.data.metrics["best_val_accuracy"])
    assert card["mlflow_run_id"] == chosen.info.run_id, "the seed best on validation"
    assert card["params"]["epochs"] == 1 and card["params"]["seed"] == int(
        chosen.data.params["seed"])
    assert (out / "saved_model.pb").is_file()


def test_keep_models_drops_the_rest_but_not_promoted_models(promoted):
    folder, searched, *_ = promoted
    study = load_study(folder)
    client = client_for(folder)
    completed = sorted((t for t in study.trials if t.state.name == "COMPLETE"),
                       key=lambda t: (-t.value, t.number))
    for trial in completed:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        model_id = trial.user_attrs["model_uri"].removeprefix("models:/")
        dropped = trial is not completed[0]
        assert (run.data.tags.get("model_dropped") == "true") is dropped
        assert {"curves.png", "metrics.json"} <= {a.path for a in
                                                  client.list_artifacts(run.info.run_id)}
        files = [p for p in folder.glob(f"mlruns/*/models/{model_id}/**/*") if p.is_file()]
        if dropped:
            assert f"dropped the logged model of trial {trial.number}" in searched.stdout
            assert files == [], "its files are gone from the artifact store"
            with pytest.raises(MlflowException, match="not found"):
                client.get_logged_model(model_id)
        else:
            assert any(p.name == "saved_model.pb" for p in files)
            assert client.get_logged_model(model_id).status.name == "READY"
    for run in promotion_runs(folder):
        assert "model_dropped" not in run.data.tags


def test_without_a_promote_table_the_search_fidelity_is_kept(tmp_path):
    """A configuration re-made for promotion is the trial's own when [promote] changes
    nothing; the top trials are distinct configurations."""
    path = write_experiment(tmp_path)
    experiment = load_experiment(path)
    assert experiment.promotion.fidelity == {}
    study = optuna.create_study(direction="maximize")
    configs = {}
    for value in (0.6, 0.9, 0.7):
        trial = study.ask()
        configs[trial.number] = suggest_config(trial, experiment)
        study.tell(trial, value)
    frozen = top_trials(study, 2)
    assert [t.number for t in frozen] == [1, 2]
    for trial in frozen:
        assert asdict(trial_config(trial, experiment, {})) == asdict(configs[trial.number])


# --- registering and serving the winner ----------------------------------------------------

NAME, ALIAS = "demo", "champion"
TEXTS = ["wonderful great excellent film", "terrible awful boring film", "loved it"]


@pytest.fixture(scope="module")
def registered(promoted):
    """The promoted winner registered twice under NAME; the alias's version after the first."""
    folder = promoted[0]
    first = sweep_cli(folder, "best", "--study", STUDY, "--register", NAME)
    assert first.returncode == 0, explain(first)
    after_first = client_for(folder).get_model_version_by_alias(NAME, ALIAS)
    second = sweep_cli(folder, "best", "--study", STUDY, "--register", NAME)
    assert second.returncode == 0, explain(second)
    return folder, first, after_first, second


def test_register_points_the_alias_at_the_winners_model(registered):
    folder, first, version, _ = registered
    winner = load_study(folder).user_attrs["promotion"]
    assert (f"registered trial {winner['trial']} as {NAME} version 1, alias {ALIAS}: "
            f"models:/{NAME}@{ALIAS}") in first.stdout.splitlines()
    assert int(version.version) == 1
    assert version.run_id == winner["run_id"], "the winner's seed best on validation"
    assert version.source == winner["model_uri"]
    assert version.tags == {"study": STUDY, "trial": str(winner["trial"])}


def test_registering_again_makes_version_2_and_moves_the_alias(registered):
    folder, _, _, second = registered
    assert f"as {NAME} version 2, alias {ALIAS}" in second.stdout
    client = client_for(folder)
    moved = client.get_model_version_by_alias(NAME, ALIAS)
    assert int(moved.version) == 2
    assert moved.run_id == load_study(folder).user_attrs["promotion"]["run_id"]
    assert client.get_model_version(NAME, "1").aliases == []
    assert sorted(int(v.version) for v in client.search_model_versions(f"name = '{NAME}'")) == \
        [1, 2]


def test_a_reserved_alias_is_a_one_line_error(registered):
    folder = registered[0]
    result = sweep_cli(folder, "best", "--study", STUDY, "--register", NAME, "--alias", "v7")
    assert result.returncode == 2, explain(result)
    assert error_lines(result.stderr) == [
        "sweep: error: alias 'v7' is reserved by MLflow (latest, v1, v2, ...): choose another "
        "--alias"]
    assert len(client_for(folder).search_model_versions(f"name = '{NAME}'")) == 2


def test_served_model_predicts_as_the_loaded_one(registered, monkeypatch):
    import mlflow
    import pandas as pd

    folder = registered[0]
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    mlflow.set_tracking_uri(None)  # the variables above, not another test's setting
    mlflow.set_registry_uri(None)
    env = {**sweep_env(folder), "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri,
           # `mlflow models serve` starts the uvicorn of this environment's bin/
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    port = free_port()
    command = [bin_command("mlflow"), "models", "serve", "-m", f"models:/{NAME}@{ALIAS}",
               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with serving(command, f"{base}/ping", env=env, cwd=folder, timeout=300) as server:
        served = http_json(f"{base}/invocations",
                           {"dataframe_records": [{"text": t} for t in TEXTS]})["predictions"]
    assert group_is_gone(server, timeout=5)
    loaded = mlflow.pyfunc.load_model(f"models:/{NAME}@{ALIAS}").predict(
        pd.DataFrame({"text": TEXTS}))
    assert len(served) == len(TEXTS), "one prediction per text"
    assert [p["label"] for p in served] == list(loaded["label"])
    np.testing.assert_allclose([p["probability"] for p in served], loaded["probability"],
                               atol=1e-5)

"""`sweep best --export --ensemble`: one SavedModel averaging the logits of the promoted
winner's seed models (never the control's), with a single export's interface and signature,
reloading in a TensorFlow-only process, its card naming its members; refused with one line
without two seeds; `--register --ensemble` serves the same answers through MLflow."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from promoted_study import promoted_copy
from sweep_helpers import (
    STUDY,
    error_lines,
    explain,
    load_study,
    mlflow_runs,
    sweep_cli,
)

from bertclf.data.datasets import Split
from bertclf.errors import UserError
from bertclf.run.export import load_model
from bertclf.run.outputs import card_path

# isort: split
import tensorflow as tf

TEXTS = ["wonderful great excellent film", "terrible awful boring film", "loved it",
         "film " * 40, ""]
REFUSAL = ("sweep: error: --ensemble needs the promoted winner's seed models, two or more "
           "(study 'check' has {}): run `sweep promote --study check --seeds N` with N >= 2 "
           "first")
RELOAD = """
import json, sys
import tensorflow as tf, tensorflow_text
model = tf.saved_model.load(sys.argv[1])
serve = model.signatures["serving_default"]
texts = tf.constant(json.loads(sys.argv[2]))
print(json.dumps({"serving": serve(text=texts)["logits"].numpy().tolist(),
                  "direct": model(texts).numpy().tolist(),
                  "modules": sorted(m for m in sys.modules if m.split(".")[0] in
                                    ("bertclf", "tensorflow_hub", "tf_keras"))}))
"""


@pytest.fixture(scope="module", autouse=True)
def mlflow_uris_kept():
    """MLflow's process-wide URIs unset after this file, its variables as they were:
    `mlflow_stores` (here and in sweep.export) sets the URIs back by value, which also sets
    MLFLOW_TRACKING_URI and MLFLOW_REGISTRY_URI and so points the registry of every later
    MlflowClient at ./mlflow.db."""
    import mlflow

    saved = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI",
                                                     "MLFLOW_REGISTRY_URI")}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


@pytest.fixture(scope="module")
def promoted(tmp_path_factory):
    """A copy of the session's promoted study (promoted_study: 3 trials, the top 2 over 2
    seeds; `--ensemble` tried before any promotion); promoted again with the control, the
    top trial over 1 seed (that run done already) and `--ensemble` tried, then over 2 seeds;
    the ensemble exported and registered by one command, the single model exported
    in-process."""
    from sweep.export import export_chosen

    folder, shared = promoted_copy(tmp_path_factory, "ensemble")
    promote = ("promote", "--study", STUDY, "--top", 1, "--control", "--seeds")
    steps = {"one_seed": (*promote, 1),
             "one_seed_export": ("best", "--study", STUDY, "--export", "refused",
                                 "--ensemble"),
             "two_seeds": (*promote, 2)}
    results = {"no_promotion": shared["no_promotion"],
               **{name: sweep_cli(folder, *args) for name, args in steps.items()}}
    for name in ("one_seed", "two_seeds"):
        assert results[name].returncode == 0, explain(results[name])
    results["ensemble"] = sweep_cli(folder, "best", "--study", STUDY, "--export", "ensemble",
                                    "--ensemble", "--register", "ens")
    assert results["ensemble"].returncode == 0, explain(results["ensemble"])
    # last: it sets MLflow's variables, which the commands above would inherit
    export_chosen(load_study(folder), folder / "single", False,
                  f"sqlite:///{folder / 'mlflow.db'}")
    return folder, results


def winner_runs(folder) -> list:
    """The promotion runs of the winner (from MLflow, not from the study), by seed."""
    winner = load_study(folder).user_attrs["promotion"]
    runs = [r for r in mlflow_runs(folder).children
            if r.data.tags.get("sweep.stage") == "promotion"
            and r.data.tags["sweep.promotes_trial"] == str(winner["trial"])]
    return sorted(runs, key=lambda r: int(r.data.tags["sweep.seed"]))


@pytest.fixture(scope="module")
def members(promoted, tmp_path_factory):
    """The winner's seed models, downloaded from MLflow and loaded here."""
    import mlflow

    from sweep.tracking import mlflow_stores

    folder, _ = promoted
    scratch = tmp_path_factory.mktemp("members")
    loaded = []
    with mlflow_stores(f"sqlite:///{folder / 'mlflow.db'}"):
        for run in winner_runs(folder):
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=run.data.tags["model_uri"],
                dst_path=str(scratch / run.info.run_id))
            loaded.append(load_model(os.path.join(local, "artifacts", "saved_model")))
    return loaded


@pytest.fixture(scope="module")
def exports(promoted):
    """The single export and the ensemble, loaded here."""
    folder, _ = promoted
    return {name: load_model(folder / name) for name in ("single", "ensemble")}


def test_without_two_seeds_the_ensemble_is_refused(promoted):
    folder, results = promoted
    for name, why in (("no_promotion", "no promotion"), ("one_seed_export", "1 seed")):
        result = results[name]
        assert result.returncode == 2, explain(result)
        assert error_lines(result.stderr) == [REFUSAL.format(why)], result.stderr
    assert not (folder / "refused").exists(), "nothing is written"
    assert not list(folder.glob(".refused*"))


def test_the_export_says_what_it_exported(promoted):
    _, results = promoted
    winner = results["two_seeds"]
    # the top trial's two seeds and the control's first: the one-seed promotion was continued
    assert "3 run(s) done before, 1 to go" in winner.stdout, winner.stdout
    assert "exported the ensemble of seeds [42, 43] of the promoted winner, trial" in \
        results["ensemble"].stdout


def test_logits_are_the_mean_of_the_seed_models_logits(exports, members):
    model = exports["ensemble"]
    texts = tf.constant(TEXTS)
    each = np.stack([m(texts).numpy() for m in members])
    assert len(members) == 2 and not np.allclose(each[0], each[1]), "two different models"
    expected = each.mean(axis=0)
    np.testing.assert_allclose(model(texts).numpy(), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(model.signatures["serving_default"](text=texts)["logits"],
                               expected, rtol=0, atol=1e-5)
    inputs = model.preprocess(texts)
    for name, value in members[0].preprocess(texts).items():
        np.testing.assert_array_equal(inputs[name], value, err_msg=name)
    np.testing.assert_allclose(model.logits(inputs).numpy(), expected, rtol=0, atol=1e-5)


def test_its_signature_and_attributes_are_a_single_exports(exports):
    single, ensemble = exports["single"], exports["ensemble"]
    for name in ("serving_default",):
        a, b = single.signatures[name], ensemble.signatures[name]
        assert a.structured_input_signature == b.structured_input_signature
        assert {k: (v.shape, v.dtype) for k, v in a.structured_outputs.items()} == \
            {k: (v.shape, v.dtype) for k, v in b.structured_outputs.items()}
    assert list(ensemble.signatures) == list(single.signatures) == ["serving_default"]
    assert ensemble.class_names.numpy().tolist() == single.class_names.numpy().tolist()
    assert int(ensemble.seq_len.numpy()) == int(single.seq_len.numpy()) == 32
    assert single(tf.constant(TEXTS)).shape == ensemble(tf.constant(TEXTS)).shape


def test_it_reloads_in_a_tensorflow_only_process(promoted, members):
    folder, _ = promoted
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BERTCLF_", "TF_USE_LEGACY_KERAS", "PYTHONPATH"))}
    done = subprocess.run([sys.executable, "-c", RELOAD, str(folder / "ensemble"),
                           json.dumps(TEXTS)], capture_output=True, text=True, env=env,
                          cwd=folder, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reloaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert reloaded["modules"] == []
    expected = np.mean([m(tf.constant(TEXTS)).numpy() for m in members], axis=0)
    for way in ("serving", "direct"):
        np.testing.assert_allclose(reloaded[way], expected, rtol=0, atol=1e-5, err_msg=way)


def test_the_card_names_the_seed_models(promoted):
    folder, _ = promoted
    runs = winner_runs(folder)
    assert not any(r.data.tags.get("sweep.control") for r in runs)
    card = json.loads((folder / "ensemble" / "model_card.json").read_text())
    bundled = json.loads(card_path(folder / "ensemble").read_text())
    val = [r.data.metrics["best_val_accuracy"] for r in runs]
    test = [r.data.metrics["test_accuracy"] for r in runs]
    for ensemble in (card["ensemble"], bundled["ensemble"]):
        assert ensemble["members"] == 2 and ensemble["seeds"] == [42, 43]
        assert ensemble["run_ids"] == [r.info.run_id for r in runs]
        assert ensemble["model_uris"] == [r.data.tags["model_uri"] for r in runs]
        assert ensemble["val_accuracy"] == pytest.approx(val)
        assert ensemble["test_accuracy"] == pytest.approx(test)
        assert ensemble["val_accuracy_mean"] == pytest.approx(np.mean(val))
        assert ensemble["test_accuracy_mean"] == pytest.approx(np.mean(test))
    control = {r.info.run_id for r in mlflow_runs(folder).children
               if r.data.tags.get("sweep.control") == "true"}
    assert len(control) == 2 and not control & set(card["ensemble"]["run_ids"])
    assert "mlflow_run_id" not in card and "seed" not in card["params"]
    assert card["params"]["epochs"] == 1 and card["trial"] == int(
        runs[0].data.tags["sweep.promotes_trial"])
    assert bundled["class_names"] == card["class_names"] and bundled["seq_len"] == 32


def test_bertclf_predict_and_evaluate_load_it(promoted, members):
    from bertclf.run.evaluate import evaluate_export
    from bertclf.run.export import predict, probabilities

    folder, _ = promoted
    out = folder / "ensemble"
    names = [n.decode() for n in members[0].class_names.numpy()]
    expected = probabilities(np.mean([m(tf.constant(TEXTS)).numpy() for m in members], 0))
    predicted = predict(out, TEXTS)
    assert [name for name, _ in predicted] == [names[i] for i in expected.argmax(axis=1)]
    np.testing.assert_allclose([p for _, p in predicted], expected.max(axis=1), atol=1e-5)
    labels = expected.argmax(axis=1).astype(np.int32)
    scores = evaluate_export(out, Split(TEXTS, labels), names, batch_size=2)
    assert scores["accuracy"] == 1.0 and scores["examples"] == len(TEXTS)


def test_members_that_disagree_are_refused(promoted, tmp_path):
    from bertclf.run.export import export_ensemble

    folder, _ = promoted
    first, second = (shutil.copytree(folder / "single", tmp_path / n) for n in ("a", "b"))
    card = json.loads(card_path(second).read_text())
    card_path(second).write_text(json.dumps({**card, "truncation": "tail"}))
    with pytest.raises(UserError, match=r"^the members disagree on truncation \(head, tail\)"):
        export_ensemble([first, second], tmp_path / "out")
    with pytest.raises(UserError, match="two members or more"):
        export_ensemble([first], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_register_serves_the_ensemble(promoted):
    import mlflow
    import pandas as pd

    from bertclf.run.export import predict
    from sweep.tracking import mlflow_stores

    folder, results = promoted
    assert "registered the ensemble of seeds [42, 43] of trial" in results["ensemble"].stdout
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)  # whatever registry this process has set
    version = client.get_model_version_by_alias("ens", "champion")
    assert version.tags["ensemble_seeds"] == "[42, 43]"
    run = client.get_run(version.run_id)
    assert run.info.run_name.startswith("ensemble-trial-") and run.info.status == "FINISHED"
    assert json.loads(run.data.tags["sweep.ensemble_of"]) == [
        r.info.run_id for r in winner_runs(folder)]
    with mlflow_stores(uri):
        served = mlflow.pyfunc.load_model("models:/ens@champion").predict(
            pd.DataFrame({"text": TEXTS}))
    exported = predict(folder / "ensemble", TEXTS)
    assert list(served["label"]) == [name for name, _ in exported]
    np.testing.assert_allclose(served["probability"], [p for _, p in exported], atol=1e-5)
    check = sweep_cli(folder, "check", "--study", STUDY)
    assert check.returncode == 0, explain(check)

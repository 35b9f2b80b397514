"""Safety: passwords in store URLs never leave the process (output, errors, MLflow, files),
study names that would leave exported/ are refused, `best --export --force` swaps a checked
export in whole, and the logged model predicts in fixed-size batches.

One sweep runs against an MLflow tracking server on loopback reached through
http://user:S3CRET@127.0.0.1:PORT; the server ignores the credentials."""

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from quick_sweeps import small_experiment, sweep_main
from servers import serving
from sweep_helpers import (
    NEGATIVE,
    POSITIVE,
    error_lines,
    explain,
    free_port,
    sweep_cli,
    sweep_env,
    write_experiment,
)

from bertclf.masking import mask
from sweep.export import RELOAD_CHECK

SECRET = "S3CRET"
STUDY = "safe"
BAD_STORAGE = f"postgresql://user:{SECRET}@127.0.0.1:1/x"
RUN = ("run", "--trials", 1, "--experiment", "exp.toml")


def test_mask_hides_every_url_password():
    cases = {
        f"postgresql://user:{SECRET}@db:5432/optuna": "postgresql://user:***@db:5432/optuna",
        f"cannot open postgresql+psycopg://u:{SECRET}%40x%2Fy@db/o?sslmode=require: refused":
            "cannot open postgresql+psycopg://u:***@db/o?sslmode=require: refused",
        f"mysql://root:{SECRET}@h@db/x": "mysql://root:***@db/x",
        f"http://user:{SECRET}@127.0.0.1:5000/#/e": "http://user:***@127.0.0.1:5000/#/e",
        f"see https://a:{SECRET}@h and grpc://:{SECRET}@g:1":
            "see https://a:***@h and grpc://:***@g:1",
        f"host=db user=me password={SECRET} port=5432": "host=db user=me password=*** port=5432",
    }
    for text, masked in cases.items():
        assert mask(text) == masked
    for plain in ("sqlite:///optuna.db", "http://127.0.0.1:5000/x@y", "postgresql://u@db/x",
                  "mlflow-artifacts:/1/models"):
        assert mask(plain) == plain


# --- a sweep whose tracking URI holds a password -------------------------------------------


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """run, trials, best --export, promote, best --export --force: their outputs, by name."""
    folder = tmp_path_factory.mktemp("safety")
    small_experiment(folder)  # one epoch: what is checked here is not the training
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server",
               "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
               "--artifacts-destination", str(folder / "mlartifacts"),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    plain = f"http://127.0.0.1:{port}"
    secret_uri = f"http://user:{SECRET}@127.0.0.1:{port}"
    with serving(command, f"{plain}/health", env=sweep_env(folder), cwd=folder):
        stores = ("--study", STUDY, "--tracking-uri", secret_uri)
        outputs = {}
        for name, args in (
                ("run", (*RUN, *stores)),
                ("trials", ("trials", *stores)),
                ("best", ("best", *stores, "--export", "out")),
                ("promote", ("promote", *stores, "--top", 1, "--seeds", 1)),
                ("export-promoted", ("best", *stores, "--export", "out", "--force"))):
            outputs[name] = sweep_cli(folder, *args)
            assert outputs[name].returncode == 0, f"{name}: {explain(outputs[name])}"
            print(f"{name} took {outputs[name].seconds:.0f}s")
        yield folder, plain, port, outputs


def test_the_password_is_in_no_output_tag_param_or_file(secured):
    folder, plain, port, outputs = secured
    assert f"MLflow http://user:***@127.0.0.1:{port}" in outputs["run"].stdout
    assert f"sweep: MLflow UI: http://user:***@127.0.0.1:{port}/#/experiments/" in \
        outputs["best"].stdout
    for name, result in outputs.items():
        assert SECRET not in result.stdout + result.stderr, name
    client = MlflowClient(plain)
    experiment = client.get_experiment_by_name(STUDY)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert len(runs) >= 3  # the parent, a trial, a promotion run
    for run in runs:
        assert not [v for v in {**run.data.tags, **run.data.params}.values() if SECRET in v]
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert folder / "out" / "model_card.json" in files and folder / "server.db" in files
    assert [p for p in files if SECRET.encode() in p.read_bytes()] == []


def test_a_failing_connection_is_one_line_without_the_password(secured):
    folder = secured[0]
    for args in (("trials", "--storage", BAD_STORAGE),
                 ("best", "--study", STUDY, "--storage", BAD_STORAGE)):
        result = sweep_cli(folder, *args)
        assert result.returncode == 2, explain(result)
        lines = error_lines(result.stderr)
        assert len(lines) == 1 and lines[0].startswith("sweep: error: cannot open Optuna "
                                                       "storage postgresql://user:***@"), lines
        assert SECRET not in result.stdout + result.stderr


# --- study names ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, command", [
    ("../x", RUN), ("/tmp/x", RUN), ("", RUN), ("../x", ("trials",)),
    ("/tmp/x", ("best", "--export", "--force")), (".hidden", ("promote",))])
def test_unsafe_study_names_are_refused_before_anything_is_written(tmp_path, name, command):
    write_experiment(tmp_path)
    before = sorted(tmp_path.iterdir())
    result = sweep_cli(tmp_path, *command, "--study", name)
    assert result.returncode == 2, explain(result)
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(
        f"sweep: error: study name {name!r} is not allowed"), lines
    assert sorted(p for p in tmp_path.iterdir() if p.name != "tmp") == before


def test_the_default_export_folder_of_an_unsafe_stored_name_is_refused(tmp_path):
    """A study made outside the sweep, named to leave exported/: nothing is removed."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="../victim", storage=storage, direction="maximize")
    result = sweep_main(tmp_path, "best", "--export", "--force")
    assert result.returncode == 2, explain(result)
    assert error_lines(result.stderr)[-1].startswith("sweep: error: study name '../victim'")
    assert (victim / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "exported").exists()


# --- atomic export -------------------------------------------------------------------------


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def reloads(folder: Path) -> bool:
    check = subprocess.run([sys.executable, "-c", RELOAD_CHECK, str(folder)],
                           capture_output=True, text=True, timeout=300)
    return check.returncode == 0


def test_force_replaces_the_export_with_the_promoted_winner(secured):
    folder, _, _, outputs = secured
    card = json.loads((folder / "out" / "model_card.json").read_text())
    assert "promotion" in card and "exported the promoted winner" in \
        outputs["export-promoted"].stdout
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


def test_a_failed_export_leaves_the_old_one_and_no_temporary_folder(secured):
    """The promoted winner's weights are taken out of the artifact store: the download works,
    the reload check of the new export fails, and the export already there stays."""
    folder = secured[0]
    out = folder / "out"
    old = folder_bytes(out)
    model_id = json.loads((out / "model_card.json").read_text())["model_uri"].split("/")[-1]
    weights = [p for p in (folder / "mlartifacts").rglob("variables.data-*")
               if model_id in p.parts]
    assert weights, f"no weights of {model_id} under mlartifacts/"
    aside = {p: p.read_bytes() for p in weights}
    for path in weights:
        path.unlink()
    try:
        result = sweep_cli(folder, "best", "--study", STUDY, "--tracking-uri",
                           secured[1], "--export", "out", "--force")
    finally:
        for path, data in aside.items():
            path.write_bytes(data)
    assert result.returncode == 2, explain(result)
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "does not reload, nothing was exported" in lines[0], lines
    assert folder_bytes(out) == old
    assert reloads(out)
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


# --- serving in batches --------------------------------------------------------------------


def test_a_large_request_predicts_as_one_text_at_a_time(secured):
    import mlflow

    folder = secured[0]
    storage = f"sqlite:///{folder / 'optuna.db'}"
    model_id = optuna.load_study(study_name=STUDY, storage=storage).best_trial.user_attrs[
        "model_uri"].split("/")[-1]
    # the logged model as the server stored it (loaded from its folder: no HTTP in this test)
    [logged] = [p.parent for p in (folder / "mlartifacts").rglob("MLmodel")
                if model_id in p.parts]
    rng = random.Random(1)
    texts = [" ".join(rng.choice(POSITIVE + NEGATIVE + ["film", "the"])
                      for _ in range(rng.randint(1, 40))) for _ in range(200)]
    model = mlflow.pyfunc.load_model(str(logged))
    whole = model.predict(pd.DataFrame({"text": texts}))  # 64 at a time: 4 batches
    one_by_one = pd.concat([model.predict(pd.DataFrame({"text": [t]})) for t in texts],
                           ignore_index=True)
    small_batches = model.unwrap_python_model().predict(None, pd.DataFrame({"text": texts}),
                                                        params={"batch_size": 7})
    assert len(whole) == 200
    for other in (one_by_one, small_batches):
        assert list(other["label"]) == list(whole["label"])
        np.testing.assert_allclose(other["probability"], whole["probability"], atol=1e-6)
    assert whole["probability"].nunique() > 10  # the texts get different answers

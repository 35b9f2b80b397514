"""`python -m sweep` end to end: run, best, trials, failures, interruption, MLflow server.

Every command runs in a temporary folder (mlflow.db, optuna.db and mlruns/ land there) on a
small separable TSV and the built-in `tiny` encoder: as a subprocess, except `best` and
`trials` where a test is not about their own process (those run in this process). One 3-trial
sweep is shared by most tests through module-scoped fixtures; tests that add trials to it come
after the ones that count them. Another sweep, with a failing trial, serves two tests.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pytest
import tensorflow as tf
from mlflow.tracking import MlflowClient
from optuna.distributions import FloatDistribution
from quick_sweeps import sweep_main
from servers import serving
from sweep_helpers import (
    IMDB_ARCHIVE,
    ROOT,
    STUDY,
    Background,
    client_for,
    error_lines,
    explain,
    free_port,
    http_json,
    load_study,
    mlflow_runs,
    sweep_cli,
    sweep_env,
    write_data,
    write_experiment,
)

from bertclf.run import accel

EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


# --- the shared sweep ----------------------------------------------------------------------


@dataclass
class Swept:
    folder: Path
    experiment: Path
    result: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Swept:
    folder = tmp_path_factory.mktemp("sweep")
    experiment = write_experiment(folder)
    result = sweep_cli(folder, "run", "--trials", 3, "--experiment", "exp.toml",
                       "--study", STUDY)
    assert result.returncode == 0, explain(result)
    print(f"3-trial sweep took {result.seconds:.0f}s")
    return Swept(folder, experiment, result)


@pytest.fixture
def tracking(swept, monkeypatch):
    """MLflow's fluent API pointed at the sweep's stores, put back afterwards."""
    import mlflow

    uri = f"sqlite:///{swept.folder / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def test_run_prints_a_line_per_trial_and_the_best(swept):
    out = swept.result.stdout
    experiment_id = mlflow_runs(swept.folder).experiment_id
    link = (f"sweep: MLflow UI: http://127.0.0.1:5000/#/experiments/{experiment_id}"
            "?workflowType=machine_learning")
    lines = out.splitlines()
    assert sum(line.startswith(link) for line in lines) == 2, out  # at the start and the end
    assert lines.index(next(x for x in lines if x.startswith(link))) < lines.index(
        next(x for x in lines if x.startswith("trial 0 started:")))
    for number in range(3):
        assert f"trial {number} started:" in out, out
        assert any(line.startswith(f"trial {number} COMPLETE in ")
                   for line in out.splitlines()), out
    assert "best trial:" in out
    assert "val_accuracy:" in out and "test_accuracy:" in out and "mlflow run id:" in out
    assert "Traceback" not in swept.result.stderr


def test_optuna_study_has_the_trials(swept):
    study = load_study(swept.folder)
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert study.metric_names == ["val_accuracy"]
    for trial in study.trials:
        assert set(trial.params) == {"encoder", "lr", "batch_size"}
        assert trial.distributions["lr"] == FloatDistribution(1e-3, 5e-3, log=True)
        assert trial.params["batch_size"] in (16, 32)
        # every epoch reported at steps 1..n; the value is the kept epoch's
        epochs = sorted(trial.intermediate_values)
        assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) <= 2
        assert trial.value == trial.intermediate_values[trial.user_attrs["best_epoch"]]
        assert round(trial.user_attrs["test_accuracy"] * 60, 4) % 1 == 0, "k of 60 reviews"
        assert trial.user_attrs["model_uri"].startswith("models:/")
        assert trial.user_attrs["fixed.seq_len"] == 32
        assert trial.user_attrs["split_seed"] == 42


def test_mlflow_has_one_parent_and_a_child_per_trial(swept):
    study = load_study(swept.folder)
    runs = mlflow_runs(swept.folder)
    parent = runs.parent
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    assert len(runs.children) == 3
    assert sorted(runs.by_name()) == ["trial-0", "trial-1", "trial-2"]
    for run in runs.children:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        number = int(run.data.tags["optuna.trial_number"])
        trial = study.trials[number]
        assert run.info.run_name == f"trial-{number}"
        assert run.data.tags["optuna.trial_state"] == trial.state.name
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
    assert runs.running() == []
    assert parent.info.status == "FINISHED"
    assert all(r.info.status == "FINISHED" for r in runs.children)


def completed_runs(folder: Path):
    """(MLflow child run, its Optuna trial) for each COMPLETE trial."""
    study = load_study(folder)
    for run in mlflow_runs(folder).children:
        trial = study.trials[int(run.data.tags["optuna.trial_number"])]
        if trial.state.name == "COMPLETE":
            yield run, trial


def test_child_runs_hold_params_metrics_artifacts_and_model(swept):
    client = client_for(swept.folder)
    for run, trial in completed_runs(swept.folder):
        params = run.data.params
        for key in ("encoder", "encoder_handle", "preprocess_handle", "seed", "lr",
                    "batch_size", "epochs", "seq_len", "data", "trial_number"):
            assert key in params, (key, sorted(params))
        assert params["encoder"] == "tiny"
        assert params["seed"] == "42"
        assert float(params["lr"]) == pytest.approx(trial.params["lr"])
        assert params["batch_size"] == str(trial.params["batch_size"])
        assert params["trial_number"] == str(trial.number)
        assert params["split_seed"] == "42" and params["truncation"] == "head"
        # What the trial ran on: the experiment's float32, XLA only with a GPU by default.
        gpu = accel.has_gpu()
        assert {k: v for k, v in run.data.tags.items() if k.startswith("hardware.")} == {
            "hardware.gpu": str(gpu), "hardware.xla": str(gpu), "hardware.precision": "float32",
            # no --gpus: the trial process keeps the sweep's own device list
            "hardware.cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
        metrics = run.data.metrics
        for key in EPOCH_METRICS:
            assert key in metrics, (key, sorted(metrics))
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"curves.png", "metrics.json"} <= artifacts, artifacts
        model_id = trial.user_attrs["model_uri"].removeprefix("models:/")
        assert client.get_logged_model(model_id).source_run_id == run.info.run_id


def test_per_epoch_curves_have_the_epoch_as_step(swept):
    """loss/accuracy/val_loss/val_accuracy: one value per epoch, at the steps Optuna got them
    (1..n), nothing else (the best epoch's summary goes under other names)."""
    client = client_for(swept.folder)
    for run, trial in completed_runs(swept.folder):
        histories = {key: client.get_metric_history(run.info.run_id, key)
                     for key in EPOCH_METRICS}
        for key, history in histories.items():
            steps = sorted(m.step for m in history)
            assert steps == sorted(trial.intermediate_values), (run.info.run_name, key, steps)
        assert {m.step: m.value for m in histories["val_accuracy"]} == pytest.approx(
            trial.intermediate_values)


def test_child_runs_carry_their_datasets(swept):
    """Training, validation and test data as MLflow dataset inputs, named after the source,
    with a digest of the split: the same three for every trial of a study."""
    digests = set()
    for run, _ in completed_runs(swept.folder):
        inputs = {tag.value: d.dataset for d in run.inputs.dataset_inputs for tag in d.tags
                  if tag.key == "mlflow.data.context"}
        assert sorted(inputs) == ["test", "training", "validation"], inputs
        assert {d.name for d in inputs.values()} == {
            "data.tsv:train", "data.tsv:validation", "data.tsv:test"}
        assert len({d.digest for d in inputs.values()}) == 3
        digests.add(tuple(inputs[c].digest for c in ("training", "validation", "test")))
    assert len(digests) == 1


def test_parent_run_holds_the_best_and_the_history_plot(swept):
    client = client_for(swept.folder)
    study = load_study(swept.folder)
    parent = mlflow_runs(swept.folder).parent
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(study.best_value)
    assert parent.data.tags["best_trial"] == str(study.best_trial.number)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "optimization_history.png" in artifacts, artifacts
    history = client.get_metric_history(parent.info.run_id, "best_val_accuracy")
    assert sorted(m.step for m in history) == [0, 1, 2]


def test_logged_model_loads_and_predicts_after_the_sweep(swept, tracking):
    import mlflow
    import pandas as pd

    left = sorted(p.name for p in (swept.folder / "tmp").iterdir())
    assert not [name for name in left if name.startswith("sweep-")], left
    study = load_study(swept.folder)
    best = study.best_trial
    model = mlflow.pyfunc.load_model(best.user_attrs["model_uri"])
    texts = ["wonderful great excellent film", "terrible awful boring film", "loved it"]
    predicted = model.predict(pd.DataFrame({"text": texts}))
    # The same as the SavedModel artifact's logits, turned into labels by hand.
    saved = Path(mlflow.artifacts.download_artifacts(best.user_attrs["model_uri"])) / \
        "artifacts" / "saved_model"
    logits = tf.saved_model.load(str(saved))(tf.constant(texts)).numpy()[:, 0]
    positive = 1 / (1 + np.exp(-logits))
    assert list(predicted["label"]) == ["pos" if p > 0.5 else "neg" for p in positive]
    np.testing.assert_allclose(predicted["probability"], np.maximum(positive, 1 - positive),
                               atol=1e-6)

    version = mlflow.register_model(best.user_attrs["model_uri"], "clf")
    assert version.name == "clf" and int(version.version) >= 1
    registered = MlflowClient(tracking).get_model_version("clf", version.version)
    assert registered.run_id == best.user_attrs["mlflow_run_id"]


def test_mlflow_server_rest_api_shows_the_runs(swept):
    folder = swept.folder
    runs = mlflow_runs(folder)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "server",
               "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
               "--default-artifact-root", str(folder / "mlruns"),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with serving(command, f"{base}/health", env=sweep_env(folder), cwd=folder):
        experiment = http_json(f"{base}/api/2.0/mlflow/experiments/get-by-name"
                               f"?experiment_name={STUDY}")["experiment"]
        assert experiment["experiment_id"] == runs.experiment_id
        found = http_json(f"{base}/api/2.0/mlflow/runs/search",
                          {"experiment_ids": [runs.experiment_id], "max_results": 1000})["runs"]
        tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"].get("tags", [])}
                for r in found}
        parents = [i for i, t in tags.items() if "mlflow.parentRunId" not in t]
        children = [i for i, t in tags.items() if "mlflow.parentRunId" in t]
        assert parents == [runs.parent.info.run_id]
        assert len(children) == len(runs.children) >= 3
        assert all(tags[i]["mlflow.parentRunId"] == parents[0] for i in children)
        assert all(r["info"]["status"] != "RUNNING" for r in found)

        for run_id in children:
            history = http_json(f"{base}/api/2.0/mlflow/metrics/get-history"
                                f"?run_id={run_id}&metric_key=val_accuracy")["metrics"]
            direct = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").get_metric_history(
                run_id, "val_accuracy")
            assert {m["step"]: m["value"] for m in history} == pytest.approx(
                {m.step: m.value for m in direct}), history
            listed = http_json(f"{base}/api/2.0/mlflow/artifacts/list?run_id={run_id}")
            assert "curves.png" in {f["path"] for f in listed.get("files", [])}, listed


# --- continuing the study ------------------------------------------------------------------


@pytest.fixture(scope="module")
def continued(swept) -> subprocess.CompletedProcess:
    """A second `run --trials 1` on the same study (after the tests that count 3 trials)."""
    parent_before = load_study(swept.folder).user_attrs["mlflow_parent_run_id"]
    result = sweep_cli(swept.folder, "run", "--trials", 1, "--experiment", "exp.toml",
                       "--study", STUDY)
    assert result.returncode == 0, explain(result)
    result.parent_before = parent_before
    return result


def test_second_run_continues_the_study(swept, continued):
    assert "(3 trial(s) so far)" in continued.stdout, continued.stdout
    assert "trial 3 started:" in continued.stdout
    study = load_study(swept.folder)
    numbers = [t.number for t in study.trials]
    assert numbers == [0, 1, 2, 3]
    assert study.trials[3].state.name in ("COMPLETE", "PRUNED")
    assert study.user_attrs["mlflow_parent_run_id"] == continued.parent_before
    runs = mlflow_runs(swept.folder)
    assert runs.parent.info.run_id == continued.parent_before
    assert sorted(runs.by_name()) == ["trial-0", "trial-1", "trial-2", "trial-3"]
    assert runs.by_name()["trial-3"].data.tags["optuna.trial_state"] == \
        study.trials[3].state.name
    assert runs.running() == []


@pytest.fixture(scope="module")
def exported(swept, continued) -> tuple[Path, subprocess.CompletedProcess]:
    out = swept.folder / "exported-best"
    result = sweep_main(swept.folder, "best", "--study", STUDY, "--export", out)
    assert result.returncode == 0, explain(result)
    return out, result


def test_best_exports_a_savedmodel_and_model_card(swept, exported):
    out, result = exported
    study = load_study(swept.folder)
    best = study.best_trial
    assert f"best trial: {best.number}" in result.stdout
    assert best.user_attrs["mlflow_run_id"] in result.stdout
    experiment_id = mlflow_runs(swept.folder).experiment_id
    assert (f"sweep: MLflow UI: http://127.0.0.1:5000/#/experiments/{experiment_id}"
            "?workflowType=machine_learning") in result.stdout
    assert (out / "saved_model.pb").is_file()
    card = json.loads((out / "model_card.json").read_text())
    assert card["mlflow_run_id"] == best.user_attrs["mlflow_run_id"]
    assert card["trial"] == best.number and card["study"] == STUDY
    assert card["params"]["lr"] == pytest.approx(best.params["lr"])
    assert card["params"]["batch_size"] == best.params["batch_size"]
    assert card["params"]["seq_len"] == 32
    # the kept epoch's validation accuracy, as the run's per-epoch curve has it
    history = client_for(swept.folder).get_metric_history(card["mlflow_run_id"], "val_accuracy")
    kept = {m.step: m.value for m in history}[card["metrics"]["best_epoch"]]
    assert card["metrics"]["val_accuracy"] == pytest.approx(kept)
    assert round(card["metrics"]["test_accuracy"] * 60, 4) % 1 == 0, "k of 60 reviews"
    assert card.get("class_names") == ["neg", "pos"]
    assert "promotion" not in card


def test_exported_model_reloads_in_a_fresh_tensorflow_process(exported, tmp_path):
    """Only tensorflow and tensorflow_text imported; raw strings in, logits out."""
    out, _ = exported
    check = """
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa
model = tf.saved_model.load(sys.argv[1])
logits = model(tf.constant(["wonderful great film", "awful boring film", "x"])).numpy()
ours = sorted(m for m in sys.modules if m.split(".")[0] in ("bertclf", "sweep", "mlflow"))
print(json.dumps({"shape": list(logits.shape), "ours": ours}))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BERTCLF_CACHE_DIR")}
    fresh = subprocess.run([sys.executable, "-c", check, str(out)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    reply = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert reply["shape"][0] == 3 and reply["shape"][1] in (1, 2)
    assert reply["ours"] == []


def test_export_refuses_a_non_empty_folder(swept, exported):
    """The folder is checked before TensorFlow loads: one line on stderr, nothing else."""
    out, _ = exported
    again = sweep_cli(swept.folder, "best", "--study", STUDY, "--export", out)
    assert again.returncode == 2, explain(again)
    lines = error_lines(again.stderr)
    assert lines and lines[-1].startswith("sweep: error:") and "not empty" in lines[-1]
    assert (out / "saved_model.pb").is_file()  # left as it was
    assert len(lines) == 1, again.stderr


def test_best_of_an_unknown_study_is_a_one_line_error(swept):
    result = sweep_cli(swept.folder, "best", "--study", "nope")
    assert result.returncode == 2, explain(result)
    assert error_lines(result.stderr) == [
        f"sweep: error: no study named 'nope' (studies: {STUDY})"]


def test_best_and_trials_without_a_finished_trial(tmp_path):
    """Studies made directly in Optuna (no training): one with a failed trial only."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    empty = optuna.create_study(study_name="empty", storage=storage, direction="maximize")
    empty.tell(empty.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2)}),
               state=optuna.trial.TrialState.FAIL)
    result = sweep_main(tmp_path, "best", "--study", "empty")
    assert result.returncode == 0, explain(result)
    assert "no trial has completed yet" in result.stdout

    table = sweep_main(tmp_path, "trials", "--csv", "-")  # the only study: no --study needed
    assert table.returncode == 0, explain(table)
    rows = list(csv.DictReader(table.stdout.splitlines()))
    assert [(r["number"], r["state"]) for r in rows] == [("0", "FAIL")]

    optuna.create_study(study_name="other", storage=storage)
    several = sweep_cli(tmp_path, "trials")
    assert several.returncode == 2, explain(several)
    assert error_lines(several.stderr) == [
        "sweep: error: several studies, pick one with --study: empty, other"]

    export = sweep_cli(tmp_path, "best", "--study", "empty", "--export", tmp_path / "out")
    assert "Traceback" not in export.stderr, export.stderr[-2000:]
    assert export.returncode == 2, explain(export)
    assert len(error_lines(export.stderr)) == 1, export.stderr


def test_trials_table_and_csv(swept, continued):
    study = load_study(swept.folder)
    table = sweep_main(swept.folder, "trials", "--study", STUDY)
    assert table.returncode == 0, explain(table)
    lines = table.stdout.strip().splitlines()
    header = lines[0].split()
    for column in ("number", "state", "lr", "batch_size", "val_accuracy", "test_accuracy",
                   "duration_s"):
        assert column in header, header
    assert len(lines) == 1 + len(study.trials)
    assert [line.split()[0] for line in lines[1:]] == [str(t.number) for t in study.trials]

    result = sweep_main(swept.folder, "trials", "--study", STUDY, "--csv", "out.csv")
    assert result.returncode == 0, explain(result)
    with open(swept.folder / "out.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {"number", "state", "val_accuracy", "test_accuracy"} <= set(rows[0])
    assert [int(r["number"]) for r in rows] == [t.number for t in study.trials]
    assert [r["state"] for r in rows] == [t.state.name for t in study.trials]
    for row, trial in zip(rows, study.trials, strict=True):
        if trial.state.name == "COMPLETE":
            assert float(row["val_accuracy"]) == pytest.approx(trial.value)
            assert float(row["lr"]) == pytest.approx(trial.params["lr"])


# --- interrupting and killing the sweep ----------------------------------------------------


@pytest.fixture(scope="module")
def stop_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("interrupted")
    write_experiment(folder)
    return folder


def test_ctrl_c_fails_the_trial_and_closes_every_run(stop_folder):
    sweep = Background(stop_folder, "run", "--trials", 2, "--experiment", "exp.toml",
                       "--study", "stop")
    sweep.wait_for_line("trial 0 started:")
    time.sleep(2)  # the trial's process is starting up
    sweep.signal(signal.SIGINT)  # Ctrl-C in a terminal reaches the whole group
    code = sweep.wait(120)
    assert code == 130, sweep.output()
    assert "interrupted" in sweep.stderr_path.read_text()
    assert sweep.group_is_gone(), "the trial's process outlived the sweep"

    study = load_study(stop_folder, "stop")
    assert [t.state.name for t in study.trials] == ["FAIL"]
    assert "interrupted (Ctrl-C or SIGTERM)" in study.trials[0].user_attrs.get("error", "")
    runs = mlflow_runs(stop_folder, "stop")
    assert runs.running() == []
    assert runs.by_name()["trial-0"].info.status == "FAILED"
    assert runs.by_name()["trial-0"].data.tags["optuna.trial_state"] == "FAIL"
    assert runs.parent.info.status == "KILLED"


@dataclass
class Killed:
    folder: Path
    number: int  # the trial that was running
    at: float  # time.monotonic() of the kill


@pytest.fixture(scope="module")
def killed(stop_folder) -> Killed:
    """A sweep killed with SIGKILL (no chance to clean up) while its trial runs."""
    before = len(load_study(stop_folder, "stop").trials)
    sweep = Background(stop_folder, "run", "--trials", 2, "--experiment", "exp.toml",
                       "--study", "stop")
    sweep.wait_for_line(f"trial {before} started:")
    deadline = time.monotonic() + 60
    while f"trial-{before}" not in mlflow_runs(stop_folder, "stop").running():
        assert time.monotonic() < deadline, sweep.output()
        time.sleep(0.5)
    time.sleep(2)
    sweep.signal(signal.SIGKILL)
    at = time.monotonic()
    sweep.wait(60)
    assert sweep.group_is_gone()
    return Killed(stop_folder, before, at)


def test_killed_sweep_leaves_its_trial_running(killed):
    """What a dead worker leaves behind, until someone notices it is dead."""
    assert load_study(killed.folder, "stop").trials[killed.number].state.name == "RUNNING"
    assert f"trial-{killed.number}" in mlflow_runs(killed.folder, "stop").running()


# --- one sweep with a failing trial, on data that rewards stopping early ------------------

UNEVEN = "uneven"


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> Swept:
    """`run --trials 3` searching encoders `offline` (TF Hub handles nobody answers), `broken`
    (a map entry whose folders hold a garbage saved_model.pb) and `tiny`, on data whose
    validation labels are flipped: validation loss is lowest early, and training (4 epochs,
    patience 3, half of it warm-up) goes on past it. Trial 0 is the defaults (encoder tiny);
    with offline dropped, sampler seed 10 then proposes broken, tiny."""
    folder = tmp_path_factory.mktemp("uneven")
    for split, count in {"train": 160, "validation": 40, "test": 40}.items():
        text = write_data(folder / f"{split}.tsv", per_class=count // 2).read_text()
        if split == "validation":
            text = text.replace("\tpos", "\tPOS").replace("\tneg", "\tpos").replace(
                "\tPOS", "\tneg")
        (folder / "data" / f"{split}.tsv").parent.mkdir(exist_ok=True)
        (folder / "data" / f"{split}.tsv").write_text(text)
    for part in ("enc", "pre"):
        (folder / "broken" / part).mkdir(parents=True)
        (folder / "broken" / part / "saved_model.pb").write_bytes(b"not a SavedModel")
    map_file = folder / "map.toml"
    map_file.write_text(offline_map(folder).read_text() + '[encoders.broken]\n'
                        'encoder = "broken/enc"\npreprocess = "broken/pre"\n')
    experiment = folder / "uneven.toml"
    experiment.write_text(f"""\
[data]
path = "data"

[search]
encoder = ["offline", "broken", "tiny"]
encoder_map = "{map_file}"
seq_len = 32
epochs = 4
patience = 3
lr = [1e-3]
warmup_fraction = 0.5        # the first epoch barely learns: near chance, lowest loss
batch_size = 16
precision = "float32"

[study]
pruner = "none"
""")
    result = sweep_cli(folder, "run", "--trials", 3, "--experiment", experiment.name,
                       "--study", UNEVEN, "--seed", 10)
    assert result.returncode == 0, explain(result)
    return Swept(folder, experiment, result)


def test_a_failing_trial_does_not_stop_the_sweep(uneven):
    """Encoder `broken` fails; the sweep records it as failed in both stores and goes on
    with the next trial. Encoder `offline` is dropped before the first trial, said once,
    tagged on the parent run and never proposed."""
    folder, result = uneven.folder, uneven.result
    warnings = [line for line in result.stdout.splitlines() if "cannot be loaded" in line]
    assert warnings == ["sweep: dropped 1 encoder(s) that cannot be loaded here (1 with no "
                        "answer); searching broken, tiny; --verbose lists each"], warnings
    study = load_study(folder, UNEVEN)
    encoders = [t.params.get("encoder") for t in study.trials]
    assert encoders == ["tiny", "broken", "tiny"], f"the sampler no longer proposes {encoders}"
    defaults, failed, finished = study.trials
    assert failed.state.name == "FAIL"
    assert "broken" in failed.user_attrs["error"], failed.user_attrs
    assert finished.state.name == "COMPLETE"
    assert defaults.state.name == "COMPLETE"
    assert "trial 1 FAIL" in result.stdout and "trial 2 COMPLETE" in result.stdout

    runs = mlflow_runs(folder, UNEVEN).by_name()
    assert runs["trial-1"].info.status == "FAILED"
    assert runs["trial-1"].data.tags["optuna.trial_state"] == "FAIL"
    assert "broken" in runs["trial-1"].data.tags["error"]
    assert runs["trial-2"].info.status == "FINISHED"
    assert runs["trial-2"].data.tags["optuna.trial_state"] == "COMPLETE"
    assert mlflow_runs(folder, UNEVEN).running() == []
    assert "offline" in mlflow_runs(folder, UNEVEN).parent.data.tags["dropped_encoders"]


def test_objective_is_the_kept_epochs_validation_accuracy(uneven):
    """With validation labels flipped, validation loss is lowest early and training goes on
    past it: the trial's value must be the kept (lowest-loss) epoch's validation accuracy, as
    Optuna's report and MLflow's curve both have it at that epoch's step, not the last's."""
    trial = load_study(uneven.folder, UNEVEN).trials[0]  # the defaults: encoder tiny
    run = mlflow_runs(uneven.folder, UNEVEN).by_name()["trial-0"]
    client = client_for(uneven.folder)
    curves = {key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
              for key in ("val_loss", "val_accuracy")}
    kept = min(curves["val_loss"], key=curves["val_loss"].get)
    assert kept < max(curves["val_loss"]), f"the best epoch is the last one: {curves}"
    assert trial.user_attrs["best_epoch"] == kept
    assert trial.value == pytest.approx(curves["val_accuracy"][kept])
    assert trial.value == trial.intermediate_values[kept]
    assert trial.intermediate_values[max(curves["val_loss"])] != trial.value, curves


def test_next_run_fails_the_killed_trial_and_reruns_it(killed):
    """The dead worker ran on this host and its process is gone, so the next `run` fails its
    trial at once, in Optuna and in MLflow, saying why, and re-runs its parameters as its
    one trial (checked here in --in-process mode)."""
    result = sweep_cli(killed.folder, "run", "--trials", 1, "--experiment", "exp.toml",
                       "--study", "stop", "--in-process")
    assert result.returncode == 0, explain(result)
    assert "ended 1 run(s) left RUNNING" in result.stdout, result.stdout
    number = killed.number
    assert f"trial {number} FAIL: worker died: its worker (pid" in result.stdout
    study = load_study(killed.folder, "stop")
    assert [t.number for t in study.trials] == list(range(number + 2))
    assert study.trials[number].state.name == "FAIL"
    assert "is gone" in study.trials[number].user_attrs["error"]
    rerun = study.trials[number + 1]
    assert rerun.state.name == "COMPLETE"
    assert rerun.params == study.trials[number].params
    assert rerun.user_attrs["sweep.retry_of"] == number
    runs = mlflow_runs(killed.folder, "stop")
    assert runs.running() == []
    dead = runs.by_name()[f"trial-{number}"]
    assert dead.info.status == "FAILED"
    assert dead.data.tags["optuna.trial_state"] == "FAIL"
    assert dead.data.tags.get("error")
    done = runs.by_name()[f"trial-{number + 1}"]
    assert done.info.status == "FINISHED"
    assert done.data.tags["optuna.trial_state"] == "COMPLETE"
    assert {"curves.png", "metrics.json"} <= {
        a.path for a in client_for(killed.folder).list_artifacts(done.info.run_id)}
    assert runs.parent.info.status == "FINISHED"


# --- the shipped quick experiment ----------------------------------------------------------


@pytest.mark.skipif(not IMDB_ARCHIVE.is_file(),
                    reason=f"the IMDB archive is not at {IMDB_ARCHIVE}")
def test_quick_experiment_runs_one_trial(tmp_path):
    result = sweep_cli(tmp_path, "run", "--trials", 1, "--experiment",
                       ROOT / "experiments" / "quick.toml", "--study", "quick", timeout=600)
    assert result.returncode == 0, explain(result)
    study = load_study(tmp_path, "quick")
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    runs = mlflow_runs(tmp_path, "quick")
    assert len(runs.children) == 1 and runs.running() == []


# --- encoders that cannot be loaded here ---------------------------------------------------


def offline_map(folder: Path) -> Path:
    """A map entry whose TF Hub handles point at a closed loopback port."""
    port = free_port()  # nothing listens there: connections are refused at once
    path = folder / "offline-map.toml"
    path.write_text(f'[encoders.offline]\nencoder = "http://127.0.0.1:{port}/enc/1"\n'
                    f'preprocess = "http://127.0.0.1:{port}/pre/1"\n')
    return path


def run_offline(folder: Path, encoders: str, trials: int) -> subprocess.CompletedProcess:
    """`sweep run` of an experiment searching `encoders` ("offline" among them)."""
    write_experiment(folder, encoder=encoders,
                     extra_search=f'encoder_map = "{offline_map(folder)}"')
    return sweep_cli(folder, "run", "--trials", trials, "--experiment", "exp.toml",
                     "--study", "offline")


def test_no_loadable_encoder_is_a_one_line_error_that_writes_nothing(tmp_path):
    result = run_offline(tmp_path, '["offline"]', trials=1)
    assert result.returncode == 2, explain(result)
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("sweep: error: experiment "), lines
    assert lines[0].endswith("none of the search's 1 encoder(s) can be loaded here (1 with no "
                             "answer); try --experiment experiments/quick.toml, or an encoder "
                             "that loads offline (tiny, minilm); --verbose lists each"), lines
    assert not any((tmp_path / name).exists() for name in ("optuna.db", "mlflow.db", "mlruns"))
    verbose = sweep_cli(tmp_path, "run", "--trials", 1, "--experiment", "exp.toml", "--verbose")
    assert verbose.returncode == 2, explain(verbose)
    detail = error_lines(verbose.stderr)[1:]
    assert len(detail) == 1 and detail[0].startswith("  offline: no answer ("), detail

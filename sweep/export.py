"""The chosen model of a study, out of MLflow: the promoted winner's best seed where a
promotion ran, else the best trial. Exported as a SavedModel with a model card (its reload
checked in a fresh TensorFlow-only process), or registered in the MLflow Model Registry."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import optuna

from bertclf.config import field_types
from bertclf.errors import UserError
from sweep.promote import WINNER_ATTR
from sweep.tracking import mlflow_stores

RELOAD_CHECK = """
import sys, tensorflow as tf, tensorflow_text
model = tf.saved_model.load(sys.argv[1])
logits = model(tf.constant(["a wonderful film", "a dull, boring mess"])).numpy()
assert logits.shape[0] == 2, logits.shape
print(logits.tolist())
"""


@dataclass
class ChosenModel:
    """Which logged model a study stands for, and where it came from."""

    trial: optuna.trial.FrozenTrial
    run_id: str
    model_uri: str
    promotion: dict | None  # the promoted winner's summary, None without a promotion


def chosen_model(study: optuna.Study) -> ChosenModel:
    """The promoted winner's model (the seed best on validation), else the best trial's."""
    completed = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
    if not completed:
        raise UserError(f"study {study.study_name!r} has no completed trial")
    promotion = study.user_attrs.get(WINNER_ATTR)
    if promotion:
        trial = next(t for t in completed if t.number == promotion["trial"])
        return ChosenModel(trial, promotion["run_id"], promotion["model_uri"], promotion)
    trial = study.best_trial
    if "model_uri" not in trial.user_attrs:
        raise UserError(f"trial {trial.number} has no logged model")
    return ChosenModel(trial, trial.user_attrs["mlflow_run_id"], trial.user_attrs["model_uri"],
                       None)


def model_card(study: optuna.Study, chosen: ChosenModel, tracking_uri: str) -> dict:
    """Provenance, parameters and metrics of the chosen model (and its promotion)."""
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri).get_run(chosen.run_id)
    metrics = run.data.metrics
    # What the model was trained with: the trial's values, and a promotion's seed and fidelity.
    params = {k.removeprefix("fixed."): v for k, v in chosen.trial.user_attrs.items()
              if k.startswith("fixed.")}
    params.update(chosen.trial.params)
    for key in ("seed", *(chosen.promotion or {}).get("fidelity", {})):
        params[key] = field_types()[key](run.data.params[key])
    card = {"study": study.study_name, "trial": chosen.trial.number,
            "mlflow_run_id": chosen.run_id, "model_uri": chosen.model_uri, "params": params,
            "metrics": {"val_accuracy": metrics["best_val_accuracy"],
                        "test_accuracy": metrics["test_accuracy"],
                        "test_loss": metrics["test_loss"],
                        "best_epoch": int(metrics["best_epoch"])}}
    if chosen.promotion:
        card["promotion"] = chosen.promotion
    return card


def export_chosen(study: optuna.Study, out: Path, force: bool, tracking_uri: str) -> Path:
    """Write the chosen model's SavedModel to `out` with model_card.json beside it."""
    import mlflow

    from bertclf.outdir import card_path, check_out_dir, make_out_dir

    chosen = chosen_model(study)
    check_out_dir(out, force)
    with tempfile.TemporaryDirectory(prefix="sweep-export-") as tmp, mlflow_stores(tracking_uri):
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=chosen.model_uri,
                                                         dst_path=tmp))
        shutil.copytree(local / "artifacts" / "saved_model", make_out_dir(out, force),
                        dirs_exist_ok=True)
    check = subprocess.run([sys.executable, "-c", RELOAD_CHECK, str(out)],
                           capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"exported model at {out} does not reload: {check.stderr[-500:]}")
    card = model_card(study, chosen, tracking_uri)
    bundled = card_path(out)
    if bundled.is_file():
        extra = json.loads(bundled.read_text())
        card.update(data=extra.get("data"), encoder=extra.get("encoder"),
                    class_names=extra.get("class_names"))
    (out / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    what = "the promoted winner, trial" if chosen.promotion else "trial"
    print(f"exported {what} {chosen.trial.number} to {out} (reload checked), "
          f"model card {out / 'model_card.json'}")
    return out


def register_chosen(study: optuna.Study, name: str, alias: str, tracking_uri: str) -> str:
    """Register the chosen model under `name` in the Model Registry and point `alias` at
    the new version; returns the `models:/NAME@ALIAS` URI."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if alias == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise UserError(f"alias {alias!r} is reserved by MLflow (latest, v1, v2, ...): "
                        "choose another --alias")
    chosen = chosen_model(study)
    try:
        with mlflow_stores(tracking_uri):
            version = mlflow.register_model(chosen.model_uri, name)
    except MlflowException as e:
        raise UserError(f"cannot register {name!r}: {e.message.splitlines()[0]}") from None
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    client.set_registered_model_alias(name, alias, version.version)
    client.set_model_version_tag(name, version.version, "study", study.study_name)
    client.set_model_version_tag(name, version.version, "trial", str(chosen.trial.number))
    uri = f"models:/{name}@{alias}"
    print(f"registered trial {chosen.trial.number} as {name} version {version.version}, "
          f"alias {alias}: {uri}")
    return uri

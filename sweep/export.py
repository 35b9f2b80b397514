"""The chosen model of a study, out of MLflow: the promoted winner's best seed where a
promotion ran, else the best trial. Exported as a SavedModel with a model card (its reload
checked in a fresh TensorFlow-only process), or registered in the MLflow Model Registry."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import optuna

from bertclf.errors import UserError
from bertclf.masking import mask
from bertclf.run.config import field_types
from bertclf.run.outputs import card_path, is_saved_model
from sweep.records import (
    DEFAULTS_ATTR,
    ENSEMBLE_RUNS_TAG,
    ENSEMBLE_STAGE,
    MODEL_URI_ATTR,
    PARENT_RUN_TAG,
    RUN_ID_ATTR,
    STAGE,
    TEST_ACCURACY_ATTR,
    WINNER_ATTR,
    fixed_params,
)
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
    if promotion:  # the control (the defaults) has no trial: the best one's stands in
        trial = next((t for t in completed if t.number == promotion["trial"]), study.best_trial)
        return ChosenModel(trial, promotion["run_id"], promotion["model_uri"], promotion)
    trial = study.best_trial
    if MODEL_URI_ATTR not in trial.user_attrs:
        raise UserError(f"trial {trial.number} has no logged model")
    return ChosenModel(trial, trial.user_attrs[RUN_ID_ATTR], trial.user_attrs[MODEL_URI_ATTR],
                       None)


def search_margin(study: optuna.Study) -> dict | None:
    """The best trial's accuracies minus those of the trial that ran the tool's defaults
    (each new study's first), at the search's fidelity; None without a completed one."""
    completed = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
    defaults = next((t for t in completed if t.user_attrs.get(DEFAULTS_ATTR)), None)
    if defaults is None:
        return None
    best = study.best_trial
    return {"trial": defaults.number, "val_accuracy": best.value - defaults.value,
            "test_accuracy": best.user_attrs[TEST_ACCURACY_ATTR]
            - defaults.user_attrs[TEST_ACCURACY_ATTR]}


def model_card(study: optuna.Study, chosen: ChosenModel, tracking_uri: str) -> dict:
    """Provenance, parameters and metrics of the chosen model (and its promotion)."""
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri).get_run(chosen.run_id)
    metrics = run.data.metrics
    # What the model was trained with, as its run recorded it: the searched and fixed values,
    # the seed, and a promotion's fidelity.
    keys = {*fixed_params(chosen.trial)}
    keys |= {*chosen.trial.params, "seed", *(chosen.promotion or {}).get("fidelity", {})}
    params = {key: _typed(key, run.data.params[key]) for key in sorted(keys)}
    card = {"study": study.study_name, "trial": chosen.trial.number,
            "mlflow_run_id": chosen.run_id, "model_uri": chosen.model_uri, "params": params,
            "metrics": {"val_accuracy": metrics["best_val_accuracy"],
                        "test_accuracy": metrics["test_accuracy"],
                        "test_loss": metrics["test_loss"],
                        "best_epoch": int(metrics["best_epoch"])}}
    if chosen.promotion:
        card["promotion"] = chosen.promotion
    card["over_defaults_at_search_fidelity"] = search_margin(study)
    return card


def _typed(key: str, text: str):
    """A run parameter (logged as text) as its TrainConfig field's type."""
    kind = field_types()[key]
    if kind is bool:
        return text == "True"
    return None if text == "None" else kind(text)


def ensemble_members(study: optuna.Study, chosen: ChosenModel) -> dict:
    """The model card's `ensemble` object of the promoted winner's seed models: members,
    seeds, run_ids, model_uris, per-seed and mean accuracies. Raises UserError unless a
    promotion trained the winner with two seeds or more."""
    promotion = chosen.promotion or {}
    seeds = promotion.get("seeds", [])
    if len(seeds) < 2:
        raise UserError(f"--ensemble needs the promoted winner's seed models, two or more "
                        f"(study {study.study_name!r} has {len(seeds) or 'no promotion'}"
                        f"{' seed' if len(seeds) == 1 else ''}): run `sweep promote --study "
                        f"{study.study_name} --seeds N` with N >= 2 first")
    if "model_uris" not in promotion:
        raise UserError("the promotion was recorded without its seeds' models: run `sweep "
                        f"promote --study {study.study_name}` again with its --top and --seeds "
                        "(it trains nothing) to record them")
    return {"members": len(seeds), "seeds": seeds, "run_ids": promotion["run_ids"],
            "model_uris": promotion["model_uris"], "logits": "mean of the members' logits",
            **{key: promotion[key] for key in ("val_accuracy", "test_accuracy",
                                               "val_accuracy_mean", "test_accuracy_mean")}}


def export_chosen(study: optuna.Study, out: Path, force: bool, tracking_uri: str,
                  ensemble: bool = False) -> Path:
    """Write the chosen model's SavedModel (with `ensemble`, one averaging the logits of the
    promoted winner's seed models) to `out` with model_card.json beside it. The new folder
    is built and checked beside `out` and swapped in whole: whatever fails, `out` keeps its
    old export and no temporary folder is left."""
    from bertclf.run.outputs import check_out_dir

    chosen = chosen_model(study)
    members = ensemble_members(study, chosen) if ensemble else None
    check_out_dir(out, force)
    if Path.cwd().resolve().is_relative_to(out.resolve()):
        raise UserError(f"output folder {out}: holds the current folder, choose another")
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.export-",
                                     dir=out.absolute().parent) as work:
        new = _build_export(study, chosen, Path(work), tracking_uri, members)
        _swap_in(new, out, Path(work) / "old")
    what = "the promoted winner, trial" if chosen.promotion else "trial"
    if members:
        what = f"the ensemble of seeds {members['seeds']} of {what}"
    print(f"exported {what} {chosen.trial.number} to {out} (reload checked), "
          f"model card {out / 'model_card.json'}")
    return out


def _build_export(study: optuna.Study, chosen: ChosenModel, work: Path, tracking_uri: str,
                  members: dict | None = None) -> Path:
    """The chosen model's SavedModel and model card in `work`/new, its reload checked; with
    `members` (`ensemble_members`), the ensemble of those seed models."""
    new = work / "new"
    if members:
        from bertclf.run.export import export_ensemble

        what = f"the ensemble of trial {chosen.trial.number}'s seed models"
        paths = [_download(uri, work / f"member-{i}", tracking_uri, chosen.trial.number)
                 for i, uri in enumerate(members["model_uris"])]
        export_ensemble(paths, new, {"ensemble": members})
    else:
        what = f"trial {chosen.trial.number} ({chosen.model_uri})"
        _download(chosen.model_uri, work / "download", tracking_uri,
                  chosen.trial.number).rename(new)
    _check_reload(new, what)
    card = model_card(study, chosen, tracking_uri)
    if members:  # the members' own runs, models and metrics are in `ensemble`
        for key in ("mlflow_run_id", "model_uri", "metrics"):
            card.pop(key)
        card["params"].pop("seed")
        card["ensemble"] = members
    bundled = card_path(new)
    if bundled.is_file():
        extra = json.loads(bundled.read_text())
        card.update(data=extra.get("data"), encoder=extra.get("encoder"),
                    class_names=extra.get("class_names"))
    (new / "model_card.json").write_text(mask(json.dumps(card, indent=2)) + "\n")
    return new


def _check_reload(saved_model: Path, what: str) -> None:
    """Raise UserError unless `saved_model` reloads and scores in a fresh TensorFlow-only
    process."""
    check = subprocess.run([sys.executable, "-c", RELOAD_CHECK, str(saved_model)],
                           capture_output=True, text=True)
    if check.returncode != 0:
        last = (check.stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise UserError(f"the model of {what} does not reload, nothing was exported: {last}")


def _download(model_uri: str, dst: Path, tracking_uri: str, trial: int) -> Path:
    """The SavedModel folder of logged model `model_uri`, downloaded into `dst`."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        with mlflow_stores(tracking_uri):
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri,
                                                             dst_path=str(dst)))
    except (MlflowException, OSError) as e:
        raise UserError(f"cannot download the model of trial {trial} "
                        f"({model_uri}): {str(e).strip().splitlines()[0][:300]}") from None
    saved_model = local / "artifacts" / "saved_model"
    if not is_saved_model(saved_model):
        raise UserError(f"the model of trial {trial} ({model_uri}) has no SavedModel in the "
                        "artifact store (were its files deleted?)")
    return saved_model


def _swap_in(new: Path, out: Path, old: Path) -> None:
    """Put folder `new` at `out`, moving what was there to `old` (a path on the same disk);
    the old export is put back if the new one cannot be moved in."""
    if out.exists() or out.is_symlink():
        out.rename(old)  # a symbolic link moves as itself: what it points at is never removed
    try:
        new.rename(out)
    except OSError as e:
        if old.exists() or old.is_symlink():
            old.rename(out)
        raise UserError(f"output folder {out}: cannot move the new export in "
                        f"({e.strerror}); the old one is kept") from None


def register_chosen(study: optuna.Study, name: str, alias: str, tracking_uri: str,
                    ensemble: bool = False, exported: Path | None = None) -> str:
    """Register the chosen model (with `ensemble`, the ensemble of the promoted winner's
    seed models, logged first as the model of a run `ensemble-trial-N`) under `name` in the
    Model Registry and point `alias` at the new version; returns the `models:/NAME@ALIAS`
    URI. `exported`: that ensemble, just exported by `export_chosen` in this command, is
    logged as it is instead of being built a second time."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if alias == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise UserError(f"alias {alias!r} is reserved by MLflow (latest, v1, v2, ...): "
                        "choose another --alias")
    chosen = chosen_model(study)
    members = ensemble_members(study, chosen) if ensemble else None
    model_uri = _log_ensemble(study, chosen, members, tracking_uri, exported) if members \
        else chosen.model_uri
    try:
        with mlflow_stores(tracking_uri):
            version = mlflow.register_model(model_uri, name)
    except MlflowException as e:
        raise UserError(f"cannot register {name!r}: {e.message.splitlines()[0]}") from None
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    client.set_registered_model_alias(name, alias, version.version)
    tags = {"study": study.study_name, "trial": str(chosen.trial.number),
            **({"ensemble_seeds": json.dumps(members["seeds"])} if members else {})}
    for key, value in tags.items():
        client.set_model_version_tag(name, version.version, key, value)
    uri = f"models:/{name}@{alias}"
    what = f"the ensemble of seeds {members['seeds']} of trial" if members else "trial"
    print(f"registered {what} {chosen.trial.number} as {name} version {version.version}, "
          f"alias {alias}: {uri}")
    return uri


def _log_ensemble(study: optuna.Study, chosen: ChosenModel, members: dict,
                  tracking_uri: str, exported: Path | None = None) -> str:
    """Build the ensemble as `best --export --ensemble` does (or take `exported`, which it
    built) and log it as the model of a new run `ensemble-trial-N` under the study's parent
    run; returns its models:/ URI."""
    from mlflow.tracking import MlflowClient

    from sweep.trial import log_saved_model

    client = MlflowClient(tracking_uri)
    source = client.get_run(chosen.run_id)
    run = client.create_run(source.info.experiment_id,
                            run_name=f"ensemble-trial-{chosen.trial.number}",
                            tags={PARENT_RUN_TAG: source.data.tags[PARENT_RUN_TAG],
                                  STAGE: ENSEMBLE_STAGE, ENSEMBLE_RUNS_TAG:
                                  json.dumps(members["run_ids"])})
    if exported is not None:
        return log_saved_model(tracking_uri, run.info.run_id, exported)
    with tempfile.TemporaryDirectory(prefix="sweep-ensemble-") as work:
        saved_model = _build_export(study, chosen, Path(work), tracking_uri, members)
        return log_saved_model(tracking_uri, run.info.run_id, saved_model)

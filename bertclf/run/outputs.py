"""Write one run to disk: its output folder (checked before long work starts, created only
when there is something to write), metrics.json, curves.png and saved_model/ (`save_run`);
and what a SavedModel folder and an exported model hold.

Importing it imports neither TensorFlow nor matplotlib (each is imported where it is used),
so the checks run, and bad input fails, before either loads."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from bertclf.errors import UserError

if TYPE_CHECKING:
    from bertclf.run.train import TrainResult

CARD_NAME = "bertclf.json"  # an export's class names and provenance, in its assets.extra/


def is_saved_model(folder: str | Path) -> bool:
    """Whether `folder` holds a SavedModel (its saved_model.pb)."""
    return (Path(folder) / "saved_model.pb").is_file()


def card_path(model_dir: str | Path) -> Path:
    """Where an exported model keeps its JSON card."""
    return Path(model_dir) / "assets.extra" / CARD_NAME


def check_exported(path: str | Path) -> Path:
    """`path` if it holds a SavedModel, else a UserError saying which folder to pass."""
    if not is_saved_model(path):
        raise UserError(f"{path}: not an exported model (no saved_model.pb); pass the "
                        "saved_model/ folder that `bertclf train` wrote")
    return Path(path)


def check_out_dir(path: str | Path, force: bool = False) -> Path:
    """Check that `path` can receive a run's files, creating nothing: it must be a new or
    empty folder (or any folder with `force`) whose nearest existing parent is writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"output folder {path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise UserError(f"output folder {path}: exists and is not empty "
                        "(choose another or pass --force to replace it)")
    existing = next(p for p in [path, *path.absolute().parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"output folder {path}: {existing} is not a writable folder")
    return path


def make_out_dir(path: str | Path, force: bool = False) -> Path:
    """Create the output folder checked by `check_out_dir`, emptying it first with `force`."""
    path = check_out_dir(path, force)
    if force and path.is_dir():
        shutil.rmtree(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"output folder {path}: cannot create it ({e.strerror})") from None
    return path


def save_run(result: TrainResult, out_dir: str | Path, force: bool = False) -> dict[str, Path]:
    """Write the run's metrics, curves and exported model into `out_dir` (new or empty,
    or replaced with `force`)."""
    from bertclf.run.export import export_model  # TensorFlow (and it imports this module)

    out_dir = make_out_dir(out_dir, force)
    paths = {"metrics": out_dir / "metrics.json", "curves": out_dir / "curves.png",
             "saved_model": out_dir / "saved_model"}
    metrics = result.metrics()
    write_metrics(metrics, paths["metrics"])
    plot_curves(result.history, result.best_epoch, paths["curves"], result.evaluations)
    card = {key: metrics[key] for key in ("params", "encoder", "data", "best_epoch",
                                          "val_accuracy", "test_accuracy")}
    config = result.config
    export_model(result.model, result.encoder, result.class_names, config.seq_len,
                 paths["saved_model"], card=card, truncation=config.truncation,
                 head_tokens=config.head_tokens)
    return paths


def write_metrics(metrics: dict, path: str | Path) -> None:
    """Write `metrics` as indented JSON."""
    Path(path).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")


def plot_curves(history: dict[str, list[float]], best_epoch: int, path: str | Path,
                evaluations: list[dict] = ()) -> None:
    """Loss and accuracy per epoch, training vs validation, the kept epoch marked; with
    evaluations inside the epochs, every evaluation too, at its fraction of epochs."""
    import matplotlib

    matplotlib.use("Agg")  # before pyplot draws anything
    import matplotlib.pyplot as plt

    epochs = range(1, len(history["loss"]) + 1)
    in_epoch = [e for e in evaluations if not float(e["epoch"]).is_integer()]
    fig, axes = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(epochs, history[key], "r", label=f"Training {key}")
        ax.plot(epochs, history[f"val_{key}"], "b", label=f"Validation {key}")
        if in_epoch:
            ax.plot([e["epoch"] for e in evaluations], [e[f"val_{key}"] for e in evaluations],
                    "b.:", label=f"Validation {key}, every evaluation")
        ax.axvline(best_epoch, color="gray", linestyle="--", label=f"Best epoch ({best_epoch})")
        ax.set_title(f"Training and validation {key}")
        ax.set_ylabel(key.capitalize())
        ax.legend()
    axes[-1].set_xlabel("Epoch")
    axes[-1].xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

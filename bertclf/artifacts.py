"""Write a finished run to a folder: metrics.json, curves.png and saved_model/."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bertclf.errors import UserError
from bertclf.export import export_model
from bertclf.report import plot_curves, write_metrics
from bertclf.train import TrainResult


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
    out_dir = make_out_dir(out_dir, force)
    paths = {"metrics": out_dir / "metrics.json", "curves": out_dir / "curves.png",
             "saved_model": out_dir / "saved_model"}
    metrics = result.metrics()
    write_metrics(metrics, paths["metrics"])
    plot_curves(result.history, result.best_epoch, paths["curves"])
    card = {key: metrics[key] for key in ("params", "encoder", "data", "best_epoch",
                                          "val_accuracy", "test_accuracy")}
    export_model(result.model, result.encoder, result.class_names, result.config.seq_len,
                 paths["saved_model"], card=card)
    return paths

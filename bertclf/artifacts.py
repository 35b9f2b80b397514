"""Write a finished run to a folder: metrics.json, curves.png and saved_model/."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bertclf.errors import UserError
from bertclf.export import export_model
from bertclf.report import plot_curves, write_metrics
from bertclf.train import TrainResult


def prepare_out_dir(path: str | Path, force: bool = False) -> Path:
    """Create `path` for a run's files; refuse a non-empty one unless `force`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"output folder {path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        if not force:
            raise UserError(f"output folder {path}: exists and is not empty "
                            "(choose another or pass --force to replace it)")
        shutil.rmtree(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"output folder {path}: cannot create it ({e.strerror})") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"output folder {path}: not writable")
    return path


def save_run(result: TrainResult, out_dir: str | Path) -> dict[str, Path]:
    """Write the run's metrics, curves and exported model into `out_dir`."""
    out_dir = Path(out_dir)
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

"""Write a finished run to a folder: metrics.json, curves.png and saved_model/."""

from __future__ import annotations

from pathlib import Path

from bertclf.report import plot_curves, write_metrics
from bertclf.run.export import export_model
from bertclf.run.outputs import make_out_dir
from bertclf.run.train import TrainResult


def save_run(result: TrainResult, out_dir: str | Path, force: bool = False) -> dict[str, Path]:
    """Write the run's metrics, curves and exported model into `out_dir` (new or empty,
    or replaced with `force`)."""
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

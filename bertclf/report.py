"""What a run leaves on disk besides the model: metrics.json and the curves PNG."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def write_metrics(metrics: dict, path: str | Path) -> None:
    """Write `metrics` as indented JSON."""
    Path(path).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")


def plot_curves(history: dict[str, list[float]], best_epoch: int, path: str | Path,
                evaluations: list[dict] = ()) -> None:
    """Loss and accuracy per epoch, training vs validation, the kept epoch marked; with
    evaluations inside the epochs, every evaluation too, at its fraction of epochs."""
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

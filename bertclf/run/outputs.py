"""Output folders: checked before long work starts, created only when there is something to
write; and what a SavedModel folder and an exported model hold (no TensorFlow import, so bad
input fails fast)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bertclf.errors import UserError

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

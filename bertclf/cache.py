"""Where downloads, built models and token caches live."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: $BERTCLF_CACHE_DIR, else ~/.cache/bertclf."""
    root = os.environ.get("BERTCLF_CACHE_DIR") or Path.home() / ".cache" / "bertclf"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path

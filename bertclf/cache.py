"""Where downloads, built models and token caches live, and how an entry is built once."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: $BERTCLF_CACHE_DIR, else ~/.cache/bertclf."""
    root = os.environ.get("BERTCLF_CACHE_DIR") or Path.home() / ".cache" / "bertclf"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_once(dest: str | Path, build: Callable[[Path], object], *,
               replace: bool = False) -> Path:
    """Make the file or folder `dest` with `build(path)` unless it exists already.

    `build` writes at a fresh path beside `dest`, which is renamed to `dest` only once
    `build` has returned: whoever sees `dest` sees it complete, and a crash leaves nothing
    at `dest`. Processes that build the same entry at once each build it; the first rename
    wins and the others' work is thrown away (a folder cannot be renamed onto a non-empty
    one; a file rename replaces an identical file). With `replace`, an existing `dest` is
    swapped for the new build.
    """
    dest = Path(dest)
    if dest.exists() and not replace:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.building-", dir=dest.parent))
    work.chmod(0o755)  # mkdtemp makes it private; cache entries are meant to be shared
    try:
        build(work / dest.name)
        if replace and dest.exists():
            os.replace(dest, work / "replaced")
        try:
            os.replace(work / dest.name, dest)
        except OSError:
            if not dest.exists():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest

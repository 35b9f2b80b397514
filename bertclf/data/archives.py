"""Tar archives and downloads: checked extraction, extraction cached by content, and
sha256-verified downloads with a progress line."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import sys
import tarfile
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from bertclf.cache import build_once
from bertclf.errors import DataError


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive into dest after checking every member; refuses absolute paths,
    '..', links and special files, and raises DataError on a truncated or corrupt archive."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(archive, member)
            _check_complete(archive, tar)
            dest.mkdir(parents=True, exist_ok=True)
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise DataError(f"{archive} is truncated or corrupt: {one_line(error)}") from None


def extract_cached(archive: Path, cache: Path) -> Path:
    """Extract archive once into cache/extracted/<its sha256, 16 hex>; reuse that folder."""
    dest = cache / "extracted" / sha256_file(archive)[:16]
    return build_once(dest, lambda folder: safe_extract(archive, folder))


def download(url: str, dest: Path, sha256: str, fallback: str) -> Path:
    """Download url to dest once, keeping it only if its SHA-256 matches; `fallback` ends
    the error messages with what the user can do instead."""
    return build_once(dest, lambda path: _download_verified(url, path, sha256, fallback))


def sha256_file(path: Path) -> str:
    """The SHA-256 hex digest of a file's bytes."""
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def one_line(error: object) -> str:
    """An error's message on one line (its type name if it has none)."""
    return " ".join(str(error).split()) or type(error).__name__


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute():
        problem = "an absolute path"
    elif ".." in path.parts:
        problem = "a path through '..'"
    elif member.issym() or member.islnk():
        problem = "a link"
    elif not (member.isfile() or member.isdir()):
        problem = "a device or special file"
    else:
        return
    raise DataError(f"refusing to extract {archive}: member {member.name!r} is {problem}")


def _check_complete(archive: Path, tar: tarfile.TarFile) -> None:
    """tarfile takes a tar cut at a member boundary for a complete one; the end-of-archive
    zero block after the last member tells them apart."""
    tar.fileobj.seek(tar.offset)
    if tar.fileobj.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
        raise DataError(f"{archive} is truncated: it stops after {len(tar.getmembers())} member(s)"
                        " without an end-of-archive block")


def _download_verified(url: str, dest: Path, sha256: str, fallback: str) -> None:
    digest = _fetch(url, dest, fallback)
    if digest != sha256:
        raise DataError(f"{url} arrived with SHA-256 {digest}, expected {sha256}; deleted it."
                        f" Try again, or {fallback}")


def _fetch(url: str, dest: Path, fallback: str) -> str:
    """Stream url into dest with a progress line on stderr; returns the SHA-256 hex digest."""
    digest, done = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response, dest.open("wb") as out:
            size = int(response.headers.get("Content-Length") or 0)
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                of = f" of {size / 2**20:.1f}" if size else ""
                print(f"\rdownloading {url}: {done / 2**20:.1f}{of} MiB", end="",
                      file=sys.stderr, flush=True)
    except (OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise DataError(f"cannot download {url} ({one_line(reason)}); {fallback}") from None
    finally:
        if done:  # end the progress line, so that an error gets a line of its own
            print(file=sys.stderr)
    return digest.hexdigest()

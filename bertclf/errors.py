"""Exceptions for mistakes a user can fix; the command lines turn them into exit status 2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """Bad input or configuration: the message says what was wrong and how to fix it."""


class DataError(UserError):
    """A dataset path, file or archive that cannot be loaded."""


class EncoderError(UserError):
    """An unknown encoder name or an encoder handle that cannot be loaded."""


class TrainingError(RuntimeError):
    """Training could not finish, e.g. the loss became NaN."""


def parse_file(path: Path, parse: Callable[[str], T], kind: str,
               fail: Callable[[str], UserError]) -> T:
    """`parse` applied to the UTF-8 text of `path`; a missing file or one that does not parse
    as `kind` raises `fail(reason)`."""
    try:
        return parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise fail("no such file") from None
    except (ValueError, UnicodeDecodeError) as e:  # TOML and JSON decode errors are ValueErrors
        raise fail(f"not valid {kind} ({e})") from None

"""Passwords out of text before it is printed, raised or stored: in store URLs
(`scheme://user:password@host`, any scheme) and in `password=...` settings."""

from __future__ import annotations

import re

MASK = "***"
# scheme://user:password@ — the password runs to the last "@" before the host's path, so
# one holding a raw "@" is masked whole; escaped characters (%40, %2F) are plain text here.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]*:)"
                           r"(?P<password>[^\s/?#]*)@")
# libpq conninfo and query strings: password=..., passwd=...
_SETTING_PASSWORD = re.compile(r"(?P<head>\b(?:password|passwd|pwd)=)(?P<password>[^\s&;'\"]+)",
                               re.IGNORECASE)


def mask(text: str) -> str:
    """`text` with every URL password and `password=` value replaced by ***."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", text)
    return _SETTING_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", text)

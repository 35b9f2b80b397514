"""Servers that tests start as subprocesses on 127.0.0.1: waited for until they answer, and
stopped with their whole process group (workers included) however the test ends."""

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


def bin_command(name: str) -> str:
    """A console script of this environment (beside its python)."""
    return str(Path(sys.executable).parent / name)


def group_is_gone(process: subprocess.Popen, timeout: float = 20) -> bool:
    """True once no process of the group that `process` leads is left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the group, SIGKILL to what is left after 20 s."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(20)
        if group_is_gone(process, timeout=5):
            return


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextlib.contextmanager
def serving(command: list[str], ready_url: str, env: dict | None = None,
            cwd: Path | None = None, timeout: float = 180) -> Iterator[subprocess.Popen]:
    """Run `command` in its own process group until `ready_url` answers 200, yield it,
    then stop the group. Fails the test with the server's output if it never answers."""
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while not answers(ready_url):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"{command[0]} never answered {ready_url} (exit "
                                f"{process.poll()}):\n{log.read()[-4000:]}")
                time.sleep(0.5)
            yield process
        finally:
            stop(process)

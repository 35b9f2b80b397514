"""Work in fresh spawned processes: every trial gets its own (TensorFlow does not give memory
back between models), started ahead while the previous trial trains so that its imports are
done when its job arrives. The benchmark runs its measurements through the same protocol.

Only the standard library is imported here: a spawned process imports this module before it
starts, and whatever it imports would count as that process's start-up.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any


class ChildFailed(RuntimeError):
    """The call raised in the child process, or the process died; the message says why."""


class ChildProcess:
    """A spawned process that imports `preload` at once, then runs one call sent to it."""

    def __init__(self, preload: tuple[str, ...] = (), daemon: bool = True):
        context = multiprocessing.get_context("spawn")
        self.connection, child_end = context.Pipe()
        # Daemons may not start processes of their own: callers that do pass daemon=False.
        self.process = context.Process(target=_serve, args=(child_end, preload), daemon=daemon)
        self.process.start()
        child_end.close()  # so recv() sees EOF if the child dies without answering

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` in the child; its return value, or ChildFailed."""
        try:
            self.connection.send((function, args))
            reply = self.connection.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            reply = None
        except BaseException:  # Ctrl-C: stop the child before giving up its work
            self.close()
            raise
        self.process.join()
        if reply is None:
            code = self.process.exitcode
            how = (f"signal {signal.Signals(-code).name}" if code and code < 0
                   else f"exit code {code}")
            raise ChildFailed(f"process died ({how}), e.g. out of memory")
        kind, payload = reply
        if kind == "error":
            raise ChildFailed(payload)
        return payload

    def close(self) -> None:
        """End the process (one that got no call holds nothing worth waiting for)."""
        self.process.kill()
        self.process.join()
        self.connection.close()


def _serve(connection, preload: tuple[str, ...]) -> None:
    _die_with_parent()
    # Ctrl-C reaches the whole process group: the parent decides, and ends this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for module in preload:
        importlib.import_module(module)
    function, args = connection.recv()
    try:
        connection.send(("ok", function(*args)))
    except BaseException as e:  # everything must reach the parent, not just Exceptions
        traceback.print_exc()
        connection.send(("error", f"{type(e).__name__}: {e}"))


def _die_with_parent() -> None:
    """End this process within a second of its parent dying, even SIGKILLed.

    (Linux's PR_SET_PDEATHSIG would follow the thread that started the process, and a
    sweep's worker threads come and go while the processes they start live on.)"""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


class WarmProcessPool:
    """A fresh process for each of `calls` calls; while one runs, the next is started, so its
    preloaded imports are done by the time its call arrives. No process is started beyond the
    last call."""

    def __init__(self, calls: int, preload: tuple[str, ...] = ()):
        self.preload = preload
        self._left = calls  # calls not yet given a process
        self._spares: list[ChildProcess] = []
        self._lock = threading.Lock()  # workers run trials from several threads

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            process = self._spares.pop() if self._spares else ChildProcess(self.preload)
            self._left -= 1
            if self._left > len(self._spares):
                self._spares.append(ChildProcess(self.preload))
        return process.call(function, *args)

    def close(self) -> None:
        with self._lock:
            for spare in self._spares:
                spare.close()
            self._spares.clear()

"""Work in fresh processes: every trial gets its own (TensorFlow does not give memory back
between models), started ahead while the previous trial trains so that its imports are done
when its job arrives. Trial processes are forked from a server process that has imported
TensorFlow once (multiprocessing's forkserver), so a trial's start costs a fork, not the
imports; where a worker slot has an environment of its own (its GPU: TensorFlow reads
CUDA_VISIBLE_DEVICES as it starts), its processes are spawned and import for themselves.
The benchmark runs its measurements through the same protocol.

Only the standard library is imported here: a spawned process imports this module before it
starts, and whatever it imports would count as that process's start-up.
"""

from __future__ import annotations

import importlib
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing import reduction
from typing import Any

_no_fork_server: str | None = None  # why this process's fork server could not start, if so


class ChildFailed(RuntimeError):
    """The child process died, or raised something that cannot be sent back; says why."""


def start_fork_server(preload: tuple[str, ...]) -> None:
    """Start this process's fork server now, so that it imports `preload` while this process
    goes on (the first forked ChildProcess would otherwise start it and wait for the imports).
    Where it cannot start, processes will be spawned (said once, as ChildProcess says it)."""
    if _no_fork_server is None:
        multiprocessing.get_context("forkserver").set_forkserver_preload(list(preload))
        try:
            multiprocessing.forkserver.ensure_running()
        except OSError as e:
            _spawn_instead(e)


def _spawn_instead(error: OSError) -> None:
    global _no_fork_server
    _no_fork_server = f"{type(error).__name__}: {error}"  # e.g. "AF_UNIX path too long"
    print(f"sweep: no fork server here ({_no_fork_server}): processes are spawned",
          file=sys.stderr, flush=True)


class ChildProcess:
    """A process that applies `env`, imports `preload` at once, then runs one call sent to
    it. What the call raises is raised again in the caller, as itself.

    Spawned by default. With `fork`, it is forked from this process's fork server, which
    imported `preload` once when it started (`start_fork_server`, else the first forked
    process, starts it): the child's imports cost nothing. It gets this process's
    environment, working directory, sys.path and stdout/stderr as they are now, but what the
    preloaded modules read at their import (TensorFlow: its log level, CUDA_VISIBLE_DEVICES)
    is as it was when the server started: a process that needs another `env` there must be
    spawned. Where the fork server cannot start (its socket's path under TMPDIR too long,
    say), processes are spawned instead."""

    def __init__(self, preload: tuple[str, ...] = (), daemon: bool = True,
                 env: dict[str, str] | None = None, fork: bool = False):
        if fork and _no_fork_server is None:
            try:
                self._start(preload, daemon, env, fork=True)
                return
            except OSError as e:  # its socket is in TMPDIR, whose path may be too long
                _spawn_instead(e)
        self._start(preload, daemon, env, fork=False)

    def _start(self, preload: tuple[str, ...], daemon: bool, env: dict[str, str] | None,
               fork: bool) -> None:
        context = multiprocessing.get_context("forkserver" if fork else "spawn")
        if fork:
            context.set_forkserver_preload(list(preload))  # no effect once the server runs
            env = {**os.environ, **(env or {})}  # the server's environment is that of its start
        self.connection, child_end = context.Pipe()
        # Daemons may not start processes of their own: callers that do pass daemon=False.
        self.process = context.Process(
            target=_serve, args=(child_end, preload, env or {}, _Streams() if fork else None),
            daemon=daemon)
        try:
            self.process.start()
        except BaseException:
            self.connection.close()
            raise
        finally:
            child_end.close()  # so recv() sees EOF if the child dies without answering

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` in the child; its return value, or what it raised."""
        try:
            self.connection.send((function, args))
            reply = self.connection.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError):
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
            raise payload if isinstance(payload, BaseException) else ChildFailed(payload)
        return payload

    def close(self) -> None:
        """End the process (one that got no call holds nothing worth waiting for)."""
        self.process.kill()
        self.process.join()
        self.connection.close()


def _serve(connection, preload: tuple[str, ...], env: dict[str, str],
           streams: tuple[int, int] | None) -> None:
    _die_with_parent()
    # Ctrl-C reaches the whole process group: the parent decides, and ends this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if streams is not None:  # forked: the parent's environment and output, not the server's
        os.environ.clear()
        for target, fd in enumerate(streams, start=1):
            os.dup2(fd, target)
            os.close(fd)
    os.environ.update(env)  # before the imports: TensorFlow reads CUDA_VISIBLE_DEVICES once
    for module in preload:
        importlib.import_module(module)
    function, args = connection.recv()
    try:
        connection.send(("ok", function(*args)))
    except BaseException as e:  # everything must reach the parent, not just Exceptions
        if not getattr(e, "expected", False):  # a pruned trial is no failure to trace
            traceback.print_exc()
        try:
            connection.send(("error", e))
        except Exception:  # it does not pickle: its text does
            connection.send(("error", f"{type(e).__name__}: {e}"))


class _Streams:
    """Stands for the caller's stdout and stderr in a forked process's arguments: pickled as
    those two file descriptors (multiprocessing hands them over), they arrive as their numbers
    in the child, which puts them in place of the fork server's."""

    def __reduce__(self):
        return _fds, (reduction.DupFd(1), reduction.DupFd(2))


def _fds(*handed: reduction.DupFd) -> tuple[int, ...]:
    return tuple(fd.detach() for fd in handed)


def _die_with_parent() -> None:
    """End this process within a second of its parent dying, even SIGKILLed (a forked
    process's parent is the fork server, which ends when the process that started it does).

    (Linux's PR_SET_PDEATHSIG would follow the thread that started the process, and a
    sweep's worker threads come and go while the processes they start live on.)"""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


class WarmProcesses:
    """A fresh process for each of `calls` calls, run from worker slots that each may have an
    environment of their own (a GPU, say: spawned; a slot without one: forked); while a slot's
    call runs, its next process is started, so its imports are done by the time its call
    arrives. No process is started beyond the last call, and `kill()` ends every running one
    at once."""

    def __init__(self, calls: int, preload: tuple[str, ...] = (),
                 slots: list[dict[str, str]] | None = None):
        self.preload = preload
        self.slots = slots or [{}]
        self._left = calls  # calls not yet given a process
        self._spares: dict[int, ChildProcess] = {}
        self._running: set[ChildProcess] = set()
        self._lock = threading.Lock()  # workers call from several threads

    def call(self, slot: int, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` in a fresh process with slot `slot`'s environment."""
        with self._lock:
            process = self._spares.pop(slot, None) or self._start(slot)
            self._left -= 1
            if self._left > len(self._spares):
                self._spares[slot] = self._start(slot)
            self._running.add(process)
        try:
            return process.call(function, *args)
        finally:
            with self._lock:
                self._running.discard(process)

    def _start(self, slot: int) -> ChildProcess:
        env = self.slots[slot]
        return ChildProcess(self.preload, env=env, fork=not env)

    def kill(self) -> None:
        """End the running calls' processes now (their calls raise ChildFailed)."""
        with self._lock:
            running = list(self._running)
        for process in running:
            process.process.kill()

    def close(self) -> None:
        """End the spare processes."""
        with self._lock:
            for spare in self._spares.values():
                spare.close()
            self._spares.clear()


def run_workers(work: Callable[[int], None], slots: int, in_process: bool,
                interrupt: Callable[[], None]) -> None:
    """`work(slot)` for every slot, each in a thread of its own (in this thread if
    `in_process`), until all return. Ctrl-C (KeyboardInterrupt, which only the main thread
    gets) calls `interrupt()` to end their work, waits for them, and raises.

    The wait is on events the workers set, not on Thread.join: a join that Ctrl-C interrupts
    can mark a still-running thread as stopped (CPython's bpo-45274 handling), and the
    process would then exit under a worker that is still recording its trial."""
    done = [threading.Event() for _ in range(0 if in_process else slots)]

    def run(slot: int) -> None:
        try:
            work(slot)
        finally:
            done[slot].set()

    try:
        if in_process:
            work(0)
        for slot in range(len(done)):
            threading.Thread(target=run, args=(slot,), name=f"worker-{slot}").start()
        for event in done:
            while not event.wait(0.5):
                pass
    except KeyboardInterrupt:
        interrupt()
        for event in done:
            event.wait()
        raise

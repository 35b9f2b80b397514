"""Who runs a trial, and whether they are still alive.

A running trial records its owner (host, boot, pid and the process's start time) and a
heartbeat as trial attributes, through Optuna's public storage API, so SQLite, PostgreSQL,
journal files and the gRPC proxy all get the same checks. A trial is failed as dead only when
its owner provably is: on the same host (and boot), when the pid is gone or belongs to another
process; on another host, when its heartbeat is older than a grace far longer than any store
timeout. Heartbeat writes that fail are logged and retried at the next beat: one failed write
never ends a live trial.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from bertclf.masking import mask
from sweep.records import BEAT_ATTR, ERROR_ATTR, OWNER_ATTR

HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 600  # another host's trial counts as dead after this long without a beat
T = TypeVar("T")


@dataclass(frozen=True)
class Owner:
    """A process, identified across pid reuse and reboots."""

    host: str
    boot: str  # the kernel's boot id: a reboot ends every process of the last boot
    pid: int
    started: int  # the process's start time, in clock ticks since boot

    @classmethod
    def of(cls, pid: int) -> Owner | None:
        """The process `pid` of this host, or None if there is none."""
        started = _start_ticks(pid)
        return None if started is None else cls(socket.gethostname(), _boot_id(), pid, started)

    def is_alive(self) -> bool | None:
        """True or False for a process of this host and boot; None (unknown) otherwise."""
        if self.host != socket.gethostname() or self.boot != _boot_id():
            return None
        return Owner.of(self.pid) == self


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> int | None:
    try:  # field 22 of /proc/PID/stat; the command name before it may hold spaces
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def this_process() -> Owner:
    owner = Owner.of(os.getpid())
    assert owner is not None
    return owner


def retry(write: Callable[[], T], attempts: int = 4, pause: float = 0.5) -> T:
    """`write()`, tried again after a transient store error (a locked SQLite file, a dropped
    connection); a trial finished meanwhile is not transient and raises at once."""
    for attempt in range(1, attempts + 1):
        try:
            return write()
        except UpdateFinishedTrialError:
            raise
        except Exception:
            if attempt == attempts:
                raise
            time.sleep(pause * attempt)
    raise AssertionError("unreachable")


def claim(storage: optuna.storages.BaseStorage, trial_id: int) -> None:
    """Record this process as the owner of a trial it just started, with a first beat."""
    retry(lambda: storage.set_trial_user_attr(trial_id, OWNER_ATTR, asdict(this_process())))
    retry(lambda: storage.set_trial_user_attr(trial_id, BEAT_ATTR, time.time()))


def why_dead(trial: optuna.trial.FrozenTrial, grace_seconds: float,
             now: float | None = None) -> str | None:
    """Why a RUNNING trial's owner is dead, or None while it may be alive."""
    now = time.time() if now is None else now
    recorded = trial.user_attrs.get(OWNER_ATTR)
    owner = Owner(**recorded) if recorded else None
    alive = owner.is_alive() if owner else None
    if alive is not None:
        return None if alive else f"its worker (pid {owner.pid} on {owner.host}) is gone"
    last = trial.user_attrs.get(BEAT_ATTR)
    if last is None:  # an owner not recorded (yet): judged by the trial's age
        last = trial.datetime_start.timestamp() if trial.datetime_start else now
    silent = now - last
    if silent <= grace_seconds:
        return None
    where = f"pid {owner.pid} on {owner.host}" if owner else "unknown owner"
    return f"its worker ({where}) sent no heartbeat for {silent:.0f}s"


def fail_dead_trials(study: optuna.Study, storage: optuna.storages.BaseStorage,
                     grace_seconds: float = GRACE_SECONDS) -> list[optuna.trial.FrozenTrial]:
    """Fail the study's RUNNING trials whose owner is dead, saying why (`error`); returns
    the trials this call failed."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=[TrialState.RUNNING]):
        reason = why_dead(trial, grace_seconds)
        if reason is None:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(study.study_name), trial.number)
        try:
            storage.set_trial_user_attr(trial_id, ERROR_ATTR, f"worker died: {reason}")
            if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:  # its owner, or another checker, ended it first
            continue
        failed.append(storage.get_trial(trial_id))
    return failed


class Heartbeat:
    """A thread that beats for this process's running trials every `interval` seconds, on a
    storage of its own; a failed write is reported and tried again at the next beat."""

    def __init__(self, open_storage: Callable[[], optuna.storages.BaseStorage],
                 interval: float = HEARTBEAT_SECONDS):
        self.storage = open_storage()
        self.interval = interval
        self.trials: set[int] = set()
        self.failures = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="heartbeat")
        self._thread.start()

    def add(self, trial_id: int) -> None:
        with self._lock:
            self.trials.add(trial_id)

    def remove(self, trial_id: int) -> None:
        with self._lock:
            self.trials.discard(trial_id)

    def beat(self, trial_id: int) -> None:
        """One heartbeat write."""
        self.storage.set_trial_user_attr(trial_id, BEAT_ATTR, time.time())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                trials = sorted(self.trials)
            for trial_id in trials:
                try:
                    self.beat(trial_id)
                except UpdateFinishedTrialError:  # ended elsewhere: its report will say so
                    self.remove(trial_id)
                except Exception as e:
                    self.failures += 1
                    first = str(e).splitlines()[0][:120] if str(e) else ""
                    print(f"sweep: heartbeat write failed ({type(e).__name__}: "
                          f"{mask(first)}); trying again at the next beat", file=sys.stderr,
                          flush=True)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

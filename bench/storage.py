"""Storage load test: 8, 32 and 64 worker processes on one study, against PostgreSQL directly
and through the gRPC proxy (`python -m sweep storage-server`), and a table of what each got.

    python -m bench.storage [--postgres URL] [--workers 8,32,64] [--seconds 20]

URL: --postgres, else $SWEEP_BENCH_POSTGRES_URL, else postgresql://sweep:sweep@127.0.0.1:5432/
sweeps. No TensorFlow: each worker repeats, for `--seconds`, the storage calls the sweep makes
per trial (sweep.runner's loop): fail dead workers' trials, `study.ask()`, claim it
(sweep.ownership.claim), suggest one parameter, 5 `set_trial_intermediate_value` reports, a
heartbeat write, `study.tell`. The sampler is random, so that the figures are the storage's,
not TPE's computing. Every cell has a study of its own (deleted afterwards); one proxy serves
all the proxy cells. Lost trials: left RUNNING, or completed with fewer than 5 reports.
The clock of a cell starts when all its workers have opened the storage; "open s" is how
long the slowest took (a new PostgreSQL connection and Optuna's schema check each).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime

import optuna

from sweep.ownership import BEAT_ATTR, claim, fail_dead_trials
from sweep.study import open_storage

DEFAULT_POSTGRES = "postgresql://sweep:sweep@127.0.0.1:5432/sweeps"
REPORTS = 5


@dataclass
class Tally:
    """What one worker (or a whole cell, added up) did."""

    trials: int = 0
    errors: int = 0
    ask_ms: list[float] = field(default_factory=list)
    report_ms: list[float] = field(default_factory=list)
    error_kinds: set[str] = field(default_factory=set)
    open_s: float = 0.0  # how long opening the storage took (the slowest worker's)
    span: float = 0.0  # how long the trial loop ran (the longest worker's)

    def add(self, other: Tally) -> None:
        self.trials += other.trials
        self.errors += other.errors
        self.ask_ms += other.ask_ms
        self.report_ms += other.report_ms
        self.error_kinds |= other.error_kinds
        self.open_s = max(self.open_s, other.open_s)
        self.span = max(self.span, other.span)


def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def _milliseconds_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def work(url: str, study_name: str, start, seconds: float) -> Tally:
    """One worker: the sweep's per-trial storage calls, trial after trial, for `seconds` from
    when every worker of the cell has opened the storage (the `start` barrier). An error
    abandons its trial (it is then lost) and goes on."""
    tally = Tally()
    opening = time.perf_counter()
    try:  # PostgreSQL refuses connections past its max_connections
        storage = open_storage(url)
        study = optuna.load_study(study_name=study_name, storage=storage,
                                  sampler=optuna.samplers.RandomSampler())
        study_id = storage.get_study_id_from_name(study_name)
    except Exception as e:
        tally.errors, tally.error_kinds = 1, {_first_line(e)}
        start.wait()
        return tally
    tally.open_s = time.perf_counter() - opening
    start.wait()
    began = time.perf_counter()
    while time.perf_counter() < began + seconds:
        try:
            fail_dead_trials(study, storage)
            started = time.perf_counter()
            trial = study.ask()
            tally.ask_ms.append(_milliseconds_since(started))
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            claim(storage, trial_id)
            x = trial.suggest_float("x", 0.0, 1.0)
            for step in range(1, REPORTS + 1):
                started = time.perf_counter()
                storage.set_trial_intermediate_value(trial_id, step, x * step)
                tally.report_ms.append(_milliseconds_since(started))
            storage.set_trial_user_attr(trial_id, BEAT_ATTR, time.time())
            study.tell(trial, x)
            tally.trials += 1
        except Exception as e:
            tally.errors += 1
            tally.error_kinds.add(_first_line(e))
    tally.span = time.perf_counter() - began
    close(storage)
    return tally


def _first_line(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:120]}"


def close(storage) -> None:
    """Give the storage's connections back now: the pool's processes serve the next cells."""
    if isinstance(storage, optuna.storages.RDBStorage):
        storage.engine.dispose()
    elif isinstance(storage, optuna.storages.GrpcStorageProxy):
        storage.close()


def _work(job: tuple) -> Tally:
    return work(*job)


def _warm(_: int) -> None:
    time.sleep(1)  # keeps each started process busy so that the next task finds another


def p99(samples: list[float]) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def lost_trials(url: str, study_name: str) -> int:
    """Trials left RUNNING, or completed with missing reports, read from the database."""
    study = optuna.load_study(study_name=study_name, storage=open_storage(url))
    return sum(t.state == optuna.trial.TrialState.RUNNING or (
        t.state == optuna.trial.TrialState.COMPLETE and len(t.intermediate_values) < REPORTS)
        for t in study.get_trials(deepcopy=False))


def run_cell(pool, manager, database: str, url: str, workers: int, seconds: float) -> dict:
    """`workers` workers on a fresh study through `url`; its row of the table."""
    name = f"bench-storage-{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=name, storage=open_storage(database), direction="maximize")
    start = manager.Barrier(workers)
    tally = Tally()
    for part in pool.map(_work, [(url, name, start, seconds)] * workers, chunksize=1):
        tally.add(part)
    row = {"workers": workers, "trials/s": tally.trials / tally.span if tally.span else 0.0,
           "open s": tally.open_s,
           "ask p99 ms": p99(tally.ask_ms), "report p99 ms": p99(tally.report_ms),
           "errors": tally.errors, "lost": lost_trials(database, name),
           "trials": tally.trials, "error kinds": ", ".join(sorted(tally.error_kinds))}
    optuna.delete_study(study_name=name, storage=open_storage(database))
    return row


def start_proxy(database: str) -> tuple[subprocess.Popen, str]:
    """`python -m sweep storage-server` in front of `database` on a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tempfile.TemporaryFile("w+")
    process = subprocess.Popen([sys.executable, "-m", "sweep", "storage-server", "--storage",
                                database, "--port", str(port)], stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    url = f"grpc://127.0.0.1:{port}"
    for _ in range(30):
        try:
            open_storage(url).close()
            return process, url
        except Exception:
            if process.poll() is not None:
                break
    process.kill()
    log.seek(0)
    raise SystemExit(f"bench.storage: the proxy did not start (exit {process.poll()}):\n"
                     f"{log.read()[-2000:]}")


def machine() -> str:
    from sweep.devices import cpu_model

    model = cpu_model()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} cores, {model}; load average at start {load}; "
            f"Python {platform.python_version()}")


def format_rows(rows: list[dict]) -> str:
    columns = ["workers", "backend", "trials/s", "ask p99 ms", "report p99 ms", "errors",
               "lost", "open s"]
    cells = [columns] + [[f"{row[c]:.1f}" if isinstance(row[c], float) else str(row[c])
                          for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["| " + " | ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)) + " |"
             for line in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    notes = [f"{row['workers']} workers, {row['backend']}: errors {row['error kinds']}"
             for row in rows if row["error kinds"]]
    return "\n".join(lines + notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default=os.environ.get("SWEEP_BENCH_POSTGRES_URL",
                                                             DEFAULT_POSTGRES))
    parser.add_argument("--workers", default="8,32,64", help="worker counts (default 8,32,64)")
    parser.add_argument("--seconds", type=float, default=20, help="per cell (default 20)")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    began = time.monotonic()
    print(f"bench.storage: {datetime.now().isoformat(timespec='seconds')}; {machine()}",
          flush=True)
    _quiet()
    proxy, proxy_url = start_proxy(args.postgres)
    rows = []
    try:
        context = multiprocessing.get_context("spawn")
        with context.Manager() as manager, context.Pool(max(counts),
                                                         initializer=_quiet) as pool:
            pool.map(_warm, range(max(counts)), chunksize=1)
            for workers in counts:
                for backend, url in (("postgresql", args.postgres), ("grpc proxy", proxy_url)):
                    row = {**run_cell(pool, manager, args.postgres, url, workers, args.seconds),
                           "backend": backend}
                    print(f"bench.storage: {workers} workers, {backend}: {row['trials']} "
                          f"trials, {row['trials/s']:.1f}/s, {row['errors']} errors",
                          flush=True)
                    rows.append(row)
    finally:
        proxy.terminate()
        proxy.wait(30)
    print(format_rows(rows))
    print(f"bench.storage: wall time {time.monotonic() - began:.0f}s")
    return 0


if __name__ == "__main__":
    # Spawned workers import this module as __mp_main__: keep the work under this guard.
    raise SystemExit(main())

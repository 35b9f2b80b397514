"""Load and faults: a sweep of many workers on a busy machine, whose heartbeat writes fail
now and then, watched by a checker that sees its trials from another host (a UTS namespace
with another host name, so only heartbeats can tell it they are alive). Prints trials
requested, COMPLETE, PRUNED, FAIL and lost (the stores disagree).

    python -m bench.faults [--trials 20] [--workers 4] [--fail-every 10] [--folder DIR]

`python -m bench.faults worker --fail-every N -- SWEEP_ARGS` is one such sweep process (the
tests use it): `python -m sweep SWEEP_ARGS`, every Nth heartbeat write raising.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared/data/aclImdb_v1_labeled.tar.gz"
EXPERIMENT = """\
[data]
path = "{data}"
max_examples = 60
max_train_examples = 120

[search]
encoder = "tiny"
seq_len = 32
epochs = 2
patience = 2
lr = {{ low = 1e-3, high = 5e-3, log = true }}
batch_size = [16, 32]
precision = "float32"

[study]
pruner = "none"
"""
# Fails the RUNNING trials it judges dead, from "another host", every second until killed.
CHECKER = """
import sys, time, optuna
from sweep.ownership import fail_dead_trials
from sweep.records import ERROR_ATTR
from sweep.study import open_storage
storage = open_storage(sys.argv[1])
while True:
    try:
        study = optuna.load_study(study_name=sys.argv[2], storage=storage)
        for trial in fail_dead_trials(study, storage, float(sys.argv[3])):
            print(f"checker failed trial {trial.number}: {trial.user_attrs[ERROR_ATTR]}",
                  flush=True)
    except KeyError:  # the study is not there yet
        pass
    time.sleep(1)
"""


def flaky_heartbeat(every: int) -> None:
    """Make every `every`-th heartbeat write of each trial raise, as a locked database or a
    dropped connection does. (Counted per trial: one count over all trials, with two trials
    beating in turn and every second write failing, failed every write of the second one.)"""
    from collections import Counter

    from sweep.ownership import Heartbeat

    write = Heartbeat.beat
    counts: Counter[int] = Counter()

    def beat(self, trial_id: int) -> None:
        counts[trial_id] += 1
        if counts[trial_id] % every == 0:
            failures = sum(n // every for n in counts.values())
            raise ConnectionError(f"injected heartbeat write failure #{failures}")
        write(self, trial_id)

    Heartbeat.beat = beat


def worker(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults worker")
    parser.add_argument("--fail-every", type=int, required=True)
    parser.add_argument("sweep_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    flaky_heartbeat(args.fail_every)
    from sweep.__main__ import main

    return main([a for a in args.sweep_args if a != "--"])


def this_checkout() -> dict:
    """The environment with this checkout first on the import path (the sweep processes run
    in the stores' folder, where `python -m` would find an installed copy)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def other_host_checker(storage: str, study: str, grace: float) -> subprocess.Popen:
    """The checker in a UTS namespace named other-host (plain, if unshare is refused), in a
    process group of its own: end it with `stop_checker`."""
    command = [sys.executable, "-c", CHECKER, storage, study, str(grace)]
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "--uts", "true"]).returncode == 0:
        command = [unshare, "--uts", "--fork", "--kill-child", "sh", "-c",
                   'hostname other-host && exec "$@"', "sh", *command]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=this_checkout(),
                            start_new_session=True)


def stop_checker(checker: subprocess.Popen) -> str:
    """Kill the checker's whole process group and return what it printed. (Killing only
    `unshare` would leave its forked child holding the pipe, and reading it would hang.)"""
    try:
        os.killpg(checker.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return checker.communicate(timeout=60)[0]


def burn() -> None:
    while True:
        pass


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--fail-every", type=int, default=10,
                        help="every Nth heartbeat write raises (default 10)")
    parser.add_argument("--grace", type=float, default=90.0,
                        help="the other-host checker's grace in seconds (default 90: longer "
                             "than SQLite's 60-second lock wait, as the grace must be)")
    parser.add_argument("--folder", help="where the stores go (default: a temporary folder)")
    args = parser.parse_args(argv)
    import optuna
    from mlflow.tracking import MlflowClient

    from sweep.agreement import disagreements
    from sweep.records import ERROR_ATTR

    folder = Path(args.folder or tempfile.mkdtemp(prefix="bench-faults-"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "exp.toml").write_text(EXPERIMENT.format(data=DATA))
    storage, study = f"sqlite:///{folder / 'optuna.db'}", "faults"
    burners = [multiprocessing.Process(target=burn, daemon=True) for _ in range(2)]
    for b in burners:
        b.start()
    checker = other_host_checker(storage, study, args.grace)
    started = time.monotonic()
    try:
        sweep = subprocess.run(
            [sys.executable, "-m", "bench.faults", "worker", "--fail-every",
             str(args.fail_every), "--", "run", "--trials", str(args.trials), "--workers",
             str(args.workers), "--heartbeat", "1", "--experiment", "exp.toml", "--study",
             study], cwd=folder, capture_output=True, text=True, env=this_checkout())
    finally:
        seconds = time.monotonic() - started
        stop_checker(checker)
        for b in burners:
            b.kill()
    failures = sweep.stderr.count("heartbeat write failed")
    trials = optuna.load_study(study_name=study, storage=storage).trials
    lost = disagreements(optuna.load_study(study_name=study, storage=storage),
                         MlflowClient(f"sqlite:///{folder / 'mlflow.db'}"))
    states = [t.state.name for t in trials]
    print(f"sweep exit status {sweep.returncode}; {failures} heartbeat write(s) failed "
          f"(every {args.fail_every}th, heartbeat 1 s); checker on another host, grace "
          f"{args.grace:g} s; 2 processes burning both cores")
    for name in ("requested", "COMPLETE", "PRUNED", "FAIL", "lost"):
        value = {"requested": args.trials, "lost": len(lost)}.get(name, states.count(name))
        print(f"  {name:<10} {value}")
    for line in lost:
        print(f"  lost: {line}")
    for trial in trials:
        if trial.state.name == "FAIL":
            print(f"  trial {trial.number} FAIL: {trial.user_attrs.get(ERROR_ATTR)}")
    from bench.run import machine
    from bertclf.quiet import load_tensorflow

    load_tensorflow()  # machine() asks TensorFlow for GPUs: without its start-up lines
    host = machine()
    print(f"wall time {seconds / 60:.1f} min, on {host.get('cpu')}, {host['cores']} cores")
    if sweep.returncode != 0:
        print(sweep.stdout[-2000:], sweep.stderr[-2000:], sep="\n")
    return 0 if sweep.returncode == 0 and not lost and "FAIL" not in states else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        raise SystemExit(worker(sys.argv[2:]))
    raise SystemExit(main(sys.argv[1:]))

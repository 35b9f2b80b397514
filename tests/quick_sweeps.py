"""Helpers that keep the fault and concurrency tests cheap: a one-epoch experiment, read-only
sweep commands run in this process, and a sweep's trial processes found in its process tree
(to act on them as soon as they exist, instead of after a fixed sleep)."""

import contextlib
import io
import subprocess
import time
from pathlib import Path

from sweep_helpers import Background, write_experiment


def small_experiment(folder: Path, epochs: int = 1, extra: str = "") -> Path:
    """write_experiment's tiny experiment, with `epochs` epochs (and `extra` [search] lines)."""
    path = write_experiment(folder)
    path.write_text(path.read_text().replace("epochs = 2", f"epochs = {epochs}\n{extra}"))
    return path


def sweep_main(folder: Path, *args) -> subprocess.CompletedProcess:
    """`python -m sweep ARGS` in `folder`, run in this process (sweep.__main__.main), its
    output captured as sweep_cli's is: for read-only commands whose own process a test is not
    about (it saves a Python start-up and the sweep's imports)."""
    from sweep.__main__ import main

    if "--tracking-uri" not in args:  # the default, made absolute: MLflow caches its stores
        # by URI in this process, so a relative one would reach another folder's database
        args = (*args, "--tracking-uri", f"sqlite:///{Path(folder).absolute() / 'mlflow.db'}")
    out, err = io.StringIO(), io.StringIO()
    with (contextlib.chdir(folder), contextlib.redirect_stdout(out),
          contextlib.redirect_stderr(err)):
        code = main([str(a) for a in args])
    return subprocess.CompletedProcess(["sweep", *args], code, out.getvalue(), err.getvalue())


def trial_processes(sweep_pid: int) -> list[int]:
    """The sweep's trial processes: those its fork server forked, or its spawned children
    (running spawn_main)."""
    processes = {}  # pid: (parent pid, command line)
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            processes[int(entry.name)] = int(stat[1]), (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
    servers = {pid for pid, (parent, command) in processes.items()
               if parent == sweep_pid and b"forkserver" in command}
    return [pid for pid, (parent, command) in processes.items()
            if parent in servers or (parent == sweep_pid and b"spawn_main" in command)]


def wait_for_trial_processes(sweep: Background, count: int, timeout: float = 300) -> list[int]:
    """Poll until the running sweep has `count` trial processes; their pids."""
    deadline = time.monotonic() + timeout
    while len(found := trial_processes(sweep.process.pid)) < count:
        assert time.monotonic() < deadline and sweep.process.poll() is None, sweep.output()
        time.sleep(0.2)
    return found

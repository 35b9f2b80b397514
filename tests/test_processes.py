"""Trial processes: forked from the fork server where a worker slot has no environment of its
own, spawned where it has one (a GPU); a forked process gets the caller's environment, working
directory and output as they are when it starts, not the fork server's."""

import os
import subprocess
import sys

from sweep.processes import ChildProcess, WarmProcesses


def describe(name: str) -> tuple[str | None, str, int]:
    """(the variable `name`, the working directory, the parent's pid), and a line on stdout."""
    print(f"the child sees {name}={os.environ.get(name)}", flush=True)
    return os.environ.get(name), os.getcwd(), os.getppid()


def test_a_forked_process_gets_the_callers_environment_directory_and_output(
        tmp_path, monkeypatch, capfd):
    with capfd.disabled():  # the fork server (started here if not before) keeps this output
        ChildProcess(fork=True).call(describe, "SWEEP_TEST_VALUE")
    monkeypatch.setenv("SWEEP_TEST_VALUE", "set later")
    monkeypatch.chdir(tmp_path)
    value, folder, parent = ChildProcess(fork=True, env={"SWEEP_TEST_SLOT": "x"}).call(
        describe, "SWEEP_TEST_VALUE")
    assert parent != os.getpid(), "forked by the fork server, not spawned from here"
    assert (value, folder) == ("set later", str(tmp_path))
    assert "the child sees SWEEP_TEST_VALUE=set later" in capfd.readouterr().out


def test_a_slot_with_an_environment_of_its_own_spawns_its_process():
    processes = WarmProcesses(2, slots=[{}, {"SWEEP_TEST_SLOT": "gpu 1"}])
    try:
        plain = processes.call(0, describe, "SWEEP_TEST_SLOT")
        own = processes.call(1, describe, "SWEEP_TEST_SLOT")
    finally:
        processes.close()
    assert plain[0] is None and plain[2] != os.getpid(), "no environment: forked"
    assert own[0] == "gpu 1" and own[2] == os.getpid(), "its own environment: spawned"


SPAWNED_WITHOUT_A_FORK_SERVER = """
import os
from sweep.processes import ChildProcess, start_fork_server
start_fork_server(())
print(ChildProcess(fork=True).call(os.getppid) == os.getpid())
"""


def test_where_the_fork_server_cannot_start_processes_are_spawned(tmp_path):
    """The fork server's socket lives under TMPDIR: a path too long for a socket's address
    must not fail the trial, as it did for workers with TMPDIRs deep in a test's folder."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    result = subprocess.run([sys.executable, "-c", SPAWNED_WITHOUT_A_FORK_SERVER],
                            env={**os.environ, "TMPDIR": str(deep)}, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True", "spawned from the caller"
    assert result.stderr.count("sweep: no fork server here (OSError: AF_UNIX path too long)") == 1


STARTED_AHEAD = """
import os, sys, time
from pathlib import Path
from sweep.processes import ChildProcess, start_fork_server
start_fork_server(("imported_ahead",))
marker = Path(os.environ["SWEEP_TEST_MARKER"])
deadline = time.monotonic() + 60
while not marker.exists():  # no process asked for yet
    assert time.monotonic() < deadline, "the fork server never imported its preload"
    time.sleep(0.1)
server = int(marker.read_text())
print(server != os.getpid() and ChildProcess(fork=True).call(os.getppid) == server)
"""


def test_a_fork_server_started_ahead_imports_before_any_process_is_asked_for(tmp_path):
    """`sweep run` starts the fork server before it opens the stores, so that TensorFlow's
    import overlaps them: the preload runs at once, and later processes fork from it."""
    (tmp_path / "imported_ahead.py").write_text(
        "import os, pathlib\n"
        "pathlib.Path(os.environ['SWEEP_TEST_MARKER']).write_text(str(os.getpid()))\n")
    path = os.pathsep.join([str(tmp_path), *sys.path])
    result = subprocess.run([sys.executable, "-c", STARTED_AHEAD], capture_output=True,
                            text=True, timeout=120, env={
                                **os.environ, "PYTHONPATH": path,
                                "SWEEP_TEST_MARKER": str(tmp_path / "marker")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True", "the process forked from the server started ahead"

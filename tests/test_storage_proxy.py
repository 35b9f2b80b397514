"""The gRPC storage proxy (`sweep storage-server`) on loopback in front of a SQLite file: a
sweep through it, with the owner checks and heartbeats of the reliability work, the read
commands through it, and one-line errors for addresses and storages it cannot use."""

import contextlib
import dataclasses
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
import servers
from quick_sweeps import small_experiment, sweep_main
from sweep_helpers import (
    Background,
    error_lines,
    explain,
    free_port,
    load_study,
    sweep_cli,
    sweep_env,
    write_experiment,
)

from bertclf.errors import UserError
from sweep.ownership import BEAT_ATTR, OWNER_ATTR, this_process
from sweep.study import open_storage

pytestmark = pytest.mark.spread  # each test stands alone (tests/conftest.py)


@contextlib.contextmanager
def storage_server(folder: Path) -> Iterator[str]:
    """`sweep storage-server` in front of folder/optuna.db until it answers; its grpc:// URL."""
    port = free_port()
    url = f"grpc://127.0.0.1:{port}"
    with open(folder / "proxy.log", "w+") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sweep", "storage-server", "--storage",
             f"sqlite:///{folder / 'optuna.db'}", "--port", str(port)],
            cwd=folder, env=sweep_env(folder), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    open_storage(url).close()  # waits for the proxy a few seconds
                    break
                except UserError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        pytest.fail(f"the proxy never answered (exit {process.poll()}):\n"
                                    f"{log.read()[-4000:]}")
            yield url
        finally:
            servers.stop(process)


def dead_owner() -> dict:
    """An owner record of this host whose process has exited."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return dataclasses.asdict(dataclasses.replace(this_process(), pid=gone.pid))


def test_a_sweep_through_the_proxy_records_owners_and_fails_dead_trials(tmp_path):
    small_experiment(tmp_path)
    with storage_server(tmp_path) as url:
        # A trial that a dead worker of this host left RUNNING, made through the proxy.
        study = optuna.create_study(study_name="proxied", storage=open_storage(url),
                                    direction="maximize")
        orphan = study.ask()
        orphan.set_user_attr(OWNER_ATTR, dead_owner())

        command = Background(tmp_path, "run", "--trials", 2, "--experiment", "exp.toml",
                             "--study", "proxied", "--storage", url, "--heartbeat", 1)
        assert command.wait(600) == 0, command.output()
        assert "heartbeat write failed" not in command.output()

        listed = sweep_main(tmp_path, "trials", "--storage", url)
        checked = sweep_main(tmp_path, "check", "--storage", url)
    assert listed.returncode == 0, explain(listed)
    assert [line.split()[:2] for line in listed.stdout.splitlines()[1:]] == [
        ["0", "FAIL"], ["1", "COMPLETE"], ["2", "COMPLETE"]], listed.stdout
    assert checked.returncode == 0, explain(checked)
    assert "agree on every one" in checked.stdout

    # What the proxy wrote is in the database behind it.
    trials = load_study(tmp_path, "proxied").trials
    assert trials[0].state.name == "FAIL"
    assert trials[0].user_attrs["error"] == (
        f"worker died: its worker (pid {trials[0].user_attrs[OWNER_ATTR]['pid']} on "
        f"{socket.gethostname()}) is gone")
    for trial in trials[1:]:
        assert trial.state.name == "COMPLETE", trial.user_attrs.get("error")
        owner = trial.user_attrs[OWNER_ATTR]
        assert (owner["host"], owner["pid"]) == (socket.gethostname(), command.process.pid)
        start, end = (t.timestamp() for t in (trial.datetime_start, trial.datetime_complete))
        assert start <= trial.user_attrs[BEAT_ATTR] <= end
        assert sorted(trial.intermediate_values) == [1]  # one evaluation, reported through it


def test_addresses_and_storages_the_proxy_cannot_use_are_one_line_errors(tmp_path):
    nobody = f"grpc://127.0.0.1:{free_port()}"
    write_experiment(tmp_path)
    commands = (["trials", "--storage", nobody],
                ["run", "--trials", 1, "--experiment", "exp.toml", "--storage", nobody],
                ["trials", "--storage", "grpc://127.0.0.1"],
                ["storage-server", "--storage", "sweep.journal", "--port", free_port()],
                ["storage-server", "--storage", nobody, "--port", free_port()])
    # At once: two of them wait out the proxy's readiness timeout with nothing answering.
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        results = list(pool.map(lambda args: sweep_cli(tmp_path, *args), commands))
    for result in results:
        assert result.returncode == 2, explain(result)
        assert len(error_lines(result.stderr)) == 1, explain(result)
    for result in results[:2]:
        assert f"no Optuna storage proxy answers at {nobody}" in result.stderr
    assert "expected grpc://HOST:PORT" in results[2].stderr
    assert "cannot serve journal files" in results[3].stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna.db").exists()


def test_a_second_proxy_on_a_taken_port_refuses(tmp_path):
    with storage_server(tmp_path) as url:
        port = url.rsplit(":", 1)[1]
        result = sweep_cli(tmp_path, "storage-server", "--storage",
                           f"sqlite:///{tmp_path / 'other.db'}", "--port", port)
    assert result.returncode == 2, explain(result)
    assert error_lines(result.stderr) == [
        f"sweep: error: cannot serve on 127.0.0.1:{port}: Address already in use"]

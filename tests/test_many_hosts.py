"""Hosts that share no disk: PostgreSQL for Optuna, an MLflow tracking server on loopback
that proxies artifacts into a folder of its own, and three "hosts", each a folder with its
own copy of the project, data, HOME and bertclf cache. Host A runs in a UTS namespace named
host-a (where unshare is allowed), so host B can judge A's trials only by their heartbeats.

A is SIGKILLed mid-trial; B fails that trial once its heartbeat is older than B's grace and
re-runs its parameters; C promotes with its own data copy, exports, registers and runs a
trial whose keep_models deletes a model, all through the server. At the end both stores agree
and no artifact was written anywhere but the server's destination."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from servers import bin_command, serving, stop
from sweep_helpers import ROOT, explain, free_port, write_data

POSTGRES_URL = os.environ.get("SWEEP_TEST_POSTGRES_URL")
EXPERIMENT = """\
[data]
path = "data.tsv"
max_examples = 60

[search]
encoder = "tiny"
seq_len = 32
epochs = 8
patience = 8
lr = { low = 1e-3, high = 5e-3, log = true }
batch_size = [16, 32]
precision = "float32"

[study]
pruner = "none"
keep_models = 1

[promote]
epochs = 1
"""

pytestmark = pytest.mark.skipif(
    not POSTGRES_URL, reason="SWEEP_TEST_POSTGRES_URL is unset (.ci/run starts PostgreSQL "
    "and sets it)")


class Host:
    """A folder with its own copy of the project, data, HOME and cache (its built models
    copied from `models`, so that each host does not spend its first trial building them)."""

    def __init__(self, root: Path, name: str, models: Path):
        self.name, self.folder = name, root / name
        self.project = self.folder / "project"
        for part in ("bertclf", "sweep", "bench"):
            shutil.copytree(ROOT / part, self.project / part,
                            ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(models, self.folder / "cache" / "models")
        (self.folder / "home").mkdir()
        write_data(self.folder / "data.tsv")
        (self.folder / "exp.toml").write_text(EXPERIMENT)

    def env(self) -> dict:
        return {**os.environ, "PYTHONPATH": str(self.project), "HOME": str(self.folder / "home"),
                "BERTCLF_CACHE_DIR": str(self.folder / "cache"),
                "TMPDIR": str(self.folder)}

    def command(self, *args) -> list[str]:
        return [sys.executable, "-m", "sweep", *map(str, args)]

    def run(self, *args, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), cwd=self.folder, env=self.env(),
                              capture_output=True, text=True, timeout=timeout)

    def start(self, *args, uts_name: str | None = None) -> subprocess.Popen:
        command = self.command(*args)
        if uts_name and subprocess.run(["unshare", "--uts", "true"]).returncode == 0:
            command = ["unshare", "--uts", "--fork", "sh", "-c",
                       f'hostname {uts_name} && exec "$@"', "sh", *command]
        return subprocess.Popen(command, cwd=self.folder, env=self.env(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)


@pytest.fixture
def hosts_root():
    """A short folder for the hosts: each host's TMPDIR is its folder, where the fork
    server's socket goes, and a socket's path has at most 107 characters."""
    with tempfile.TemporaryDirectory(prefix="hosts-") as root:
        yield Path(root)


@pytest.fixture
def built_models() -> Path:
    """The built-in `tiny` models, built into this session's cache."""
    from bertclf.encoders.map import get_encoder, install_builtins

    install_builtins(get_encoder("tiny"))
    return Path(os.environ["BERTCLF_CACHE_DIR"]) / "models"


def test_workers_on_hosts_that_share_no_disk(tmp_path, hosts_root, built_models):
    destination = tmp_path / "server-artifacts"
    port = free_port()
    tracking = f"http://127.0.0.1:{port}"
    study = f"hosts-{uuid.uuid4().hex[:8]}"  # the database outlives the test
    stores = ("--storage", POSTGRES_URL, "--tracking-uri", tracking, "--study", study)
    server = [bin_command("mlflow"), "server", "--backend-store-uri",
              f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
              str(destination), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    a, b, c = (Host(hosts_root, name, built_models) for name in ("host-a", "host-b", "host-c"))
    with serving(server, f"{tracking}/health", cwd=tmp_path):
        worker_a = a.start("run", "--trials", 2, "--experiment", "exp.toml", *stores,
                           "--heartbeat", 1, uts_name="host-a")
        try:
            deadline = time.monotonic() + 600
            while True:  # until A's first trial is training
                assert worker_a.poll() is None and time.monotonic() < deadline, (
                    worker_a.communicate()[0][-3000:])
                try:
                    trials = optuna.load_study(study_name=study, storage=POSTGRES_URL).trials
                except KeyError:
                    trials = []
                if trials and trials[0].intermediate_values:
                    break
                time.sleep(0.5)
            os.killpg(worker_a.pid, signal.SIGKILL)  # A has no chance to clean up
            worker_a.wait(30)
        finally:
            stop(worker_a)
        b_result = b.run("run", "--trials", 2, "--experiment", "exp.toml", *stores,
                         "--grace", 5)
        assert b_result.returncode == 0, explain(b_result)
        assert "trial 0 FAIL: worker died: its worker (pid" in b_result.stdout

        data_c = c.folder / "data.tsv"
        promoted = c.run("promote", *stores, "--top", 1, "--seeds", 1, "--data", data_c)
        assert promoted.returncode == 0, explain(promoted)
        exported = c.run("best", *stores, "--export", c.folder / "exported")
        assert exported.returncode == 0, explain(exported)
        assert (c.folder / "exported" / "saved_model.pb").is_file()
        registered = c.run("best", *stores, "--register", f"{study}-clf")
        assert registered.returncode == 0, explain(registered)
        more = c.run("run", "--trials", 1, "--experiment", "exp.toml", *stores)
        assert more.returncode == 0, explain(more)
        checked = c.run("check", *stores)
        assert checked.returncode == 0, explain(checked)

        client = MlflowClient(tracking)
        experiment = client.get_experiment_by_name(study)
        runs = client.search_runs([experiment.experiment_id], max_results=100)
        assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
        dropped = [r for r in runs if r.data.tags.get("model_dropped") == "true"]
        assert dropped, ("keep_models = 1 dropped models through the server:\n"
                         + explain(b_result) + explain(more))

    trials = optuna.load_study(study_name=study, storage=POSTGRES_URL).trials
    dead = trials[0]
    # In its own UTS namespace A is another host, judged by its heartbeat; where unshare is
    # refused it shares B's host name, and B sees its pid gone.
    separate = subprocess.run(["unshare", "--uts", "true"]).returncode == 0
    reason = "sent no heartbeat" if separate else "is gone"
    assert dead.state.name == "FAIL" and reason in dead.user_attrs["error"], dead.user_attrs
    retries = [t for t in trials if t.user_attrs.get("sweep.retry_of") == 0]
    assert [t.state.name for t in retries] == ["COMPLETE"]
    assert retries[0].params == dead.params
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3
    # Every artifact is in the server's destination, none in a host's folder.
    for host in (a, b, c):
        stray = [p for p in host.folder.rglob("*") if p.name in ("mlruns", "mlartifacts")]
        assert stray == [], stray
    assert any(p.name == "saved_model.pb" for p in destination.rglob("*"))

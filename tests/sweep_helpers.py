"""Helpers for the tests that run `python -m sweep` as a subprocess."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import servers
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
IMDB_ARCHIVE = ROOT.parent / "shared" / "data" / "aclImdb_v1_labeled.tar.gz"
STUDY = "check"
POSITIVE = ["wonderful", "great", "excellent", "loved", "brilliant"]
NEGATIVE = ["terrible", "awful", "boring", "hated", "worst"]


# --- helpers -------------------------------------------------------------------------------


def write_data(path: Path, per_class: int = 150) -> Path:
    """A TSV of clearly separable reviews: words of one class only, plus 'film'."""
    rng = random.Random(0)
    rows = []
    for label, words in (("pos", POSITIVE), ("neg", NEGATIVE)):
        for _ in range(per_class):
            review = [rng.choice(words) for _ in range(6)] + ["film"]
            rng.shuffle(review)
            rows.append(f"{' '.join(review)}\t{label}")
    rng.shuffle(rows)
    path.write_text("text\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def write_experiment(folder: Path, name: str = "exp.toml", encoder: str = '["tiny"]',
                     extra_search: str = "", pruner: str = '"median"') -> Path:
    """A small experiment beside data.tsv (the data path is relative to the file); `pruner` is
    the TOML value of study.pruner."""
    if not (folder / "data.tsv").exists():
        write_data(folder / "data.tsv")
    path = folder / name
    path.write_text(f"""\
[data]
path = "data.tsv"
max_examples = 60

[search]
encoder = {encoder}
{extra_search}
seq_len = 32
epochs = 2
lr = {{ low = 1e-3, high = 5e-3, log = true }}
batch_size = [16, 32]
precision = "float32"

[study]
pruner = {pruner}
""", encoding="utf-8")
    return path


def sweep_env(folder: Path) -> dict:
    """This environment (BERTCLF_CACHE_DIR included), the repository importable, and a
    private TMPDIR so that the sweep's temporary files can be seen to be gone."""
    tmp = folder / "tmp"
    tmp.mkdir(exist_ok=True)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "TMPDIR": str(tmp)}


def sweep_cli(folder: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "sweep", *map(str, args)], cwd=folder,
                            env=sweep_env(folder), capture_output=True, text=True,
                            timeout=timeout)
    result.seconds = time.monotonic() - started
    return result


def explain(result: subprocess.CompletedProcess) -> str:
    return (f"exit {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
            f"\n--- stderr\n{result.stderr[-4000:]}")


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def client_for(folder: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")


def load_study(folder: Path, name: str = STUDY) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'optuna.db'}")


@dataclass
class Runs:
    experiment_id: str
    parents: list
    children: list

    @property
    def parent(self):
        assert len(self.parents) == 1, [r.info.run_name for r in self.parents]
        return self.parents[0]

    def by_name(self) -> dict:
        return {r.info.run_name: r for r in self.children}

    def running(self) -> list[str]:
        return [r.info.run_name for r in self.parents + self.children
                if r.info.status == "RUNNING"]


def mlflow_runs(folder: Path, name: str = STUDY) -> Runs:
    client = client_for(folder)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no MLflow experiment named {name!r}"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return Runs(experiment.experiment_id, parents, children)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _interruptible() -> None:
    """Ctrl-C as a user's terminal delivers it: a suite started in the background by a
    non-interactive shell (`cmd &`) ignores SIGINT, its children inherit that, and Python
    then never raises KeyboardInterrupt; the tests that press Ctrl-C need the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Background:
    """A sweep command in its own process group, its output collected line by line."""

    def __init__(self, folder: Path, *args: str):
        self.stderr_path = folder / f"stderr-{time.monotonic_ns()}.txt"
        self._stderr = open(self.stderr_path, "w")  # closed in wait()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sweep", *map(str, args)], cwd=folder,
            env=sweep_env(folder), stdout=subprocess.PIPE, stderr=self._stderr, text=True,
            start_new_session=True, preexec_fn=_interruptible)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, prefix: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line.startswith(prefix) for line in self.lines):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        self.kill()
        pytest.fail(f"no line {prefix!r} from the sweep:\n{self.output()}")

    def signal(self, signum: int) -> None:
        os.killpg(self.process.pid, signum)

    def wait(self, timeout: float = 120) -> int:
        try:
            code = self.process.wait(timeout)
        finally:
            self._reader.join(10)
            self._stderr.close()
        return code

    def kill(self) -> None:
        try:
            self.signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.wait()

    def output(self) -> str:
        stderr = self.stderr_path.read_text(errors="replace")[-3000:]
        return "\n".join(self.lines) + "\n--- stderr\n" + stderr

    def group_is_gone(self, timeout: float = 20) -> bool:
        """True once no process of its group (the sweep, its trial process) is left."""
        return servers.group_is_gone(self.process, timeout)

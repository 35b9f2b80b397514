"""One promoted study per test session, shared by the test files that need one: `sweep run
--trials 3` (keep_models = 1, [promote] epochs = 1), `best --ensemble` refused before any
promotion, then `sweep promote --top 2 --seeds 2` twice. It is built once under a file lock in
the test run's temporary folder (xdist workers share it) and never changed there: each test
module gets a copy of its own."""

import fcntl
import json
import shutil
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import pytest
from sweep_helpers import STUDY, explain, sweep_cli, write_experiment

PROMOTE = "\n[promote]\nepochs = 1\n"  # the full-fidelity stage changes the epochs
STEPS = {"search": ("run", "--trials", 3, "--experiment", "exp.toml", "--study", STUDY),
         "no_promotion": ("best", "--study", STUDY, "--export", "refused", "--ensemble"),
         "first": ("promote", "--study", STUDY, "--top", 2, "--seeds", 2),
         "again": ("promote", "--study", STUDY, "--top", 2, "--seeds", 2)}
FAILS = {"no_promotion"}  # the steps expected to fail: their test files check how
RESULTS = "results.json"


def promoted_copy(factory: pytest.TempPathFactory,
                  name: str) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    """A copy of the session's promoted study in a new folder, and the results of the
    commands that made it, by step (STEPS)."""
    base = factory.getbasetemp()
    if base.name.startswith("popen-gw"):  # an xdist worker's: the run's folder is above it
        base = base.parent
    shared = base / "promoted-study"
    with open(base / "promoted-study.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (shared / RESULTS).is_file():
            _build(shared)
    folder = factory.mktemp(name) / "study"
    shutil.copytree(shared, folder, ignore=shutil.ignore_patterns("tmp", RESULTS))
    _relocate(folder, shared)
    results = json.loads((shared / RESULTS).read_text())
    return folder, {step: subprocess.CompletedProcess(**r) for step, r in results.items()}


def _build(folder: Path) -> None:
    """Run STEPS in a new `folder`; their results, written last, mark it complete."""
    shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
    folder.mkdir()
    experiment = write_experiment(folder)
    experiment.write_text(experiment.read_text().replace(
        "[study]\n", "[study]\nkeep_models = 1\n") + PROMOTE)
    results = {}
    for step, args in STEPS.items():
        result = sweep_cli(folder, *args)
        assert result.returncode == 0 or step in FAILS, explain(result)
        results[step] = {key: getattr(result, key)
                         for key in ("args", "returncode", "stdout", "stderr")}
    (folder / RESULTS).write_text(json.dumps(results))


def _relocate(folder: Path, old: Path) -> None:
    """Point the paths that the copied stores hold (artifact locations, the experiment and
    data files) at the copy."""
    for store in ("mlflow.db", "optuna.db"):
        with closing(sqlite3.connect(folder / store)) as db, db:
            tables = [row[0] for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                for column in [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]:
                    db.execute(f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                               f'WHERE typeof("{column}") = \'text\' AND instr("{column}", ?)',
                               (str(old), str(folder), str(old)))

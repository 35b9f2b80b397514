"""README's setup commands in a fresh virtual environment whose setuptools is current (>= 81,
no pkg_resources): the project's pin must bring back a setuptools that tensorflow-hub can
import, and training must then work. Needs PyPI (skips where it is unreachable)."""

import json
import os
import re
import subprocess
import sys
import sysconfig
import urllib.request
from pathlib import Path

import pytest
from sweep_helpers import explain, write_data

ROOT = Path(__file__).resolve().parents[1]
PYPI = "https://pypi.org/simple/setuptools/"
# What setuptools itself puts into a site-packages folder, and this project's own install:
# hidden from the venv, which gets its own of both.
NOT_SHARED = ("setuptools", "pkg_resources", "_distutils_hack", "distutils-precedence.pth",
              "bertclf", "__editable__.bertclf", "__editable___bertclf")


def readme_setup_command() -> str:
    """The one setup command line in README's "Setup and tests" section."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Setup and tests")[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = [line for line in block.splitlines() if line.startswith("pip install")]
    assert len(commands) == 1, block
    return commands[0]


def pypi_reachable() -> bool:
    try:
        with urllib.request.urlopen(PYPI, timeout=15) as response:
            return response.status == 200
    except OSError:
        return False


def make_venv(folder: Path) -> Path:
    """A venv that sees this interpreter's packages (TensorFlow and all: installing them anew
    downloads about 1 GB) except setuptools' and the project's own, as a fresh venv would.
    (`--system-site-packages` would leave this environment's pkg_resources importable.)"""
    shared = folder / "shared-site-packages"
    shared.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(NOT_SHARED) and entry.name != "__pycache__":
            (shared / entry.name).symlink_to(entry)
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300)
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site_dir = Path(subprocess.run([venv / "bin" / "python", "-c", purelib], capture_output=True,
                                   text=True, check=True).stdout.strip())
    (site_dir / "shared.pth").write_text(f"import site; site.addsitedir({str(shared)!r})\n")
    return venv


def in_venv(command: str, cwd: Path, env: dict,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a shell command line with the venv's bin/ first on PATH."""
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_readme_setup_survives_current_setuptools(tmp_path):
    if not pypi_reachable():
        pytest.skip(f"PyPI is unreachable ({PYPI}): this test installs from it")
    venv = make_venv(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", VIRTUAL_ENV=str(venv),
               BERTCLF_CACHE_DIR=str(tmp_path / "cache"), TF_CPP_MIN_LOG_LEVEL="2")
    versions = "python -c 'import setuptools; print(setuptools.__version__)'"

    # The bug's setting: current setuptools, so no pkg_resources and no tensorflow_hub.
    done = in_venv("pip install -U setuptools", tmp_path, env)
    assert done.returncode == 0, explain(done)
    done = in_venv(versions, tmp_path, env)
    assert int(done.stdout.split(".")[0]) >= 81, explain(done)
    done = in_venv("python -c 'import tensorflow_hub'", tmp_path, env)
    assert done.returncode != 0 and "No module named 'pkg_resources'" in done.stderr, explain(done)

    # README's setup, then the import and a short training run.
    command = readme_setup_command()
    assert command.startswith("pip install -e '.[dev]'"), command
    done = in_venv(command, ROOT, env)
    assert done.returncode == 0, explain(done)
    done = in_venv(versions, tmp_path, env)
    assert int(done.stdout.split(".")[0]) < 81, explain(done)
    done = in_venv("python -c 'import tensorflow_hub, bertclf; "
                   "print(bertclf.__file__)'", tmp_path, env)
    assert done.returncode == 0, explain(done)
    assert done.stdout.strip() == str(ROOT / "bertclf" / "__init__.py")

    write_data(tmp_path / "reviews.tsv", per_class=24)
    done = in_venv("python -m bertclf train --data reviews.tsv --encoder tiny --epochs 1 "
                   "--seq-len 32 --out run", tmp_path, env)
    assert done.returncode == 0, explain(done)
    assert "pkg_resources" not in done.stderr  # setuptools >= 80.9 warns on every import
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["class_names"] == ["neg", "pos"] and metrics["epochs_run"] == 1
    assert (tmp_path / "run" / "saved_model" / "saved_model.pb").is_file()

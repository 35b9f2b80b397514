"""Test-wide setup: legacy Keras before TensorFlow loads, a private cache per test session,
and the shared IMDB archive loaded once per session."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# An MLflow server otherwise starts seven job-runner processes (huey) that no test uses, each
# importing MLflow, and they outlive a server that is killed.
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
# Built models, extracted archives and token caches go to a throwaway folder, not ~/.cache.
_OWN_CACHE = "BERTCLF_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["BERTCLF_CACHE_DIR"] = tempfile.mkdtemp(prefix="bertclf-test-cache-")
SESSION_CACHE = os.environ["BERTCLF_CACHE_DIR"]

IMDB_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "aclImdb_v1_labeled.tar.gz"


@pytest.fixture(scope="session")
def imdb_archive() -> Path:
    """The shared IMDB archive, extracted once into the session cache, where every load of
    it in this session (command lines that tests run included) finds the extracted copy."""
    if not IMDB_ARCHIVE.is_file():
        pytest.skip(f"the IMDB archive is not at {IMDB_ARCHIVE} (../shared is absent)")
    from bertclf.data.archives import extract_cached

    extract_cached(IMDB_ARCHIVE, Path(SESSION_CACHE))
    return IMDB_ARCHIVE


@pytest.fixture(scope="session")
def imdb_full(imdb_archive):
    """The shared IMDB archive loaded in full (a bertclf.data.datasets.Dataset)."""
    from bertclf.data.datasets import load_dataset

    # Set up by whichever test asks first, which may have pointed the cache elsewhere.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BERTCLF_CACHE_DIR", SESSION_CACHE)
        return load_dataset(imdb_archive)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items):
    """A test file's tests form one xdist group (`--dist loadgroup`: one worker runs them, so
    its module fixtures are built once), unless the file is marked `spread`. The spread tests
    run last, where their many short pieces even out the two workers' ends."""
    for item in items:
        if not item.get_closest_marker("spread"):
            item.add_marker(pytest.mark.xdist_group(item.path.name))
    items.sort(key=lambda item: item.get_closest_marker("spread") is not None)


def pytest_sessionfinish(session, exitstatus):
    """Remove the session cache made above (it holds the extracted IMDB archive)."""
    if _OWN_CACHE:
        shutil.rmtree(SESSION_CACHE, ignore_errors=True)

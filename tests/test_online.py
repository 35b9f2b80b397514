"""Downloads over HTTP from a server on 127.0.0.1: the IMDB archive behind `--data imdb`
(BERTCLF_IMDB_URL/BERTCLF_IMDB_SHA256), and TF Hub URL handles in an encoder map, through
the sweep and the command line."""

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from loopback_http import LoopbackServer
from sweep_helpers import ROOT, explain, load_study, sweep_cli, write_data, write_experiment

from bertclf.data.datasets import fingerprint, load_dataset

IMDB_PATH = "/mirror/aclImdb_v1.tar.gz"
HUB_FORMAT = "tf-hub-format=compressed"
# What absl and TensorFlow print on their own: not the command's output.
ABSL_PREFIXES = ("I0000", "W0000", "E0000", "WARNING: All log messages")


def bertclf_cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`python -m bertclf ARGS` in cwd with this environment, `env` and this checkout."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "bertclf", *args], cwd=cwd,
                          env={**os.environ, **env, "PYTHONPATH": path}, capture_output=True,
                          text=True, timeout=300)


def own_lines(stderr: str) -> list[str]:
    """The non-blank stderr lines that are not absl's or TensorFlow's log lines."""
    return [line for line in stderr.split("\n")
            if line.strip() and not line.startswith(ABSL_PREFIXES)]


def tar_gz(files: dict[str, bytes]) -> bytes:
    """A .tar.gz holding these files (parent folders implied)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in sorted(files.items()):
            member = tarfile.TarInfo(name)
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))
    return buffer.getvalue()


def hub_tarball(folder: Path) -> bytes:
    """A SavedModel folder in TF Hub's compressed format: its contents, folders included
    (tensorflow_hub makes a folder only for a folder member)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
    return buffer.getvalue()


def files_in(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- the IMDB archive ----------------------------------------------------------------------


def review(split: str, label: str, i: int) -> str:
    return f"{split} {label} review {i}: a {'fine' if label == 'pos' else 'dull'} film"


# split -> class folder -> number of reviews; unsup/ must be ignored
IMDB_COUNTS = {"train": {"pos": 20, "neg": 20, "unsup": 3}, "test": {"pos": 10, "neg": 10}}
IMDB_FILES = {f"aclImdb/{split}/{label}/{i}_7.txt": review(split, label, i).encode()
              for split, counts in IMDB_COUNTS.items() for label, n in counts.items()
              for i in range(n)}
IMDB_TARBALL = tar_gz(IMDB_FILES | {"aclImdb/README": b"a miniature aclImdb"})


@pytest.fixture
def imdb_mirror(tmp_path, monkeypatch):
    """A server holding the miniature archive, BERTCLF_IMDB_URL/SHA256 pointing at it and
    a private, empty BERTCLF_CACHE_DIR."""
    monkeypatch.setenv("BERTCLF_CACHE_DIR", str(tmp_path / "cache"))
    with LoopbackServer() as server:
        server.bodies[IMDB_PATH] = IMDB_TARBALL
        monkeypatch.setenv("BERTCLF_IMDB_URL", server.url(IMDB_PATH))
        monkeypatch.setenv("BERTCLF_IMDB_SHA256", hashlib.sha256(IMDB_TARBALL).hexdigest())
        yield server


def test_imdb_is_downloaded_once_and_split_as_documented(imdb_mirror, tmp_path):
    dataset = load_dataset("imdb")
    assert imdb_mirror.count(IMDB_PATH) == 1
    archive = tmp_path / "cache" / "imdb" / "aclImdb_v1.tar.gz"
    assert archive.read_bytes() == IMDB_TARBALL
    assert (dataset.source, dataset.class_names) == ("imdb", ["neg", "pos"])
    # train 80/20 into train/validation (stratified, seed 42), test kept apart, unsup ignored
    assert dataset.notes == ["validation: carved 20% out of train with seed 42"]
    sizes = [[int((s.labels == c).sum()) for c in (0, 1)]
             for s in (dataset.train, dataset.validation, dataset.test)]
    assert sizes == [[16, 16], [4, 4], [10, 10]]
    assert sorted(dataset.test.texts) == sorted(
        review("test", label, i) for label in ("neg", "pos") for i in range(10))
    assert sorted(dataset.train.texts + dataset.validation.texts) == sorted(
        review("train", label, i) for label in ("neg", "pos") for i in range(20))

    again = load_dataset("imdb")
    assert len(imdb_mirror.requests) == 1  # the cached archive and extraction were reused
    for name in ("train", "validation", "test"):
        assert fingerprint(getattr(again, name)) == fingerprint(getattr(dataset, name))


def assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit status 2, and one line on stderr holding every fragment (after any progress
    lines of the download), no traceback."""
    assert done.returncode == 2, explain(done)
    assert "Traceback" not in done.stderr, explain(done)
    *progress, error = own_lines(done.stderr)
    assert all(line.startswith("downloading ") for line in progress), explain(done)
    assert error.startswith("bertclf: error: "), explain(done)
    for fragment in fragments:
        assert fragment in error, explain(done)


def nothing_cached(cache: Path) -> bool:
    return [p for p in cache.rglob("*") if not p.is_dir()] == []


def test_tampered_imdb_archive_is_refused(imdb_mirror, tmp_path):
    tampered = bytearray(IMDB_TARBALL)
    tampered[len(tampered) // 2] ^= 0xFF
    imdb_mirror.bodies[IMDB_PATH] = bytes(tampered)
    done = bertclf_cli(tmp_path, "train", "--data", "imdb", "--encoder", "tiny", "--out", "out")
    expected = os.environ["BERTCLF_IMDB_SHA256"]
    assert_one_line_error(done, imdb_mirror.url(IMDB_PATH),
                          f"SHA-256 {hashlib.sha256(tampered).hexdigest()}, expected {expected}")
    assert imdb_mirror.count(IMDB_PATH) == 1
    assert nothing_cached(tmp_path / "cache")
    assert not (tmp_path / "out").exists()


def test_missing_imdb_archive_is_a_one_line_error(imdb_mirror, tmp_path, monkeypatch):
    url = imdb_mirror.url("/mirror/gone.tar.gz")
    monkeypatch.setenv("BERTCLF_IMDB_URL", url)
    done = bertclf_cli(tmp_path, "train", "--data", "imdb", "--encoder", "tiny", "--out", "out")
    assert_one_line_error(done, f"cannot download {url} (Not Found)", "instead of 'imdb'")
    assert len(own_lines(done.stderr)) == 1, explain(done)
    assert imdb_mirror.count("/mirror/gone.tar.gz", status=404) == 1
    assert nothing_cached(tmp_path / "cache")


# --- TF Hub URL handles --------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A server of the built-in tiny encoder and preprocessor in TF Hub's compressed format,
    a truncated copy of the encoder, and an encoder map naming them."""
    from bertclf.encoders.map import get_encoder, install_builtins, resolve_handle

    install_builtins(get_encoder("tiny"))
    encoder = Path(resolve_handle("builtin:tiny/encoder"))
    preprocess = Path(resolve_handle("builtin:tiny/preprocess"))
    encoder_tarball = hub_tarball(encoder)
    with LoopbackServer() as server:
        server.bodies["/tiny-encoder/1"] = encoder_tarball
        server.bodies["/tiny-preprocess/1"] = hub_tarball(preprocess)
        server.bodies["/cut-encoder/1"] = encoder_tarball[: len(encoder_tarball) // 2]
        entries = {
            "hubtiny": (server.url("/tiny-encoder/1"), server.url("/tiny-preprocess/1")),
            "hub404": (server.url("/missing-encoder/1"), str(preprocess)),
            "hubcut": (server.url("/cut-encoder/1"), str(preprocess)),
            "hubpre404": (str(encoder), server.url("/missing-preprocess/1")),
        }
        encoder_map = tmp_path_factory.mktemp("hub") / "encoders.toml"
        encoder_map.write_text("".join(
            f'[encoders.{name}]\nencoder = "{enc}"\npreprocess = "{pre}"\n\n'
            for name, (enc, pre) in entries.items()), encoding="utf-8")
        yield server, encoder_map, {"encoder": encoder, "preprocess": preprocess}


def hub_module(hub_cache: Path, handle: str) -> Path:
    """Where tensorflow_hub keeps a URL handle's download in TFHUB_CACHE_DIR."""
    return hub_cache / hashlib.sha1(handle.encode()).hexdigest()


def test_sweep_downloads_hub_handles_once(hub, tmp_path, monkeypatch):
    server, encoder_map, folders = hub
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "tfhub"))
    experiment = write_experiment(tmp_path, encoder='["hubtiny"]',
                                  extra_search=f'encoder_map = "{encoder_map}"')
    # one epoch: what is checked here is the downloads, not the training
    experiment.write_text(experiment.read_text().replace("epochs = 2", "epochs = 1"))
    started = len(server.requests)
    done = sweep_cli(tmp_path, "run", "--trials", "1", "--experiment", "exp.toml",
                     "--study", "online")
    assert done.returncode == 0, explain(done)
    trials = load_study(tmp_path, "online").trials
    assert [t.state.name for t in trials] == ["COMPLETE"], explain(done)
    for part in ("encoder", "preprocess"):
        path = f"/tiny-{part}/1"
        assert server.count(path, HUB_FORMAT, since=started) == 1, server.requests[started:]
        module = hub_module(tmp_path / "tfhub", server.url(path))
        assert files_in(module) == files_in(folders[part])

    again = len(server.requests)
    done = sweep_cli(tmp_path, "run", "--trials", "1", "--experiment", "exp.toml",
                     "--study", "online")
    assert done.returncode == 0, explain(done)
    assert [t.state.name for t in load_study(tmp_path, "online").trials] == ["COMPLETE"] * 2
    # Nothing is downloaded again; a reachability check before the trials may ask for headers.
    assert [r for r in server.requests[again:] if r.method != "HEAD"] == []


# map entry -> the handle that cannot be loaded
BAD_HANDLES = {"hub404": "/missing-encoder/1", "hubcut": "/cut-encoder/1",
               "hubpre404": "/missing-preprocess/1"}


@pytest.fixture(scope="module")
def bad_handle_runs(hub, tmp_path_factory):
    """`bertclf train` on each map entry with a handle that cannot be loaded, each with its
    own TFHUB_CACHE_DIR, two at a time."""
    _, encoder_map, _ = hub
    root = tmp_path_factory.mktemp("bad-handles")
    write_data(root / "data.tsv", per_class=20)

    def run(name: str):
        hub_cache = root / f"tfhub-{name}"
        args = ["train", "--data", str(root / "data.tsv"), "--encoder", name, "--encoder-map",
                str(encoder_map), "--epochs", "1", "--seq-len", "16", "--out", f"out-{name}"]
        return name, (root, hub_cache, bertclf_cli(root, *args, TFHUB_CACHE_DIR=str(hub_cache)))

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, BAD_HANDLES))


@pytest.mark.parametrize("name", list(BAD_HANDLES))
def test_unloadable_hub_handle_is_one_line_naming_it(hub, bad_handle_runs, name):
    server, _, _ = hub
    root, hub_cache, done = bad_handle_runs[name]
    handle = server.url(BAD_HANDLES[name])
    assert done.returncode == 2, explain(done)
    assert "Traceback" not in done.stderr, explain(done)
    lines = own_lines(done.stderr)
    assert len(lines) == 1, explain(done)
    assert lines[0].startswith("bertclf: error: ") and handle in lines[0], explain(done)
    assert server.count(BAD_HANDLES[name], HUB_FORMAT,
                        status=200 if name == "hubcut" else 404) >= 1
    module = hub_module(hub_cache, handle)
    assert hub_cache.is_dir()  # tensorflow_hub downloads into a folder beside the module's
    assert list(hub_cache.glob(f"{module.name}*")) == []  # no partial download, no lock left
    assert not (root / f"out-{name}").exists()

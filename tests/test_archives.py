"""Archives (extracted once into the cache, unsafe or truncated ones refused) and the IMDB
download (fetched once, checksum-verified)."""

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from data_helpers import assert_data_error, imdb_like, pairs, write_classes

from bertclf.data import datasets
from bertclf.data.archives import safe_extract, sha256_file
from bertclf.data.datasets import load_dataset


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("BERTCLF_CACHE_DIR", str(folder))
    return folder


def make_tar(path: Path, folder: Path, arcname: str) -> Path:
    mode = "w:gz" if path.name.endswith(("gz", "tgz")) else "w"
    with tarfile.open(path, mode) as tar:
        tar.add(folder, arcname=arcname)
    return path


# --- archives ------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".tar"])
def test_archive_is_extracted_once_into_the_cache(tmp_path, cache, suffix):
    archive = make_tar(tmp_path / f"mini{suffix}", imdb_like(tmp_path / "src") / "aclImdb",
                       "aclImdb")
    dataset = load_dataset(archive)
    assert dataset.source == str(archive)
    assert sum(pairs(dataset).values()) == 30
    extracted = cache / "extracted" / sha256_file(archive)[:16]
    assert list((cache / "extracted").iterdir()) == [extracted]  # no work folder left over
    assert dataset.notes[0] == f"read {archive.name} from its extracted copy in {extracted}"
    edited = extracted / "aclImdb" / "test" / "pos" / "0_7.txt"
    edited.write_text("pos edited", encoding="utf-8")
    assert "pos edited" in load_dataset(archive).test.texts  # the cached copy was reused
    shutil.rmtree(extracted)
    assert "pos edited" not in load_dataset(archive).test.texts
    assert edited.read_text(encoding="utf-8") == "pos review 0"


def test_safe_extract_extracts_files_and_folders(tmp_path):
    write_classes(tmp_path / "src", {"x": 2})
    archive = make_tar(tmp_path / "a.tar.gz", tmp_path / "src", "top")
    safe_extract(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "top" / "x" / "1_7.txt").read_text() == "x review 1"


def unsafe_member(kind: str, outside: Path) -> tarfile.TarInfo:
    member = tarfile.TarInfo({"parent": "../evil", "absolute": str(outside)}.get(kind, "m"))
    member.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                   "device": tarfile.CHRTYPE}.get(kind, tarfile.REGTYPE)
    member.linkname = str(outside) if kind in ("symlink", "hardlink") else ""
    member.size = 4 if member.type == tarfile.REGTYPE else 0
    return member


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink", "hardlink", "device"])
def test_safe_extract_refuses_unsafe_members(tmp_path, kind):
    outside, box = tmp_path / "outside.txt", tmp_path / "box"
    box.mkdir()
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        harmless = tarfile.TarInfo("fine.txt")
        harmless.size = 2
        tar.addfile(harmless, io.BytesIO(b"ok"))
        member = unsafe_member(kind, outside)
        tar.addfile(member, io.BytesIO(b"evil") if member.size else None)
    assert_data_error(lambda: safe_extract(archive, box / "dest"), "refusing", archive)
    assert list(box.rglob("*")) == []  # not even the harmless member was written
    assert not outside.exists() and not (tmp_path / "evil").exists()


def test_truncated_gzip_archive(tmp_path, cache):
    rng = np.random.default_rng(0)
    for i in range(20):  # incompressible text, so half the bytes is half the files
        (tmp_path / "src" / "pos").mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / "pos" / f"{i}.txt").write_text(rng.bytes(3000).hex())
    whole = make_tar(tmp_path / "whole.tar.gz", tmp_path / "src", "d").read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    assert_data_error(lambda: load_dataset(cut), "truncated or corrupt", cut)
    assert list((cache / "extracted").iterdir()) == []  # no partial extraction left


def test_tar_cut_at_a_member_boundary(tmp_path, cache):
    write_classes(tmp_path / "src", {"neg": 3, "pos": 3})
    archive = make_tar(tmp_path / "whole.tar", tmp_path / "src", "d")
    with tarfile.open(archive) as tar:
        last = tar.getmembers()[-1].offset
    cut = tmp_path / "cut.tar"
    cut.write_bytes(archive.read_bytes()[:last])
    assert_data_error(lambda: load_dataset(cut), "truncated", cut)


def test_corrupt_archive(tmp_path, cache):
    path = tmp_path / "junk.tgz"
    path.write_bytes(np.random.default_rng(1).bytes(5000))
    assert_data_error(lambda: load_dataset(path), "truncated or corrupt", path)


# --- downloads -----------------------------------------------------------------------------


def test_download_failure_asks_for_a_local_copy(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("BERTCLF_IMDB_URL", "https://bertclf-test.invalid/aclImdb_v1.tar.gz")
    assert_data_error(lambda: load_dataset("imdb"), "cannot download", "bertclf-test.invalid",
                      "pass a local archive path")
    assert list((cache / "imdb").iterdir()) == []


def test_download_with_wrong_checksum_is_deleted(tmp_path, monkeypatch):
    archive = make_tar(tmp_path / "mini.tar.gz", imdb_like(tmp_path / "src") / "aclImdb", "aclImdb")
    monkeypatch.setenv("BERTCLF_IMDB_URL", archive.as_uri())
    assert_data_error(lambda: datasets.download_imdb(tmp_path / "cache"), archive.as_uri(),
                      f"SHA-256 {sha256_file(archive)}, expected {datasets.IMDB_SHA256}")
    assert list((tmp_path / "cache" / "imdb").iterdir()) == []


def test_imdb_is_downloaded_once(tmp_path, cache, monkeypatch):
    archive = make_tar(tmp_path / "mini.tar.gz", imdb_like(tmp_path / "src") / "aclImdb", "aclImdb")
    digest = sha256_file(archive)
    monkeypatch.setenv("BERTCLF_IMDB_URL", archive.as_uri())
    monkeypatch.setenv("BERTCLF_IMDB_SHA256", digest)
    dataset = load_dataset("imdb")
    assert (dataset.source, dataset.class_names, len(dataset.test)) == ("imdb", ["neg", "pos"], 10)
    assert sha256_file(cache / "imdb" / "aclImdb_v1.tar.gz") == digest
    archive.unlink()
    assert datasets.download_imdb() == cache / "extracted" / digest[:16] / "aclImdb"

"""Loading datasets from folders, tables and archives into stratified, seeded splits."""

import io
import os
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bertclf import data
from bertclf.data import Split, fingerprint, load_dataset, safe_extract
from bertclf.errors import DataError

IMDB_ARCHIVE = (Path(__file__).resolve().parents[1].parent
                / "shared" / "data" / "aclImdb_v1_labeled.tar.gz")


# --- helpers -------------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("BERTCLF_CACHE_DIR", str(folder))
    return folder


def write_classes(folder: Path, counts: dict[str, int], reverse: bool = False) -> None:
    """folder/<class>/<i>.txt holding '<class> review <i>'."""
    for name, count in counts.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in sorted(range(count), reverse=reverse):
            (folder / name / f"{i}_7.txt").write_text(f"{name} review {i}", encoding="utf-8")


def class_counts(split: Split) -> list[int]:
    return np.bincount(split.labels).tolist()


def pairs(dataset) -> Counter:
    """(text, class name) of every example of every split."""
    return Counter((text, dataset.class_names[label])
                   for split in (dataset.train, dataset.validation, dataset.test)
                   for text, label in zip(split.texts, split.labels, strict=True))


def make_tar(path: Path, folder: Path, arcname: str) -> Path:
    mode = "w:gz" if path.name.endswith(("gz", "tgz")) else "w"
    with tarfile.open(path, mode) as tar:
        tar.add(folder, arcname=arcname)
    return path


def imdb_like(root: Path) -> Path:
    """A miniature aclImdb/ with the official archive's extra files and folders."""
    write_classes(root / "aclImdb" / "train", {"neg": 10, "pos": 10, "unsup": 5})
    write_classes(root / "aclImdb" / "test", {"neg": 5, "pos": 5})
    (root / "aclImdb" / "train" / "urls_pos.txt").write_text("http://x", encoding="utf-8")
    (root / "aclImdb" / "train" / "labeledBow.feat").write_text("0 9:1", encoding="utf-8")
    (root / "aclImdb" / "imdb.vocab").write_text("the\nmovie", encoding="utf-8")
    (root / "aclImdb" / "README").write_text("readme", encoding="utf-8")
    return root


def assert_data_error(call, *fragments) -> str:
    """call() raises a one-line DataError holding every fragment."""
    with pytest.raises(DataError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message
    return message


# --- folders -------------------------------------------------------------------------------


def test_folder_with_train_and_test(tmp_path):
    root = imdb_like(tmp_path) / "aclImdb"
    dataset = load_dataset(root)
    assert dataset.class_names == ["neg", "pos"]
    assert dataset.source == str(root.resolve())
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (16, 4, 10)
    assert class_counts(dataset.validation) == [2, 2]
    assert class_counts(dataset.test) == [5, 5]
    assert dataset.train.labels.dtype == np.int32
    assert all(text.startswith(name) for (text, name) in pairs(dataset))
    assert sum(pairs(dataset).values()) == 30  # unsup/, urls_*.txt and *.feat are ignored
    assert dataset.notes == ["validation: carved 20% out of train with seed 42"]


def test_lone_wrapper_folder_is_descended(tmp_path):
    dataset = load_dataset(imdb_like(tmp_path))
    assert dataset.class_names == ["neg", "pos"]
    assert len(dataset.test) == 10


def test_folder_without_test_split_is_carved(tmp_path):
    write_classes(tmp_path, {"c": 10, "a": 10, "b": 10})
    dataset = load_dataset(tmp_path, test_fraction=0.2, val_fraction=0.25)
    assert dataset.class_names == ["a", "b", "c"]
    assert class_counts(dataset.test) == [2, 2, 2]
    assert class_counts(dataset.validation) == [2, 2, 2]
    assert class_counts(dataset.train) == [6, 6, 6]
    assert pairs(dataset) == Counter((f"{c} review {i}", c) for c in "abc" for i in range(10))
    assert f"no test split in {tmp_path}: carved 20% out with seed 42" in dataset.notes


def test_listing_order_does_not_matter(tmp_path):
    write_classes(tmp_path / "one", {"neg": 12, "pos": 9})
    write_classes(tmp_path / "two", {"pos": 9, "neg": 12}, reverse=True)
    one, two = load_dataset(tmp_path / "one"), load_dataset(tmp_path / "two")
    for name in ("train", "validation", "test"):
        assert fingerprint(getattr(one, name)) == fingerprint(getattr(two, name))


# --- tables --------------------------------------------------------------------------------


@pytest.mark.parametrize(("suffix", "label_values", "class_names"), [
    (".csv", ["bad", "good"], ["bad", "good"]),
    (".tsv", [10, 0, 1], ["0", "1", "10"]),  # integer labels sort numerically
    (".parquet", [1, 0], ["0", "1"]),
])
def test_table_with_custom_columns(tmp_path, suffix, label_values, class_names):
    labels = [label_values[i % len(label_values)] for i in range(30)]
    frame = pd.DataFrame({
        "id": range(30),
        "review": [f'row {i}, "quoted"\tand\nmore' for i in range(30)],
        "sentiment": labels,
    })
    path = tmp_path / f"reviews{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, sep="\t" if suffix == ".tsv" else ",", index=False)

    dataset = load_dataset(path, text_column="review", label_column="sentiment")
    assert dataset.class_names == class_names
    assert pairs(dataset) == Counter(zip(frame.review, map(str, labels), strict=True))
    assert min(len(dataset.train), len(dataset.validation), len(dataset.test)) > 0
    assert len(dataset.test) == 6
    assert f"no test split in {path}: carved 20% out with seed 42" in dataset.notes


def test_folder_of_tables_keeps_its_splits(tmp_path):
    for name, count in (("train", 20), ("validation", 4), ("test", 6)):
        rows = {"text": [f"{name} {i}" for i in range(count)],
                "label": [i % 2 for i in range(count)]}
        pd.DataFrame(rows).to_csv(tmp_path / f"{name}.csv", index=False)
    dataset = load_dataset(tmp_path)
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (20, 4, 6)
    assert all(text.startswith("validation") for text in dataset.validation.texts)
    assert dataset.notes == []


def test_empty_texts_are_dropped_with_a_note(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": ["a", "", "  ", "b", "c", "d"] * 3, "label": [0, 1] * 9}).to_csv(
        path, index=False)
    dataset = load_dataset(path)
    assert len(pairs(dataset)) == 4  # four distinct non-empty texts
    assert sum(pairs(dataset).values()) == 12
    assert f"dropped 6 empty text(s) from {path}" in dataset.notes


# --- sampling and fingerprints -------------------------------------------------------------


def test_max_examples_is_stratified_and_seeded(tmp_path):
    write_classes(tmp_path / "train", {"neg": 60, "pos": 30})
    write_classes(tmp_path / "test", {"neg": 30, "pos": 15})
    first = load_dataset(tmp_path, max_examples=9)
    again = load_dataset(tmp_path, max_examples=9)
    other = load_dataset(tmp_path, max_examples=9, seed=7)
    for split in (first.train, first.validation, first.test):
        assert class_counts(split) == [6, 3]
    for name in ("train", "validation", "test"):
        assert fingerprint(getattr(first, name)) == fingerprint(getattr(again, name))
    assert set(first.train.texts) != set(other.train.texts)
    assert "max_examples=9: sampled train/validation/test down to 9/9/9" in first.notes[-1]


def test_max_examples_keeps_every_class_where_possible(tmp_path):
    write_classes(tmp_path, {"a": 40, "b": 2, "c": 2})
    dataset = load_dataset(tmp_path, max_examples=3)
    assert class_counts(dataset.train) == [1, 1, 1]
    assert class_counts(dataset.test) == [1, 1, 1]


def test_fingerprint_is_stable_across_processes():
    split = Split(["a", "b\nc"], np.array([0, 1], dtype=np.int32))
    code = ("import numpy as np; from bertclf.data import Split, fingerprint; "
            "print(fingerprint(Split(['a', 'b\\nc'], np.array([0, 1], dtype=np.int32))))")
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert fingerprint(split) == other
    assert fingerprint(Split(["ab", "\nc"], split.labels)) != other
    assert fingerprint(Split(split.texts, np.array([1, 1], dtype=np.int32))) != other


# --- archives ------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".tar"])
def test_archive_is_extracted_once_into_the_cache(tmp_path, cache, suffix):
    archive = make_tar(tmp_path / f"mini{suffix}", imdb_like(tmp_path / "src") / "aclImdb",
                       "aclImdb")
    dataset = load_dataset(archive)
    assert dataset.source == str(archive)
    assert sum(pairs(dataset).values()) == 30
    (extracted,) = (cache / "extracted").iterdir()
    assert (extracted / ".bertclf-extracted").is_file()
    edited = extracted / "aclImdb" / "test" / "pos" / "0_7.txt"
    edited.write_text("pos edited", encoding="utf-8")
    assert "pos edited" in load_dataset(archive).test.texts  # the cached copy was reused
    (extracted / ".bertclf-extracted").unlink()  # now it looks half-extracted
    assert "pos edited" not in load_dataset(archive).test.texts


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
    monkeypatch.setattr(data, "IMDB_URL", "https://bertclf-test.invalid/aclImdb_v1.tar.gz")
    assert_data_error(lambda: load_dataset("imdb"), "cannot download", "bertclf-test.invalid",
                      "pass a local archive path")
    assert list((cache / "imdb").iterdir()) == []


def test_download_with_wrong_checksum_is_deleted(tmp_path, monkeypatch):
    archive = make_tar(tmp_path / "mini.tar.gz", imdb_like(tmp_path / "src") / "aclImdb", "aclImdb")
    monkeypatch.setattr(data, "IMDB_URL", archive.as_uri())
    assert_data_error(lambda: data.download_imdb(tmp_path / "cache"), "SHA-256", data.IMDB_SHA256)
    assert list((tmp_path / "cache" / "imdb").iterdir()) == []


def test_imdb_is_downloaded_once(tmp_path, cache, monkeypatch):
    archive = make_tar(tmp_path / "mini.tar.gz", imdb_like(tmp_path / "src") / "aclImdb", "aclImdb")
    monkeypatch.setattr(data, "IMDB_URL", archive.as_uri())
    monkeypatch.setattr(data, "IMDB_SHA256", data._sha256_file(archive))
    dataset = load_dataset("imdb")
    assert (dataset.source, dataset.class_names, len(dataset.test)) == ("imdb", ["neg", "pos"], 10)
    archive.unlink()
    assert data.download_imdb() == cache / "extracted" / data.IMDB_SHA256[:16] / "aclImdb"


# --- errors --------------------------------------------------------------------------------


def write_bytes(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_missing_path(tmp_path):
    assert_data_error(lambda: load_dataset(tmp_path / "nope"), "no such file", tmp_path / "nope")


def test_empty_folder_and_folder_without_txt_files(tmp_path):
    assert_data_error(lambda: load_dataset(tmp_path), "no class sub-folders", tmp_path)
    write_bytes(tmp_path / "pos" / "a.md", b"text")
    assert_data_error(lambda: load_dataset(tmp_path), "no class sub-folders", tmp_path)


def test_single_class(tmp_path):
    write_classes(tmp_path / "train", {"pos": 3})
    assert_data_error(lambda: load_dataset(tmp_path), "only one class ('pos')", tmp_path / "train")


@pytest.mark.parametrize(("content", "problem"), [
    (b"caf\xe9 latte", "is not valid UTF-8"),
    (b"PK\x03\x04\x00\x00binary", "looks binary"),
])
def test_unreadable_text_file(tmp_path, content, problem):
    write_classes(tmp_path, {"neg": 2, "pos": 2})
    bad = write_bytes(tmp_path / "pos" / "bad.txt", content)
    assert_data_error(lambda: load_dataset(tmp_path), str(bad), problem)


def test_unsupported_extension(tmp_path):
    path = write_bytes(tmp_path / "d.json", b"{}")
    assert_data_error(lambda: load_dataset(path), "unsupported file type '.json'", path)


def test_missing_columns_lists_the_columns_present(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"review": ["a", "b"], "label": [0, 1]}).to_csv(path, index=False)
    assert_data_error(lambda: load_dataset(path), str(path), "'text'", "review, label")


def test_missing_label_cell(tmp_path):
    path = write_bytes(tmp_path / "d.csv", b"text,label\na,0\nb,\nc,1\n")
    assert_data_error(lambda: load_dataset(path), str(path), "1 row(s) with no 'label'")


def test_all_texts_empty(tmp_path):
    path = write_bytes(tmp_path / "d.tsv", b"text\tlabel\n\t0\n \t1\n")
    assert_data_error(lambda: load_dataset(path), "no non-empty texts", path)


def test_label_not_seen_in_train(tmp_path):
    write_classes(tmp_path / "f" / "train", {"neg": 3, "pos": 3})
    write_classes(tmp_path / "f" / "test", {"neg": 1, "meh": 1})
    assert_data_error(lambda: load_dataset(tmp_path / "f"), "test label 'meh'",
                      tmp_path / "f" / "test", "not a class of train (neg, pos)")
    tables = tmp_path / "t"
    tables.mkdir()
    pd.DataFrame({"text": list("abcd"), "label": [0, 1, 0, 1]}).to_csv(tables / "train.csv")
    pd.DataFrame({"text": ["e"], "label": [2]}).to_parquet(tables / "validation.parquet")
    assert_data_error(lambda: load_dataset(tables), "validation label '2'",
                      tables / "validation.parquet")


@pytest.mark.parametrize("options", [
    {"val_fraction": 1.0}, {"test_fraction": -0.1}, {"max_examples": 0}, {"seed": -1},
])
def test_bad_options(tmp_path, options):
    write_classes(tmp_path, {"neg": 3, "pos": 3})
    assert_data_error(lambda: load_dataset(tmp_path, **options), next(iter(options)))


# --- the real IMDB archive -----------------------------------------------------------------


@pytest.fixture(scope="module")
def imdb(tmp_path_factory):
    """The labelled IMDB archive extracted once into its own cache, and loaded in full."""
    if not IMDB_ARCHIVE.is_file():
        pytest.skip(f"IMDB archive not found at {IMDB_ARCHIVE}")
    folder = tmp_path_factory.mktemp("imdb-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BERTCLF_CACHE_DIR", str(folder))
        return folder, load_dataset(IMDB_ARCHIVE)


def test_imdb_archive_full_splits(imdb):
    _, full = imdb
    assert full.class_names == ["neg", "pos"]
    assert (len(full.train), len(full.validation), len(full.test)) == (20000, 5000, 25000)
    assert class_counts(full.validation) == [2500, 2500]
    assert class_counts(full.test) == [12500, 12500]


def test_imdb_archive_sampled(imdb, monkeypatch):
    folder, full = imdb
    monkeypatch.setenv("BERTCLF_CACHE_DIR", str(folder))
    dataset = load_dataset(IMDB_ARCHIVE, max_examples=200)
    assert dataset.class_names == ["neg", "pos"]
    for sampled, whole in ((dataset.train, full.train), (dataset.validation, full.validation),
                           (dataset.test, full.test)):
        assert class_counts(sampled) == [100, 100]
        assert set(sampled.texts) <= set(whole.texts)


def test_max_examples_per_split(tmp_path):
    root = tmp_path / "folder"
    for split in ("train", "test"):
        write_classes(root / split, {"neg": 20, "pos": 20})
    dataset = load_dataset(root, max_examples={"train": 10, "validation": None, "test": 4})
    assert len(dataset.train) == 10 and len(dataset.test) == 4
    assert len(dataset.validation) == 8  # 20% of the 40 training files, not capped
    assert sorted(np.bincount(dataset.test.labels)) == [2, 2]

"""Loading datasets from folders and tables into stratified, seeded splits (archives and the
IMDB download: test_archives.py)."""

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from data_helpers import assert_data_error, imdb_like, pairs, write_classes

from bertclf.data.datasets import Split, fingerprint, load_dataset
from bertclf.errors import UserError
from bertclf.run.config import TrainConfig

# --- helpers -------------------------------------------------------------------------------


def class_counts(split: Split) -> list[int]:
    return np.bincount(split.labels).tolist()


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
    assert dataset.notes == [f"no test split in {tmp_path}: carved 20% out with seed 42",
                             "validation: carved 25% out of train with seed 42"]


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
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (19, 5, 6)
    assert dataset.notes == [f"no test split in {path}: carved 20% out with seed 42",
                             "validation: carved 20% out of train with seed 42"]


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
    assert dataset.notes[0] == f"dropped 6 empty text(s) from {path}"


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
    assert first.notes[-1] == ("max_examples=9: sampled train/validation/test down to 9/9/9"
                               " (stratified, seed 42)")


def test_max_examples_keeps_every_class_where_possible(tmp_path):
    write_classes(tmp_path, {"a": 40, "b": 2, "c": 2})
    dataset = load_dataset(tmp_path, max_examples=3)
    assert class_counts(dataset.train) == [1, 1, 1]
    assert class_counts(dataset.test) == [1, 1, 1]


def test_fingerprint_is_stable_across_processes():
    split = Split(["a", "b\nc"], np.array([0, 1], dtype=np.int32))
    code = ("import numpy as np; from bertclf.data.datasets import Split, fingerprint; "
            "print(fingerprint(Split(['a', 'b\\nc'], np.array([0, 1], dtype=np.int32))))")
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert fingerprint(split) == other
    assert fingerprint(Split(["ab", "\nc"], split.labels)) != other
    assert fingerprint(Split(split.texts, np.array([1, 1], dtype=np.int32))) != other



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
    {"val_fraction": 1.0}, {"val_fraction": 0.0}, {"test_fraction": -0.1},
    {"test_fraction": 0.0}, {"max_examples": 0}, {"max_examples": 1},
    {"max_examples": {"train": None, "validation": 1, "test": None}}, {"seed": -1},
])
def test_bad_options(tmp_path, options):
    write_classes(tmp_path, {"neg": 3, "pos": 3})
    assert_data_error(lambda: load_dataset(tmp_path, **options), next(iter(options)))


def test_the_sampling_rule_is_trainconfigs(tmp_path):
    """load_dataset and TrainConfig share one rule: the smallest cap both take is 2 (one
    example of each class), fractions lie strictly between 0 and 1."""
    write_classes(tmp_path, {"neg": 10, "pos": 10})
    dataset = load_dataset(tmp_path, max_examples=2)
    for split in (dataset.train, dataset.validation, dataset.test):
        assert class_counts(split) == [1, 1]
    TrainConfig(data=str(tmp_path), max_examples=2).validate()
    for bad in ({"max_examples": 1}, {"max_val_examples": 1}, {"val_fraction": 0.0},
                {"val_fraction": 1.0}):
        with pytest.raises(UserError, match="max_examples|val_fraction"):
            TrainConfig(data=str(tmp_path), **bad).validate()


# --- the real IMDB archive -----------------------------------------------------------------


def test_imdb_archive_full_splits(imdb_full):
    assert imdb_full.class_names == ["neg", "pos"]
    assert class_counts(imdb_full.train) == [10000, 10000]
    assert class_counts(imdb_full.validation) == [2500, 2500]
    assert class_counts(imdb_full.test) == [12500, 12500]


def test_imdb_archive_sampled(imdb_archive, imdb_full):
    dataset = load_dataset(imdb_archive, max_examples=200)
    assert dataset.class_names == ["neg", "pos"]
    for name in ("train", "validation", "test"):
        sampled, whole = getattr(dataset, name), getattr(imdb_full, name)
        assert class_counts(sampled) == [100, 100]
        assert set(sampled.texts) <= set(whole.texts)


def test_max_examples_per_split(tmp_path):
    root = tmp_path / "folder"
    for split in ("train", "test"):
        write_classes(root / split, {"neg": 20, "pos": 20})
    dataset = load_dataset(root, max_examples={"train": 10, "validation": None, "test": 4})
    assert class_counts(dataset.train) == [5, 5]
    assert class_counts(dataset.validation) == [4, 4]  # 20% of the 40 training files, not capped
    assert class_counts(dataset.test) == [2, 2]

"""Load labelled texts (IMDB, text folders, tar archives, CSV/TSV/Parquet) into seeded splits.

Every split comes out stratified, seeded and in a seeded shuffled order; nothing depends on
the order in which the filesystem lists files. Empty (or whitespace-only) texts are dropped
with a note; everything else that cannot be loaded raises a one-line DataError.
"""

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bertclf.cache import cache_dir
from bertclf.data.archives import download, extract_cached, one_line
from bertclf.data.splits import (
    SPLIT_NAMES,
    Split,
    carve_missing,
    sample_splits,
    sampling_problem,
    shuffle_splits,
)
from bertclf.errors import DataError
from bertclf.run.config import TrainConfig

IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
IMDB_FALLBACK = "pass a local archive path (aclImdb_v1.tar.gz) or folder instead of 'imdb'"

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
_IGNORED_FOLDERS = {"unsup"}  # IMDB's unlabelled reviews
_INTEGER = re.compile(r"-?\d+")


@dataclass
class Dataset:
    """Train, validation and test splits sharing one list of class names."""

    train: Split
    validation: Split
    test: Split
    class_names: list[str]
    source: str
    notes: list[str] = field(default_factory=list)


@dataclass
class _Raw:
    """Texts with their label names as read, and where they came from (for messages)."""

    texts: list[str]
    labels: list[str]
    where: str


def load_dataset(
    source: str | Path,
    *,
    text_column: str = TrainConfig.text_column,
    label_column: str = TrainConfig.label_column,
    val_fraction: float = TrainConfig.val_fraction,
    test_fraction: float = 0.2,
    max_examples: int | dict[str, int | None] | None = None,
    seed: int = TrainConfig.seed,
) -> Dataset:
    """Load 'imdb' (downloaded; write ./imdb for a folder of that name), a folder,
    a .tar.gz/.tgz/.tar archive (extracted once into the cache) or a .csv/.tsv/.parquet file.

    Folders hold train/ (and optionally test/) with one sub-folder of .txt files per class,
    or the class sub-folders directly, or train.* (and optionally validation.*, test.*) tables.
    A missing test split is carved out of train (test_fraction); a missing validation split
    always is (val_fraction). max_examples caps each split by a stratified sample; a dict
    {"train": N, "validation": M, "test": K} caps each split differently (None: no cap).
    """
    caps = max_examples if isinstance(max_examples, dict) else dict.fromkeys(
        SPLIT_NAMES, max_examples)
    problem = sampling_problem({"val_fraction": val_fraction, "test_fraction": test_fraction},
                               caps.values(), seed)
    if problem:
        raise DataError(problem)
    notes: list[str] = []
    name, raws = _read_source(source, text_column, label_column, notes)
    splits, class_names = _encode_splits(raws, notes)
    splits = carve_missing(splits, raws["train"].where, val_fraction, test_fraction, seed, notes)
    if any(cap is not None for cap in caps.values()):
        splits = sample_splits(splits, caps, seed, notes)
    shuffled = shuffle_splits(splits, seed)
    return Dataset(shuffled["train"], shuffled["validation"], shuffled["test"],
                   class_names, name, notes)


def fingerprint(split: Split) -> str:
    """SHA-256 hex digest of a split's texts and labels, in order; stable across processes."""
    digest = hashlib.sha256()
    for text, label in zip(split.texts, split.labels.tolist(), strict=True):
        data = text.encode("utf-8")
        digest.update(f"{label}\t{len(data)}\n".encode())
        digest.update(data)
    return digest.hexdigest()


def imdb_url() -> str:
    """Where 'imdb' is downloaded from: $BERTCLF_IMDB_URL (a mirror), else the official URL."""
    return os.environ.get("BERTCLF_IMDB_URL") or IMDB_URL


def download_imdb(cache: Path | None = None) -> Path:
    """Download the IMDB archive once from imdb_url() into <cache>/imdb (cache defaults to
    cache_dir()), verify its SHA-256 ($BERTCLF_IMDB_SHA256, else the official archive's),
    extract it under <cache>/extracted and return its aclImdb folder."""
    root = Path(cache) if cache is not None else cache_dir()
    sha256 = (os.environ.get("BERTCLF_IMDB_SHA256") or IMDB_SHA256).strip().lower()
    archive = download(imdb_url(), root / "imdb" / "aclImdb_v1.tar.gz", sha256, IMDB_FALLBACK)
    folder = extract_cached(archive, root) / "aclImdb"
    if not folder.is_dir():
        raise DataError(f"{archive} holds no aclImdb/ folder; delete it and try again")
    return folder


# --- reading sources -----------------------------------------------------------------------


def _read_source(
    source: str | Path, text_column: str, label_column: str, notes: list[str]
) -> tuple[str, dict[str, _Raw]]:
    """What `source` names, and its splits as read (always 'train', maybe others)."""
    if str(source) == "imdb":
        return "imdb", _read_folder(_find_root(download_imdb()), text_column, label_column)
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise DataError(f"no such file or folder: {path}")
    if path.is_dir():
        return str(path), _read_folder(_find_root(path), text_column, label_column)
    if path.name.lower().endswith(ARCHIVE_SUFFIXES):
        folder = extract_cached(path, cache_dir())
        notes.append(f"read {path.name} from its extracted copy in {folder}")
        return str(path), _read_folder(_find_root(folder), text_column, label_column)
    if path.suffix.lower() in TABLE_SUFFIXES:
        return str(path), {"train": _read_table(path, text_column, label_column)}
    raise DataError(f"unsupported file type '{path.suffix}': {path} (expected a folder, "
                    f"{', '.join(TABLE_SUFFIXES + ARCHIVE_SUFFIXES)} or 'imdb')")


def _find_root(folder: Path) -> Path:
    """The dataset root in `folder`, descending into a lone wrapper folder such as aclImdb/."""
    for _ in range(8):
        if _is_root(folder):
            return folder
        subfolders = _subfolders(folder)
        roots = [sub for sub in subfolders if _is_root(sub)]
        if len(roots) == 1:
            return roots[0]
        if len(subfolders) != 1 or _txt_files(subfolders[0]):
            return folder
        folder = subfolders[0]
    return folder


def _is_root(folder: Path) -> bool:
    return (folder / "train").is_dir() or any(
        (folder / f"train{suffix}").is_file() for suffix in TABLE_SUFFIXES)


def _read_folder(root: Path, text_column: str, label_column: str) -> dict[str, _Raw]:
    """Splits of a folder: train/ and test/ class folders, train.* tables, or class folders."""
    if (root / "train").is_dir():
        raws = {"train": _read_class_folders(root / "train")}
        if (root / "test").is_dir():
            raws["test"] = _read_class_folders(root / "test")
        return raws
    tables = _table_files(root)
    if tables:
        return {name: _read_table(path, text_column, label_column) for name, path in tables.items()}
    return {"train": _read_class_folders(root)}


def _table_files(root: Path) -> dict[str, Path]:
    """train.*, validation.* and test.* tables in root, by split name."""
    tables = {}
    for name in SPLIT_NAMES:
        found = [root / f"{name}{s}" for s in TABLE_SUFFIXES if (root / f"{name}{s}").is_file()]
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise DataError(f"{root} holds several {name} tables ({names}); keep one")
        if found:
            tables[name] = found[0]
    if tables and "train" not in tables:
        raise DataError(f"{root} holds {', '.join(p.name for p in tables.values())} but no train"
                        f" table ({', '.join('train' + s for s in TABLE_SUFFIXES)})")
    return tables


def _read_class_folders(folder: Path) -> _Raw:
    """One class per sub-folder holding .txt files; other files and 'unsup' are ignored."""
    texts, labels = [], []
    for sub in _subfolders(folder):
        if sub.name in _IGNORED_FOLDERS:
            continue
        for path in _txt_files(sub):
            texts.append(_read_text(path))
            labels.append(sub.name)
    if not texts:
        raise DataError(f"no class sub-folders holding .txt files in {folder}")
    return _Raw(texts, labels, str(folder))


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _txt_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() == ".txt" and not p.name.startswith(".") and p.is_file())


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if b"\0" in data:
        raise DataError(f"{path} looks binary (it holds NUL bytes); expected a UTF-8 text file")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not valid UTF-8 (bad byte at offset {error.start});"
                        " re-save it as UTF-8") from None


def _read_table(path: Path, text_column: str, label_column: str) -> _Raw:
    """Texts and label names from the two named columns of a table."""
    frame = _read_frame(path)
    missing = [c for c in (text_column, label_column) if c not in frame.columns]
    if missing:
        raise DataError(f"{path} has no column {', '.join(map(repr, missing))}; columns present:"
                        f" {', '.join(map(str, frame.columns))} (choose with text/label column)")
    labels = frame[label_column]
    unlabelled = np.flatnonzero(labels.isna() | (labels.astype(str).str.strip() == ""))
    if len(unlabelled):
        raise DataError(f"{path} has {len(unlabelled)} row(s) with no {label_column!r}"
                        f" (first: data row {unlabelled[0] + 1})")
    texts = frame[text_column].fillna("").astype(str).tolist()
    return _Raw(texts, _label_names(labels), str(path))


def _read_frame(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        sep = "\t" if path.suffix.lower() == ".tsv" else ","
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not valid UTF-8 (bad byte at offset {error.start});"
                        " re-save it as UTF-8") from None
    except (ValueError, OSError) as error:
        raise DataError(f"cannot read {path}: {one_line(error)}") from None


def _label_names(labels: pd.Series) -> list[str]:
    """Labels as strings; whole floats (1.0) read as integers (1)."""
    if pd.api.types.is_float_dtype(labels) and (labels % 1 == 0).all():
        labels = labels.astype("int64")
    return [str(value).strip() for value in labels.tolist()]


# --- class indices -------------------------------------------------------------------------


def _encode_splits(raws: dict[str, _Raw], notes: list[str]) -> tuple[dict[str, Split], list[str]]:
    """Drop empty texts, name the classes after train's labels and encode every split."""
    raws = {name: _drop_empty(raw, notes) for name, raw in raws.items()}
    train = raws["train"]
    class_names = _sort_labels(set(train.labels))
    if len(class_names) < 2:
        raise DataError(f"only one class ({class_names[0]!r}) in {train.where};"
                        " a classifier needs at least two")
    index = {name: i for i, name in enumerate(class_names)}
    splits = {}
    for name, raw in raws.items():
        unknown = _sort_labels(set(raw.labels) - index.keys())
        if unknown:
            raise DataError(f"{name} label {unknown[0]!r} in {raw.where} is not a class of train"
                            f" ({', '.join(class_names)})")
        splits[name] = Split(raw.texts, np.array([index[x] for x in raw.labels], dtype=np.int32))
    return splits, class_names


def _drop_empty(raw: _Raw, notes: list[str]) -> _Raw:
    keep = [i for i, text in enumerate(raw.texts) if text.strip()]
    if not keep:
        raise DataError(f"no non-empty texts in {raw.where}")
    if len(keep) < len(raw.texts):
        notes.append(f"dropped {len(raw.texts) - len(keep)} empty text(s) from {raw.where}")
    return _Raw([raw.texts[i] for i in keep], [raw.labels[i] for i in keep], raw.where)


def _sort_labels(labels: set[str]) -> list[str]:
    """Sorted label names; numerically when all are integers (so 0..K-1 keep their index)."""
    if all(_INTEGER.fullmatch(label) for label in labels):
        return sorted(labels, key=lambda label: (int(label), label))
    return sorted(labels)


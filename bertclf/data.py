"""Load labelled texts (IMDB, text folders, tar archives, CSV/TSV/Parquet) into seeded splits.

Every split comes out stratified, seeded and in a seeded shuffled order; nothing depends on
the order in which the filesystem lists files. Empty (or whitespace-only) texts are dropped
with a note; everything else that cannot be loaded raises a one-line DataError.
"""

import gzip
import hashlib
import http.client
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from bertclf.cache import cache_dir
from bertclf.errors import DataError

IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
SPLIT_NAMES = ("train", "validation", "test")
_MARKER = ".bertclf-extracted"  # written last into a complete extraction
_IGNORED_FOLDERS = {"unsup"}  # IMDB's unlabelled reviews
_INTEGER = re.compile(r"-?\d+")
# Each random step draws from its own stream, so changing one step never reshuffles another.
_TEST_STREAM, _VAL_STREAM, _SAMPLE_STREAM, _SHUFFLE_STREAM = range(4)


@dataclass
class Split:
    """Texts and their int32 class indices into Dataset.class_names."""

    texts: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)


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
    text_column: str = "text",
    label_column: str = "label",
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    max_examples: int | dict[str, int | None] | None = None,
    seed: int = 42,
) -> Dataset:
    """Load 'imdb' (downloaded; write ./imdb for a folder of that name), a folder,
    a .tar.gz/.tgz/.tar archive (extracted once into the cache) or a .csv/.tsv/.parquet file.

    Folders hold train/ (and optionally test/) with one sub-folder of .txt files per class,
    or the class sub-folders directly, or train.* (and optionally validation.*, test.*) tables.
    A missing test split is carved out of train (test_fraction); a missing validation split
    always is (val_fraction). max_examples caps each split by a stratified sample; a dict
    {"train": N, "validation": M, "test": K} caps each split differently (None: no cap).
    """
    _check_options(val_fraction, test_fraction, max_examples, seed)
    notes: list[str] = []
    name, raws = _read_source(source, text_column, label_column, notes)
    splits, class_names = _encode_splits(raws, notes)
    splits = _carve_missing(splits, raws["train"].where, val_fraction, test_fraction, seed, notes)
    caps = max_examples if isinstance(max_examples, dict) else dict.fromkeys(
        SPLIT_NAMES, max_examples)
    if any(cap is not None for cap in caps.values()):
        splits = _sample_splits(splits, caps, seed, notes)
    shuffled = {k: _subset(s, _rng(seed, _SHUFFLE_STREAM, k).permutation(len(s)))
                for k, s in splits.items()}
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


def download_imdb(cache: Path | None = None) -> Path:
    """Download the IMDB archive once into <cache>/imdb (cache defaults to cache_dir()),
    verify its SHA-256, extract it under <cache>/extracted and return its aclImdb folder."""
    root = Path(cache) if cache is not None else cache_dir()
    archive = root / "imdb" / "aclImdb_v1.tar.gz"
    if not archive.is_file():
        _download(IMDB_URL, archive, IMDB_SHA256)
    folder = _extract_cached(archive, root) / "aclImdb"
    if not folder.is_dir():
        raise DataError(f"{archive} holds no aclImdb/ folder; delete it and try again")
    return folder


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive into dest after checking every member; refuses absolute paths,
    '..', links and special files, and raises DataError on a truncated or corrupt archive."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(archive, member)
            _check_complete(archive, tar)
            dest.mkdir(parents=True, exist_ok=True)
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise DataError(f"{archive} is truncated or corrupt: {_one_line(error)}") from None


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
        folder = _extract_cached(path, cache_dir())
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
        raise DataError(f"cannot read {path}: {_one_line(error)}") from None


def _label_names(labels: pd.Series) -> list[str]:
    """Labels as strings; whole floats (1.0) read as integers (1)."""
    if pd.api.types.is_float_dtype(labels) and (labels % 1 == 0).all():
        labels = labels.astype("int64")
    return [str(value).strip() for value in labels.tolist()]


# --- splitting -----------------------------------------------------------------------------


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


def _carve_missing(splits: dict[str, Split], where: str, val_fraction: float,
                   test_fraction: float, seed: int, notes: list[str]) -> dict[str, Split]:
    """Carve a missing test split, then a missing validation split, out of train."""
    splits = dict(splits)
    if "test" not in splits:
        splits["test"], splits["train"] = _carve(splits["train"], test_fraction,
                                                 _rng(seed, _TEST_STREAM))
        notes.append(f"no test split in {where}: carved {test_fraction * 100:g}% out"
                     f" with seed {seed}")
    if "validation" not in splits:
        splits["validation"], splits["train"] = _carve(splits["train"], val_fraction,
                                                       _rng(seed, _VAL_STREAM))
        notes.append(f"validation: carved {val_fraction * 100:g}% out of train with seed {seed}")
    return splits


def _carve(split: Split, fraction: float, rng: np.random.Generator) -> tuple[Split, Split]:
    """A stratified `fraction` of split, and the rest (which keeps every class)."""
    total = int(fraction * len(split) + 0.5)
    picked = _stratified_pick(split.labels, total, rng, spare_one=True)
    rest = np.setdiff1d(np.arange(len(split)), picked)
    return _subset(split, picked), _subset(split, rest)


def _sample_splits(splits: dict[str, Split], caps: dict[str, int | None], seed: int,
                   notes: list[str]) -> dict[str, Split]:
    sampled = {name: split if caps.get(name) is None else
               _subset(split, _stratified_pick(split.labels, caps[name],
                                               _rng(seed, _SAMPLE_STREAM, name)))
               for name, split in splits.items()}
    sizes = "/".join(str(len(sampled[name])) for name in SPLIT_NAMES)
    limits = set(caps.values())
    limits = limits.pop() if len(limits) == 1 else "/".join(str(caps[n]) for n in SPLIT_NAMES)
    notes.append(f"max_examples={limits}: sampled train/validation/test down to {sizes}"
                 f" (stratified, seed {seed})")
    return sampled


def _stratified_pick(labels: np.ndarray, total: int, rng: np.random.Generator,
                     spare_one: bool = False) -> np.ndarray:
    """Sorted indices of a random sample of `total` labels in the classes' proportions;
    spare_one leaves at least one item of every class out of it."""
    classes, counts = np.unique(labels, return_counts=True)
    quotas = _allocate(counts, counts - int(spare_one), total)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k]
              for c, k in zip(classes, quotas, strict=True)]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def _allocate(counts: np.ndarray, caps: np.ndarray, total: int) -> np.ndarray:
    """Split `total` over classes in proportion to counts (largest remainders), at most caps
    each, and at least one per class where the total allows."""
    total = int(min(total, caps.sum()))
    if total == 0:
        return np.zeros_like(counts)
    exact = counts * total / counts.sum()
    quotas = np.minimum(np.floor(exact).astype(int), caps)
    if total >= np.count_nonzero(caps):
        quotas = np.maximum(quotas, (caps > 0).astype(int))
    while quotas.sum() > total:
        quotas[np.argmax(np.where(quotas > 1, quotas - exact, -np.inf))] -= 1
    while quotas.sum() < total:
        quotas[np.argmax(np.where(quotas < caps, exact - quotas, -np.inf))] += 1
    return quotas


def _subset(split: Split, indices: np.ndarray) -> Split:
    return Split([split.texts[i] for i in indices], split.labels[indices])


def _rng(seed: int, stream: int, split: str = "") -> np.random.Generator:
    return np.random.default_rng([seed, stream, SPLIT_NAMES.index(split) if split else 0])


def _check_options(val_fraction: float, test_fraction: float,
                   max_examples: int | dict[str, int | None] | None, seed: int) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise DataError(f"{name} must be at least 0 and below 1, got {value}")
    caps = max_examples.values() if isinstance(max_examples, dict) else [max_examples]
    if any(cap is not None and cap < 1 for cap in caps):
        raise DataError(f"max_examples must be at least 1, got {max_examples}")
    if seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed}")


# --- archives and downloads ----------------------------------------------------------------


def _extract_cached(archive: Path, cache: Path) -> Path:
    """Extract archive once into cache/extracted/<its sha256, 16 hex>; reuse a complete copy."""
    dest = cache / "extracted" / _sha256_file(archive)[:16]
    if (dest / _MARKER).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{dest.name}.partial-", dir=dest.parent))
    try:
        safe_extract(archive, partial)
        (partial / _MARKER).write_text(f"{archive}\n", encoding="utf-8")
        if dest.exists() and not (dest / _MARKER).is_file():
            shutil.rmtree(dest)  # an incomplete copy left by someone else
        try:
            partial.rename(dest)
        except OSError:
            if not (dest / _MARKER).is_file():  # else another process finished first
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return dest


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute():
        problem = "an absolute path"
    elif ".." in path.parts:
        problem = "a path through '..'"
    elif member.issym() or member.islnk():
        problem = "a link"
    elif not (member.isfile() or member.isdir()):
        problem = "a device or special file"
    else:
        return
    raise DataError(f"refusing to extract {archive}: member {member.name!r} is {problem}")


def _check_complete(archive: Path, tar: tarfile.TarFile) -> None:
    """tarfile takes a tar cut at a member boundary for a complete one; the end-of-archive
    zero block after the last member tells them apart."""
    tar.fileobj.seek(tar.offset)
    if tar.fileobj.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
        raise DataError(f"{archive} is truncated: it stops after {len(tar.getmembers())} member(s)"
                        " without an end-of-archive block")


def _download(url: str, dest: Path, sha256: str) -> None:
    """Download url to dest through a temporary file, keeping it only if its SHA-256 matches."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f"{dest.name}.part-{os.getpid()}")
    try:
        digest = _fetch(url, partial)
        if digest != sha256:
            raise DataError(f"{url} arrived with SHA-256 {digest}, expected {sha256}; deleted it."
                            " Try again, or pass a local archive path or folder instead of 'imdb'")
        partial.replace(dest)
    finally:
        partial.unlink(missing_ok=True)


def _fetch(url: str, dest: Path) -> str:
    """Stream url into dest with a progress line on stderr; returns the SHA-256 hex digest."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, dest.open("wb") as out:
            size = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                of = f" of {size / 2**20:.1f}" if size else ""
                print(f"\rdownloading {url}: {done / 2**20:.1f}{of} MiB", end="",
                      file=sys.stderr, flush=True)
        print(file=sys.stderr)
    except (OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise DataError(f"cannot download {url} ({_one_line(reason)}); pass a local archive"
                        " path (aclImdb_v1.tar.gz) or folder instead of 'imdb'") from None
    return digest.hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _one_line(error: object) -> str:
    return " ".join(str(error).split()) or type(error).__name__

"""Splits: carving missing test and validation splits out of train, stratified seeded sampling,
and the seeded shuffle every split ends with.

Each random step draws from its own stream, so changing one step never reshuffles another.
"""

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

SPLIT_NAMES = ("train", "validation", "test")
MIN_CAP = 2  # a capped split keeps at least this many examples (two classes can be in it)
_TEST_STREAM, _VAL_STREAM, _SAMPLE_STREAM, _SHUFFLE_STREAM = range(4)


@dataclass
class Split:
    """Texts and their int32 class indices into Dataset.class_names."""

    texts: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)


def sampling_problem(fractions: dict[str, float], caps: Iterable[int | None],
                     seed: int) -> str | None:
    """What is impossible about these carving and sampling options, in one line, or None:
    each carved fraction (name: value) must be in (0, 1), each cap (None: no cap) at least
    MIN_CAP, the seed 0 or more. The one rule of both TrainConfig and load_dataset."""
    for name, value in fractions.items():
        if not 0 < value < 1:
            return f"{name} must be in (0, 1), got {value}"
    small = [cap for cap in caps if cap is not None and cap < MIN_CAP]
    if small:
        return f"max_examples must be at least {MIN_CAP}, got {small[0]}"
    if seed < 0:
        return f"seed must be 0 or more, got {seed}"
    return None


def carve_missing(splits: dict[str, Split], where: str, val_fraction: float,
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


def sample_splits(splits: dict[str, Split], caps: dict[str, int | None], seed: int,
                  notes: list[str]) -> dict[str, Split]:
    """Each split cut to its cap (None: kept whole) by a stratified, seeded sample."""
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


def shuffle_splits(splits: dict[str, Split], seed: int) -> dict[str, Split]:
    """Every split in a seeded random order of its own."""
    return {name: _subset(split, _rng(seed, _SHUFFLE_STREAM, name).permutation(len(split)))
            for name, split in splits.items()}


def _carve(split: Split, fraction: float, rng: np.random.Generator) -> tuple[Split, Split]:
    """A stratified `fraction` of split, and the rest (which keeps every class)."""
    total = int(fraction * len(split) + 0.5)
    picked = _stratified_pick(split.labels, total, rng, spare_one=True)
    rest = np.setdiff1d(np.arange(len(split)), picked)
    return _subset(split, picked), _subset(split, rest)


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

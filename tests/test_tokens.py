"""Token ids: cached on disk per (split, preprocessor, seq_len), packed with [CLS]/[SEP], and
batched either by length (padded to each batch's longest) or to a fixed length, with the
same model outputs either way."""

import random

import numpy as np
import pytest

from bertclf.cache import cache_dir
from bertclf.data.datasets import Split
from bertclf.data.tokens import (
    TokenIds,
    make_dataset,
    steps_per_epoch,
    token_ids,
    tokenize,
)
from bertclf.encoders.map import get_encoder
from bertclf.run.config import bucket_boundaries
from bertclf.run.model import build_classifier, loss_and_metric

# isort: split
import tensorflow as tf

CLS, SEP, PAD = 2, 3, 0
WORDS = ("the a film movie story plot actor scene was it and this good bad great awful "
         "wonderful boring funny long short music").split()


def random_texts(count: int, min_words: int, max_words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words)))
            for _ in range(count)]


@pytest.fixture(scope="module")
def spec():
    return get_encoder("tiny")


@pytest.fixture(scope="module")
def mixed_split() -> Split:
    """Texts from 1 to 90 words, so with seq_len 64 some fall in each bucket and some are cut."""
    texts = random_texts(90, 1, 90, seed=3)
    labels = np.array(random.Random(4).choices([0, 1], k=len(texts)), dtype=np.int32)
    return Split(texts, labels)


@pytest.fixture
def own_token_cache(monkeypatch, tmp_path):
    """A cache root of this test's own, so that token files written by tests on other xdist
    workers do not count as this test's; built models still come from the shared cache."""
    models = cache_dir() / "models"
    models.mkdir(exist_ok=True)
    (tmp_path / "models").symlink_to(models)
    monkeypatch.setenv("BERTCLF_CACHE_DIR", str(tmp_path))


def token_files() -> set:
    folder = cache_dir() / "tokens"
    return set(folder.glob("*.npz")) if folder.is_dir() else set()


def rows(tokens: TokenIds) -> list[list[int]]:
    ends = np.cumsum(tokens.row_lengths)
    return [tokens.values[end - n:end].tolist() for end, n in zip(ends, tokens.row_lengths,
                                                                     strict=True)]


# --- packing -------------------------------------------------------------------------------


def test_ids_start_with_cls_end_with_sep_and_are_truncated(spec):
    texts = ["bad", "a wonderful film", " ".join(["great"] * 100), "the movie was long"]
    values, lengths = tokenize(spec, texts, 16)
    assert values.dtype == np.int32 and lengths.dtype == np.int32
    assert len(lengths) == len(texts) and lengths.sum() == len(values)
    packed = rows(TokenIds(values, lengths, np.zeros(len(texts), np.int32)))
    for ids in packed:
        assert ids[0] == CLS and ids[-1] == SEP
        assert CLS not in ids[1:-1] and SEP not in ids[1:-1] and PAD not in ids
        assert len(ids) <= 16
    assert len(packed[0]) == 3  # [CLS] bad [SEP]
    assert len(packed[2]) == 16  # cut to seq_len, still closed by [SEP]
    assert packed[2][1:-1] == [packed[2][1]] * 14  # "great" repeated
    # The same text packed at a longer seq_len keeps its prefix.
    longer, longer_lengths = tokenize(spec, texts[2:3], 40)
    assert longer_lengths.tolist() == [40] and longer[:15].tolist() == packed[2][:15]


def test_tokenize_more_texts_than_one_batch(spec, monkeypatch):
    from bertclf.data import tokens

    texts = random_texts(25, 1, 12, seed=9)
    whole = tokenize(spec, texts, 32)
    monkeypatch.setattr(tokens, "TOKENIZE_BATCH", 7)  # the batching loop, not the thing tested
    pieces = tokenize(spec, texts, 32)
    np.testing.assert_array_equal(whole[0], pieces[0])
    np.testing.assert_array_equal(whole[1], pieces[1])


# --- the on-disk cache ---------------------------------------------------------------------


def test_token_ids_are_cached_on_disk_and_reused(spec, own_token_cache):
    split = Split(random_texts(30, 2, 20, seed=11), np.arange(30, dtype=np.int32) % 2)
    before = token_files()
    first = token_ids(spec, split, 32)
    created = token_files() - before
    assert len(created) == 1, "the first call writes one cache file"
    path = created.pop()
    values, lengths = tokenize(spec, split.texts, 32)
    np.testing.assert_array_equal(first.values, values)
    np.testing.assert_array_equal(first.row_lengths, lengths)
    np.testing.assert_array_equal(first.labels, split.labels)
    assert not list(path.parent.glob(".*.building-*")), "no build folder left behind"

    # Same content in new objects: no new file, same ids.
    again = token_ids(spec, Split(list(split.texts), split.labels.copy()), 32)
    assert token_files() - before == {path}
    np.testing.assert_array_equal(again.values, first.values)

    # The second call reads the file: replace its content and the call returns the new content.
    original = path.read_bytes()
    marker = np.full_like(first.values, 7)
    try:
        np.savez(path, values=marker, row_lengths=first.row_lengths)
        np.testing.assert_array_equal(token_ids(spec, split, 32).values, marker)
    finally:
        path.write_bytes(original)
    np.testing.assert_array_equal(token_ids(spec, split, 32).values, first.values)


def test_cache_key_changes_with_split_and_seq_len(spec, own_token_cache):
    split = Split(random_texts(20, 2, 20, seed=12), np.arange(20, dtype=np.int32) % 2)
    known = token_files()

    def new_file(**changes) -> set:
        nonlocal known
        texts = changes.get("texts", split.texts)
        labels = changes.get("labels", split.labels)
        result = token_ids(spec, Split(texts, labels), changes.get("seq_len", 32))
        created = token_files() - known
        known |= created
        return created, result

    created, base = new_file()
    assert len(created) == 1
    created, shorter = new_file(seq_len=16)
    assert len(created) == 1, "another seq_len is another cache entry"
    assert shorter.row_lengths.max() <= 16 < base.row_lengths.max()
    created, _ = new_file(texts=[*split.texts[:-1], split.texts[-1] + " film"])
    assert len(created) == 1, "another text is another cache entry"
    created, relabelled = new_file(labels=1 - split.labels)
    assert len(created) == 1, "other labels are another cache entry"
    np.testing.assert_array_equal(relabelled.labels, 1 - split.labels)
    created, _ = new_file()
    assert not created, "the original split is still cached"


# --- batching ------------------------------------------------------------------------------


@pytest.mark.parametrize("seq_len", [32, 64])
def test_bucketed_batches_pad_to_their_longest_member(spec, mixed_split, seq_len):
    tokens = token_ids(spec, mixed_split, seq_len)
    widths, seen = [], []
    for inputs, labels in make_dataset(tokens, 8, seq_len, bucket=True):
        ids = inputs["input_word_ids"].numpy()
        mask = inputs["input_mask"].numpy()
        lengths = mask.sum(axis=1)
        assert ids.shape[1] == lengths.max(), "padded only to the batch's longest member"
        assert ((ids != PAD) == (mask == 1)).all()
        assert (inputs["input_type_ids"].numpy() == 0).all()
        assert len(labels) == len(ids) <= 8
        widths.append(ids.shape[1])
        seen += [(tuple(row[:n]), int(label))
                 for row, n, label in zip(ids, lengths, labels.numpy(), strict=True)]
        # Examples of one batch come from one bucket.
        boundaries = bucket_boundaries(seq_len)
        assert len(set(np.searchsorted(boundaries, lengths, side="right"))) == 1
    expected = [(tuple(r), int(label)) for r, label in zip(rows(tokens), tokens.labels,
                                                             strict=True)]
    assert sorted(seen) == sorted(expected), "every example exactly once, unchanged"
    assert min(widths) < max(widths) <= seq_len


def test_fixed_batches_pad_to_seq_len_in_order(spec, mixed_split):
    tokens = token_ids(spec, mixed_split, 64)
    seen = []
    for inputs, labels in make_dataset(tokens, 8, 64, bucket=False):
        ids = inputs["input_word_ids"].numpy()
        assert ids.shape == (len(labels), 64)
        lengths = inputs["input_mask"].numpy().sum(axis=1)
        seen += [row[:n].tolist() for row, n in zip(ids, lengths, strict=True)]
        assert (ids[np.arange(len(ids)), lengths - 1] == SEP).all()
    assert seen == rows(tokens)


@pytest.mark.parametrize("bucket", [True, False])
@pytest.mark.parametrize("seq_len,batch_size", [(32, 8), (64, 7), (64, 100), (200, 5)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_steps_per_epoch_counts_the_batches_produced(spec, mixed_split, bucket, seq_len,
                                                     batch_size, shuffle):
    tokens = token_ids(spec, mixed_split, seq_len)
    dataset = make_dataset(tokens, batch_size, seq_len, bucket=bucket, shuffle=shuffle, seed=5)
    sizes = [len(labels) for _, labels in dataset]
    assert sum(sizes) == len(tokens)
    assert steps_per_epoch(tokens, batch_size, seq_len, bucket) == len(sizes)


# --- bucketing does not change what the model computes ------------------------------------


@pytest.fixture(scope="module")
def classifier(spec):
    tf.keras.utils.set_random_seed(0)
    model = build_classifier(spec, 2, dropout=0.1)
    loss, metric = loss_and_metric(2)
    model.compile(loss=loss, metrics=[metric])
    return model


def test_bucketed_and_fixed_padding_evaluate_the_same(spec, mixed_split, classifier):
    tokens = token_ids(spec, mixed_split, 64)
    bucketed = classifier.evaluate(make_dataset(tokens, 8, 64, bucket=True), verbose=0)
    fixed = classifier.evaluate(make_dataset(tokens, 8, 64, bucket=False), verbose=0)
    np.testing.assert_allclose(bucketed, fixed, rtol=0, atol=1e-5)
    # Sanity: the untrained head is not trivially constant, so equality means something.
    logits = classifier.predict(make_dataset(tokens, 8, 64, bucket=False), verbose=0)
    assert np.ptp(logits) > 1e-3


def test_bucketed_and_fixed_padding_give_the_same_logits_per_example(spec, mixed_split,
                                                                       classifier):
    tokens = token_ids(spec, mixed_split, 64)
    # Carry each example's index in the label slot, to undo the bucketing's reordering.
    indexed = TokenIds(tokens.values, tokens.row_lengths, np.arange(len(tokens), dtype=np.int32))

    def logits(bucket: bool) -> np.ndarray:
        out = np.full(len(tokens), np.nan, dtype=np.float32)
        for inputs, index in make_dataset(indexed, 8, 64, bucket=bucket):
            out[index.numpy()] = classifier(inputs, training=False).numpy()[:, 0]
        return out

    bucketed, fixed = logits(True), logits(False)
    assert np.isfinite(bucketed).all() and np.isfinite(fixed).all()
    np.testing.assert_allclose(bucketed, fixed, rtol=0, atol=1e-5)

"""Tokenize each split once, cache the token ids on disk, and feed them as length-bucketed batches.

Token ids are cached per (split content, preprocessor content, sequence length, truncation),
so a sweep tokenizes its data once and every epoch and trial after that reads the cache.
Batches group examples of similar length and pad only to their longest member; the
attention mask keeps the result equal to fixed-length padding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import tensorflow as tf

from bertclf.cache import build_once, cache_dir
from bertclf.data.datasets import Split, fingerprint
from bertclf.data.packing import head_length, pack_inputs
from bertclf.encoders.map import EncoderSpec, install_builtins, load_preprocessor, preprocess_path
from bertclf.run.config import bucket_boundaries
from bertclf.run.model import INPUT_NAMES

TOKENIZE_BATCH = 512


@dataclass
class TokenIds:
    """The token ids of one split without padding, as a ragged array, and its labels."""

    values: np.ndarray       # int32, all examples' ids back to back
    row_lengths: np.ndarray  # int32, number of ids of each example
    labels: np.ndarray       # int32

    def __len__(self) -> int:
        return len(self.row_lengths)


@cache
def _folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _cache_key(spec: EncoderSpec, split: Split, seq_len: int, truncation: str,
               head_tokens: int | None) -> str | None:
    folder = preprocess_path(spec)
    if folder is None:
        return None
    kept = f"{truncation}:{head_length(seq_len, truncation, head_tokens)}"
    parts = [fingerprint(split), _folder_digest(folder.resolve()), str(seq_len), kept]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def tokenize(spec: EncoderSpec, texts: list[str], seq_len: int, truncation: str = "head",
             head_tokens: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run the encoder's preprocessor: (ids back to back, length of each) with [CLS]/[SEP],
    truncated to `seq_len` as `truncation` says."""
    preprocessor = load_preprocessor(spec)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def pack(batch):
        packed = pack_inputs(preprocessor, batch, seq_len, truncation, head_tokens)
        lengths = tf.reduce_sum(tf.cast(packed["input_mask"], tf.int32), axis=1)
        return tf.RaggedTensor.from_tensor(packed["input_word_ids"], lengths=lengths)

    values, lengths = [], []
    for start in range(0, len(texts), TOKENIZE_BATCH):
        ragged = pack(tf.constant(texts[start:start + TOKENIZE_BATCH]))
        values.append(ragged.flat_values.numpy().astype(np.int32))
        lengths.append(ragged.row_lengths().numpy().astype(np.int32))
    if not values:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    return np.concatenate(values), np.concatenate(lengths)


def token_ids(spec: EncoderSpec, split: Split, seq_len: int, truncation: str = "head",
              head_tokens: int | None = None) -> TokenIds:
    """The split's token ids, read from the on-disk cache or tokenized and cached."""
    install_builtins(spec)  # the key digests the preprocessor's files
    key = _cache_key(spec, split, seq_len, truncation, head_tokens)
    if key is None:  # a hub handle not downloaded yet: nothing to key the cache on
        return TokenIds(*tokenize(spec, split.texts, seq_len, truncation, head_tokens),
                        split.labels)

    def build(path: Path) -> None:
        values, row_lengths = tokenize(spec, split.texts, seq_len, truncation, head_tokens)
        np.savez(path, values=values, row_lengths=row_lengths)

    with np.load(build_once(cache_dir() / "tokens" / f"{key}.npz", build)) as cached:
        return TokenIds(cached["values"], cached["row_lengths"], split.labels)


def _as_encoder_inputs(ids, label):
    word_ids, mask, type_ids = INPUT_NAMES
    inputs = {word_ids: ids, mask: tf.cast(tf.not_equal(ids, 0), tf.int32),
              type_ids: tf.zeros_like(ids)}
    return inputs, label


def make_dataset(tokens: TokenIds, batch_size: int, seq_len: int, *, bucket: bool = True,
                 shuffle: bool = False, seed: int = 0) -> tf.data.Dataset:
    """Batches of encoder inputs and labels.

    With `bucket`, examples of similar length are batched together and padded to the
    batch's longest; without it every batch is padded to `seq_len`, as the notebook did.
    """
    values = tf.constant(tokens.values)
    starts = np.concatenate([[0], np.cumsum(tokens.row_lengths)[:-1]]).astype(np.int64)
    dataset = tf.data.Dataset.from_tensor_slices((starts, tokens.row_lengths.astype(np.int64),
                                                  tokens.labels))
    if shuffle:
        dataset = dataset.shuffle(len(tokens), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(lambda start, length, label: (values[start:start + length], label))
    if bucket:
        boundaries = bucket_boundaries(seq_len)
        dataset = dataset.bucket_by_sequence_length(
            lambda ids, label: tf.shape(ids)[0], boundaries,
            [batch_size] * (len(boundaries) + 1))
    else:
        dataset = dataset.padded_batch(batch_size, padded_shapes=([seq_len], []))
    return dataset.map(_as_encoder_inputs, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE)


def steps_per_epoch(tokens: TokenIds, batch_size: int, seq_len: int, bucket: bool) -> int:
    """The number of batches `make_dataset` yields per epoch (at most one partial per bucket)."""
    if not bucket:
        return -(-len(tokens) // batch_size)
    boundaries = bucket_boundaries(seq_len)
    buckets = np.bincount(np.searchsorted(boundaries, tokens.row_lengths, side="right"))
    return int(sum(-(-n // batch_size) for n in buckets))

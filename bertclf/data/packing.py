"""Raw texts -> encoder inputs through an encoder's preprocessor, keeping the head, the tail or
the head and tail of a text that is too long. Training's token cache, the exported model and
the in-graph classifier all pack through here, so serving sees the ids training saw."""

from __future__ import annotations

import tensorflow as tf

from bertclf.run.config import TRUNCATIONS


def head_length(seq_len: int, truncation: str, head_tokens: int | None = None) -> int:
    """How many of a too-long text's first tokens are kept: all of the budget (`seq_len`
    less [CLS] and [SEP]) for head, none for tail, `head_tokens` or a quarter of it for
    head+tail (the rest of the budget goes to the last tokens)."""
    budget = seq_len - 2
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {', '.join(TRUNCATIONS)}, not {truncation!r}")
    if truncation == "head":
        return budget
    if truncation == "tail":
        return 0
    return budget // 4 if head_tokens is None else head_tokens


def truncate(tokens: tf.RaggedTensor, seq_len: int, head: int) -> tf.RaggedTensor:
    """Token ids [batch, (words), (pieces)] -> [batch, (pieces)] of at most seq_len - 2 each:
    a longer row keeps its first `head` and its last seq_len - 2 - head tokens."""
    if tokens.ragged_rank > 1:
        tokens = tokens.merge_dims(1, -1)
    budget = tf.constant(seq_len - 2, tf.int64)
    head = tf.constant(head, tf.int64)
    lengths = tf.gather(tokens.row_lengths(), tokens.value_rowids())  # each token's row length
    positions = tf.ragged.range(tokens.row_lengths()).flat_values
    keep = (lengths <= budget) | (positions < head) | (positions >= lengths - (budget - head))
    return tf.ragged.boolean_mask(tokens, tokens.with_flat_values(keep))


def pack_inputs(preprocessor, texts: tf.Tensor, seq_len: int, truncation: str = "head",
                head_tokens: int | None = None) -> dict[str, tf.Tensor]:
    """Strings [batch] -> the encoder's three int32 inputs [batch, seq_len]."""
    head = head_length(seq_len, truncation, head_tokens)
    tokens = truncate(preprocessor.tokenize(texts), seq_len, head)
    return preprocessor.bert_pack_inputs([tokens], seq_length=tf.constant(seq_len, tf.int32))


class TextToInputs(tf.keras.layers.Layer):
    """A Keras layer around `pack_inputs` (it tracks the preprocessor's vocab tables)."""

    def __init__(self, preprocessor, seq_len: int, truncation: str = "head",
                 head_tokens: int | None = None, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.preprocessor = preprocessor
        self.seq_len, self.truncation, self.head_tokens = seq_len, truncation, head_tokens

    def call(self, texts):
        return pack_inputs(self.preprocessor, texts, self.seq_len, self.truncation,
                           self.head_tokens)

"""Our BERT preprocessor in the TF Hub format: a SavedModel from strings to encoder inputs.

Like ``tensorflow/bert_en_uncased_preprocess/3`` it has a root call (strings [B] -> the three
int32 inputs [B, default_seq_length]), ``.tokenize`` (strings -> int32 ragged ids),
``.tokenize.get_special_tokens_dict()`` and ``.bert_pack_inputs`` (1-2 ragged segments ->
inputs: truncated round robin, [CLS]/[SEP] added, padded). It tokenizes with a WordPiece vocab
(``save_preprocessor``) or a SentencePiece model as ALBERT does
(``save_sentencepiece_preprocessor``); the vocab or model is saved inside the SavedModel.
"""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Callable
from functools import cache
from pathlib import Path

# bertclf/__init__ (always run first) has set TF_USE_LEGACY_KERAS, so tf.keras is tf-keras.
import tensorflow as tf
import tensorflow_text as text

# The padding, start, end, mask and unknown tokens of each kind of vocab.
WORDPIECE_SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")
SENTENCEPIECE_SPECIALS = ("<pad>", "[CLS]", "[SEP]", "[MASK]", "<unk>")

Tokenize = Callable[[tf.Tensor], tf.RaggedTensor]


def _special_ids(ids: dict[str, int], names: tuple[str, ...], vocab_size: int) -> dict[str, int]:
    """Ids of the tokens BERT packing needs, as in TF Hub's get_special_tokens_dict()."""
    missing = [t for t in names if t not in ids]
    if missing:
        raise ValueError(f"vocab lacks special tokens {missing}")
    pad, start, end, mask, _ = names
    return {
        "vocab_size": vocab_size,
        "start_of_sequence_id": ids[start],
        "end_of_segment_id": ids[end],
        "padding_id": ids[pad],
        "mask_id": ids[mask],
    }


def _pack(segments, seq_length, special: dict[str, int]) -> dict[str, tf.Tensor]:
    """Truncate segments round robin, add [CLS]/[SEP], pad to seq_length (BERT inputs)."""
    if not isinstance(segments, list | tuple):
        segments = [segments]
    # Flatten [B, words, wordpieces] to [B, wordpieces].
    segments = [s.merge_dims(1, -1) if s.shape.rank > 2 else s for s in segments]
    seq_length = tf.cast(seq_length, tf.int32)
    budget = seq_length - (len(segments) + 1)
    trimmed = text.RoundRobinTrimmer(budget).trim(segments)
    combined, type_ids = text.combine_segments(
        trimmed,
        start_of_sequence_id=special["start_of_sequence_id"],
        end_of_segment_id=special["end_of_segment_id"],
    )
    word_ids, mask = text.pad_model_inputs(combined, seq_length, pad_value=special["padding_id"])
    type_ids, _ = text.pad_model_inputs(type_ids, seq_length, pad_value=0)
    # pad_model_inputs loses the static shape; restore [B, seq_length] for Keras.
    shape = tf.stack([segments[0].nrows(out_type=tf.int32), seq_length])
    outputs = {"input_word_ids": word_ids, "input_mask": mask, "input_type_ids": type_ids}
    return {k: tf.reshape(tf.cast(v, tf.int32), shape) for k, v in outputs.items()}


class _SpecialTokens(tf.Module):
    """Callable sub-object: get_special_tokens_dict() -> dict of int32 scalars."""

    def __init__(self, special: dict[str, int]):
        super().__init__()
        self.__call__ = tf.function(
            lambda: {k: tf.constant(v, tf.int32) for k, v in special.items()},
            input_signature=[],
        )


class _Tokenize(tf.Module):
    """Callable sub-object: strings [B] -> int32 RaggedTensor of token ids."""

    def __init__(self, tokenizer: tf.Module, tokenize: Tokenize, special: dict[str, int]):
        super().__init__()
        self.tokenizer = tokenizer  # tracked, so its vocab table or model is saved
        self.get_special_tokens_dict = _SpecialTokens(special)
        self.__call__ = tf.function(tokenize, input_signature=[tf.TensorSpec([None], tf.string)])


class _PackInputs(tf.Module):
    """Callable sub-object: (list of 1-2 ragged segments, seq_length=...) -> BERT inputs."""

    def __init__(self, special: dict[str, int], default_seq_length: int):
        super().__init__()

        # A Python default keeps seq_length optional after loading; it is traced as a tensor.
        @tf.function(autograph=False)
        def call(inputs, seq_length=default_seq_length):
            return _pack(inputs, seq_length, special)

        self.__call__ = call
        for ragged_rank in (1, 2):
            for num_segments in (1, 2):
                spec = tf.RaggedTensorSpec([None] * (ragged_rank + 1), tf.int32)
                call.get_concrete_function(
                    [spec] * num_segments, seq_length=tf.TensorSpec([], tf.int32)
                )


class _Preprocessor(tf.Module):
    """Root of the preprocessing SavedModel: strings [B] -> BERT inputs [B, seq_length]."""

    def __init__(self, tokenizer: tf.Module, tokenize: Tokenize, special: dict[str, int],
                 default_seq_length: int):
        super().__init__()
        self.tokenize = _Tokenize(tokenizer, tokenize, special)
        self.bert_pack_inputs = _PackInputs(special, default_seq_length)
        self.__call__ = tf.function(
            lambda strings: _pack([tokenize(strings)], default_seq_length, special),
            input_signature=[tf.TensorSpec([None], tf.string)],
        )


# ---------------------------------------------------------------------------- WordPiece


def _bert_normalizer(lower_case: bool):
    """Text normalisation of Google's BERT tokenizer (and Hugging Face's BertNormalizer).

    TF Text's lower_case=True case-folds with NFKC (so "½" -> "1⁄2", "…" -> "...", "ß" -> "ss",
    "´" -> " ") and turns control characters into spaces; BERT deletes control characters,
    maps Unicode spaces (Z*) to " ", and lower-cases with NFD accent stripping only.
    """

    def normalize(strings: tf.Tensor) -> tf.Tensor:
        strings = tf.strings.regex_replace(strings, r"[^\t\n\r\P{C}]|\x{FFFD}", "")
        strings = tf.strings.regex_replace(strings, r"\p{Z}", " ")
        if lower_case:
            strings = text.normalize_utf8(strings, "NFD")
            strings = tf.strings.regex_replace(strings, r"\p{Mn}", "")
            strings = tf.strings.lower(strings, encoding="utf-8")
        return strings

    return normalize


def _wordpiece_ids(tokenizer: text.BertTokenizer, normalize=None) -> Tokenize:
    """strings [B] -> int32 ragged wordpiece ids [B, words, wordpieces]."""

    def tokenize(strings: tf.Tensor) -> tf.RaggedTensor:
        if normalize is not None:
            strings = normalize(strings)
        tokens = tokenizer.tokenize(strings)
        return tokens.with_flat_values(tf.cast(tokens.flat_values, tf.int32))

    return tokenize


def save_preprocessor(
    vocab_file: str | Path,
    path: str | Path,
    *,
    lower_case: bool = True,
    default_seq_length: int = 128,
    normalization: str = "tf_text",
) -> dict[str, int]:
    """Write a TF Hub BERT preprocessing SavedModel that tokenizes with a WordPiece vocab.

    ``normalization``: "tf_text" normalises as TF Text's BertTokenizer and TF Hub's BERT
    preprocessors do; "bert" as Google's original BERT tokenizer and Hugging Face's
    BertWordPieceTokenizer do (for vocabularies and checkpoints trained with those).
    Returns the special token ids and vocab size it packs with.
    """
    vocab_file = Path(vocab_file)
    if not vocab_file.is_file():
        raise FileNotFoundError(f"vocab file {vocab_file} does not exist")
    if normalization not in ("tf_text", "bert"):
        raise ValueError(f"normalization must be 'tf_text' or 'bert', not {normalization!r}")
    vocab = vocab_file.read_text(encoding="utf-8").splitlines()
    special = _special_ids({t: i for i, t in enumerate(vocab)}, WORDPIECE_SPECIALS, len(vocab))
    normalize = _bert_normalizer(lower_case) if normalization == "bert" else None
    # Built from the file path, so the lookup table's initializer saves it as an asset.
    tokenizer = text.BertTokenizer(
        str(vocab_file), lower_case=lower_case and normalize is None, token_out_type=tf.int64
    )
    model = _Preprocessor(tokenizer, _wordpiece_ids(tokenizer, normalize), special,
                          default_seq_length)
    tf.saved_model.save(model, str(path))
    return special


# ---------------------------------------------------------------------------- SentencePiece


@cache
def _char_class(predicate: Callable[[str], object]) -> str:
    """A regex character class of every code point for which ``predicate`` is true."""
    ranges, start = [], None
    for code in range(sys.maxunicode + 2):
        hit = code <= sys.maxunicode and not 0xD800 <= code <= 0xDFFF and predicate(chr(code))
        if hit and start is None:
            start = code
        elif not hit and start is not None:
            ranges.append(rf"\x{{{start:X}}}-\x{{{code - 1:X}}}")
            start = None
    return f"[{''.join(ranges)}]"


def _albert_normalizer(lower_case: bool):
    """Hugging Face AlbertTokenizer's text preprocessing (remove_space=True, keep_accents=False).

    Whitespace runs (Python's str.split) become one space and the ends are stripped, `` and
    '' become ", accents go (NFKD, then every combining character dropped), then lower-case.
    The SentencePiece model's own normaliser runs after this, inside the tokenizer.
    """
    space, combining = _char_class(str.isspace), _char_class(unicodedata.combining)

    def normalize(strings: tf.Tensor) -> tf.Tensor:
        strings = tf.strings.regex_replace(strings, f"{space}+", " ")
        strings = tf.strings.regex_replace(strings, "^ | $", "")
        strings = tf.strings.regex_replace(strings, "``", '"')
        strings = tf.strings.regex_replace(strings, "''", '"')
        strings = text.normalize_utf8(strings, "NFKD")
        strings = tf.strings.regex_replace(strings, combining, "")
        if lower_case:
            strings = tf.strings.lower(strings, encoding="utf-8")
        return strings

    return normalize


def _sentencepiece_special(tokenizer: text.SentencepieceTokenizer) -> dict[str, int]:
    """The special token ids, read from the model's own pieces."""
    names = list(SENTENCEPIECE_SPECIALS)
    ids = tokenizer.string_to_id(tf.constant(names)).numpy()
    pieces = tokenizer.id_to_string(tf.constant(ids)).numpy()
    # An unknown piece maps to the <unk> id, whose piece is another one.
    found = {n: int(i) for n, i, p in zip(names, ids, pieces, strict=True) if p.decode() == n}
    return _special_ids(found, SENTENCEPIECE_SPECIALS, int(tokenizer.vocab_size()))


def save_sentencepiece_preprocessor(
    model_file: str | Path, path: str | Path, *, lower_case: bool = True,
    default_seq_length: int = 128,
) -> dict[str, int]:
    """Write a TF Hub BERT preprocessing SavedModel that tokenizes with a SentencePiece model.

    Text is normalised as Hugging Face's AlbertTokenizer does, then encoded by the model;
    ``.tokenize`` gives int32 ragged ids [B, pieces]. The model needs the pieces <pad>, <unk>,
    [CLS], [SEP] and [MASK] (as ALBERT's spiece.model has). Returns the special token ids and
    vocab size it packs with.
    """
    model_file = Path(model_file)
    if not model_file.is_file():
        raise FileNotFoundError(f"SentencePiece model {model_file} does not exist")
    try:
        tokenizer = text.SentencepieceTokenizer(model=model_file.read_bytes(), out_type=tf.int32)
        special = _sentencepiece_special(tokenizer)
    except tf.errors.OpError:
        raise ValueError("not a SentencePiece model") from None
    normalize = _albert_normalizer(lower_case)

    def tokenize(strings: tf.Tensor) -> tf.RaggedTensor:
        return tokenizer.tokenize(normalize(strings))

    model = _Preprocessor(tokenizer, tokenize, special, default_seq_length)
    tf.saved_model.save(model, str(path))
    return special

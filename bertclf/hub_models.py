"""Our own BERT models in the TF Hub format: a tf-keras encoder and a tokenizing preprocessor.

The SavedModels written here load through ``hub.KerasLayer`` exactly like
``tensorflow/bert_en_uncased_preprocess/3`` and ``small_bert/bert_en_uncased_L-2_H-128_A-2``.

Layer names of ``build_bert_encoder`` (for weight importers), ``E`` = embedding_size,
``H`` = hidden_size:

- ``word_embeddings`` / ``type_embeddings`` (Embedding, ``.embeddings`` [vocab, E] / [types, E])
- ``position_embeddings`` (PositionEmbedding, ``.embeddings`` [max_position, E])
- ``embeddings_layer_norm`` (LayerNormalization over E)
- ``embedding_projection`` (Dense E->H, only when E != H)
- ``transformer_layer_{i}`` for i in range(num_layers), or one ``transformer_layer_shared``
  called num_layers times when share_layers; each a TransformerBlock with sublayers
  ``self_attention`` (MultiHeadAttention: ``query``/``key``/``value`` kernels [H, heads, H/heads],
  biases [heads, H/heads]; ``attention_output`` kernel [heads, H/heads, H], bias [H]),
  ``attention_layer_norm``, ``intermediate`` (Dense H->I, GELU), ``output_dense`` (Dense I->H),
  ``output_layer_norm``
- ``pooler_dense`` (Dense H->H, tanh, on the [CLS] position)
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import string
import tarfile
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# bertclf/__init__ (always run first) has set TF_USE_LEGACY_KERAS, so tf.keras is tf-keras.
import numpy as np
import tensorflow as tf
import tensorflow_text as text

TINY_VOCAB = Path(__file__).parent / "assets" / "tiny_vocab.txt"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
INPUT_NAMES = ("input_word_ids", "input_mask", "input_type_ids")


@dataclass(frozen=True)
class BertConfig:
    """Shape and hyperparameters of a BERT-family encoder."""

    vocab_size: int
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 512
    max_position: int = 512
    type_vocab_size: int = 2
    embedding_size: int | None = None  # None = hidden_size; otherwise project embeddings to hidden
    share_layers: bool = False  # ALBERT
    hidden_act: str = "gelu"  # exact (erf) GELU as in BERT
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    initializer_range: float = 0.02


# ---------------------------------------------------------------------------- encoder


@tf.keras.utils.register_keras_serializable(package="bertclf")
class PositionEmbedding(tf.keras.layers.Layer):
    """Learned absolute position embeddings for the first T positions, shape [1, T, width]."""

    def __init__(self, max_length: int, width: int, **kwargs):
        super().__init__(**kwargs)
        self.max_length = max_length
        self.width = width

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            name="embeddings", shape=(self.max_length, self.width), initializer="zeros"
        )
        super().build(input_shape)

    def call(self, word_ids):
        length = tf.shape(word_ids)[1]
        return self.embeddings[tf.newaxis, :length, :]

    def get_config(self):
        return {**super().get_config(), "max_length": self.max_length, "width": self.width}


@tf.keras.utils.register_keras_serializable(package="bertclf")
class TransformerBlock(tf.keras.layers.Layer):
    """One post-LayerNorm BERT layer: self-attention, add&LN, feed-forward, add&LN."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-12,
        dropout: float = 0.1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} not divisible by num_heads {num_heads}")
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.dropout = dropout
        self.self_attention = tf.keras.layers.MultiHeadAttention(
            num_heads, hidden_size // num_heads, dropout=dropout, name="self_attention"
        )
        self.attention_dropout = tf.keras.layers.Dropout(dropout, name="attention_dropout")
        self.attention_layer_norm = _layer_norm(layer_norm_eps, "attention_layer_norm")
        self.intermediate = tf.keras.layers.Dense(
            intermediate_size, activation=hidden_act, name="intermediate"
        )
        self.output_dense = tf.keras.layers.Dense(hidden_size, name="output_dense")
        self.output_dropout = tf.keras.layers.Dropout(dropout, name="output_dropout")
        self.output_layer_norm = _layer_norm(layer_norm_eps, "output_layer_norm")

    def call(self, hidden, input_mask, training=None):
        # [B, 1, T]: every query position may attend to the real (unpadded) key positions only.
        attention_mask = tf.cast(input_mask, tf.bool)[:, tf.newaxis, :]
        attended = self.self_attention(
            hidden, hidden, attention_mask=attention_mask, training=training
        )
        attended = self.attention_dropout(attended, training=training)
        hidden = self.attention_layer_norm(hidden + attended)
        ffn = self.output_dense(self.intermediate(hidden))
        ffn = self.output_dropout(ffn, training=training)
        return self.output_layer_norm(hidden + ffn)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "num_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": self.hidden_act,
            "layer_norm_eps": self.layer_norm_eps,
            "dropout": self.dropout,
        }


def _layer_norm(eps: float, name: str) -> tf.keras.layers.LayerNormalization:
    return tf.keras.layers.LayerNormalization(axis=-1, epsilon=eps, name=name)


def _embed(config: BertConfig, word_ids, type_ids):
    """Word + position + type embeddings -> LayerNorm -> dropout -> [projection to hidden]."""
    width = config.embedding_size or config.hidden_size
    words = tf.keras.layers.Embedding(config.vocab_size, width, name="word_embeddings")(word_ids)
    positions = PositionEmbedding(config.max_position, width, name="position_embeddings")(word_ids)
    types = tf.keras.layers.Embedding(config.type_vocab_size, width, name="type_embeddings")(
        type_ids
    )
    summed = tf.keras.layers.Add(name="embeddings_sum")([words, positions, types])
    hidden = _layer_norm(config.layer_norm_eps, "embeddings_layer_norm")(summed)
    hidden = tf.keras.layers.Dropout(config.dropout, name="embeddings_dropout")(hidden)
    if width != config.hidden_size:
        hidden = tf.keras.layers.Dense(config.hidden_size, name="embedding_projection")(hidden)
    return hidden


def _blocks(config: BertConfig) -> list[TransformerBlock]:
    """The transformer layers in call order; ALBERT-style sharing repeats one block."""

    def block(name: str) -> TransformerBlock:
        return TransformerBlock(
            config.hidden_size,
            config.num_heads,
            config.intermediate_size,
            hidden_act=config.hidden_act,
            layer_norm_eps=config.layer_norm_eps,
            dropout=config.dropout,
            name=name,
        )

    if config.share_layers:
        return [block("transformer_layer_shared")] * config.num_layers
    return [block(f"transformer_layer_{i}") for i in range(config.num_layers)]


def build_bert_encoder(config: BertConfig, seed: int = 0) -> tf.keras.Model:
    """A functional tf-keras BERT encoder with TF Hub's dict inputs and outputs.

    Weights are drawn from a truncated normal (stddev initializer_range, seeded by ``seed``);
    biases and LayerNorm betas are 0, LayerNorm gammas 1.
    """
    inputs = {
        name: tf.keras.layers.Input(shape=(None,), dtype=tf.int32, name=name)
        for name in INPUT_NAMES
    }
    hidden = _embed(config, inputs["input_word_ids"], inputs["input_type_ids"])
    encoder_outputs = []
    for block in _blocks(config):
        hidden = block(hidden, inputs["input_mask"])
        encoder_outputs.append(hidden)
    pooled = tf.keras.layers.Dense(config.hidden_size, activation="tanh", name="pooler_dense")(
        hidden[:, 0, :]
    )
    outputs = {
        "sequence_output": hidden,
        "pooled_output": pooled,
        "encoder_outputs": encoder_outputs,
        "default": pooled,
    }
    model = tf.keras.Model(inputs=inputs, outputs=outputs, name="bert_encoder")
    _init_weights(model, config.initializer_range, seed)
    return model


def _init_weights(model: tf.keras.Model, stddev: float, seed: int) -> None:
    """Redraw every kernel and embedding table from one seeded generator.

    Keras' seeded initializers repeat the same values per shape (MultiHeadAttention clones its
    initializer, so query/key/value would start identical); one numpy stream avoids that.
    """
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        leaf = weight.name.split("/")[-1].split(":")[0]
        if leaf in ("kernel", "embeddings"):
            weight.assign(_truncated_normal(rng, tuple(weight.shape), stddev))


def _truncated_normal(rng: np.random.Generator, shape: tuple[int, ...], stddev: float):
    """Normal(0, stddev) samples redrawn until within two standard deviations."""
    values = rng.standard_normal(shape, dtype=np.float32)
    outside = np.abs(values) > 2.0
    while outside.any():
        values[outside] = rng.standard_normal(int(outside.sum()), dtype=np.float32)
        outside = np.abs(values) > 2.0
    return values * stddev


def encoder_weights(model: tf.keras.Model) -> dict[str, tf.Variable]:
    """The model's variables by name minus ":0", e.g. "transformer_layer_0/intermediate/kernel"."""
    return {w.name.removesuffix(":0"): w for w in model.weights}


def save_encoder(model: tf.keras.Model, path: str | Path, seed: int = 0) -> None:
    """Write ``model`` as a SavedModel that ``hub.KerasLayer(path, trainable=True)`` fine-tunes."""
    # Tracing under a fixed global seed gives the saved dropout ops fixed seeds, so training
    # from the SavedModel is reproducible (unseeded ops would draw new masks every run).
    tf.random.set_seed(seed)
    # The Keras SavedModel root keeps variables/trainable_variables lists and traces
    # __call__ for training=True and False, which is what hub.KerasLayer needs.
    model.save(str(path), include_optimizer=False, save_format="tf")


# ---------------------------------------------------------------------------- preprocessor


def _special_ids(vocab: list[str]) -> dict[str, int]:
    """Ids of the tokens BERT packing needs, as in TF Hub's get_special_tokens_dict()."""
    index = {token: i for i, token in enumerate(vocab)}
    missing = [t for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]") if t not in index]
    if missing:
        raise ValueError(f"vocab lacks special tokens {missing}")
    return {
        "vocab_size": len(vocab),
        "start_of_sequence_id": index["[CLS]"],
        "end_of_segment_id": index["[SEP]"],
        "padding_id": index["[PAD]"],
        "mask_id": index["[MASK]"],
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
    """Callable sub-object: strings [B] -> int32 RaggedTensor [B, words, wordpieces]."""

    def __init__(self, tokenizer: text.BertTokenizer, special: dict[str, int], normalize=None):
        super().__init__()
        self.tokenizer = tokenizer
        self.get_special_tokens_dict = _SpecialTokens(special)
        self.__call__ = tf.function(
            lambda strings: _tokenize(tokenizer, strings, normalize),
            input_signature=[tf.TensorSpec([None], tf.string)],
        )


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


def _tokenize(tokenizer: text.BertTokenizer, strings: tf.Tensor, normalize=None):
    if normalize is not None:
        strings = normalize(strings)
    tokens = tokenizer.tokenize(strings)
    return tokens.with_flat_values(tf.cast(tokens.flat_values, tf.int32))


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

    def __init__(
        self,
        vocab_file: Path,
        lower_case: bool,
        default_seq_length: int,
        normalization: str = "tf_text",
    ):
        super().__init__()
        vocab = vocab_file.read_text(encoding="utf-8").splitlines()
        special = _special_ids(vocab)
        normalize = _bert_normalizer(lower_case) if normalization == "bert" else None
        # Built from the file path, so the lookup table's initializer saves it as an asset.
        tokenizer = text.BertTokenizer(
            str(vocab_file), lower_case=lower_case and normalize is None, token_out_type=tf.int64
        )
        self.tokenize = _Tokenize(tokenizer, special, normalize)
        self.bert_pack_inputs = _PackInputs(special, default_seq_length)
        self.__call__ = tf.function(
            lambda strings: _pack(
                [_tokenize(tokenizer, strings, normalize)], default_seq_length, special
            ),
            input_signature=[tf.TensorSpec([None], tf.string)],
        )


def save_preprocessor(
    vocab_file: str | Path,
    path: str | Path,
    *,
    lower_case: bool = True,
    default_seq_length: int = 128,
    normalization: str = "tf_text",
) -> None:
    """Write a TF Hub BERT preprocessing SavedModel (root call, .tokenize, .bert_pack_inputs).

    ``normalization``: "tf_text" normalises as TF Text's BertTokenizer and TF Hub's BERT
    preprocessors do; "bert" as Google's original BERT tokenizer and Hugging Face's
    BertWordPieceTokenizer do (for vocabularies and checkpoints trained with those).
    """
    vocab_file = Path(vocab_file)
    if not vocab_file.is_file():
        raise FileNotFoundError(f"vocab file {vocab_file} does not exist")
    if normalization not in ("tf_text", "bert"):
        raise ValueError(f"normalization must be 'tf_text' or 'bert', not {normalization!r}")
    model = _Preprocessor(vocab_file, lower_case, default_seq_length, normalization)
    tf.saved_model.save(model, str(path))


# ---------------------------------------------------------------------------- tiny model


def tiny_config() -> BertConfig:
    """Config of the tiny random BERT: L-2 H-128 A-2, intermediate 512, the tiny vocab."""
    vocab_size = len(TINY_VOCAB.read_text(encoding="utf-8").splitlines())
    return BertConfig(vocab_size=vocab_size)


def _is_built(dest: Path) -> bool:
    return all((dest / part / "saved_model.pb").is_file() for part in ("encoder", "preprocess"))


def build_tiny(dest: str | Path, *, seed: int = 0) -> tuple[Path, Path]:
    """Build the tiny encoder and preprocessor into dest/encoder and dest/preprocess.

    Idempotent: an existing build is returned as is (whatever seed built it). Atomic: the
    models are written to a temporary sibling that is renamed into place when complete.
    """
    dest = Path(dest)
    paths = (dest / "encoder", dest / "preprocess")
    if _is_built(dest):
        return paths
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} exists but holds no complete tiny model; remove it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the built models are meant to be shared
    try:
        save_encoder(build_bert_encoder(tiny_config(), seed=seed), tmp / "encoder")
        save_preprocessor(TINY_VOCAB, tmp / "preprocess")
        try:
            os.replace(tmp, dest)  # replaces an empty dest; fails if another caller won
        except OSError:
            if not _is_built(dest):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths


# ---------------------------------------------------------------------------- tiny vocab


def make_vocab(texts: Iterable[str], size: int) -> list[str]:
    """A BERT-layout wordpiece vocab of ``size`` entries: specials, characters, frequent words.

    Order: [PAD] [UNK] [CLS] [SEP] [MASK], single characters (a-z, 0-9, punctuation),
    ``##`` forms of letters and digits (BERT splits punctuation off, so it never continues a
    word), then the most frequent lower-cased words of ``texts`` (ties alphabetical).
    """
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars if c.isalnum())]
    if size < len(vocab):
        raise ValueError(f"size must be at least {len(vocab)}")
    counts: collections.Counter[str] = collections.Counter()
    for doc in texts:
        doc = doc.lower().replace("<br />", " ")
        counts.update(w for w in re.findall(r"[^\W_]+", doc) if w.isascii())
    known = set(vocab)
    words = sorted((w for w in counts if w not in known), key=lambda w: (-counts[w], w))
    return vocab + words[: size - len(vocab)]


def imdb_train_texts(archive: str | Path) -> Iterator[str]:
    """The review texts of train/pos and train/neg in an aclImdb .tar.gz archive."""
    pattern = re.compile(r"(^|/)train/(pos|neg)/[^/]+\.txt$")
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            if member.isfile() and pattern.search(member.name):
                yield tar.extractfile(member).read().decode("utf-8")


def write_tiny_vocab(archive: str | Path, size: int = 4096) -> None:
    """Regenerate TINY_VOCAB from the IMDB archive."""
    vocab = make_vocab(imdb_train_texts(archive), size)
    tmp = TINY_VOCAB.with_name(f".{TINY_VOCAB.name}.{uuid.uuid4().hex}")
    tmp.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    os.replace(tmp, TINY_VOCAB)


if __name__ == "__main__":
    import sys

    write_tiny_vocab(sys.argv[1])  # python -m bertclf.hub_models path/to/aclImdb_v1.tar.gz

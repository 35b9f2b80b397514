"""Our BERT encoder in the TF Hub format: a functional tf-keras model and its SavedModel.

``save_encoder`` writes a SavedModel that ``hub.KerasLayer(path, trainable=True)`` fine-tunes
like ``small_bert/bert_en_uncased_L-2_H-128_A-2``. Layer names (for weight importers),
``E`` = embedding_size, ``H`` = hidden_size:

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

from dataclasses import dataclass
from pathlib import Path

# bertclf/__init__ (always run first) has set TF_USE_LEGACY_KERAS, so tf.keras is tf-keras.
import numpy as np
import tensorflow as tf

INPUT_NAMES = ("input_word_ids", "input_mask", "input_type_ids")  # TF Hub BERT encoder inputs


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
    hidden_act: str = "gelu"  # exact (erf) GELU as in BERT; "bertclf>gelu_tanh": tanh GELU
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    initializer_range: float = 0.02


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


@tf.keras.utils.register_keras_serializable(package="bertclf", name="gelu_tanh")
def gelu_tanh(x):
    """GELU's tanh approximation (Hugging Face's gelu_new): hidden_act "bertclf>gelu_tanh"."""
    return tf.keras.activations.gelu(x, approximate=True)


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

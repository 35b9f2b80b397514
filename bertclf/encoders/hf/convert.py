"""Hugging Face checkpoint -> our encoder: its BertConfig and the weight map (WEIGHT_MAP).

Supported ``model_type``: ``bert`` (``BertModel`` and the task models around it), ``electra``
(the discriminator or generator body; factorized embeddings through ``embeddings_project``) and
``albert`` (factorized embeddings through ``embedding_hidden_mapping_in``, one shared layer:
``num_hidden_groups`` = ``inner_group_num`` = 1, as in every released ALBERT).

Pooler: BERT and ALBERT checkpoints carry a trained one. ELECTRA has none (nor do BERT
checkpoints saved without one): the encoder then gets a trainable pooler ``tanh(W h_[CLS] + b)``
initialised as the identity, ``W = I``, ``b = 0``, which fine-tuning adapts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from bertclf.encoders.hf.checkpoint import Checkpoint
from bertclf.errors import EncoderError

if TYPE_CHECKING:
    from bertclf.encoders.bert_encoder import BertConfig

# Hugging Face config class defaults, for keys a config.json leaves out.
DEFAULTS = {
    "bert": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.1,
                 max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12,
                 initializer_range=0.02),
    "electra": dict(vocab_size=30522, embedding_size=128, hidden_size=256, num_hidden_layers=12,
                    num_attention_heads=4, intermediate_size=1024, hidden_act="gelu",
                    hidden_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=2,
                    layer_norm_eps=1e-12, initializer_range=0.02),
    "albert": dict(vocab_size=30000, embedding_size=128, hidden_size=4096, num_hidden_layers=12,
                   num_hidden_groups=1, num_attention_heads=64, intermediate_size=16384,
                   inner_group_num=1, hidden_act="gelu_new", hidden_dropout_prob=0.0,
                   max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12,
                   initializer_range=0.02),
}
# Hugging Face activation name -> Keras activation (the tanh GELUs are one function).
ACTIVATIONS = {
    "gelu": "gelu",  # exact erf GELU (tf-keras gelu defaults to approximate=False)
    "gelu_new": "bertclf>gelu_tanh",
    "gelu_pytorch_tanh": "bertclf>gelu_tanh",
    "gelu_fast": "bertclf>gelu_tanh",
    "relu": "relu",
    "silu": "swish",
    "swish": "swish",
}



def bert_config(checkpoint: Checkpoint) -> BertConfig:
    """The ``BertConfig`` of the checkpoint, or EncoderError for what the encoder cannot do."""
    from bertclf.encoders.bert_encoder import BertConfig

    where = checkpoint.folder / "config.json"
    kind = checkpoint.model_type
    cfg = {**DEFAULTS[kind], **checkpoint.config}
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise EncoderError(f"{where}: position_embedding_type {cfg['position_embedding_type']!r} "
                           "is not supported (absolute only)")
    if cfg.get("is_decoder") or cfg.get("add_cross_attention"):
        raise EncoderError(f"{where}: decoder checkpoints are not supported (encoders only)")
    act = cfg["hidden_act"]
    if act not in ACTIVATIONS:
        raise EncoderError(f"{where}: hidden_act {act!r} is not supported "
                           f"({', '.join(ACTIVATIONS)})")
    hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    if hidden % heads:
        raise EncoderError(f"{where}: hidden_size {hidden} is not divisible by "
                           f"num_attention_heads {heads}")
    embedding_size = int(cfg["embedding_size"]) if kind in ("electra", "albert") else hidden
    if kind == "albert":
        groups = (cfg["num_hidden_groups"], cfg["inner_group_num"])
        if groups != (1, 1):
            raise EncoderError(f"{where}: ALBERT with num_hidden_groups, inner_group_num = "
                               f"{groups} is not supported (1, 1 only)")
        if embedding_size == hidden:
            raise EncoderError(f"{where}: ALBERT with embedding_size == hidden_size is not "
                               "supported (its embedding_hidden_mapping_in has no place here)")
    return BertConfig(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=hidden,
        num_layers=int(cfg["num_hidden_layers"]),
        num_heads=heads,
        intermediate_size=int(cfg["intermediate_size"]),
        max_position=int(cfg["max_position_embeddings"]),
        type_vocab_size=int(cfg["type_vocab_size"]),
        embedding_size=embedding_size if embedding_size != hidden else None,
        share_layers=kind == "albert",
        hidden_act=ACTIVATIONS[act],
        layer_norm_eps=float(cfg["layer_norm_eps"]),
        dropout=float(cfg["hidden_dropout_prob"]),
        initializer_range=float(cfg["initializer_range"]),
    )


# ---------------------------------------------------------------------------- weight map
# A transform turns a Hugging Face tensor (and the number of attention heads) into the value
# of our variable. torch's Linear stores its weight as [out, in], a Keras Dense kernel is
# [in, out]; our attention splits the hidden size H into heads of H / heads.


def same(x: np.ndarray, heads: int) -> np.ndarray:
    """Embedding tables, LayerNorm weights and biases, Dense biases: taken as they are."""
    return x


def linear_kernel(x: np.ndarray, heads: int) -> np.ndarray:
    """Linear weight [out, in] -> Dense kernel [in, out]."""
    return x.T


def heads_kernel(x: np.ndarray, heads: int) -> np.ndarray:
    """Query, key or value weight [H, H] -> kernel [H, heads, H / heads]."""
    return x.T.reshape(x.shape[1], heads, -1)


def heads_bias(x: np.ndarray, heads: int) -> np.ndarray:
    """Query, key or value bias [H] -> [heads, H / heads]."""
    return x.reshape(heads, -1)


def heads_output_kernel(x: np.ndarray, heads: int) -> np.ndarray:
    """Attention output weight [H, H] -> kernel [heads, H / heads, H]."""
    return x.T.reshape(heads, -1, x.shape[0])


Transform = Callable[[np.ndarray, int], np.ndarray]
EVERY = ("bert", "electra", "albert")
LAYERED = ("bert", "electra")  # one set of tensors per layer: encoder.layer.{i}
# ALBERT's one shared layer (num_hidden_groups = inner_group_num = 1).
SHARED = "encoder.albert_layer_groups.0.albert_layers.0"

# (Hugging Face tensor, without the bert./electra./albert. prefix; our variable; transform;
# the checkpoints it is read from), in the order the encoder uses them. {i} is a layer's index.
WEIGHT_MAP: list[tuple[str, str, Transform, tuple[str, ...]]] = [
    ("embeddings.word_embeddings.weight", "word_embeddings/embeddings", same, EVERY),
    ("embeddings.position_embeddings.weight", "position_embeddings/embeddings", same, EVERY),
    ("embeddings.token_type_embeddings.weight", "type_embeddings/embeddings", same, EVERY),
    ("embeddings.LayerNorm.weight", "embeddings_layer_norm/gamma", same, EVERY),
    ("embeddings.LayerNorm.bias", "embeddings_layer_norm/beta", same, EVERY),
    # Factorized embeddings (embedding_size < hidden_size) are projected to the hidden size.
    ("embeddings_project.weight", "embedding_projection/kernel", linear_kernel, ("electra",)),
    ("embeddings_project.bias", "embedding_projection/bias", same, ("electra",)),
    ("encoder.embedding_hidden_mapping_in.weight", "embedding_projection/kernel", linear_kernel,
     ("albert",)),
    ("encoder.embedding_hidden_mapping_in.bias", "embedding_projection/bias", same, ("albert",)),
    # BERT and ELECTRA layers.
    ("encoder.layer.{i}.attention.self.query.weight",
     "transformer_layer_{i}/self_attention/query/kernel", heads_kernel, LAYERED),
    ("encoder.layer.{i}.attention.self.query.bias",
     "transformer_layer_{i}/self_attention/query/bias", heads_bias, LAYERED),
    ("encoder.layer.{i}.attention.self.key.weight",
     "transformer_layer_{i}/self_attention/key/kernel", heads_kernel, LAYERED),
    ("encoder.layer.{i}.attention.self.key.bias",
     "transformer_layer_{i}/self_attention/key/bias", heads_bias, LAYERED),
    ("encoder.layer.{i}.attention.self.value.weight",
     "transformer_layer_{i}/self_attention/value/kernel", heads_kernel, LAYERED),
    ("encoder.layer.{i}.attention.self.value.bias",
     "transformer_layer_{i}/self_attention/value/bias", heads_bias, LAYERED),
    ("encoder.layer.{i}.attention.output.dense.weight",
     "transformer_layer_{i}/self_attention/attention_output/kernel", heads_output_kernel,
     LAYERED),
    ("encoder.layer.{i}.attention.output.dense.bias",
     "transformer_layer_{i}/self_attention/attention_output/bias", same, LAYERED),
    ("encoder.layer.{i}.attention.output.LayerNorm.weight",
     "transformer_layer_{i}/attention_layer_norm/gamma", same, LAYERED),
    ("encoder.layer.{i}.attention.output.LayerNorm.bias",
     "transformer_layer_{i}/attention_layer_norm/beta", same, LAYERED),
    ("encoder.layer.{i}.intermediate.dense.weight",
     "transformer_layer_{i}/intermediate/kernel", linear_kernel, LAYERED),
    ("encoder.layer.{i}.intermediate.dense.bias",
     "transformer_layer_{i}/intermediate/bias", same, LAYERED),
    ("encoder.layer.{i}.output.dense.weight",
     "transformer_layer_{i}/output_dense/kernel", linear_kernel, LAYERED),
    ("encoder.layer.{i}.output.dense.bias",
     "transformer_layer_{i}/output_dense/bias", same, LAYERED),
    ("encoder.layer.{i}.output.LayerNorm.weight",
     "transformer_layer_{i}/output_layer_norm/gamma", same, LAYERED),
    ("encoder.layer.{i}.output.LayerNorm.bias",
     "transformer_layer_{i}/output_layer_norm/beta", same, LAYERED),
    # ALBERT's shared layer, the same tensors under other names.
    (f"{SHARED}.attention.query.weight",
     "transformer_layer_shared/self_attention/query/kernel", heads_kernel, ("albert",)),
    (f"{SHARED}.attention.query.bias",
     "transformer_layer_shared/self_attention/query/bias", heads_bias, ("albert",)),
    (f"{SHARED}.attention.key.weight",
     "transformer_layer_shared/self_attention/key/kernel", heads_kernel, ("albert",)),
    (f"{SHARED}.attention.key.bias",
     "transformer_layer_shared/self_attention/key/bias", heads_bias, ("albert",)),
    (f"{SHARED}.attention.value.weight",
     "transformer_layer_shared/self_attention/value/kernel", heads_kernel, ("albert",)),
    (f"{SHARED}.attention.value.bias",
     "transformer_layer_shared/self_attention/value/bias", heads_bias, ("albert",)),
    (f"{SHARED}.attention.dense.weight",
     "transformer_layer_shared/self_attention/attention_output/kernel", heads_output_kernel,
     ("albert",)),
    (f"{SHARED}.attention.dense.bias",
     "transformer_layer_shared/self_attention/attention_output/bias", same, ("albert",)),
    (f"{SHARED}.attention.LayerNorm.weight",
     "transformer_layer_shared/attention_layer_norm/gamma", same, ("albert",)),
    (f"{SHARED}.attention.LayerNorm.bias",
     "transformer_layer_shared/attention_layer_norm/beta", same, ("albert",)),
    (f"{SHARED}.ffn.weight", "transformer_layer_shared/intermediate/kernel", linear_kernel,
     ("albert",)),
    (f"{SHARED}.ffn.bias", "transformer_layer_shared/intermediate/bias", same, ("albert",)),
    (f"{SHARED}.ffn_output.weight", "transformer_layer_shared/output_dense/kernel",
     linear_kernel, ("albert",)),
    (f"{SHARED}.ffn_output.bias", "transformer_layer_shared/output_dense/bias", same,
     ("albert",)),
    (f"{SHARED}.full_layer_layer_norm.weight", "transformer_layer_shared/output_layer_norm/gamma",
     same, ("albert",)),
    (f"{SHARED}.full_layer_layer_norm.bias", "transformer_layer_shared/output_layer_norm/beta",
     same, ("albert",)),
    # The pooler; ELECTRA has none (nor has a BERT saved without it): see identity_pooler.
    ("pooler.dense.weight", "pooler_dense/kernel", linear_kernel, ("bert",)),
    ("pooler.dense.bias", "pooler_dense/bias", same, ("bert",)),
    ("pooler.weight", "pooler_dense/kernel", linear_kernel, ("albert",)),
    ("pooler.bias", "pooler_dense/bias", same, ("albert",)),
]


def weight_rows(model_type: str, config: BertConfig) -> list[tuple[str, str, Transform]]:
    """WEIGHT_MAP's (Hugging Face tensor, our variable, transform) rows for a checkpoint,
    one per layer where a row has {i}."""
    rows = []
    for theirs, ours, transform, models in WEIGHT_MAP:
        if model_type not in models:
            continue
        if ours.startswith("embedding_projection/") and not config.embedding_size:
            continue
        layers = range(config.num_layers) if "{i}" in theirs else range(1)
        rows += [(theirs.format(i=i), ours.format(i=i), transform) for i in layers]
    return rows


def identity_pooler(config: BertConfig) -> dict[str, np.ndarray]:
    """The pooler of a checkpoint without one: kernel I, bias 0."""
    return {"pooler_dense/kernel": np.eye(config.hidden_size, dtype=np.float32),
            "pooler_dense/bias": np.zeros(config.hidden_size, np.float32)}


def encoder_values(
    checkpoint: Checkpoint, config: BertConfig, tensors: dict[str, np.ndarray],
    shapes: dict[str, tuple[int, ...]],
) -> tuple[dict[str, np.ndarray], str]:
    """Our encoder's variable values from the checkpoint's (unprefixed) tensors, and where the
    pooler came from: "checkpoint", or "identity" where it has none. ``shapes``: the encoder's
    variables (those ``bert_config`` describes) by name, with their shapes."""
    where = f"{checkpoint.weights} ({checkpoint.model_type}, {config.num_layers} layers)"
    rows = weight_rows(checkpoint.model_type, config)
    pooler_names = {theirs for theirs, ours, _ in rows if ours.startswith("pooler_dense/")}
    missing = [theirs for theirs, _, _ in rows if theirs not in tensors]
    if missing and set(missing) == pooler_names:  # a BERT saved without its pooler
        missing = []
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise EncoderError(f"{where}: tensor {missing[0]!r} is missing{more}; is config.json "
                           "right for these weights?")
    pooler = "checkpoint" if pooler_names and pooler_names <= tensors.keys() else "identity"
    names = {ours for _, ours, _ in rows} | identity_pooler(config).keys()
    if names != shapes.keys():  # WEIGHT_MAP and build_bert_encoder disagree
        raise RuntimeError(f"encoder variables and weight map differ: "
                           f"{sorted(names ^ shapes.keys())[:5]}")
    values = identity_pooler(config) if pooler == "identity" else {}
    for theirs, ours, transform in rows:
        if theirs not in tensors:
            continue  # the pooler of a BERT saved without one
        tensor = tensors[theirs]
        try:
            value = transform(tensor.astype(np.float32), config.num_heads)
        except (ValueError, IndexError):  # a reshape that the tensor's size does not allow
            value = None
        if value is None or value.shape != tuple(shapes[ours]):
            raise EncoderError(f"{where}: tensor {theirs!r} has shape {list(tensor.shape)}, "
                               f"which does not make {ours} of shape {list(shapes[ours])}; is "
                               "config.json right for these weights?")
        values[ours] = np.ascontiguousarray(value)
    used = {theirs for theirs, _, _ in rows}
    stray = sorted(n for n in tensors if n.startswith(("embeddings.", "encoder.", "embeddings_"))
                   and n not in used and n != "embeddings.position_ids")
    if stray:
        raise EncoderError(f"{where}: tensor {stray[0]!r} belongs to the encoder but config.json "
                           f"has no place for it ({len(stray)} such tensors)")
    return values, pooler

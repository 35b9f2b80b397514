"""Hugging Face checkpoint -> our encoder: its BertConfig, the weight map, the tokenizer settings.

Supported ``model_type``: ``bert`` (``BertModel`` and the task models around it), ``electra``
(the discriminator or generator body; factorized embeddings through ``embeddings_project``) and
``albert`` (factorized embeddings through ``embedding_hidden_mapping_in``, one shared layer:
``num_hidden_groups`` = ``inner_group_num`` = 1, as in every released ALBERT).

Pooler: BERT and ALBERT checkpoints carry a trained one. ELECTRA has none (nor do BERT
checkpoints saved without one): the encoder then gets a trainable pooler ``tanh(W h_[CLS] + b)``
initialised as the identity, ``W = I``, ``b = 0``, which fine-tuning adapts.

Lower-casing comes from ``tokenizer_config.json`` / ``tokenizer.json`` / ``config.json``
(``do_lower_case``); then a SentencePiece vocab is lower-cased (AlbertTokenizer's default), a
WordPiece one is judged by the checkpoint's name (``uncased`` / ``cased``), then by the vocab (a
cased vocab has capitalised words).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from bertclf.errors import EncoderError
from bertclf.hf.checkpoint import Checkpoint, read_json, read_vocab

if TYPE_CHECKING:
    from bertclf.bert_encoder import BertConfig

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
    from bertclf.bert_encoder import BertConfig

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

# Module kind -> its tensors: (our variable, Hugging Face parameter, transform).
PARAMETERS = {
    "table": (("embeddings", "weight", ""),),
    "norm": (("gamma", "weight", ""), ("beta", "bias", "")),
    "dense": (("kernel", "weight", "T"), ("bias", "bias", "")),
    "qkv": (("kernel", "weight", "qkv"), ("bias", "bias", "split")),  # query, key, value
    "out": (("kernel", "weight", "out"), ("bias", "bias", "")),  # attention output
}
# Transform: Hugging Face tensor, number of heads -> our variable.
TRANSFORMS = {
    "": lambda x, heads: x,
    "T": lambda x, heads: x.T,  # torch Linear weight [out, in] -> Dense kernel [in, out]
    "qkv": lambda x, heads: x.T.reshape(x.shape[1], heads, -1),  # -> [H, heads, H/heads]
    "split": lambda x, heads: x.reshape(heads, -1),  # bias -> [heads, H/heads]
    "out": lambda x, heads: x.T.reshape(heads, -1, x.shape[0]),  # -> [heads, H/heads, H]
}
# Our layer, the Hugging Face module (without the bert./electra./albert. prefix), kind, and
# the module's weight shape in sizes of config.json: V vocab, P positions, T token types,
# E embedding, H hidden, I intermediate (a Linear is "out in"; a bias is "out").
EMBEDDINGS = (
    ("word_embeddings", "embeddings.word_embeddings", "table", "V E"),
    ("position_embeddings", "embeddings.position_embeddings", "table", "P E"),
    ("type_embeddings", "embeddings.token_type_embeddings", "table", "T E"),
    ("embeddings_layer_norm", "embeddings.LayerNorm", "norm", "E"),
)
PROJECTION = {"electra": "embeddings_project", "albert": "encoder.embedding_hidden_mapping_in"}
# Inside a transformer layer: our layer, the BERT/ELECTRA module, the ALBERT module, kind, shape.
LAYER = (
    ("self_attention/query", "attention.self.query", "attention.query", "qkv", "H H"),
    ("self_attention/key", "attention.self.key", "attention.key", "qkv", "H H"),
    ("self_attention/value", "attention.self.value", "attention.value", "qkv", "H H"),
    ("self_attention/attention_output", "attention.output.dense", "attention.dense", "out", "H H"),
    ("attention_layer_norm", "attention.output.LayerNorm", "attention.LayerNorm", "norm", "H"),
    ("intermediate", "intermediate.dense", "ffn", "dense", "I H"),
    ("output_dense", "output.dense", "ffn_output", "dense", "H I"),
    ("output_layer_norm", "output.LayerNorm", "full_layer_layer_norm", "norm", "H"),
)
# The transformer layers, ours and theirs: one per layer ({i}), or ALBERT's one shared layer.
BERT_LAYERS = ("transformer_layer_{i}", "encoder.layer.{i}")
ALBERT_LAYERS = ("transformer_layer_shared", "encoder.albert_layer_groups.0.albert_layers.0")
POOLER = {"bert": "pooler.dense", "albert": "pooler", "electra": None}  # None: identity pooler


def weight_map(model_type: str, config: BertConfig) -> list[tuple[str, str, str, tuple]]:
    """(our variable, Hugging Face tensor, transform, the tensor's shape) for each variable
    the checkpoint fills."""
    albert = model_type == "albert"
    ours, theirs = ALBERT_LAYERS if albert else BERT_LAYERS
    modules = list(EMBEDDINGS)
    if config.embedding_size:
        modules.append(("embedding_projection", PROJECTION[model_type], "dense", "H E"))
    for i in range(1 if albert else config.num_layers):
        for layer, bert_module, albert_module, kind, shape in LAYER:
            module = albert_module if albert else bert_module
            modules.append((f"{ours}/{layer}".format(i=i), f"{theirs}.{module}".format(i=i),
                            kind, shape))
    if POOLER[model_type]:
        modules.append(("pooler_dense", POOLER[model_type], "dense", "H H"))
    sizes = {"V": config.vocab_size, "P": config.max_position, "T": config.type_vocab_size,
             "E": config.embedding_size or config.hidden_size, "H": config.hidden_size,
             "I": config.intermediate_size}
    rows = []
    for layer, module, kind, shape in modules:
        weight = tuple(sizes[d] for d in shape.split())
        for variable, parameter, transform in PARAMETERS[kind]:
            rows.append((f"{layer}/{variable}", f"{module}.{parameter}", transform,
                         weight if parameter == "weight" else weight[:1]))
    return rows


def encoder_values(
    checkpoint: Checkpoint, config: BertConfig, tensors: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], str]:
    """Our encoder's variable values from the checkpoint's (unprefixed) tensors, and where the
    pooler came from: "checkpoint", or "identity" (kernel I, bias 0) where it has none."""
    where = f"{checkpoint.weights} ({checkpoint.model_type}, {config.num_layers} layers)"
    rows = weight_map(checkpoint.model_type, config)
    pooler_names = {theirs for ours, theirs, _, _ in rows if ours.startswith("pooler_dense/")}
    missing = [theirs for _, theirs, _, _ in rows if theirs not in tensors]
    if missing and set(missing) == pooler_names:  # a BERT saved without its pooler
        missing = []
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise EncoderError(f"{where}: tensor {missing[0]!r} is missing{more}; is config.json "
                           "right for these weights?")
    pooler = "checkpoint" if pooler_names and pooler_names <= tensors.keys() else "identity"
    values: dict[str, np.ndarray] = {}
    for ours, theirs, transform, shape in rows:
        if theirs not in tensors:
            continue  # the pooler of a BERT saved without one
        tensor = tensors[theirs]
        if tuple(tensor.shape) != shape:
            raise EncoderError(f"{where}: tensor {theirs!r} has shape {list(tensor.shape)}, "
                               f"config.json implies {list(shape)}")
        value = TRANSFORMS[transform](tensor.astype(np.float32), config.num_heads)
        values[ours] = np.ascontiguousarray(value)
    if pooler == "identity":
        values["pooler_dense/kernel"] = np.eye(config.hidden_size, dtype=np.float32)
        values["pooler_dense/bias"] = np.zeros(config.hidden_size, np.float32)
    used = {theirs for _, theirs, _, _ in rows}
    stray = sorted(n for n in tensors if n.startswith(("embeddings.", "encoder.", "embeddings_"))
                   and n not in used and n != "embeddings.position_ids")
    if stray:
        raise EncoderError(f"{where}: tensor {stray[0]!r} belongs to the encoder but config.json "
                           f"has no place for it ({len(stray)} such tensors)")
    return values, pooler


# ---------------------------------------------------------------------------- tokenizer


def lower_case(checkpoint: Checkpoint) -> tuple[bool, str]:
    """Whether the vocab is uncased, and where that was read."""
    folder = checkpoint.folder
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.is_file():
        value = read_json(tokenizer_config).get("do_lower_case")
        if isinstance(value, bool):
            return value, "tokenizer_config.json do_lower_case"
    tokenizer_json = folder / "tokenizer.json"
    if tokenizer_json.is_file():
        normalizer = read_json(tokenizer_json).get("normalizer") or {}
        if normalizer.get("type") == "BertNormalizer" and isinstance(
            normalizer.get("lowercase"), bool
        ):
            return normalizer["lowercase"], "tokenizer.json normalizer"
    if isinstance(checkpoint.config.get("do_lower_case"), bool):
        return checkpoint.config["do_lower_case"], "config.json do_lower_case"
    if checkpoint.tokenizer == "sentencepiece":
        return True, "AlbertTokenizer's default"
    name = f"{checkpoint.config.get('_name_or_path', '')} {folder.resolve().name}".lower()
    if "uncased" in name:
        return True, "the name says uncased"
    if "cased" in name:
        return False, "the name says cased"
    words = [t.removeprefix("##") for t in read_vocab(checkpoint) if not t.startswith("[")]
    capitalised = sum(w != w.lower() for w in words)
    if capitalised > 0.01 * max(len(words), 1):
        return False, "the vocab has capitalised words"
    return True, "the vocab has no capitalised words"


def tokenizer_notes(checkpoint: Checkpoint, lower_case: bool) -> list[str]:
    """Tokenizer settings the TF Text preprocessor cannot follow."""
    path = checkpoint.folder / "tokenizer_config.json"
    settings = read_json(path) if path.is_file() else {}
    notes = []
    if checkpoint.tokenizer == "sentencepiece":
        if settings.get("keep_accents") is True:
            notes.append("tokenizer_config.json sets keep_accents=true, but the preprocessor "
                         "strips accents; token ids of accented words may differ")
        if settings.get("remove_space") is False:
            notes.append("tokenizer_config.json sets remove_space=false, but the preprocessor "
                         "collapses whitespace; token ids may differ")
        return notes
    strip = settings.get("strip_accents")
    if strip is not None and strip != lower_case:
        notes.append(f"tokenizer_config.json sets strip_accents={strip}, but the preprocessor "
                     f"strips accents exactly when it lower-cases (lower_case={lower_case}); "
                     "token ids of accented words may differ")
    if settings.get("tokenize_chinese_chars") is False:
        notes.append("tokenizer_config.json sets tokenize_chinese_chars=false, but the "
                     "preprocessor always splits CJK characters")
    return notes

"""A plain-NumPy forward pass of BERT, ELECTRA and ALBERT on a Hugging Face checkpoint's tensors.

It reads the tensors by their Hugging Face names (without the ``bert.``/``electra.``/``albert.``
prefix) and computes in float64 what ``BertModel`` / ``ElectraModel`` / ``AlbertModel`` compute
in eval mode. It shares no code with the weight map or our encoder: it is the reference an
import is checked against.

Pooler: the checkpoint's (``pooler.dense`` for BERT, ``pooler`` for ALBERT) when present;
otherwise (ELECTRA) ``tanh(h_[CLS])``, the identity-initialised pooler the importer documents.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU: x * Phi(x) with the error function."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """The tanh approximation of GELU (Hugging Face gelu_new / gelu_pytorch_tanh)."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


ACTIVATIONS = {
    "gelu": gelu,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_fast": gelu_tanh,
    "relu": lambda x: np.maximum(x, 0.0),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "swish": lambda x: x / (1.0 + np.exp(-x)),
}
BERT_LAYER = {
    "query": "attention.self.query", "key": "attention.self.key",
    "value": "attention.self.value", "attention_output": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm", "intermediate": "intermediate.dense",
    "output": "output.dense", "output_norm": "output.LayerNorm",
}
ALBERT_LAYER = {
    "query": "attention.query", "key": "attention.key", "value": "attention.value",
    "attention_output": "attention.dense", "attention_norm": "attention.LayerNorm",
    "intermediate": "ffn", "output": "ffn_output", "output_norm": "full_layer_layer_norm",
}


def _get(w: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """A tensor as float64, converted when used (a large checkpoint is not copied at once)."""
    return np.asarray(w[name], dtype=np.float64)


def linear(x: np.ndarray, w: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """torch.nn.Linear: weight [out, in]."""
    return x @ _get(w, f"{name}.weight").T + _get(w, f"{name}.bias")


def layer_norm(x: np.ndarray, w: Mapping[str, np.ndarray], name: str, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * _get(w, f"{name}.weight") + _get(w, f"{name}.bias")


def _layer(h, mask, w, names, heads, act, eps):
    """One post-LayerNorm transformer layer; ``names`` maps roles to HF module names."""
    batch, length, hidden = h.shape
    size = hidden // heads

    def split(x):  # [B, T, H] -> [B, heads, T, size]
        return x.reshape(batch, length, heads, size).transpose(0, 2, 1, 3)

    q, k, v = (split(linear(h, w, names[role])) for role in ("query", "key", "value"))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(size)
    scores = np.where(mask[:, None, None, :] > 0, scores, -1e30)
    scores = scores - scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, hidden)
    h = layer_norm(h + linear(context, w, names["attention_output"]), w,
                   names["attention_norm"], eps)
    ffn = linear(act(linear(h, w, names["intermediate"])), w, names["output"])
    return layer_norm(h + ffn, w, names["output_norm"], eps)


def forward(config: Mapping, w: Mapping[str, np.ndarray], input_ids, attention_mask,
            token_type_ids=None) -> dict[str, np.ndarray]:
    """sequence_output [B, T, H], pooled_output [B, H], encoder_outputs (one per layer), in
    float64, for a checkpoint's ``config.json`` values and its unprefixed tensors ``w``."""
    input_ids = np.asarray(input_ids)
    mask = np.asarray(attention_mask)
    types = np.zeros_like(input_ids) if token_type_ids is None else np.asarray(token_type_ids)
    kind = config["model_type"]
    eps = config.get("layer_norm_eps", 1e-12)
    act = ACTIVATIONS[config.get("hidden_act", "gelu_new" if kind == "albert" else "gelu")]
    heads = config["num_attention_heads"]

    positions = np.arange(input_ids.shape[1])
    h = sum(np.asarray(w[f"embeddings.{table}.weight"])[ids].astype(np.float64) for table, ids
            in (("word_embeddings", input_ids), ("position_embeddings", positions[None]),
                ("token_type_embeddings", types)))
    h = layer_norm(h, w, "embeddings.LayerNorm", eps)
    if kind == "electra" and "embeddings_project.weight" in w:
        h = linear(h, w, "embeddings_project")
    if kind == "albert":
        h = linear(h, w, "encoder.embedding_hidden_mapping_in")

    outputs = []
    for i in range(config["num_hidden_layers"]):
        if kind == "albert":
            prefix = "encoder.albert_layer_groups.0.albert_layers.0."
            names = {k: prefix + v for k, v in ALBERT_LAYER.items()}
        else:
            names = {k: f"encoder.layer.{i}.{v}" for k, v in BERT_LAYER.items()}
        h = _layer(h, mask, w, names, heads, act, eps)
        outputs.append(h)

    cls = h[:, 0]
    pooler = {"bert": "pooler.dense", "albert": "pooler"}.get(kind)
    if pooler and f"{pooler}.weight" in w:
        pooled = np.tanh(linear(cls, w, pooler))
    else:
        pooled = np.tanh(cls)
    return {"sequence_output": h, "pooled_output": pooled, "encoder_outputs": outputs}

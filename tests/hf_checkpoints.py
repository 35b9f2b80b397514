"""Random Hugging Face checkpoints for the import tests (write_checkpoint, CHECKPOINTS) and
the comparison helpers those tests share; hf_fixtures imports them once a session."""

import importlib.util
import json
import random
import shutil
from pathlib import Path

import numpy as np
import sentencepiece as spm
from safetensors.numpy import load_file, save_file

from bertclf.encoders.hf import install, reference
from bertclf.encoders.tiny import TINY_VOCAB

# isort: split
# TensorFlow only after bertclf, which makes tf.keras tf-keras.
import tensorflow as tf
import tensorflow_hub as hub

TOLERANCE = 1e-4
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64, type_vocab_size=2, layer_norm_eps=1e-12,
             vocab_size=len(TINY_VOCAB.read_text(encoding="utf-8").splitlines()))


def minilm_installed() -> bool:
    return importlib.util.find_spec(install.MINILM_PACKAGE) is not None


# ---------------------------------------------------------------------------- checkpoints


def write_checkpoint(folder: Path, model_type: str, *, prefix: bool = True, seed: int = 0,
                     embedding_size: int | None = None, hidden_act: str = "gelu",
                     do_lower_case: bool | None = None, heads: bool = True,
                     spiece: Path | None = None, **overrides) -> Path:
    """A random checkpoint in the Hugging Face layout, weights large enough to matter; its vocab
    is the tiny WordPiece vocab.txt, or the SentencePiece model ``spiece`` as spiece.model."""
    rng = np.random.default_rng(seed)
    config = {**SMALL, "model_type": model_type, "hidden_act": hidden_act, **overrides}
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    width = embedding_size or hidden
    if embedding_size:
        config["embedding_size"] = embedding_size
    w: dict[str, np.ndarray] = {}

    def dense(name, n_in, n_out):
        w[f"{name}.weight"] = rng.normal(0, 0.3, (n_out, n_in)).astype(np.float32)
        w[f"{name}.bias"] = rng.normal(0, 0.1, (n_out,)).astype(np.float32)

    def norm(name, size):
        w[f"{name}.weight"] = (1 + rng.normal(0, 0.1, size)).astype(np.float32)
        w[f"{name}.bias"] = rng.normal(0, 0.1, size).astype(np.float32)

    w["embeddings.word_embeddings.weight"] = rng.normal(0, 0.5, (config["vocab_size"], width))
    w["embeddings.position_embeddings.weight"] = rng.normal(
        0, 0.5, (config["max_position_embeddings"], width))
    w["embeddings.token_type_embeddings.weight"] = rng.normal(0, 0.5, (2, width))
    w["embeddings.position_ids"] = np.arange(config["max_position_embeddings"])[None]
    norm("embeddings.LayerNorm", width)
    if model_type == "albert":
        dense("encoder.embedding_hidden_mapping_in", width, hidden)
        layer = "encoder.albert_layer_groups.0.albert_layers.0."
        for part in ("query", "key", "value", "dense"):
            dense(f"{layer}attention.{part}", hidden, hidden)
        norm(f"{layer}attention.LayerNorm", hidden)
        dense(f"{layer}ffn", hidden, inter)
        dense(f"{layer}ffn_output", inter, hidden)
        norm(f"{layer}full_layer_layer_norm", hidden)
        dense("pooler", hidden, hidden)
        config.update(num_hidden_groups=1, inner_group_num=1)
    else:
        if embedding_size and embedding_size != hidden:
            dense("embeddings_project", width, hidden)
        for i in range(config["num_hidden_layers"]):
            layer = f"encoder.layer.{i}."
            for part in ("query", "key", "value"):
                dense(f"{layer}attention.self.{part}", hidden, hidden)
            dense(f"{layer}attention.output.dense", hidden, hidden)
            norm(f"{layer}attention.output.LayerNorm", hidden)
            dense(f"{layer}intermediate.dense", hidden, inter)
            dense(f"{layer}output.dense", inter, hidden)
            norm(f"{layer}output.LayerNorm", hidden)
        if model_type == "bert":
            dense("pooler.dense", hidden, hidden)
    if prefix:
        w = {f"{model_type}.{k}": v for k, v in w.items()}
    if heads:  # task heads of the pre-training models, to be ignored
        w["cls.predictions.bias"] = np.zeros(config["vocab_size"])
        w["discriminator_predictions.dense.weight"] = np.zeros((hidden, hidden))
    folder.mkdir(parents=True)
    save_file({k: np.ascontiguousarray(v, dtype=v.dtype if v.dtype == np.int64 else np.float32)
               for k, v in w.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    if spiece:
        shutil.copy(spiece, folder / "spiece.model")
    else:
        (folder / "vocab.txt").write_bytes(TINY_VOCAB.read_bytes())
    if do_lower_case is not None:
        (folder / "tokenizer_config.json").write_text(
            json.dumps({"do_lower_case": do_lower_case}), encoding="utf-8")
    return folder


CHECKPOINTS = {
    # BertForPreTraining layout: "bert." prefix and heads.
    "bert": dict(model_type="bert"),
    # ELECTRA-small style factorized embeddings, cased vocab, discriminator head.
    "electra": dict(model_type="electra", embedding_size=16, do_lower_case=False),
    # AlbertModel saved without prefix: shared layer, tanh GELU, 3 passes.
    "albert": dict(model_type="albert", prefix=False, embedding_size=16, hidden_act="gelu_new",
                   num_hidden_layers=3),
    # albert-base-v2 style: AlbertForMaskedLM layout, SentencePiece spiece.model, no vocab.txt.
    "albert-spiece": dict(model_type="albert", embedding_size=16, hidden_act="gelu_new",
                          num_hidden_layers=2, vocab_size=256, spiece=True),
}


def train_spiece(folder: Path, vocab_size: int) -> Path:
    """A unigram SentencePiece model with ALBERT's special pieces: <pad> 0, <unk> 1, [CLS] 2,
    [SEP] 3, [MASK] 4 (control symbols, as in albert-base-v2's spiece.model)."""
    rng = random.Random(0)
    syllables = [c + v for c in "bkmrstlnd" for v in "aeiou"]
    words = ("the a movie film great good bad story actor scene was really and it this plot "
             "wonderful review long cafe naive uber cool resume said left twice").split()
    words += ["".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(400)]
    sentences = [" ".join(rng.choices(words, k=rng.randint(4, 12))) for _ in range(600)]
    sentences[::5] = [f'"{s}", he said' for s in sentences[::5]]  # " and , are pieces
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "spiece.model").open("wb") as model:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
            model_type="unigram", pad_id=0, unk_id=1, bos_id=-1, eos_id=-1,
            control_symbols=["[CLS]", "[SEP]", "[MASK]"], character_coverage=1.0,
            minloglevel=2)
    return folder / "spiece.model"


# ---------------------------------------------------------------------------- comparisons


def padded_batch(vocab_size: int, seed: int = 1):
    """Three rows of different lengths (one with a second segment), zero-padded to 12."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((3, 12), np.int32)
    mask = np.zeros((3, 12), np.int32)
    types = np.zeros((3, 12), np.int32)
    for row, length in enumerate((12, 7, 3)):
        ids[row, :length] = [2, *rng.integers(5, vocab_size, length - 2), 3]
        mask[row, :length] = 1
    types[1, 4:7] = 1
    return ids, mask, types


def reference_outputs(folder: Path, ids, mask, types) -> dict[str, np.ndarray]:
    """The NumPy reference on a checkpoint folder, read here (config.json, model.safetensors)
    rather than by the importer's own reading code."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    prefix = config["model_type"] + "."
    tensors = {name.removeprefix(prefix): value
               for name, value in load_file(str(folder / "model.safetensors")).items()}
    return reference.forward(config, tensors, ids, mask, types)


def encode(dest: Path, ids, mask, types, layer=None):
    layer = layer or hub.KerasLayer(str(dest / "encoder"))
    return layer({"input_word_ids": tf.constant(ids), "input_mask": tf.constant(mask),
                  "input_type_ids": tf.constant(types)})


def max_errors(outputs, reference, mask=None) -> dict[str, float]:
    """Max abs differences; with ``mask``, sequence_output is split into real and padded tokens."""
    errors = {k: float(np.abs(outputs[k].numpy() - reference[k]).max())
              for k in ("sequence_output", "pooled_output")}
    if mask is not None:
        diff = np.abs(outputs["sequence_output"].numpy() - reference["sequence_output"])
        errors["sequence_output"] = float(diff[mask == 1].max())
        errors["padding_positions"] = float(diff[mask == 0].max())
    return errors

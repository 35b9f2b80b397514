"""Score an exported model on a labelled split, through the model's own preprocessing (so
serving's ids are what is scored), in length-bucketed batches under the run's precision."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from bertclf.data.datasets import Split
from bertclf.data.tokens import TokenIds, make_dataset
from bertclf.errors import UserError
from bertclf.run import accel
from bertclf.run.config import Hardware
from bertclf.run.export import load_model, probabilities
from bertclf.run.train import rate_and_time_left

PREPROCESS_BATCH = 512


def exported_token_ids(model, split: Split) -> TokenIds:
    """The split's ids as the exported model packs them, padding stripped."""
    values, lengths = [], []
    for start in range(0, len(split), PREPROCESS_BATCH):
        packed = model.preprocess(tf.constant(split.texts[start:start + PREPROCESS_BATCH]))
        mask = packed["input_mask"].numpy().astype(bool)
        values.append(packed["input_word_ids"].numpy()[mask].astype(np.int32))
        lengths.append(mask.sum(axis=1).astype(np.int32))
    return TokenIds(np.concatenate(values), np.concatenate(lengths), split.labels)


def evaluate_export(path: str | Path, split: Split, class_names: list[str],
                    hardware: Hardware | None = None, batch_size: int = 128,
                    progress_every: float = 60.0) -> dict:
    """Accuracy and loss of the exported model at `path` on `split`, whose labels index
    `class_names` (matched to the model's classes by name), under `hardware`'s precision and
    XLA (default: Hardware()). A progress line goes to stderr every `progress_every` seconds."""
    hardware = hardware or Hardware()
    model = load_model(path)
    if not hasattr(model, "logits"):
        raise UserError(f"{path}: not a model `bertclf train` exported (no `logits` "
                        "function)")
    names = [n.decode() for n in model.class_names.numpy()]
    unknown = sorted(set(class_names) - set(names))
    if unknown:
        raise UserError(f"data class(es) {', '.join(unknown)} are not classes of the model "
                        f"({', '.join(names)})")
    labels = np.array([names.index(class_names[y]) for y in split.labels], dtype=np.int32)
    tokens = exported_token_ids(model, Split(split.texts, labels))
    seq_len = int(model.seq_len.numpy())
    logits, truth = [], []
    started = last = time.perf_counter()
    with accel.precision_rewrites(hardware):
        for inputs, batch_labels in make_dataset(tokens, batch_size, seq_len, bucket=True):
            logits.append(model.logits(inputs).numpy())
            truth.append(batch_labels.numpy())
            if (now := time.perf_counter()) - last >= progress_every:
                last, done = now, sum(map(len, truth))
                print(f"evaluate: {done:,}/{len(split):,} examples "
                      f"{rate_and_time_left(done, len(split), now - started, 'examples')}",
                      file=sys.stderr, flush=True)
    probs = probabilities(np.concatenate(logits))
    truth = np.concatenate(truth)
    picked = probs[np.arange(len(truth)), truth]
    return {"accuracy": float(np.mean(probs.argmax(axis=1) == truth)),
            "loss": float(-np.mean(np.log(np.clip(picked, 1e-12, 1.0)))),
            "examples": int(len(truth)), "precision": accel.resolve_precision(hardware)}

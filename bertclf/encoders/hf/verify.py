"""The check an import passes before anything is written: one fixed batch through the converted
encoder and through the NumPy reference (``bertclf.encoders.hf.reference``) on the checkpoint's own
tensors, which must agree within TOLERANCE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from bertclf.encoders.hf import reference
from bertclf.encoders.hf.checkpoint import Checkpoint
from bertclf.encoders.hf.convert import DEFAULTS
from bertclf.errors import EncoderError

if TYPE_CHECKING:
    import tensorflow as tf

    from bertclf.encoders.bert_encoder import BertConfig

# Our float32 encoder against the float64 reference: MiniLM and the test checkpoints agree
# within 1e-5 on real tokens, a wrong transform differs by 0.1 or more.
TOLERANCE = 1e-3
LENGTH = 16  # tokens in the batch's longest sequence (fewer if the checkpoint has fewer positions)


def check_batch(config: BertConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three fixed sequences of token ids (ids, mask, types): the longest fills the batch, the
    others are padded and the second one has a second segment where the checkpoint has one."""
    length = min(LENGTH, config.max_position)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, config.vocab_size, (3, length)).astype(np.int32)
    mask = np.zeros((3, length), np.int32)
    for row, used in enumerate((length, max(1, length // 2), 1 + length // 4)):
        mask[row, :used] = 1
    ids *= mask
    types = np.zeros((3, length), np.int32)
    if config.type_vocab_size > 1:
        types[1, length // 4:length // 2] = 1
    return ids, mask, types


def check_encoder(model: tf.keras.Model, checkpoint: Checkpoint, config: BertConfig,
                  tensors: dict[str, np.ndarray]) -> dict:
    """Run ``check_batch`` through ``model`` (the converted encoder) and through the reference
    on ``tensors`` (the checkpoint's, unprefixed); EncoderError if an output differs by more
    than TOLERANCE. Returns what was checked: sequences, max_difference, tolerance."""
    ids, mask, types = check_batch(config)
    ours = model({"input_word_ids": ids, "input_mask": mask, "input_type_ids": types},
                 training=False)
    theirs = reference.forward({**DEFAULTS[checkpoint.model_type], **checkpoint.config},
                               tensors, ids, mask, types)
    real = mask == 1  # padding positions are computed but read by nothing
    differences = {
        "sequence_output": np.abs(ours["sequence_output"].numpy()[real]
                                  - theirs["sequence_output"][real]).max(),
        "pooled_output": np.abs(ours["pooled_output"].numpy() - theirs["pooled_output"]).max(),
    }
    output, worst = max(differences.items(), key=lambda item: np.nan_to_num(item[1], nan=np.inf))
    if not worst <= TOLERANCE:  # NaN fails too
        raise EncoderError(f"{checkpoint.folder}: the converted encoder's {output} differs from "
                           f"the NumPy reference by {worst:.2g} (tolerance {TOLERANCE:g}) on "
                           f"{len(ids)} sequences; nothing was written")
    return {"sequences": len(ids), "max_difference": float(worst), "tolerance": TOLERANCE}

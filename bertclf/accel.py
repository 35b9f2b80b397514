"""How a run uses the hardware: mixed precision and XLA, for any encoder SavedModel.

A TF Hub encoder is a SavedModel whose float32 graph was fixed when it was saved, so Keras'
mixed-precision policies cannot reach inside it. TensorFlow's graph rewrite can: grappler's
auto mixed precision runs the whole training step's matmuls, attention and activations in
float16 (on NVIDIA GPUs) or bfloat16 (on CPUs, through oneDNN), while the variables, the
softmax, the layer norms, the loss and the logits the loss reads stay float32. float16 also
needs loss scaling, so its optimizer is wrapped in Keras' dynamic LossScaleOptimizer.

`jit_compile=True` hands the step to XLA before grappler runs, which would silently train in
float32, so with mixed precision XLA is TensorFlow's auto-clustering (it runs after the
rewrite) instead. The rewrites are per process and read at each call: `rewrites` sets
them around a run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import tensorflow as tf

from bertclf.config import TrainConfig
from bertclf.errors import UserError


def has_gpu() -> bool:
    """Whether TensorFlow sees a GPU."""
    return bool(tf.config.list_physical_devices("GPU"))


def resolve_precision(config: TrainConfig) -> str:
    """The precision as configured, else mixed_float16 with a GPU and float32 without."""
    if config.precision is not None:
        return config.precision
    return "mixed_float16" if has_gpu() else "float32"


def use_jit(config: TrainConfig) -> bool:
    """XLA compilation: as configured, else on when a GPU is present."""
    if config.jit_compile is not None:
        return config.jit_compile
    return has_gpu()


def jit_compile(config: TrainConfig) -> bool:
    """Keras' `jit_compile` for `config`: off with mixed precision (auto-clustering instead)."""
    return use_jit(config) and resolve_precision(config) == "float32"


@contextmanager
def rewrites(config: TrainConfig) -> Iterator[None]:
    """This process's graph rewrites set for `config` inside the block, restored after it (a
    run's precision must not leak into the caller's later predictions or into the next run)."""
    precision = resolve_precision(config)
    if precision == "mixed_float16" and not has_gpu():
        raise UserError("precision mixed_float16 needs a GPU (TensorFlow's float16 rewrite "
                        "only runs there); on a CPU use mixed_bfloat16 or float32")
    saved_options = tf.config.optimizer.get_experimental_options()
    saved_jit = tf.config.optimizer.get_jit()
    wanted = {"auto_mixed_precision": precision == "mixed_float16",
              "auto_mixed_precision_onednn_bfloat16": precision == "mixed_bfloat16"}
    tf.config.optimizer.set_experimental_options(wanted)
    mixed = precision != "float32"
    tf.config.optimizer.set_jit("autoclustering" if mixed and use_jit(config) else False)
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options(
            {name: saved_options.get(name, False) for name in wanted})
        tf.config.optimizer.set_jit(saved_jit or False)


def scaled(optimizer: tf.keras.optimizers.Optimizer,
           config: TrainConfig) -> tf.keras.optimizers.Optimizer:
    """`optimizer` with dynamic loss scaling where the precision needs it (float16)."""
    if resolve_precision(config) == "mixed_float16":
        return tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer

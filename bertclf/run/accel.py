"""How TensorFlow work uses the hardware (`Hardware`: a run's `config.hardware`, or built on its
own where nothing trains): its precision (float32, or TensorFlow's mixed-precision graph
rewrite, which reaches into SavedModel encoders) and XLA. README's "Mixed precision and XLA"
says why the rewrite is used rather than Keras' policies."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import tensorflow as tf

from bertclf.errors import UserError
from bertclf.run.config import Hardware

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # native bfloat16 arithmetic


def has_gpu() -> bool:
    """Whether TensorFlow sees a GPU."""
    return bool(tf.config.list_physical_devices("GPU"))


@cache
def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU does bfloat16 arithmetic natively (the flags in `cpuinfo`)."""
    try:
        text = cpuinfo.read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    flags = {flag for line in text.splitlines() if line.startswith("flags")
             for flag in line.split(":", 1)[1].split()}
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def resolve_precision(hardware: Hardware) -> str:
    """The precision a run uses: as configured, or for "auto" mixed_float16 on a GPU,
    mixed_bfloat16 on a CPU with native bfloat16, float32 elsewhere."""
    if hardware.precision != "auto":
        return hardware.precision
    if has_gpu():
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_has_bf16() else "float32"


def xla_enabled(hardware: Hardware) -> bool:
    """Whether the run uses XLA: as configured, else when a GPU is present."""
    if hardware.jit_compile is not None:
        return hardware.jit_compile
    return has_gpu()


def keras_jit_compile(hardware: Hardware) -> bool:
    """Keras' `jit_compile` for the run. XLA compiles the step before the mixed-precision
    rewrite runs, which would silently train in float32, so under mixed precision XLA comes
    from auto-clustering (set by `precision_rewrites`) instead."""
    return xla_enabled(hardware) and resolve_precision(hardware) == "float32"


@contextmanager
def precision_rewrites(hardware: Hardware) -> Iterator[None]:
    """Inside the block, this process's graph rewrites are those the run's precision and XLA
    need; afterwards they are restored, so that a run's precision does not leak into the
    caller's later predictions or the next run."""
    precision = resolve_precision(hardware)
    if precision == "mixed_float16" and not has_gpu():
        raise UserError("precision mixed_float16 needs a GPU (TensorFlow's float16 rewrite "
                        "only runs there); on a CPU use mixed_bfloat16 or float32")
    if precision == "mixed_bfloat16" and not cpu_has_bf16():
        raise UserError("precision mixed_bfloat16 needs a CPU with native bfloat16 ("
                        f"{' or '.join(BF16_CPU_FLAGS)}): TensorFlow's bfloat16 rewrite does "
                        "not run on this one; use auto or float32")
    saved_options = tf.config.optimizer.get_experimental_options()
    saved_jit = tf.config.optimizer.get_jit()
    wanted = {"auto_mixed_precision": precision == "mixed_float16",
              "auto_mixed_precision_onednn_bfloat16": precision == "mixed_bfloat16"}
    tf.config.optimizer.set_experimental_options(wanted)
    mixed = precision != "float32"
    tf.config.optimizer.set_jit("autoclustering" if mixed and xla_enabled(hardware) else False)
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options(
            {name: saved_options.get(name, False) for name in wanted})
        tf.config.optimizer.set_jit(saved_jit or False)


def with_loss_scaling(optimizer: tf.keras.optimizers.Optimizer,
                      hardware: Hardware) -> tf.keras.optimizers.Optimizer:
    """`optimizer` wrapped in dynamic loss scaling where the precision needs it (float16)."""
    if resolve_precision(hardware) == "mixed_float16":
        return tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def hardware_used(hardware: Hardware) -> dict:
    """What `hardware` comes to on this machine, for metrics.json and the run's tags."""
    return {"gpu": has_gpu(), "precision": resolve_precision(hardware),
            "xla": xla_enabled(hardware)}

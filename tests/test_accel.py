"""Mixed precision and XLA (bertclf.run.accel): "auto" follows the hardware, the bfloat16 rewrite
really changes what a graph computes and only inside a run, XLA under mixed precision leaves
Keras' jit_compile off, float16 asks for a GPU, and float16's loss scaling leaves the AdamW
update (weight decay included) unchanged."""

import numpy as np
import pytest
import tensorflow as tf

from bertclf.errors import UserError
from bertclf.run import accel
from bertclf.run.config import Hardware, TrainConfig
from bertclf.run.optim import make_optimizer

MATRIX = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)


def matmul_error() -> float:
    """How far a freshly traced float32 graph's matmul is from the exact product: about 1e-5
    in float32, about 0.1 when the bfloat16 rewrite runs it."""
    graph = tf.function(tf.linalg.matmul)
    exact = MATRIX.astype(np.float64) @ MATRIX.astype(np.float64)
    return float(np.abs(graph(MATRIX, MATRIX).numpy() - exact).max())


@pytest.mark.parametrize("gpu, bf16, expected", [
    (True, True, "mixed_float16"), (False, True, "mixed_bfloat16"), (False, False, "float32")])
def test_auto_precision_follows_the_hardware(monkeypatch, gpu, bf16, expected):
    monkeypatch.setattr(accel, "has_gpu", lambda: gpu)
    monkeypatch.setattr(accel, "cpu_has_bf16", lambda: bf16)
    assert accel.resolve_precision(Hardware()) == expected
    assert accel.resolve_precision(Hardware(precision="float32")) == "float32"
    assert accel.xla_enabled(Hardware()) is gpu
    assert accel.xla_enabled(Hardware(jit_compile=True)) is True


def test_a_runs_hardware_is_its_config_fields():
    """A run's Hardware comes from its TrainConfig fields; the defaults are Hardware's."""
    assert TrainConfig(data="imdb").hardware == Hardware()
    run = TrainConfig(data="imdb", precision="mixed_bfloat16", jit_compile=False)
    assert run.hardware == Hardware(precision="mixed_bfloat16", jit_compile=False)
    with pytest.raises(UserError, match="precision must be one of"):
        Hardware(precision="float16").validate()


def test_bf16_cpu_flags_are_read_from_cpuinfo(tmp_path):
    with_flag, without = tmp_path / "with", tmp_path / "without"
    with_flag.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512bw\n")
    assert accel.cpu_has_bf16(with_flag) and not accel.cpu_has_bf16(without)
    assert not accel.cpu_has_bf16(tmp_path / "missing")


@pytest.mark.parametrize("precision, jit, keras_jit", [
    ("float32", True, True),           # plain XLA: Keras' jit_compile
    ("float32", False, False),
    ("mixed_bfloat16", True, False),   # XLA after the rewrite: auto-clustering instead
    ("mixed_bfloat16", False, False),
])
def test_xla_under_mixed_precision_leaves_keras_jit_off(precision, jit, keras_jit):
    assert accel.keras_jit_compile(Hardware(precision=precision, jit_compile=jit)) is keras_jit


BF16 = accel.cpu_has_bf16()  # the rewrite runs on such CPUs only; elsewhere it is refused


def test_bfloat16_rewrite_runs_inside_the_block_only():
    assert matmul_error() < 1e-3
    if not BF16:
        with pytest.raises(UserError, match="needs a CPU with native bfloat16"), \
                accel.precision_rewrites(Hardware(precision="mixed_bfloat16")):
            pass
        assert matmul_error() < 1e-3
        return
    with accel.precision_rewrites(Hardware(precision="mixed_bfloat16", jit_compile=False)):
        assert matmul_error() > 1e-2, "the rewrite did not run"
    assert matmul_error() < 1e-3, "the rewrite leaked out of the run"
    with accel.precision_rewrites(Hardware(precision="float32")):
        assert matmul_error() < 1e-3


def test_rewrites_are_restored_when_the_run_fails():
    precision = "mixed_bfloat16" if BF16 else "float32"
    with pytest.raises(RuntimeError, match="boom"), \
            accel.precision_rewrites(Hardware(precision=precision)):
        raise RuntimeError("boom")
    assert matmul_error() < 1e-3


@pytest.mark.skipif(accel.has_gpu(), reason="float16 is allowed where a GPU is present")
def test_float16_without_a_gpu_is_a_user_error():
    with pytest.raises(UserError, match="needs a GPU.*mixed_bfloat16"), \
            accel.precision_rewrites(Hardware(precision="mixed_float16")):
        pass
    assert matmul_error() < 1e-3


def one_step(optimizer, loss_scale: float | None = None) -> np.ndarray:
    """The weights after one AdamW step on a fixed quadratic loss, through Keras' minimize
    (which scales the loss and unscales the gradients when the optimizer does loss scaling)."""
    weight = tf.Variable([1.0, -2.0, 3.0], name="kernel")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum((weight - tf.constant([0.5, 0.5, 0.5])) ** 2)
    optimizer.minimize(loss, [weight], tape=tape)
    return weight.numpy()


def adamw():
    return make_optimizer(lr=0.1, lr_schedule="constant", warmup_fraction=0.0,
                          weight_decay=0.5, wd_schedule="constant", total_steps=10)


def test_float16_loss_scaling_leaves_the_update_unchanged():
    scaled = accel.with_loss_scaling(adamw(), Hardware(precision="mixed_float16"))
    assert isinstance(scaled, tf.keras.mixed_precision.LossScaleOptimizer)
    assert float(scaled.loss_scale) > 1, "the loss really is scaled"
    np.testing.assert_allclose(one_step(scaled), one_step(adamw()), rtol=1e-6)
    assert int(scaled.iterations) == 1, "the weight-decay schedule sees the inner step count"
    for precision in ("float32", "mixed_bfloat16"):  # bfloat16 has float32's range
        optimizer = adamw()
        assert accel.with_loss_scaling(optimizer, Hardware(precision=precision)) is optimizer

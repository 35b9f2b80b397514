"""Mixed precision and XLA (bertclf.accel): the rewrites are set around a run and restored,
XLA under mixed precision becomes auto-clustering, float16 asks for a GPU, and float16's loss
scaling leaves the AdamW update (weight decay included) unchanged."""

import numpy as np
import pytest
import tensorflow as tf

from bertclf import accel
from bertclf.config import TrainConfig
from bertclf.errors import UserError
from bertclf.optim import make_optimizer

AMP_OPTIONS = ("auto_mixed_precision", "auto_mixed_precision_onednn_bfloat16")


def settings(**values) -> TrainConfig:
    return TrainConfig(data="in-memory", **values)


def amp_options() -> dict[str, bool]:
    options = tf.config.optimizer.get_experimental_options()
    return {name: options.get(name, False) for name in AMP_OPTIONS}


def test_defaults_follow_the_hardware():
    gpu = accel.has_gpu()
    assert accel.resolve_precision(settings()) == ("mixed_float16" if gpu else "float32")
    assert accel.use_jit(settings()) is gpu
    assert accel.resolve_precision(settings(precision="mixed_bfloat16")) == "mixed_bfloat16"
    assert accel.use_jit(settings(jit_compile=True)) is True


@pytest.mark.parametrize("precision, jit, keras_jit, auto_jit", [
    ("float32", True, True, ""),                   # plain XLA: Keras' jit_compile
    ("float32", False, False, ""),
    ("mixed_bfloat16", True, False, "autoclustering"),  # XLA after the rewrite
    ("mixed_bfloat16", False, False, ""),
])
def test_xla_under_mixed_precision_is_auto_clustering(precision, jit, keras_jit, auto_jit):
    config = settings(precision=precision, jit_compile=jit)
    assert accel.jit_compile(config) is keras_jit
    before = amp_options(), tf.config.optimizer.get_jit()
    with accel.rewrites(config):
        assert amp_options() == {"auto_mixed_precision": False,
                                 "auto_mixed_precision_onednn_bfloat16":
                                     precision == "mixed_bfloat16"}
        assert tf.config.optimizer.get_jit() == auto_jit
    assert (amp_options(), tf.config.optimizer.get_jit()) == before, "restored after the run"


def test_rewrites_are_restored_when_the_run_fails():
    before = amp_options()
    with pytest.raises(RuntimeError, match="boom"), \
            accel.rewrites(settings(precision="mixed_bfloat16")):
        raise RuntimeError("boom")
    assert amp_options() == before


def test_float16_without_a_gpu_is_a_user_error():
    config = settings(precision="mixed_float16")
    if accel.has_gpu():
        with accel.rewrites(config):
            assert amp_options()["auto_mixed_precision"]
        return
    with pytest.raises(UserError, match="needs a GPU.*mixed_bfloat16"), accel.rewrites(config):
        pass
    assert not amp_options()["auto_mixed_precision"]


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
    scaled = accel.scaled(adamw(), settings(precision="mixed_float16"))
    assert isinstance(scaled, tf.keras.mixed_precision.LossScaleOptimizer)
    assert float(scaled.loss_scale) > 1, "the loss really is scaled"
    np.testing.assert_allclose(one_step(scaled), one_step(adamw()), rtol=1e-6)
    assert int(scaled.iterations) == 1, "the weight-decay schedule sees the inner step count"
    for precision in ("float32", "mixed_bfloat16"):  # bfloat16 has float32's range
        optimizer = adamw()
        assert accel.scaled(optimizer, settings(precision=precision)) is optimizer

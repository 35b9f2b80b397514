"""The weight decay applied at each step follows the schedule of the optimizer's own step count."""

import numpy as np
import pytest
import tensorflow as tf

from bertclf.optim import ScheduledAdamW, learning_rate_schedule, make_optimizer

TOTAL_STEPS = 20


def applied_decay_per_step(optimizer, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Run `steps` updates with zero gradients (Adam's own update is then 0) and return
    the relative shrink of a weight at each step and the learning rate used at it."""
    weight = tf.Variable([1.0, -2.0, 3.0], name="kernel")
    shrink, rates = [], []

    @tf.function
    def step():
        optimizer.apply_gradients([(tf.zeros_like(weight), weight)])

    for _ in range(steps):
        before = weight.numpy()
        rates.append(float(tf.keras.backend.get_value(
            optimizer._learning_rate(optimizer.iterations)
            if callable(optimizer._learning_rate) else optimizer._learning_rate)))
        step()
        shrink.append(1.0 - weight.numpy()[0] / before[0])
    return np.array(shrink), np.array(rates)


@pytest.mark.parametrize("lr_kind", ["constant", "linear"])
@pytest.mark.parametrize("wd_kind", ["constant", "piecewise", "lr"])
def test_decay_applied_matches_schedule(lr_kind, wd_kind):
    lr, wd = 0.1, 0.5
    optimizer = make_optimizer(lr=lr, lr_schedule=lr_kind, warmup_fraction=0.2, weight_decay=wd,
                               wd_schedule=wd_kind, total_steps=TOTAL_STEPS)
    shrink, rates = applied_decay_per_step(optimizer, TOTAL_STEPS)

    steps = np.arange(TOTAL_STEPS)
    if wd_kind == "constant":
        expected_wd = np.full(TOTAL_STEPS, wd)
    elif wd_kind == "piecewise":
        expected_wd = np.select([steps <= 10, steps <= 15], [wd, wd * 0.1], wd * 0.01)
    else:
        expected_wd = wd * rates / lr
    np.testing.assert_allclose(shrink, expected_wd * rates, rtol=1e-4, atol=1e-7)
    if wd_kind == "piecewise":
        # The decay moves with the step: the notebook's version stayed at its first value.
        assert len(set(np.round(shrink / np.maximum(rates, 1e-12), 6))) >= 3


def test_warmup_linear_decay_shape():
    schedule = learning_rate_schedule(1.0, "linear", total_steps=10, warmup_fraction=0.2)
    values = [float(schedule(s)) for s in range(11)]
    assert values[0] == 0.0 and values[1] == pytest.approx(0.5) and values[2] == pytest.approx(1.0)
    assert values[6] == pytest.approx(0.5) and values[10] == 0.0


def test_no_decay_on_bias_and_layer_norm():
    optimizer = make_optimizer(lr=0.1, lr_schedule="constant", warmup_fraction=0.0,
                               weight_decay=0.5, wd_schedule="constant", total_steps=5)
    kernel = tf.Variable([1.0], name="dense/kernel")
    bias = tf.Variable([1.0], name="dense/bias")
    optimizer.apply_gradients([(tf.zeros_like(kernel), kernel), (tf.zeros_like(bias), bias)])
    assert kernel.numpy()[0] == pytest.approx(0.95)
    assert bias.numpy()[0] == 1.0


def test_optimizer_survives_model_save(tmp_path):
    model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(1)])
    model.compile(optimizer=make_optimizer(lr=1e-3, lr_schedule="linear", warmup_fraction=0.1,
                                           weight_decay=0.01, wd_schedule="lr", total_steps=10),
                  loss="mse")
    model.fit(np.ones((4, 3)), np.ones((4, 1)), epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    reloaded = tf.keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(reloaded.optimizer, ScheduledAdamW)
    assert int(reloaded.optimizer.iterations) == 1

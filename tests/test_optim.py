"""The weight decay applied at each step follows the schedule of the optimizer's own step count."""

import numpy as np
import pytest
import tensorflow as tf

from bertclf.encoders.map import get_encoder
from bertclf.run.model import build_classifier
from bertclf.run.optim import ScheduledAdamW, learning_rate_schedule, make_optimizer

pytest_plugins = ["hf_fixtures"]  # the `imported` fixture: random checkpoints, imported

TOTAL_STEPS = 20
KEPT = ("gamma", "beta", "bias")  # LayerNorm scales and offsets, biases: never decayed
DECAYED = ("kernel", "embeddings")  # dense kernels and embedding tables


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

    # The fraction of the weight removed at each step (README, "Weight decay").
    steps = np.arange(TOTAL_STEPS)
    if wd_kind == "constant":
        expected = np.full(TOTAL_STEPS, wd * lr)
    elif wd_kind == "piecewise":
        expected = wd * lr * np.select([steps <= 10, steps <= 15], [1.0, 0.1], 0.01)
    else:
        expected = wd * rates  # follows the learning rate, once
    np.testing.assert_allclose(shrink, expected, rtol=1e-4, atol=1e-7)
    if lr_kind == "linear":
        # The learning rate moves, so "constant" and "lr" really differ.
        assert len(set(np.round(rates, 6))) > 10


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


@pytest.mark.parametrize("encoder", ["tiny", "imported BERT"])
def test_real_encoders_decay_only_kernels_and_embeddings(encoder, imported):
    """The exclusion matches the variable names real encoders have: one step with zero
    gradients keeps every LayerNorm gamma/beta and bias as it was and shrinks every kernel
    and embedding table by 1 - weight_decay * lr."""
    lr, weight_decay = 0.1, 2.0
    handle = "tiny" if encoder == "tiny" else str(imported("bert")[1])
    variables = build_classifier(get_encoder(handle), num_classes=2).trainable_variables
    assert len(variables) == 5 + 2 * 16 + 2 + 2  # embeddings, 2 layers, pooler, classifier
    rng = np.random.default_rng(0)
    for variable in variables:  # no zeros (biases start at 0, where decay changes nothing)
        variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype(np.float32))
    before = [variable.numpy() for variable in variables]
    optimizer = make_optimizer(lr=lr, lr_schedule="constant", warmup_fraction=0.0,
                               weight_decay=weight_decay, wd_schedule="constant", total_steps=5)
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in variables])

    kind = {v.name: v.name.removesuffix(":0").rsplit("/", 1)[-1] for v in variables}
    assert set(kind.values()) <= {*KEPT, *DECAYED}, f"unclassified variables: {kind}"
    wrong = [v.name for v, old in zip(variables, before, strict=True)
             if not (np.array_equal(v.numpy(), old) if kind[v.name] in KEPT else
                     np.allclose(v.numpy(), old * (1 - weight_decay * lr), rtol=1e-6, atol=0))]
    assert not wrong, (
        f"decayed wrongly: {wrong}\nto keep: {[n for n in kind if kind[n] in KEPT]}\n"
        f"to decay: {[n for n in kind if kind[n] in DECAYED]}")


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

"""train(): learns separable data, stops early with the best weights kept, handles three
classes, is reproducible from its seed, fails clearly on NaN, evaluates inside the epoch
(`eval_every`, `eval_examples`) and rejects bad settings."""

import json
import math
import os
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from bertclf.data.datasets import Dataset, Split
from bertclf.data.tokens import make_dataset, token_ids
from bertclf.encoders.map import get_encoder
from bertclf.errors import TrainingError, UserError
from bertclf.run import accel
from bertclf.run.config import TrainConfig, evaluation_points, evaluations_per_epoch
from bertclf.run.model import loss_and_metric
from bertclf.run.train import eval_sample, train

POSITIVE = "good great wonderful excellent superb brilliant lovely amazing".split()
NEGATIVE = "bad awful terrible horrible dreadful boring poor worst".split()
MIDDLING = "okay average fine mediocre ordinary decent plain standard".split()
FILLER = "the a film movie story plot actor scene was it and this".split()


def review(rng: random.Random, words: list[str]) -> str:
    """A few filler words around one to three words that give the class away."""
    tokens = [rng.choice(FILLER) for _ in range(rng.randint(3, 10))]
    tokens += [rng.choice(words) for _ in range(rng.randint(1, 3))]
    rng.shuffle(tokens)
    return " ".join(tokens)


def make_split(rng: random.Random, classes: list[list[str]], per_class: int,
               labels: list[int] | None = None) -> Split:
    """per_class reviews of each class, shuffled; labels[i] is class i's label."""
    labels = labels or list(range(len(classes)))
    pairs = [(review(rng, words), label) for words, label in zip(classes, labels, strict=True)
             for _ in range(per_class)]
    rng.shuffle(pairs)
    return Split([t for t, _ in pairs], np.array([y for _, y in pairs], dtype=np.int32))


def config(**overrides) -> TrainConfig:
    """A small run; float32, so that the numbers hold on any CPU (the "auto" default trains
    in bfloat16 where the CPU has it)."""
    values = dict(data="in-memory", encoder="tiny", seq_len=32, batch_size=16, epochs=4,
                  lr=3e-3, patience=1, seed=7, precision="float32")
    return TrainConfig(**{**values, **overrides})


def val_loss_of(result, validation: Split) -> float:
    """The returned model's loss on the validation split, evaluated afresh."""
    spec = get_encoder(result.config.encoder)
    tokens = token_ids(spec, validation, result.config.seq_len)
    loss, _ = result.model.evaluate(make_dataset(tokens, result.config.eval_batch,
                                                 result.config.seq_len,
                                                 bucket=result.config.bucket), verbose=0)
    return loss


@pytest.fixture(scope="module")
def review_folder(tmp_path_factory) -> Path:
    """folder/<neg|pos>/<i>.txt, 100 clearly separable reviews per class."""
    root = tmp_path_factory.mktemp("reviews")
    rng = random.Random(0)
    for name, words in (("neg", NEGATIVE), ("pos", POSITIVE)):
        (root / name).mkdir()
        for i in range(100):
            (root / name / f"{i}.txt").write_text(review(rng, words), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def learned(review_folder):
    return train(config(data=str(review_folder), patience=2), verbose=0)


def test_learns_separable_data(learned):
    history = learned.history
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert 1 <= len(history["loss"]) <= 4
    assert all(len(values) == len(history["loss"]) for values in history.values())
    assert learned.class_names == ["neg", "pos"]
    assert learned.val_accuracy >= 0.85, history
    assert learned.test_accuracy >= 0.8, (learned.test_accuracy, history)
    assert learned.val_loss < 0.5 and learned.test_loss < 0.6
    # Splits: 200 reviews, 20% carved out for test, then 20% of the rest for validation.
    assert learned.data_summary["test_examples"] == 40
    assert learned.data_summary["validation_examples"] == 32
    assert learned.data_summary["train_examples"] == 128
    assert learned.best_epoch == int(np.argmin(history["val_loss"])) + 1
    assert learned.model.output_shape == (None, 1), "one logit for two classes"


def test_mixed_bfloat16_trains_the_rewritten_graph_and_learns(learned, review_folder):
    """The same run as `learned` in mixed_bfloat16: the first epoch's loss differs from
    float32's by bfloat16 rounding (equal float32 runs agree to 1e-5, see assert_same_run, so
    a run that silently stayed float32 fails here), and it learns as well. On a CPU without
    native bfloat16 the rewrite would not run, and the run is refused before it starts."""
    if not accel.cpu_has_bf16():
        with pytest.raises(UserError, match="needs a CPU with native bfloat16"):
            train(replace(learned.config, precision="mixed_bfloat16"), verbose=0)
        return
    mixed = train(replace(learned.config, precision="mixed_bfloat16"), verbose=0)
    difference = abs(mixed.history["loss"][0] - learned.history["loss"][0])
    assert 1e-5 < difference < 0.05, (mixed.history, learned.history)
    assert mixed.val_accuracy >= 0.85 and mixed.test_accuracy >= 0.8, mixed.history
    assert mixed.model.output.dtype == tf.float32, "float32 logits"
    assert mixed.metrics()["params"]["precision"] == "mixed_bfloat16"
    assert mixed.hardware["precision"] == "mixed_bfloat16"


def test_metrics_are_plain_json(learned):
    """metrics.json's summary agrees with its own per-epoch history: the kept epoch is the
    one of lowest validation loss, and its validation figures are that epoch's."""
    import json

    metrics = json.loads(json.dumps(learned.metrics()))
    history = metrics["history"]
    assert metrics["epochs_run"] == len(history["loss"]) == len(history["val_loss"])
    best = int(np.argmin(history["val_loss"])) + 1
    assert metrics["best_epoch"] == best
    assert metrics["val_loss"] == history["val_loss"][best - 1]
    assert metrics["val_accuracy"] == history["val_accuracy"][best - 1]
    assert metrics["params"]["lr"] == 3e-3 and metrics["params"]["seed"] == 7
    assert metrics["class_names"] == ["neg", "pos"]
    assert metrics["data"]["split_seed"] == 7, "the split follows the seed unless split_seed"
    gpu = accel.has_gpu()  # XLA only with a GPU by default
    assert metrics["hardware"] == {"gpu": gpu, "precision": "float32", "xla": gpu}


def test_auto_precision_is_recorded_as_what_ran(learned):
    """precision "auto" (the default) trains in what the hardware offers, and says which: on
    a CPU with native bfloat16 its first epoch's loss differs from the float32 run's by
    bfloat16 rounding (the rewrite ran: the layers' dtypes stay float32 under it), elsewhere
    it is the float32 run."""
    result = train(replace(learned.config, precision="auto"), verbose=0)
    assert result.config.precision == "auto"
    offered = ("mixed_float16" if accel.has_gpu() else
               "mixed_bfloat16" if accel.cpu_has_bf16() else "float32")
    assert result.hardware["precision"] == offered
    assert result.metrics()["hardware"]["precision"] == offered
    difference = abs(result.history["loss"][0] - learned.history["loss"][0])
    if offered == "float32":
        assert difference < 1e-5, (result.history, learned.history)
    else:
        assert 1e-5 < difference < 0.05, (result.history, learned.history)


def flipped(seed: int) -> Dataset:
    """Train and validation disagree (validation labels flipped): once the model learns the
    training rule, validation loss only rises, so an early epoch is the best one."""
    rng = random.Random(seed)
    return Dataset(
        train=make_split(rng, [NEGATIVE, POSITIVE], 80),
        validation=make_split(rng, [NEGATIVE, POSITIVE], 20, labels=[1, 0]),
        test=make_split(rng, [NEGATIVE, POSITIVE], 20),
        class_names=["neg", "pos"], source="in-memory")


@pytest.fixture(scope="module")
def stopped_early():
    """Patience 0 on flipped validation labels must stop early and roll back."""
    dataset = flipped(1)
    return train(config(patience=0, epochs=4), dataset=dataset, verbose=0), dataset.validation


def test_early_stopping_keeps_the_best_epoch(stopped_early):
    stopped_early, validation = stopped_early
    val_loss = stopped_early.history["val_loss"]
    epochs_run = len(val_loss)
    best = stopped_early.best_epoch
    assert best == int(np.argmin(val_loss)) + 1
    assert epochs_run < 4, f"patience 0 should stop before the budget: {val_loss}"
    assert epochs_run == best + 1, "patience 0 stops at the first epoch without improvement"
    assert val_loss[-1] > val_loss[best - 1]
    # The returned weights are the best epoch's, not the last epoch's.
    assert val_loss_of(stopped_early, validation) == pytest.approx(val_loss[best - 1], abs=1e-4)
    assert abs(val_loss_of(stopped_early, validation) - val_loss[-1]) > 1e-3


def test_best_weights_are_kept_when_the_budget_ends():
    """Training that runs to the end of its epochs (patience never runs out) still returns
    the best epoch's weights, not the last epoch's: on data whose validation labels are
    flipped, the best epoch is an early one."""
    dataset = flipped(3)
    result = train(config(patience=3, epochs=3), dataset=dataset, verbose=0)
    val_loss = result.history["val_loss"]
    assert len(val_loss) == 3, "the budget ended the run"
    assert result.best_epoch < 3, val_loss
    assert val_loss_of(result, dataset.validation) == pytest.approx(
        val_loss[result.best_epoch - 1], abs=1e-4)
    assert abs(val_loss_of(result, dataset.validation) - val_loss[-1]) > 1e-3


def test_three_classes(tmp_path):
    rng = random.Random(2)
    classes = [NEGATIVE, MIDDLING, POSITIVE]
    dataset = Dataset(train=make_split(rng, classes, 60), validation=make_split(rng, classes, 20),
                      test=make_split(rng, classes, 20), class_names=["bad", "meh", "good"],
                      source="in-memory")
    result = train(config(epochs=3, patience=2), dataset=dataset, verbose=0)
    assert result.class_names == ["bad", "meh", "good"]
    assert result.model.output_shape == (None, 3), "softmax logits, one per class"
    assert result.history["loss"][0] > 0.8, "cross-entropy over 3 classes starts near ln 3"
    assert result.val_accuracy >= 0.6, result.history  # chance is 1/3
    assert result.test_accuracy >= 0.6, result.history
    tokens = token_ids(get_encoder("tiny"), dataset.test, 32)
    logits = result.model.predict(make_dataset(tokens, 64, 32), verbose=0)
    assert logits.shape == (60, 3)
    assert set(np.argmax(logits, axis=1)) == {0, 1, 2}


def small_dataset(seed: int) -> Dataset:
    rng = random.Random(seed)
    return Dataset(train=make_split(rng, [NEGATIVE, POSITIVE], 40),
                   validation=make_split(rng, [NEGATIVE, POSITIVE], 10),
                   test=make_split(rng, [NEGATIVE, POSITIVE], 10),
                   class_names=["neg", "pos"], source="in-memory")


def assert_same_run(first, second) -> None:
    """One process, CPU, the same ops in the same order: all randomness is seeded (shuffle,
    dropout, head initialisation), so equal seeds must give the same curves up to float
    rounding; 1e-5 is far above rounding and far below what another dropout mask or
    shuffle order changes (about 1e-2 on these losses)."""
    for key, values in first.history.items():
        np.testing.assert_allclose(second.history[key], values, rtol=0, atol=1e-5,
                                   err_msg=f"history[{key!r}] differs between equal seeds")
    assert second.test_loss == pytest.approx(first.test_loss, abs=1e-5)


@pytest.mark.parametrize("built_by", ["another process", "the first run"])
def test_same_seed_same_history(tmp_path, monkeypatch, built_by):
    """Seeds are explicit: a run is reproducible from its parameters, however the
    built-in encoder got into the (fresh) cache: built on first use by another entry point in
    its own process (e.g. tokenizing), or by the first of the two runs compared here (the
    first trial of a sweep, the first `bertclf train`)."""
    monkeypatch.setenv("BERTCLF_CACHE_DIR", str(tmp_path / "cache"))
    if built_by == "another process":
        code = ("from bertclf.encoders.map import get_encoder, load_encoder_layer\n"
                "load_encoder_layer(get_encoder('tiny'))")
        subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy(),
                       capture_output=True, timeout=300)
        assert list((tmp_path / "cache" / "models").glob("*/encoder/saved_model.pb"))
    dataset = small_dataset(5)
    settings = config(epochs=1)
    first = train(settings, dataset=dataset, verbose=0)
    second = train(replace(settings), dataset=dataset, verbose=0)
    assert_same_run(first, second)


def test_absurd_learning_rate_raises_training_error():
    dataset = small_dataset(4)
    with pytest.raises(TrainingError, match="NaN") as caught:
        train(config(lr=1e6, lr_schedule="constant", epochs=2), dataset=dataset, verbose=0)
    assert "learning rate" in str(caught.value)


@pytest.mark.parametrize("changes, fragment", [
    (dict(lr=0.0), "lr"),
    (dict(lr=-1e-3), "lr"),
    (dict(lr=float("nan")), "lr"),
    (dict(batch_size=0), "batch_size"),
    (dict(epochs=0), "epochs"),
    (dict(lr_schedule="cosine"), "lr_schedule"),
    (dict(wd_schedule="sometimes"), "wd_schedule"),
    (dict(seq_len=4), "seq_len"),
    (dict(patience=-1), "patience"),
    (dict(dropout=1.0), "dropout"),
    (dict(val_fraction=0.0), "val_fraction"),
    (dict(precision="float16"), "precision"),
    (dict(truncation="middle"), "truncation"),
    (dict(truncation="head+tail", head_tokens=31), "head_tokens"),
    (dict(eval_every=-0.5), "eval_every"),
    (dict(eval_every=float("inf")), "eval_every"),
    (dict(eval_every=1.5), "eval_every"),
    (dict(eval_examples=1), "eval_examples"),
])
def test_validate_rejects_bad_values(changes, fragment):
    bad = config(**changes)
    with pytest.raises(UserError, match=fragment) as caught:
        bad.validate()
    assert "\n" not in str(caught.value)
    # train() validates before it loads anything (data="in-memory" is no real path).
    with pytest.raises(UserError, match=fragment):
        train(bad, verbose=0)


def test_validate_accepts_the_defaults():
    TrainConfig(data="imdb").validate()
    config().validate()
    with pytest.raises(UserError, match="unknown training option"):
        TrainConfig.from_dict({"data": "imdb", "learning_rate": 1e-3})


# --- evaluations inside the epoch ----------------------------------------------------------


def test_evaluation_points_within_an_epoch():
    """0: the epoch's end; a fraction f: ceil(1/f) evenly spaced; N: every N-th step and the
    end. Every epoch's last evaluation is its last step."""
    def points(every, steps):
        return evaluation_points(config(eval_every=every), steps)

    assert points(0, 10) == [10]
    assert points(0.25, 10) == [3, 5, 8, 10]
    assert points(0.5, 4) == [2, 4]
    assert points(0.3, 12) == [3, 6, 9, 12], "ceil(1 / 0.3) = 4 evaluations"
    assert points(0.01, 4) == [1, 2, 3, 4], "at most one per step"
    assert points(3, 8) == [3, 6, 8]
    assert points(4, 8) == [4, 8]
    assert points(100, 8) == [8]
    assert evaluations_per_epoch(config(eval_every=0.25), 10) == 4
    assert evaluations_per_epoch(config(eval_every=3), 8) == 3


def four_steps(seed: int = 11, validation_labels: list[int] | None = None) -> Dataset:
    """32 training reviews: 4 steps of 8 (unbucketed); 20 validation reviews."""
    rng = random.Random(seed)
    return Dataset(train=make_split(rng, [NEGATIVE, POSITIVE], 16),
                   validation=make_split(rng, [NEGATIVE, POSITIVE], 10,
                                         labels=validation_labels),
                   test=make_split(rng, [NEGATIVE, POSITIVE], 5),
                   class_names=["neg", "pos"], source="in-memory")


def in_epoch(**overrides) -> TrainConfig:
    return config(epochs=2, batch_size=8, bucket=False, patience=5, **overrides)


def recorded_run(settings: TrainConfig, dataset: Dataset, **hooks):
    """train() with an on_evaluation that keeps its calls: (result, [(step, logs)])."""
    calls = []
    result = train(settings, dataset=dataset, verbose=0,
                   on_evaluation=lambda step, logs: calls.append((step, dict(logs))), **hooks)
    return result, calls


@pytest.fixture(scope="module")
def once_per_epoch():
    return recorded_run(in_epoch(), four_steps())


@pytest.mark.parametrize("eval_every, expected", [
    (0.5, [(0.5, 16), (1.0, 32), (1.5, 48), (2.0, 64)]),
    (3, [(0.75, 24), (1.0, 32), (1.75, 56), (2.0, 64)]),
])
def test_evaluations_inside_the_epoch(once_per_epoch, eval_every, expected):
    """Two evaluations per epoch of 4 steps, numbered 1-4 over 2 epochs, at the expected
    fraction of epochs and examples seen; the epochs' ends are Keras' own validation (their
    figures are the history's) and carry the epoch's training loss and accuracy; evaluating
    leaves training as it was (the same history as evaluating once per epoch)."""
    result, calls = recorded_run(in_epoch(eval_every=eval_every), four_steps())
    assert evaluations_per_epoch(result.config, 4) == 2
    assert [step for step, _ in calls] == [1, 2, 3, 4]
    assert [(logs["epoch"], logs["examples_seen"]) for _, logs in calls] == expected
    base, base_calls = once_per_epoch
    assert [step for step, _ in base_calls] == [1, 2]
    assert [logs["epoch"] for _, logs in base_calls] == [1.0, 2.0]
    for key, values in base.history.items():
        np.testing.assert_allclose(result.history[key], values, rtol=0, atol=1e-5, err_msg=key)
    for epoch, (_, logs) in enumerate(calls[1::2]):
        assert {k: logs[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy")} == {
            k: result.history[k][epoch] for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
    assert all("loss" not in logs for _, logs in calls[::2])
    assert [e["step"] for e in result.evaluations] == [1, 2, 3, 4]
    assert all(e["full"] for e in result.evaluations)
    assert [(e["val_loss"], e["val_accuracy"]) for e in result.evaluations] == [
        (logs["val_loss"], logs["val_accuracy"]) for _, logs in calls]
    # Every evaluation used the whole split, so the kept one is the best of all four.
    losses = [e["val_loss"] for e in result.evaluations]
    assert result.best_step == int(np.argmin(losses)) + 1
    assert result.val_loss == min(losses)
    assert result.best_epoch == math.ceil(result.evaluations[result.best_step - 1]["epoch"])
    metrics = json.loads(json.dumps(result.metrics()))
    assert metrics["evaluations"] == result.evaluations
    assert metrics["best_step"] == result.best_step
    assert metrics["params"]["eval_every"] == eval_every


class ModelHolder(tf.keras.callbacks.Callback):
    """Keeps the model being trained, for checks made while it trains."""

    def on_train_begin(self, logs=None):
        self.trained = self.model


def test_in_epoch_evaluations_score_the_sample_and_only_epoch_ends_count():
    """eval_examples=7 of 20: the in-epoch figures are the model's loss and accuracy on the
    seeded sample of 7 at that moment (accuracy in sevenths), the epochs' ends are on all 20,
    and only those count for the kept weights and the score."""
    dataset = four_steps()
    settings = in_epoch(eval_every=0.5, eval_examples=7)
    sample = eval_sample(settings, token_ids(get_encoder("tiny"), dataset.validation, 32))
    assert len(sample) == 7
    loss_fn, _ = loss_and_metric(2)
    holder, expected, logs_seen = ModelHolder(), [], []

    def on_evaluation(step, logs):
        if step % 2:  # in-epoch: score the sample now, with predict (no metrics touched)
            logits = holder.trained.predict(make_dataset(sample, 64, 32, bucket=False),
                                            verbose=0)
            accuracy = np.mean((logits[:, 0] > 0) == sample.labels)
            expected.append((step, float(loss_fn(sample.labels[:, None], logits)), accuracy))
        logs_seen.append((step, logs))

    result = train(settings, dataset=dataset, verbose=0, callbacks=[holder],
                   on_evaluation=on_evaluation)
    assert [step for step, _ in logs_seen] == [1, 2, 3, 4]
    for step, loss, accuracy in expected:
        logs = logs_seen[step - 1][1]
        assert logs["val_loss"] == pytest.approx(loss, abs=1e-5)
        assert logs["val_accuracy"] == pytest.approx(accuracy, abs=1e-6)
        assert logs["val_accuracy"] * 7 == pytest.approx(round(logs["val_accuracy"] * 7))
    assert [e["full"] for e in result.evaluations] == [False, True, False, True]
    assert result.best["full"] and result.best_step in (2, 4)
    assert result.val_loss == min(result.history["val_loss"])
    assert result.best_epoch == int(np.argmin(result.history["val_loss"])) + 1


def test_an_error_from_on_evaluation_stops_training_inside_the_first_epoch():
    class Pruned(Exception):
        pass

    class StepCount(tf.keras.callbacks.Callback):
        steps = 0  # training steps begun

        def on_train_batch_begin(self, batch, logs=None):
            StepCount.steps += 1

    def prune(step, logs):
        raise Pruned(f"step {step} at epoch {logs['epoch']}")

    with pytest.raises(Pruned, match="step 1 at epoch 0.25"):
        train(in_epoch(eval_every=0.25), dataset=four_steps(), verbose=0,
              callbacks=[StepCount()], on_evaluation=prune)
    assert StepCount.steps == 1, "of the first epoch's 4"


def test_early_stopping_counts_in_epoch_evaluations_and_keeps_the_best_weights():
    """Validation labels flipped: validation loss rises once the model learns, so training
    stops after `patience` evaluations without a better loss, inside an epoch or at its end,
    and the model returned has the best evaluation's weights (its validation loss, afresh)."""
    dataset = four_steps(seed=3, validation_labels=[1, 0])
    result = train(config(epochs=4, batch_size=8, bucket=False, patience=1, eval_every=0.5),
                   dataset=dataset, verbose=0)
    losses = [e["val_loss"] for e in result.evaluations]
    assert len(losses) < 8, f"patience 1 should stop before the budget: {losses}"
    assert result.best_step == int(np.argmin(losses)) + 1
    assert len(losses) == result.best_step + 1, "stopped at the first evaluation not better"
    assert len(result.history["loss"]) == math.ceil(result.evaluations[-1]["epoch"]), \
        "a stop inside an epoch is not evaluated twice"
    assert val_loss_of(result, dataset.validation) == pytest.approx(result.val_loss, abs=1e-4)
    assert abs(val_loss_of(result, dataset.validation) - losses[-1]) > 1e-3

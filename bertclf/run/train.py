"""One fine-tuning run: load data, tokenize (cached), build, fit with validation inside the
epoch and early stopping, evaluate."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import tensorflow as tf

from bertclf.data.datasets import Dataset
from bertclf.data.tokens import TokenIds, make_dataset, steps_per_epoch, token_ids
from bertclf.encoders.map import EncoderSpec, get_encoder, install_builtins
from bertclf.errors import TrainingError
from bertclf.run import accel
from bertclf.run.config import Hardware, TrainConfig, evaluation_points
from bertclf.run.model import build_classifier, loss_and_metric
from bertclf.run.optim import make_optimizer

EVAL_SAMPLE_STREAM = 7  # the in-epoch validation sample's random stream (after splits.py's)


@dataclass
class TrainResult:
    """What one run produced: the curves, every evaluation and the kept one, test metrics and
    the model."""

    config: TrainConfig
    encoder: EncoderSpec
    class_names: list[str]
    history: dict[str, list[float]]  # per epoch, as Keras reports it
    evaluations: list[dict]  # every validation evaluation, in order (see `Evaluations`)
    best_step: int  # the evaluation (from 1) whose weights the model has: the run's score
    test_loss: float
    test_accuracy: float
    train_seconds: float
    data_summary: dict = field(default_factory=dict)  # source, notes, split seed, sizes
    hardware: dict = field(default_factory=dict)  # what the run used: GPU, precision, XLA
    model: tf.keras.Model | None = field(default=None, repr=False)

    @property
    def best(self) -> dict:
        """The kept evaluation."""
        return self.evaluations[self.best_step - 1]

    @property
    def best_epoch(self) -> int:
        """The epoch (from 1) the model's weights come from: the one its evaluation ended or
        fell in."""
        return math.ceil(self.best["epoch"] - 1e-9)

    @property
    def val_accuracy(self) -> float:
        return self.best["val_accuracy"]

    @property
    def val_loss(self) -> float:
        return self.best["val_loss"]

    def metrics(self) -> dict:
        """Everything but the model, as plain JSON-able values (metrics.json)."""
        return {
            "best_epoch": self.best_epoch,
            "best_step": self.best_step,
            "epochs_run": len(self.history["loss"]),
            "val_loss": self.val_loss,
            "val_accuracy": self.val_accuracy,
            "test_loss": self.test_loss,
            "test_accuracy": self.test_accuracy,
            "train_seconds": self.train_seconds,
            "class_names": self.class_names,
            "history": self.history,
            "evaluations": self.evaluations,
            "params": asdict(self.config),
            "encoder": asdict(self.encoder),
            "data": self.data_summary,
            "hardware": self.hardware,
        }


def token_subset(tokens: TokenIds, indices: np.ndarray) -> TokenIds:
    """The examples of `tokens` at `indices`, in that order."""
    starts = np.concatenate([[0], np.cumsum(tokens.row_lengths)[:-1]]).astype(np.int64)
    rows = [tokens.values[starts[i]:starts[i] + tokens.row_lengths[i]] for i in indices]
    return TokenIds(np.concatenate(rows) if rows else tokens.values[:0],
                    tokens.row_lengths[indices], tokens.labels[indices])


def eval_sample(config: TrainConfig, validation: TokenIds) -> TokenIds:
    """What the in-epoch evaluations score: a sample of `eval_examples` validation examples,
    seeded by the split seed (the same at every evaluation), or the whole split."""
    size = config.eval_examples
    if size is None or size >= len(validation):
        return validation
    rng = np.random.default_rng([config.data_seed, EVAL_SAMPLE_STREAM])
    return token_subset(validation, np.sort(rng.choice(len(validation), size, replace=False)))


class Evaluations(tf.keras.callbacks.Callback):
    """Validation at each epoch's `evaluation_points`, early stopping on validation loss, and
    the best weights restored at the end.

    An epoch's last evaluation is Keras' own validation, on the whole split; the others run
    here on `sample`. When that is the whole split too (`sample_is_full`), every evaluation
    counts for early stopping (patience counted in evaluations), the kept weights and the
    score; otherwise only the epochs' ends count, and the in-epoch evaluations serve
    `on_evaluation` (pruning) only. Each evaluation is appended to `records` and passed to
    `on_evaluation(step, logs)`, the step counted from 1 over the run."""

    def __init__(self, config: TrainConfig, *, steps: int, train_examples: int,
                 sample: tf.data.Dataset, sample_size: int, sample_is_full: bool,
                 on_evaluation: OnEvaluation | None, verbose: int):
        super().__init__()
        self.points = set(evaluation_points(config, steps)[:-1])
        self.steps, self.train_examples, self.batch_size = steps, train_examples, config.batch_size
        self.sample, self.sample_size, self.sample_is_full = sample, sample_size, sample_is_full
        self.patience, self.on_evaluation, self.verbose = config.patience, on_evaluation, verbose

    def on_train_begin(self, logs=None):
        self.records, self.best_step, self.best_weights = [], 0, None
        self.best_loss, self.wait, self.stopped_in_epoch = math.inf, 0, False

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.done = epoch, 0

    def on_train_batch_end(self, batch, logs=None):
        self.done = batch + 1
        if self.done not in self.points:
            return
        # evaluate() resets the compiled metrics, which hold the epoch's running training loss
        # and accuracy: they are put back, so that the epoch's figures cover all its steps.
        state = [(v, v.numpy()) for metric in self.model.metrics for v in metric.variables]
        scores = self.model.evaluate(self.sample, verbose=0, return_dict=True)
        for variable, value in state:
            variable.assign(value)
        self._record(scores["loss"], scores["accuracy"], self.sample_is_full, {})
        self.stopped_in_epoch = self.sample_is_full and self.model.stop_training

    def on_epoch_end(self, epoch, logs=None):
        if self.stopped_in_epoch:  # stopped at an in-epoch evaluation of these same weights
            return
        logs = logs or {}
        self._record(logs["val_loss"], logs["val_accuracy"], True,
                     {"loss": logs["loss"], "accuracy": logs["accuracy"]})

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)

    def _record(self, val_loss: float, val_accuracy: float, full: bool,
                epoch_logs: dict) -> None:
        """Keep, count and report one evaluation; `epoch_logs` (the epoch's training loss and
        accuracy) only at an epoch's end."""
        done = min(self.done, self.steps)
        seen = min(done * self.batch_size, self.train_examples)  # exact but in the partial
        record = {"step": len(self.records) + 1,                 # batches that end an epoch
                  "epoch": self.epoch + (1.0 if done == self.steps else done / self.steps),
                  "examples_seen": self.epoch * self.train_examples + seen,
                  "val_accuracy": float(val_accuracy), "val_loss": float(val_loss),
                  "full": full}
        self.records.append(record)
        if self.sample_is_full or epoch_logs:
            self._count(record)
        if self.verbose and not epoch_logs:  # Keras prints the epochs' ends
            where = "" if full else f" on {self.sample_size} validation examples"
            print(f"{chr(10) if self.verbose == 1 else ''}evaluation {record['step']} at epoch "
                  f"{record['epoch']:.2f}: val_loss {val_loss:.4f} val_accuracy "
                  f"{val_accuracy:.4f}{where}", flush=True)
        if self.on_evaluation:
            logs = {k: record[k] for k in ("val_accuracy", "val_loss", "epoch", "examples_seen")}
            self.on_evaluation(record["step"], {**logs, **epoch_logs})

    def _count(self, record: dict) -> None:
        """Early stopping as Keras' EarlyStopping(monitor="val_loss", restore_best_weights=True)
        does it, over the evaluations that count."""
        if record["val_loss"] < self.best_loss:
            self.best_loss, self.best_step, self.wait = record["val_loss"], record["step"], 0
            self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.model.stop_training = True


class StepProgress(tf.keras.callbacks.Callback):
    """A progress line every `every` seconds within an epoch (for logs, where Keras' bar
    would only print at the end of each epoch)."""

    def __init__(self, steps: int, every: float = 60.0):
        super().__init__()
        self.steps, self.every = steps, every

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.started = epoch + 1, time.perf_counter()
        self.last = self.started

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if now - self.last < self.every:
            return
        self.last, done = now, batch + 1
        values = " ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items())
        print(f"epoch {self.epoch}: step {done}/{self.steps} {values} "
              f"{rate_and_time_left(done, self.steps, now - self.started, 'steps')}",
              flush=True)


def rate_and_time_left(done: int, total: int, elapsed: float, unit: str) -> str:
    """The tail of a progress line: "(R <unit>/s, about M min left)"."""
    left = elapsed / done * (total - done)
    return f"({done / elapsed:.2f} {unit}/s, about {left / 60:.0f} min left)"


OnEvaluation = Callable[[int, dict], None]


def train(config: TrainConfig, *, dataset: Dataset | None = None,
          callbacks: Sequence[tf.keras.callbacks.Callback] = (),
          on_evaluation: OnEvaluation | None = None,
          verbose: int | str = "auto") -> TrainResult:
    """Fine-tune one classifier. `dataset` skips loading; `callbacks` see every epoch.
    `on_evaluation(step, logs)` is called after every validation evaluation (`eval_every`),
    steps counted from 1 over the run (logs: val_accuracy, val_loss, epoch as a fraction of
    epochs done, examples_seen, and at an epoch's end the epoch's loss and accuracy);
    whatever it raises stops training and leaves `train`."""
    config.validate()
    spec = get_encoder(config.encoder, config.encoder_map)
    install_builtins(spec)  # before seeding: building `tiny` sets TensorFlow's seed itself
    tf.keras.utils.set_random_seed(config.seed)
    with accel.precision_rewrites(config.hardware):
        return _train(config, spec, dataset, callbacks, on_evaluation, verbose)


def compile_classifier(config: TrainConfig, spec: EncoderSpec, num_classes: int,
                       steps: int) -> tf.keras.Model:
    """The classifier for `config`, compiled by `compile_for_training`."""
    model = build_classifier(spec, num_classes, config.dropout)
    return compile_for_training(model, config, num_classes, steps)


def compile_for_training(model: tf.keras.Model, config: TrainConfig, num_classes: int,
                         steps: int) -> tf.keras.Model:
    """`model` compiled to train for `steps` steps in all: AdamW with the config's schedules,
    under the config's hardware (`compile_model`). Fit it inside
    `accel.precision_rewrites(config.hardware)`."""
    optimizer = make_optimizer(lr=config.lr, lr_schedule=config.lr_schedule,
                               warmup_fraction=config.warmup_fraction,
                               weight_decay=config.weight_decay,
                               wd_schedule=config.wd_schedule, total_steps=steps)
    return compile_model(model, optimizer, config.hardware, num_classes)


def compile_model(model: tf.keras.Model, optimizer: tf.keras.optimizers.Optimizer,
                  hardware: Hardware, num_classes: int) -> tf.keras.Model:
    """`model` compiled with `optimizer`: loss scaling and XLA as `hardware`'s precision needs,
    from-logits loss and accuracy."""
    loss, metric = loss_and_metric(num_classes)
    model.compile(optimizer=accel.with_loss_scaling(optimizer, hardware), loss=loss,
                  metrics=[metric], jit_compile=accel.keras_jit_compile(hardware))
    return model


def split_token_ids(config: TrainConfig, spec: EncoderSpec, dataset: Dataset) -> dict:
    """Each split's token ids as the config packs them (from the on-disk cache)."""
    return {name: token_ids(spec, getattr(dataset, name), config.seq_len, config.truncation,
                            config.head_tokens)
            for name in ("train", "validation", "test")}


def _train(config: TrainConfig, spec: EncoderSpec, dataset: Dataset | None,
           callbacks: Sequence[tf.keras.callbacks.Callback],
           on_evaluation: OnEvaluation | None, verbose: int | str) -> TrainResult:
    if dataset is None:
        dataset = config.load_data()
    splits = split_token_ids(config, spec, dataset)
    train_ds = make_dataset(splits["train"], config.batch_size, config.seq_len,
                            bucket=config.bucket, shuffle=True, seed=config.seed)
    val_ds, test_ds = (make_dataset(splits[n], config.eval_batch, config.seq_len,
                                    bucket=config.bucket) for n in ("validation", "test"))
    steps = steps_per_epoch(splits["train"], config.batch_size, config.seq_len, config.bucket)
    model = compile_classifier(config, spec, len(dataset.class_names), steps * config.epochs)

    progress = []
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
        if verbose == 2:  # logs and pipes get a line a minute instead of a progress bar
            progress = [StepProgress(steps)]
    sample = eval_sample(config, splits["validation"])
    full = len(sample) == len(splits["validation"])
    evaluations = Evaluations(
        config, steps=steps, train_examples=len(splits["train"]),
        sample=val_ds if full else make_dataset(sample, config.eval_batch, config.seq_len,
                                                bucket=config.bucket),
        sample_size=len(sample), sample_is_full=full, on_evaluation=on_evaluation,
        verbose=verbose)
    started = time.perf_counter()
    fit = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, verbose=verbose,
                    callbacks=[tf.keras.callbacks.TerminateOnNaN(), evaluations, *progress,
                               *callbacks])
    train_seconds = time.perf_counter() - started
    history = {k: [float(v) for v in values] for k, values in fit.history.items()}
    if any(not np.isfinite(v) for v in history.get("loss", [])) or not evaluations.best_step:
        raise TrainingError(f"training loss became NaN after {len(history.get('loss', []))} "
                            f"epoch(s) at lr={config.lr}: lower the learning rate")

    print(f"evaluating on {len(splits['test'])} test examples", flush=True)
    test_loss, test_accuracy = model.evaluate(test_ds, verbose=0)
    return TrainResult(
        config=config, encoder=spec, class_names=list(dataset.class_names), history=history,
        evaluations=evaluations.records, best_step=evaluations.best_step,
        test_loss=float(test_loss),
        test_accuracy=float(test_accuracy), train_seconds=train_seconds,
        data_summary={"source": dataset.source, "notes": list(dataset.notes),
              "split_seed": config.data_seed,
              **{f"{name}_examples": len(split) for name, split in splits.items()}},
        hardware=accel.hardware_used(config.hardware),
        model=model,
    )

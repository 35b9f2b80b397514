"""One fine-tuning run: load data, tokenize (cached), build, fit with early stopping, evaluate."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import tensorflow as tf

from bertclf import accel
from bertclf.config import TrainConfig
from bertclf.datasets import Dataset
from bertclf.encoder_map import EncoderSpec, get_encoder
from bertclf.errors import TrainingError
from bertclf.model import build_classifier, loss_and_metric
from bertclf.optim import make_optimizer
from bertclf.tokens import make_dataset, steps_per_epoch, token_ids


@dataclass
class TrainResult:
    """What one run produced: the curves, the chosen epoch, test metrics and the model."""

    config: TrainConfig
    encoder: EncoderSpec
    class_names: list[str]
    history: dict[str, list[float]]
    best_epoch: int  # 1-based; its weights are the model's
    test_loss: float
    test_accuracy: float
    train_seconds: float
    data_summary: dict = field(default_factory=dict)  # source, notes, split seed, sizes
    hardware: dict = field(default_factory=dict)  # what the run used: GPU, precision, XLA
    model: tf.keras.Model | None = field(default=None, repr=False)

    @property
    def val_accuracy(self) -> float:
        return self.history["val_accuracy"][self.best_epoch - 1]

    @property
    def val_loss(self) -> float:
        return self.history["val_loss"][self.best_epoch - 1]

    def metrics(self) -> dict:
        """Everything but the model, as plain JSON-able values (metrics.json)."""
        return {
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.history["loss"]),
            "val_loss": self.val_loss,
            "val_accuracy": self.val_accuracy,
            "test_loss": self.test_loss,
            "test_accuracy": self.test_accuracy,
            "train_seconds": self.train_seconds,
            "class_names": self.class_names,
            "history": self.history,
            "params": asdict(self.config),
            "encoder": asdict(self.encoder),
            "data": self.data_summary,
            "hardware": self.hardware,
        }


class EvaluationHook(tf.keras.callbacks.Callback):
    """Calls `on_evaluation` after each epoch's validation, the step being the epoch."""

    def __init__(self, on_evaluation: OnEvaluation):
        super().__init__()
        self.on_evaluation = on_evaluation

    def on_epoch_end(self, epoch, logs=None):
        self.on_evaluation(epoch + 1, {**(logs or {}), "epoch": epoch + 1})


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
    `on_evaluation(step, logs)` is called after every validation evaluation, steps counted
    from 1 (logs: val_accuracy, val_loss, epoch, and the epoch's loss and accuracy at its
    end); whatever it raises stops training and leaves `train`."""
    config.validate()
    spec = get_encoder(config.encoder, config.encoder_map)
    with accel.precision_rewrites(config):
        return _train(config, spec, dataset, callbacks, on_evaluation, verbose)


def compile_classifier(config: TrainConfig, spec: EncoderSpec, num_classes: int,
                       steps: int) -> tf.keras.Model:
    """The classifier for `config`, compiled by `compile_for_training`."""
    model = build_classifier(spec, num_classes, config.dropout)
    return compile_for_training(model, config, num_classes, steps)


def compile_for_training(model: tf.keras.Model, config: TrainConfig, num_classes: int,
                         steps: int) -> tf.keras.Model:
    """`model` compiled to train for `steps` steps in all: AdamW with the config's schedules,
    loss scaling and XLA as its precision needs, from-logits loss and accuracy. Fit it inside
    `accel.precision_rewrites(config)`."""
    loss, metric = loss_and_metric(num_classes)
    optimizer = make_optimizer(lr=config.lr, lr_schedule=config.lr_schedule,
                               warmup_fraction=config.warmup_fraction,
                               weight_decay=config.weight_decay,
                               wd_schedule=config.wd_schedule, total_steps=steps)
    model.compile(optimizer=accel.with_loss_scaling(optimizer, config), loss=loss,
                  metrics=[metric], jit_compile=accel.keras_jit_compile(config))
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
    # After tokenizing: building a built-in encoder on first use draws random numbers too.
    tf.keras.utils.set_random_seed(config.seed)
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
    best = tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                            restore_best_weights=True)
    hooks = [EvaluationHook(on_evaluation)] if on_evaluation else []
    started = time.perf_counter()
    fit = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, verbose=verbose,
                    callbacks=[tf.keras.callbacks.TerminateOnNaN(), best, *progress,
                               *callbacks, *hooks])
    train_seconds = time.perf_counter() - started
    history = {k: [float(v) for v in values] for k, values in fit.history.items()}
    if any(not np.isfinite(v) for v in history.get("loss", [])) or not history.get("val_loss"):
        raise TrainingError(f"training loss became NaN after {len(history.get('loss', []))} "
                            f"epoch(s) at lr={config.lr}: lower the learning rate")

    print(f"evaluating on {len(splits['test'])} test examples", flush=True)
    test_loss, test_accuracy = model.evaluate(test_ds, verbose=0)
    return TrainResult(
        config=config, encoder=spec, class_names=list(dataset.class_names), history=history,
        best_epoch=best.best_epoch + 1, test_loss=float(test_loss),
        test_accuracy=float(test_accuracy), train_seconds=train_seconds,
        data_summary={"source": dataset.source, "notes": list(dataset.notes),
              "split_seed": config.data_seed,
              **{f"{name}_examples": len(split) for name, split in splits.items()}},
        hardware=accel.hardware_used(config),
        model=model,
    )

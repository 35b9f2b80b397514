"""The settings of one fine-tuning run (no TensorFlow import, so the sweep's parent stays light)."""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, fields
from functools import cache

from bertclf.datasets import Dataset, load_dataset
from bertclf.errors import UserError

LR_SCHEDULES = ("constant", "linear")
WD_SCHEDULES = ("lr", "constant", "piecewise")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
TRUNCATIONS = ("head", "tail", "head+tail")


@dataclass
class TrainConfig:
    """Everything that defines one fine-tuning run; defaults follow the notebook's recipe."""

    data: str
    encoder: str = "tiny"
    encoder_map: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    max_examples: int | None = None
    max_train_examples: int | None = None  # None: max_examples
    max_val_examples: int | None = None
    max_test_examples: int | None = None
    val_fraction: float = 0.2
    seq_len: int = 128
    truncation: str = "head"  # which tokens of a too-long text are kept
    head_tokens: int | None = None  # head+tail: tokens kept from the start (None: a quarter)
    batch_size: int = 32
    eval_batch_size: int | None = None  # None: 4 x batch_size
    epochs: int = 5
    patience: int = 1  # evaluations without a better validation loss before stopping
    # 0: evaluate once per epoch; in (0, 1): a fraction of an epoch (0.25: four evaluations);
    # >= 1: every that many steps within each epoch. Each epoch's last evaluation is its end.
    eval_every: float = 0
    eval_examples: int | None = None  # a seeded sample of validation for in-epoch evaluations
    lr: float = 3e-5
    lr_schedule: str = "linear"
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    wd_schedule: str = "lr"
    dropout: float = 0.1
    bucket: bool = True
    jit_compile: bool | None = None  # None: on when a GPU is present
    precision: str = "auto"  # auto: mixed_float16 on a GPU, mixed_bfloat16 on bf16 CPUs
    seed: int = 42
    split_seed: int | None = None  # the validation split and samples; None: `seed`

    def validate(self) -> None:
        """Raise UserError naming the first impossible value."""
        checks = [
            (self.seq_len >= 8, "seq_len must be at least 8"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.eval_batch_size is None or self.eval_batch_size >= 1,
             "eval_batch_size must be at least 1"),
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.patience >= 0, "patience must be 0 or more"),
            (math.isfinite(self.eval_every) and self.eval_every >= 0,
             "eval_every must be 0 (once per epoch), a fraction of an epoch or a number of steps"),
            (self.eval_every < 1 or float(self.eval_every).is_integer(),
             "eval_every of 1 or more is a number of steps and must be a whole number"),
            (self.eval_examples is None or self.eval_examples >= 2,
             "eval_examples must be at least 2"),
            (self.lr > 0 and math.isfinite(self.lr), "lr must be a positive number"),
            (0 <= self.warmup_fraction < 1, "warmup_fraction must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay must be 0 or more"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (0 < self.val_fraction < 1, "val_fraction must be in (0, 1)"),
            *[(cap is None or cap >= 2, "max_examples must be >= 2")
              for cap in self.example_caps().values()],
            (self.lr_schedule in LR_SCHEDULES,
             f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}"),
            (self.wd_schedule in WD_SCHEDULES,
             f"wd_schedule must be one of {', '.join(WD_SCHEDULES)}"),
            (self.precision in PRECISIONS,
             f"precision must be one of {', '.join(PRECISIONS)}"),
            (self.truncation in TRUNCATIONS,
             f"truncation must be one of {', '.join(TRUNCATIONS)}"),
            (self.head_tokens is None or 0 <= self.head_tokens <= self.seq_len - 2,
             "head_tokens must be between 0 and seq_len - 2"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Build from a dict, rejecting unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**values)

    @property
    def eval_batch(self) -> int:
        """The evaluation batch: `eval_batch_size`, else 4x the training batch (no gradients
        to keep, so evaluation affords larger batches)."""
        return self.eval_batch_size or 4 * self.batch_size

    @property
    def data_seed(self) -> int:
        """The seed of the validation split and the per-split samples."""
        return self.seed if self.split_seed is None else self.split_seed

    def example_caps(self) -> dict[str, int | None]:
        """The stratified sample size of each split (None: the whole split)."""
        caps = {"train": self.max_train_examples, "validation": self.max_val_examples,
                "test": self.max_test_examples}
        return {split: self.max_examples if cap is None else cap for split, cap in caps.items()}

    def load_data(self) -> Dataset:
        """Load `data` and split it as this config says (seeded, sampled per split)."""
        return load_dataset(self.data, text_column=self.text_column,
                            label_column=self.label_column, val_fraction=self.val_fraction,
                            max_examples=self.example_caps(), seed=self.data_seed)


@cache
def field_types() -> dict[str, type]:
    """Each TrainConfig field's value type, with `| None` removed (int, float, str, bool)."""
    hints = typing.get_type_hints(TrainConfig)
    return {name: next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))
            for name, hint in hints.items()}


def evaluation_points(config: TrainConfig, steps_per_epoch: int) -> list[int]:
    """The steps of each epoch (from 1) after which validation is evaluated, the last always
    the epoch's last step. eval_every 0: that one only; a fraction f: ceil(1/f) evenly spaced
    ones (at most one per step); N >= 1: every N-th step, and the epoch's end."""
    every, steps = config.eval_every, max(1, steps_per_epoch)
    if every >= 1:
        return [*range(int(every), steps, int(every)), steps]
    count = 1 if every == 0 else min(steps, math.ceil(1 / every - 1e-9))
    return [math.ceil(k * steps / count) for k in range(1, count + 1)]


def evaluations_per_epoch(config: TrainConfig, steps_per_epoch: int) -> int:
    """How many validation evaluations each epoch of `config` makes: a run makes at most
    epochs x this many (the pruners' largest step)."""
    return len(evaluation_points(config, steps_per_epoch))

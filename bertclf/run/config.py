"""The settings of one fine-tuning run, and of the hardware any TensorFlow work runs on (no
TensorFlow import, so the sweep's parent stays light). Each field's help text is its
metadata (`help(name)`): the command line's flags and README are built from and checked
against it."""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field, fields
from functools import cache
from typing import TYPE_CHECKING

from bertclf.data.splits import sampling_problem
from bertclf.errors import UserError

if TYPE_CHECKING:
    from bertclf.data.datasets import Dataset

LR_SCHEDULES = ("constant", "linear")
# With `bucket`, examples are batched with others of lengths between two boundaries (below
# `seq_len`) and padded to the batch's longest (bertclf.data.tokens; the budget's cost model).
BUCKET_BOUNDARIES = (32, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448)


def bucket_boundaries(seq_len: int) -> list[int]:
    """The bucket boundaries below `seq_len`: batches of lengths [b_i, b_i+1) are padded to
    their longest, the last bucket's up to `seq_len`."""
    return [b for b in BUCKET_BOUNDARIES if b < seq_len]


WD_SCHEDULES = ("lr", "constant", "piecewise")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
TRUNCATIONS = ("head", "tail", "head+tail")


def _field(default, text: str):
    """A field with `default` and the help `text`."""
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class Hardware:
    """How TensorFlow work uses the machine: its precision and XLA. Training, evaluation and
    the bench run under it (`bertclf.run.accel`); a run's TrainConfig gives it as `.hardware`."""

    precision: str = _field("auto", "auto | float32 | mixed_float16 (GPU) | mixed_bfloat16 "
                            "(CPU, oneDNN); auto: mixed_float16 with a GPU, mixed_bfloat16 on "
                            "CPUs with native bfloat16, float32 elsewhere")
    jit_compile: bool | None = _field(None, "XLA (true/false); default: on with a GPU "
                                      "(auto-clustering under mixed precision)")

    def validate(self) -> None:
        """Raise UserError for a precision that is not one of PRECISIONS."""
        if self.precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}")


def _like_hardware(name: str):
    """A TrainConfig field with the default and help of Hardware's field `name`."""
    same = next(f for f in fields(Hardware) if f.name == name)
    return field(default=same.default, metadata=same.metadata)


@dataclass
class TrainConfig:
    """Everything that defines one fine-tuning run; defaults follow the notebook's recipe."""

    data: str = field(metadata={"help": "'imdb', an archive, a folder of <class>/*.txt, or a "
                                        "CSV/TSV/Parquet file"})
    encoder: str = _field("tiny", "a name from `python -m bertclf encoders`, or a folder with "
                          "encoder/ and preprocess/")
    encoder_map: str | None = _field(None, "a TOML file adding to or overriding the encoder map")
    text_column: str = _field("text", "the text column of a table")
    label_column: str = _field("label", "the label column of a table")
    max_examples: int | None = _field(None, "stratified, seeded sample of at most N examples "
                                      "from each split")
    max_train_examples: int | None = _field(None, "--max-examples for train only")
    max_val_examples: int | None = _field(None, "--max-examples for validation only")
    max_test_examples: int | None = _field(None, "--max-examples for test only")
    val_fraction: float = _field(0.2, "the share of train carved out as validation when the "
                                 "data has no validation split, in (0, 1)")
    seq_len: int = _field(128, "tokens per example, [CLS] and [SEP] included")
    truncation: str = _field("head", "head | tail | head+tail: which tokens of a too-long text "
                             "are kept")
    head_tokens: int | None = _field(None, "head+tail: tokens kept from the start (default: a "
                                     "quarter of seq_len)")
    batch_size: int = _field(32, "training batch size")
    eval_batch_size: int | None = _field(None, "evaluation batch size (default: 4 x "
                                         "batch_size)")
    epochs: int = _field(5, "at most this many epochs (training stops early)")
    patience: int = _field(1, "evaluations without a better validation loss before stopping "
                           "(with --eval-examples: epochs)")
    eval_every: float = _field(0, "validation inside the epoch: a fraction of an epoch (0.25: "
                               "four evaluations) or every N steps; 0: once per epoch. Each "
                               "epoch's last evaluation is its end")
    eval_examples: int | None = _field(None, "a seeded sample of N validation examples for the "
                                       "in-epoch evaluations (the epochs' ends use the whole "
                                       "split)")
    lr: float = _field(3e-5, "peak learning rate")
    lr_schedule: str = _field("linear", "constant | linear (warmup, then linear decay to 0)")
    warmup_fraction: float = _field(0.1, "the share of steps that warm the learning rate up")
    weight_decay: float = _field(0.01, "AdamW's decoupled weight decay")
    wd_schedule: str = _field("lr", "lr (each step removes weight_decay x the step's lr) | "
                              "constant (x the peak lr) | piecewise (x the peak lr, then x0.1, "
                              "x0.01 at 50% / 75% of steps)")
    dropout: float = _field(0.1, "dropout before the classification head")
    bucket: bool = _field(True, "batch by length and pad each batch to its longest "
                          "(true/false)")
    jit_compile: bool | None = _like_hardware("jit_compile")
    precision: str = _like_hardware("precision")
    seed: int = _field(42, "seeds training (shuffling, dropout, the head) and, unless "
                       "--split-seed, the data")
    split_seed: int | None = _field(None, "seed of the validation split and samples (default: "
                                    "--seed)")

    def validate(self) -> None:
        """Raise UserError naming the first impossible value."""
        data_problem = sampling_problem({"val_fraction": self.val_fraction},
                                        self.example_caps().values(), self.data_seed)
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
            (data_problem is None, data_problem),
            (self.lr_schedule in LR_SCHEDULES,
             f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}"),
            (self.wd_schedule in WD_SCHEDULES,
             f"wd_schedule must be one of {', '.join(WD_SCHEDULES)}"),
            (self.truncation in TRUNCATIONS,
             f"truncation must be one of {', '.join(TRUNCATIONS)}"),
            (self.head_tokens is None or 0 <= self.head_tokens <= self.seq_len - 2,
             "head_tokens must be between 0 and seq_len - 2"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        self.hardware.validate()

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Build from a dict, rejecting unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**values)

    @property
    def hardware(self) -> Hardware:
        """The run's precision and XLA settings."""
        return Hardware(precision=self.precision, jit_compile=self.jit_compile)

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
        from bertclf.data.datasets import load_dataset  # datasets takes its defaults from here

        return load_dataset(self.data, text_column=self.text_column,
                            label_column=self.label_column, val_fraction=self.val_fraction,
                            max_examples=self.example_caps(), seed=self.data_seed)


def help_text(name: str) -> str:
    """The help of TrainConfig's field `name` (its metadata)."""
    return next(f for f in fields(TrainConfig) if f.name == name).metadata["help"]


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

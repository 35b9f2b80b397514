"""The measurements, one function per table row; each returns its row(s)."""

from __future__ import annotations

import statistics
import time

import numpy as np
import tensorflow as tf

from bench import children
from bench.context import (
    L2_H128,
    L4_H512,
    WARMUP_BATCHES,
    Context,
    best_rates,
    classifier,
    compiled,
    hardware,
    head,
    random_encoder,
    select,
    take,
)
from bench.table import Row
from bench.trials import Stores, phases, timed_run_in_child, trial_config, warm_token_cache
from bertclf.data.tokens import make_dataset, token_ids
from bertclf.encoders.bert_encoder import BertConfig
from bertclf.run import accel
from bertclf.run.model import build_classifier, text_classifier
from sweep.processes import ChildProcess
from sweep.trial import PRELOAD, run_job

SPARE_HEAD_START = 20  # row 6: seconds a spare trial process gets before its job


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
                  f"peak_rss_mb (VmHWM) of each (MB): {', '.join(f'{p:.0f}' for p in peaks)}")
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

    # What a sweep starts while the previous trial trains (forked where slots have no GPU).
    process = ChildProcess(PRELOAD, fork=True)
    time.sleep(SPARE_HEAD_START)
    job = stores.job(config, data)
    outcome = process.call(run_job, job)
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


def row_fork(ctx: Context) -> list[Row]:
    """8. CPU seconds a trial process uses before its job arrives: forked from the sweep's
    fork server (which imported the trial's modules once) vs spawned (importing them)."""
    ChildProcess(PRELOAD, fork=True).call(children.cpu_seconds)  # the server: once per sweep
    rounds = 3
    cost = {fork: statistics.median(ChildProcess(PRELOAD, fork=fork).call(children.cpu_seconds)
                                    for _ in range(rounds))
            for fork in (True, False)}
    note = (f"median of {rounds} processes each; what they preload: {', '.join(PRELOAD)}. "
            f"A sweep on CPU slots forks its trial processes; a slot with a GPU spawns them "
            f"(CUDA_VISIBLE_DEVICES must be set before TensorFlow is imported)")
    return [Row("8. trial process CPU before its job: forked vs spawned", cost[True],
                cost[False], "CPU s", "< 0.25", cost[True] / cost[False] < 0.25, note)]


ROWS = {"1": row_bucketing, "2": row_cached_ids, "3": row_harness, "4": row_flops,
        "5": rows_memory, "6": row_startup, "7": row_precision, "8": row_fork}

"""What a budget's plan is made from: training and evaluation examples per second of an
encoder at a length on this machine, measured for a few seconds in a child process (the
sweep's own process never imports TensorFlow) and cached per machine and versions; and the
token lengths of a sample of the training texts, cached per texts and encoders."""

from __future__ import annotations

import hashlib
import json
import os
import time
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from sweep.plan import Rates

if TYPE_CHECKING:
    from bertclf.data.splits import Split

MEASURE_SECONDS = 5.0  # timed training (and evaluation) per encoder and length
LENGTH_SAMPLE = 2000  # training texts whose token lengths the cost model reads


def measure_rates(jobs: list[dict], seconds: float = MEASURE_SECONDS) -> list[dict]:
    """In a child process: each job's (encoder, encoder_map, seq_len, batch_size, precision,
    jit_compile) training and evaluation examples/s on random ids of full length, after a
    traced batch and an untimed warm-up call; a job that fails gets its `error` instead."""
    out = []
    for job in jobs:
        try:
            out.append(_measure_one(job, seconds))
        except Exception as e:  # e.g. a length past the encoder's positions
            out.append({"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
    return out


def _measure_one(job: dict, seconds: float) -> dict:
    import numpy as np
    import tensorflow as tf

    from bertclf.data.tokens import TokenIds, make_dataset
    from bertclf.encoders.map import get_encoder, install_builtins
    from bertclf.run import accel
    from bertclf.run.config import TrainConfig
    from bertclf.run.train import compile_classifier

    config = TrainConfig(data="-", **job)
    spec = get_encoder(config.encoder, config.encoder_map)
    install_builtins(spec)
    tf.keras.utils.set_random_seed(0)
    n = config.eval_batch * 2
    ids = TokenIds(np.random.default_rng(0).integers(1000, 2000, n * config.seq_len,
                                                      dtype=np.int32),
                   np.full(n, config.seq_len, np.int32), np.arange(n, dtype=np.int32) % 2)

    def timed(step, batches: tf.data.Dataset, size: int) -> float:
        step(batches.take(1))  # traces
        step(batches)  # warms up (the first steps at a shape are slower: allocations, kernels)
        done, started = 0, time.perf_counter()
        while done == 0 or time.perf_counter() - started < seconds:
            step(batches)
            done += size
        return done / (time.perf_counter() - started)

    with accel.precision_rewrites(config.hardware):
        model = compile_classifier(config, spec, 2, steps=1000)
        train = make_dataset(ids, config.batch_size, config.seq_len, bucket=False).take(2)
        evaluate = make_dataset(ids, config.eval_batch, config.seq_len, bucket=False).take(1)
        return {"train": timed(lambda d: model.fit(d, verbose=0), train,
                               2 * config.batch_size),
                "eval": timed(lambda d: model.evaluate(d, verbose=0), evaluate,
                              config.eval_batch)}


def machine() -> str:
    """This machine as the measurement's cache knows it: CPU model and cores, and GPUs."""
    from sweep.devices import cpu_model, detect_gpus

    cpu = cpu_model()
    gpus = detect_gpus()
    return f"{cpu}, {os.cpu_count()} cores" + (f", GPUs {','.join(gpus)}" if gpus else "")


def cache_key(job: dict) -> str:
    """The measurement's key: the machine, the versions and the job's settings."""
    from bertclf.encoders.map import get_encoder

    spec = get_encoder(job["encoder"], job.get("encoder_map"))
    parts = {"machine": machine(), "tensorflow": version("tensorflow"),
             "bertclf": version("bertclf"), "handles": [spec.encoder, spec.preprocess],
             **job}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def cache_file() -> Path:
    """The measurements of this machine (and others sharing the cache), by key."""
    from bertclf.cache import cache_dir

    return cache_dir() / "budget" / "throughput.json"


def measured_rates(jobs: list[dict]) -> tuple[dict[int, Rates | str], int]:
    """Each job's Rates (or why it failed) by its position, measured in a child process
    where the cache has none; and how many were measured now."""
    path = cache_file()
    cached = _read_json(path)
    keys = [cache_key(job) for job in jobs]
    todo = [i for i, key in enumerate(keys) if key not in cached]
    if todo:
        from sweep.processes import ChildProcess

        print(f"sweep: budget: measuring {len(todo)} encoder/length setting(s) on this machine "
              f"(about {MEASURE_SECONDS:g} s each, after a warm-up)", flush=True)
        results = ChildProcess(("bertclf.tf_start",)).call(measure_rates,
                                                           [jobs[i] for i in todo])
        cached.update({keys[i]: {**r, "job": jobs[i]} for i, r in zip(todo, results,
                                                                       strict=True)})
        _write_json(path, cached)
    rates = {i: cached[key]["error"] if "error" in cached[key] else
             Rates(cached[key]["train"], cached[key]["eval"]) for i, key in enumerate(keys)}
    return rates, len(todo)


def count_tokens(encoders: list[str], encoder_map: str | None, texts: list[str],
                 max_length: int) -> list[int]:
    """In a child process: each text's token count ([CLS] and [SEP] in, at most
    `max_length`), the most over `encoders`' preprocessors."""
    from bertclf.data.tokens import tokenize
    from bertclf.encoders.map import get_encoder, install_builtins

    counts = [0] * len(texts)
    for name in encoders:
        spec = get_encoder(name, encoder_map)
        install_builtins(spec)
        lengths = tokenize(spec, texts, max_length)[1]
        counts = [max(a, int(b)) for a, b in zip(counts, lengths, strict=True)]
    return counts


def token_lengths(encoders: list[str], encoder_map: str | None, split: Split,
                  max_length: int) -> list[int]:
    """The token counts of up to LENGTH_SAMPLE of `split`'s texts (evenly spaced), capped
    at `max_length`: read from the cache, else counted in a child process and cached."""
    from bertclf.data.datasets import fingerprint
    from bertclf.data.splits import Split
    from bertclf.encoders.map import get_encoder

    step = max(1, len(split) // LENGTH_SAMPLE)
    sample = Split(split.texts[::step][:LENGTH_SAMPLE], split.labels[::step][:LENGTH_SAMPLE])
    handles = [[get_encoder(e, encoder_map).preprocess] for e in encoders]
    key = hashlib.sha256(json.dumps([handles, max_length, fingerprint(sample)]).encode()
                         ).hexdigest()[:24]
    path = cache_file().with_name("token_lengths.json")
    cached = _read_json(path)
    if key not in cached:
        from sweep.processes import ChildProcess

        print(f"sweep: budget: counting the tokens of {len(sample)} training texts",
              flush=True)
        cached[key] = ChildProcess(("bertclf.tf_start",)).call(
            count_tokens, encoders, encoder_map, sample.texts, max_length)
        _write_json(path, cached)
    return cached[key]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, value: dict) -> None:
    """`value` to `path` atomically (another sweep may read it meanwhile)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(value, indent=1))
    os.replace(temporary, path)

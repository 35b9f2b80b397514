"""Work that runs in fresh processes, spawned (as a sweep starts trials on a GPU slot) or
forked from the fork server (as on a CPU slot).

Only the standard library is imported at the top: a spawned child imports this module
before it starts, and whatever it imports here would count as the child's start-up.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from sweep.processes import ChildProcess


def spawn(target: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """Run `target(*args)` in a fresh spawned process: (its return value, wall seconds from
    before the spawn to after the process ended)."""
    started = time.perf_counter()
    # Not a daemon: daemons may not start processes, and some targets run trials.
    result = ChildProcess(daemon=False).call(target, *args)
    return result, time.perf_counter() - started


def run_in_child(job) -> dict:
    """sweep.trial.run_job(job) in one fresh process that imports what a trial process
    preloads, then runs the job (nothing started ahead: a sweep's first trial)."""
    from sweep.trial import PRELOAD, run_job

    return ChildProcess(PRELOAD).call(run_job, job)


def cpu_seconds() -> float:
    """The CPU seconds (user and system) this process has used so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def vm_rss_mb() -> float:
    """This process's resident memory now (VmRSS of /proc/self/status), in MB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def bare_fit(config: dict, dataset, spawned_at: float) -> dict:
    """A bare Keras fit + evaluate of the trial's config and data: the same token ids (from the
    cache), batches, model, optimizer and epochs, without the harness (no MLflow, Optuna,
    early stopping, curves or export). Returns timestamps as `timed_trial` does."""
    stamps = {"spawned": spawned_at, "entered": time.time()}
    import tensorflow as tf  # tf-keras: the bench package has imported bertclf first

    from bertclf.data.tokens import make_dataset, steps_per_epoch
    from bertclf.encoders.map import get_encoder, install_builtins
    from bertclf.run import accel
    from bertclf.run.config import TrainConfig
    from bertclf.run.train import compile_classifier, split_token_ids

    cfg = TrainConfig(**config)
    spec = get_encoder(cfg.encoder, cfg.encoder_map)
    install_builtins(spec)  # before seeding, as bertclf.run.train does
    tf.keras.utils.set_random_seed(cfg.seed)
    ids = split_token_ids(cfg, spec, dataset)
    train_ds = make_dataset(ids["train"], cfg.batch_size, cfg.seq_len, bucket=cfg.bucket,
                            shuffle=True, seed=cfg.seed)
    val_ds, test_ds = (make_dataset(ids[n], cfg.eval_batch, cfg.seq_len, bucket=cfg.bucket)
                       for n in ("validation", "test"))
    steps = steps_per_epoch(ids["train"], cfg.batch_size, cfg.seq_len, cfg.bucket)
    model = compile_classifier(cfg, spec, len(dataset.class_names), steps * cfg.epochs)
    stamps["fit_started"] = time.time()
    verbose = 1 if sys.stdout.isatty() else 2  # as bertclf.run.train does
    first_step = tf.keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: stamps.setdefault("first_step", time.time()))
    with accel.precision_rewrites(cfg.hardware):
        model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, verbose=verbose,
                  callbacks=[first_step])
        stamps["fit_ended"] = time.time()
        model.evaluate(test_ds, verbose=0)
    stamps["done"] = time.time()
    return stamps


def timed_trial(job, spawned_at: float) -> dict:
    """sweep.trial.run_job(job) in this fresh process, with timestamps: when this process
    started running Python code of ours, when run_job called train (imports and stores done),
    when fit began (cached ids loaded, model built), when the first training step ended,
    when fit ended, and when the trial (evaluation, logging, export) was done."""
    stamps = {"spawned": spawned_at, "entered": time.time()}
    import tensorflow as tf

    import bertclf.run.train as training
    from sweep.trial import run_job

    class Stamps(tf.keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            stamps.setdefault("fit_started", time.time())

        def on_train_batch_end(self, batch, logs=None):
            stamps.setdefault("first_step", time.time())

        def on_train_end(self, logs=None):
            stamps["fit_ended"] = time.time()

    original = training.train

    def stamped_train(*args, **kwargs):
        stamps["train_called"] = time.time()
        kwargs["callbacks"] = [*kwargs.get("callbacks", ()), Stamps()]
        return original(*args, **kwargs)

    training.train = stamped_train  # run_job imports it when called
    outcome = run_job(job)
    stamps["done"] = time.time()
    return {"stamps": stamps, "outcome": outcome}


def sequential_trials(jobs: list) -> list[dict]:
    """run_in_child for each job in turn, from this light process (no TensorFlow), as from a
    sweep's parent."""
    return [run_in_child(job) for job in jobs]


def in_process_trials(jobs: list) -> list[float]:
    """sweep's in-process mode: run_job for each job in this one process; VmRSS (MB) before
    the first and after each."""
    from sweep.trial import run_job

    rss = [vm_rss_mb()]
    for job in jobs:
        run_job(job)
        rss.append(vm_rss_mb())
    return rss

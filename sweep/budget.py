"""`sweep run --budget DURATION`: one command from data to an exported model within a time
budget. This module parses the duration, measures what the plan needs (training and
evaluation examples per second of each encoder and length, in a child process, cached per
machine and version), makes the plan (promotion reserved first, the search gets the rest),
and formats it; `sweep.__main__` runs it.

The cost model (README, "A time budget"): a run of `epochs` epochs on `train` examples with
`evals` evaluations of `val` examples per epoch and one of `test` examples takes
    overhead + epochs x (train / train_rate + evals x val / eval_rate) + test / eval_rate,
with every sequence counted at its full length (the measurement pads every example to the
length) and every epoch run: early stopping and pruning only make a run shorter.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import time
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import version
from pathlib import Path

from bertclf.errors import UserError

PROMOTION_SHARE = 0.5  # the promotion's target share of what export and scoring leave
MIN_SEARCH_TRIALS = 2  # fewer and the budget is refused as too small
# Per run, beside its fit, until the study has its own (README, "A time budget"): DESIGN.md
# measured 8 s on a quiet machine; trials of experiments/quick.toml took 30-50 s beside
# their fit on the shared 2-core machine (first process start, tokens, test, model logging).
DEFAULT_OVERHEAD_SECONDS = 30.0
EXPORT_SECONDS = 30.0  # `best --export`: copy the model, reload it in a fresh process
LENGTHS = (64, 128, 256, 384, 512)  # the promotion's lengths, above the search's
ENCODER_MAX_LENGTH = 512  # BERT's position embeddings
MEASURE_SECONDS = 3.0  # timed training (and evaluation) per encoder and length
DURATION = re.compile(r"(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m)?(?:(\d+(?:\.\d*)?)s)?")


def parse_duration(text: str) -> float:
    """Seconds in a duration: `4h`, `90m`, `1h30m`, `45s`, a bare number of minutes."""
    value = str(text).strip().lower()
    try:
        seconds = float(value) * 60
    except ValueError:
        match = DURATION.fullmatch(value)
        if not value or match is None:
            raise UserError(f"budget {text!r} is not a duration (e.g. 4h, 90m, 1h30m, 45s, "
                            "or a number of minutes)") from None
        hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if not math.isfinite(seconds) or seconds <= 0:
        raise UserError(f"budget {text!r} must be a positive duration")
    return seconds


def minutes(seconds: float) -> str:
    """`12.3m`."""
    return f"{seconds / 60:.1f}m"


# --------------------------------------------------------------------- the measurement


@dataclass(frozen=True)
class Rates:
    """Examples per second of one encoder at one length: training and evaluation."""

    train: float
    eval: float


def measure_rates(jobs: list[dict], seconds: float = MEASURE_SECONDS) -> list[dict]:
    """In a child process: each job's (encoder, encoder_map, seq_len, batch_size, precision,
    jit_compile) training and evaluation examples/s on random ids of full length, after a
    traced warm-up batch; a job that fails gets its `error` instead."""
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
    from sweep.devices import detect_gpus

    cpu = platform.processor()
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
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
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
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
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(cached, indent=1))
        os.replace(temporary, path)
    rates = {i: cached[key]["error"] if "error" in cached[key] else
             Rates(cached[key]["train"], cached[key]["eval"]) for i, key in enumerate(keys)}
    return rates, len(todo)


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Fidelity:
    """What one run trains on: examples per split, length, epochs, evaluations per epoch."""

    train: int
    val: int
    test: int
    seq_len: int
    epochs: int
    evals: int = 1

    def seconds(self, rates: Rates, overhead: float) -> float:
        """The run's estimated wall time (the module's cost model)."""
        fit = self.epochs * (self.train / rates.train + self.evals * self.val / rates.eval)
        return overhead + fit + self.test / rates.eval

    def overrides(self, search: Fidelity) -> dict:
        """The promotion's fidelity as experiment keys: what differs from the search's."""
        keys = {"max_train_examples": self.train, "max_val_examples": self.val,
                "seq_len": self.seq_len, "epochs": self.epochs}
        base = {"max_train_examples": search.train, "max_val_examples": search.val,
                "seq_len": search.seq_len, "epochs": search.epochs}
        return {k: v for k, v in keys.items() if v != base[k]}


@dataclass(frozen=True)
class Inputs:
    """What a plan is made from: all measured or read before the first trial."""

    budget_seconds: float
    used_seconds: float  # already spent (loading, measuring) when the plan is made
    search: Fidelity  # the most a search trial may run
    full: tuple[int, int, int]  # every train, validation and test example there is
    rates: dict[int, Rates]  # by length: the slowest encoder of the space
    top: int
    seeds: int
    control: bool
    fixed: Fidelity | None = None  # the experiment's [promote] fidelity, if it sets one
    max_length: int = ENCODER_MAX_LENGTH  # the promotion's longest (the space's, if searched)
    overhead: float = DEFAULT_OVERHEAD_SECONDS
    export_seconds: float = EXPORT_SECONDS
    existing_trials: int = 0
    max_trials: int | None = None  # --trials: an upper bound
    parallel: int = 1  # trials at once (GPU slots)


@dataclass(frozen=True)
class Stage:
    """One stage of the plan and its estimated seconds."""

    name: str
    seconds: float
    detail: str


@dataclass(frozen=True)
class Plan:
    """Search trials, the promotion stage, export and final scoring, each estimated."""

    inputs: Inputs
    trials: int
    trial_seconds: float
    search_seconds: float
    top: int
    seeds: int
    fidelity: Fidelity
    run_seconds: float
    promotion_seconds: float
    scoring_seconds: float
    notes: tuple[str, ...] = ()

    @property
    def promotion_fidelity(self) -> dict:
        """The promotion's fidelity as [promote] keys (empty: the search's own)."""
        return self.fidelity.overrides(self.inputs.search)

    @property
    def runs(self) -> int:
        return (self.top + self.inputs.control) * self.seeds

    def stages(self) -> list[Stage]:
        """The stages in order, with what each does."""
        s, f = self.inputs.search, self.fidelity
        return [
            Stage("setup", self.inputs.used_seconds, "data loaded, throughput measured"),
            Stage("search", self.search_seconds,
                  f"~{self.trials} trial(s) of ~{minutes(self.trial_seconds)} "
                  f"({self.inputs.existing_trials} before): {s.train} training examples, "
                  f"length {s.seq_len}, up to {s.epochs} epoch(s), {s.evals} evaluation(s) "
                  "per epoch"),
            Stage("promotion", self.promotion_seconds,
                  f"top {self.top} x {self.seeds} seed(s)"
                  f"{' + the defaults (control, same seeds)' if self.inputs.control else ''}"
                  f" = {self.runs} run(s) of ~{minutes(self.run_seconds)}: {f.train} training "
                  f"examples, {f.val} validation, length {f.seq_len}, up to {f.epochs} "
                  "epoch(s)"),
            Stage("export", self.inputs.export_seconds, "the winner to exported/<study>/"),
            Stage("final scoring", self.scoring_seconds,
                  f"reserved: the exported model on all {self.inputs.full[2]} test examples "
                  "(`bertclf evaluate`, after the sweep)"),
        ]

    def as_dict(self) -> dict:
        """The plan for budget.json."""
        return {"budget_seconds": self.inputs.budget_seconds, "trials": self.trials,
                "trial_seconds": self.trial_seconds, "top": self.top, "seeds": self.seeds,
                "control": self.inputs.control, "promotion_fidelity": self.promotion_fidelity,
                "run_seconds": self.run_seconds, "overhead_seconds": self.inputs.overhead,
                "existing_trials": self.inputs.existing_trials, "notes": list(self.notes),
                "rates": {str(k): asdict(v) for k, v in self.inputs.rates.items()},
                "stages": {s.name: {"seconds": s.seconds, "detail": s.detail}
                           for s in self.stages()}}


def promotion_ladder(inputs: Inputs) -> list[Fidelity]:
    """The promotion's fidelities from the search's up, each larger than the one before:
    more data (x2 steps, up to all of it), then longer sequences (up to `max_length`). The
    epochs stay the search's most (an upper bound: training stops early)."""
    if inputs.fixed is not None:
        return [inputs.fixed]
    s = inputs.search
    ladder = [s]
    factor = 2
    while ladder[-1].train < inputs.full[0] or ladder[-1].val < inputs.full[1]:
        ladder.append(replace(s, train=min(inputs.full[0], s.train * factor),
                              val=min(inputs.full[1], s.val * factor)))
        factor *= 2
    for length in LENGTHS:
        if s.seq_len < length <= inputs.max_length and length in inputs.rates:
            ladder.append(replace(ladder[-1], seq_len=length))
    return ladder


def _counts(top: int, seeds: int) -> list[tuple[int, int]]:
    """(top, seeds) from the experiment's down: fewer seeds first, then fewer configurations."""
    return [(top, n) for n in range(seeds, 0, -1)] + [(k, 1) for k in range(top - 1, 0, -1)]


def make_plan(inputs: Inputs) -> Plan:
    """The plan: the promotion is reserved first (the largest fidelity of the ladder whose
    runs fit its share; fewer seeds, then fewer configurations where even the smallest does
    not), then export and final scoring; the search gets the rest. UserError where the
    budget cannot hold MIN_SEARCH_TRIALS trials besides, naming the budget it needs."""
    ladder = promotion_ladder(inputs)
    search_trial = inputs.search.seconds(inputs.rates[inputs.search.seq_len], inputs.overhead)
    left = inputs.budget_seconds - inputs.used_seconds - inputs.export_seconds

    def scoring(f: Fidelity) -> float:
        return inputs.full[2] / inputs.rates[f.seq_len].eval + inputs.overhead

    def promotion(f: Fidelity, top: int, seeds: int) -> float:
        return (top + inputs.control) * seeds * f.seconds(inputs.rates[f.seq_len],
                                                          inputs.overhead)

    base = ladder[0]
    share = PROMOTION_SHARE * (left - scoring(base))
    counts = _counts(inputs.top, inputs.seeds)
    top, seeds = next(((k, n) for k, n in counts if promotion(base, k, n) <= share),
                      counts[-1])
    fidelity = base
    for candidate in ladder[1:]:
        if promotion(candidate, top, seeds) + scoring(candidate) - scoring(base) > share:
            break
        fidelity = candidate
    search_seconds = left - scoring(fidelity) - promotion(fidelity, top, seeds)
    trials = int(search_seconds // search_trial) * inputs.parallel if search_seconds > 0 else 0
    if trials < MIN_SEARCH_TRIALS:
        needed = (inputs.used_seconds + inputs.export_seconds + scoring(base)
                  + promotion(base, *counts[-1])
                  + math.ceil(MIN_SEARCH_TRIALS / inputs.parallel) * search_trial)
        raise UserError(
            f"a budget of {minutes(inputs.budget_seconds)} is too small for this experiment: "
            f"it needs at least {math.ceil(needed / 60)}m ({MIN_SEARCH_TRIALS} search trials "
            f"of ~{minutes(search_trial)}, {promotion(base, *counts[-1]) / 60:.1f}m of "
            f"promotion, {minutes(inputs.export_seconds)} of export, "
            f"{minutes(scoring(base))} of final scoring, {minutes(inputs.used_seconds)} "
            "spent on setup); give a larger --budget or cap the data")
    notes = []
    if (top, seeds) != (inputs.top, inputs.seeds):
        notes.append(f"promotion reduced from top {inputs.top} x {inputs.seeds} seed(s) to "
                     f"fit its share")
    if inputs.max_trials is not None and trials > inputs.max_trials:
        notes.append(f"--trials {inputs.max_trials} caps the search below the "
                     f"{trials} trial(s) the budget affords")
        trials = inputs.max_trials
    return Plan(inputs, trials, search_trial, search_seconds, top, seeds, fidelity,
                fidelity.seconds(inputs.rates[fidelity.seq_len], inputs.overhead),
                promotion(fidelity, top, seeds), scoring(fidelity), tuple(notes))


def format_plan(plan: Plan) -> str:
    """The plan as a small table: stage, estimated minutes, what it does."""
    lines = [f"sweep: budget {minutes(plan.inputs.budget_seconds)}, the plan "
             "(estimated minutes):",
             f"  {'stage':<14} {'minutes':>8}  what"]
    lines += [f"  {s.name:<14} {s.seconds / 60:>8.1f}  {s.detail}" for s in plan.stages()]
    lines += [f"  note: {note}" for note in plan.notes]
    return "\n".join(lines)


def format_actuals(plan: Plan, actual: dict[str, float]) -> str:
    """Plan against what each stage really took, in minutes."""
    lines = ["sweep: budget: planned vs actual minutes:",
             f"  {'stage':<14} {'planned':>8} {'actual':>8}"]
    for s in plan.stages():
        took = actual.get(s.name)
        lines.append(f"  {s.name:<14} {s.seconds / 60:>8.1f} "
                     f"{'-' if took is None else f'{took / 60:.1f}':>8}")
    total = sum(actual.values())
    lines.append(f"  {'total':<14} {plan.inputs.budget_seconds / 60:>8.1f} {total / 60:>8.1f}"
                 "  (final scoring runs after the sweep)")
    return "\n".join(lines)


@dataclass
class Clock:
    """The budget's clock: started when `sweep run` started; each stage's actual seconds."""

    budget_seconds: float
    started: float = field(default_factory=time.monotonic)
    actual: dict[str, float] = field(default_factory=dict)
    _mark: float = field(default=0.0)

    def used(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.budget_seconds - self.used()

    def lap(self, stage: str) -> None:
        """`stage` took the time since the last lap (or the start)."""
        now = self.used()
        self.actual[stage] = now - self._mark
        self._mark = now

    def note(self) -> str:
        """`[used 12.3m, ~30.1m left]` for a trial's progress line."""
        return f"[used {minutes(self.used())}, ~{minutes(max(0.0, self.left()))} left]"


# ------------------------------------------------- from an experiment, its data and study


def _candidates(value, default):
    from sweep.experiment import Range

    if value is None:
        return [default]
    if isinstance(value, Range):
        return [value.low, value.high]
    return value if isinstance(value, list) else [value]


def search_fidelity(experiment, dataset) -> Fidelity:
    """The most a search trial of `experiment` may run on `dataset` (its loaded split)."""
    from bertclf.run.config import TrainConfig

    train = len(dataset.train)
    return Fidelity(train, len(dataset.validation), len(dataset.test),
                    int(max(_candidates(experiment.space.get("seq_len"), TrainConfig.seq_len))),
                    experiment.max_epochs,
                    max(1, experiment.max_steps(train) // experiment.max_epochs))


def full_sizes(experiment) -> tuple[int, int, int]:
    """How many train, validation and test examples the experiment's data holds, uncapped."""
    caps = dict.fromkeys(("max_examples", "max_train_examples", "max_val_examples",
                          "max_test_examples"))
    data = experiment.base_config(**caps).load_data()
    return len(data.train), len(data.validation), len(data.test)


def fixed_fidelity(experiment, search: Fidelity, full: tuple[int, int, int]) -> Fidelity | None:
    """The experiment's [promote] fidelity as a Fidelity, None if it sets none."""
    fixed = experiment.promotion.fidelity
    if not fixed:
        return None
    options = {**experiment.data_options, **fixed}

    def size(split: str, total: int) -> int:
        cap = options.get(f"max_{split}_examples", options.get("max_examples"))
        return total if cap is None else min(total, cap)

    return replace(search, train=size("train", full[0]), val=size("val", full[1]),
                   test=size("test", full[2]), seq_len=fixed.get("seq_len", search.seq_len),
                   epochs=fixed.get("epochs", search.epochs))


def _searched(experiment, name: str) -> bool:
    from sweep.experiment import Range

    return isinstance(experiment.space.get(name), list | Range)


def measurement_jobs(experiment, lengths: list[int]) -> list[dict]:
    """One measurement per encoder of the space and length, at the space's smallest batch
    size, its precision and XLA setting."""
    from bertclf.run.config import TrainConfig

    space = experiment.space
    batch = int(min(_candidates(space.get("batch_size"), TrainConfig.batch_size)))
    precision = _candidates(space.get("precision"), TrainConfig.precision)[0]
    jit = _candidates(space.get("jit_compile"), None)[0]
    return [{"encoder": encoder, "encoder_map": space.get("encoder_map"), "seq_len": length,
             "batch_size": batch, "precision": precision, "jit_compile": jit}
            for encoder in _candidates(space.get("encoder"), TrainConfig.encoder)
            for length in lengths]


def slowest_rates(jobs: list[dict], measured: dict[int, Rates | str],
                  search_length: int) -> dict[int, Rates]:
    """By length, the slowest encoder's rates; a length that failed for any encoder is left
    out (UserError if it is the search's own)."""
    rates: dict[int, Rates] = {}
    failed: dict[int, str] = {}
    for i, job in enumerate(jobs):
        length, got = job["seq_len"], measured[i]
        if isinstance(got, str):
            failed[length] = f"{job['encoder']}: {got}"
        elif length in rates:
            rates[length] = Rates(min(rates[length].train, got.train),
                                  min(rates[length].eval, got.eval))
        else:
            rates[length] = got
    if search_length in failed:
        raise UserError(f"budget: could not measure training at length {search_length} "
                        f"({failed[search_length]})")
    return {k: v for k, v in rates.items() if k not in failed}


def study_overhead(trials, search: Fidelity, rates: Rates) -> float:
    """Per-run seconds beside the fit, from the study's completed trials (their duration
    minus their training and test time; the median), else DEFAULT_OVERHEAD_SECONDS."""
    import statistics

    seen = [(t.datetime_complete - t.datetime_start).total_seconds()
            - t.user_attrs["train_seconds"] - search.test / rates.eval
            for t in trials if t.state.name == "COMPLETE" and "train_seconds" in t.user_attrs]
    return max(0.0, statistics.median(seen)) if seen else DEFAULT_OVERHEAD_SECONDS


def _rates(experiment, lengths: list[int], search_length: int) -> tuple[dict[int, Rates], int]:
    """The slowest encoder's rates at each of `lengths` (cached, else measured now), and how
    many settings were measured now."""
    jobs = measurement_jobs(experiment, lengths)
    measured, fresh = measured_rates(jobs)
    return slowest_rates(jobs, measured, search_length), fresh


def plan_budget(experiment, dataset, trials: list, budget_seconds: float, used_seconds,
                max_trials: int | None = None, parallel: int = 1) -> Plan:
    """The plan for `experiment` on its loaded search `dataset`, the study's `trials` so
    far counted. A longer length is measured only when the promotion could use it: when
    the plan reaches the top of the ladder measured so far. `used_seconds()`: the budget's
    time spent so far."""
    search = search_fidelity(experiment, dataset)
    full = full_sizes(experiment)
    fixed = fixed_fidelity(experiment, search, full)
    max_length = search.seq_len if _searched(experiment, "seq_len") else ENCODER_MAX_LENGTH
    longer = [] if fixed else [n for n in LENGTHS if search.seq_len < n <= max_length]
    rates, fresh = _rates(experiment, sorted({search.seq_len, fixed.seq_len if fixed else
                                              search.seq_len}), search.seq_len)
    if fixed and fixed.seq_len not in rates:
        raise UserError(f"budget: could not measure the promotion's length {fixed.seq_len}")
    if not fresh:
        print(f"sweep: budget: reused the throughput measured before on this machine "
              f"({cache_file()})", flush=True)
    overhead = study_overhead(trials, search, rates[search.seq_len])
    while True:
        inputs = Inputs(budget_seconds=budget_seconds, used_seconds=used_seconds(),
                        search=search, full=full, rates=dict(rates),
                        top=experiment.promotion.top, seeds=experiment.promotion.seeds,
                        control=experiment.promotion.control, fixed=fixed,
                        max_length=max_length, overhead=overhead,
                        existing_trials=sum(t.state.is_finished() for t in trials),
                        max_trials=max_trials, parallel=parallel)
        plan = make_plan(inputs)
        if not longer or plan.fidelity != promotion_ladder(inputs)[-1]:
            return plan
        rates.update(_rates(experiment, [longer.pop(0)], search.seq_len)[0])


# ------------------------------------------------------------------------------ the run


class BudgetRun:
    """A budget's stages on an open study: the search until its share is spent, the
    promotion at the plan's fidelity, the winner exported to exported/<study>/; the plan and
    what each stage took printed and logged on the parent run (budget.json, metrics)."""

    def __init__(self, plan: Plan, clock: Clock, sweep, slots: list[dict[str, str]], args):
        self.plan, self.clock, self.sweep, self.slots, self.args = plan, clock, sweep, slots, args
        self.tracker = sweep.tracker

    def run(self) -> None:
        """Search, promote, export; Ctrl-C ends the runs in progress as failed and raises."""
        self.clock.lap("setup")
        self.log()
        self.search()
        self.promote()
        self.export()
        print(format_actuals(self.plan, self.clock.actual), flush=True)
        self.log()

    def search(self) -> None:
        plan = self.plan
        deadline = plan.inputs.used_seconds + plan.search_seconds - self.clock.used()
        print(f"sweep: budget: searching for {minutes(max(0.0, deadline))} (a trial is "
              f"not started unless ~{minutes(plan.trial_seconds)} are left of it)",
              flush=True)
        self.sweep.progress_note = self.clock.note
        if deadline > 0:
            self.sweep.run(self.args.trials, deadline, slots=self.slots,
                           trial_seconds=plan.trial_seconds)
        self.clock.lap("search")

    def promote(self) -> None:
        from sweep.experiment import Promotion as Stage
        from sweep.promote import Promotion

        experiment, plan = self.sweep.experiment, self.plan
        fidelity = experiment.promotion.fidelity or plan.promotion_fidelity
        experiment = replace(experiment, promotion=Stage(plan.top, plan.seeds, fidelity,
                                                         plan.inputs.control))
        Promotion(experiment, self.sweep.study, self.tracker, self.sweep.storage, plan.top,
                  plan.seeds, in_process=self.args.in_process,
                  heartbeat_seconds=self.args.heartbeat, grace_seconds=self.args.grace,
                  storage_url=self.args.storage, control=plan.inputs.control).run()
        self.clock.lap("promotion")

    def export(self) -> None:
        from sweep.export import export_chosen

        out = Path("exported") / self.sweep.study.study_name
        export_chosen(self.sweep.study, out, True, self.args.tracking_uri)
        self.clock.lap("export")

    def log(self) -> None:
        """The plan and the actual seconds so far on the parent run."""
        from sweep.tracking import log_metrics

        client, run_id = self.tracker.client, self.tracker.parent_run_id
        record = {**self.plan.as_dict(), "actual_seconds": self.clock.actual}
        client.log_dict(run_id, record, "budget.json")
        values = {"budget_minutes": self.plan.inputs.budget_seconds / 60}
        for stage in self.plan.stages():
            key = f"stage_{stage.name.replace(' ', '_')}_minutes"
            values[f"{key}_planned"] = stage.seconds / 60
            if stage.name in self.clock.actual:
                values[f"{key}_actual"] = self.clock.actual[stage.name] / 60
        log_metrics(client, run_id, values)

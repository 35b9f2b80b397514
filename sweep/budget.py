"""`sweep run --budget DURATION`: one command from data to an exported model within a time
budget. This module reads the budget, makes its plan from the experiment, its data and the
measured throughput (sweep.plan, sweep.throughput), and runs the stages: the search until its
share is spent, the promotion, the export; `sweep.__main__` calls it."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from bertclf.errors import UserError
from sweep.plan import (
    DEFAULT_OVERHEAD_SECONDS,
    ENCODER_MAX_LENGTH,
    Costs,
    Fidelity,
    Inputs,
    Plan,
    Rates,
    covering_length,
    format_actuals,
    longer_lengths,
    make_plan,
    minutes,
    promotion_ladder,
)
from sweep.throughput import cache_file, measured_rates, token_lengths

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


def search_fidelity(experiment, dataset) -> Fidelity:
    """The most a search trial of `experiment` may run on `dataset` (its loaded split)."""
    train = len(dataset.train)
    samples = experiment.candidates("eval_examples")
    return Fidelity(train, len(dataset.validation), len(dataset.test),
                    int(max(experiment.candidates("seq_len"))),
                    experiment.max_epochs,
                    max(1, experiment.max_steps(train) // experiment.max_epochs),
                    None if None in samples else int(max(samples)))


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


def measurement_jobs(experiment, lengths: list[int]) -> list[dict]:
    """One measurement per encoder of the space and length, at the space's smallest batch
    size, its precision and XLA setting."""
    batch = int(min(experiment.candidates("batch_size")))
    precision = experiment.candidates("precision")[0]
    jit = experiment.candidates("jit_compile")[0]
    return [{"encoder": encoder, "encoder_map": experiment.space.get("encoder_map"),
             "seq_len": length, "batch_size": batch, "precision": precision,
             "jit_compile": jit}
            for encoder in experiment.candidates("encoder")
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


def study_overhead(trials, search: Fidelity, costs: Costs) -> float:
    """Per-run seconds beside the fit, from the study's completed trials (their duration
    minus their training and test time; the median), else DEFAULT_OVERHEAD_SECONDS."""
    import statistics

    test = search.test * costs.per_example(search.seq_len, "eval")
    seen = [(t.datetime_complete - t.datetime_start).total_seconds()
            - t.user_attrs["train_seconds"] - test
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
    the plan reaches the top of the ladder measured so far, or, up to the covering length
    (the ladder lengthens before it adds data), a promotion above the search's own at the
    longest length measured so far. `used_seconds()`: the budget's
    time spent so far."""
    search = search_fidelity(experiment, dataset)
    full = full_sizes(experiment)
    fixed = fixed_fidelity(experiment, search, full)
    max_length = search.seq_len if experiment.searched("seq_len") else ENCODER_MAX_LENGTH
    lengths = token_lengths(experiment.candidates("encoder"), experiment.space.get(
        "encoder_map"), dataset.train, max(fixed.seq_len if fixed else max_length,
                                                  search.seq_len))
    longer = [] if fixed else longer_lengths(search.seq_len, max_length, max(lengths))
    cover = covering_length(tuple(lengths), [search.seq_len, *longer])
    rates, fresh = _rates(experiment, sorted({search.seq_len, fixed.seq_len if fixed else
                                              search.seq_len}), search.seq_len)
    if fixed and fixed.seq_len not in rates:
        raise UserError(f"budget: could not measure the promotion's length {fixed.seq_len}")
    if not fresh:
        print(f"sweep: budget: reused the throughput measured before on this machine "
              f"({cache_file()})", flush=True)
    bucket = all(experiment.candidates("bucket"))

    def costs() -> Costs:
        return Costs(dict(rates), tuple(lengths), bucket)

    overhead = study_overhead(trials, search, costs())
    while True:
        inputs = Inputs(budget_seconds=budget_seconds, used_seconds=used_seconds(),
                        search=search, full=full, costs=costs(),
                        top=experiment.promotion.top, seeds=experiment.promotion.seeds,
                        control=experiment.promotion.control, fixed=fixed,
                        max_length=max_length, overhead=overhead,
                        existing_trials=sum(t.state.is_finished() for t in trials),
                        max_trials=max_trials, parallel=parallel)
        plan = make_plan(inputs)
        ladder = promotion_ladder(inputs)
        at_longest = plan.fidelity.seq_len == max(rates) and plan.fidelity != ladder[0]
        if not longer or not (plan.fidelity == ladder[-1]
                              or (at_longest and longer[0] <= cover)):
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
        """The promotion at the plan's fidelity; a run that would end after the time left
        for it (the budget less export and final scoring: the margin included) is not
        started, each run taken to last as the plan says, then as long as the longest."""
        from sweep.experiment import Promotion as Stage
        from sweep.promote import Promotion
        from sweep.runner import Budget

        experiment, plan = self.sweep.experiment, self.plan
        left = self.clock.left() - plan.inputs.export_seconds - plan.scoring_seconds
        fidelity = experiment.promotion.fidelity or plan.promotion_fidelity
        experiment = replace(experiment, promotion=Stage(plan.top, plan.seeds, fidelity,
                                                         plan.inputs.control))
        Promotion(experiment, self.sweep.study, self.tracker, self.sweep.storage, plan.top,
                  plan.seeds, in_process=self.args.in_process,
                  heartbeat_seconds=self.args.heartbeat, grace_seconds=self.args.grace,
                  storage_url=self.args.storage, control_seeds=plan.control_seeds,
                  budget=Budget(None, max(left, 1e-3), plan.run_seconds)).run()
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

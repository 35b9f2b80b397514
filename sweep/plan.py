"""A time budget's plan, as arithmetic on measured throughputs (no TensorFlow, no study):
the promotion is reserved first, at the largest fidelity that fits its share, then export and
the final scoring; the search gets the rest.

The cost model (README, "A time budget"): a run of `epochs` epochs on `train` examples with
`evals` evaluations of `val` examples per epoch and one of `test` examples takes
    overhead + epochs x (train / train_rate + evals x val / eval_rate) + test / eval_rate,
with every sequence counted at its full length (the measurement pads every example to the
length) and every epoch run: early stopping and pruning only make a run shorter.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

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


def minutes(seconds: float) -> str:
    """`12.3m`."""
    return f"{seconds / 60:.1f}m"


@dataclass(frozen=True)
class Rates:
    """Examples per second of one encoder at one length: training and evaluation."""

    train: float
    eval: float


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
    """(top, seeds) from the experiment's down: fewer seeds first (two at least, where the
    experiment asks for two or more), then fewer configurations; one seed only as the last
    resort of a budget too small for two."""
    floor = min(2, seeds)
    counts = [(top, n) for n in range(seeds, floor - 1, -1)]
    counts += [(k, floor) for k in range(top - 1, 0, -1)]
    return counts + ([(1, 1)] if floor > 1 else [])


def make_plan(inputs: Inputs) -> Plan:
    """The plan: the promotion is reserved first, fidelity first: the largest fidelity of the
    ladder at which one configuration with two seeds (one if the experiment asks for one;
    and the control with as many) fits its share, then as many seeds and configurations as
    fit there (the experiment's at most: fewer seeds first, then fewer configurations). Then
    export and final scoring; the search gets the rest. UserError where the budget cannot
    hold MIN_SEARCH_TRIALS trials besides, naming the budget it needs.

    Fidelity comes first because the exported model is trained at it: in README's IMDB
    sweep, one configuration's validation accuracy was 0.861 at 2,000 reviews and length 128
    and 0.916 at 20,000 and 384, where its two seeds were 0.001 apart. Two seeds, because
    the exported model is the better seed's: one seed that fails to learn (seen on
    quick.toml's random tiny encoder at 4x the search's data) must not be the export."""
    ladder = promotion_ladder(inputs)
    search_trial = inputs.search.seconds(inputs.rates[inputs.search.seq_len], inputs.overhead)
    left = inputs.budget_seconds - inputs.used_seconds - inputs.export_seconds

    def scoring(f: Fidelity) -> float:
        return inputs.full[2] / inputs.rates[f.seq_len].eval + inputs.overhead

    def promotion(f: Fidelity, top: int, seeds: int) -> float:
        return (top + inputs.control) * seeds * f.seconds(inputs.rates[f.seq_len],
                                                          inputs.overhead)

    def fits(f: Fidelity, top: int, seeds: int) -> bool:
        return promotion(f, top, seeds) + scoring(f) - scoring(base) <= share

    base = ladder[0]
    share = PROMOTION_SHARE * (left - scoring(base))
    counts = _counts(inputs.top, inputs.seeds)
    least = (1, min(2, inputs.seeds))
    fidelity = next((f for f in reversed(ladder) if fits(f, *least)), base)
    top, seeds = next(((k, n) for k, n in counts if fits(fidelity, k, n)), counts[-1])
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
        notes.append(f"promotion: top {top} x {seeds} seed(s) of the experiment's top "
                     f"{inputs.top} x {inputs.seeds}, to fit its share at this fidelity")
    if inputs.max_trials is not None and trials > inputs.max_trials:
        notes.append(f"--trials {inputs.max_trials} caps the search below the "
                     f"{trials} trial(s) the budget affords")
        trials = inputs.max_trials
    return Plan(inputs, trials, search_trial, search_seconds, top, seeds, fidelity,
                fidelity.seconds(inputs.rates[fidelity.seq_len], inputs.overhead),
                promotion(fidelity, top, seeds), scoring(fidelity), tuple(notes))


def format_plan(plan: Plan) -> str:
    """The plan as a small table: stage, estimated minutes, what it does; then the
    throughput it was made from."""
    lines = [f"sweep: budget {minutes(plan.inputs.budget_seconds)}, the plan "
             "(estimated minutes):",
             f"  {'stage':<14} {'minutes':>8}  what"]
    lines += [f"  {s.name:<14} {s.seconds / 60:>8.1f}  {s.detail}" for s in plan.stages()]
    lines += [f"  note: {note}" for note in plan.notes]
    lines.append("  measured examples/s (training / evaluation): " + ", ".join(
        f"length {n}: {r.train:.1f} / {r.eval:.1f}" for n, r in sorted(plan.inputs.rates.items())))
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

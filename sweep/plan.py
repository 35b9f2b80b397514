"""A time budget's plan, as arithmetic on measured throughputs (no TensorFlow, no study):
the promotion is reserved first, at the largest fidelity that fits beside a minimum search,
then export and the final scoring; the search gets the rest.

The cost model (README, "A time budget"): a run of `epochs` epochs on `train` examples with
`evals` evaluations per epoch (the last on all `val` examples, the others on `eval_sample`)
and one of `test` examples takes
    overhead + epochs x (train x t_train + (evals - 1) x eval_sample x t_eval + val x t_eval)
                   + test x t_eval,
where t is the mean seconds per example over the data's token lengths: each example padded as
its length bucket pads it (or to the full length without bucketing), the seconds at a padded
length interpolated between the lengths measured. Every epoch is counted: early stopping and
pruning only make a run shorter.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field, replace

from bertclf.errors import UserError
from bertclf.run.config import bucket_boundaries

PROMOTION_SHARE = 0.5  # what the promotion may grow to (more seeds and configurations)
SEARCH_FLOOR_TRIALS = 12  # the search keeps this many trials (or half), however high the
# promotion's fidelity: README's two-stage IMDB sweep found its winner in 12 search trials.
MIN_SEARCH_TRIALS = 2  # fewer and the budget is refused as too small
# Per run, beside its fit, until the study has its own (README, "A time budget"): DESIGN.md
# measured 8 s on a quiet machine; trials of experiments/quick.toml took 30-50 s beside
# their fit on the shared 2-core machine (first process start, tokens, test, model logging).
DEFAULT_OVERHEAD_SECONDS = 30.0
EXPORT_SECONDS = 30.0  # `best --export`: copy the model, reload it in a fresh process
MARGIN_SHARE = 0.05  # of the budget, left unplanned for the estimates' error (a few
# seconds of measurement per length; tracing each new batch shape)
LENGTHS = (64, 128, 256, 384, 512)  # the promotion's lengths, above the search's
COVERAGE = 0.9  # of the texts' tokens: the promotion's length grows to keep this much first
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
class Costs:
    """Seconds per example, for the cost model: the slowest encoder's rates measured at some
    lengths (every example padded to the length), and the token lengths of a sample of the
    training texts ([CLS] and [SEP] counted, capped at the longest length planned; empty:
    unknown, every example counted at the full length)."""

    rates: dict[int, Rates]
    lengths: tuple[int, ...] = ()
    bucket: bool = True  # batches padded to their bucket's longest (TrainConfig.bucket)
    _memo: dict = field(default_factory=dict, compare=False, repr=False)

    def per_example(self, seq_len: int, kind: str) -> float:
        """Mean seconds per example of `kind` ("train" or "eval") at length `seq_len`."""
        if (seq_len, kind) not in self._memo:
            padded = (Counter(self.padded(n, seq_len) for n in self.lengths)
                      if self.bucket and self.lengths else Counter([seq_len]))
            self._memo[seq_len, kind] = sum(self.at(p, kind) * n for p, n in padded.items()
                                            ) / padded.total()
        return self._memo[seq_len, kind]

    @staticmethod
    def padded(length: int, seq_len: int) -> int:
        """The most a text of `length` tokens is padded to in a bucketed batch."""
        length = min(length, seq_len)
        return next((b for b in bucket_boundaries(seq_len) if b > length), seq_len)

    def at(self, padded: int, kind: str) -> float:
        """Seconds per example padded to `padded`: interpolated between the measured
        lengths, proportional to the length below the shortest and above the longest."""
        points = sorted((n, 1 / getattr(r, kind)) for n, r in self.rates.items())
        below = [(n, s) for n, s in points if n <= padded]
        above = [(n, s) for n, s in points if n >= padded]
        if not below or not above:  # outside the measured lengths: the nearest one's
            n, s = above[0] if not below else below[-1]
            return s * padded / n
        (n0, s0), (n1, s1) = below[-1], above[0]
        return s0 if n1 == n0 else s0 + (s1 - s0) * (padded - n0) / (n1 - n0)

    def summary(self) -> str:
        """The token lengths in a phrase, for the plan."""
        if not self.lengths:
            return "token lengths not measured: every example counted at the full length"
        q = statistics.quantiles(self.lengths, n=10)
        return (f"token lengths of {len(self.lengths)} training texts: median "
                f"{statistics.median(self.lengths):.0f}, 90th percentile {q[-1]:.0f}"
                + ("" if self.bucket else " (bucket = false: padded to the full length)"))


@dataclass(frozen=True)
class Fidelity:
    """What one run trains on: examples per split, length, epochs, evaluations per epoch."""

    train: int
    val: int
    test: int
    seq_len: int
    epochs: int
    evals: int = 1
    eval_sample: int | None = None  # validation examples of the in-epoch evaluations

    def seconds(self, costs: Costs, overhead: float) -> float:
        """The run's estimated wall time (the module's cost model)."""
        t_train = costs.per_example(self.seq_len, "train")
        t_eval = costs.per_example(self.seq_len, "eval")
        sample = self.val if self.eval_sample is None else min(self.val, self.eval_sample)
        evaluations = (self.evals - 1) * sample + self.val
        return overhead + self.epochs * (self.train * t_train + evaluations * t_eval) + (
            self.test * t_eval)

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
    costs: Costs  # the slowest encoder of the space, by length, on this data
    top: int
    seeds: int
    control: bool
    fixed: Fidelity | None = None  # the experiment's [promote] fidelity, if it sets one
    max_length: int = ENCODER_MAX_LENGTH  # the promotion's longest (the space's, if searched)
    overhead: float = DEFAULT_OVERHEAD_SECONDS
    export_seconds: float = EXPORT_SECONDS
    margin_share: float = MARGIN_SHARE
    existing_trials: int = 0
    max_trials: int | None = None  # --trials: an upper bound
    parallel: int = 1  # trials at once (GPU slots)

    @property
    def margin_seconds(self) -> float:
        return self.margin_share * self.budget_seconds


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
    control_seeds: int  # the control's runs: the candidates' seeds, or fewer (0: no control)
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
        return self.top * self.seeds + self.control_seeds

    def control_phrase(self) -> str:
        """" + the defaults (control, ...)" for the plan's promotion line."""
        if not self.control_seeds:
            return ""
        same = ("same seeds" if self.control_seeds == self.seeds
                else f"{self.control_seeds} of the {self.seeds} seeds: the budget affords no more")
        return f" + the defaults (control, {same})"

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
                  f"top {self.top} x {self.seeds} seed(s){self.control_phrase()}"
                  f" = {self.runs} run(s) of ~{minutes(self.run_seconds)}: {f.train} training "
                  f"examples, {f.val} validation, length {f.seq_len}, up to {f.epochs} "
                  "epoch(s)"),
            Stage("export", self.inputs.export_seconds, "the winner to exported/<study>/"),
            Stage("final scoring", self.scoring_seconds,
                  f"reserved: the exported model on all {self.inputs.full[2]} test examples "
                  "(`bertclf evaluate`, after the sweep)"),
            Stage("margin", self.inputs.margin_seconds, "unplanned, for the estimates' error"),
        ]

    def as_dict(self) -> dict:
        """The plan for budget.json."""
        return {"budget_seconds": self.inputs.budget_seconds, "trials": self.trials,
                "trial_seconds": self.trial_seconds, "top": self.top, "seeds": self.seeds,
                "control": self.inputs.control, "control_seeds": self.control_seeds,
                "promotion_fidelity": self.promotion_fidelity,
                "run_seconds": self.run_seconds, "overhead_seconds": self.inputs.overhead,
                "existing_trials": self.inputs.existing_trials, "notes": list(self.notes),
                "rates": {str(k): asdict(v) for k, v in self.inputs.costs.rates.items()},
                "seconds_per_example": {str(n): {kind: self.inputs.costs.per_example(n, kind)
                                                 for kind in ("train", "eval")}
                                        for n in self.inputs.costs.rates},
                "token_lengths": self.inputs.costs.summary(),
                "stages": {s.name: {"seconds": s.seconds, "detail": s.detail}
                           for s in self.stages()}}


def promotion_ladder(inputs: Inputs) -> list[Fidelity]:
    """The promotion's fidelities from the search's up, each larger than the one before:
    first longer sequences up to the covering length (`covering_length`: what the texts
    need; the length also limits what the model sees when it predicts, more data only helps
    it train), then more data (x2 steps, up to all of it), then the longer sequences left (up
    to `max_length`). Lengths not measured are left out. The epochs stay the search's most
    (an upper bound: training stops early)."""
    if inputs.fixed is not None:
        return [inputs.fixed]
    s = inputs.search
    lengths = [n for n in LENGTHS if s.seq_len < n <= inputs.max_length
               and n in inputs.costs.rates]
    cover = covering_length(inputs.costs.lengths, [s.seq_len, *lengths])
    ladder = [s] + [replace(s, seq_len=n) for n in lengths if n <= cover]
    factor = 2
    while ladder[-1].train < inputs.full[0] or ladder[-1].val < inputs.full[1]:
        ladder.append(replace(ladder[-1], train=min(inputs.full[0], s.train * factor),
                              val=min(inputs.full[1], s.val * factor)))
        factor *= 2
    return ladder + [replace(ladder[-1], seq_len=n) for n in lengths if n > cover]


def covering_length(lengths: tuple[int, ...], candidates: list[int]) -> int:
    """The first of `candidates` (ascending) that keeps COVERAGE of the counted texts'
    tokens, else the longest; the first where the texts were not counted."""
    if not lengths:
        return candidates[0]
    total = sum(lengths)
    return next((n for n in candidates if sum(min(k, n) for k in lengths) >= COVERAGE * total),
                candidates[-1])


def longer_lengths(search_length: int, max_length: int, longest: int) -> list[int]:
    """The promotion's lengths above the search's, up to `max_length` and up to the first
    that holds a text of `longest` tokens: a longer one would change nothing."""
    out: list[int] = []
    for length in LENGTHS:
        if search_length < length <= max_length and (out[-1] if out else search_length) < longest:
            out.append(length)
    return out


def _counts(top: int, seeds: int, control: bool) -> list[tuple[int, int, int]]:
    """(top, seeds, control seeds) from the experiment's down: fewer seeds first (two at
    least, where the experiment asks for two or more; the control with the same), then fewer
    configurations, then the control with one seed; one seed only as the last resort of a
    budget too small for two."""
    floor = min(2, seeds)
    pairs = [(top, n) for n in range(seeds, floor - 1, -1)]
    pairs += [(k, floor) for k in range(top - 1, 0, -1)]
    counts = [(k, n, n * control) for k, n in pairs]
    if control and floor > 1:
        counts.append((1, floor, 1))
    return counts + ([(1, 1, int(control))] if floor > 1 else [])


def make_plan(inputs: Inputs) -> Plan:
    """The plan: the promotion is reserved first, fidelity first: the largest fidelity of the
    ladder at which one configuration with two seeds (one if the experiment asks for one;
    and the control with one) fits beside the search's floor (SEARCH_FLOOR_TRIALS trials, or
    half the time if that is less), then as many seeds and configurations as fit there
    within PROMOTION_SHARE of the time (the experiment's at most: the control's seeds up to
    the candidates', then fewer seeds first, then fewer configurations). Then export and
    final scoring; the search gets the rest. UserError where the budget cannot hold
    MIN_SEARCH_TRIALS trials besides, naming the budget it needs.

    Fidelity comes first because the exported model is trained at it: in README's IMDB
    sweep, one configuration's validation accuracy was 0.861 at 2,000 reviews and length 128
    and 0.916 at 20,000 and 384, where its two seeds were 0.001 apart. Two seeds, because
    the exported model is the better seed's: one seed that fails to learn (seen on
    quick.toml's random tiny encoder at 4x the search's data) must not be the export."""
    ladder = promotion_ladder(inputs)
    costs, overhead = inputs.costs, inputs.overhead
    search_trial = inputs.search.seconds(costs, overhead)
    left = (inputs.budget_seconds - inputs.used_seconds - inputs.export_seconds
            - inputs.margin_seconds)

    def scoring(f: Fidelity) -> float:
        return inputs.full[2] * costs.per_example(f.seq_len, "eval") + overhead

    def promotion(f: Fidelity, counts: tuple[int, int, int]) -> float:
        top, seeds, control_seeds = counts
        return (top * seeds + control_seeds) * f.seconds(costs, overhead)

    def cost(f: Fidelity, counts: tuple[int, int, int]) -> float:
        """What the promotion at `f` takes from the search, its longer scoring included."""
        return promotion(f, counts) + scoring(f) - scoring(base)

    base = ladder[0]
    room = left - scoring(base)  # for the search and the promotion
    floor = max(math.ceil(MIN_SEARCH_TRIALS / inputs.parallel) * search_trial,
                min(math.ceil(SEARCH_FLOOR_TRIALS / inputs.parallel) * search_trial,
                    (1 - PROMOTION_SHARE) * room))
    counts = _counts(inputs.top, inputs.seeds, inputs.control)
    least = (1, min(2, inputs.seeds), int(inputs.control))  # one of `counts`
    fidelity = next((f for f in reversed(ladder) if cost(f, least) <= room - floor), base)
    limit = max(PROMOTION_SHARE * room,
                cost(fidelity, least) if cost(fidelity, least) <= room - floor else 0.0)
    chosen = next((c for c in counts if cost(fidelity, c) <= limit), counts[-1])
    search_seconds = left - scoring(fidelity) - promotion(fidelity, chosen)
    trials = int(search_seconds // search_trial) * inputs.parallel if search_seconds > 0 else 0
    if trials < MIN_SEARCH_TRIALS:
        needed = (inputs.used_seconds + inputs.export_seconds + scoring(base)
                  + promotion(base, counts[-1])
                  + math.ceil(MIN_SEARCH_TRIALS / inputs.parallel) * search_trial
                  ) / (1 - inputs.margin_share)
        raise UserError(
            f"a budget of {minutes(inputs.budget_seconds)} is too small for this experiment: "
            f"it needs at least {math.ceil(needed / 60)}m ({MIN_SEARCH_TRIALS} search trials "
            f"of ~{minutes(search_trial)}, {promotion(base, counts[-1]) / 60:.1f}m of "
            f"promotion, {minutes(inputs.export_seconds)} of export, "
            f"{minutes(scoring(base))} of final scoring, {minutes(inputs.used_seconds)} "
            "spent on setup); give a larger --budget or cap the data")
    notes = []
    top, seeds, control_seeds = chosen
    if (top, seeds) != (inputs.top, inputs.seeds):
        notes.append(f"promotion: top {top} x {seeds} seed(s) of the experiment's top "
                     f"{inputs.top} x {inputs.seeds}, to fit its share at this fidelity")
    if inputs.max_trials is not None and trials > inputs.max_trials:
        notes.append(f"--trials {inputs.max_trials} caps the search below the "
                     f"{trials} trial(s) the budget affords")
        trials = inputs.max_trials
    return Plan(inputs, trials, search_trial, search_seconds, top, seeds, control_seeds,
                fidelity, fidelity.seconds(costs, overhead), promotion(fidelity, chosen),
                scoring(fidelity), tuple(notes))


def format_plan(plan: Plan) -> str:
    """The plan as a small table: stage, estimated minutes, what it does; then the
    throughput it was made from."""
    lines = [f"sweep: budget {minutes(plan.inputs.budget_seconds)}, the plan "
             "(estimated minutes):",
             f"  {'stage':<14} {'minutes':>8}  what"]
    lines += [f"  {s.name:<14} {s.seconds / 60:>8.1f}  {s.detail}" for s in plan.stages()]
    lines += [f"  note: {note}" for note in plan.notes]
    costs = plan.inputs.costs
    lines.append("  measured examples/s padded to the length (training / evaluation): "
                 + ", ".join(f"length {n}: {r.train:.1f} / {r.eval:.1f}"
                             for n, r in sorted(costs.rates.items())))
    lines.append(f"  {costs.summary()}; as batched, examples/s: " + ", ".join(
        f"length {n}: {1 / costs.per_example(n, 'train'):.1f} / "
        f"{1 / costs.per_example(n, 'eval'):.1f}" for n in sorted(costs.rates)))
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

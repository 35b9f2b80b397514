"""`sweep run --budget`: the duration, the plan's arithmetic on given throughputs, and one
budgeted run of the tiny experiment from data to exported model."""

import json
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from sweep_helpers import error_lines, explain, mlflow_runs, sweep_cli, write_experiment

from bertclf.errors import TrainingError, UserError
from sweep.budget import parse_duration
from sweep.plan import (
    PROMOTION_SHARE,
    SEARCH_FLOOR_TRIALS,
    Costs,
    Fidelity,
    Inputs,
    Rates,
    covering_length,
    longer_lengths,
    make_plan,
    promotion_ladder,
)

pytestmark = pytest.mark.spread

# --- the duration -------------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [("4h", 14400), ("90m", 5400), ("1h30m", 5400),
                                           ("45s", 45), ("10", 600), ("1.5", 90),
                                           ("2m30s", 150), (" 6M ", 360)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "4x", "1h30", "h", "0", "-5", "0m", "nan", "inf"])
def test_bad_durations_are_refused(text):
    with pytest.raises(UserError, match="budget"):
        parse_duration(text)


def test_a_bad_budget_is_one_line_and_exit_2(tmp_path):
    """From the flag and from the experiment file, before anything is written."""
    experiment = write_experiment(tmp_path)
    flag = sweep_cli(tmp_path, "run", "--experiment", experiment, "--budget", "4x",
                     timeout=120)
    assert flag.returncode == 2, explain(flag)
    assert error_lines(flag.stderr) == [
        "sweep: error: budget '4x' is not a duration (e.g. 4h, 90m, 1h30m, 45s, or a number "
        "of minutes)"]
    experiment.write_text(experiment.read_text() + 'budget = "soon"\n')
    key = sweep_cli(tmp_path, "run", "--experiment", experiment, timeout=120)
    assert key.returncode == 2, explain(key)
    assert len(error_lines(key.stderr)) == 1 and "study.budget 'soon'" in key.stderr
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()


# --- the plan, on given throughputs (no TensorFlow) ---------------------------------------

SEARCH = Fidelity(train=2000, val=1000, test=1000, seq_len=128, epochs=1, evals=2)
RATES = {128: Rates(train=25.0, eval=75.0), 256: Rates(train=13.0, eval=40.0),
         384: Rates(train=8.0, eval=25.0), 512: Rates(train=5.0, eval=16.0)}


def inputs(budget_minutes: float, **changes) -> Inputs:
    return replace(Inputs(budget_seconds=budget_minutes * 60, used_seconds=30.0, search=SEARCH,
                          full=(20000, 5000, 25000), costs=Costs(RATES), top=2, seeds=2,
                          control=True), **changes)


def size(fidelity: Fidelity) -> tuple:
    return fidelity.train, fidelity.val, fidelity.seq_len, fidelity.epochs


def test_a_bigger_budget_never_plans_less():
    plans = [make_plan(inputs(minutes)) for minutes in (60, 90, 150, 240, 480, 960)]
    for smaller, bigger in zip(plans, plans[1:], strict=False):
        assert bigger.trials >= smaller.trials
        assert size(bigger.fidelity) >= size(smaller.fidelity)
        assert bigger.promotion_seconds >= smaller.promotion_seconds
    assert plans[-1].trials > plans[0].trials
    assert size(plans[-1].fidelity) > size(plans[0].fidelity)


def test_the_promotion_is_reserved_first_fidelity_first():
    """The promotion takes the largest fidelity at which one configuration with two seeds
    and the control with one fit beside the search's floor, then more runs within its share;
    the search gets the rest, and the stages add up to the budget."""
    plan = make_plan(inputs(150))
    i = plan.inputs
    left = 150 * 60 - 30 - i.export_seconds - i.margin_seconds
    ladder = promotion_ladder(i)
    step = ladder.index(plan.fidelity)
    assert 0 < step < len(ladder) - 1

    def scoring(f: Fidelity) -> float:  # the final scoring grows with the length
        return 25000 / RATES[f.seq_len].eval + i.overhead

    def cost(f: Fidelity, runs: int) -> float:
        return runs * f.seconds(i.costs, i.overhead) + scoring(f) - scoring(ladder[0])

    room = left - scoring(ladder[0])
    floor = min(SEARCH_FLOOR_TRIALS * plan.trial_seconds, (1 - PROMOTION_SHARE) * room)
    assert cost(plan.fidelity, 2 + 1) <= room - floor < cost(ladder[step + 1], 2 + 1)
    assert plan.search_seconds >= floor
    assert cost(plan.fidelity, plan.runs) <= max(PROMOTION_SHARE * room,
                                                 cost(plan.fidelity, 3))
    assert plan.promotion_seconds == pytest.approx(
        cost(plan.fidelity, plan.runs) - scoring(plan.fidelity) + scoring(ladder[0]))
    total = sum(stage.seconds for stage in plan.stages())
    assert total == pytest.approx(150 * 60)
    assert plan.trials == int(plan.search_seconds // plan.trial_seconds)
    assert plan.runs == plan.top * plan.seeds + plan.control_seeds


def test_the_control_gets_fewer_seeds_only_where_the_budget_affords_no_more():
    tight = make_plan(inputs(150))
    assert (tight.top, tight.seeds, tight.control_seeds) == (1, 2, 1)
    assert "control, 1 of the 2 seeds" in tight.stages()[2].detail
    roomy = make_plan(inputs(960))
    assert roomy.control_seeds == roomy.seeds == 2
    assert "control, same seeds" in roomy.stages()[2].detail
    assert make_plan(inputs(150, control=False)).control_seeds == 0


def test_the_cost_model_counts_each_example_at_its_bucket_length():
    """Bucketed batches pad to the bucket's bound (or the length): short texts cost what
    their bucket costs, interpolated between measured lengths; without bucketing or
    without lengths, every example costs the full length."""
    rates = {128: Rates(train=40.0, eval=80.0), 256: Rates(train=20.0, eval=40.0)}
    assert Costs.padded(100, 256) == 128 and Costs.padded(300, 256) == 256
    assert Costs.padded(230, 256) == 256 and Costs.padded(200, 256) == 224
    short = Costs(rates, (100,) * 10)
    assert short.per_example(256, "train") == pytest.approx(1 / 40)
    mixed = Costs(rates, (100, 300))  # 128 and 256: 1/40 and 1/20 seconds
    assert mixed.per_example(256, "eval") == pytest.approx((1 / 80 + 1 / 40) / 2)
    at_192 = Costs(rates, (170,)).per_example(256, "train")  # padded to 192: halfway
    assert at_192 == pytest.approx((1 / 40 + 1 / 20) / 2)
    assert Costs(rates, (60,)).per_example(256, "train") == pytest.approx(1 / 40 / 2)
    assert Costs(rates, (100,), bucket=False).per_example(256, "train") == pytest.approx(1 / 20)
    assert Costs(rates).per_example(256, "train") == pytest.approx(1 / 20)
    run = Fidelity(train=1000, val=200, test=100, seq_len=256, epochs=2, evals=3,
                   eval_sample=50)
    assert run.seconds(Costs(rates), overhead=10) == pytest.approx(
        10 + 2 * (1000 / 20 + (2 * 50 + 200) / 40) + 100 / 40)


@pytest.mark.parametrize("search, longest, expected", [
    (128, 512, [256, 384, 512]), (128, 300, [256, 384]), (128, 256, [256]),
    (128, 100, []), (32, 9, []), (32, 50, [64])])
def test_no_length_past_the_longest_text_is_measured(search, longest, expected):
    assert longer_lengths(search, 512, longest) == expected
    assert longer_lengths(search, 256, longest) == [n for n in expected if n <= 256]


def test_the_length_the_texts_need_comes_before_more_data():
    """Long texts (as IMDB's): the ladder lengthens to the covering length (90% of the
    tokens kept) at the search's data, then adds data, then the longer lengths; texts
    not counted keep data first."""
    long_texts = (300,) * 8 + (1000,) * 2  # 384 keeps 72% of the tokens, 512 78%: the longest
    assert covering_length(long_texts, [128, 256, 384, 512]) == 512
    assert covering_length((200,) * 10, [128, 256, 384, 512]) == 256
    assert covering_length((), [128, 256, 384]) == 128
    ladder = promotion_ladder(inputs(150, costs=Costs(RATES, (200,) * 10)))
    assert [(f.train, f.seq_len) for f in ladder] == [
        (2000, 128), (2000, 256), (4000, 256), (8000, 256), (16000, 256), (20000, 256),
        (20000, 384), (20000, 512)]
    assert [(f.train, f.seq_len) for f in promotion_ladder(inputs(150))][:2] == [
        (2000, 128), (4000, 128)]


def test_short_texts_make_a_longer_promotion_affordable():
    """With every text under 128 tokens, a longer length costs nothing more: the plan climbs
    to the top of the ladder where full-length padding would not."""
    padded = make_plan(inputs(150))
    short = make_plan(inputs(150, costs=Costs(RATES, (100,) * 50)))
    assert short.fidelity.seq_len == 512 > padded.fidelity.seq_len
    assert short.run_seconds < padded.run_seconds


def test_the_experiments_promotion_fidelity_is_kept():
    fixed = replace(SEARCH, train=20000, val=5000, seq_len=256)
    plan = make_plan(inputs(600, fixed=fixed))
    assert plan.fidelity == fixed
    assert plan.promotion_fidelity == {"max_train_examples": 20000, "max_val_examples": 5000,
                                       "seq_len": 256}


def test_a_small_budget_shrinks_the_promotion_then_is_refused():
    small = make_plan(inputs(25))
    assert (small.top, small.seeds) < (2, 2) and small.notes
    with pytest.raises(UserError, match=r"too small for this experiment: it needs at least "
                                        r"\d+m \(2 search trials"):
        make_plan(inputs(8))


def test_trials_caps_the_search():
    plan = make_plan(inputs(240, max_trials=3))
    assert plan.trials == 3 and "--trials 3" in plan.notes[-1]


# --- one budgeted run ----------------------------------------------------------------------

BUDGET_MINUTES = 4  # the least this experiment plans with on a fresh cache (30 s overhead per run)


def test_a_budgeted_run_exports_within_its_budget(tmp_path, capsys):
    """The tiny experiment (its length listed: the promotion stays at the space's longest, so
    no longer length is measured) from data to exported model within the budget plus one
    trial; the plan and what each stage took are on the parent run; a second command reuses
    the measured throughput."""
    experiment = write_experiment(tmp_path)
    experiment.write_text(experiment.read_text().replace("seq_len = 32", "seq_len = [32]"))
    run = sweep_cli(tmp_path, "run", "--experiment", experiment, "--study", "check",
                    "--budget", f"{BUDGET_MINUTES}m", timeout=900)
    assert run.returncode == 0, explain(run)
    assert "Warning" not in run.stdout + run.stderr, explain(run)  # e.g. equal importances
    assert "the plan (estimated minutes)" in run.stdout
    assert ("measured examples/s padded to the length (training / evaluation): length 32: "
            in run.stdout)
    assert "measuring 1 encoder/length setting(s)" in run.stdout
    assert "counting the tokens of 60 training texts" in run.stdout
    assert "token lengths of 60 training texts: median " in run.stdout
    lines = [line for line in run.stdout.splitlines() if line.startswith("trial ")
             and " in " in line]
    seconds = [float(line.split(" in ")[1].split("s")[0]) for line in lines]
    assert seconds and all("[used " in line and "left]" in line for line in lines)
    assert run.seconds <= BUDGET_MINUTES * 60 + max(seconds) + 60, explain(run)
    assert (tmp_path / "exported" / "check" / "saved_model.pb").is_file()
    assert "planned vs actual" in run.stdout

    runs = mlflow_runs(tmp_path)
    client_path = Path(runs.parent.info.artifact_uri.removeprefix("file://")) / "budget.json"
    budget = json.loads(client_path.read_text())
    assert set(budget["actual_seconds"]) == {"setup", "search", "promotion", "export"}
    assert budget["budget_seconds"] == BUDGET_MINUTES * 60
    metrics = runs.parent.data.metrics
    assert metrics["budget_minutes"] == BUDGET_MINUTES
    assert {"stage_search_minutes_planned", "stage_search_minutes_actual"} <= set(metrics)
    assert any(r.data.tags.get("sweep.stage") == "promotion" for r in runs.children)

    # A run that would end after the budget's promotion stage is not started.
    from sweep.experiment import load_experiment
    from sweep.promote import Promotion
    from sweep.runner import Budget
    from sweep.tracking import Tracker

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = optuna.storages.RDBStorage(url)
    study = optuna.load_study(study_name="check", storage=storage)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", study, created=False)
    late = Promotion(load_experiment(experiment), study, tracker, storage, top=1, seeds=3,
                     in_process=True, storage_url=url,
                     budget=Budget(None, 1.0, trial_seconds=60.0))
    with pytest.raises(TrainingError, match="no promotion run finished"):
        late.run()
    assert "3 run(s) not started: they would end after the time budget's promotion stage" in (
        capsys.readouterr().out)
    assert len(mlflow_runs(tmp_path).children) == len(runs.children)

    again = sweep_cli(tmp_path, "run", "--experiment", experiment, "--study", "check",
                      "--budget", "1h", "--plan-only", timeout=300)
    assert again.returncode == 0, explain(again)
    assert "reused the throughput measured before" in again.stdout
    assert "counting the tokens" not in again.stdout
    assert f"({len(lines)} before)" in again.stdout


def test_the_control_is_trained_with_the_first_seeds_only(tmp_path):
    """A plan that affords the control fewer seeds: the candidates keep theirs, the control
    gets the first `control_seeds` of them."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from sweep.experiment import load_experiment
    from sweep.promote import CONTROL, Promotion

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    study.add_trial(create_trial(params={"lr": 2e-3}, value=0.7, distributions={
        "lr": FloatDistribution(1e-3, 5e-3, log=True)}))
    experiment = load_experiment(write_experiment(tmp_path))
    promotion = Promotion(experiment, study, None, storage, top=1, seeds=3, control_seeds=1)
    assert [(c.label, c.seeds) for c in promotion.candidates] == [("trial 0", 3), (CONTROL, 1)]
    assert promotion.candidates[1].config.seed == promotion.candidates[0].config.seed
    # Every configuration's first seed before any second: a budget that ends early leaves
    # each with a run.
    assert [(c.label, seed) for c, seed in promotion.runs()] == [
        ("trial 0", 42), (CONTROL, 42), ("trial 0", 43), ("trial 0", 44)]

"""`sweep run --budget`: the duration, the plan's arithmetic on given throughputs, and one
budgeted run of the tiny experiment from data to exported model."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
from sweep_helpers import error_lines, explain, mlflow_runs, sweep_cli, write_experiment

from bertclf.errors import UserError
from sweep.budget import parse_duration
from sweep.plan import PROMOTION_SHARE, Fidelity, Inputs, Rates, make_plan, promotion_ladder

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
                          full=(20000, 5000, 25000), rates=RATES, top=2, seeds=2,
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
    (and the control with two) fits its share, then as many seeds and configurations as fit
    there; the search gets the rest, and the stages add up to the budget."""
    plan = make_plan(inputs(150))
    left = 150 * 60 - 30 - plan.inputs.export_seconds
    ladder = promotion_ladder(plan.inputs)
    step = ladder.index(plan.fidelity)
    assert 0 < step < len(ladder) - 1

    def scoring(f: Fidelity) -> float:  # the final scoring grows with the length
        return 25000 / RATES[f.seq_len].eval + plan.inputs.overhead

    def cost(f: Fidelity, runs: int) -> float:
        return runs * f.seconds(RATES[f.seq_len], plan.inputs.overhead) + scoring(f) - scoring(
            ladder[0])

    share = PROMOTION_SHARE * (left - scoring(ladder[0]))
    assert cost(plan.fidelity, plan.runs) <= share < cost(ladder[step + 1], 2 * 2)
    more_seeds = (plan.top + 1) * (plan.seeds + 1)
    assert plan.seeds == plan.inputs.seeds or cost(plan.fidelity, more_seeds) > share
    assert plan.promotion_seconds == pytest.approx(
        cost(plan.fidelity, plan.runs) - scoring(plan.fidelity) + scoring(ladder[0]))
    total = sum(stage.seconds for stage in plan.stages())
    assert total == pytest.approx(150 * 60)
    assert plan.trials == int(plan.search_seconds // plan.trial_seconds)
    assert plan.runs == (plan.top + 1) * plan.seeds  # the control, with the same seeds


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


def test_a_budgeted_run_exports_within_its_budget(tmp_path):
    """The tiny experiment (its length listed: the promotion stays at the space's longest, so
    no longer length is measured) from data to exported model within the budget plus one
    trial; the plan and what each stage took are on the parent run; a second command reuses
    the measured throughput."""
    experiment = write_experiment(tmp_path)
    experiment.write_text(experiment.read_text().replace("seq_len = 32", "seq_len = [32]"))
    run = sweep_cli(tmp_path, "run", "--experiment", experiment, "--study", "check",
                    "--budget", f"{BUDGET_MINUTES}m", timeout=900)
    assert run.returncode == 0, explain(run)
    assert "the plan (estimated minutes)" in run.stdout
    assert "measured examples/s (training / evaluation): length 32: " in run.stdout
    assert "measuring 1 encoder/length setting(s)" in run.stdout
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

    again = sweep_cli(tmp_path, "run", "--experiment", experiment, "--study", "check",
                      "--budget", "1h", "--plan-only", timeout=300)
    assert again.returncode == 0, explain(again)
    assert "reused the throughput measured before" in again.stdout
    assert f"({len(lines)} before)" in again.stdout

"""Print README's budgeted IMDB table from what `experiments/imdb_budget.sh` left in OUT_DIR:
the plan and what each stage took (budget.json on the study's parent run), the search and
promotion results, the control arm, and the exported model's score on all test reviews.

Usage: python experiments/imdb_budget_report.py OUT_DIR
"""

import json
import math
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import optuna  # noqa: E402
from imdb_sweep_report import cpu, minutes  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

STUDY = "imdb-budget"


def budget_record(client: MlflowClient, study: optuna.Study, out: Path) -> dict:
    """The parent run's budget.json: the plan, its estimates and the stages' actual times."""
    run_id = study.user_attrs["mlflow_parent_run_id"]
    return json.loads(Path(client.download_artifacts(run_id, "budget.json", str(out)))
                      .read_text())


def mean_se(values: list[float]) -> str:
    """`0.9210 ± 0.0016` (mean ± standard error over seeds; the mean alone for one seed)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.4f} (1 seed)"
    return f"{mean:.4f} ± {statistics.stdev(values) / math.sqrt(len(values)):.4f}"


def main(out: Path) -> None:
    stamps = {k: int(v) for k, v in (line.split() for line in
                                     (out / "times.txt").read_text().splitlines())}
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{out / 'optuna.db'}")
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    record = budget_record(client, study, out)
    card = json.loads((out / "exported" / STUDY / "model_card.json").read_text())
    promotion, final = card["promotion"], json.loads((out / "test.json").read_text())
    states = [t.state.name for t in study.trials]
    best = study.best_trial
    stages, actual = record["stages"], record["actual_seconds"]
    actual["final scoring"] = stamps["evaluate"] - stamps["sweep"]
    control = promotion.get("control")
    results = {
        "search": f"{states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned, "
                  f"{states.count('FAIL')} failed; best validation {best.value:.4f} "
                  f"(trial {best.number})",
        "promotion": f"winner trial {promotion['trial']}, seeds {promotion['seeds']}: "
                     f"validation "
                     f"{mean_se(promotion['val_accuracy'])}, test "
                     f"{mean_se(promotion['test_accuracy'])} (± standard error over seeds)",
        "final scoring": f"**{final['accuracy']:.4f}** on all {final['examples']:,} test "
                         "reviews",
    }
    print("| stage | planned | actual | what | result |")
    print("|---|---|---|---|---|")
    for name, stage in stages.items():
        took = actual.get(name)
        print(f"| {name} | {minutes(stage['seconds'])} | "
              f"{minutes(took) if took is not None else '-'} | {stage['detail']} | "
              f"{results.get(name, '')} |")
    if control:
        same = "the same seeds as the winner" if len(control["seeds"]) == len(
            promotion["seeds"]) else (f"{len(control['seeds'])} of the winner's "
                                      f"{len(promotion['seeds'])} seeds: the budget afforded "
                                      "no more")
        m = promotion["margin"]
        print(f"\nControl (the defaults at the promotion fidelity, {same}): validation "
              f"{mean_se(control['val_accuracy'])}, test {mean_se(control['test_accuracy'])}; "
              f"the winner's margin: validation {m['val_accuracy']:+.4f} ± "
              f"{m['val_accuracy_se']:.4f}, test {m['test_accuracy']:+.4f} ± "
              f"{m['test_accuracy_se']:.4f} (± standard error).")
    total = stamps["evaluate"] - stamps["start"]
    budget = record["budget_seconds"]
    print(f"\nChosen configuration: {json.dumps(card['params'])}")
    print(f"Whole script: {minutes(total)} for a budget of {minutes(budget)} "
          f"({'within' if total <= budget else 'OVER'}), on {cpu()}; "
          f"target >= 0.92: {'met' if final['accuracy'] >= 0.92 else 'missed'}.")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

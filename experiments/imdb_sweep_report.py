"""Print README's IMDB sweep table from what `experiments/imdb_sweep.sh` left in OUT_DIR:
the Optuna study, the MLflow runs, the stage times, the model card and the final test score.

Usage: python experiments/imdb_sweep_report.py OUT_DIR
"""

import json
import os
import re
import sys
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient

STUDY = "imdb-minilm"


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def data_sizes(log: Path) -> dict[str, int]:
    """The split sizes a stage's log reports ("sweep: data train=N validation=N test=N")."""
    found = re.search(r"sweep: data train=(\d+) validation=(\d+) test=(\d+)", log.read_text())
    return dict(zip(("train", "validation", "test"), map(int, found.groups()), strict=True))


def cpu() -> str:
    from sweep.devices import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} cores"


def main(out: Path) -> None:
    stamps = dict(line.split() for line in (out / "times.txt").read_text().splitlines())
    stamps = {k: int(v) for k, v in stamps.items()}
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{out / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    best = study.best_trial
    card = json.loads((out / "model" / "model_card.json").read_text())
    promotion = card["promotion"]
    final = json.loads((out / "test.json").read_text())
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    chosen = client.get_run(promotion["run_id"])
    params = chosen.data.params
    # Stage 2's time is its finished runs' own: a promote that was killed and continued
    # (as `sweep promote` allows) would otherwise count the gap and the lost run.
    promotion_runs = [r for r in client.search_runs([chosen.info.experiment_id],
                                                    "tags.`sweep.stage` = 'promotion'")
                      if r.info.status == "FINISHED"]
    stage2_seconds = sum(r.info.end_time - r.info.start_time for r in promotion_runs) / 1000
    stage1_seconds = stamps["stage1"] - stamps["start"]
    scoring_seconds = stamps["evaluate"] - stamps["stage2"]
    search, full = data_sizes(out / "stage1.log"), data_sizes(out / "stage2.log")
    stage1 = (f"1. search: {len(states)} trials, {search['train']:,} training reviews, "
              f"length {best.user_attrs.get('fixed.seq_len', '?')}, up to "
              f"{best.user_attrs.get('fixed.epochs', '?')} epochs, median pruning")
    stage2 = (f"2. promotion: top {len(promotion['candidates'])} x "
              f"{len(promotion['seeds'])} seeds, {full['train']:,} training reviews, "
              f"length {params['seq_len']}, {params['epochs']} epoch(s)")
    rows = [
        ("stage", "runs", "wall time", "best validation accuracy",
         "test accuracy of the chosen model"),
        (stage1, f"{states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned, "
                 f"{states.count('FAIL')} failed", minutes(stage1_seconds),
         f"{best.value:.4f} (trial {best.number}, {search['validation']:,} reviews)",
         f"{best.user_attrs['test_accuracy']:.4f} (its own, {search['test']:,} reviews)"),
        (stage2, f"{len(promotion['candidates']) * len(promotion['seeds'])}",
         f"{minutes(stage2_seconds)} (its runs)",
         f"{promotion['val_accuracy_mean']:.4f} ± {promotion['val_accuracy_std']:.4f} "
         f"(trial {promotion['trial']}, mean ± sd over seeds, {full['validation']:,} reviews)",
         f"{promotion['test_accuracy_mean']:.4f} ± {promotion['test_accuracy_std']:.4f} "
         f"({full['test']:,} reviews per seed)"),
        ("the chosen model (seed " f"{promotion['best_seed']}) scored once", "1",
         minutes(scoring_seconds), "-",
         f"**{final['accuracy']:.4f}** (all {final['examples']:,} test reviews)"),
    ]
    for row in rows:
        print("| " + " | ".join(row) + " |")
        if row is rows[0]:
            print("|" + "---|" * len(row))
    print()
    print(f"Chosen configuration: {json.dumps(card['params'])}")
    print(f"The chosen model's own training: "
          f"{minutes(chosen.data.metrics['train_seconds'])}; the three stages together: "
          f"{minutes(stage1_seconds + stage2_seconds + scoring_seconds)}, on {cpu()}.")
    for r in sorted(promotion_runs, key=lambda r: r.info.start_time):
        print(f"- {r.info.run_name}: training {minutes(r.data.metrics['train_seconds'])}, "
              f"validation {r.data.metrics['val_accuracy']:.4f}, "
              f"test {r.data.metrics['test_accuracy']:.4f}")
    for c in promotion["candidates"]:
        print(f"- promoted trial {c['trial']}: validation {c['val_accuracy_mean']:.4f} ± "
              f"{c['val_accuracy_std']:.4f}, test {c['test_accuracy_mean']:.4f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

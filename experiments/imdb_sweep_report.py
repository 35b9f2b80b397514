"""Print README's IMDB sweep table from what `experiments/imdb_sweep.sh` left in OUT_DIR:
the Optuna study, the MLflow runs, the stage times, the model card and the final test score.

Usage: python experiments/imdb_sweep_report.py OUT_DIR
"""

import json
import os
import platform
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
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return f"{platform.processor()}, {os.cpu_count()} cores"


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
                 f"{states.count('FAIL')} failed", minutes(stamps["stage1"] - stamps["start"]),
         f"{best.value:.4f} (trial {best.number}, {search['validation']:,} reviews)",
         f"{best.user_attrs['test_accuracy']:.4f} (its own, {search['test']:,} reviews)"),
        (stage2, f"{len(promotion['candidates']) * len(promotion['seeds'])}",
         minutes(stamps["stage2"] - stamps["stage1"]),
         f"{promotion['val_accuracy_mean']:.4f} ± {promotion['val_accuracy_std']:.4f} "
         f"(trial {promotion['trial']}, mean ± sd over seeds, {full['validation']:,} reviews)",
         f"{promotion['test_accuracy_mean']:.4f} ± {promotion['test_accuracy_std']:.4f} "
         f"({full['test']:,} reviews per seed)"),
        ("the chosen model (seed " f"{promotion['best_seed']}) scored once", "1",
         minutes(stamps["evaluate"] - stamps["stage2"]), "-",
         f"**{final['accuracy']:.4f}** (all {final['examples']:,} test reviews)"),
    ]
    for row in rows:
        print("| " + " | ".join(row) + " |")
        if row is rows[0]:
            print("|" + "---|" * len(row))
    print()
    print(f"Chosen configuration: {json.dumps(card['params'])}")
    print(f"The chosen model's own training: "
          f"{minutes(chosen.data.metrics['train_seconds'])}; the whole script: "
          f"{minutes(stamps['evaluate'] - stamps['start'])}, on {cpu()}.")
    for c in promotion["candidates"]:
        print(f"- promoted trial {c['trial']}: validation {c['val_accuracy_mean']:.4f} ± "
              f"{c['val_accuracy_std']:.4f}, test {c['test_accuracy_mean']:.4f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

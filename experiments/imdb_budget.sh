#!/usr/bin/env bash
# README's budgeted IMDB run: one `sweep run --budget` from the data to an exported MiniLM
# model (it measures this machine, plans search, promotion with the control arm and export,
# and runs them), then the exported model scored once on all 25,000 test reviews. The
# experiment file lists only the search space. Within 150 minutes on 2 CPU cores, the scoring
# included (the plan reserves it). Usage: bash experiments/imdb_budget.sh [OUT_DIR]
# ($BUDGET replaces 150m, $EXPERIMENT experiments/imdb_budget.toml, e.g. for a dry run;
# PLAN_ONLY=1 prints the plan and stops.)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
experiment=$(realpath "${EXPERIMENT:-$root/experiments/imdb_budget.toml}")
out=$(realpath -m "${1:-$root/runs/imdb-budget}")
data=$(realpath "$root/../shared/data/aclImdb_v1_labeled.tar.gz")
mkdir -p "$out" && cd "$out"   # optuna.db, mlflow.db, mlruns/ and exported/ land here
study=imdb-budget
run=(python -m sweep run --budget "${BUDGET:-150m}" --experiment "$experiment" --study "$study"
     --control)
if [[ -n "${PLAN_ONLY:-}" ]]; then
    exec "${run[@]}" --plan-only
fi
stamp() { echo "$1 $(date +%s)" >> times.txt; }

: > times.txt
stamp start
"${run[@]}" 2>&1 | tee sweep.log
stamp sweep
python -m bertclf evaluate "exported/$study" --data "$data" --json test.json 2>&1 | tee evaluate.log
stamp evaluate
python "$root/experiments/imdb_budget_report.py" "$out" | tee table.md

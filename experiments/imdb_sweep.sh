#!/usr/bin/env bash
# README's IMDB sweep table: stage 1 searches MiniLM configurations on a subset of IMDB with
# median pruning, stage 2 promotes the two best over two seeds on all 20,000 training reviews
# (chosen on validation only), and the chosen model is scored once on all 25,000 test reviews.
# About 4-5 hours on 2 CPU cores. Usage: bash experiments/imdb_sweep.sh [OUT_DIR]
# ($EXPERIMENT replaces experiments/imdb_minilm.toml, e.g. for a small dry run.)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
experiment=$(realpath "${EXPERIMENT:-$root/experiments/imdb_minilm.toml}")
out=$(realpath -m "${1:-$root/runs/imdb-sweep}")
data=$(realpath "$root/../shared/data/aclImdb_v1_labeled.tar.gz")
mkdir -p "$out" && cd "$out"   # optuna.db, mlflow.db and mlruns/ land here
study=imdb-minilm
stamp() { echo "$1 $(date +%s)" >> times.txt; }

: > times.txt
stamp start
python -m sweep run --experiment "$experiment" --study "$study" 2>&1 | tee stage1.log
stamp stage1
python -m sweep promote --study "$study" 2>&1 | tee stage2.log
stamp stage2
python -m sweep best --study "$study" --export model --force 2>&1 | tee best.log
python -m bertclf evaluate model --data "$data" --json test.json 2>&1 | tee evaluate.log
stamp evaluate
python "$root/experiments/imdb_sweep_report.py" "$out" | tee table.md

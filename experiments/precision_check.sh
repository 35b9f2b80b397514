#!/usr/bin/env bash
# Re-measures README's mixed_bfloat16 vs float32 comparison on the pretrained MiniLM: the same
# run (2,000 IMDB training reviews, 1 epoch, length 128, lr 8e-5, seed 42) in each precision,
# one after the other; prints each run's training time and accuracies. About 10 minutes on 2
# cores. Usage: bash experiments/precision_check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/precision-check}
for precision in float32 mixed_bfloat16; do
    python -m bertclf train --data ../shared/data/aclImdb_v1_labeled.tar.gz --encoder minilm \
        --max-train-examples 2000 --max-val-examples 500 --max-test-examples 2000 \
        --seq-len 128 --batch-size 32 --epochs 1 --lr 8e-5 --seed 42 \
        --precision "$precision" --out "$out/$precision" --force > "$out-$precision.log" 2>&1
done
python - "$out" <<'PY'
import json, sys
rows = {p: json.load(open(f"{sys.argv[1]}/{p}/metrics.json")) for p in ("float32", "mixed_bfloat16")}
for p, m in rows.items():
    print(f"{p:15} train {m['train_seconds']:6.1f} s  val_accuracy {m['val_accuracy']:.4f}  "
          f"test_accuracy {m['test_accuracy']:.4f}")
ratio = rows["float32"]["train_seconds"] / rows["mixed_bfloat16"]["train_seconds"]
print(f"mixed_bfloat16 speed-up: {ratio:.2f}x")
PY
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | xargs)
echo "wall time: $((SECONDS / 60)) min $((SECONDS % 60)) s, on $cpu, $(nproc) cores"

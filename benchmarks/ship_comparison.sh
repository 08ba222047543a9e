#!/usr/bin/env bash
# The RANet-against-MSDNet comparison, end to end and resumable: two training runs with one
# recipe and split -> shipped checkpoints and bundles -> benchmarks/ranet_vs_msdnet.py.
#   bash benchmarks/ship_comparison.sh build/data/cifar10/train [EPOCHS]
# Re-running it resumes unfinished training runs (runs/cmp-*) and redoes the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=$1
EPOCHS=${2:-15}
BIN=.venv/bin
OUT=benchmarks/comparison
RECIPE=(--epochs "$EPOCHS" --batch-size 128 --lr 0.1 --schedule cosine --weight-decay 5e-4 --nesterov
        --val-size 5000 --seed 0 --threads 1 --resume)
# The two runs share the machine: one thread each, side by side.
mkdir -p runs
$BIN/ranet-edge train --data "$DATA" --preset cifar10-w8 --out runs/cmp-ranet-w8-$EPOCHS "${RECIPE[@]}" \
    >> runs/cmp-ranet-w8-$EPOCHS.log 2>&1 &
$BIN/ranet-edge train --data "$DATA" --preset msdnet-cifar10-w6 --out runs/cmp-msdnet-w6-$EPOCHS "${RECIPE[@]}" \
    >> runs/cmp-msdnet-w6-$EPOCHS.log 2>&1 &
wait
mkdir -p "$OUT"
for pair in "ranet runs/cmp-ranet-w8-$EPOCHS" "msdnet runs/cmp-msdnet-w6-$EPOCHS"; do
  set -- $pair
  $BIN/python - "$2/best.pt" "$OUT/$1.pt" <<'PY'
import sys
from pathlib import Path
import torch
from ranet_edge.train import save_atomic
ck = torch.load(sys.argv[1], weights_only=True)
keep = {k: ck[k] for k in ("format", "version", "config", "model", "epoch", "best_prec1", "val_acc",
                           "classes", "history", "train_options")}
save_atomic(keep, Path(sys.argv[2]))
print(sys.argv[2], "epoch", ck["epoch"], "val top-1 per exit", ck["val_acc"])
PY
  tr '\r' '\n' < "$2.log" | grep -v '^epoch [0-9]*/' > "$OUT/$1-train.log"
  $BIN/ranet-edge export "$OUT/$1.pt" -o "$OUT/$1.bundle" --force > /dev/null
done
$BIN/python benchmarks/ranet_vs_msdnet.py --ranet "$OUT/ranet.bundle" --msdnet "$OUT/msdnet.bundle" \
    --data "$DATA" --holdout 5000 --every 2

#!/usr/bin/env bash
# Turns a finished training run into the bundled default model and refreshes every figure:
#   bash benchmarks/ship_default_model.sh runs/w8-50 build/data/cifar10/train
# 1. best.pt without optimizer state -> ranet_edge/assets/default.pt
# 2. export with --monolithic -> ranet_edge/assets/default-bundle, with operating points
#    calibrated on the run's 5,000-image validation split, and a ladder of 8 (`calibrate --ladder 8`)
#    on the same split
# 3. benchmarks/run_all.sh and the docs tables (benchmarks/readme_tables.py)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=$1
DATA=$2
BIN=.venv/bin
$BIN/python - "$RUN" <<'PY'
import sys
from pathlib import Path
import torch
from ranet_edge.train import save_atomic
ck = torch.load(Path(sys.argv[1]) / "best.pt", weights_only=True)
keep = {k: ck[k] for k in ("format", "version", "config", "model", "epoch", "best_prec1", "val_acc",
                           "classes", "history", "train_options")}
save_atomic(keep, Path("ranet_edge/assets/default.pt"))
print("default.pt: epoch", ck["epoch"], "val top-1 per exit", ck["val_acc"])
PY
cp "$RUN/train.log" benchmarks/results/default-model-train.log
B=ranet_edge/assets/default-bundle
$BIN/ranet-edge export ranet_edge/assets/default.pt -o "$B" --monolithic --force > /dev/null
FINAL=$($BIN/python -c "import torch; print(torch.load('ranet_edge/assets/default.pt', weights_only=True)['val_acc'][-1] / 100)")
$BIN/ranet-edge calibrate "$B" --data "$DATA" --holdout 5000 --p 0.5 --name p0.5 > /dev/null
$BIN/ranet-edge calibrate "$B" --data "$DATA" --holdout 5000 --target-accuracy "$FINAL" --name iso-accuracy-t --temperature
$BIN/ranet-edge calibrate "$B" --data "$DATA" --holdout 5000 --target-accuracy "$FINAL" --name iso-accuracy --default
# the ladder `serve --slo-ms` moves along, fitted on the same split: fitted on the shipped 500 images,
# its thresholds would sit exactly on some of their confidences, and the JS driver's float math
# (not numpy's float32 exp) could not be checked against Python on those ties
$BIN/ranet-edge calibrate "$B" --data "$DATA" --holdout 5000 --ladder 8
bash benchmarks/run_all.sh "$DATA"
$BIN/python benchmarks/readme_tables.py

#!/usr/bin/env bash
# Regenerates every file in benchmarks/results/ for the bundled default model.
# Usage: bash benchmarks/run_all.sh [DATA]   (DATA: the CIFAR-10 ImageFolder the model was
# trained on; its seeded 5,000-image validation split is used. Without it, the 500 shipped
# held-out images are used.) Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DATA=${1:-}
[ -n "$DATA" ] && DATA=$(realpath "$DATA")
B=build/bench/default
R=benchmarks/results
mkdir -p "$R" build/bench
rm -rf "$B" && cp -r ranet_edge/assets/default-bundle "$B"   # the shipped bundle, with its operating points
DATA_ARGS=()
[ -n "$DATA" ] && DATA_ARGS=(--data "$DATA" --holdout 5000)
$BIN/ranet-edge eval "$B" "${DATA_ARGS[@]}" --json "$R/eval.json" --plot "$R/eval.png" | tee "$R/eval.txt"
$BIN/ranet-edge bench "$B" --threads 1 --json "$R/bench.json" | tee "$R/bench.txt"
$BIN/ranet-edge export ranet_edge/assets/default.pt -o "$B-sub" --granularity subnetwork --monolithic --force > /dev/null
$BIN/ranet-edge export tests/data/cifar10-c1.pth -o build/bench/c1 --monolithic --force > /dev/null   # RANet C-1 (golden weights)
cd benchmarks
../$BIN/python chain_overhead.py --bundle "../$B" --out results/chain_overhead.json
../$BIN/python chain_overhead.py --bundle "../$B-sub" --out results/chain_overhead_subnetwork.json
../$BIN/python chain_overhead.py --bundle ../build/bench/c1 --out results/chain_overhead_c1.json
../$BIN/python adaptive_speedup.py --bundle "../$B" --ckpt ../ranet_edge/assets/default.pt \
    ${DATA:+--data "$DATA" --holdout 5000} --out results/adaptive_speedup.json
../$BIN/python threads_sweep.py --bundle "../$B" --out results/threads_sweep.json
../$BIN/python runtime_footprint.py --bundle "../$B" --out results/runtime_footprint.json
# the same for a regular install (the development .venv is editable, and pip's editable finder costs import time)
rm -rf ../build/bench/installed && python3 -m venv ../build/bench/installed
../build/bench/installed/bin/python -m pip install --quiet -c ../constraints.txt "..[cpu]"
../build/bench/installed/bin/python runtime_footprint.py --bundle "../$B" --out results/runtime_footprint_installed.json
../$BIN/python predict_memory.py --bundle "../$B" ${DATA:+--data "$DATA"} --out results/predict_memory.json
../$BIN/python predict_memory.py --bundle "../$B" ${DATA:+--data "$DATA"} --images 16384 --cases load,predict,run_all \
    --out results/predict_memory_16k.json
../$BIN/python edge_formats.py --bundle "../$B" ${DATA:+--data "$DATA" --holdout 5000} --out results/edge_formats.json
../$BIN/python edge_formats.py --bundle ../build/bench/c1 ${DATA:+--data "$DATA" --holdout 5000} --work ../build/bench/edge-c1 --out results/edge_formats_c1.json
../$BIN/python serve_load.py --out results/serve_load.json   # wrk; starts and stops its own servers and local Ray
../$BIN/python serve_ray_internals.py --out results/serve_ray_internals.json
../$BIN/python op_profile.py --bundle "../$B" --bundle ../build/bench/edge/int8 --batch 1 --out results/op_profile_b1.json
../$BIN/python op_profile.py --bundle "../$B" --bundle ../build/bench/edge/int8 --batch 64 --runs 60 --out results/op_profile_b64.json
../$BIN/python op_profile.py --bundle ../build/bench/c1 --batch 1 --out results/op_profile_c1_b1.json

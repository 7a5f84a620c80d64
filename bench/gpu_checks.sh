#!/usr/bin/env bash
# Everything that needs a GPU, in one go: the GPU tests, the throughput table (VGG-16 with the
# 8-trial packing rows first, then VGG-11 and ResNet-18), the analysis speeds. Each step's log and
# the CSV tables land in LOGDIR (default runs/gpu); a failing step does not stop the later ones.
# Usage: bash bench/gpu_checks.sh [LOGDIR]
set -u
cd "$(dirname "$0")/.."
out=${1:-runs/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
step() { local name=$1; shift; echo "== $name: $*"; "$@" 2>&1 | tee "$out/$name.log"; }
step test_gpu python3 -m pytest -q -ra -p no:cacheprovider tests/test_gpu.py
step throughput_vgg16 python3 bench/throughput.py --models vgg16 --batches 100 5000 --pack 8 \
    --csv "$out/throughput_vgg16.csv"
step throughput_others python3 bench/throughput.py --models vgg11 resnet18 --batches 100 5000 --pack 0 \
    --csv "$out/throughput_others.csv"
step analysis_speed python3 bench/analysis_speed.py

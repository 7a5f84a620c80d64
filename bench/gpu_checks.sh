#!/usr/bin/env bash
# Everything that needs a GPU, as named steps, each under its own time limit (a step that fails or runs
# out of time does not stop the later ones). Each step's log and the CSV tables land in LOGDIR.
#   tests       the GPU tests (tests/test_gpu.py)
#   vgg16       throughput: VGG-16 at bs 100 and 5000, plain recipe vs heurbench, and the 8-trial packing rows
#   others      throughput: VGG-11 and ResNet-18 at bs 100 and 5000
#   profile     torch.profiler of VGG-16 steps: bs 100, a pack of 8 at bs 100, bs 5000 (top kernels, idle share)
#   analysis    the analyses' speed (bench/analysis_speed.py)
#   s3          S3 at paper scale, 30 epochs (sweeps/gpu/s3_30ep.yaml) and its report; LOGDIR/s3.tar.gz
#   s3fp32      its large-batch runs in fp32 without compile (sweeps/gpu/s3_30ep_fp32.yaml); LOGDIR/s3fp32.tar.gz
#   s3bn        S3 as in s3 with BN in VGG-11 (sweeps/gpu/s3_30ep_bn.yaml) and its report; LOGDIR/s3bn.tar.gz
#   s3keskar    S3 as in s3 with the authors' VGG-11 (sweeps/gpu/s3_30ep_keskar.yaml) and its report; LOGDIR/s3keskar.tar.gz
# Usage: bash bench/gpu_checks.sh LOGDIR [STEP...]   (default: tests vgg16 others profile analysis)
set -u
cd "$(dirname "$0")/.."
out=${1:-runs/gpu}
shift || true
steps=${*:-tests vgg16 others profile analysis}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
run() {  # run NAME SECONDS CMD...: CMD's output to the screen and LOGDIR/NAME.log
    local name=$1 limit=$2 t=$SECONDS
    shift 2
    echo "== $name (limit $limit s): $*"
    timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$out/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t)) s"
}
for s in $steps; do
    case $s in
    tests) run tests 150 python3 -m pytest -q -ra -p no:cacheprovider tests/test_gpu.py ;;
    vgg16) run vgg16 200 python3 bench/throughput.py --models vgg16 --batches 100 5000 --pack 8 \
               --csv "$out/throughput_vgg16.csv" ;;
    others) run others 150 python3 bench/throughput.py --models vgg11 resnet18 --batches 100 5000 --pack 0 \
                --csv "$out/throughput_others.csv" ;;
    profile) for args in "--batch 100" "--batch 100 --pack 8" "--batch 5000 --iters 40 --active 10"; do
                 run profile 45 python3 bench/profile_trial.py --model vgg16 $args
             done ;;
    analysis) run analysis 60 python3 bench/analysis_speed.py ;;
    s3) run s3 300 python3 bench/sweep_one_gpu.py sweeps/gpu/s3_30ep.yaml --out runs
        run s3 120 python3 -m heurbench.cli report runs/s3_gpu_30ep --inputs 2000
        tar czf "$out/s3.tar.gz" --exclude=ckpt --exclude=.tune -C runs s3_gpu_30ep ;;
    s3fp32) run s3fp32 300 python3 bench/sweep_one_gpu.py sweeps/gpu/s3_30ep_fp32.yaml --out runs
            tar czf "$out/s3fp32.tar.gz" --exclude=ckpt -C runs s3_gpu_30ep_fp32 ;;
    s3bn) run s3bn 300 python3 bench/sweep_one_gpu.py sweeps/gpu/s3_30ep_bn.yaml --out runs
          run s3bn 120 python3 -m heurbench.cli report runs/s3_gpu_30ep_bn --inputs 2000
          tar czf "$out/s3bn.tar.gz" --exclude=ckpt --exclude=.tune -C runs s3_gpu_30ep_bn ;;
    s3keskar) run s3keskar 300 python3 bench/sweep_one_gpu.py sweeps/gpu/s3_30ep_keskar.yaml --out runs
              run s3keskar 120 python3 -m heurbench.cli report runs/s3_gpu_30ep_keskar --inputs 2000
              tar czf "$out/s3keskar.tar.gz" --exclude=ckpt --exclude=.tune -C runs s3_gpu_30ep_keskar ;;
    *) echo "unknown step $s (expected tests vgg16 others profile analysis s3 s3fp32 s3bn s3keskar)"; exit 2 ;;
    esac
done

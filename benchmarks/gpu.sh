#!/usr/bin/env bash
# The GPU check, one script for when a GPU is lent (about 8 minutes on one H200):
#   1. training and sampling throughput of lgm's models with float32 and with bf16 networks, and the
#      training step's peak GPU memory (benchmarks/precision.py, including the paper-size Glow);
#   2. the paper-size Glow (K = 32, width 512) trained on MNIST for a few minutes with bf16 networks,
#      then its test bits/dim.
# Writes OUT/machine.txt, OUT/precision.md, OUT/runs/ and OUT/test.txt.
#
#   LGM_DATA_DIR=path/to/data bash benchmarks/gpu.sh [OUT]          # on the GPU machine
#   GPU_CHECK_SMOKE=1 LGM_DATA_DIR=... bash benchmarks/gpu.sh OUT    # the same steps on the CPU, tiny, in seconds
#
# GPU_CHECK_MINUTES sets the training time (default 5). The normflows comparison stays CPU-only
# (benchmarks/train_throughput.py, benchmarks/sampling.py).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
mkdir -p "$out"
minutes=${GPU_CHECK_MINUTES:-5}
if [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then
  device=cpu accelerator=cpu repeats=1 models=(glow-fashion)
  glow=(--model.flow.init_args.flow_steps 1 --model.flow.init_args.width 8 --trainer.max_steps 3
        --trainer.limit_val_batches 2 --trainer.limit_test_batches 2 --model.init_samples 64)
else
  device=cuda accelerator=gpu repeats=5 models=(glow-fashion glow-32 fm-fashion glow-paper)
  glow=(--model.flow.init_args.flow_steps 32 --model.flow.init_args.width 512)
fi
{
  date -u +%Y-%m-%dT%H:%MZ
  python -c "from lgm.utils.hardware import machine_line; print(machine_line('$device'))"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
} | tee "$out/machine.txt"
python -m benchmarks.precision --device "$device" --repeats "$repeats" --models "${models[@]}" | tee "$out/precision.md"
settings=(--config configs/glow_mnist.yaml "${glow[@]}" --trainer.accelerator "$accelerator" --trainer.devices 1)
lgm-flow fit "${settings[@]}" --model.network_precision auto --trainer.max_time "00:00:$(printf %02d "$minutes"):00" \
  --trainer.default_root_dir "$out/runs" --trainer.enable_progress_bar false
run=$(ls -d "$out"/runs/lgm/*/ | tail -n 1)
lgm-flow test "${settings[@]}" --model.network_precision auto --trainer.default_root_dir "$out/runs" \
  --ckpt_path "${run}checkpoints/last.ckpt" --trainer.enable_progress_bar false | tee "$out/test.txt"

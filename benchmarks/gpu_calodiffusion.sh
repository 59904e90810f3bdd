#!/usr/bin/env bash
# CaloDiffusion on a GPU machine (NVIDIA, Vulkan driver): timings of caloforge (burn's Vulkan
# backend) beside PyTorch (CUDA), then a training run on simulator data and generation with
# 50/100/200/400 DDPM steps for evaluation elsewhere.
#
# usage: benchmarks/gpu_calodiffusion.sh CALOFORGE_BINARY OUT_DIR [TRAIN_MINUTES] [N_GEN]
#   CALOFORGE_BINARY built with `cargo build --release --features gpu`.
# Stages can be skipped with SKIP_BENCH=1, SKIP_TRAIN=1; STEPS="50 100" picks the sampling step
# counts; MODEL=DIR generates with that model instead of training one; BATCH (default 100) is
# the generation batch. The Vulkan loader must be installed (libvulkan1); the run of the README
# table carried Debian's .deb and unpacked it first.
set -u
B=$1
OUT=$2
MIN=${3:-5}
NGEN=${4:-1500}
STEPS=${STEPS:-50 100 200 400}
mkdir -p "$OUT/g" "$OUT/w"
W=$OUT/w
log() { echo "[$(date +%T)] $*"; }
nvidia-smi -L
if [ -z "${SKIP_BENCH:-}" ]; then
  log "caloforge bench (Vulkan)"
  timeout 240 "$B" --device gpu bench --preset calodiffusion-ds2 --sampler ddpm --steps 100,400 \
    --batch 1,10,100 --min-seconds 0 --out "$OUT/bench_gpu.json" 2>&1 | tail -12
  log "PyTorch bench (CUDA)"
  timeout 180 python3 benchmarks/calodiffusion_torch.py --device cuda --batches 1,10,100 \
    --steps 100,400 2>&1 | tee "$OUT/torch_gpu.txt"
fi
if [ -z "${SKIP_TRAIN:-}" ]; then
  log "simulate"
  "$B" --quiet simulate -d 2 -n "$NGEN" --seed 202 -o "$W/ref.h5" | tail -2
  if [ -z "${MODEL:-}" ]; then
    "$B" --quiet simulate -d 2 -n 30000 --seed 101 -o "$W/train.h5" | tail -2
    sha256sum "$W/train.h5" "$W/ref.h5"
    log "train ${MIN} min"
    "$B" --device gpu --quiet train --preset calodiffusion-ds2 --data "$W/train.h5" \
      --out "$W/run" --max-minutes "$MIN" 2>&1 | tail -5
    MODEL=$W/run
  fi
  for s in $STEPS; do
    log "generate $s steps"
    timeout 400 "$B" --device gpu --quiet generate --model "$MODEL" --energies-from "$W/ref.h5" \
      --sampler ddpm --steps $s --batch ${BATCH:-100} --seed 7 --out "$OUT/g/gen_$s.h5" 2>&1 | tail -2
    mv "$OUT/g/gen_$s.json" "$W/" 2>/dev/null
  done
  rm -f "$W/train.h5" "$W/ref.h5"
  tar -C "$W" -czf "$OUT/run.tgz" .
  rm -rf "$W"
fi
log done

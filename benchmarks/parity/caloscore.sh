#!/usr/bin/env bash
# CaloScore v1 (dataset 2) parity: caloforge vs the PyTorch rewrite of ViniciusMikuni/CaloScore
# (caloscore_reference.py: the reference's score network, SDE, preprocessing, denoising score
# matching loss and Adam) on the same simulator file, split, batch and optimizer steps, three
# seeds each, one thread each, with the protocol of calodiffusion.sh (same variables: N, BATCH,
# EPOCHS, VALFRAC, SEEDS, MAXSHOWERS, FORCE). PRESET=caloscore-ds2 (VP, default),
# caloscore-ds2-subvp or caloscore-ds2-ve.
# usage: benchmarks/parity/caloscore.sh [WORKDIR]
set -euo pipefail
MODEL=caloscore PRESET=${PRESET:-caloscore-ds2} exec "$(dirname "$0")/calodiffusion.sh" "$@"

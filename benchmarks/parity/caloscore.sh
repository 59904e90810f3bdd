#!/usr/bin/env bash
# CaloScore v1 (dataset 2) parity: caloforge vs the PyTorch rewrite of ViniciusMikuni/CaloScore
# (caloscore_reference.py: the reference's score network, SDE, preprocessing, denoising score
# matching loss and Adam) on the same simulator file, split, batch and optimizer steps, three
# seeds each, one thread each, with the protocol of calodiffusion.sh (same variables: N, BATCH,
# EPOCHS, VALFRAC, SEEDS, MAXSHOWERS, FORCE). PRESET=caloscore-ds2 (VP, default),
# caloscore-ds2-subvp or caloscore-ds2-ve; a caloscore2 preset (PRESET=caloscore2-small,
# caloscore2-ds2) runs CaloScore v2 against caloscore2_reference.py instead.
# usage: benchmarks/parity/caloscore.sh [WORKDIR]
set -euo pipefail
PRESET=${PRESET:-caloscore-ds2}
case $PRESET in caloscore2-*) MODEL=caloscore2 ;; *) MODEL=caloscore ;; esac
MODEL=$MODEL PRESET=$PRESET exec "$(dirname "$0")/calodiffusion.sh" "$@"

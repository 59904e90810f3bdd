#!/usr/bin/env bash
# Generation speed, caloforge beside PyTorch + nflows, in one run (same machine, same threads,
# same architecture with untrained weights):
#   benchmarks/generation_speed.sh [student|teacher] [THREADS] [BATCHES]
# e.g. benchmarks/generation_speed.sh student 1 1,10,100,1000
# caloforge: `caloforge --threads T bench --preset icaloflow-ds2[-student] --batch B` (ms per
# shower and GFLOP/s of the network work, masked weights excluded); PyTorch:
# benchmarks/icaloflow_torch.py (the reference's flows and generation loop, float32).
set -euo pipefail
cd "$(dirname "$0")/.."
ROLE=${1:-student}
THREADS=${2:-1}
BATCHES=${3:-1,10,100,1000}
CF=target/release/caloforge
[ -x "$CF" ] || cargo build --release -p caloforge
PRESET=icaloflow-ds2
TORCH_FLAG=
if [ "$ROLE" = student ]; then PRESET=icaloflow-ds2-student; TORCH_FLAG=--student; fi
echo "== caloforge ($PRESET, $THREADS thread(s))"
"$CF" --threads "$THREADS" bench --preset "$PRESET" --batch "$BATCHES" --quiet
echo "== PyTorch + nflows"
python3 benchmarks/icaloflow_torch.py --threads "$THREADS" --batches "$BATCHES" $TORCH_FLAG

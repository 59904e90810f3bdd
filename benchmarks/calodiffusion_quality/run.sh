#!/usr/bin/env bash
# The CaloDiffusion dataset-2 quality run of issue 11: the paper's network (`calodiffusion-ds2`)
# trained on the CPU in resumable chunks, with a quality snapshot after every chunk, so the
# table shows how the model moves with training time.
#
#   [CHUNK_MINUTES=60] [N_GEN=2000] [STEPS=100] [THREADS=2] [PRESET=calodiffusion-ds2] \
#   [N_TRAIN=100000] [SET="KEY=VALUE ..."] benchmarks/calodiffusion_quality/run.sh OUT_DIR [CHUNKS]
#
# SET overrides preset keys (`train --set`, the same on every chunk), e.g.
# SET="validation_fraction=0.02" validates on 2k of the 100k showers instead of the paper's 10k.
#
# Data as the iCaloFlow quality table: 100k training showers (`simulate -d 2 -n 100000 --seed
# 1001`), N_GEN held-out showers (`--seed 2002`) whose energies the model generates with, and
# N_GEN more (`--seed 2003`) as the noise floor. Each call trains CHUNKS chunks (default 1) of CHUNK_MINUTES wall-clock minutes,
# continuing the run in OUT_DIR/model from its last checkpoint (`train --resume`); after each
# chunk it generates N_GEN showers with the held-out energies (ancestral DDPM with STEPS steps)
# and evaluates them against the held-out showers (`evaluate -m hist`, `cls-low`, `cls-high`
# with the official classifier settings, `fpd-kpd`) into OUT_DIR/snap_<optimizer steps>/ (with a
# copy of the model in snap_<steps>/model), then prints the table (`table.py`). A call that is interrupted continues with the next call.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?output directory}"
chunks="${2:-1}"
cf="${CF:-$here/../../target/release/caloforge}"
threads="${THREADS:-2}"
n_gen="${N_GEN:-2000}"
mkdir -p "$out"
cd "$out"
preset="${PRESET:-calodiffusion-ds2}"
[ -f ds2_100k.h5 ] || "$cf" --quiet simulate -d 2 -n "${N_TRAIN:-100000}" --seed 1001 -o ds2_100k.h5
[ -f held2002.h5 ] || "$cf" --quiet simulate -d 2 -n "$n_gen" --seed 2002 -o held2002.h5
[ -f floor2003.h5 ] || "$cf" --quiet simulate -d 2 -n "$n_gen" --seed 2003 -o floor2003.h5
ev() { # DIR FILE: one evaluation directory per mode
  for m in hist cls-low cls-high fpd-kpd; do
    [ -f "$1/$m/metrics.json" ] || "$cf" --quiet --threads "$threads" evaluate -d 2 -i "$2" \
      -r held2002.h5 -m "$m" --out "$1/$m" > "$1/$m.txt" 2>&1
  done
}
mkdir -p snap_floor && ev snap_floor floor2003.h5
sets=(); for kv in ${SET:-}; do sets+=(--set "$kv"); done
for _ in $(seq "$chunks"); do
  r=; [ -d model/checkpoints ] && r=--resume
  # Training and generation show their progress bars (ETA); the evaluations write to files.
  "$cf" --threads "$threads" train --preset "$preset" --data ds2_100k.h5 --out model \
    --seed 7 --max-minutes "${CHUNK_MINUTES:-60}" $r "${sets[@]}"
  steps=$(python3 -c "import json; print(json.load(open('model/model_card.json'))['steps'])")
  snap="snap_$steps"
  # The snapshot's model (2 MB; its card gives the table's steps, hours and loss), to sample or
  # compare later (parity/calodiffusion_same_weights.py).
  mkdir -p "$snap/model" && cp model/*.safetensors model/config.toml model/model_card.json "$snap/model/"
  [ -f "$snap/gen.h5" ] || "$cf" --threads "$threads" generate --model model --energies-from held2002.h5 \
    --sampler ddpm --steps "${STEPS:-100}" --seed 21 --out "$snap/gen.h5"
  ev "$snap" "$snap/gen.h5"
done
# Every snapshot's evaluations (those a call did not finish, modes added later).
for snap in snap_[0-9]*; do
  [ -f "$snap/gen.h5" ] && ev "$snap" "$snap/gen.h5"
done
python3 "$here/table.py" .

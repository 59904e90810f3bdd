#!/usr/bin/env bash
# The CaloScore end-to-end runs of the README (dataset 2, one thread each; hours of CPU):
#   benchmarks/caloscore_e2e/run.sh OUTDIR
# Trains CaloScore v2 (caloscore2-small, 75 min), distils it to 8 and 1 DDIM steps, trains v1
# VP / VE / sub-VP with standardised logits (the *_std.toml here: caloscore-small with [sde] and
# [transform] changed), generates with each and evaluates against held-out simulator showers.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CF=${CF:-$HERE/../../target/release/caloforge}
OUT=${1:?output directory}
mkdir -p "$OUT" && cd "$OUT"
[ -f train20k.h5 ] || "$CF" simulate -d 2 -n 20000 --seed 1001 --out train20k.h5 --quiet
[ -f held2002.h5 ] || "$CF" simulate -d 2 -n 10000 --seed 2002 --out held2002.h5 --quiet
[ -f floor1k.h5 ] || "$CF" simulate -d 2 -n 1000 --seed 2003 --out floor1k.h5 --quiet
ev() { # NAME FILE
  for m in hist cls-low cls-high; do
    "$CF" --threads 1 evaluate -d 2 -i "$2" -r held2002.h5 -m $m --out "ev_$1" --quiet > "ev_$1.$m.txt" 2>&1
  done
}
ev floor1k floor1k.h5
"$CF" train --preset caloscore2-small --data train20k.h5 --out v2 --threads 1 --max-minutes 75 --seed 1
"$CF" --threads 1 generate --model v2 --n 1000 --out v2_64.h5 --seed 21 --quiet && ev v2_64 v2_64.h5
D="$HERE/caloscore2-small-distill-1epoch.toml"
"$CF" train --preset "$D" --teacher v2 --factor 8 --data train20k.h5 --max-showers 3000 --out d8 --threads 1 --seed 1
"$CF" --threads 1 generate --model d8 --n 1000 --out v2_d8.h5 --seed 21 --quiet && ev v2_d8 v2_d8.h5
"$CF" train --preset "$D" --teacher d8 --factor 8 --data train20k.h5 --max-showers 3000 --out d1 --threads 1 --seed 1
"$CF" --threads 1 generate --model d1 --n 1000 --out v2_d1.h5 --seed 21 --quiet && ev v2_d1 v2_d1.h5
"$CF" --threads 1 generate --model v2 --n 100 --steps 512 --out v2_512.h5 --seed 21 --quiet
"$CF" --threads 1 evaluate -d 2 -i v2_512.h5 -r held2002.h5 -m hist --out ev_v2_512 --quiet > ev_v2_512.hist.txt 2>&1
"$CF" --threads 1 likelihood --model v2 --input held2002.h5 --max-showers 10 --batch 10 --out ll_v2.h5
for s in vp:46 ve:28 subvp:15; do
  n=${s%%:*}; m=${s##*:}
  "$CF" train --preset "$HERE/${n}_std.toml" --data train20k.h5 --out "$n" --threads 1 --max-minutes "$m" --seed 1
  "$CF" --threads 1 generate --model "$n" --n 1000 --out "$n.h5" --sampler heun --steps 25 --seed 21 --quiet
  ev "$n" "$n.h5"
done

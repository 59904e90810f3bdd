#!/usr/bin/env bash
# Compares the simulator with the Geant4 samples of ../shared/geant4 using `caloforge evaluate`
# (summary statistics from metrics.json) and prints the table of issue 3.
# usage: tools/sim_vs_geant4.sh [tune] [dataset]    (from the repo root, after cargo build --release)
set -euo pipefail
TUNE=${1:-geant4}; DS=${2:-2}
G=${G4DIR:-../shared/geant4}
BIN=./target/release/caloforge
T=$(mktemp -d)
printf "%-10s %-22s %-22s %-18s %-12s %s\n" sample "Etot/Einc mean (g4/sim)" "Etot/Einc std (g4/sim)" "CoG layer (g4/sim)" "nonzero vox" "max |ring frac diff|"
for E in 1GeV 10GeV 100GeV 1GeV-1TeV; do
  REF=$G/g4em_electrons_${E}_ds${DS}.hdf5
  # The samples at fixed energy are small: simulate 2000 showers at the same energy.
  if [ "$E" = "1GeV-1TeV" ]; then
    $BIN --quiet simulate -d $DS --energies-from $REF --seed 7 --tune $TUNE --out $T/sim.h5
  else
    EMEV=$(python3 -c "print(float('${E%GeV}')*1000)" 2>/dev/null || echo "")
    $BIN --quiet simulate -d $DS -n 2000 --energy $EMEV --seed 7 --tune $TUNE --out $T/sim.h5
  fi
  $BIN --quiet evaluate -d $DS -i $T/sim.h5 -r $REF -m hist-chi --out $T/ev > /dev/null 2>&1
  python3 - "$T/ev/metrics.json" "$E" <<'PY'
import json, sys
m = json.load(open(sys.argv[1])); g, r = m["generated"], m["reference"]
rd = max(abs(a - b) for a, b in zip(g["ring_fractions"], r["ring_fractions"]))
print(f'{sys.argv[2]:<10} {r["mean_etot_einc"]:.4f} / {g["mean_etot_einc"]:.4f}      {r["std_etot_einc"]:.4f} / {g["std_etot_einc"]:.4f}      '
      f'{r["mean_cog_layer"]:.2f} / {g["mean_cog_layer"]:.2f}      {r["mean_nonzero_voxels"]:.0f} / {g["mean_nonzero_voxels"]:.0f}   {rd:.3f}')
if sys.argv[2] == "1GeV-1TeV":
    h = {x["name"]: x["separation_power"] for x in m["histograms"]}
    el = [v for k, v in h.items() if k.startswith("E layer")]
    print(f'log-uniform: sep(Etot/Einc) = {h["Etot / Einc"]:.4f}, mean sep(E layer) = {sum(el)/len(el):.4f}')
PY
done
rm -rf $T

#!/usr/bin/env python3
"""Writes a copy of a caloforge iCaloFlow preset whose flow K trains on a parity budget: its
[flowK.train] table replaced by the given batch size, epochs and validation interval, and a
OneCycle schedule over exactly those steps with the preset's own shape (max_lr, pct_start,
div_factor, final_div_factor, three_phase and the beta1 range) or, with --torch-default-shape,
max 1e-3 and torch's OneCycleLR defaults (pct 0.3, div 25, final div 1e4); the validation set is
capped at MAXVAL samples.

usage: budget_preset.py SRC.toml OUT.toml FLOW N BATCH EPOCHS EVAL MAXVAL [--torch-default-shape]
  (N showers, 30 % of them held out; Flow-3 has 44 samples per shower)

A CaloDiffusion preset (model = "calodiffusion") instead gets its top-level batch_size, epochs
and, if given, validation_fraction replaced (its learning rate is constant):
       budget_preset.py SRC.toml OUT.toml BATCH EPOCHS [VALIDATION_FRACTION]
"""
import math
import re
import sys
import tomllib

args = [a for a in sys.argv[1:] if not a.startswith("--")]
src_path, out_path = args[:2]


def calodiffusion(src):
    batch, epochs = int(args[2]), int(args[3])
    keys = {"batch_size": batch, "epochs": epochs}
    if len(args) > 4:
        keys["validation_fraction"] = float(args[4])
    out = src
    for k, v in keys.items():
        out, n = re.subn(rf"^{k} = .*$", f"{k} = {v}", out, count=1, flags=re.M)
        assert n == 1, f"{src_path}: no top-level {k}"
    check = tomllib.loads(out)
    assert all(check[k] == v for k, v in keys.items())
    open(out_path, "w").write(out)


if tomllib.loads(open(src_path).read()).get("model") == "calodiffusion":
    calodiffusion(open(src_path).read())
    sys.exit(0)
flow, n, batch, epochs, ev, maxval = map(int, args[2:8])
src = open(src_path).read()
sched = tomllib.loads(src)[f"flow{flow}"]["train"]["schedule"]
n_train = n - round(0.3 * n)
total = math.ceil(n_train * (44 if flow == 3 else 1) / batch) * epochs
if "--torch-default-shape" in sys.argv:
    shape = {"max_lr": 1e-3, "pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4}
else:
    keys = ("max_lr", "pct_start", "div_factor", "final_div_factor", "three_phase",
            "cycle_momentum", "base_momentum", "max_momentum")
    shape = {k: sched[k] for k in keys if k in sched}
lines = [f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in shape.items()]
train = "\n".join([f"[flow{flow}.train]", f"batch_size = {batch}", f"epochs = {epochs}",
                   f"eval_every = {ev}", f"[flow{flow}.train.schedule]", 'type = "one_cycle"',
                   f"total_steps = {total}", *lines])
# Replace the [flowK.train] and [flowK.train.schedule] tables of the preset.
out = re.sub(rf"\[flow{flow}\.train\]\n.*?(?=\n\[flow(?!{flow}\.train)|\Z)", train, src,
             flags=re.S)
out = re.sub(r"max_validation_samples = \d+", f"max_validation_samples = {maxval}", out)
check = tomllib.loads(out)[f"flow{flow}"]["train"]
assert check["batch_size"] == batch and check["schedule"]["total_steps"] == total
open(out_path, "w").write(out)

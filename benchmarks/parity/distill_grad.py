#!/usr/bin/env python3
"""Same weights, same batch: caloforge's distillation loss and gradient against the PyTorch
reference's (icaloflow_reference.py, i.e. run.py's fully guided loss with nflows).

Builds one batch of flow K's training samples from a simulator file with the reference's
preprocessing, writes it (float32) with a z-pass noise draw, runs caloforge's
`examples/distill_grad` on it (teacher and student from caloforge flow files), evaluates the
same loss in PyTorch on the same weights in float64 and float32, and prints the loss terms and,
per parameter, the relative difference of the gradients (caloforge vs float64 reference, beside
float32 reference vs float64 reference, the single-precision floor).

usage: distill_grad.py --teacher T.safetensors --student S.safetensors --data F.h5
                        --preset P.toml [--flow 2] [--batch 250] [--seed 1]
  (an untrained student: `cargo run --release -p caloforge-nn --example distill_grad -- init
   T.safetensors SEED S.safetensors [HIDDEN]`)
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tomllib

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from caloforge_files import read_safetensors  # noqa: E402
from icaloflow_reference import (Stage, chi2, guided,  # noqa: E402
                                 student_from_caloforge, teacher_from_caloforge)


def terms(teacher, student, x, c, z):
    """run.py's two passes, unweighted (as icaloflow_reference.student_loss)."""
    tz, st_t, p_t = guided(teacher, x, c, "forward")
    xs, st_s, p_s = guided(student, tz, c, "inverse")
    lx = chi2(xs, x)
    lx = lx + sum(chi2(s, st_t[-i - 1]) for i, s in enumerate(st_s))
    lx = lx + sum(chi2(p, p_t[-i - 1]) for i, p in enumerate(p_s))
    pts, lst_s, lp_s = guided(student, z, c, "inverse")
    tz2, lst_t, lp_t = guided(teacher, pts, c, "forward")
    lz = chi2(tz2, z)
    lz = lz + sum(chi2(s, lst_t[-i - 1]) for i, s in enumerate(lst_s))
    lz = lz + sum(chi2(p, lp_t[-i - 1]) for i, p in enumerate(lp_s))
    return lx, lz


def write_inputs(path, tensors):
    header, data = {}, b""
    for k, v in tensors.items():
        b = np.ascontiguousarray(v, dtype="<f4").tobytes()
        header[k] = {"dtype": "F32", "shape": list(v.shape),
                     "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def reference(teacher_path, student_path, x, c, z, dtype):
    """Loss terms and gradients (by caloforge parameter name) in PyTorch, in `dtype`."""
    teacher, _ = teacher_from_caloforge(teacher_path)
    student, names = student_from_caloforge(student_path, teacher)
    # Module.to() converts the parameters in place: `names` still points at them.
    teacher, student = teacher.to(dtype), student.to(dtype)
    teacher.requires_grad_(False)
    lx, lz = terms(teacher, student, x.to(dtype), c.to(dtype), z.to(dtype))
    (0.5 * lx + 0.5 * lz).backward()
    return lx.item(), lz.item(), {n: p.grad.detach().to(torch.float64).clone()
                                  for n, p in names.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--preset", required=True)
    ap.add_argument("--flow", type=int, default=2)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", default="target/parity")
    ap.add_argument("--bin", default="target/release/examples/distill_grad")
    a = ap.parse_args()
    torch.set_num_threads(1)
    with open(a.preset, "rb") as f:
        cfg = tomllib.load(f)
    with h5py.File(a.data, "r") as f:
        n = min(f["showers"].shape[0], 4 * a.batch)
        showers = torch.from_numpy(f["showers"][:n].reshape(n, 45, -1))
        e_inc = torch.from_numpy(f["incident_energies"][:n].reshape(-1, 1).astype(np.float64))
    gen = torch.Generator().manual_seed(a.seed)
    stage = Stage(a.flow, showers, e_inc, cfg)
    rows = torch.randperm(len(stage), generator=gen)[: a.batch]
    x, c = stage.batch(rows, gen, torch.float32)
    z = torch.randn(x.shape, generator=gen, dtype=torch.float32)
    inp = os.path.join(a.work, "distill_grad_inputs.safetensors")
    out = os.path.join(a.work, "distill_grad_caloforge.safetensors")
    write_inputs(inp, {"x": x.numpy(), "c": c.numpy(), "z": z.numpy()})
    subprocess.run([a.bin, a.teacher, a.student, inp, out], check=True)
    cf, _ = read_safetensors(out, np.float64)
    res = {}
    for dt in (torch.float64, torch.float32):
        res[dt] = reference(a.teacher, a.student, x.to(torch.float64), c.to(torch.float64),
                            z.to(torch.float64), dt)
    (lx64, lz64, g64), (lx32, lz32, g32) = res[torch.float64], res[torch.float32]
    print(f"x-pass: caloforge {cf['loss_x'][0]:.6f}, reference float64 {lx64:.6f}, "
          f"float32 {lx32:.6f}")
    print(f"z-pass: caloforge {cf['loss_z'][0]:.6f}, reference float64 {lz64:.6f}, "
          f"float32 {lz32:.6f}")
    print(f"{'parameter':40s} {'|g| ref64':>12s} {'cf vs ref64':>12s} {'ref32 vs ref64':>14s}")
    worst = 0.0
    for name, g in g64.items():
        gc = torch.from_numpy(cf[name])
        if gc.dim() == 2:
            gc = gc.T  # burn [in, out], torch [out, in]
        norm = g.norm().item()
        d_cf = (gc - g).norm().item() / max(norm, 1e-30)
        d_32 = (g32[name] - g).norm().item() / max(norm, 1e-30)
        worst = max(worst, d_cf)
        print(f"{name:40s} {norm:12.4e} {d_cf:12.3e} {d_32:14.3e}")
    print(f"worst relative gradient difference, caloforge vs reference float64: {worst:.3e}")


if __name__ == "__main__":
    main()

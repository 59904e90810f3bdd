#!/usr/bin/env python3
"""Times CaloDiffusion dataset-2 generation in PyTorch with random weights, for comparison with
`caloforge bench --preset calodiffusion-ds2 --batch 1,10,100 --steps N`.

The network is the reference `CondUnet` (OzAmram/CaloDiffusionPaper scripts/models.py, written
here again from its description in shared/peers/calodiffusion.md; same layer list as
caloforge_nn::unet): cond_dim 128 from two `Linear(1,32)-GELU-Linear(32,64)-GELU-Linear(64,64)`
embeddings of sigma_t and E, layer sizes [16,16,16,32], cylindrical convs (circular padding of
the alpha axis), ResNet blocks (conv-GroupNorm(8)-SiLU twice, additive conditional bias),
linear attention (heads 1, dim_head 32) after every block and in the middle, stride-2
down-sampling with kernel (3,4,4) on all three axes and transposed up-sampling back to
(45,16,9); 3 input channels (shower + layer and radius location images).

Sampling is the reference DDPM: cosine schedule (s = 0.008, beta clipped to [1e-4, 0.9999])
with N steps, the 2 noisiest skipped, x <- (x - beta eps/sqrt(1-abar))/sqrt(alpha) + sqrt(var) z,
then the inverse transform with the 15.1 keV cut. Per-shower time = wall time / B.

usage: python3 benchmarks/calodiffusion_torch.py [--batches 1,10,100] [--steps 100,400]
         [--threads 1] [--device cpu|cuda] [--partial 0]
--partial K > 0 times K sampler steps and scales to the full count (for slow CPU cases).
needs: torch
"""
import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class CylConv(nn.Module):
    def __init__(self, ci, co, k, stride=1, pad=0, bias=True):
        super().__init__()
        k = (k, k, k) if isinstance(k, int) else k
        s = (stride,) * 3 if isinstance(stride, int) else stride
        self.pa = pad
        self.conv = nn.Conv3d(ci, co, k, stride=s, padding=(pad, 0, pad), bias=bias)

    def forward(self, x):
        if self.pa:
            x = F.pad(x, (0, 0, self.pa, self.pa, 0, 0), mode="circular")
        return self.conv(x)


class CylConvT(nn.Module):
    def __init__(self, ci, co, k, out_pad):
        super().__init__()
        self.conv = nn.ConvTranspose3d(ci, co, k, stride=2, padding=(1, k[1] - 1, 1), output_padding=out_pad)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 0, 1, 1, 0, 0), mode="circular"))


class Block(nn.Module):
    def __init__(self, ci, co, groups):
        super().__init__()
        self.conv = CylConv(ci, co, 3, pad=1)
        self.norm = nn.GroupNorm(min(groups, co), co)

    def forward(self, x):
        return F.silu(self.norm(self.conv(x)))


class Resnet(nn.Module):
    def __init__(self, ci, co, cond, groups=8):
        super().__init__()
        self.b1, self.b2 = Block(ci, co, groups), Block(co, co, groups)
        self.cond = nn.Linear(cond, co) if cond else None
        self.res = CylConv(ci, co, 1) if ci != co else nn.Identity()

    def forward(self, x, c=None):
        h = self.b1(x)
        if self.cond is not None:
            h = h + self.cond(F.silu(c))[:, :, None, None, None]
        return self.b2(h) + self.res(x)


class LinAttn(nn.Module):
    def __init__(self, c, heads=1, dh=32):
        super().__init__()
        self.h, self.d = heads, dh
        self.pre = nn.GroupNorm(1, c)
        self.qkv = CylConv(c, 3 * heads * dh, 1, bias=False)
        self.out = CylConv(heads * dh, c, 1)
        self.post = nn.GroupNorm(1, c)

    def forward(self, x):
        b, _, z, a, r = x.shape
        q, k, v = self.qkv(self.pre(x)).reshape(b, 3, self.h, self.d, z * a * r).unbind(1)
        q = q.softmax(dim=-2) * self.d ** -0.5
        k = k.softmax(dim=-1)
        ctx = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", ctx, q).reshape(b, self.h * self.d, z, a, r)
        return x + self.post(self.out(out))


def emb():
    return nn.Sequential(nn.Linear(1, 32), nn.GELU(), nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64))


class UNet(nn.Module):
    def __init__(self, sizes=(16, 16, 16, 32), shape=(45, 16, 9), groups=8, block_attn=True):
        super().__init__()
        self.temb, self.eemb = emb(), emb()
        self.init = CylConv(3, sizes[0], 3, pad=1)
        levels = len(sizes) - 1
        shapes = [shape]
        for _ in range(1, levels):
            s = shapes[-1]
            shapes.append(((s[0] - 1) // 2 + 1, (s[1] - 2) // 2 + 1, (s[2] - 2) // 2 + 1))
        self.downs, self.dconv = nn.ModuleList(), nn.ModuleList()
        for l in range(levels):
            ci, co = sizes[l], sizes[l + 1]
            self.downs.append(nn.ModuleList([Resnet(ci, co, 128, groups), Resnet(co, co, 128, groups),
                                             LinAttn(co) if block_attn else nn.Identity()]))
            if l + 1 < levels:
                self.dconv.append(CylConv(co, co, (3, 4, 4), stride=2, pad=1))
        m = sizes[-1]
        self.mid1, self.mattn, self.mid2 = Resnet(m, m, 128, groups), LinAttn(m), Resnet(m, m, 128, groups)
        self.ups, self.uconv = nn.ModuleList(), nn.ModuleList()
        for l in reversed(range(levels)):
            ci, co = sizes[l], sizes[l + 1]
            self.ups.append(nn.ModuleList([Resnet(2 * co, ci, 128, groups), Resnet(ci, ci, 128, groups),
                                           LinAttn(ci) if block_attn else nn.Identity()]))
            if l > 0:
                fr, to = shapes[l], shapes[l - 1]
                pz = to[0] - ((fr[0] - 1) * 2 + 1)
                pr = to[2] - ((fr[2] - 1) * 2 + 2)
                self.uconv.append(CylConvT(ci, ci, (3, 4, 4), (pz, 0, pr)))
        self.fres = Resnet(sizes[0], sizes[0], 0, groups)
        self.fconv = CylConv(sizes[0], 1, 1)

    def forward(self, x, t, e):
        c = torch.cat([self.temb(t), self.eemb(e)], 1)
        h = self.init(x)
        skips = []
        for l, (r1, r2, at) in enumerate(self.downs):
            h = at(r2(r1(h, c), c))
            skips.append(h)
            if l < len(self.dconv):
                h = self.dconv[l](h)
        h = self.mid2(self.mattn(self.mid1(h, c)), c)
        for j, (r1, r2, at) in enumerate(self.ups):
            h = at(r2(r1(torch.cat([h, skips.pop()], 1), c), c))
            if j < len(self.uconv):
                h = self.uconv[j](h)
        return self.fconv(self.fres(h))


def cosine(n, s=0.008):
    f = lambda t: math.cos((t / n + s) / (1 + s) * math.pi / 2) ** 2
    b = torch.tensor([min(max(1 - f(t + 1) / f(t), 1e-4), 0.9999) for t in range(n)], dtype=torch.float64)
    a = 1 - b
    return b, a, torch.cumprod(a, 0)


@torch.no_grad()
def sample(net, n, steps, dev, partial=0, skip=2):
    b, a, ab = cosine(steps)
    shape = (45, 16, 9)
    z = torch.arange(45, device=dev, dtype=torch.float32)[:, None, None].expand(shape) / 44
    r = torch.arange(9, device=dev, dtype=torch.float32)[None, None, :].expand(shape) / 8
    loc = torch.stack([z, r])[None].expand(n, 2, *shape)
    e = torch.rand(n, 1, device=dev)
    x = torch.randn(n, 1, *shape, device=dev)
    ts = list(reversed(range(steps - skip)))
    if partial:
        ts = ts[:partial]
    for t in ts:
        sig = torch.full((n, 1), math.sqrt(1 - ab[t].item()), device=dev)
        eps = net(torch.cat([x, loc], 1), sig, e)
        x = (x - b[t].item() / math.sqrt(1 - ab[t].item()) * eps) / math.sqrt(a[t].item())
        if t > 0:
            var = b[t].item() * (1 - ab[t - 1].item()) / (1 - ab[t].item())
            x = x + math.sqrt(var) * torch.randn_like(x)
    y = torch.sigmoid(x * 1.9123 - 12.8564)
    y = (y - 1e-6) / (1 - 2e-6) * 2 * (e * 1000)[:, :, None, None, None]
    y[y < 0.0000151] = 0
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return y, len(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,10,100")
    ap.add_argument("--steps", default="100,400")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--partial", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    net = UNet().to(dev).eval()
    print(f"parameters {sum(p.numel() for p in net.parameters())}, torch {torch.__version__}, "
          f"device {dev}, threads {args.threads}")
    sample(net, 2, 4, dev, partial=2)  # warm-up
    for steps in [int(s) for s in args.steps.split(",")]:
        for bsz in [int(s) for s in args.batches.split(",")]:
            t0 = time.perf_counter()
            _, done = sample(net, bsz, steps, dev, partial=args.partial)
            dt = (time.perf_counter() - t0) * (steps - 2) / done
            print(f"steps {steps:4d} batch {bsz:4d}: {1000 * dt / bsz:10.2f} ms/shower "
                  f"({done} of {steps - 2} network calls timed)", flush=True)


if __name__ == "__main__":
    main()

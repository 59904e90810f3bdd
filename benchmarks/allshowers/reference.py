"""AllShowers and PointCountFM in PyTorch, rewritten from FLC-QU-hep/AllShowers (8bd0745:
allshowers/transformer.py, flow_matching.py, ode_solvers.py) and FLC-QU-hep/PointCountFM
(8f82576: pointcountfm/models.py), for caloforge's parity fixtures, parity runs and timings.

The only change from the reference: attention runs through scaled_dot_product_attention with a
dense boolean mask of the same window and padding (the reference's flex_attention needs
torch.compile and a C++ toolchain on CPU), and rows with no allowed key output 0 as
flex_attention's do. Everything else (fused key/query/value in that order, no output
projection, post-LN, raw point counts, the asymmetric window, the flow-matching path and
solvers) is the reference's.

    python3 reference.py fixture OUT.json     # the parity fixture of caloforge-nn's tests
    python3 reference.py train-fixture DIR/allshowers_training.json   # 20 training steps
"""
import json
import math
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


def window_mask(layer, padding, num_layer_cond):
    """(B, 1, P, P) bool: the reference's compute_mask, densely."""
    lq = layer[:, :, None]
    lk = layer[:, None, :]
    d = lq - lk
    allowed = (d >= -1 * (num_layer_cond + 1) // 2) & (d <= num_layer_cond // 2)
    pad = padding[:, :, None] & padding[:, None, :]
    return (allowed & pad)[:, None]


class EncoderLayer(nn.Module):
    def __init__(self, dim, heads, ff, activation):
        super().__init__()
        self.num_head, self.dim_embedding, self.dim_head = heads, dim, dim // heads
        self.key_query_value = nn.Linear(dim, 3 * dim)
        self.feedforward = nn.Sequential(
            nn.Linear(dim, ff), activation, nn.Linear(ff, dim), nn.Identity()
        )
        self.layer_norm1 = nn.LayerNorm(dim)
        self.layer_norm2 = nn.LayerNorm(dim)

    def multihead_attention(self, x, mask):
        kqv = self.key_query_value(x)
        kqv = kqv.view(x.shape[0], x.shape[1], self.num_head, 3, self.dim_head)
        kqv = kqv.permute(3, 0, 2, 1, 4).contiguous()
        key, query, value = kqv
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        out = torch.where(mask.any(-1, keepdim=True), out, 0.0)  # flex_attention: empty rows → 0
        out = out.permute(0, 2, 1, 3).contiguous().view(x.shape[0], x.shape[1], -1)
        return out

    def forward(self, x, mask):
        x = self.layer_norm1(x + self.multihead_attention(x, mask))
        return self.layer_norm2(x + self.feedforward(x))


class Transformer(nn.Module):
    def __init__(self, dim_inputs=(3, 6, 4), dim_embedding=64, num_head=4, num_blocks=4,
                 num_layers=78, dim_feedforward=256, num_points_cond=512,
                 num_layer_cond=4, num_particles=12):
        super().__init__()
        act = nn.GELU()
        self.num_layer_cond = num_layer_cond
        self.embedding = nn.Linear(dim_inputs[0], dim_embedding)
        self.layer_embedding = nn.Embedding(num_layers, dim_embedding)
        self.cond_embedding = nn.Linear(sum(dim_inputs[1:]), dim_embedding)
        self.num_points_embedding = nn.Sequential(
            nn.Linear(num_layers, num_points_cond), act, nn.Linear(num_points_cond, dim_embedding)
        )
        self.particle_embedding = nn.Embedding(num_particles, dim_embedding) if num_particles > 1 else None
        self.transformer_blocks = nn.ModuleList(
            [EncoderLayer(dim_embedding, num_head, dim_feedforward, act) for _ in range(num_blocks)]
        )
        self.head = nn.Linear(dim_embedding, dim_inputs[0])

    def forward(self, t, x, cond, num_points, layer, mask, label=None):
        x = self.embedding(x)
        x = x + self.layer_embedding(layer.squeeze(-1))
        x = x + self.cond_embedding(torch.cat([t, cond], dim=1)).unsqueeze(1)
        if label is not None and self.particle_embedding is not None:
            x = x + self.particle_embedding(label).unsqueeze(1)
        x = x + self.num_points_embedding(num_points.to(torch.get_default_dtype())).unsqueeze(1)
        for block in self.transformer_blocks:
            x = block(x, mask)
        return self.head(x)


def time_features(t, frequencies=3):
    f = (torch.arange(1, frequencies + 1) * torch.pi).reshape(1, -1) * t.reshape(-1, 1)
    return torch.cat((f.cos(), f.sin()), dim=-1)


def cfm_loss(net, x, noise, t, cond, num_points, layer, padding, label):
    """The reference's CNF.loss and train.get_loss reduction for given t and noise."""
    mask = window_mask(layer.squeeze(-1), padding, net.num_layer_cond)
    tt = t.reshape(-1, 1, 1)
    y = (1 - tt) * x + (1e-4 + (1 - 1e-4) * tt) * noise
    u = (1 - 1e-4) * noise - x
    tf = time_features(t).expand(x.shape[0], -1)
    losses = (net(tf, y, cond, num_points, layer, mask, label) - u).square()
    losses = losses * padding[:, :, None]
    return losses.mean(dim=(1, 2)).mean()


def integrate(solver, f, x, t0, t1, steps):
    t0_, t1_ = torch.as_tensor(t0, dtype=x.dtype), torch.as_tensor(t1, dtype=x.dtype)
    t, dt = t0_, (t1_ - t0_) / steps
    for _ in range(steps):
        if solver == "euler":
            x = x + dt * f(t, x)
        elif solver == "heun":
            df = f(t, x)
            x = x + dt / 2 * (df + f(t + dt, x + dt * df))
        else:
            df = f(t, x)
            x = x + dt * f(t + dt / 2, x + dt / 2 * df)
        t = t + dt
    return x


class CountNet(nn.Module):
    """PointCountFM's FullyConnected: cat[t(6), x(78), cond(16)] → ReLU MLP → 78."""

    def __init__(self, dim_input=78, dim_condition=16, dim_time=6, hidden=(128, 256, 512, 256, 128)):
        super().__init__()
        dims = [dim_time + dim_input + dim_condition, *hidden]
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], dim_input))
        self.network = nn.Sequential(*layers)

    def forward(self, t, x, cond):
        return self.network(torch.cat([t, x, cond], dim=-1))


def flat(t):
    return [float(v) for v in t.detach().reshape(-1).tolist()]


def fixture(path):
    """Small reference transformer, padded batch, outputs, loss (and its gradient with respect to
    every parameter) and a 2-step midpoint decode."""
    torch.manual_seed(7)
    L, B, P = 9, 3, 12
    net = Transformer(dim_inputs=(3, 6, 4), dim_embedding=16, num_head=4, num_blocks=2,
                      num_layers=L, dim_feedforward=24, num_points_cond=20, num_layer_cond=4,
                      num_particles=3)
    sizes = [12, 7, 3]
    padding = torch.zeros(B, P, dtype=torch.bool)
    layer = torch.zeros(B, P, 1, dtype=torch.long)
    for b, n in enumerate(sizes):
        padding[b, :n] = True
        layer[b, :n, 0] = torch.sort(torch.randint(0, L, (n,))).values
    x = torch.randn(B, P, 3) * padding[:, :, None]
    noise = torch.randn(B, P, 3) * padding[:, :, None]
    num_points = torch.zeros(B, L, dtype=torch.int32)
    for b, n in enumerate(sizes):
        for i in range(n):
            num_points[b, layer[b, i, 0]] += 1
    cond = torch.randn(B, 4)
    label = torch.tensor([0, 2, 1])
    t = torch.tensor([0.1, 0.5, 0.9])
    mask = window_mask(layer.squeeze(-1), padding, 4)
    with torch.no_grad():
        out = net(time_features(t), x, cond, num_points, layer, mask, label)
        f = lambda tt, y: net(time_features(tt).expand(B, -1), y, cond, num_points, layer, mask, label)
        decoded = integrate("midpoint", f, noise, 1.0, 0.0, 2)
    loss = cfm_loss(net, x, noise, t, cond, num_points, layer, padding, label)
    net.zero_grad()
    loss.backward()
    grads = {k: flat(v.grad) for k, v in net.named_parameters() if v.grad is not None}
    doc = {
        "about": "written by benchmarks/allshowers/reference.py fixture (torch %s)" % torch.__version__,
        "dims": {"layers": L, "dim": 16, "heads": 4, "blocks": 2, "feedforward": 24,
                 "count_hidden": 20, "particles": 3, "layer_window": 4},
        "sizes": sizes,
        "state": {k: {"shape": list(v.shape), "values": flat(v)} for k, v in net.state_dict().items()},
        "x": flat(x), "noise": flat(noise), "layer": [int(v) for v in layer.reshape(-1)],
        "num_points": [int(v) for v in num_points.reshape(-1)], "cond": flat(cond),
        "label": label.tolist(), "t": flat(t),
        "out": flat(out), "loss": float(loss), "decoded_midpoint_2": flat(decoded),
        "grads": grads,
    }
    with open(path, "w") as fh:
        json.dump(doc, fh)


def train_fixture(path):
    """20 optimizer steps of the fixture's network on its batch (times drawn per step):
    RangerLite (weight decay 1e-2) at lr 1e-3, clip_grad_norm_ 0.2; the loss before each step
    and the final weights."""
    from train_reference import RangerLite
    torch.manual_seed(7)
    L, B, P = 9, 3, 12
    net = Transformer(dim_inputs=(3, 6, 4), dim_embedding=16, num_head=4, num_blocks=2,
                      num_layers=L, dim_feedforward=24, num_points_cond=20, num_layer_cond=4,
                      num_particles=3)
    with open(path.replace("allshowers_training.json", "allshowers_reference.json")) as fh:
        fx = json.load(fh)
    sizes = fx["sizes"]
    padding = torch.zeros(B, P, dtype=torch.bool)
    for b, n in enumerate(sizes):
        padding[b, :n] = True
    x = torch.tensor(fx["x"]).reshape(B, P, 3)
    noise = torch.tensor(fx["noise"]).reshape(B, P, 3)
    layer = torch.tensor(fx["layer"]).reshape(B, P, 1)
    num_points = torch.tensor(fx["num_points"]).reshape(B, L)
    cond = torch.tensor(fx["cond"]).reshape(B, 4)
    label = torch.tensor(fx["label"])
    net.load_state_dict({k: torch.tensor(v["values"]).reshape(v["shape"]) for k, v in fx["state"].items()})
    opt = RangerLite(net.parameters(), lr=1e-3, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(3)
    ts, losses = [], []
    for _ in range(20):
        t = torch.rand(B, generator=gen)
        loss = cfm_loss(net, x, noise, t, cond, num_points, layer, padding, label)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 0.2)
        opt.step()
        ts.append(flat(t))
        losses.append(float(loss))
    doc = {
        "about": "written by benchmarks/allshowers/reference.py train-fixture (torch %s)" % torch.__version__,
        "t": ts, "losses": losses,
        "final": {k: {"shape": list(v.shape), "values": flat(v)} for k, v in net.state_dict().items()},
    }
    with open(path, "w") as fh:
        json.dump(doc, fh)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "fixture":
        fixture(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "train-fixture":
        train_fixture(sys.argv[2])
    else:
        print(__doc__)
        sys.exit(2)

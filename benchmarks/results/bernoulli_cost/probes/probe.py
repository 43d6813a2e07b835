"""Probe: Bernoulli gates with a cost prior price·E[#params(θ)] (+ slab L2) on MLPs of several starting widths."""
import argparse, json, math, statistics, time
from pathlib import Path
import torch, torch.nn.functional as F
from torch import nn
import fastbayes as fb
from fastbayes.apps.demo import _prepare, accuracy
from fastbayes.apps.models import build
from fastbayes.nn import bernoulli as B
from fastbayes.prune import Shrinker

p = argparse.ArgumentParser()
p.add_argument("--model", default="mlp-300-100"); p.add_argument("--seed", type=int, default=0)
p.add_argument("--price", type=float, default=2.0); p.add_argument("--epochs", type=int, default=5)
p.add_argument("--theta-lr", type=float, default=3.0); p.add_argument("--l2", type=float, default=1.0)
p.add_argument("--out", default="/work/scratch/bern/out")
p.add_argument("--decide", action="store_true")
p.add_argument("--round", action="store_true")
p.add_argument("--decide-batch", type=int, default=256)
p.add_argument("--max-drop", type=float, default=None)
p.add_argument("--z", type=float, default=2.0)
a = p.parse_args()
torch.set_num_threads(1)
out, dataset, train, val, test = _prepare(a.out, "fashion-mnist", a.seed, None)
model = build(a.model, tuple(train.x.shape[1:]))
gates = fb.add_gates(model, kind="bernoulli", init_theta=1.0)
names = list(gates)
thetas = {id(g.theta) for g in gates.values()}
opt = torch.optim.Adam([q for q in model.parameters() if id(q) not in thetas], 1e-3)
theta_opt = torch.optim.SGD([g.theta for g in gates.values()], lr=a.theta_lr)
shrinker = Shrinker(model, opt, every=50, eps=1e-3, example_inputs=train.x[:2], freeze=False)
n = len(train)

def lins():
    return [m for m in model.modules() if isinstance(m, nn.Linear)]

from fastbayes.nn.cost import ParamCost
from fastbayes.nn.bernoulli import _sources, _rows
cost = ParamCost(model, train.x[:2])
def prior():
    P = cost()
    l2 = 0.0
    for g, layer in _sources(model).values():
        rows = _rows(layer)
        sq = rows.pow(2).sum(1) + (layer.bias.pow(2) if layer.bias is not None else 0)
        l2 = l2 + (g.effective_theta() * g.mask * sq).sum() * rows.shape[1] / 4.0   # /(2σ1²), σ1² = 2/fan_in
    return a.price * P + a.l2 * l2, P

def decide():
    model.train()
    idx = torch.randint(0, n, (a.decide_batch,))
    xb, yb = train.x[idx], train.y[idx]
    done = B.decide(model, lambda m: F.cross_entropy(m(xb), yb, reduction="none"), lambda: prior()[0] / n, max_drop=a.max_drop, z=a.z)
    return sum(done.values())

hist = []
t0 = time.perf_counter()
for epoch in range(a.epochs):
    model.train(); perm = torch.randperm(n); times = []
    for i in range(0, n, 128):
        idx = perm[i:i + 128]
        ts = time.perf_counter()
        pr, P = prior()
        loss = F.cross_entropy(model(train.x[idx]), train.y[idx]) + pr / n
        opt.zero_grad(set_to_none=True); theta_opt.zero_grad(set_to_none=True)
        loss.backward(); opt.step(); theta_opt.step()
        times.append(time.perf_counter() - ts)
        if shrinker.step():
            theta_opt.param_groups[0]["params"] = [g.theta for g in gates.values()]
    decided = decide() if a.decide else 0
    if a.decide:
        shrinker.shrink()
        theta_opt.param_groups[0]["params"] = [g.theta for g in gates.values()]
    widths = {k: int(g.mask.sum()) for k, g in gates.items()}
    inside = {k: int(((g.theta > 0) & (g.theta < 1) & g.mask).sum()) for k, g in gates.items()}
    h = {"epoch": epoch + 1, "val": accuracy(model, val), "widths": widths, "in_transit": inside, "decided": decided,
         "E_params": float(P), "step_ms": 1e3 * statistics.median(times)}
    hist.append(h); print(json.dumps(h), flush=True)
res = {"model": a.model, "seed": a.seed, "price": a.price, "l2": a.l2, "epochs": a.epochs, "history": hist,
       "test": accuracy(model, test), "seconds": time.perf_counter() - t0}
Path(a.out).mkdir(parents=True, exist_ok=True)
(Path(a.out) / f"{a.model}_p{a.price}_l2{a.l2}_s{a.seed}{'_d' if a.decide else ''}{'r' if a.round else ''}{'_md%s' % a.max_drop if a.max_drop else ''}_z{a.z}.json").write_text(json.dumps(res, indent=1))
print("test", res["test"])

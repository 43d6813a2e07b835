"""Quick Bernoulli-gate experiments behind the "Exploration that led here" table of docs/RESULTS.md §2 (research
 code: one training run with the options under test; see research/README.md)."""
import argparse, json, time, statistics, sys, tempfile
import torch, torch.nn.functional as F
torch.set_num_threads(1)
from fastbayes.apps.demo import _prepare, accuracy
from fastbayes.apps.models import build
from fastbayes.nn import bernoulli as B
from fastbayes.prune import Shrinker

p = argparse.ArgumentParser()
p.add_argument("--model", default="mlp-300-100")
p.add_argument("--theta", type=float, default=1.0)
p.add_argument("--ratio", type=float, default=0.1)
p.add_argument("--topt", default="sgd")
p.add_argument("--tlr", type=float, default=0.1)
p.add_argument("--warmup", type=int, default=0, help="steps")
p.add_argument("--nprior", type=int, default=0)
p.add_argument("--freeze", type=int, default=0)
p.add_argument("--epochs", type=int, default=3)
p.add_argument("--max-train", type=int, default=10000)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--trace", type=int, default=0)
p.add_argument("--s1mult", type=float, default=1.0)
p.add_argument("--every", type=int, default=50)
a = p.parse_args()
out, ds, train, val, test = _prepare(tempfile.mkdtemp(), None, a.seed, a.max_train)
model = build(a.model, tuple(train.x.shape[1:]))
gates = B.attach(model, init_theta=a.theta, sigma0_ratio=a.ratio)
import math
mods = dict(model.named_modules())
for k, g in gates.items():
    g.set_prior_scale(a.s1mult * math.sqrt(2.0 / B._fan_in(mods[k])))
thetas = {id(g.theta) for g in gates.values()}
wopt = torch.optim.Adam([p for p in model.parameters() if id(p) not in thetas], a.lr)
tps = [g.theta for g in gates.values()]
topt = torch.optim.SGD(tps, a.tlr) if a.topt == "sgd" else torch.optim.Adam(tps, a.tlr)
class Both(torch.optim.Optimizer):
    pass
# a single optimizer is needed by Shrinker: use param groups with different algorithms -> use two shrinkers? simpler: one Adam/SGD each; Shrinker takes one; give it wopt and handle theta slicing via topt by wrapping
opt = wopt
shr = Shrinker(model, wopt, every=a.every, eps=1e-3, example_inputs=train.x[:2])
if not a.freeze:
    for g in gates.values():
        g.freeze_ = lambda eps=1e-3: 0
n = len(train); N = a.nprior or n
step = 0
for ep in range(a.epochs):
    model.train(); perm = torch.randperm(n); times = []; ces = []
    for i in range(0, n, 128):
        idx = perm[i:i+128]
        t0 = time.perf_counter()
        s = min(1.0, (step + 1) / a.warmup) if a.warmup else 1.0
        ce = F.cross_entropy(model(train.x[idx]), train.y[idx])
        loss = ce + s * B.prior_loss(model) / N
        wopt.zero_grad(set_to_none=True); topt.zero_grad(set_to_none=True)
        loss.backward(); wopt.step(); topt.step()
        times.append(1e3*(time.perf_counter()-t0)); ces.append(float(ce.detach()))
        # keep topt param list in sync after shrink
        if a.trace and step % a.trace == 0:
            g0 = list(B.bernoulli_gates(model).values())[0]
            print(f"  step {step} ce {float(ce):.3f} s {s:.2f} th0 mean {float(g0.theta.mean()):.3f} min {float(g0.theta.min()):.3f} rms0 {float(model.layers[0].weight.pow(2).mean().sqrt()):.4f} gradth0 mean {float(g0.theta.grad.mean()):.4f}", flush=True)
        shr.step(); step += 1
        cur = [g.theta for g in B.bernoulli_gates(model).values()]
        if any(c is not t for c, t in zip(cur, topt.param_groups[0]["params"])):
            st = {}
            topt.param_groups[0]["params"] = cur; topt.state.clear()
    ths = {k: g.theta.detach() for k, g in B.bernoulli_gates(model).items()}
    desc = "; ".join(f"{k}: n={int(g.mask.sum())} mid={int(((t>1e-3)&(t<1-1e-3)&g.mask).sum())} mean={float(t[g.mask].mean()):.3f}" for (k, g), t in zip(B.bernoulli_gates(model).items(), ths.values()))
    rms = "; ".join(f"{float(l.weight.pow(2).mean().sqrt()):.4f}" for l in model.layers)
    print(f"ep{ep+1} ce {statistics.mean(ces[-20:]):.3f} val {accuracy(model, val):.4f} step {statistics.median(times):.1f}ms | {desc} | rms {rms}", flush=True)
for l in model.layers[:-1]:
    r_ = (l.weight.pow(2).sum(1) + l.bias.pow(2)).div(l.weight.shape[1] + 1).sqrt()
    q = torch.quantile(r_, torch.tensor([0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0]))
    print("unit rms quantiles", [round(float(v), 4) for v in q])
small = shr.finalize()
print("final", shr.units(), "binary", shr.binary(), "test", accuracy(small, test))

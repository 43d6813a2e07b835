"""Probe: SVGD over the classifier head only, on a shared pruned backbone (issue 14's "last layers only" lever).

The record behind probes.md's head-particle table (not product code).  Seed 0 of examples/dllp_reliability.py: its
cached plain Lenet5 and consensus masks (run the driver first), magnitude-pruned and compacted like its ``point``
run, fine-tuned for ``argv[1]`` epochs (default 6; cached in OUT/backbone.pt), then frozen.  Its 66 features of the
48,000 training images are computed once, so each SVGD step can use the full-data score (no minibatch noise) or a
minibatch per particle.  8 particles over fc3 (10 × 67 weights), jitter ``noise`` × the head's std, Gaussian prior
N(0, ``prior_var``), Adam (or SGD) at ``lr`` for ``steps``; ``kernel`` "weight" (RBF on the head's weights) or
"function" (RBF on the centred logits of ``m`` random training features, pulled back through the linear head);
``repulsion`` false drops the kernel-gradient term (the same particles, no interaction).  One JSON line per config:

    python benchmarks/results/dllp_reliability/head_probe.py 4 '{"lr": 1e-3, "steps": 1000}' \
        '{"lr": 1e-3, "steps": 1000, "repulsion": false}' '{"lr": 1e-3, "steps": 3000, "batch": 128}'
"""
import sys, json, time, math, torch, torch.nn.functional as F
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples"))
import dllp_reliability as R
from fastbayes import metrics
from fastbayes.apps.models import build
from fastbayes.ood import ood_sets
torch.set_num_threads(1)
seed = 0
HERE = Path(__file__).resolve().parent
OUT = Path("/tmp/fastbayes_head_probe"); OUT.mkdir(exist_ok=True); cache = HERE / "models"
train, val, test = R.load(seed, None)
ood = ood_sets(test.x, seed=seed, n=2000)
class A: lr = 1e-3; batch_size = 128
bb_path = OUT / "backbone.pt"
torch.manual_seed(seed)
plain = build("lenet5-bmrs", (1, 32, 32)); plain.load_state_dict(torch.load(cache / f"seed{seed}_plain.pt")); plain.eval()
masks = torch.load(cache / f"seed{seed}_masks.pt")
small = R.magnitude_compact(plain, masks, test.x[:1])
if bb_path.exists():
    small = torch.load(bb_path, weights_only=False)
else:
    t = time.time(); R.train_epochs(small, train, int(sys.argv[1]) if len(sys.argv) > 1 else 6, A, torch.Generator().manual_seed(seed + 1000))
    torch.save(small, bb_path); print("backbone", time.time() - t, flush=True)
small.eval()
@torch.no_grad()
def feats(x):
    m = small; out = []
    for i in range(0, len(x), 2000):
        h = x[i:i+2000]
        h = F.max_pool2d(m.act1(m.conv1(h)), 2); h = F.max_pool2d(m.act2(m.conv2(h)), 2)
        h = m.act3(m.fc1(h.flatten(1))); out.append(m.act4(m.fc2(h)))
    return torch.cat(out)
Ftr, Fte = feats(train.x), feats(test.x); Food = {k: feats(v) for k, v in ood.items()}; Fval = feats(val.x)
W0, b0 = small.fc3.weight.detach().clone(), small.fc3.bias.detach().clone()
print("features", Ftr.shape, flush=True)
pt = metrics.uncertainty_report((Fte @ W0.T + b0)[None], test.y, {k: (v @ W0.T + b0)[None] for k, v in Food.items()})
T = metrics.fit_temperature((Fval @ W0.T + b0)[None], val.y)
ptT = metrics.uncertainty_report(((Fte @ W0.T + b0) / T)[None], test.y, {k: ((v @ W0.T + b0) / T)[None] for k, v in Food.items()})
print(json.dumps({"point": {k: pt[k] for k in ("accuracy", "nll", "ece", "ood_auroc")}, "pointT": {k: ptT[k] for k in ("accuracy", "nll", "ece", "ood_auroc")}, "T": T}), flush=True)

def run(cfg):
    n = 8; N = len(Ftr); g = torch.Generator().manual_seed(seed)
    prior_var = cfg.get("prior_var", 1.0)
    th = torch.cat([W0, b0[:, None]], 1).flatten()          # [10*85]
    X = th.repeat(n, 1) + cfg.get("noise", 0.1) * th.std() * torch.randn(n, th.numel(), generator=g)
    X.requires_grad_(True)
    opt = (torch.optim.Adam if cfg.get("opt", "adam") == "adam" else torch.optim.SGD)([X], lr=cfg["lr"])
    B = cfg.get("batch"); steps = cfg["steps"]; rep_on = cfg.get("repulsion", True); kern = cfg.get("kernel", "weight")
    Fa = torch.cat([Ftr, torch.ones(N, 1)], 1)
    hist = []
    for s in range(steps):
        if B is None:
            idx = None; Fb = Fa[None].expand(n, -1, -1); yb = train.y[None].expand(n, -1); scale = 1.0
        else:
            idx = torch.randint(0, N, (n, B), generator=g); Fb = Fa[idx]; yb = train.y[idx]; scale = N / B
        Wt = X.view(n, 10, -1)
        logits = torch.einsum("nbf,ncf->nbc", Fb, Wt)
        nll = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="sum") * scale
        G = -torch.autograd.grad(nll, X)[0] - X.detach() / prior_var        # scores [n, d]
        Xd = X.detach()
        if kern == "weight":
            Z = Xd; J = None
        else:
            Fm = Fa[torch.randint(0, N, (cfg.get("m", 64),), generator=g)]
            Z = torch.einsum("bf,ncf->nbc", Fm, Xd.view(n, 10, -1)); Z = (Z - Z.mean(-1, keepdim=True)).flatten(1)
        d = torch.cdist(Z.double(), Z.double()).pow(2)
        h = cfg.get("hs", 1.0) * d.flatten()[d.flatten() > 0].median() / math.log(n + 1)
        K = torch.exp(-d / h)
        drive = (K @ G.double()) / n
        repz = (2 / h) * (K.sum(1, keepdim=True) * Z.double() - K @ Z.double()) / n
        if kern == "weight":
            rep = repz
        else:   # pull back through the linear head's Jacobian: dZ/dW for centred logits
            R_ = repz.view(n, -1, 10); R_ = R_ - R_.mean(-1, keepdim=True)
            rep = torch.einsum("nbc,bf->ncf", R_, Fm.double()).flatten(1)
        phi = drive + (rep if rep_on else 0)
        if not rep_on and cfg.get("indep", False):
            phi = G.double() / n
        X.grad = (-phi).float(); opt.step()
        if s % max(steps // 10, 1) == 0 or s == steps - 1:
            hist.append({"step": s, "ratio": float(rep.norm() / drive.norm().detach()), "nll": float(nll.detach()) / (n * N), "spread": float(Xd.std(0).pow(2).mean().sqrt())})
    with torch.no_grad():
        Wt = X.detach().view(n, 10, -1)
        lg = lambda Fx: torch.einsum("bf,ncf->nbc", torch.cat([Fx, torch.ones(len(Fx), 1)], 1), Wt)
        rep = metrics.uncertainty_report(lg(Fte), test.y, {k: lg(v) for k, v in Food.items()})
    return {"cfg": cfg, **{k: rep[k] for k in ("accuracy", "nll", "ece", "brier", "mutual_information", "ood_auroc")}, "hist": hist}

for a in sys.argv[2:]:
    cfg = json.loads(a); t = time.time(); r = run(cfg); r["sec"] = round(time.time() - t)
    print(json.dumps(r), flush=True)

import sys, math, torch, torch.nn.functional as F
torch.set_num_threads(1)
sys.path.insert(0, "/work/main")
from fastbayes import data, dllp
from fastbayes.models import build
from fastbayes.reference.svgd import pairwise_sq_dists, median_bandwidth
torch.manual_seed(0)
full = data.fashion_mnist("train")
rs = lambda s: data.Split(F.interpolate(s.x, size=(32, 32), mode="bilinear", align_corners=False), s.y)
train, _ = data.train_val_split(rs(full), 0.2, 0)
train = data.Split(train.x[:10000], train.y[:10000])
model = build("lenet5-bmrs", (1, 32, 32)); model.load_state_dict(torch.load("/tmp/dx/base_10000.pt")); model.eval()
ens = dllp.ParticleEnsemble(model, 8, generator=torch.Generator().manual_seed(0))
ens.fit(train, 1, 1e-3, 128, seed=0)
n = 8
g = torch.Generator().manual_seed(1)
idx = torch.stack([torch.randperm(10000, generator=g)[:128] for _ in range(n)])
out = ens._forward_each(train.x[idx])
(F.cross_entropy(out.flatten(0, 1), train.y[idx].flatten(), reduction="sum") * (10000 / 128)).backward()
ens._add_prior_grad()
ps = {k: p for k, p in ens.params.items() if p.grad is not None}
def parts(names, scale=1.0):
    d = pairwise_sq_dists([ps[k].detach() for k in names]); h = median_bandwidth(d) * scale; K = torch.exp(-d / h)
    dr = rp = 0.0
    for k in names:
        X = ps[k].detach().reshape(n, -1).double(); G = -ps[k].grad.reshape(n, -1).double()
        dr += float((K @ G).pow(2).sum()); rp += float(((2 / h) * (K.sum(1, keepdim=True) * X - K @ X)).pow(2).sum())
    iu = torch.triu_indices(n, n, 1)
    return math.sqrt(rp / dr), float(K[iu[0], iu[1]].mean())
allk = list(ps)
print("dims", sum(ps[k][0].numel() for k in allk))
for s in (0.01, 0.1, 1.0, 10.0, 100.0):
    r, k = parts(allk, s); print(f"global kernel, bandwidth x{s}: repulsion/driving {r:.2e}, mean off-diagonal k {k:.3f}")
for layer in ("conv1", "conv2", "fc1", "fc2", "fc3"):
    names = [k for k in allk if k.startswith(layer + ".")]
    r, k = parts(names); print(f"per-layer kernel {layer} ({sum(ps[k][0].numel() for k in names)} dims): repulsion/driving {r:.2e}, mean k {k:.3f}")
# the largest possible repulsion at any h: max over h of (2/h) d exp(-d²/h) = 2/(e d), vs driving norm per particle

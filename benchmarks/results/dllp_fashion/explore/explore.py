import sys, json, time, os
import torch, torch.nn.functional as F
torch.set_num_threads(1)
sys.path.insert(0, "/work/main")
from fastbayes import data, dllp
from fastbayes.models import build
torch.manual_seed(0)
NTR = int(os.environ.get("NTR", 10000))
base = f"/tmp/dx/base_{NTR}.pt"
full, test = data.fashion_mnist("train"), data.fashion_mnist("test")
rs = lambda s: data.Split(F.interpolate(s.x, size=(32, 32), mode="bilinear", align_corners=False), s.y)
full, test = rs(full), rs(test)
train, val = data.train_val_split(full, 0.2, 0)
train = data.Split(train.x[:NTR], train.y[:NTR])
test = data.Split(test.x[:5000], test.y[:5000])
model = build("lenet5-bmrs", (1, 32, 32))
if os.path.exists(base):
    model.load_state_dict(torch.load(base))
else:
    t = time.time()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for ep in range(10):
        perm = torch.randperm(len(train))
        for i in range(0, len(train), 128):
            idx = perm[i:i+128]
            loss = F.cross_entropy(model(train.x[idx]), train.y[idx]); opt.zero_grad(); loss.backward(); opt.step()
    torch.save(model.state_dict(), base); print("plain", time.time() - t, flush=True)
model.eval()
cfg = json.loads(sys.argv[1])
fitkw = {k: cfg.pop(k) for k in list(cfg) if k in ("per_particle_batches", "temperature", "bandwidth_scale", "epochs", "lr")}
t = time.time()
ens = dllp.ParticleEnsemble(model, 8, generator=torch.Generator().manual_seed(0), **cfg)
h = ens.fit(train, fitkw.pop("epochs", 1), fitkw.pop("lr", 1e-3), 128, seed=0, **fitkw)
masks = ens.consensus_mask()
lg = ens.pruned(masks).predict(test.x)
r = dllp.reliability_report(lg, test.y)
pt = dllp.reliability_report(dllp.predict_logits(dllp.apply_masks(model, dllp.magnitude_masks(model, masks)), test.x), test.y)
full_r = dllp.reliability_report(dllp.predict_logits(model, test.x), test.y)
out = {"cfg": sys.argv[1], "sec": round(time.time() - t), "sparsity": round(dllp.sparsity(masks), 4),
       "acc": round(r["accuracy"], 4), "acc_mean": round(r["accuracy_mean"], 4), "acc_std": round(r["accuracy_std"], 4),
       "mi": r["mutual_information"], "ece": round(r["ece"], 4), "nll": round(r["nll"], 4),
       "pt_acc": round(pt["accuracy"], 4), "pt_ece": round(pt["ece"], 4), "pt_nll": round(pt["nll"], 4),
       "plain_acc": round(full_r["accuracy"], 4), "plain_nll": round(full_r["nll"], 4),
       "diag": {k: h[-1][k] for k in ("bandwidth", "median_sq_dist", "repulsion_ratio", "rms_spread", "nll")}}
print(json.dumps(out), flush=True)
open("/tmp/dx/results.jsonl", "a").write(json.dumps(out) + "\n")

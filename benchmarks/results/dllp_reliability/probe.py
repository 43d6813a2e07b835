import sys, json, time, torch
sys.path.insert(0, "/work/main/examples")
from pathlib import Path
import dllp_explore as E
from fastbayes import dllp, metrics
torch.set_num_threads(1)
train, test = E.load(10000)
cache = Path("/work/scratch/dllp/cache"); cache.mkdir(exist_ok=True)
model = E.plain_network(train, cache)
cfgs = [json.loads(a) for a in sys.argv[1:]]
for cfg in cfgs:
    cfg = dict(cfg); ep = cfg.pop("epochs", 1); lr = cfg.pop("lr", 1e-3); noise = cfg.pop("noise", 0.1)
    if cfg.pop("opt", "adam") == "sgd": cfg["optimizer"] = torch.optim.SGD
    t = time.time()
    ens = dllp.ParticleEnsemble(model, 8, noise, generator=torch.Generator().manual_seed(0))
    h = ens.fit(train, ep, lr, 128, seed=0, **cfg)
    logits = ens.predict(test.x)
    r = metrics.reliability_report(logits, test.y)
    cfg.pop("optimizer", None); print(json.dumps({"cfg": cfg, "ep": ep, "lr": lr, "noise": noise, "sec": round(time.time() - t),
                      "acc": round(r["accuracy"], 4), "acc_std": round(r["accuracy_std"], 4), "mi": r["mutual_information"],
                      "ece": round(r["ece"], 4), "nll": round(r["nll"], 4),
                      "hist": [{k: (round(v, 8) if isinstance(v, float) else v) for k, v in e.items() if k in ("repulsion_ratio", "repulsion_ratio_function", "repulsion_ratio_likelihood", "median_sq_dist", "rms_spread", "nll", "kept_units")} for e in h]}), flush=True)
    # big-batch diagnostic: the driving term with less minibatch noise
    plist = [p for p in ens.params.values() if p.requires_grad]
    for B in (1024,):
        g = torch.Generator().manual_seed(1)
        idx = torch.randperm(len(train), generator=g)[:B]
        out = ens(train.x[idx])
        _, d = ens._function_step(out[:, :B] if False else out, train.y[idx].repeat(8).view(8, B), len(train) / B, plist, None, 1.0, True)
        for p in plist: p.grad = None
        print(B, {k: round(v, 6) for k, v in d.items()}, flush=True)

"""One run of the Bernoulli demo with decide(accumulate=True): MODEL SEED Z OUT [PRICE]; the last call settles by
the pooled sign (z = 0).  The demo's defaults otherwise (decide batch 256, max_drop 0.25)."""
import sys, json
import torch
torch.set_num_threads(1)
import fastbayes.apps.demo as D
model, seed, z, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
price = float(sys.argv[5]) if len(sys.argv) > 5 else 0.01
D.DECIDE_ACCUMULATE = True
D.DECIDE_Z = z
rep = D.run("bernoulli", model, "fashion-mnist", 30, seed=seed, out=out, quiet=True, plots=False, price=price)
print(model, seed, z, price, rep["kept_per_layer"], rep["test_accuracy_after"], rep["dense_test_accuracy"], rep["compression_pct"], rep["units_per_epoch"][-8:], flush=True)

import sys, time, statistics, torch, torch.nn.functional as F
torch.set_num_threads(1)
from fastbayes.demo import _prepare, accuracy
from fastbayes.models import build
model_name, epochs, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out, ds, train, val, test = _prepare("/tmp/dense", None, seed, None)
m = build(model_name, tuple(train.x.shape[1:])); opt = torch.optim.Adam(m.parameters(), 1e-3); n = len(train)
for ep in range(epochs):
    m.train(); perm = torch.randperm(n); ts = []
    for i in range(0, n, 128):
        idx = perm[i:i+128]; t0 = time.perf_counter()
        loss = F.cross_entropy(m(train.x[idx]), train.y[idx]); opt.zero_grad(); loss.backward(); opt.step()
        ts.append(1e3*(time.perf_counter()-t0))
    print(f"{model_name} seed {seed} ep{ep+1} val {accuracy(m, val):.4f} step {statistics.median(ts):.2f} ms", flush=True)
print(f"{model_name} seed {seed} dense test {accuracy(m, test):.4f}")

"""Post-training BMR pruning (BMRS §5) on the Table 1 networks: rank, remove progressively, fine-tune one epoch per
step, and mark where BMRS's rule stops.

Starts from the noise-trained, unpruned network that examples/reproduce_bmrs.py saves in its ``l2`` runs
(``<dir>/models/<model>_trained_seed<S>.pt``, 50 epochs), so run that cell first.  Writes
``<dir>/post_training_<model>_seed<S>.json`` and ``.png``: validation accuracy against compression (BMRS's count)
for each criterion, the rule's stop starred, and the test accuracy at the stop.

    python examples/post_training_bmrs.py --model mlp --seed 0 [--criteria bmrs_n_code bmrs_u8 snr] [--steps 20]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import fastbayes as fb
from fastbayes.apps import data
from fastbayes.apps.models import build

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce_bmrs import METHODS, MODELS, accuracy  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=list(MODELS), required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--criteria", nargs="+", default=["bmrs_n_code", "bmrs_u8", "snr"],
                   choices=[m for m, v in METHODS.items() if v is not None])
    p.add_argument("--steps", type=int, default=20, help="the sweep removes 1/steps of the units per step")
    p.add_argument("--dir", default="benchmarks/results/bmrs_table1")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    folder = Path(a.dir)
    ckpt = folder / "models" / f"{a.model}_trained_seed{a.seed}.pt"
    if not ckpt.exists():
        raise SystemExit(f"{ckpt} not found: run examples/reproduce_bmrs.py --model {a.model} --method l2 "
                         f"--seed {a.seed} first (it saves the unpruned network)")
    cfg = MODELS[a.model]
    full = data.bmrs_preprocess(data.fashion_mnist("train"))
    test = data.bmrs_preprocess(data.fashion_mnist("test"))
    train, val = data.train_val_split(full, 0.2, a.seed)
    bs = cfg["batch_size"]

    def batches(split, shuffle_seed=None):
        idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(shuffle_seed)) \
            if shuffle_seed is not None else torch.arange(len(split))
        return [(split.x[idx[i:i + bs]], split.y[idx[i:i + bs]]) for i in range(0, len(split), bs)]

    out = {"model": a.model, "seed": a.seed, "checkpoint_epochs": "50 (the l2 run's unpruned network)",
           "finetune_epochs_per_step": 1, "curves": {}}
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name in a.criteria:
        torch.manual_seed(a.seed)
        model = fb.checkpoint.load(ckpt, build(cfg["arch"], tuple(train.x.shape[1:]))).model
        criterion, options = METHODS[name]
        total = sum(g.mask.numel() for g in fb.nn.gates(model).values())
        t0 = time.perf_counter()
        curve = fb.prune.post_training(model, criterion, batches(train, a.seed), batches(val), lr=cfg["lr"],
                                       step_units=max(1, total // a.steps), progress=False, restore="stop", **options)
        d = curve.to_dict()
        d["test_accuracy_at_stop"] = accuracy(model, test)
        d["seconds"] = time.perf_counter() - t0
        out["curves"][name] = d
        stop = d["stop"]
        print(f"{a.model} seed {a.seed} {name}: stop at point {stop} "
              f"({d['points'][stop]['compression_pct'] if stop is not None else float('nan'):.1f} %), "
              f"test {d['test_accuracy_at_stop']:.4f}, {d['seconds']:.0f} s", flush=True)
        curve.plot(ax=ax, label=name)
    ax.set_title(f"post-training pruning, {'MLP 1024-150-150-10' if a.model == 'mlp' else 'Lenet5'}, seed {a.seed}")
    fig.tight_layout()
    fig.savefig(folder / f"post_training_{a.model}_seed{a.seed}.png", dpi=120)
    (folder / f"post_training_{a.model}_seed{a.seed}.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

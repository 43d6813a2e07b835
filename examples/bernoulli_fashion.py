"""Bernoulli gates with the cost-aware prior on Fashion-MNIST: the robustness grid (seeds × starting widths), each
run with its dense baseline trained in the same process.  Resumable: one folder per run, runs with a finished
report.json (same epochs and price) are skipped; two runs at a time, one thread each.

    .venv/bin/python examples/bernoulli_fashion.py --models mlp-300-100 mlp-600-200 mlp-1200-400 --seeds 0 1 2 \
        --epochs 30 --out benchmarks/results/bernoulli_cost

Each run is ``fastbayes demo --method bernoulli --model MODEL --seed SEED --epochs E --price P --decide-batch D`` on
the full 48k training split (``OUT/MODEL-sSEED/report.json``, plots for the first seed).  ``OUT/summary.json`` and
``OUT/summary.md`` are rebuilt from every report.json on disk (``--summarize`` does only that): final widths per
layer, their spread across the runs, accuracy against the dense baseline, binary gates, training wall time against
dense, and the epoch after which no width changed any more; ``OUT/widths.png`` plots every run's widths per epoch
and its step time against its live units.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def done(d: Path, epochs: int, price: float, decide_batch: int) -> bool:
    f = d / "report.json"
    if not f.exists():
        return False
    rep = json.loads(f.read_text())
    return (rep.get("epochs") == epochs and rep.get("price") == price
            and rep.get("decide", {}).get("batch", 256) == decide_batch)


def command(model: str, seed: int, epochs: int, price: float, decide_batch: int, d: Path, plots: bool) -> list[str]:
    return [sys.executable, "-m", "fastbayes", "demo", "--method", "bernoulli", "--model", model, "--seed",
            str(seed), "--epochs", str(epochs), "--price", str(price), "--decide-batch", str(decide_batch),
            "--out", str(d)] + ([] if plots else ["--no-plots"])


def last_change(units: list[int]) -> int:
    """The epoch after which the number of live units never changed again (0: never changed)."""
    last = 0
    for e in range(1, len(units)):
        if units[e] != units[e - 1]:
            last = e
    return last


def summarize(out: Path) -> list[dict]:
    rows = []
    for f in sorted(out.glob("*/report.json")):
        r = json.loads(f.read_text())
        rows.append({"run": f.parent.name, "model": r["model"], "seed": r["seed"], "epochs": r["epochs"],
                     "price": r["price"], "decide_batch": r.get("decide", {}).get("batch", 256), "widths": list(r["kept_per_layer"].values()),
                     "start_widths": list(r["total_per_layer"].values()),
                     "test_accuracy": r["test_accuracy_after"], "dense_test_accuracy": r["dense_test_accuracy"],
                     "compression_pct": r["compression_pct"], "gates_binary": r["gates_binary"],
                     "train_seconds": r["train_seconds"], "dense_train_seconds": r["dense_train_seconds"],
                     "widths_last_changed_after_epoch": last_change(r["units_per_epoch"]),
                     "units_per_epoch": r["units_per_epoch"], "step_ms_per_epoch": r["train_step_ms_per_epoch"]})
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    lines = ["| run | start | final widths | test acc. % | dense % | comp. % | binary | train s (dense) | "
             "widths settled after epoch |", "|---|---|---|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['run']} | {'-'.join(map(str, r['start_widths']))} | {'-'.join(map(str, r['widths']))} | "
                     f"{100 * r['test_accuracy']:.2f} | {100 * r['dense_test_accuracy']:.2f} | "
                     f"{r['compression_pct']:.1f} | {r['gates_binary']} | {r['train_seconds']:.0f} "
                     f"({r['dense_train_seconds']:.0f}) | {r['widths_last_changed_after_epoch']} of {r['epochs']} |")
    if rows:
        n_layers = len(rows[0]["widths"])
        lines.append("")
        for i in range(n_layers):
            w = [r["widths"][i] for r in rows if len(r["widths"]) == n_layers]
            mid = (max(w) + min(w)) / 2
            lines.append(f"layer {i}: widths {min(w)}–{max(w)} over {len(w)} runs, mean {statistics.mean(w):.1f}: "
                         f"±{100 * (max(w) - mid) / mid:.1f} % around the midpoint")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    if rows:
        plot(out)
    return rows


def plot(out: Path) -> None:
    """OUT/widths.png: every run's width per layer after each epoch (log scale), coloured by starting width; and the
    median train step per epoch beside its live units."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    reports = [json.loads(f.read_text()) for f in sorted(out.glob("*/report.json"))]
    starts = sorted({tuple(r["total_per_layer"].values()) for r in reports})
    colours = dict(zip(starts, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    n_layers = max(len(r["total_per_layer"]) for r in reports)
    fig, axes = plt.subplots(1, n_layers + 1, figsize=(5 * (n_layers + 1), 4))
    for r in reports:
        c = colours[tuple(r["total_per_layer"].values())]
        label = f"{'-'.join(map(str, r['total_per_layer'].values()))} s{r['seed']}"
        for i, name in enumerate(r["total_per_layer"]):
            w = [r["total_per_layer"][name]] + [h["per_layer"][name] for h in r["history"]]
            axes[i].plot(range(len(w)), w, color=c, alpha=0.8, label=label)
        axes[-1].plot(r["units_per_epoch"][1:], r["train_step_ms_per_epoch"], "o-", color=c, alpha=0.8, ms=3)
    for i, name in enumerate(reports[0]["total_per_layer"]):
        axes[i].set(yscale="log", xlabel="epoch", ylabel="kept units", title=f"layer {name}")
    axes[0].legend(fontsize=7)
    axes[-1].set(xscale="log", xlabel="live units", ylabel="median train step (ms)",
                 title="step time against live units (each epoch)")
    fig.suptitle(f"Bernoulli gates, cost prior (price {reports[0]['price']:g}): widths from every start")
    fig.tight_layout()
    fig.savefig(out / "widths.png", dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["mlp-300-100", "mlp-600-200", "mlp-1200-400"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--price", type=float, default=0.01)
    p.add_argument("--decide-batch", type=int, default=256, help="examples that judge the units in transit")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/bernoulli_cost"))
    p.add_argument("--summarize", action="store_true", help="only rebuild OUT/summary.* and OUT/widths.png")
    a = p.parse_args(argv)
    out = Path(a.out)
    if a.summarize:
        summarize(out)
        print((out / "summary.md").read_text())
        return
    (out / "logs").mkdir(parents=True, exist_ok=True)
    todo = [(m, s) for s in a.seeds for m in a.models
            if not done(out / f"{m}-s{s}", a.epochs, a.price, a.decide_batch)]
    print(f"{len(todo)} runs to do, {a.jobs} at a time", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    running = []
    while todo or running:
        while todo and len(running) < a.jobs:
            m, s = todo.pop(0)
            d = out / f"{m}-s{s}"
            log = open(out / "logs" / f"{m}-s{s}.log", "w")
            cmd = command(m, s, a.epochs, a.price, a.decide_batch, d, s == a.seeds[0])
            running.append(((m, s), log, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                                          stderr=subprocess.STDOUT)))
            print(time.strftime("%H:%M:%S"), "start", m, s, flush=True)
        for item in list(running):
            (m, s), log, proc = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                print(time.strftime("%H:%M:%S"), m, s, "exit", proc.returncode, flush=True)
                summarize(out)
        time.sleep(2)
    for r in summarize(out):
        print(f"{r['run']:>20}: widths {r['widths']}, test {100 * r['test_accuracy']:.2f} % "
              f"(dense {100 * r['dense_test_accuracy']:.2f} %), binary {r['gates_binary']}, settled after epoch "
              f"{r['widths_last_changed_after_epoch']}")


if __name__ == "__main__":
    main()

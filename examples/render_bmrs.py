"""Markdown table of the BMRS Fashion-MNIST runs (benchmarks/results/bmrs_fashion/*.json) beside BMRS Table 1."""
import json
import statistics
import sys
from pathlib import Path

# BMRS Table 1, Fashion-MNIST columns (as quoted in docs/RESULTS.md §1.1): (Comp. %, Acc. %), mean ± std over 10 seeds
PAPER = {
    ("mlp", "none"): ("0.00 ± 0.00", "88.17 ± 0.20"), ("mlp", "snr"): ("99.83 ± 0.00", "10.00 ± 0.00"),
    ("mlp", "bmrs_n"): ("93.20 ± 0.66", "84.99 ± 0.35"), ("mlp", "bmrs_u8"): ("93.02 ± 0.81", "85.01 ± 0.32"),
    ("mlp", "bmrs_u4"): ("91.57 ± 0.71", "85.79 ± 0.34"),
    ("lenet5-bmrs", "none"): ("0.00 ± 0.00", "89.16 ± 0.27"), ("lenet5-bmrs", "snr"): ("98.47 ± 3.45", "17.01 ± 21.03"),
    ("lenet5-bmrs", "bmrs_n"): ("88.02 ± 1.00", "77.90 ± 2.44"), ("lenet5-bmrs", "bmrs_u8"): ("87.61 ± 0.72", "77.23 ± 3.49"),
    ("lenet5-bmrs", "bmrs_u4"): ("88.72 ± 0.73", "81.10 ± 1.50"),
}
PAPER.update({(m, "bmrs_n_code"): PAPER[(m, "bmrs_n")] for m in ("mlp", "lenet5-bmrs")})  # the paper ran the code
ORDER = ["none", "snr", "bmrs_n", "bmrs_n_code", "bmrs_u8", "bmrs_u4"]


def fmt(vals):
    if not vals:
        return "—"
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"


def main(folder="benchmarks/results/bmrs_fashion"):
    runs = [json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))]
    lines = ["| model | method | seeds | epochs (fine-tune) | ours: kept units | ours: Comp. % | ours: test acc. % | BMRS: Comp. % | BMRS: acc. % |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    points = []
    for model in ("mlp", "lenet5-bmrs"):
        for method in ORDER:
            rs = [r for r in runs if r["model"] == model and r["method"] == method]
            if not rs:
                continue
            comp = [r["compression_pct"] for r in rs]
            acc = [100 * r.get("test_accuracy_compact", r["test_accuracy"]) for r in rs]
            ep = sorted({(r["epochs"], r["finetune"]) for r in rs})
            paper = PAPER.get((model, method), ("—", "—"))
            kept = [sum(r["kept_per_layer"].values()) for r in rs if "kept_per_layer" in r]
            lines.append(f"| {model} | {method} | {len(rs)} | {', '.join(f'{e} ({f})' for e, f in ep)} | {fmt(kept)} | "
                         f"{fmt(comp)} | {fmt(acc)} | {paper[0]} | {paper[1]} |")
            points.append((model, method, comp, acc, paper))
    print("\n".join(lines))
    _plot(points, Path(folder) / "bmrs_table1.png")


def _plot(points, path):
    """Compression vs accuracy: our runs (one dot per seed) beside BMRS Table 1's means (crosses)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = sorted({p[0] for p in points}, reverse=True)   # mlp first
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    colors = dict(zip(ORDER, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, model in zip(axes[0], models):
        for m, method, comp, acc, paper in points:
            if m != model:
                continue
            ax.scatter(comp, acc, color=colors[method], label=f"{method} (ours)", alpha=0.8)
        for (m, method), (comp, acc) in PAPER.items():   # every Table 1 mean, whether or not we ran it
            if m == model and method != "bmrs_n_code":
                ax.scatter([float(comp.split()[0])], [float(acc.split()[0])], color=colors[method], marker="x", s=80,
                           label=f"{method} (BMRS Table 1)")
        ax.set(title=f"{model}, Fashion-MNIST", xlabel="compression (% parameters removed)", ylabel="test accuracy %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Render a pytest-benchmark JSON into a Markdown table and the train-step overhead plot.

    python benchmarks/render.py benchmarks/results/cpu-2core-2026-11-21.json
writes <json>.md (every group, side-by-side speed-ups) and <json>-overhead.png (gates / plain step-time ratio).
"""
import sys
from pathlib import Path

from fastbayes.benchtools import load, machine, overhead_rows, overhead_table, table


def overhead_plot(data, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = {}
    for r in overhead_rows(data):   # interleaved medians of one run
        if r["group"].startswith("train step"):
            groups.setdefault(r["group"], {})[r["provider"]] = r["median_ms"]
    labels = [g for g, provs in groups.items() if "plain" in provs]
    providers = sorted({p for g in labels for p in groups[g] if p != "plain"})
    # a provider missing from a group (the peer runs only per element) leaves a gap, not a shifted bar
    series = {p: [groups[g][p] / groups[g]["plain"] if p in groups[g] else float("nan") for g in labels]
              for p in providers}
    labels = [g.replace("train step ", "") for g in labels]
    if not labels:
        return False
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(len(series), 1)
    for k, (p, vals) in enumerate(sorted(series.items())):
        xs = [i + k * width for i in range(len(vals))]
        ax.bar(xs, vals, width, label=p)
    ax.axhline(1.10, color="#c0392b", ls="--", lw=1, label="goal 1.10×")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter
    ratio = FuncFormatter(lambda v, _: f"{v:.2f}×")   # not 1.25×10⁰ (a range under a decade labels minor ticks)
    ax.yaxis.set_major_formatter(ratio)
    ax.yaxis.set_minor_formatter(ratio)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(labels))], labels, fontsize=7, rotation=15)
    ax.set_ylabel("step time / plain step")
    ax.set_title("training-step overhead of gates (same model and batch, one run)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(path):
    path = Path(path)
    data = load(path)
    md = f"Machine: {machine(data)}; run {data.get('datetime', '?')}.\n\n"
    over = overhead_table(data, fmt="md")
    if over:
        md += ("Overhead (providers timed round-robin in one run; ratio to the plain model, or to a plain multiply):"
               "\n\n") + over + "\n\n"
    md += table(data, fmt="md") + "\n"
    path.with_suffix(".md").write_text(md)
    overhead_plot(data, path.with_name(path.stem + "-overhead.png"))
    print(md)


if __name__ == "__main__":
    main(sys.argv[1])

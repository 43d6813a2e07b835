"""BMRS Table 1 (Fashion-MNIST) from the runs of examples/run_bmrs_table1.py, beside the paper's numbers.

    python examples/render_bmrs.py [benchmarks/results/bmrs_table1] [--update docs/RESULTS.md]

Prints a Markdown table (ours mean ± std over seeds next to BMRS Table 1, and the gap in standard deviations)
and writes ``table1.md`` and ``table1.png`` (compression vs accuracy, one dot per seed, the paper's means as
error bars) into the folder; ``--update`` also replaces the table between the ``<!-- table1`` markers of that file.
"""
import json
import statistics
import sys
from pathlib import Path

# BMRS Table 1, Fashion-MNIST columns (Wright et al. 2024): (Comp. %, Acc. %) as (mean, std) over 10 seeds
PAPER = {
    ("mlp", "none"): ((0.00, 0.00), (88.17, 0.20)), ("mlp", "l2"): ((87.86, 2.27), (18.23, 10.22)),
    ("mlp", "etheta"): ((91.76, 0.81), (85.59, 0.26)), ("mlp", "snr"): ((99.83, 0.00), (10.00, 0.00)),
    ("mlp", "bmrs_n"): ((93.20, 0.66), (84.99, 0.35)), ("mlp", "bmrs_u8"): ((93.02, 0.81), (85.01, 0.32)),
    ("mlp", "bmrs_u4"): ((91.57, 0.71), (85.79, 0.34)),
    ("lenet5", "none"): ((0.00, 0.00), (89.16, 0.27)), ("lenet5", "l2"): ((83.62, 1.69), (10.00, 0.00)),
    ("lenet5", "etheta"): ((89.71, 0.56), (50.93, 33.45)), ("lenet5", "snr"): ((98.47, 3.45), (17.01, 21.03)),
    ("lenet5", "bmrs_n"): ((88.02, 1.00), (77.90, 2.44)), ("lenet5", "bmrs_u8"): ((87.61, 0.72), (77.23, 3.49)),
    ("lenet5", "bmrs_u4"): ((88.72, 0.73), (81.10, 1.50)),
}
for _m in ("mlp", "lenet5"):      # the paper's BMRS_N numbers came from the released code
    PAPER[(_m, "bmrs_n_code")] = PAPER[(_m, "bmrs_n")]
ORDER = ["none", "l2", "etheta", "snr", "bmrs_n", "bmrs_n_code", "bmrs_u8", "bmrs_u4"]
LABEL = {"none": "None", "l2": "L2", "etheta": "E[θ]", "snr": "SNR", "bmrs_n": "BMRS_N (paper ΔF)",
         "bmrs_n_code": "BMRS_N (code ΔF)", "bmrs_u8": "BMRS_U-8", "bmrs_u4": "BMRS_U-4"}


def stats(vals):
    if not vals:
        return None
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def fmt(ms):
    return "—" if ms is None else f"{ms[0]:.2f} ± {ms[1]:.2f}"


def gap(ours, paper):
    """|ours − paper| in units of the larger of the two standard deviations (at least 0.1 points)."""
    if ours is None:
        return None
    return abs(ours[0] - paper[0]) / max(ours[1], paper[1], 0.1)


def load(folder):
    return [json.loads(p.read_text()) for p in sorted(Path(folder).glob("*_seed*.json"))
            if not p.name.startswith("post_training")]


def rows(runs):
    out = []
    for model in ("mlp", "lenet5"):
        keys = sorted({(r["method"], r.get("tag", "")) for r in runs if r["model"] == model},
                      key=lambda k: (k[1] != "", ORDER.index(k[0]), k[1]))
        for method, tag in keys:
            rs = [r for r in runs if r["model"] == model and r["method"] == method and r.get("tag", "") == tag]
            out.append(dict(model=model, method=method, tag=tag, seeds=sorted(r["seed"] for r in rs),
                            comp=stats([r["compression_pct"] for r in rs]),
                            acc=stats([100 * r["test_accuracy"] for r in rs]),
                            kept=stats([sum(r["kept_per_layer"].values()) for r in rs]) if rs[0]["kept_per_layer"]
                            else None,
                            paper=PAPER.get((model, method)), runs=rs))
    return out


def table(rs) -> str:
    lines = ["| model | method | seeds | kept units | ours: Comp. % | ours: test acc. % | BMRS: Comp. % | "
             "BMRS: acc. % | gap (σ): comp / acc |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rs:
        p = r["paper"]
        name = LABEL[r["method"]] + (f" — fastbayes {r['tag']}" if r["tag"] else "")
        gaps = "—" if p is None else f"{gap(r['comp'], p[0]):.1f} / {gap(r['acc'], p[1]):.1f}"
        lines.append(f"| {r['model']} | {name} | {len(r['seeds'])} | {fmt(r['kept']) if r['kept'] else '—'} | "
                     f"{fmt(r['comp'])} | {fmt(r['acc'])} | {fmt(p[0]) if p else '—'} | {fmt(p[1]) if p else '—'} | "
                     f"{gaps} |")
    return "\n".join(lines)


def plot(rs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), squeeze=False)
    colors = dict(zip(ORDER, plt.rcParams["axes.prop_cycle"].by_key()["color"] + ["#444444"]))
    for ax, model in zip(axes[0], ("mlp", "lenet5")):
        for r in rs:
            if r["model"] != model:
                continue
            xs = [x["compression_pct"] for x in r["runs"]]
            ys = [100 * x["test_accuracy"] for x in r["runs"]]
            ax.scatter(xs, ys, color=colors[r["method"]], marker="^" if r["tag"] else "o", alpha=0.8,
                       label=f"{LABEL[r['method']]} ({'fastbayes ' + r['tag'] if r['tag'] else 'ours'})")
        for (m, method), (comp, acc) in PAPER.items():
            if m == model and method != "bmrs_n_code":
                ax.errorbar(comp[0], acc[0], xerr=comp[1], yerr=acc[1], color=colors[method], marker="x", ms=9,
                            capsize=2, ls="none", label=f"{LABEL[method].split(' (')[0]} (BMRS Table 1)")
        ax.set(title=f"{'MLP 1024-150-150-10' if model == 'mlp' else 'Lenet5'}, Fashion-MNIST",
               xlabel="compression % (BMRS count)", ylabel="test accuracy %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def update(doc: Path, md: str) -> None:
    text = doc.read_text()
    start = text.index("<!-- table1")
    start = text.index("\n", start) + 1
    end = text.index("<!-- /table1 -->")
    doc.write_text(text[:start] + md + "\n" + text[end:])


def main(folder="benchmarks/results/bmrs_table1", doc=None):
    rs = rows(load(folder))
    md = table(rs)
    print(md)
    Path(folder, "table1.md").write_text(md + "\n")
    plot(rs, Path(folder) / "table1.png")
    print(f"wrote {Path(folder) / 'table1.md'} and {Path(folder) / 'table1.png'}")
    if doc is not None:
        update(Path(doc), md)
        print(f"updated the table in {doc}")


if __name__ == "__main__":
    args = sys.argv[1:]
    doc = None
    if "--update" in args:
        k = args.index("--update")
        doc = args[k + 1]
        del args[k:k + 2]
    main(*args, doc=doc)

"""Markdown table of the BMRS Fashion-MNIST runs (benchmarks/results/bmrs_fashion/*.json) beside BMRS Table 1."""
import json
import statistics
import sys
from pathlib import Path

# BMRS Table 1, Fashion-MNIST columns (ANCHORS.md §2.1): (Comp. %, Acc. %), mean ± std over 10 seeds
PAPER = {
    ("mlp", "none"): ("0.00 ± 0.00", "88.17 ± 0.20"), ("mlp", "snr"): ("99.83 ± 0.00", "10.00 ± 0.00"),
    ("mlp", "bmrs_n"): ("93.20 ± 0.66", "84.99 ± 0.35"), ("mlp", "bmrs_u8"): ("93.02 ± 0.81", "85.01 ± 0.32"),
    ("mlp", "bmrs_u4"): ("91.57 ± 0.71", "85.79 ± 0.34"),
    ("lenet5-bmrs", "none"): ("0.00 ± 0.00", "89.16 ± 0.27"), ("lenet5-bmrs", "snr"): ("98.47 ± 3.45", "17.01 ± 21.03"),
    ("lenet5-bmrs", "bmrs_n"): ("88.02 ± 1.00", "77.90 ± 2.44"), ("lenet5-bmrs", "bmrs_u8"): ("87.61 ± 0.72", "77.23 ± 3.49"),
    ("lenet5-bmrs", "bmrs_u4"): ("88.72 ± 0.73", "81.10 ± 1.50"),
}
ORDER = ["none", "snr", "bmrs_n", "bmrs_u8", "bmrs_u4"]


def fmt(vals):
    if not vals:
        return "—"
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"


def main(folder="benchmarks/results/bmrs_fashion"):
    runs = [json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))]
    lines = ["| model | method | seeds | epochs (fine-tune) | ours: Comp. % | ours: test acc. % | BMRS: Comp. % | BMRS: acc. % |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for model in ("mlp", "lenet5-bmrs"):
        for method in ORDER:
            rs = [r for r in runs if r["model"] == model and r["method"] == method]
            if not rs:
                continue
            comp = [r["compression_pct"] for r in rs]
            acc = [100 * r.get("test_accuracy_compact", r["test_accuracy"]) for r in rs]
            ep = sorted({(r["epochs"], r["finetune"]) for r in rs})
            paper = PAPER.get((model, method), ("—", "—"))
            lines.append(f"| {model} | {method} | {len(rs)} | {', '.join(f'{e} ({f})' for e, f in ep)} | {fmt(comp)} | "
                         f"{fmt(acc)} | {paper[0]} | {paper[1]} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main(*sys.argv[1:])

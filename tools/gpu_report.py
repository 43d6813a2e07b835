#!/usr/bin/env python3
"""Render the GPU check's benchmark results (benchmarks/test_bench_gpu.py) as Markdown tables of ratios and a
compact JSON summary.  Standard library only: it runs where the check runs, before or without fastbayes.

Inputs: pytest-benchmark JSON files (``--benchmark-json``) and/or JSON-lines files written through
``FASTBAYES_GPU_CHECK_RECORDS`` (one benchmark per line, same fields); a later record of the same name wins.
``--steps`` adds the check's step table (TSV: name, status, exit code, seconds, budget) and ``--info`` the output
of ``fastbayes info --json``.

Tables:
* device copy bandwidth (bytes read + written per second);
* ops: time per call, GB/s over the bytes the op must move, its % of the copy bandwidth, and speed-ups
  eager-reference time / time and torch.compile(reference) time / time (> 1: faster than the reference);
* train step: ms per step and gated / plain of the same model in the same run, next to BMRS's ratio.

    python tools/gpu_report.py --md report.md --json report.json bench.jsonl
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys

PROVIDER_ORDER = {"reference": 0, "reference+compile": 1, "cuda": 2, "triton": 3, "cpu": 4}


def load(paths: list[str]) -> list[dict]:
    """Benchmark records from pytest-benchmark JSON or JSON-lines files, deduplicated by name (last wins)."""
    by_name: dict[str, dict] = {}
    for path in paths:
        with open(path) as fh:
            text = fh.read()
        if not text.strip():
            continue
        try:
            doc = json.loads(text)
            recs = doc["benchmarks"] if isinstance(doc, dict) else doc
        except json.JSONDecodeError:     # JSON lines; a line cut short by a killed run is skipped
            recs = []
            for line in text.splitlines():
                try:
                    recs.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        for r in recs:
            if isinstance(r, dict) and "extra_info" in r and "median_s" in r["extra_info"]:
                by_name[r["name"]] = r
    return list(by_name.values())


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and v is not None else float("nan")


def _fmt(v, digits=2) -> str:
    v = _num(v)
    if not math.isfinite(v):
        return "–"
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}f}" if abs(v) >= 0.01 else f"{v:.2e}"


def _case_key(e: dict) -> tuple:
    return (e["op"], tuple(e["shape"]), e["dtype"], e.get("granularity") or "", e["mode"])


def analyse(records: list[dict]) -> dict:
    """The derived numbers: copy GB/s, per-op rows with ratios, per-train-step rows with gated/plain."""
    copy = [r["extra_info"] for r in records if r["extra_info"].get("kind") == "copy"]
    copy_gbps = _num(copy[-1]["gbps"]) if copy else float("nan")
    ops = [r["extra_info"] for r in records if r["extra_info"].get("kind") == "op"]
    cases: dict[tuple, dict[str, dict]] = {}
    for e in ops:
        cases.setdefault(_case_key(e), {})[e["provider"]] = e
    op_rows = []
    for key in sorted(cases, key=lambda k: (k[0], -math.prod(k[1]), k[2], k[3], k[4])):
        provs = cases[key]
        eager = _num(provs.get("reference", {}).get("median_s"))
        comp = _num(provs.get("reference+compile", {}).get("median_s"))
        for prov in sorted(provs, key=lambda p: PROVIDER_ORDER.get(p, 9)):
            e = provs[prov]
            t = _num(e["median_s"])
            bw = copy_gbps if math.isfinite(copy_gbps) else _num(e.get("copy_gbps"))
            gbps = _num(e.get("gbps"))
            op_rows.append(dict(op=key[0], shape=list(key[1]), dtype=key[2], granularity=key[3] or None,
                                mode=key[4], provider=prov, us=t * 1e6, gbps=gbps,
                                frac_of_copy=gbps / bw if bw > 0 else float("nan"),
                                speedup_vs_eager=eager / t if t > 0 else float("nan"),
                                speedup_vs_compile=comp / t if t > 0 else float("nan")))
    trains = [r["extra_info"] for r in records if r["extra_info"].get("kind") == "train"]
    plain = {(e["model"], e["batch"], tuple(e["input"])): _num(e["median_s"]) for e in trains
             if e["provider"] == "plain"}
    train_rows = []
    for e in sorted(trains, key=lambda e: (e["model"], e["provider"] != "plain", e.get("granularity") or "",
                                           PROVIDER_ORDER.get(e["provider"], 9))):
        t = _num(e["median_s"])
        p = plain.get((e["model"], e["batch"], tuple(e["input"])), float("nan"))
        train_rows.append(dict(model=e["model"], batch=e["batch"], input=e["input"], provider=e["provider"],
                               granularity=e.get("granularity"), gates=e.get("gates", 0), ms=t * 1e3,
                               gated_over_plain=t / p if p > 0 else float("nan"),
                               bmrs_ratio=_num(e.get("bmrs_ratio"))))
    device = next((r["extra_info"].get("device_name") for r in records), None)
    dry = any(r["extra_info"].get("dry_run") for r in records)
    return dict(device=device, dry_run=dry, copy_gbps=copy_gbps, ops=op_rows, train=train_rows)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def render(summary: dict, steps: list[dict] | None = None, info: dict | None = None) -> str:
    lines = []
    if steps is not None:
        lines += ["## Steps", ""]
        lines += _table(["step", "status", "exit", "seconds", "budget s"],
                        [[s["name"], s["status"], str(s["rc"]), str(s["seconds"]), str(s["budget"])] for s in steps])
        lines.append("")
    if info:
        lines += ["## Environment", ""]
        lines.append(f"torch {info.get('torch')} (CUDA {info.get('torch_cuda')}), triton {info.get('triton')} "
                     f"({info.get('triton_mode')}), GPUs: {', '.join(info.get('cuda_devices') or []) or 'none'}; "
                     "backends: " + ", ".join(f"{k} {'yes' if v else 'no'}"
                                             for k, v in (info.get("backends") or {}).items()))
        for k, why in (info.get("why_not") or {}).items():
            lines.append(f"* {k}: {why}")
        lines.append("")
    dev = summary.get("device") or "?"
    lines += [f"## Benchmarks on {dev}" + (" (DRY RUN: CPU, tiny sizes, Triton interpreter; the numbers mean "
                                          "nothing)" if summary.get("dry_run") else ""), ""]
    lines.append(f"Device copy bandwidth (read + write): **{_fmt(summary['copy_gbps'], 1)} GB/s**")
    lines.append("")
    if summary["ops"]:
        lines += ["### Ops", "",
                  "GB/s counts the bytes the op must move (inputs read once, outputs written once); "
                  "× eager and × compile are reference time / this time (> 1: faster). \"element\" draws a "
                  "truncated normal per element and is compute-bound.", ""]
        rows = [[r["op"], "×".join(map(str, r["shape"])), r["dtype"], r["granularity"] or "", r["mode"],
                 r["provider"], _fmt(r["us"], 1), _fmt(r["gbps"], 1), _fmt(100 * r["frac_of_copy"], 1),
                 _fmt(r["speedup_vs_eager"]), _fmt(r["speedup_vs_compile"])] for r in summary["ops"]]
        lines += _table(["op", "shape", "dtype", "gran", "mode", "provider", "µs/call", "GB/s", "% copy BW",
                         "× eager", "× compile"], rows)
        lines.append("")
    if summary["train"]:
        lines += ["### Train step (gated / plain, same model, same run)", "",
                  "BMRS Table 3: ResNet-50 329.84 / 47.78 ms = 6.9×; Lenet5 (MNIST) 11.39 / 2.31 ms = 4.9×.", ""]
        rows = [[r["model"], f"{r['batch']}×{'×'.join(map(str, r['input']))}", r["provider"],
                 r["granularity"] or "", str(r["gates"]), _fmt(r["ms"], 2), _fmt(r["gated_over_plain"]),
                 _fmt(r["bmrs_ratio"], 1) if r["provider"] != "plain" else ""] for r in summary["train"]]
        lines += _table(["model", "batch×input", "provider", "gran", "gates", "ms/step", "gated/plain", "BMRS"],
                        rows)
        lines.append("")
    return "\n".join(lines)


def _columns(rows: list[list[str]]) -> list[str]:
    """Plain-text table: each column padded to its widest cell, numbers right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    num = [all(c in ("", "–") or re.fullmatch(r"-?[0-9.]+(e[-+]?[0-9]+)?", c) for c in (r[i] for r in rows[1:]))
           for i in range(len(widths))]
    return ["  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(r, widths, num)).rstrip() for r in rows]


def render_brief(summary: dict) -> str:
    """Console digest: copy bandwidth, the kernel providers' rows, the train steps (the full tables are in --md)."""
    lines = [f"device {summary.get('device')}{' (dry run)' if summary.get('dry_run') else ''}: "
             f"copy {_fmt(summary['copy_gbps'], 1)} GB/s"]
    rows = [["op", "shape", "dtype", "gran", "mode", "provider", "us/call", "GB/s", "%copy", "x eager", "x compile"]]
    for r in summary["ops"]:
        if r["provider"] not in ("reference", "reference+compile"):
            rows.append([r["op"], "x".join(map(str, r["shape"])), r["dtype"], r["granularity"] or "", r["mode"],
                         r["provider"], _fmt(r["us"], 1), _fmt(r["gbps"], 1), _fmt(100 * r["frac_of_copy"], 1),
                         _fmt(r["speedup_vs_eager"]), _fmt(r["speedup_vs_compile"])])
    if len(rows) > 1:
        lines += _columns(rows)
    rows = [["train step", "input", "provider", "gran", "ms/step", "gated/plain", "BMRS"]]
    for r in summary["train"]:
        rows.append([r["model"], f"{r['batch']}x{'x'.join(map(str, r['input']))}", r["provider"],
                     r["granularity"] or "", _fmt(r["ms"], 2), _fmt(r["gated_over_plain"]),
                     _fmt(r["bmrs_ratio"], 1) if r["provider"] != "plain" else ""])
    if len(rows) > 1:
        lines += _columns(rows)
    return "\n".join(lines)


def read_steps(path: str) -> list[dict]:
    steps = []
    with open(path) as fh:
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 5:
                steps.append(dict(name=parts[0], status=parts[1], rc=int(parts[2]), seconds=int(parts[3]),
                                  budget=int(parts[4])))
    return steps


def _finite(obj):
    """NaN/inf -> None, so the JSON is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="pytest-benchmark JSON or JSON-lines record files")
    ap.add_argument("--steps", help="TSV of the check's steps (name, status, rc, seconds, budget)")
    ap.add_argument("--info", help="JSON from `fastbayes info --json`")
    ap.add_argument("--md", help="write the Markdown here (default: stdout)")
    ap.add_argument("--json", help="write the summary JSON here")
    ap.add_argument("--brief", action="store_true", help="print the console digest instead of the Markdown")
    ap.add_argument("--extra", action="append", default=[], metavar="KEY=VALUE",
                    help="extra top-level field of the summary JSON (repeatable)")
    args = ap.parse_args(argv)
    records = []
    missing = []
    for f in args.files:
        try:
            records += load([f])
        except OSError:
            missing.append(f)
    summary = analyse(records)
    steps = read_steps(args.steps) if args.steps else None
    info = None
    if args.info:
        try:
            with open(args.info) as fh:
                info = json.load(fh)
        except (OSError, json.JSONDecodeError):
            info = None
    md = render(summary, steps, info)
    if missing:
        md += "\n(missing result files: " + ", ".join(missing) + ")\n"
    if args.json:
        doc = dict(summary, steps=steps, info=info, n_records=len(records))
        for kv in args.extra:
            k, _, v = kv.partition("=")
            doc[k] = v
        with open(args.json, "w") as fh:
            json.dump(_finite(doc), fh, indent=1)
    if args.md:
        with open(args.md, "w") as fh:
            fh.write(md)
    if args.brief:
        print(render_brief(summary))
    elif not args.md:
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Turn pytest-benchmark JSON into side-by-side tables (used by ``fastbayes bench`` and benchmarks/render.py).

Convention for the suites in benchmarks/: each benchmark sets ``benchmark.group`` (what is measured, e.g.
"lognormal fwd+bwd (128,64,32,32) sample") and ``benchmark.extra_info["provider"]`` (who does it: "reference",
"reference+compile", "cpu", "triton", "cuda", "copy", ...).  Ratios are taken within one group of one run.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

BASELINES = ("reference", "plain")


def load(path) -> dict:
    return json.loads(Path(path).read_text())


def rows(data: dict) -> list[dict]:
    out = []
    for b in data.get("benchmarks", []):
        stats = b.get("stats") or {}
        if "median" not in stats:
            continue
        out.append({"group": b.get("group") or b["name"], "provider": b.get("extra_info", {}).get("provider", b["name"]),
                    "median_ms": 1e3 * stats["median"], "extra": b.get("extra_info", {})})
    return out


def best_seconds(fn, reps: int, runs: int = 5) -> float:
    """Least seconds per call over ``runs`` runs of ``reps`` calls (the quietest run on a shared machine)."""
    fn()
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def interleaved(fns: dict, rounds: int, warmup: int = 3, inner: int = 1) -> dict[str, float]:
    """Median ms per call of each function in ``fns``, timed round-robin (a, b, c, a, b, c, ...) so that load
    changes on a shared machine hit every provider alike; ``inner`` calls per timing for µs-scale functions."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {p: [] for p in fns}
    for _ in range(rounds):
        for p, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            times[p].append((time.perf_counter() - t0) / inner)
    return {p: 1e3 * statistics.median(ts) for p, ts in times.items()}


def overhead_rows(data: dict) -> list[dict]:
    """The interleaved measurements (``extra_info["interleaved_ms"]`` or ``["interleaved_us"]``): one row per group
    and provider, with the time relative to the group's ``plain`` provider (the plain model, or a plain multiply)."""
    out = []
    for r in rows(data):
        ms = r["extra"].get("interleaved_ms")
        if ms is None and r["extra"].get("interleaved_us"):
            ms = {p: v / 1e3 for p, v in r["extra"]["interleaved_us"].items()}
        if not ms or "plain" not in ms:
            continue
        for p, v in ms.items():
            out.append({"group": r["group"], "provider": p, "median_ms": v, "ratio": v / ms["plain"]})
    return out


def overhead_table(data: dict, fmt: str = "text") -> str:
    rs = overhead_rows(data)
    if not rs:
        return ""
    lines = ["| measured | provider | median ms | × plain |", "|---|---|---:|---:|"] if fmt == "md" else []
    for r in rs:
        if fmt == "md":
            lines.append(f"| {r['group']} | {r['provider']} | {r['median_ms']:.4f} | "
                         f"{r['ratio']:.2f}× |")
        else:
            lines.append(f"{r['group']:<48.48} {r['provider']:<12} {r['median_ms']:>10.3f} ms  {r['ratio']:>6.2f}x plain")
    return "\n".join(lines)


def table(data: dict, fmt: str = "text") -> str:
    """One block per group: provider, median time and speed-up over the group's baseline (reference or plain)."""
    groups: dict[str, list[dict]] = {}
    for r in rows(data):
        groups.setdefault(r["group"], []).append(r)
    lines = []
    if fmt == "md":
        lines += ["| benchmark | provider | median ms | speed-up vs baseline |", "|---|---|---:|---:|"]
    for g, rs in groups.items():
        base = next((r for name in BASELINES for r in rs if r["provider"] == name), rs[0])
        for r in sorted(rs, key=lambda r: -r["median_ms"]):
            ratio = base["median_ms"] / r["median_ms"]
            if fmt == "md":
                lines.append(f"| {g} | {r['provider']} | {r['median_ms']:.3f} | {ratio:.2f}× |")
            else:
                lines.append(f"{g:<48.48} {r['provider']:<20} {r['median_ms']:>10.3f} ms  {ratio:>6.2f}x vs {base['provider']}")
        if fmt != "md":
            lines.append("")
    return "\n".join(lines)


def machine(data: dict) -> str:
    m = data.get("machine_info", {})
    cpu = m.get("cpu", {}).get("brand_raw", "?")
    return f"{m.get('node', '?')}: {cpu}, {m.get('cpu', {}).get('count', '?')} logical CPUs, python {m.get('python_version', '?')}"

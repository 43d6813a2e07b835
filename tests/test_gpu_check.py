"""tools/gpu_check.sh and tools/gpu_report.py: the one-shot GPU check must work the first time it meets a GPU.

Always (seconds): the script parses and answers --help; the renderer turns a synthetic benchmark file into the
right ratios, tables and strict JSON; a few cases of benchmarks/test_bench_gpu.py run in its dry-run mode (CPU,
tiny sizes) and their records render.  With FASTBAYES_TEST_GPU_CHECK=1: the whole script in
``--dry-run --quick --skip-build`` (about a minute on 2 cores, so not in CI by default).
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "gpu_check.sh")
REPORT = os.path.join(ROOT, "tools", "gpu_report.py")

sys.path.insert(0, os.path.join(ROOT, "tools"))
import gpu_report  # noqa: E402

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not found")


@needs_bash
def test_script_parses_and_has_help():
    subprocess.run(["bash", "-n", SCRIPT], check=True)
    out = subprocess.run(["bash", SCRIPT, "--help"], capture_output=True, text=True, check=True).stdout
    assert "--dry-run" in out and "$OUT" in out
    bad = subprocess.run(["bash", SCRIPT, "--no-such-option"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument" in bad.stderr


def _rec(name, median_s, **extra):
    return {"name": name, "group": "g", "stats": {"median": median_s, "rounds": 3},
            "extra_info": dict(extra, median_s=median_s, device_name="Fake GPU", dry_run=False)}


def _synthetic():
    case = dict(kind="op", op="lognormal_noise", size="large", shape=[4, 8], dtype="float32", granularity="sample",
                mode="fwd", bytes=4000)
    return [
        _rec("copy", 1e-6, kind="copy", provider="copy", bytes=4000, gbps=4000.0),
        _rec("ref", 10e-6, provider="reference", gbps=0.4, copy_gbps=3900.0, **case),
        _rec("compiled", 4e-6, provider="reference+compile", gbps=1.0, copy_gbps=3900.0, **case),
        _rec("cuda", 2e-6, provider="cuda", gbps=2000.0, copy_gbps=3900.0, **case),
        _rec("plain", 0.040, kind="train", model="resnet50", batch=32, input=[3, 224, 224], provider="plain",
             granularity=None, gates=0, bmrs_ratio=6.9),
        _rec("gated", 0.050, kind="train", model="resnet50", batch=32, input=[3, 224, 224], provider="cuda",
             granularity="element", gates=53, bmrs_ratio=6.9),
        _rec("other-batch", 0.5, kind="train", model="resnet50", batch=8, input=[3, 224, 224], provider="cuda",
             granularity="element", gates=53, bmrs_ratio=6.9),
    ]


def test_report_ratios(tmp_path):
    recs = _synthetic()
    # a JSON-lines file cut short by a killed run, then a pytest-benchmark JSON that redoes one record
    lines = "\n".join(json.dumps(r) for r in recs[:-1]) + '\n{"name": "cut sh'
    (tmp_path / "a.jsonl").write_text(lines)
    redo = dict(recs[3], extra_info=dict(recs[3]["extra_info"], median_s=5e-6, gbps=800.0))
    (tmp_path / "b.json").write_text(json.dumps({"benchmarks": [redo, recs[-1]]}))
    records = gpu_report.load([str(tmp_path / "a.jsonl"), str(tmp_path / "b.json")])
    assert len(records) == 7
    s = gpu_report.analyse(records)
    assert s["copy_gbps"] == 4000.0 and s["device"] == "Fake GPU"
    cuda = next(r for r in s["ops"] if r["provider"] == "cuda")
    assert cuda["speedup_vs_eager"] == pytest.approx(2.0)        # 10 µs / 5 µs (the later record won)
    assert cuda["speedup_vs_compile"] == pytest.approx(0.8)      # 4 µs / 5 µs
    assert cuda["frac_of_copy"] == pytest.approx(0.2)            # 800 / 4000 GB/s
    assert cuda["us"] == pytest.approx(5.0)
    gated = next(r for r in s["train"] if r["provider"] == "cuda" and r["batch"] == 32)
    assert gated["gated_over_plain"] == pytest.approx(1.25)
    lonely = next(r for r in s["train"] if r["batch"] == 8)     # no plain run at this batch: no ratio
    assert lonely["gated_over_plain"] != lonely["gated_over_plain"]

    md = gpu_report.render(s, steps=[dict(name="tests", status="ok", rc=0, seconds=12, budget=200)])
    assert "| tests | ok | 0 | 12 | 200 |" in md
    assert "| lognormal_noise | 4×8 | float32 | sample | fwd | cuda | 5.0 | 800 | 20.0 | 2.00 | 0.80 |" in md
    assert "| resnet50 | 32×3×224×224 | cuda | element | 53 | 50.00 | 1.25 | 6.9 |" in md
    brief = gpu_report.render_brief(s)
    assert "copy 4000 GB/s" in brief and "reference+compile" not in brief


def test_report_cli_writes_strict_json(tmp_path):
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in _synthetic()))
    (tmp_path / "steps.tsv").write_text("env\tok\t0\t3\t40\nbuild\ttimeout\t124\t240\t240\n")
    subprocess.run([sys.executable, REPORT, "--steps", str(tmp_path / "steps.tsv"), "--md", str(tmp_path / "s.md"),
                    "--json", str(tmp_path / "s.json"), "--extra", "mode=gpu", str(tmp_path / "r.jsonl"),
                    str(tmp_path / "missing.jsonl")], check=True)
    text = (tmp_path / "s.json").read_text()
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert doc["mode"] == "gpu" and doc["n_records"] == 7
    assert [s["status"] for s in doc["steps"]] == ["ok", "timeout"]
    assert next(r for r in doc["train"] if r["batch"] == 8)["gated_over_plain"] is None   # NaN -> null
    md = (tmp_path / "s.md").read_text()
    assert "| build | timeout | 124 | 240 | 240 |" in md and "missing.jsonl" in md


def test_bench_gpu_dry_cases_render(tmp_path):
    """A few cases of benchmarks/test_bench_gpu.py in dry-run mode, the way gpu_check.sh runs them."""
    records = tmp_path / "bench.jsonl"
    env = dict(os.environ, FASTBAYES_GPU_CHECK_DRY="1", TRITON_INTERPRET="1", FASTBAYES_GPU_CHECK_RECORDS=str(records),
               PYTHONDONTWRITEBYTECODE="1")
    sel = "test_copy_bandwidth or gate_stats-small-float32-fwd-cpu or lenet5-plain or lenet5-cpu-element"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", sel,
                           os.path.join(ROOT, "benchmarks", "test_bench_gpu.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = gpu_report.analyse(gpu_report.load([str(records)]))
    assert s["dry_run"] and s["copy_gbps"] > 0
    assert [(r["op"], r["provider"], r["mode"]) for r in s["ops"]] == [("gate_stats", "cpu", "fwd")]
    ratio = {r["provider"]: r["gated_over_plain"] for r in s["train"] if r["model"] == "lenet5"}
    assert set(ratio) == {"plain", "cpu"} and ratio["plain"] == 1.0 and ratio["cpu"] > 0


@needs_bash
@pytest.mark.skipif(os.environ.get("FASTBAYES_TEST_GPU_CHECK") != "1",
                    reason="about a minute on 2 cores; set FASTBAYES_TEST_GPU_CHECK=1")
def test_dry_run_quick(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(["bash", SCRIPT, "--dry-run", "--quick", "--skip-build", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=400,
                          env=dict(os.environ, FASTBAYES_PY=sys.executable))
    assert proc.returncode == 0, proc.stdout[-3000:]
    names = sorted(os.listdir(out))
    assert names == ["bench.jsonl", "console.log", "logs.tar.gz", "summary.json", "summary.md", "tests.xml"]
    doc = json.loads((out / "summary.json").read_text())
    status = {s["name"]: s["status"] for s in doc["steps"]}
    assert all(v == "ok" or v.startswith("skipped (--") for v in status.values()), status
    assert doc["copy_gbps"] > 0 and doc["train"] and doc["ops"]

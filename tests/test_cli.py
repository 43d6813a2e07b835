"""The fastbayes command: info, and the demo end to end on digits (1 epoch, small)."""
import json
import subprocess
import sys

import pytest

from fastbayes.cli import main

COMMON_KEYS = {"method", "dataset", "model", "epochs", "test_accuracy_before", "test_accuracy_after", "params_before",
               "params_after", "flops_before", "flops_after", "compression_pct", "kept_per_layer", "latency_ms_before",
               "latency_ms_after", "backend", "device"}


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("reference", "cpu", "triton", "cuda"):
        assert name in out
    assert main(["info", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["backends"]["reference"] is True and "why_not" in d


def test_info_as_console_script():
    r = subprocess.run([sys.executable, "-m", "fastbayes.cli", "info"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "backends:" in r.stdout


@pytest.mark.parametrize("method", ["bmrs_n", "sbp"])
def test_demo_end_to_end_on_digits(tmp_path, method):
    out = tmp_path / method
    assert main(["demo", "--method", method, "--dataset", "digits", "--epochs", "1", "--finetune", "0",
                 "--max-train", "400", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert COMMON_KEYS <= set(rep)
    assert rep["method"] == method and rep["dataset"] == "digits"
    assert 0.0 <= rep["test_accuracy_after"] <= 1.0 and 0.0 <= rep["test_accuracy_before"] <= 1.0
    assert rep["params_after"] <= rep["params_before"] and rep["flops_after"] <= rep["flops_before"]
    assert rep["compression_pct"] == pytest.approx(100 * (1 - rep["params_after"] / rep["params_before"]))
    # nothing lost: the compact model scores exactly what the masked model scores
    assert rep["test_accuracy_after"] == pytest.approx(rep["test_accuracy_masked"])
    for png in ("kept_per_layer.png", "criterion_histogram.png", "accuracy_vs_compression.png"):
        assert (out / png).stat().st_size > 1000


def test_demo_bad_arguments(tmp_path):
    from fastbayes.demo import run
    with pytest.raises(ValueError, match="method"):
        run("magnitude", out=tmp_path)
    with pytest.raises(ValueError, match="finetune"):
        run("bmrs_n", epochs=1, finetune=1, out=tmp_path)
    with pytest.raises(ValueError, match="kl"):
        run("bmrs_n", kl="none", out=tmp_path)
    with pytest.raises(ValueError, match="delta_f"):
        run("bmrs_n", delta_f="exact", out=tmp_path)
    with pytest.raises(ValueError, match="gate_lr_factor"):
        run("bmrs_n", gate_lr_factor=0.0, out=tmp_path)


def test_demo_delta_f_choice_reaches_the_criterion(tmp_path):
    """--delta-f code (default) must prune with the released code's ΔF_N, --delta-f paper with the exact one."""
    common = ["demo", "--dataset", "digits", "--epochs", "1", "--finetune", "0", "--max-train", "200", "--no-plots"]
    assert main(common + ["--out", str(tmp_path / "c")]) == 0
    assert main(common + ["--delta-f", "paper", "--out", str(tmp_path / "p")]) == 0
    code = json.loads((tmp_path / "c" / "report.json").read_text())
    paper = json.loads((tmp_path / "p" / "report.json").read_text())
    assert code["criterion_options"] == {"code_offset": True} and "BMRS code" in code["criterion"]
    assert paper["criterion_options"] == {"code_offset": False} and paper["criterion"] == "keep if ΔF_N < 0"

"""The fastbayes command: info (also with a bad FASTBAYES_BACKEND, also as python -m fastbayes), usage errors for bad
options, and the demo end to end on digits (1 epoch, small)."""
import json
import os
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


@pytest.mark.parametrize("module", ["fastbayes", "fastbayes.cli"])
def test_info_as_module(module):
    r = subprocess.run([sys.executable, "-m", module, "info"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "backends:" in r.stdout and "Traceback" not in r.stderr


def test_info_reports_an_unknown_forced_backend():
    """FASTBAYES_BACKEND=nonsense: everything else is still printed, plus a line naming the bad value and the valid
    names; exit code 1, no traceback."""
    env = {**os.environ, "FASTBAYES_BACKEND": "nonsense"}
    r = subprocess.run([sys.executable, "-m", "fastbayes", "info"], capture_output=True, text=True, timeout=120,
                       env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "backends:" in r.stdout and "reference" in r.stdout
    assert "'nonsense' is not a known backend" in r.stdout and "valid: reference, cpu, triton, cuda" in r.stdout
    r = subprocess.run([sys.executable, "-m", "fastbayes", "info", "--json"], capture_output=True, text=True,
                       timeout=120, env=env)
    d = json.loads(r.stdout)
    assert d["forced_backend"] == "nonsense" and "nonsense" in d["backend_error"]
    assert d["default_backend"]["cpu"] is None and d["backends"]["reference"] is True


def test_info_with_a_valid_forced_backend(capsys, monkeypatch):
    monkeypatch.setenv("FASTBAYES_BACKEND", "reference")
    assert main(["info", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["backend_error"] is None and d["default_backend"]["cpu"] == "reference"


@pytest.mark.parametrize("argv, option", [
    (["--epochs", "0"], "--epochs"),                  # range
    (["--epochs", "two"], "--epochs"),                # type
    (["--epochs", "2", "--finetune", "2"], "--finetune"),   # finetune < epochs
    (["--finetune", "-1"], "--finetune"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "1.5"], "--batch-size"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-1e-3"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--lr", "fast"], "--lr"),
    (["--max-train", "0"], "--max-train"),
    (["--particles", "1"], "--particles"),
    (["--svgd-epochs", "0"], "--svgd-epochs"),
    (["--gate-lr-factor", "0"], "--gate-lr-factor"),
    (["--seed", "-1"], "--seed"),
    (["--method", "magnitude"], "--method"),
    (["--model", "vgg16"], "--model"),
    (["--model", "mlp-0"], "--model"),
])
def test_demo_usage_errors(argv, option, capsys):
    """Bad values end in argparse's usage error (exit 2, the option named), before any training starts."""
    with pytest.raises(SystemExit) as e:
        main(["demo", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "usage: fastbayes demo" in err and f"argument {option}" in err


def test_usage_error_in_a_subprocess_has_no_traceback():
    r = subprocess.run([sys.executable, "-m", "fastbayes", "demo", "--lr", "-1"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "argument --lr" in r.stderr and "Traceback" not in r.stderr


def test_demo_refuses_an_unknown_forced_backend(capsys, monkeypatch):
    monkeypatch.setenv("FASTBAYES_BACKEND", "nonsense")
    with pytest.raises(SystemExit) as e:
        main(["demo", "--epochs", "1"])
    assert e.value.code == 2 and "nonsense" in capsys.readouterr().err


def test_bench_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "-k"])
    assert e.value.code == 2 and "argument -k" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["bmrs_n", "sbp"])
def test_demo_end_to_end_on_digits(tmp_path, method):
    out = tmp_path / method
    assert main(["demo", "--method", method, "--dataset", "digits", "--epochs", "1", "--finetune", "0",
                 "--max-train", "400", "--no-dense", "--out", str(out)]) == 0
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
    from fastbayes.apps.demo import run
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
    common = ["demo", "--dataset", "digits", "--model", "mlp-16", "--epochs", "1", "--finetune", "0",
              "--max-train", "200", "--no-plots", "--no-dense"]
    assert main(common + ["--out", str(tmp_path / "c")]) == 0
    assert main(common + ["--delta-f", "paper", "--out", str(tmp_path / "p")]) == 0
    code = json.loads((tmp_path / "c" / "report.json").read_text())
    paper = json.loads((tmp_path / "p" / "report.json").read_text())
    assert code["criterion_options"] == {"code_offset": True} and "BMRS code" in code["criterion"]
    assert paper["criterion_options"] == {"code_offset": False} and paper["criterion"] == "keep if ΔF_N < 0"


@pytest.mark.parametrize("method,model", [("bmrs_n", "lenet5-bmrs"), ("bernoulli", "bmrs-mlp"),
                                          ("dllp", "lenet5-bmrs")])
def test_demo_takes_bmrs_models_with_bmrs_preprocessing(tmp_path, method, model):
    """BMRS's own models (32×32 inputs) run in every method: the demo preprocesses the data as BMRS does."""
    args = ["demo", "--method", method, "--model", model, "--dataset", "digits", "--epochs", "1", "--max-train",
            "200", "--no-dense", "--no-plots", "--out", str(tmp_path)]
    if method == "dllp":
        args += ["--particles", "2", "--svgd-epochs", "1"]
    elif method != "bernoulli":
        args += ["--finetune", "0"]
    assert main(args) == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["model"] == model and 0.0 <= rep["test_accuracy_after"] <= 1.0

"""The demo (fastbayes.apps.demo): the dense baseline trained in the same run, the speed-up against it, --no-dense,
--epochs 1; and the deprecation path of the modules that moved into fastbayes.apps."""
import json
import subprocess
import sys
import warnings

import pytest
import torch

from fastbayes.cli import main

DENSE_KEYS = {"dense_baseline", "dense_test_accuracy", "dense_params", "dense_flops", "dense_latency_ms",
              "dense_train_seconds"}
TINY = ["--dataset", "digits", "--model", "mlp-16", "--epochs", "1", "--max-train", "300", "--batch-size", "64",
        "--no-plots"]


@pytest.mark.parametrize("method", ["bmrs_n", "bernoulli", "dllp"])
def test_demo_reports_the_dense_baseline(tmp_path, capsys, method):
    extra = ["--particles", "2", "--svgd-epochs", "1"] if method == "dllp" else []
    assert main(["demo", "--method", method, *TINY, *extra, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rep = json.loads((tmp_path / "report.json").read_text())
    assert DENSE_KEYS <= set(rep)
    # the same architecture without gates: same parameter count and FLOPs as the gated model's full width
    assert rep["dense_params"] == rep["params_before"] and rep["dense_flops"] == rep["flops_before"]
    assert 0.0 <= rep["dense_test_accuracy"] <= 1.0 and rep["dense_train_seconds"] > 0
    assert rep["dense_latency_ms"] > 0 and rep["latency_ms_after"] > 0
    # the speed-up is dense vs compact, both from this run (not the gated model in eval mode)
    assert rep["speedup"] == pytest.approx(rep["dense_latency_ms"] / rep["latency_ms_after"], rel=1e-12)
    assert rep["params_after"] <= rep["dense_params"]
    assert len(rep["dense_history"]) == 1
    assert "dense (before)" in out and "dense baseline:" in out and "dense latency / compact latency" in out
    if method == "bmrs_n":
        assert rep["finetune_epochs"] == 0 and "no fine-tune epoch" in out      # --epochs 1 leaves no room


def test_demo_without_dense_claims_no_speedup(tmp_path, capsys):
    assert main(["demo", *TINY, "--no-dense", "--out", str(tmp_path)]) == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["speedup"] is None and all(rep[k] is None for k in DENSE_KEYS)
    assert "no speed-up is claimed" in capsys.readouterr().out


def test_dense_baseline_starts_from_the_gated_models_weights():
    """_train_dense builds from the RNG state it is given (the gated model's initial weights) and leaves the caller's
    RNG state as it was, so the gated run's draws do not depend on whether a baseline is trained."""
    from fastbayes.apps import data
    from fastbayes.apps.demo import _train_dense
    from fastbayes.apps.models import build

    split = data.Split(torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    torch.manual_seed(3)
    state = torch.get_rng_state()
    gated = build("mlp-8", (1, 28, 28))
    after = torch.get_rng_state()
    net, seconds, hist = _train_dense("mlp-8", split, split, 0, 4, 1e-3, state, True, lambda *a: None)
    assert torch.equal(torch.get_rng_state(), after) and hist == [] and seconds >= 0
    for p, q in zip(gated.parameters(), net.parameters()):
        assert torch.equal(p, q)
    net, _, hist = _train_dense("mlp-8", split, split, 1, 4, 1e-3, state, True, lambda *a: None)
    assert len(hist) == 1 and any(not torch.equal(p, q) for p, q in zip(gated.parameters(), net.parameters()))


def test_finetune_default():
    from fastbayes.apps.demo import _finetune_default
    assert _finetune_default(1, None) == 0 and _finetune_default(6, None) == 1 and _finetune_default(6, 3) == 3


@pytest.mark.parametrize("old, name", [("fastbayes.models", "LeNet5"), ("fastbayes.models", "build"),
                                       ("fastbayes.data", "load"), ("fastbayes.data", "Split"),
                                       ("fastbayes.demo", "run")])
def test_moved_modules_forward_with_a_deprecation_warning(old, name):
    import importlib
    mod = importlib.import_module(old)
    new = importlib.import_module(old.replace("fastbayes.", "fastbayes.apps."))
    with pytest.warns(DeprecationWarning, match=f"{old} moved to fastbayes.apps"):
        obj = getattr(mod, name)
    assert obj is getattr(new, name)
    with pytest.raises(AttributeError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        getattr(mod, "no_such_name")


def test_import_fastbayes_does_not_load_apps():
    code = ("import sys, warnings; warnings.simplefilter('error'); import fastbayes, fastbayes.models; "
            "print(sorted(m for m in sys.modules if m.startswith('fastbayes.apps')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"     # importing the old module alone neither warns nor loads apps


def test_demo_post_training_curve_and_bmrs_mlp(tmp_path, capsys):
    """--post-training: trained without masks, then pruned step by step; the curve, its stop and the plot."""
    args = ["demo", "--method", "bmrs_n", "--dataset", "digits", "--model", "bmrs-mlp", "--epochs", "2",
            "--max-train", "300", "--batch-size", "64", "--no-dense", "--post-training", "4", "--out", str(tmp_path)]
    assert main(args) == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    pts = rep["post_training"]["points"]
    assert len(pts) >= 2 and [p["kept"] for p in pts] == sorted((p["kept"] for p in pts), reverse=True)
    stop = rep["post_training"]["stop"]
    kept_at_end = sum(rep["kept_per_layer"].values())
    assert kept_at_end == (pts[stop]["kept"] if stop is not None else pts[-1]["kept"])
    assert (tmp_path / "post_training.png").exists()
    with pytest.raises(SystemExit):
        main(["demo", "--method", "bernoulli", "--post-training", "3", "--out", str(tmp_path)])
    assert "--post-training" in capsys.readouterr().err


def test_bernoulli_demo_uses_the_cost_prior_and_ends_binary_after_one_epoch(tmp_path, capsys):
    """The cost-aware prior's price reaches the report; every gate is 0 or 1 after a one-epoch run (decide);
    --price is refused for the other methods."""
    args = ["demo", "--method", "bernoulli", "--dataset", "digits", "--model", "mlp-32-16", "--epochs", "1",
            "--max-train", "400", "--batch-size", "64", "--no-plots", "--no-dense", "--price", "0.5"]
    assert main([*args, "--decide-batch", "100", "--out", str(tmp_path)]) == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["prior"] == "cost" and rep["price"] == 0.5 and rep["gates_binary"] is True
    assert rep["decide"]["batch"] == 100
    assert rep["units_in_transit_at_end"] == 0 and rep["history"][0]["expected_params"] > 0
    assert sum(rep["kept_per_layer"].values()) <= sum(rep["total_per_layer"].values())
    for bad in (["--price", "-1"], ["--price", "nan"]):
        with pytest.raises(SystemExit):
            main([*args[:-2], *bad, "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["demo", "--method", "bmrs_n", "--price", "0.1", "--out", str(tmp_path)])
    assert "--price: applies to bernoulli" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--method", "dllp", "--decide-batch", "64", "--out", str(tmp_path)])
    assert "--decide-batch: applies to bernoulli" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--decide-batch", "0", "--out", str(tmp_path)])

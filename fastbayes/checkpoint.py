"""Saving and loading gated and compact models, and exporting compact ones.

* ``save`` / ``load``: a *gated* model.  The file holds the gate configuration (kind, options, the sites of every
  gate with their tiling, hence the coupling), the model's state_dict (parameters, masks, BN statistics) and the
  optimiser's state keyed by parameter names, so ``load`` rebuilds the gates on a fresh model and resumes training
  exactly.  Only plain data and tensors are stored: ``torch.load(weights_only=True)`` reads it.
* ``save_compact`` / ``load_compact``: a compact model (its architecture differs from the class's default, so the
  module itself is pickled).  Loading unpickles code references (``weights_only=False``): load trusted files only.
* ``export``: ``torch.export`` (and ONNX where the onnx package is installed) of a compact model.
"""
from __future__ import annotations

import copy
import os
import zipfile
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from .nn.insert import attach_gates, gate_config
from .nn.sites import GATE_ATTR, sites

FORMAT_GATED = "fastbayes.gated"
FORMAT_COMPACT = "fastbayes.compact"
VERSION = 1


class Checkpoint(NamedTuple):
    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    extra: dict


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for group in optimizer.param_groups:
        missing = [i for i, p in enumerate(group["params"]) if id(p) not in names]
        if missing:
            raise ValueError("optimizer holds parameters that are not the model's")
        out.append([names[id(p)] for p in group["params"]])
    return out


def save(path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, **extra) -> None:
    """Save a gated model (gates, masks, parameters), optionally its optimiser and any ``extra`` plain data."""
    _check_path(path)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    state = {"format": FORMAT_GATED, "version": VERSION, "gates": gate_config(model),
             "model": model.state_dict(), "optimizer": None, "optimizer_params": None, "extra": extra}
    if optimizer is not None:
        state["optimizer_params"] = _param_names(model, optimizer)
        state["optimizer"] = optimizer.state_dict()
    torch.save(state, path)


def _check_path(path) -> None:
    if not isinstance(path, (str, os.PathLike)) and not hasattr(path, "write"):
        raise TypeError(f"path must be a str, an os.PathLike or a writable file object, got {type(path).__name__}")


def _file_kind(path) -> str:
    """What a file is, read without unpickling anything: "gated", "compact", "torch" (another torch.save file),
    or a description of what it is not."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path {os.fspath(path)!r} does not exist or is not a file")
    if not zipfile.is_zipfile(path):
        return "not a torch.save file (no zip archive: a text file, a truncated download or a legacy pickle?)"
    try:
        with zipfile.ZipFile(path) as z:
            pkl = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if pkl is None:
                return "a zip archive but not a torch.save file (no data.pkl)"
            data = z.read(pkl)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"a damaged or truncated torch.save file ({type(e).__name__}: {e})"
    if FORMAT_GATED.encode() in data:
        return "gated"
    if FORMAT_COMPACT.encode() in data:
        return "compact"
    return "torch"


def _describe(kind: str) -> str:
    return {"gated": "a fastbayes gated checkpoint (read it with fastbayes.checkpoint.load)",
            "compact": "a fastbayes compact model (read it with fastbayes.checkpoint.load_compact)",
            "torch": "a torch.save file, but not one written by fastbayes.checkpoint"}.get(kind, kind)


def _load_file(path, want: str, **kwargs) -> dict:
    """torch.load of a file that must be of kind ``want``; one clear ValueError for any other file."""
    kind = _file_kind(path)
    loader = "load" if want == "gated" else "load_compact"
    if kind != want:
        raise ValueError(f"fastbayes.checkpoint.{loader}: {os.fspath(path)!r} is {_describe(kind)}")
    try:
        state = torch.load(path, **kwargs)
    except Exception as e:   # truncated archive members, unpickling errors
        raise ValueError(f"fastbayes.checkpoint.{loader}: {os.fspath(path)!r} looks like {_describe(kind)} but "
                         f"cannot be read ({type(e).__name__}: {e}); it may be damaged or truncated") from e
    fmt = FORMAT_GATED if want == "gated" else FORMAT_COMPACT
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise ValueError(f"fastbayes.checkpoint.{loader}: {os.fspath(path)!r} is not {_describe(want)}")
    return state


def _remap_optimizer_state(saved: dict, saved_names: list[list[str]], current: list[list[str]]) -> dict:
    """Reorder a saved optimizer state_dict so that it lines up, by parameter name, with the current optimizer."""
    if [sorted(g) for g in saved_names] == [sorted(g) for g in current]:
        ids = [dict(zip(names, group["params"])) for names, group in zip(saved_names, saved["param_groups"])]
        groups = [dict(group, params=[ids[i][n] for n in current[i]]) for i, group in enumerate(saved["param_groups"])]
        return {"state": saved["state"], "param_groups": groups}
    raise ValueError("the optimizer's parameter groups differ from the saved ones: "
                     f"saved {[len(g) for g in saved_names]} parameters per group, got {[len(g) for g in current]}")


def load(path, model_or_factory: nn.Module | Callable[[], nn.Module],
         optimizer: torch.optim.Optimizer | Callable[[nn.Module], torch.optim.Optimizer] | None = None, *,
         map_location="cpu", weights_only: bool = True, strict: bool = True) -> Checkpoint:
    """Restore a checkpoint written by ``save``; returns ``Checkpoint(model, optimizer, extra)``.

    ``model_or_factory``: a model without gates (they are re-added from the stored configuration), one whose gates
    match it, or a zero-argument callable building such a model.  ``optimizer``: an optimiser over the (gated)
    model's parameters, or ``model -> optimizer`` called once the gates exist; its state is restored by parameter
    name, so the order of parameters may differ.  ``weights_only=False`` is needed only if ``extra`` held objects
    other than plain data and tensors.
    """
    state = _load_file(path, "gated", map_location=map_location, weights_only=weights_only)
    if isinstance(model_or_factory, nn.Module):
        model = model_or_factory
    elif callable(model_or_factory):
        model = model_or_factory()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model_or_factory returned a {type(model).__name__}, not an nn.Module")
    else:
        raise ValueError("model_or_factory must be an nn.Module or a callable returning one")
    if optimizer is not None and not (isinstance(optimizer, torch.optim.Optimizer) or callable(optimizer)):
        raise ValueError(f"optimizer must be an Optimizer or a callable model -> Optimizer, got "
                         f"{type(optimizer).__name__}")
    if optimizer is not None and state["optimizer"] is None:
        raise ValueError("optimizer given, but the checkpoint holds no optimizer state")
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    have = sites(model)
    if have:
        want = sorted((s, int(t)) for e in state["gates"] for s, t in e["sites"])
        if sorted((s, t) for s, (_, t) in have.items()) != want:
            raise ValueError("model_or_factory already has gates at other sites than the checkpoint's; pass a model "
                             "without gates")
    # everything below can fail halfway (a shape mismatch, another optimizer): work on copies, commit at the end
    work = copy.deepcopy(model)
    if not have:
        attach_gates(work, state["gates"])
    work.load_state_dict(state["model"], strict=strict)
    saved_opt = None
    if isinstance(optimizer, torch.optim.Optimizer):
        saved_opt = copy.deepcopy(optimizer.state_dict())
    opt = None
    if not have:
        attach_gates(model, state["gates"])
    try:
        model.load_state_dict(work.state_dict(), strict=True)
        if optimizer is not None:
            opt = optimizer if isinstance(optimizer, torch.optim.Optimizer) else optimizer(model)
            if not isinstance(opt, torch.optim.Optimizer):
                raise ValueError(f"optimizer must be an Optimizer or return one, got {type(opt).__name__}")
            opt.load_state_dict(_remap_optimizer_state(state["optimizer"], state["optimizer_params"],
                                                       _param_names(model, opt)))
    except Exception:
        _restore(model, have, original)
        if saved_opt is not None:
            optimizer.load_state_dict(saved_opt)
        raise
    return Checkpoint(model, opt, dict(state["extra"]))


def _restore(model: nn.Module, had_gates, original: dict) -> None:
    """Undo a failed ``load``: remove the gates it attached and put the state back."""
    if not had_gates:
        from .nn.sites import detach
        for name, module in list(model.named_modules()):
            if GATE_ATTR in module._modules:
                detach(module)
    with torch.no_grad():
        model.load_state_dict(original, strict=True)


def _check_compact(model: nn.Module, what: str) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if any(GATE_ATTR in m._modules for m in model.modules()):
        raise ValueError(f"model still has gates: {what} takes a compact model (fastbayes.prune.compact); "
                         "save a gated model with fastbayes.checkpoint.save")


def save_compact(path, model: nn.Module, **extra) -> None:
    """Save a compact model: the pickled module (its shapes differ from its class's defaults) plus ``extra``."""
    _check_path(path)
    _check_compact(model, "save_compact")
    torch.save({"format": FORMAT_COMPACT, "version": VERSION, "module": model, "extra": extra}, path)


def load_compact(path, map_location=None) -> nn.Module:
    """Load a model saved by ``save_compact``.

    This unpickles the module with ``torch.load(weights_only=False)``, which can run code named in the file:
    load only files you trust.  The model's classes must be importable (e.g. torchvision for its models).
    """
    state = _load_file(path, "compact", map_location=map_location, weights_only=False)
    return state["module"]


def export(model: nn.Module, example_inputs, *, onnx_path=None, **export_options: Any):
    """``torch.export.export`` of a compact model in eval mode -> ``torch.export.ExportedProgram``.

    ``onnx_path``: also write an ONNX file with ``torch.onnx.export`` (needs the onnx package).
    ``export_options`` go to ``torch.export.export`` (e.g. ``dynamic_shapes``).
    """
    from .graph import as_args
    _check_compact(model, "export")
    args = as_args(example_inputs)
    args, kwargs = ((), args) if isinstance(args, dict) else (tuple(args), None)
    if onnx_path is not None:
        try:
            import onnx  # noqa: F401
        except ImportError as e:
            raise ImportError("onnx_path needs the onnx package: pip install onnx onnxscript") from e
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        program = torch.export.export(model, args, kwargs, **export_options)
        if onnx_path is not None:
            torch.onnx.export(model, args, onnx_path, kwargs=kwargs)
    finally:
        for m, t in modes:
            m.training = t
    return program

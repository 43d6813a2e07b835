"""Pruning while training: Bernoulli units whose θ reaches 0 leave the running model and its optimiser for good.

Design (METHODS.md §3.2, after Guenter & Sideris; the mechanics are fastbayes's own):

* The gates stay in the live model.  Every ``every`` steps, a kept unit with θ ≤ ε is masked (ξ = 0 from now on,
  θ set to 0); with ``freeze=True`` one with θ ≥ 1 − ε is also frozen at θ = 1 (``BernoulliGate.freeze_``).  The
  default leaves θ = 1 free (projected, not frozen): the gates start at θ = 1, so freezing would keep every unit.
* Physical removal reuses compact()'s machinery: Torch-Pruning's dependency graph of the live model (gates taken out
  of the trace), ``channel_groups`` and the same removability rule (a channel goes only when it is masked at every
  site of its group; at least ``min_units`` stay per group), then ``group.prune()`` in place.  The gate's θ, mask
  and frozen are sliced to the surviving units.
* Optimiser state: Torch-Pruning slices ``.grad`` exactly as it slices the parameter, so before pruning each
  parameter's grad temporarily holds the flat index of every element; afterwards the surviving indices select the
  optimiser state (Adam's exp_avg/exp_avg_sq, momentum buffers, ...), the new Parameter replaces the old one in the
  optimiser's param groups, and the real grad is restored.  This works for every layer Torch-Pruning handles
  (grouped convolutions included) with no per-layer bookkeeping; a tensor too large for its dtype to count its
  elements exactly (float32: 2²⁴) is refused.
* Eval outputs are unchanged by a removal (ξ of a unit with θ ≤ ε < ½ is already 0 in eval) up to float summation
  order; ``check=True`` verifies it at every removal.  In train mode a unit with 0 < θ ≤ ε could still have drawn
  ξ = 1 (probability ≤ ε), and the Philox draws of the surviving units of a gate whose width changed come from a
  shorter counter range (counter n·C + c), so train-mode samples are identical with the same seed only for gates
  whose width did not change or whose surviving units are deterministic (θ ∈ {0, 1}).
* The prior term of a layer whose inputs were removed loses those inputs' (already decayed) weights, so it drops by
  their cost; the data term is unchanged.

Usage::

    gates = fastbayes.add_gates(model, kind="bernoulli")           # θ init 1, σ0 = 0.1·σ1
    thetas = [g.theta for g in gates.values()]
    opt = torch.optim.Adam([p for p in model.parameters() if all(p is not t for t in thetas)], 1e-3)
    theta_opt = torch.optim.SGD(thetas, lr=1.0)                    # projected plain SGD on θ (no state to slice)
    shrinker = fastbayes.prune.Shrinker(model, opt, every=50, eps=1e-3, example_inputs=x[:2])
    for x, y in loader:
        loss = F.cross_entropy(model(x), y) + fastbayes.nn.bernoulli.prior_loss(model) / n_train
        opt.zero_grad(); theta_opt.zero_grad(); loss.backward(); opt.step(); theta_opt.step()
        shrinker.step()                  # projects θ; every 50 steps masks and removes units
        theta_opt.param_groups[0]["params"] = [g.theta for g in gates.values()]   # removals replace θ
    net = shrinker.finalize()            # gates folded away: a plain deterministic nn.Module
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..nn.bernoulli import BernoulliGate, bernoulli_gates, project_gates
from ..graph import as_args, channel_groups
from ..nn.sites import fold_target, site_layers, sites, trace
from .compact import CHECK_RTOL, _settle, compact, eval_outputs, relative_error


class _Snapshot:
    """What a shrink may change, kept so that a failed one can be undone bit for bit.

    Torch-Pruning and ``_slice_gate`` replace tensors (new Parameters, buffers) and module attributes (widths) rather
    than writing into them, so the old objects stay intact and restoring the references restores the model; the
    tensors written in place (θ, masks, frozen, and every .grad, which ``_prune_group`` borrows) are cloned.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.modules = [(m, dict(m.__dict__), dict(m._parameters), dict(m._buffers), dict(m._modules))
                        for m in model.modules()]
        self.grads = [(p, p.grad) for m in model.modules() for p in m._parameters.values() if p is not None]
        self.values = [(t, t.detach().clone()) for g in bernoulli_gates(model).values()
                       for t in (g.theta, g.mask, g.frozen)]
        self.optimizer = optimizer
        self.groups = [list(g["params"]) for g in optimizer.param_groups]
        self.state = dict(optimizer.state)

    @torch.no_grad()
    def restore(self) -> None:
        for m, attrs, params, buffers, children in self.modules:
            m.__dict__.clear()
            m.__dict__.update(attrs)
            for d, saved in ((m._parameters, params), (m._buffers, buffers), (m._modules, children)):
                d.clear()
                d.update(saved)
        for p, grad in self.grads:
            p.grad = grad
        for t, v in self.values:
            t.copy_(v)
        for g, params in zip(self.optimizer.param_groups, self.groups):
            g["params"][:] = params       # in place: callers may hold the list
        self.optimizer.state.clear()
        self.optimizer.state.update(self.state)


def _exact_count(dtype: torch.dtype) -> int:
    """Largest n such that every integer up to n is exact in ``dtype`` (2 / eps = 2^(mantissa bits + 1))."""
    return int(round(2.0 / torch.finfo(dtype).eps))


class Shrinker:
    """One call per training step that keeps θ projected and, every ``every`` steps, freezes, masks and physically
    removes Bernoulli units from ``model`` and their state from ``optimizer``.

    Args:
        model: a model with BernoulliGates (``fastbayes.add_gates(model, kind="bernoulli")``); shrunk in place.
        optimizer: the optimiser training ``model``'s parameters; its param groups and state follow the removals.
        every: check every this many ``step()`` calls (positive int).
        eps: θ ≤ eps removes a unit, θ ≥ 1 − eps freezes it at 1; in (0, 0.5).
        example_inputs: a tensor, a tuple of arguments or a dict of keyword arguments to trace the model with
            (a couple of examples suffice).
        min_units: keep at least this many channels per group (masked ones stay, exactly 0).
        check: at each removal, compare the eval outputs before and after on ``example_inputs`` (RuntimeError
            beyond a relative error of 1e-5).
        freeze: also freeze kept units with θ ≥ 1 − ε at θ = 1 for good (no θ gradient afterwards).  Default False:
            with the gates' default θ init 1 every unit would freeze at the first check and none could ever leave;
            unfrozen, a unit at θ = 1 is held there by the projection for as long as its θ gradient pushes up, and
            can still leave when its weights decay into the spike (docs/RESULTS.md §2).

    ``history`` holds one entry per check: step, live units (kept, not masked) in total and per gate, frozen units,
    units removed physically in this check.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, every: int = 100, eps: float = 1e-3,
                 example_inputs=None, *, min_units: int = 1, check: bool = True, freeze: bool = False):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 < float(eps) < 0.5:
            raise ValueError(f"eps must be a number in (0, 0.5), got {eps!r}")
        if isinstance(min_units, bool) or not isinstance(min_units, int) or min_units < 1:
            raise ValueError(f"min_units must be a positive integer, got {min_units!r}")
        if not isinstance(freeze, bool):
            raise ValueError(f"freeze must be True or False, got {freeze!r}")
        if example_inputs is None:
            raise ValueError("example_inputs is required to trace the model")
        as_args(example_inputs)
        if not bernoulli_gates(model):
            raise ValueError("model has no BernoulliGate: call fastbayes.add_gates(model, kind='bernoulli') first")
        owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if not any(id(p) in owned for p in model.parameters()):
            raise ValueError("optimizer holds none of model's parameters")
        self.model, self.optimizer, self.every, self.eps = model, optimizer, every, float(eps)
        self.example_inputs, self.min_units, self.check, self.freeze = example_inputs, min_units, check, freeze
        self.steps = 0
        self.removed = 0
        self.history: list[dict] = []

    # -- bookkeeping -------------------------------------------------------------------------------------------
    def units(self) -> dict[str, int]:
        """{gate name: live units} (kept and not masked)."""
        return {n: int(g.mask.sum()) for n, g in bernoulli_gates(self.model).items()}

    def live_units(self) -> int:
        return sum(self.units().values())

    def binary(self) -> bool:
        """True when every gate is deterministic: each unit masked (θ = 0) or at θ = 1."""
        for g in bernoulli_gates(self.model).values():
            th = g.theta.detach()
            if not bool(((~g.mask & (th == 0)) | (g.mask & (th == 1))).all()):
                return False
        return True

    # -- the per-step call -------------------------------------------------------------------------------------
    def step(self) -> bool:
        """Project θ into [0, 1]; every ``every`` calls, ``shrink()``.  Returns True when units were removed."""
        if (self.steps + 1) % self.every:
            project_gates(self.model)
            self.steps += 1
            return False
        self.steps += 1
        try:
            return self.shrink()     # projects θ itself, inside its rollback
        except BaseException:
            self.steps -= 1
            raise

    @torch.no_grad()
    def shrink(self) -> bool:
        """Freeze θ ≥ 1 − ε, mask θ ≤ ε, and remove masked units physically; returns True when some were removed.

        All or nothing: if anything fails (the ``check``, a trace), the model (parameters, buffers, module attributes,
        gates, masks, grads) and the optimiser (param groups, state) are restored as they were and the error raised.
        """
        snapshot = _Snapshot(self.model, self.optimizer)
        try:
            return self._shrink()
        except BaseException:
            snapshot.restore()
            raise

    def _shrink(self) -> bool:
        frozen = 0
        for g in bernoulli_gates(self.model).values():
            g.project_()
            drop = g.mask & ~g.frozen & (g.theta <= self.eps)
            g.mask &= ~drop
            g.theta.masked_fill_(~g.mask, 0.0)
            if self.freeze:
                frozen += g.freeze_(self.eps)
        reference = eval_outputs(self.model, self.example_inputs) if self.check else None
        n = self._remove()
        if n and self.check:
            err = relative_error(eval_outputs(self.model, self.example_inputs), reference)
            if not err <= CHECK_RTOL:
                raise RuntimeError(f"shrinking changed the eval outputs: relative error {err:.3g} > {CHECK_RTOL:g} "
                                   "(something between a gate and the next layer does not map 0 to 0, e.g. a "
                                   "sigmoid); the model and optimiser were restored")
        self.removed += n
        self.history.append({"step": self.steps, "units": self.live_units(), "per_gate": self.units(),
                             "frozen": sum(int(g.frozen.sum()) for g in bernoulli_gates(self.model).values()),
                             "newly_frozen": frozen, "removed": n})
        return n > 0

    def _remove(self) -> int:
        # a gate hosted after an activation stands for the channels of its layer (or the BatchNorm after it): a unit
        # it zeroes is 0 wherever it is read, so removing the layer's channel with its readers' columns is exact
        after = site_layers(self.model)
        gate_at = {}
        for s, (g, _) in sites(self.model).items():
            if isinstance(g, BernoulliGate):
                gate_at[fold_target(self.model, s, after)] = g
        masked = {k: ~g.mask.cpu() for k, g in gate_at.items()}
        if not any(bool(m.any()) and m.numel() > self.min_units for m in masked.values()):
            return 0
        dg = trace(self.model, self.example_inputs)
        plans = []
        for grp in channel_groups(self.model, dg=dg):
            if grp.problem is not None or not any(s in masked for s in grp.sites):
                continue
            removable = torch.ones(grp.size, dtype=torch.bool)
            score = torch.full((grp.size,), -math.inf, dtype=torch.float64)
            for s in grp.sites:
                idxs, roots = grp.maps[s]
                if s not in masked:
                    removable[roots] = False
                    continue
                removable[roots] &= masked[s][idxs]
                score[roots] = torch.maximum(score[roots], gate_at[s].theta.detach().cpu().double()[idxs])
            grouped = [((len(grp.maps[k][0]), k[2]), grp.maps[k]) for k in grp.maps if isinstance(k, tuple)]
            removable = _settle(removable, score, grouped, self.min_units, None)
            if removable.any():
                drop_roots = set(removable.nonzero().flatten().tolist())
                per_site = {s: [i for i, r in zip(*grp.maps[s]) if r in drop_roots] for s in grp.sites if s in masked}
                root = grp.tp_group[0]
                plans.append((root.dep.target.module, root.dep.handler, sorted(drop_roots), per_site))
        n = 0
        for module, fn, idxs, per_site in plans:
            self._prune_group(dg.get_pruning_group(module, fn, idxs))
            for s, drop in per_site.items():
                self._slice_gate(gate_at[s], drop)
            n += len(idxs)
        return n

    # -- parameters and optimiser state ------------------------------------------------------------------------
    def _prune_group(self, group) -> None:
        places = []
        for mod in self.model.modules():
            for name, p in list(mod._parameters.items()):
                if p is None:
                    continue
                if p.numel() > _exact_count(p.dtype):
                    raise RuntimeError(f"a {tuple(p.shape)} {p.dtype} parameter has too many elements to track "
                                       "through Torch-Pruning by index")
                places.append((mod, name, p, p.grad, p.requires_grad))
                p.grad = torch.arange(p.numel(), dtype=p.dtype, device=p.device).reshape(p.shape)
        try:
            group.prune()
        finally:
            for mod, name, old, grad, flag in places:
                new = mod._parameters[name]
                if new is old:
                    old.grad = grad
                    continue
                keep = new.grad.detach().reshape(-1).long()
                new.grad = None if grad is None else grad.reshape(-1)[keep].reshape(new.shape)
                new.requires_grad_(flag)
                self._move_state(old, new, keep)

    def _slice_gate(self, gate: BernoulliGate, drop: list[int]) -> None:
        keep = torch.ones(gate.num_features, dtype=torch.bool)
        keep[drop] = False
        idx = keep.nonzero().flatten().to(gate.theta.device)
        old = gate.theta
        new = nn.Parameter(old.detach().index_select(0, idx), requires_grad=old.requires_grad)
        if old.grad is not None:
            new.grad = old.grad.index_select(0, idx)
        gate.theta = new
        gate.mask = gate.mask.index_select(0, idx)
        gate.frozen = gate.frozen.index_select(0, idx)
        ev = getattr(gate, "_evidence", None)
        if ev is not None and ev.shape == (3, keep.numel()):        # decide(accumulate=True)'s pooled evidence
            gate._evidence = ev.index_select(1, idx.cpu())
        self._move_state(old, new, idx)

    def _move_state(self, old: nn.Parameter, new: nn.Parameter, keep: torch.Tensor) -> None:
        opt = self.optimizer
        for g in opt.param_groups:
            for i, p in enumerate(g["params"]):
                if p is old:
                    g["params"][i] = new
        st = opt.state.pop(old, None)
        if st is not None:
            opt.state[new] = {k: (v.reshape(-1)[keep.to(v.device)].reshape(new.shape)
                                  if isinstance(v, torch.Tensor) and v.shape == old.shape else v)
                              for k, v in st.items()}

    # -- the end -----------------------------------------------------------------------------------------------
    def finalize(self, *, round_to: Optional[int] = None, check: bool = True) -> nn.Module:
        """Freeze/mask/remove once more, then fold the gates away (``compact``): a plain deterministic network equal
        to the gated model in eval mode (ξ = 1[θ ≥ ½]·mask; θ strictly between ε and 1 − ε are rounded so, and
        ``binary()`` says whether any were).  ``model`` keeps its gates."""
        self.shrink()
        return compact(self.model, self.example_inputs, round_to=round_to, min_units=self.min_units, check=check)

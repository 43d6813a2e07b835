"""The cost of a structure: the expected parameter count of a network with Bernoulli unit gates, E_q[#params], as a
differentiable function of the gates' keep probabilities θ (after Guenter & Sideris's cost-aware regularisation;
docs/METHODS.md §3.2, our reading).

Every weight connects one input channel and one output channel of its layer, so with independent gates

    E[#params] = Σ_layers  k·E[live inputs]·E[live outputs] / groups  +  [bias]·E[live outputs]
                 + Σ_BatchNorms 2·E[live channels],

where k is the kernel size (1 for a Linear), a channel governed by gates at sites s is live with probability
1 − Π_s (1 − θ_s) (it leaves only when every site drops it, as in compact()), and a channel without a gate counts 1.
The count is multilinear in θ, so ∂E/∂θ_i is exactly what unit i costs, its own weights and the weights it feeds
downstream (a flatten's columns included), given the other gates' θ; at binary θ, E[#params] is the parameter
count of the compacted network.  Which channels feed which layer comes from Torch-Pruning's dependency graph
(``fastbayes.graph.channel_groups``), so convolutions, flattens and coupled (residual) channels are counted like
compact() removes them.  A channel group that compact() cannot remove (``problem``) counts as ungated.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..graph import channel_groups
from ..layers import BATCH_NORMS, CONV, WEIGHTED
from .sites import fold_target, site_layers, sites, trace


class ParamCost:
    """E_q[#params] of ``model``'s Bernoulli-gated network as a function of the gates' θ; ``model`` is traced once
    (Torch-Pruning, on ``example_inputs``) and again whenever its structure changes (e.g. a ``Shrinker`` removed
    units), which the call detects from the parameters' identities and shapes.

        cost = ParamCost(model, x[:2])
        cost()              # tensor: expected parameter count, differentiable in every gate's θ
        cost.per_unit()     # {gate name: ∂E/∂θ per unit}: what each unit costs, downstream weights included

    Parameters outside Linear/Conv/BatchNorm layers (θ itself, embeddings, LayerNorms, ...) are not counted.
    """

    def __init__(self, model: nn.Module, example_inputs):
        from .bernoulli import BernoulliGate
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not any(isinstance(g, BernoulliGate) for g, _ in sites(model).values()):
            raise ValueError("model has no BernoulliGate: call fastbayes.add_gates(model, kind='bernoulli') first")
        self.model, self.example_inputs = model, example_inputs
        self._signature = None
        self._refresh()

    def _current_signature(self) -> tuple:
        return tuple((id(p), tuple(p.shape)) for p in self.model.parameters())

    def _refresh(self) -> None:
        """(Re)build the channel maps from a trace of the model as it is now."""
        from .bernoulli import BernoulliGate
        model = self.model
        modules = dict(model.named_modules())
        dg = trace(model, self.example_inputs)
        groups = channel_groups(model, dg=dg)
        names = {m: n for n, m in modules.items()}
        after = site_layers(model)
        gate_at = {s: g for s, (g, _) in sites(model).items() if isinstance(g, BernoulliGate)}
        # per gated group: (size, [(gate, gate units, roots)]); per module: its channels in gated groups
        self._groups: list[tuple[int, list]] = []
        outs: dict[str, list] = {}
        ins: dict[str, list] = {}
        for group in groups:
            members = []
            for s, g in gate_at.items():
                target = fold_target(model, s, after)
                if target in group.maps and group.problem is None:
                    idxs, roots = group.maps[target]
                    # None: the gate's units are the group's channels in order (the usual case; no gather)
                    same = list(idxs) == list(roots) == list(range(group.size))
                    members.append((g, None, None) if same else
                                   (g, torch.as_tensor(idxs, dtype=torch.long), torch.as_tensor(roots, dtype=torch.long)))
            if not members:
                continue
            gi = len(self._groups)
            self._groups.append((group.size, members))
            seen = set()
            for item in group.tp_group:
                m, fn = item.dep.target.module, item.dep.handler
                name = names.get(m) if isinstance(m, nn.Module) else None
                if name is None or not isinstance(m, (*WEIGHTED, BATCH_NORMS)) or (name, fn) in seen:
                    continue
                seen.add((name, fn))
                side = outs if dg.is_out_channel_pruning_fn(fn) or isinstance(m, BATCH_NORMS) else ins
                # how many of the module's channels (a flatten's columns) each root channel stands for: the module's
                # live count is then one dot product (an index per channel would cost a scatter in the backward)
                roots = torch.as_tensor(list(item.root_idxs), dtype=torch.long)
                side.setdefault(name, []).append((gi, roots.numel(), torch.bincount(roots, minlength=group.size)))
        self._layers = []
        for name, m in modules.items():
            if isinstance(m, WEIGHTED):
                w = m.weight
                transposed = isinstance(m, CONV) and m.transposed
                n_out, n_in = (w.shape[1] * m.groups, w.shape[0]) if transposed else (w.shape[0], w.shape[1] * getattr(m, "groups", 1))
                k = math.prod(w.shape[2:]) if w.dim() > 2 else 1
                self._layers.append((name, k, getattr(m, "groups", 1), n_in, n_out, m.bias is not None,
                                     ins.get(name, []), outs.get(name, [])))
            elif isinstance(m, BATCH_NORMS) and m.affine:
                self._layers.append((name, 0, 1, 0, m.num_features, True, [], outs.get(name, [])))
        self._signature = self._current_signature()

    def _live_roots(self) -> list[torch.Tensor]:
        """Per gated group: P(channel live) for each of its root channels, 1 − Π_sites (1 − θ·mask)."""
        out = []
        for size, members in self._groups:
            dead = None
            for g, idxs, roots in members:
                th = g.effective_theta() * g.effective_mask().to(g.theta.dtype)
                if idxs is None:
                    d = 1 - th
                else:
                    d = torch.ones(size, dtype=th.dtype, device=th.device).index_copy(0, roots.to(th.device),
                                                                                      1 - th[idxs.to(th.device)])
                dead = d if dead is None else dead * d
            out.append(1 - dead)
        return out

    @staticmethod
    def _live(n_total: int, parts: list, live: list[torch.Tensor]):
        count = n_total - sum(n for _, n, _ in parts)
        for gi, _, counts in parts:
            count = count + torch.dot(live[gi], counts.to(live[gi]))
        return count

    @staticmethod
    def _same_channel(ins: list, outs: list, live: list[torch.Tensor]):
        """E[live in · live out] - E[live in]·E[live out] for a layer whose inputs and outputs hold channels of the
        same group (a residual block's conv): a channel live on both sides is one event, E[ξ²] = p, not p²."""
        extra = 0
        for gi, _, c_in in ins:
            for gj, _, c_out in outs:
                if gi == gj:
                    p = live[gi]
                    extra = extra + torch.dot(p - p * p, (c_in * c_out).to(p))
        return extra

    def __call__(self) -> torch.Tensor:
        """E_q[#params] (differentiable in every gate's θ)."""
        if self._current_signature() != self._signature:
            self._refresh()
        live = self._live_roots()
        total = None
        for _, k, groups, n_in, n_out, bias, ins, outs in self._layers:
            o = self._live(n_out, outs, live)
            if k == 0:
                term = 2 * o
            else:
                pairs = k * (self._live(n_in, ins, live) * o + self._same_channel(ins, outs, live)) / groups
                term = pairs + (o if bias else 0)
            term = torch.as_tensor(term, dtype=live[0].dtype, device=live[0].device) if not torch.is_tensor(term) \
                else term
            total = term if total is None else total + term
        return total

    def per_unit(self) -> dict[str, torch.Tensor]:
        """{gate name: ∂E[#params]/∂θ per unit} at the current θ (detached): each unit's cost, own and downstream."""
        from .bernoulli import bernoulli_gates
        found = bernoulli_gates(self.model)
        thetas = [g.theta for g in found.values()]
        grads = torch.autograd.grad(self(), thetas, allow_unused=True)
        return {k: (gr if gr is not None else torch.zeros_like(t)).detach() for (k, t), gr in
                zip(((k, g.theta) for k, g in found.items()), grads)}


def check_price(price) -> float:
    """``price`` as a float, or ValueError: a finite non-negative number of nats per parameter."""
    if isinstance(price, bool) or not isinstance(price, (int, float)) or not (math.isfinite(price) and price >= 0):
        raise ValueError(f"price must be a finite non-negative number (nats per parameter), got {price!r}")
    return float(price)


class CostPrior:
    """``price · E_q[#params]``: the prior of Bernoulli unit gates tied to the cost of the structure (our reading of
    Guenter & Sideris's cost-aware regularisation, docs/METHODS.md §3.2).

    A unit stays in the network only while it lowers the data term by more than ``price`` nats for each parameter it
    brings, its own and those it feeds downstream (``ParamCost.per_unit``).  This one knob, the price of a parameter
    in nats over the training set, replaces the spike-and-slab prior's hand-set σ0 and σ1 per layer: each layer's
    prior strength follows from what its units cost.  The objective stays affine in each θ (the gates' prior is
    flattened as in §3.2), so its optima are binary networks.  Add ``prior() / n_train`` to the mean task loss::

        prior = fastbayes.nn.bernoulli.CostPrior(model, x[:2], price=0.01)
        loss = F.cross_entropy(model(x), y) + prior() / n_train

    The weights get no prior here: use the optimiser's weight decay if they should.
    """

    def __init__(self, model: nn.Module, example_inputs, price: float = 0.01):
        self.price = check_price(price)
        self.cost = ParamCost(model, example_inputs)

    @property
    def model(self) -> nn.Module:
        return self.cost.model

    def __call__(self) -> torch.Tensor:
        """price · E_q[#params], in nats over the training set (differentiable in every gate's θ)."""
        return self.price * self.cost()

    def unit_costs(self) -> dict[str, torch.Tensor]:
        """{gate name: price · ∂E[#params]/∂θ per unit}: the nats over the training set each unit costs."""
        return {k: self.price * v for k, v in self.cost.per_unit().items()}

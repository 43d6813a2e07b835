"""Pruning decisions (criteria, masks, schedule), physical removal (compact) and measurement."""
from .compact import apply_masks, compact
from .criteria import CRITERIA, Criterion, Decision, decide
from .masks import LayerReport, PruneReport, PruneSchedule, update_masks
from .measure import count_flops, count_params, latency_ms, measure
from .shrink import Shrinker

__all__ = ["CRITERIA", "Criterion", "Decision", "apply_masks", "decide", "LayerReport", "PruneReport", "PruneSchedule", "compact", "count_flops",
           "count_params", "latency_ms", "measure", "update_masks", "Shrinker"]

"""Pruning decisions (criteria, masks, schedule)."""
from .criteria import CRITERIA, Decision
from .measure import count_flops, count_params, latency_ms, measure
from .masks import LayerReport, PruneReport, PruneSchedule, update_masks

__all__ = ["CRITERIA", "Decision", "LayerReport", "PruneReport", "PruneSchedule", "update_masks", "measure", "count_flops", "count_params", "latency_ms"]

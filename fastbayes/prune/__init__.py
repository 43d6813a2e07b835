"""Pruning decisions (criteria, masks, schedule)."""
from .criteria import CRITERIA, Decision
from .masks import LayerReport, PruneReport, PruneSchedule, update_masks

__all__ = ["CRITERIA", "Decision", "LayerReport", "PruneReport", "PruneSchedule", "update_masks"]

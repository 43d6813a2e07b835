"""Pruning decisions (criteria, masks, schedule), physical removal (compact) and measurement."""
from .compact import apply_masks, compact
from .criteria import CRITERIA, Criterion, Decision, decide
from .masks import LayerReport, PruneReport, PruneSchedule, update_masks
from .measure import bmrs_compression_pct, count_flops, count_params, latency_ms, measure
from .post_training import PostTrainingCurve, post_training
from .shrink import Shrinker

__all__ = ["CRITERIA", "Criterion", "Decision", "apply_masks", "decide", "LayerReport", "PruneReport", "PruneSchedule", "bmrs_compression_pct", "compact", "count_flops",
           "count_params", "latency_ms", "measure", "update_masks", "Shrinker",
           "post_training", "PostTrainingCurve"]

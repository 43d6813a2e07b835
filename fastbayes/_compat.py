"""Compatibility shims."""
from __future__ import annotations

import functools


@functools.lru_cache(None)
def import_torchvision():
    """Import torchvision, working around the CUDA-only 0.28.0 wheel on CPU torch.

    That wheel's ``_C`` cannot load against CPU torch, and 0.28.0 then registers fake kernels for
    ``torchvision::nms``/``qnms`` without checking that the ops exist.  Defining the two schemas first lets the
    import succeed; models and transforms work, the detection ops do not (TOOLCHAIN.md §3).
    """
    import torch
    try:
        import torchvision
        return torchvision
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
    import sys
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import_torchvision._lib = lib   # keep the fragment alive
    import torchvision
    return torchvision

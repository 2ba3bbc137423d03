"""Compute precision of a run's network (``RunConfig.precision``), one place for train and evaluation.

``float32``: everything in float32 (the default). ``bfloat16``: convolutions and matrix products
run in bfloat16 under :func:`torch.autocast` (CPU AMX / AVX-512-BF16 units, GPU tensor cores);
weights, optimiser state, noise draws, losses and softmax stay float32, as torch's autocast
policy keeps them. On the 2-core Xeon of the results suites a VGG-8 training step at batch 128 is
about 3x faster this way (``python -m training.bench_training --skip-lenet --skip-vgg`` prints the measured
ratio). bfloat16 keeps 8 significant bits, a relative rounding of 0.4 %, far below the paper-noise
variation the runs study (sigma 0.05-0.4) but about the step of 8-bit weights near their largest
value, so float32 stays the choice where quantisation-level effects matter (small device spreads,
tight write-verify tolerances). It is offered for the ``paper`` and ``device`` backends; the
crossbar simulator (``noise = "crossbar"``) computes in float32/float64 and refuses it. NeFT's
combined logits and CorrectNet's penalty are computed in float32 whatever the precision
(:mod:`training.methods`).
"""
from __future__ import annotations

import contextlib

import torch

from .run_config import PRECISIONS

__all__ = ["PRECISIONS", "autocast"]


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """Context in which a run of ``precision`` computes its forward passes on ``device``."""
    if precision == "float32":
        return contextlib.nullcontext()
    if precision == "bfloat16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")

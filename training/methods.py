"""Training methods, each a loss over one batch.

``batch_loss(spec, model, x, y, variation, generator) -> (loss, logits)`` with ``x [B, C, H, W]``,
``y [B]`` and ``logits [B, classes]`` of the main (first) forward. Methods:

``plain``       CE(model(x), y); no noise.
``nit``         noise-injection training: CE(f(x; W + n), y), n drawn at the training sigma.
``ovf``         NeFT's Oriented Variational Forward (Qin et al., arXiv 2305.14561): the forward at
                sigma (z0) plus N extra forwards of the same batch at sigma + delta_i
                (default deltas 0.15, 0.10, 0.05, in that order), each with fresh noise, all in the
                model's current (training) mode, so BatchNorm statistics are updated by each, no
                detach; loss = CE((z0 - beta * sum_i decay^-i z_i) / (N + 1), y), i = 0..N-1.
                The larger variation reaches every noisy layer (the authors' ResNet-18 code reaches
                only the stem conv and the final FC; we do not copy that).
``irs``         NeFT's Intermediate Representation Snapshot: one noisy forward with side heads; the
                same loss form with the head logits as z_i, shallowest head first (weighted 1).
                Head weights are noisy too (the paper backend uses s = 1 for them).
``nit_temp``    control (issue #21): noise injection with a training temperature,
                CE(f(x; W + n) / T, y); T = ``temperature``, by default N + 1 = 4, the divisor of
                OVF's and IRS's combined logits. Inference uses the raw logits, as for OVF.
``ovf_beta0``   control: OVF with beta = 0. The N extra forwards still run (compute and BatchNorm
                statistics as OVF's) but carry no gradient: CE(z0 / (N + 1), y).
``ovf_frozen_bn`` control: OVF whose N extra forwards leave the BatchNorm running statistics
                alone (momentum 0 while they run; they still normalise by their batch statistics).
``nit_multi``   control: noise injection at OVF's compute, N + 1 noisy forwards of the batch at
                sigma, each with fresh noise; loss = the mean of their CEs.
``correctnet``  Eldebiky et al. (CorrectNet, arXiv 2211.14917), the regularisation half: noise
                injection plus ``lambda * sum_W ||W_2d W_2d^T - I||_F^2`` over conv/linear weights
                (W reshaped to ``[out, in*kh*kw]``, the Gram matrix taken on the smaller side), a
                Lipschitz/orthogonality penalty that keeps errors from growing through layers. Its
                error-compensation layers are NOT implemented.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .models import noisy_weight_names
from .variation import Variation


@dataclass(frozen=True)
class MethodSpec:
    """The method and its knobs (see the module docstring)."""

    name: str
    sigma: float
    beta: float = 0.0
    ovf_deltas: tuple[float, ...] = (0.15, 0.10, 0.05)
    ovf_decay: float = 10.0
    correctnet_lambda: float = 1e-3
    temperature: float | None = None

    @classmethod
    def from_config(cls, cfg) -> MethodSpec:
        return cls(cfg.method, cfg.sigma, cfg.beta_value, tuple(cfg.ovf_deltas), cfg.ovf_decay, cfg.correctnet_lambda,
                   cfg.temperature)

    @property
    def temperature_value(self) -> float:
        """The training temperature of ``nit_temp``: ``temperature``, or N + 1."""
        return float(len(self.ovf_deltas) + 1) if self.temperature is None else float(self.temperature)


def negative_feedback_logits(z0: torch.Tensor, zs: Sequence[torch.Tensor], beta: float, decay: float = 10.0) -> torch.Tensor:
    """NeFT's combined logits ``(z0 - beta * sum_i decay^-i * zs[i]) / (len(zs) + 1)``, shapes ``[B, classes]``.

    Always float32: under bfloat16 autocast the feedback term (beta ~1e-3 of ``z0``) is below
    bfloat16's rounding step and would vanish from the sum."""
    z0 = z0.float()
    fb = torch.zeros_like(z0)
    for i, z in enumerate(zs):
        fb = fb + (float(decay) ** -i) * z.float()
    return (z0 - beta * fb) / (len(zs) + 1)


def orthogonality_penalty(model: nn.Module) -> torch.Tensor:
    """``sum_W ||G - I||_F^2`` with ``G = W W^T`` (rows <= cols) or ``W^T W``, over backbone conv/linear weights.

    Computed in float32 even under bfloat16 autocast (near orthogonality ``G - I`` is smaller than
    bfloat16's rounding of ``G``'s diagonal)."""
    params = dict(model.named_parameters())
    total = None
    for name in noisy_weight_names(model):
        if name.startswith("heads."):
            continue
        w = params[name].flatten(1).float()
        with torch.autocast(w.device.type, enabled=False):
            gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
        term = (gram - eye).pow(2).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros((), device=next(model.parameters()).device)
    return total


def _plain(spec, model, x, y, variation, gen):
    z = model(x)
    return F.cross_entropy(z, y), z


def _nit(spec, model, x, y, variation, gen):
    z = variation.forward(model, x, spec.sigma, gen)
    return F.cross_entropy(z, y), z


def _ovf(spec, model, x, y, variation, gen):
    z0 = variation.forward(model, x, spec.sigma, gen)
    zs = [variation.forward(model, x, spec.sigma + d, gen) for d in spec.ovf_deltas]
    return F.cross_entropy(negative_feedback_logits(z0, zs, spec.beta, spec.ovf_decay), y), z0


def _nit_temp(spec, model, x, y, variation, gen):
    z = variation.forward(model, x, spec.sigma, gen)
    return F.cross_entropy(z.float() / spec.temperature_value, y), z


def _ovf_beta0(spec, model, x, y, variation, gen):
    return _ovf(dataclasses.replace(spec, beta=0.0), model, x, y, variation, gen)


@contextlib.contextmanager
def frozen_batchnorm_statistics(model: nn.Module):
    """BatchNorm layers keep normalising by batch statistics but do not update their running ones."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (mom, n) in zip(bns, saved):
            m.momentum = mom
            if n is not None:
                m.num_batches_tracked.copy_(n)


def _ovf_frozen_bn(spec, model, x, y, variation, gen):
    z0 = variation.forward(model, x, spec.sigma, gen)
    with frozen_batchnorm_statistics(model):
        zs = [variation.forward(model, x, spec.sigma + d, gen) for d in spec.ovf_deltas]
    return F.cross_entropy(negative_feedback_logits(z0, zs, spec.beta, spec.ovf_decay), y), z0


def _nit_multi(spec, model, x, y, variation, gen):
    zs = [variation.forward(model, x, spec.sigma, gen) for _ in range(len(spec.ovf_deltas) + 1)]
    return torch.stack([F.cross_entropy(z.float(), y) for z in zs]).mean(), zs[0]


def _irs(spec, model, x, y, variation, gen):
    z0, hs = variation.forward(model, x, spec.sigma, gen, heads=True)
    return F.cross_entropy(negative_feedback_logits(z0, hs, spec.beta, spec.ovf_decay), y), z0


def _correctnet(spec, model, x, y, variation, gen):
    z = variation.forward(model, x, spec.sigma, gen)
    return F.cross_entropy(z, y) + spec.correctnet_lambda * orthogonality_penalty(model), z


METHOD_LOSSES: dict[str, Callable] = {"plain": _plain, "nit": _nit, "ovf": _ovf, "irs": _irs, "correctnet": _correctnet,
                                      "nit_temp": _nit_temp, "ovf_beta0": _ovf_beta0, "ovf_frozen_bn": _ovf_frozen_bn,
                                      "nit_multi": _nit_multi}


def batch_loss(spec: MethodSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               variation: Variation, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss (scalar) and main logits ``[B, classes]`` of method ``spec.name`` on one batch."""
    if spec.name not in METHOD_LOSSES:
        raise ValueError(f"unknown method {spec.name!r} (choose from {', '.join(METHOD_LOSSES)})")
    return METHOD_LOSSES[spec.name](spec, model, x, y, variation, generator)

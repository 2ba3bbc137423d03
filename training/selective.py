"""Which weights to write-verify: first-order (|w grad|) and second-order (SWIM: w^2 times the
diagonal Fisher) sensitivities, and the mask of the most sensitive fraction."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from cimsim.writeverify import WriteVerifyError


def _to_numpy(a: Any) -> np.ndarray:
    """numpy view of a numpy array or torch tensor (detached, on CPU) without importing torch."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def sensitivity_first_order(weights: Any, grads: Any) -> np.ndarray:
    """First-order (Taylor) sensitivity ``|w * dL/dw|`` per weight; numpy or torch inputs, same shape."""
    w, g = _to_numpy(weights), _to_numpy(grads)
    if w.shape != g.shape:
        raise WriteVerifyError(f"weights {w.shape} and grads {g.shape} differ in shape")
    return np.abs(w * g)


def fisher_diag(grads: Sequence[Any] | Any) -> np.ndarray:
    """Diagonal Hessian estimate from gradients (empirical Fisher): the mean of squared gradients.

    ``grads``: a sequence of per-batch gradient arrays of one shape, or one array whose first
    axis indexes batches.
    """
    if isinstance(grads, (list, tuple)):
        if not grads:
            raise WriteVerifyError("fisher_diag needs at least one gradient")
        g = np.stack([_to_numpy(x) for x in grads])
    else:
        g = _to_numpy(grads)
        if g.ndim < 1 or g.shape[0] == 0:
            raise WriteVerifyError("fisher_diag needs a batch axis with at least one gradient")
    return np.mean(g * g, axis=0)


def sensitivity_second_order(weights: Any, diag_hessian: Any) -> np.ndarray:
    """Second-order sensitivity ``|w^2 * H_ii| / 2`` per weight (SWIM, Yan et al., arXiv 2202.08395:
    the loss increase of perturbing w by an amount proportional to w), with ``H_ii`` e.g. from
    :func:`fisher_diag`."""
    w, h = _to_numpy(weights), _to_numpy(diag_hessian)
    if w.shape != h.shape:
        raise WriteVerifyError(f"weights {w.shape} and diag_hessian {h.shape} differ in shape")
    return np.abs(w * w * h) / 2.0


def selective_mask(sensitivity: Any, fraction: float) -> np.ndarray:
    """Boolean mask of the top ``fraction`` (0..1) of entries by sensitivity (ties broken by index,
    exactly ``round(fraction * n)`` entries set). ``fraction = 1`` selects all, ``0`` none."""
    s = _to_numpy(sensitivity)
    if not (0.0 <= fraction <= 1.0):
        raise WriteVerifyError(f"fraction must lie in [0, 1], got {fraction}")
    if np.isnan(s).any():
        raise WriteVerifyError("sensitivity contains NaN")
    k = int(round(fraction * s.size))
    mask = np.zeros(s.size, dtype=bool)
    if k:
        order = np.argsort(-s.ravel(), kind="stable")
        mask[order[:k]] = True
    return mask.reshape(s.shape)



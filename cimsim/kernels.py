"""Numba kernels: the per-element work of the crossbar (fused ADC + shift-and-add).

Private ``@njit`` kernels take only plain arrays (STUMPY's habit); the public wrappers in
:mod:`cimsim.mvm` validate and prepare. Each kernel has a pure-torch twin in :mod:`cimsim.mvm`
(used on CUDA and as a cross-check) and both are checked against :mod:`cimsim.mvm_ref`.

Threading: torch and numba share one OpenMP runtime here. Numba's threading layer is chosen
once, before the first parallel kernel compiles: ``CIMSIM_NUMBA_THREADING`` (default ``omp``,
the same libgomp pool torch uses, so the two never run more threads than cores between them;
``workqueue`` is the fallback when no OpenMP layer loads). ``python -m cimsim.bench`` measures it.
"""
from __future__ import annotations

import os

import numba
import numpy as np
from numba import njit, prange

_LAYER = os.environ.get("CIMSIM_NUMBA_THREADING", "omp")
try:
    if numba.config.THREADING_LAYER == "default":
        numba.config.THREADING_LAYER = _LAYER
except Exception:  # pragma: no cover - configuration is best effort
    pass


@njit(parallel=True, cache=True, nogil=True)
def adc_shift_add(P, C, B, n_out, lsb, lo, hi, colw, cycw, sign, acc):  # pragma: no cover - compiled
    """Quantize every partial sum and accumulate it into the layer output.

    P: (C*B, G*n_out) float32/64 partial sums in unit currents, row ``c*B + b`` is cycle ``c``
       of batch row ``b``; column ``g*n_out + o`` is column group ``g`` (a slice, or a slice's
       G+ / G- side) of output ``o``.
    lsb: (G*n_out,) ADC step per column; lo, hi: code limits.
    colw: (G,) significance x sign of each column group; cycw: (C,) significance of each cycle.
    acc: (B, n_out) float64, updated in place: acc[b, o] += sign * sum_{c,g} cycw[c] colw[g] code * lsb.
    """
    G = P.shape[1] // n_out
    for b in prange(B):
        for c in range(C):
            row = c * B + b
            cw = sign * cycw[c]
            for g in range(G):
                w = cw * colw[g]
                base = g * n_out
                for o in range(n_out):
                    j = base + o
                    s = lsb[j]
                    q = np.rint(P[row, j] / s)
                    if q < lo:
                        q = lo
                    elif q > hi:
                        q = hi
                    acc[b, o] += w * (q * s)


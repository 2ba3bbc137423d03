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


def choose_threading_layer() -> None:
    """Pick numba's threading layer before the first parallel launch (process-wide).

    The layer follows ``CIMSIM_NUMBA_THREADING`` (default: ``omp``, else ``tbb``, else
    ``workqueue``, the first that loads); it is only set if the user has
    not chosen one (``NUMBA_THREADING_LAYER``) and numba has not launched its threads yet.
    Measured here (``python -m cimsim.bench writeverify``, 2 M cells, ~10 pulses per cell): alone,
    ``omp`` 7.5 and ``workqueue`` 7.3 M cells/s; with a torch thread running matmuls at the same
    time, ``omp`` 2.1 and ``workqueue`` 2.8 M cells/s. ``omp`` reuses torch's libgomp workers, so
    torch + numba never run more threads than cores; ``workqueue`` adds a pool of its own, which
    oversubscribes the cores when both are busy. Hence ``omp`` first.
    """
    if numba.config.THREADING_LAYER != "default":
        return
    try:
        from numba.np.ufunc import parallel as _par

        launched = bool(getattr(_par, "_is_initialized", False))
    except ImportError:  # pragma: no cover
        launched = False
    if launched:
        return
    if os.environ.get("CIMSIM_NUMBA_THREADING"):
        numba.config.THREADING_LAYER = os.environ["CIMSIM_NUMBA_THREADING"]
    else:  # numba takes the first layer of this list that loads
        numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]


choose_threading_layer()


# --------------------------------------------------------------------------- random numbers
# A counter-based generator: the i-th cell's numbers depend only on (seed, i, draw), never on
# the thread that computes them, so a parallel kernel reproduces a chip from its seed on any
# number of cores. splitmix64 (Steele, Lea & Flood, OOPSLA 2014) as the mixing function.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TWO_PI = 2.0 * np.pi
_INV_2_53 = 1.0 / 9007199254740992.0


@njit(inline="always", cache=True)
def _mix64(z):  # pragma: no cover - compiled
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@njit(inline="always", cache=True)
def _uniform(key, n):  # pragma: no cover - compiled
    """The n-th uniform in (0, 1) of stream ``key``."""
    z = _mix64(key + (n + np.uint64(1)) * _GOLDEN)
    return ((z >> np.uint64(11)) + 0.5) * _INV_2_53


@njit(inline="always", cache=True)
def _normal(key, n):  # pragma: no cover - compiled
    """A standard normal from uniforms n, n+1 of stream ``key`` (Box-Muller)."""
    u1 = _uniform(key, n)
    u2 = _uniform(key, n + np.uint64(1))
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(_TWO_PI * u2)


@njit(inline="always", cache=True)
def _student_t(key, n, df):  # pragma: no cover - compiled
    """A standard Student-t (df > 0) by Bailey's polar method (Math. Comp. 62, 779, 1994)."""
    k = n
    while True:
        u = 2.0 * _uniform(key, k) - 1.0
        v = 2.0 * _uniform(key, k + np.uint64(1)) - 1.0
        k += np.uint64(2)
        w = u * u + v * v
        if 0.0 < w < 1.0:
            return u * np.sqrt(df * (w ** (-2.0 / df) - 1.0) / w)


@njit(parallel=True, cache=True, nogil=True)
def sample_levels(idx, seed, target, shift, scale, df, p_lo, p_hi, g_lo, g_hi, floor, out):  # pragma: no cover
    """Programmed conductance of every cell whose target is one of a few levels.

    idx: (N,) integer level index of each cell; target, shift, scale, df: (L,) per level
    (df = inf for a normal level). p_lo, p_hi: stuck-at-g_lo / g_hi probabilities. floor: the
    lowest conductance (-inf for none). out: (N,) float64, written. Cell i uses stream
    ``mix(seed, i)``: draws 0-1 decide stuck cells, draws 2.. the programming error.
    """
    key0 = _mix64(np.uint64(seed))
    for i in prange(idx.shape[0]):
        key = _mix64(key0 ^ (np.uint64(i) * _GOLDEN))
        k = idx[i]
        if p_lo > 0.0 or p_hi > 0.0:
            u = _uniform(key, np.uint64(0))
            if u < p_lo:
                out[i] = g_lo
                continue
            if u < p_lo + p_hi:
                out[i] = g_hi
                continue
        if np.isfinite(df[k]):
            z = _student_t(key, np.uint64(2), df[k])
        else:
            z = _normal(key, np.uint64(2))
        g = target[k] + shift[k] + scale[k] * z
        out[i] = g if g > floor else floor


@njit(parallel=True, cache=True, nogil=True)
def dac_drive(x, clip, xmax, n_cycles, pos, neg):  # pragma: no cover - compiled
    """Quantize inputs and lay out the DAC drive of both phases in one pass.

    x: (B, in) inputs; x_int = rint(min(max(x / clip, -1), 1) * xmax), as
    :func:`cimsim.mapping.quantize_inputs` computes it.
    pos, neg: (n_cycles, B, in_padded) float32, every element written (no zeroing needed): the
    magnitudes of the positive / negative inputs (``n_cycles == 1``, multi-bit DAC) or their
    bits, LSB first (bit-serial); zeros elsewhere and in the padding columns. Returns the number
    of negative inputs (0: the negative phase can be skipped).
    """
    B, n_in = x.shape
    n_pad = pos.shape[2]
    n_neg = 0
    for b in prange(B):
        for i in range(n_pad):
            v = np.rint(min(max(x[b, i] / clip, -1.0), 1.0) * xmax) if i < n_in else 0.0
            mp = np.int64(v) if v > 0 else 0
            mn = np.int64(-v) if v < 0 else 0
            if v < 0:
                n_neg += 1
            if n_cycles == 1:
                pos[0, b, i] = mp
                neg[0, b, i] = mn
            else:
                for c in range(n_cycles):
                    pos[c, b, i] = (mp >> c) & 1
                    neg[c, b, i] = (mn >> c) & 1
    return n_neg


@njit(parallel=True, cache=True, nogil=True)
def adc_shift_add_tiles(P, C, B, n_out, lsb, lo, hi, colw, cycw, sign, acc):  # pragma: no cover - compiled
    """Quantize every partial sum of a block and accumulate it into the layer output.

    P: (T, C*B, G*n_out) float32/64 partial sums in unit currents of T row tiles; row ``c*B + b``
       is cycle ``c`` of batch row ``b``; column ``g*n_out + o`` is column group ``g`` (a slice, or
       a slice's G+ / G- side) of output ``o``.
    lsb: (G*n_out,) ADC step per column; lo, hi: code limits.
    colw: (G,) significance x sign of each column group; cycw: (C,) significance of each cycle.
    acc: (B, n_out) float64, updated in place:
       acc[b, o] += sign * sum_{t,c,g} cycw[c] colw[g] clip(rint(P / lsb), lo, hi) * lsb.
    """
    T = P.shape[0]
    G = P.shape[2] // n_out
    for b in prange(B):
        for t in range(T):
            for c in range(C):
                row = c * B + b
                cw = sign * cycw[c]
                for g in range(G):
                    w = cw * colw[g]
                    base = g * n_out
                    for o in range(n_out):
                        j = base + o
                        s = lsb[j]
                        q = np.rint(P[t, row, j] / s)
                        if q < lo:
                            q = lo
                        elif q > hi:
                            q = hi
                        acc[b, o] += w * (q * s)

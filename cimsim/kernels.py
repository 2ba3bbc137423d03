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
def dac_drive(x, inv_clip, xmax, n_cycles, rows, pos, neg, signed):  # pragma: no cover - compiled
    """Quantize inputs and lay out the DAC drive of both phases in one pass, tile by tile.

    x: (B, in) inputs; x_int = rint(min(max(x * inv_clip, -1), 1) * xmax), as
    :func:`cimsim.mapping.quantize_inputs` computes it.
    pos, neg: (T, n_cycles * B, rows) float32, every element written (no zeroing needed): row
    tile t, read ``c * B + b``, row r holds input ``t * rows + r`` of batch row b: its magnitude
    (positive / negative phase; ``n_cycles == 1``, multi-bit DAC) or its bit c (bit-serial);
    zeros elsewhere and in the padding rows. ``neg`` is only written when ``signed`` (the caller
    saw a negative input). Returns the number of negative inputs.
    """
    B, n_in = x.shape
    T = pos.shape[0]
    n_neg = 0
    for b in prange(B):
        for t in range(T):
            for r in range(rows):
                i = t * rows + r
                v = np.rint(min(max(x[b, i] * inv_clip, -1.0), 1.0) * xmax) if i < n_in else 0.0
                mp = np.int64(v) if v > 0 else 0
                if n_cycles == 1:
                    pos[t, b, r] = mp
                else:
                    for c in range(n_cycles):
                        pos[t, c * B + b, r] = (mp >> c) & 1
                if signed:
                    mn = np.int64(-v) if v < 0 else 0
                    if v < 0:
                        n_neg += 1
                    if n_cycles == 1:
                        neg[t, b, r] = mn
                    else:
                        for c in range(n_cycles):
                            neg[t, c * B + b, r] = (mn >> c) & 1
    return n_neg


# ------------------------------------------------------------------ Gaussian (ziggurat)
def _ziggurat_tables(n: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tables of Marsaglia & Tsang's ziggurat for the normal (J. Stat. Softw. 5(8), 2000)."""
    m1 = 2147483648.0
    dn = tn = 3.442619855899
    vn = 9.91256303526217e-3
    kn, wn, fn = np.zeros(n, np.int64), np.zeros(n), np.zeros(n)
    q = vn / np.exp(-0.5 * dn * dn)
    kn[0], kn[1] = int((dn / q) * m1), 0
    wn[0], wn[n - 1] = q / m1, dn / m1
    fn[0], fn[n - 1] = 1.0, np.exp(-0.5 * dn * dn)
    for i in range(n - 2, 0, -1):
        dn = np.sqrt(-2.0 * np.log(vn / dn + np.exp(-0.5 * dn * dn)))
        kn[i + 1] = int((dn / tn) * m1)
        tn = dn
        fn[i] = np.exp(-0.5 * dn * dn)
        wn[i] = dn / m1
    return kn, wn, fn


_ZK, _ZW, _ZF = _ziggurat_tables()
_ZR = 3.442619855899


@njit(inline="always", cache=True)
def _zig_normal(key0, k):  # pragma: no cover - compiled
    """Standard normal number ``k`` of stream ``key0`` by the ziggurat.

    One splitmix64 hash of ``key0 + k * golden`` serves 98.8 % of the calls (layer from the low 7
    bits, the signed 32-bit candidate from the high 32); the rare wedge and tail draws come from
    a second stream keyed by that hash.
    """
    z = _mix64(key0 + k * _GOLDEN)
    hz = np.int64(z >> np.uint64(32)) - 2147483648  # signed 32-bit
    iz = np.int64(z & np.uint64(127))
    if abs(hz) < _ZK[iz]:
        return hz * _ZW[iz]
    key = _mix64(z ^ _M2)
    n = np.uint64(0)
    while True:
        if iz == 0:  # the tail beyond r (Marsaglia 1964)
            while True:
                x = -np.log(_uniform(key, n)) / _ZR
                y = -np.log(_uniform(key, n + np.uint64(1)))
                n += np.uint64(2)
                if y + y >= x * x:
                    return _ZR + x if hz > 0 else -_ZR - x
        x = hz * _ZW[iz]
        u = _uniform(key, n)  # draw n of the second stream
        n += np.uint64(1)
        if _ZF[iz] + u * (_ZF[iz - 1] - _ZF[iz]) < np.exp(-0.5 * x * x):
            return x
        z = _mix64(key + (n + np.uint64(1)) * _GOLDEN)  # draw n, as _uniform(key, n) would hash it
        n += np.uint64(1)
        hz = np.int64(z >> np.uint64(32)) - 2147483648
        iz = np.int64(z & np.uint64(127))
        if abs(hz) < _ZK[iz]:
            return hz * _ZW[iz]


# bfloat16 -> float: value = (implicit + mantissa) * 2^(exponent - 134), implicit 128 (0 if subnormal)
_BF16_SCALE = np.array([2.0 ** (max(e, 1) - 134) for e in range(256)])
_BF16_IMPLICIT = np.array([0.0] + [128.0] * 255)


@njit(inline="always", cache=True)
def _bf16_nonneg(bits):  # pragma: no cover - compiled
    """The float value of a non-negative bfloat16 given as its 16 raw bits (int16 storage)."""
    u = np.int64(bits) & 0x7FFF
    e = u >> 7
    return (_BF16_IMPLICIT[e] + (u & 0x7F)) * _BF16_SCALE[e]


@njit(inline="always", cache=True)
def _zig_fill(key0, k0, z, ok):  # pragma: no cover - compiled
    """``z[o] = _zig_normal(key0, k0 + o)`` for every o, in two passes: a branch-free fast path
    that the compiler vectorizes, then the rare (1.2 %) rejections one by one."""
    for o in range(z.shape[0]):
        h = _mix64(key0 + (k0 + np.uint64(o)) * _GOLDEN)
        hz = np.int64(h >> np.uint64(32)) - 2147483648
        iz = np.int64(h & np.uint64(127))
        z[o] = hz * _ZW[iz]
        ok[o] = abs(hz) < _ZK[iz]
    for o in range(z.shape[0]):
        if not ok[o]:
            z[o] = _zig_normal(key0, k0 + np.uint64(o))


@njit(parallel=True, cache=True, nogil=True)
def standard_normals(seed, out):  # pragma: no cover - compiled
    """Fill ``out`` (1-D) with the counter-based normals the ADC kernel draws (for tests)."""
    key0 = _mix64(np.uint64(seed))
    n = out.shape[0]
    chunk = 4096
    for c in prange((n + chunk - 1) // chunk):
        k0 = c * chunk
        m = min(chunk, n - k0)
        ok = np.empty(m, dtype=np.bool_)
        _zig_fill(key0, np.uint64(k0), out[k0:k0 + m], ok)


@njit(parallel=True, cache=True, nogil=True)
def adc_shift_add_tiles(P, V, out_var, seed, offset, C, B, n_out, lsb, lo, hi, colw, cycw, sign,
                        acc):  # pragma: no cover - compiled
    """Quantize every partial sum of a block and accumulate it into the layer output.

    P: (T, C*B, G*n_out) float32/64 partial sums in unit currents of T row tiles; row ``c*B + b``
       is cycle ``c`` of batch row ``b``; column ``g*n_out + o`` is column group ``g`` (a slice, or
       a slice's G+ / G- side) of output ``o``.
    lsb: (G*n_out,) ADC step per column; lo, hi: code limits.
    colw: (G,) significance x sign of each column group; cycw: (C,) significance of each cycle.
    acc: (B, n_out) float64, updated in place:
       acc[b, o] += sign * sum_{t,c,g} cycw[c] colw[g] clip(rint(P / lsb), lo, hi) * lsb.
    Noise (read noise of the column current and ADC input noise), when ``V`` is not empty:
    ``P + sqrt(V + out_var[j]) * z`` before the conversion, ``V`` like ``P``: the read-noise
    variance as raw bfloat16 bits (int16; <= 0.4 % relative error, no conversion pass), ``z`` a
    standard normal of the counter-based stream (seed, offset + flat index of P): every
    conversion's noise is fixed by the seed, whatever the thread count.
    """
    T = P.shape[0]
    ncol = P.shape[2]
    G = ncol // n_out
    noisy = V.size > 0
    key0 = _mix64(np.uint64(seed))
    for b in prange(B):
        z = np.empty(n_out)  # this row segment's normals (noisy only)
        ok = np.empty(n_out, dtype=np.bool_)
        for t in range(T):
            for c in range(C):
                row = c * B + b
                cw = sign * cycw[c]
                for g in range(G):
                    w = cw * colw[g]
                    base = g * n_out
                    if noisy:
                        k0 = np.uint64(offset + (t * P.shape[1] + row) * ncol + base)
                        _zig_fill(key0, k0, z, ok)
                    for o in range(n_out):
                        j = base + o
                        s = lsb[j]
                        p = P[t, row, j]
                        if noisy:
                            p += np.sqrt(_bf16_nonneg(V[t, row, j]) + out_var[j]) * z[o]
                        q = np.rint(p / s)
                        if q < lo:
                            q = lo
                        elif q > hi:
                            q = hi
                        acc[b, o] += w * (q * s)

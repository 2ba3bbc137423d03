"""Numba kernels: the per-element work of the crossbar (fused ADC + shift-and-add).

Private ``@njit`` kernels take only plain arrays (STUMPY's habit); the public wrappers in
:mod:`cimsim.crossbar.mvm` validate and prepare. Each kernel has a pure-torch twin in :mod:`cimsim.crossbar.mvm`
(used on CUDA and as a cross-check) and both are checked against :mod:`cimsim.crossbar.mvm_ref`.

Threading: torch and numba share one OpenMP runtime here. Numba's threading layer is chosen
once, before the first parallel kernel compiles: ``CIMSIM_NUMBA_THREADING`` (default ``omp``,
the same libgomp pool torch uses, so the two never run more threads than cores between them;
``workqueue`` is the fallback when no OpenMP layer loads). ``python -m cimsim.bench`` measures it.
"""
from __future__ import annotations

import os
from statistics import NormalDist

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, prange, types
from numba.extending import intrinsic


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


@njit(parallel=True, cache=True, nogil=True)
def dac_drive(x, inv_clip, xmax, n_cycles, rows, pos, neg, signed):  # pragma: no cover - compiled
    """Quantize inputs and lay out the DAC drive of both phases in one pass, tile by tile.

    x: (B, in) inputs; x_int = rint(min(max(x * inv_clip, -1), 1) * xmax), as
    :func:`cimsim.crossbar.mapping.quantize_inputs` computes it.
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


# ------------------------------------------------ Gaussian (inverse-CDF table, exact tails)
# The read-noise normals of the ADC kernel. Normal ``n`` of stream ``key0`` comes from 32-bit word
# ``n`` of the splitmix64 sequence h_i = mix(key0 + i * golden) (word 2i the low half of h_i, word
# 2i + 1 the high half): one hash serves two normals. Of a word, the top bit is the sign and the
# other 31, u, give the two-sided tail probability q = (u + 1/2) / 2^31 of |z|:
#   * q >= 2^-12 (|z| <= a = 3.6683, all but 1 in 4096 draws): |z| = Q^-1(q), Q(x) = P(|N(0,1)| > x)
#     = erfc(x / sqrt 2), by linear interpolation in a table of Q^-1 at 1536 edges: 12 octaves of q
#     (2^-12 .. 1), each cut into 128 equal segments, so the segments shrink with q and the error
#     stays uniform: |z - Q^-1(q)| <= 3.2e-6 everywhere (largest near |z| = 1.1), so the
#     distribution function is within 1.0e-6 of Phi (31-bit uniforms: steps of 2^-31 in
#     probability). Index and fraction are the exponent and mantissa bits of the float (u + 1/2):
#     no log, no branch, so the loop vectorizes (two table gathers per normal).
#   * q < 2^-12 (u < 2^19, probability exactly 2^-12): |z| is drawn exactly from the Gaussian tail
#     beyond a (Marsaglia's method, 53-bit uniforms of a second stream keyed by the hash); this
#     rare branch runs in a last, scalar pass, only when a block holds such a word.
# Compared with the ziggurat it replaces (one hash per normal, 1.2 % rejections fixed in a scalar
# pass over every block), it halves the read-noise cost of the ADC kernel here.
_ICDF_MBITS = 7  # 128 segments per octave
_ICDF_LO = 19  # u + 1/2 >= 2^19 (q >= 2^-12): the table; below: the exact tail
_ICDF_SHIFT = 52 - _ICDF_MBITS  # float64 bits >> shift = (biased exponent, top mantissa bits)
_ICDF_BASE = (1023 + _ICDF_LO) << _ICDF_MBITS
_ICDF_FMASK = (1 << _ICDF_SHIFT) - 1
_ICDF_FSCALE = 2.0 ** -_ICDF_SHIFT


def _icdf_tables() -> tuple[np.ndarray, np.ndarray, float]:
    """Q^-1 at the segment edges (|z| for q = (u + 1/2) / 2^31 at u + 1/2 = 2^e (1 + j / 128),
    e = 19..30) and the slope of each segment; the tail threshold a = Q^-1(2^-12)."""
    inv_cdf = NormalDist().inv_cdf  # Wichura's AS241: ~1e-16 relative
    q = [2.0 ** (e - 31) * (1 + j / 2**_ICDF_MBITS) for e in range(_ICDF_LO, 31) for j in range(2**_ICDF_MBITS)]
    t = np.array([-inv_cdf(0.5 * qi) for qi in q] + [0.0])  # Q^-1(q) = -Phi^-1(q / 2); Q^-1(1) = 0
    return t[:-1].copy(), np.diff(t), float(t[0])


_ICDF_T, _ICDF_S, _ICDF_A = _icdf_tables()


@intrinsic
def _f64_bits(typingctx, x):  # pragma: no cover - compiled
    """The raw bits of a float64 as int64 (a bitcast: no instruction)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.IntType(64))

    return types.int64(types.float64), codegen


@njit(inline="always", cache=True)
def _icdf_word(w):  # pragma: no cover - compiled
    """The normal of 32-bit word ``w`` (uint32) on its fast path; NaN marks a tail word."""
    d = np.float64(np.int64(w & np.uint32(0x7FFFFFFF))) + 0.5  # exact
    b = _f64_bits(d)
    i = (b >> _ICDF_SHIFT) - _ICDF_BASE  # segment; < 0 in the tail
    f = np.float64(b & _ICDF_FMASK) * _ICDF_FSCALE  # position in the segment, [0, 1)
    j = max(i, 0)
    x = _ICDF_T[j] + f * _ICDF_S[j]
    x = np.nan if i < 0 else x
    return -x if w & np.uint32(0x80000000) else x


@njit(inline="always", cache=True)
def _icdf_tail(key0, n):  # pragma: no cover - compiled
    """Normal ``n`` of stream ``key0`` when its word is a tail word: exact N(0, 1) given |z| > a."""
    h = _mix64(key0 + (n >> np.uint64(1)) * _GOLDEN)
    half = n & np.uint64(1)
    negative = (h >> (np.uint64(32) * half + np.uint64(31))) & np.uint64(1)
    key = _mix64(h ^ (_M2 + half))
    k = np.uint64(0)
    while True:  # Marsaglia (1964): accepts 94 % at a = 3.67
        x = -np.log(_uniform(key, k)) / _ICDF_A
        y = -np.log(_uniform(key, k + np.uint64(1)))
        k += np.uint64(2)
        if y + y >= x * x:
            return -(_ICDF_A + x) if negative else _ICDF_A + x


@njit(inline="always", cache=True)
def _normal_fill(key0, k0, z, scratch):  # pragma: no cover - compiled
    """``z[o]`` = normal ``k0 + o`` of stream ``key0`` for every o (k0: uint64).

    scratch: uint64, at least ``len(z) // 2 + 1`` long (the hashes). Three passes: the hashes, the
    table lookups (both vectorize), then, only if some word fell in the tail (1 in 4096), the exact
    tail draws one by one. The value of normal n does not depend on k0 or len(z).
    """
    m = z.shape[0]
    s = np.int64(k0 & np.uint64(1))  # k0 odd: start at the high word of the first hash
    p0 = k0 >> np.uint64(1)
    for i in range((m + s + 1) >> 1):
        scratch[i] = _mix64(key0 + (p0 + np.uint64(i)) * _GOLDEN)
    words = scratch.view(np.uint32)  # little-endian: word 2i is the low half of hash i
    n_tail = 0
    for o in range(m):
        x = _icdf_word(words[o + s])
        z[o] = x
        n_tail += np.isnan(x)
    if n_tail:
        for o in range(m):
            if np.isnan(z[o]):
                z[o] = _icdf_tail(key0, k0 + np.uint64(o))


@intrinsic
def _bits_f32(typingctx, x):  # pragma: no cover - compiled
    """The float32 whose raw bits are the int32 ``x`` (a bitcast)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.FloatType())

    return types.float32(types.int32), codegen


@njit(inline="always", cache=True)
def _bf16_nonneg(bits):  # pragma: no cover - compiled
    """The float32 value of a non-negative bfloat16 given as its 16 raw bits (int16 storage): a
    bfloat16 is the top half of a float32 (a shift and a bitcast; no table, no gather)."""
    return _bits_f32(np.int32((np.int32(bits) & np.int32(0x7FFF)) << np.int32(16)))


@njit(parallel=True, cache=True, nogil=True)
def standard_normals(seed, out):  # pragma: no cover - compiled
    """Fill ``out`` (1-D) with normals 0, 1, ... of the counter-based stream of ``seed``: the ones
    the ADC kernel adds read noise with (for tests and benchmarks; see :func:`_normal_fill`)."""
    key0 = _mix64(np.uint64(seed))
    n = out.shape[0]
    chunk = 4096
    for c in prange((n + chunk - 1) // chunk):
        k0 = c * chunk
        m = min(chunk, n - k0)
        scratch = np.empty(chunk // 2 + 1, dtype=np.uint64)
        _normal_fill(key0, np.uint64(k0), out[k0:k0 + m], scratch)


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
    variance as raw bfloat16 bits (int16; <= 0.4 % relative error, no conversion pass), the std
    taken in float32; ``z`` normal number ``offset + flat index of P`` of the counter-based stream
    of ``seed`` (:func:`_normal_fill`: an inverse-CDF table, within 3.2e-6 of the exact quantile,
    with exact Gaussian tails beyond |z| = 3.67, 1 draw in 4096): every conversion's noise is fixed
    by the seed, whatever the thread count.
    """
    T = P.shape[0]
    ncol = P.shape[2]
    G = ncol // n_out
    noisy = V.size > 0
    key0 = _mix64(np.uint64(seed))
    for b in prange(B):
        z = np.empty(n_out)  # this row segment's normals (noisy only)
        scratch = np.empty(n_out // 2 + 1, dtype=np.uint64)
        for t in range(T):
            for c in range(C):
                row = c * B + b
                cw = sign * cycw[c]
                for g in range(G):
                    w = cw * colw[g]
                    base = g * n_out
                    if noisy:
                        k0 = np.uint64(offset + (t * P.shape[1] + row) * ncol + base)
                        _normal_fill(key0, k0, z, scratch)
                    for o in range(n_out):
                        j = base + o
                        s = lsb[j]
                        p = P[t, row, j]
                        if noisy:
                            p += np.sqrt(_bf16_nonneg(V[t, row, j]) + np.float32(out_var[j])) * z[o]  # float32 sqrt
                        q = np.rint(p / s)
                        if q < lo:
                            q = lo
                        elif q > hi:
                            q = hi
                        acc[b, o] += w * (q * s)

"""The per-cell write-verify loop: a parallel Numba kernel and its plain-Python reference, which
reproduce each other number for number (every cell draws from its own counter-based splitmix64
stream seeded by ``(seed, cell index)``, so results never depend on threads or chunking)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cimsim.device.model import DeviceModel
from cimsim.device.sampling import read_sigma_S

from cimsim.writeverify.pulse import PulseModel, WriteVerifyError

NO_LIMIT_PULSES = 1_000_000  # "no pulse limit": a finite guard so a stuck cell cannot hang the kernel
_LOGISTIC_UNIT = math.sqrt(3.0) / math.pi  # scales a standard logistic to unit variance
_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_C1 = 0xBF58476D1CE4E5B9
_C2 = 0x94D049BB133111EB
_SEED_SALT = 0xD1B54A32D192ED03


def _py_mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * _C1) & _M64
    z = ((z ^ (z >> 27)) * _C2) & _M64
    return z ^ (z >> 31)


def _py_cell_state(seed: int, cell: int) -> int:
    """Initial splitmix64 state of cell ``cell`` for run ``seed`` (both < 2^64)."""
    return _py_mix64((seed ^ _py_mix64((cell + _SEED_SALT) & _M64)) & _M64)


class _PyStream:
    """Plain-Python twin of the kernel's per-cell random stream (splitmix64)."""

    def __init__(self, seed: int, cell: int):
        self.s = _py_cell_state(seed, cell)

    def next(self) -> int:
        self.s = (self.s + _GOLDEN) & _M64
        return _py_mix64(self.s)

    def uniform(self) -> float:  # [0, 1)
        return (self.next() >> 11) * 2.0**-53

    def logistic(self) -> float:  # standard logistic (variance pi^2 / 3)
        u = ((self.next() >> 11) + 0.5) * 2.0**-53
        return math.log(u / (1.0 - u))

    def normal(self) -> float:  # Box-Muller, cosine branch
        u1 = ((self.next() >> 11) + 1.0) * 2.0**-53
        u2 = (self.next() >> 11) * 2.0**-53
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def _seed_from(rng: np.random.Generator | int | None) -> tuple[int, np.random.Generator]:
    """``(kernel seed, numpy Generator)`` from an int seed or a Generator (one draw from it)."""
    if rng is None:
        raise WriteVerifyError("pass rng: an int seed or a numpy.random.Generator (a chip is a seed)")
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        if rng < 0:
            raise WriteVerifyError(f"seed must be >= 0, got {rng}")
        gen = np.random.default_rng(int(rng))
    elif isinstance(rng, np.random.Generator):
        gen = rng
    else:
        raise WriteVerifyError(f"rng must be an int seed or numpy.random.Generator, got {type(rng).__name__}")
    return int(gen.integers(0, 2**63 - 1)), gen


# ============================================================================ inputs
@dataclass(frozen=True)
class KernelInputs:
    """Flat float64/int arrays and scalars handed to the kernel and to the reference (one cell each).

    ``lo_S``/``hi_S``/``g0_S``: (n,) window and initial conductance (S); ``stuck``: (n,) int8
    0 free, 1 stuck at gmin, 2 stuck at gmax; ``params``: float64 vector (see
    :func:`_pack_params`); ``read_poly_uS``: read-noise polynomial (empty: noiseless verify).
    """

    lo_S: np.ndarray
    hi_S: np.ndarray
    g0_S: np.ndarray
    stuck: np.ndarray
    params: np.ndarray
    a_set: np.ndarray
    v2_set: np.ndarray
    a_reset: np.ndarray
    v2_reset: np.ndarray
    read_poly_uS: np.ndarray
    seed: int
    max_pulses: int
    cell_offset: int = 0


# params vector layout (indices used by the kernel and the reference)
_P_GMIN, _P_GMAX, _P_ASET, _P_ARESET, _P_BETA, _P_SC2C, _P_SD2D, _P_READDIV = range(8)


def _pack_params(pm: PulseModel, gmin_S: float, gmax_S: float, n_read_avg: int) -> np.ndarray:
    return np.array([
        gmin_S, gmax_S, pm.alpha_set, pm.alpha_reset, pm.beta,
        pm.sigma_c2c * _LOGISTIC_UNIT, pm.sigma_d2d * _LOGISTIC_UNIT, 1.0 / math.sqrt(n_read_avg),
    ], dtype=np.float64)


def _stuck_codes(device: DeviceModel, n: int, gen: np.random.Generator) -> np.ndarray:
    """Per-cell stuck state drawn with the device's fractions (int8: 0 free, 1 gmin, 2 gmax)."""
    st = np.zeros(n, dtype=np.int8)
    if device.stuck_at_gmin or device.stuck_at_gmax:
        u = gen.random(n)
        st[u < device.stuck_at_gmin] = 1
        st[(u >= device.stuck_at_gmin) & (u < device.stuck_at_gmin + device.stuck_at_gmax)] = 2
    return st


# ============================================================================ numba kernel
_KERNEL = None


def _get_kernel():
    """Compile (or load from cache) the Numba kernel on first use."""
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    from cimsim.kernels import _mix64 as mix64  # the one splitmix64 finaliser (_py_mix64 is its Python twin)
    from cimsim.device.sampling import read_sigma_one_S  # the read-noise law (numpy twin: read_sigma_S)
    from cimsim.kernels import choose_threading_layer

    choose_threading_layer()
    from numba import njit, prange

    GOLD, SALT = np.uint64(_GOLDEN), np.uint64(_SEED_SALT)
    S11 = np.uint64(11)
    INV53 = 2.0**-53
    TWO_PI = 2.0 * math.pi

    @njit(cache=True, inline="always")
    def logistic(s):
        s = s + GOLD
        u = (float(mix64(s) >> S11) + 0.5) * INV53
        return s, math.log(u / (1.0 - u))

    @njit(cache=True, inline="always")
    def uniform(s):
        s = s + GOLD
        return s, float(mix64(s) >> S11) * INV53

    @njit(cache=True, inline="always")
    def normal(s):
        s = s + GOLD
        u1 = (float(mix64(s) >> S11) + 1.0) * INV53
        s = s + GOLD
        u2 = float(mix64(s) >> S11) * INV53
        return s, math.sqrt(-2.0 * math.log(u1)) * math.cos(TWO_PI * u2)

    @njit(cache=True, inline="always")
    def read(s, g, poly, div):
        if poly.size == 0:
            return s, g
        sig = read_sigma_one_S(poly, g) * div
        s, z = normal(s)
        return s, g + sig * z

    @njit(cache=True)
    def one_cell(cell, lo, hi, g0, stuck, p, a_set, v2_set, a_reset, v2_reset, poly, seed, max_pulses, out_f, out_i, i):
        gmin, gmax = p[0], p[1]
        rng_ = gmax - gmin
        s = mix64(np.uint64(seed) ^ mix64(np.uint64(cell) + SALT))
        s, xc = logistic(s)
        c_cell = math.exp(p[6] * xc)
        g = g0
        if stuck == 1:
            g = gmin
        elif stuck == 2:
            g = gmax
        s, r = read(s, g, poly, p[7])
        gsum = g
        nset = 0
        nreset = 0
        e_set = 0.0
        e_reset = 0.0
        last = 0
        k = 0
        ok = lo <= r <= hi
        while (not ok) and nset + nreset < max_pulses:
            d = 1 if r < lo else -1
            if d != last:
                k = 0
                last = d
            s, xp = logistic(s)
            noise = math.exp(p[5] * xp)
            if d == 1:
                j = min(k, a_set.size - 1)
                v2 = v2_set[j]
                x = (gmax - g) / rng_
                b = x if p[4] == 1.0 else x ** p[4]
                step = p[2] * a_set[j] * c_cell * noise * b * rng_
                nset += 1
            else:
                j = min(k, a_reset.size - 1)
                v2 = v2_reset[j]
                x = (g - gmin) / rng_
                b = x if p[4] == 1.0 else x ** p[4]
                step = -(p[3] * a_reset[j] * c_cell * noise * b * rng_)
                nreset += 1
            k += 1
            g_before = g
            if stuck == 0:
                g = min(max(g + step, gmin), gmax)
            if d == 1:  # energy of the pulse: V^2 x the mean of G before and after it, x t (in cost.py)
                e_set += v2 * 0.5 * (g_before + g)
            else:
                e_reset += v2 * 0.5 * (g_before + g)
            s, r = read(s, g, poly, p[7])
            gsum += g
            ok = lo <= r <= hi
        out_f[i, 0] = g
        out_f[i, 1] = e_set
        out_f[i, 2] = e_reset
        out_f[i, 3] = gsum
        out_i[i, 0] = nset
        out_i[i, 1] = nreset
        out_i[i, 2] = nset + nreset + 1
        out_i[i, 3] = 1 if ok else 0

    @njit(parallel=True, cache=True)
    def kernel(lo, hi, g0, stuck, p, a_set, v2_set, a_reset, v2_reset, poly, seed, max_pulses, offset, out_f, out_i):
        for i in prange(lo.size):
            one_cell(offset + i, lo[i], hi[i], g0[i], stuck[i], p, a_set, v2_set, a_reset, v2_reset, poly,
                     seed, max_pulses, out_f, out_i, i)

    _KERNEL = kernel
    return kernel


def run_kernel(inp: KernelInputs, n_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run the Numba kernel: returns ``out_f`` (n, 4) = [G_final_S, sum V^2 G over SET pulses (V^2 S),
    same for RESET, sum of G over all reads (S)] and ``out_i`` (n, 4) int64 = [SET pulses,
    RESET pulses, reads, success]."""
    kernel = _get_kernel()
    n = inp.lo_S.size
    out_f = np.empty((n, 4), dtype=np.float64)
    out_i = np.empty((n, 4), dtype=np.int64)
    import numba

    prev = numba.get_num_threads()
    if n_threads is not None:
        numba.set_num_threads(int(n_threads))
    try:
        kernel(inp.lo_S, inp.hi_S, inp.g0_S, inp.stuck, inp.params, inp.a_set, inp.v2_set, inp.a_reset,
               inp.v2_reset, inp.read_poly_uS, np.uint64(inp.seed), np.int64(inp.max_pulses),
               np.int64(inp.cell_offset), out_f, out_i)
    finally:
        if n_threads is not None:
            numba.set_num_threads(prev)
    return out_f, out_i


def run_reference(inp: KernelInputs) -> tuple[np.ndarray, np.ndarray]:
    """The same algorithm in plain Python, one cell at a time (the spec; slow). Same outputs as
    :func:`run_kernel`, equal number for number for the same inputs."""
    n = inp.lo_S.size
    out_f = np.empty((n, 4), dtype=np.float64)
    out_i = np.empty((n, 4), dtype=np.int64)
    p = [float(v) for v in inp.params]
    gmin, gmax = p[_P_GMIN], p[_P_GMAX]
    span = gmax - gmin
    poly = [float(c) for c in inp.read_poly_uS]

    def verify_read(st: _PyStream, g: float) -> float:
        if not poly:
            return g
        return g + float(read_sigma_S(poly, g)) * p[_P_READDIV] * st.normal()

    tables = {1: (inp.a_set, inp.v2_set, p[_P_ASET]), -1: (inp.a_reset, inp.v2_reset, p[_P_ARESET])}
    for i in range(n):
        st = _PyStream(inp.seed, inp.cell_offset + i)
        c_cell = math.exp(p[_P_SD2D] * st.logistic())
        lo, hi, stuck = float(inp.lo_S[i]), float(inp.hi_S[i]), int(inp.stuck[i])
        g = {0: float(inp.g0_S[i]), 1: gmin, 2: gmax}[stuck]
        r = verify_read(st, g)
        gsum, counts, energy = g, {1: 0, -1: 0}, {1: 0.0, -1: 0.0}
        last, k = 0, 0
        ok = lo <= r <= hi
        while not ok and counts[1] + counts[-1] < inp.max_pulses:
            d = 1 if r < lo else -1
            if d != last:
                k, last = 0, d
            noise = math.exp(p[_P_SC2C] * st.logistic())
            amp, v2, alpha = tables[d]
            j = min(k, amp.size - 1)
            x = (gmax - g) / span if d == 1 else (g - gmin) / span
            b = x if p[_P_BETA] == 1.0 else x ** p[_P_BETA]
            mag = alpha * float(amp[j]) * c_cell * noise * b * span
            counts[d] += 1
            k += 1
            g_before = g
            if stuck == 0:
                g = min(max(g + (mag if d == 1 else -mag), gmin), gmax)
            energy[d] += float(v2[j]) * 0.5 * (g_before + g)
            r = verify_read(st, g)
            gsum += g
            ok = lo <= r <= hi
        out_f[i] = (g, energy[1], energy[-1], gsum)
        out_i[i] = (counts[1], counts[-1], counts[1] + counts[-1] + 1, int(ok))
    return out_f, out_i


def build_inputs(lo_S: np.ndarray, hi_S: np.ndarray, g0_S: np.ndarray, stuck: np.ndarray, device: DeviceModel,
                 pulse_model: PulseModel, algorithm: str, seed: int, max_pulses: int | None,
                 n_read_avg: int = 1, verify_read_noise: bool = True, cell_offset: int = 0) -> KernelInputs:
    """Flatten and type-check the kernel inputs (all conductances in S, arrays of one size)."""
    a_set, v2_set, a_reset, v2_reset = pulse_model.amplitude_tables(algorithm)
    if max_pulses is None:
        max_pulses = NO_LIMIT_PULSES
    if not (isinstance(max_pulses, (int, np.integer)) and max_pulses >= 0):
        raise WriteVerifyError(f"max_pulses must be an int >= 0 or None (no limit), got {max_pulses!r}")
    if not (isinstance(n_read_avg, (int, np.integer)) and n_read_avg >= 1):
        raise WriteVerifyError(f"n_read_avg must be an int >= 1, got {n_read_avg!r}")
    poly = device.read_noise_poly_uS if (verify_read_noise and device.read_noise_poly_uS) else ()
    f = lambda a: np.ascontiguousarray(np.asarray(a, dtype=np.float64).ravel())  # noqa: E731
    return KernelInputs(
        lo_S=f(lo_S), hi_S=f(hi_S), g0_S=f(g0_S), stuck=np.ascontiguousarray(np.asarray(stuck, np.int8).ravel()),
        params=_pack_params(pulse_model, device.gmin_S, device.gmax_S, int(n_read_avg)),
        a_set=a_set, v2_set=v2_set, a_reset=a_reset, v2_reset=v2_reset,
        read_poly_uS=np.asarray(poly, dtype=np.float64), seed=int(seed) & _M64, max_pulses=int(max_pulses),
        cell_offset=int(cell_offset),
    )

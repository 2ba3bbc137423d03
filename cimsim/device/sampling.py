"""Drawing cells from a device model: every sampler of the project, one idea per row.

============================  ================================  ===============================  ===============================
idea                          numpy (reference)                 Numba (host, fast)               torch (any torch device)
============================  ================================  ===============================  ===============================
its error alone               :func:`programming_error_numpy`   (in the kernel)                  (in ``sample_levels_torch``)
programmed cell at a level    :func:`sample_targets`            :func:`sample_levels_numba`      :func:`sample_levels_torch`
Student-t error (inverse CDF) :func:`student_t_of_normal`       :func:`student_t_table` +        :func:`student_t_table` +
                                                                :func:`quantile_error_one`       :func:`quantile_error_torch`
quantile-family error         :func:`quantile_error_numpy`      :func:`quantile_error_one`       :func:`quantile_error_torch`
a replayed measured cell      :func:`empirical_error_numpy`     (in the kernel)                  :func:`empirical_error_torch`
drift to the read time        :func:`drift_numpy`               (host: ``drift_numpy``)          :func:`drift_torch`
read-noise sigma (S)          :func:`read_sigma_S`              :func:`read_sigma_one_S`         :func:`read_sigma_torch`
============================  ================================  ===============================  ===============================

``DeviceModel.sample`` / ``sample_levels`` / ``apply_drift`` / ``read_sigma_S`` call these;
``cimsim.crossbar.program`` (host chips), ``cimsim.crossbar.program_torch`` (chips on a torch
device), the training package's device-noise backend and write-verify (one-shot cells, verify
reads) call them too, so a new physics changes this file only (docs/extending.md). The twins are
tested against each other (tests/test_device.py, tests/test_program_torch.py): the numpy and Numba
level samplers in distribution, the torch sampler in distribution and bit for bit against itself.

One inverse-CDF sampler: every family maps one standard normal ``Z`` per cell (the probit of a
uniform) through its error quantile function. A parametric level: ``G = level + shift + scale *
Q(Phi(Z))`` with ``(shift, scale, df)`` the level's programming error at the read time
(``DeviceModel.programming_params``) and ``Q`` the identity (normal) or the Student-t quantile
function where ``df`` is finite: exact in the numpy reference (:func:`student_t_of_normal`),
tabulated on the probit nodes :data:`STUDENT_T_Z` with the t's own Pareto tails beyond them in the
Numba and torch samplers (:func:`student_t_table`; within 1e-3 relative of the exact quantile for
df >= 1, tested). Then power-law drift (PCM), stuck-at-gmin/gmax cells, and the conductance floor,
in that order. Conductances in siemens, float64 unless a dtype is given.
A quantile-family level (``DeviceModel.is_quantile``) maps ``Z`` through its fitted error
quantile function: linear in ``Z`` between the nodes ``quantile_z``, generalized-Pareto tails
beyond them. An empirical device
(``DeviceModel.is_empirical``) maps a uniform ``U`` to one of the level's measured cells,
``cells[floor(U * n)]``.
The torch twins import torch when first called, so the numpy and Numba samplers (and
``cimsim.writeverify``) load without it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from numba import njit, prange

import cimsim  # noqa: F401 - resolves the annotations "cimsim.device.model.DeviceModel" (no import cycle)
from cimsim.kernels import _GOLDEN, _mix64, _normal, _uniform

if TYPE_CHECKING:  # annotations only; the torch twins import torch when called
    import torch

_UNIT_S = 1e-6  # read-noise polynomials take and give microsiemens


# ------------------------------------------------------------------------ numpy reference
def programming_error_numpy(dm: "cimsim.device.model.DeviceModel", targets_S: np.ndarray, t_s: float,
                            rng: np.random.Generator) -> np.ndarray:
    """Programming error ``G - target`` (S) of cells at ``targets_S`` (any shape) read at ``t_s``,
    from ``rng`` (one standard normal per cell, then one uniform per cell for an empirical device):
    the level's law alone, without drift, stuck cells or the floor."""
    tg = np.asarray(targets_S, dtype=np.float64)
    z = rng.standard_normal(tg.shape)
    if dm.is_empirical:
        lv = np.asarray(dm.levels_S)
        k = dm.level_index(tg).reshape(-1)
        cells, count = dm.empirical_params(lv, t_s)
        u = rng.random(tg.size)
        return empirical_error_numpy(u, cells[k], count[k]).reshape(tg.shape)
    if dm.is_quantile:
        q, tails = dm.quantile_params(tg, t_s)
        return quantile_error_numpy(z.reshape(-1), np.asarray(dm.quantile_z), q, tails).reshape(tg.shape)
    shift, scale, df = dm.programming_params(tg, t_s)
    return shift + scale * student_t_of_normal(z, df)


def sample_targets(dm: "cimsim.device.model.DeviceModel", targets_S: np.ndarray, t_s: float, rng: np.random.Generator,
                   drift: bool = True) -> np.ndarray:
    """Programmed conductances (S) for ``targets_S`` (any shape) read at ``t_s``, from ``rng``."""
    tg = np.asarray(targets_S, dtype=np.float64)
    g = tg + programming_error_numpy(dm, tg, t_s, rng)
    if drift and dm.drift is not None:
        g = drift_numpy(dm, g, t_s, rng)
    if dm.stuck_at_gmin or dm.stuck_at_gmax:
        u = rng.random(tg.shape)
        g = np.where(u < dm.stuck_at_gmin, dm.gmin_S, g)
        g = np.where((u >= dm.stuck_at_gmin) & (u < dm.stuck_at_gmin + dm.stuck_at_gmax), dm.gmax_S, g)
    if dm.g_floor_S is not None:
        g = np.maximum(g, dm.g_floor_S)
    return g


def quantile_error_numpy(z: np.ndarray, qz: np.ndarray, q_S: np.ndarray, tails: np.ndarray) -> np.ndarray:
    """Programming error (S) of cells with standard normals ``z`` (n,) through their quantile
    functions: ``q_S`` (n, J) at the probit nodes ``qz`` (J,), linear in z between nodes;
    beyond the end nodes the generalized-Pareto tails ``tails`` (n, 4) = ``xi_lo, beta_lo_S,
    xi_hi, beta_hi_S``: with ``p0`` the tail probability at the end node and ``p`` the cell's
    (``Phi(z)`` below, ``Phi(-z)`` above), the error moves past the end quantile by
    ``beta / xi * ((p0 / p)^xi - 1)`` (``beta * log(p0 / p)`` at ``xi = 0``).
    """
    from scipy.special import log_ndtr

    z = np.asarray(z, dtype=np.float64)
    qz = np.asarray(qz, dtype=np.float64)
    n, nj = q_S.shape
    j = np.clip(np.searchsorted(qz, z, side="right") - 1, 0, nj - 2)
    rows = np.arange(n)
    lo_q, hi_q = q_S[rows, j], q_S[rows, j + 1]
    frac = (np.clip(z, qz[0], qz[-1]) - qz[j]) / (qz[j + 1] - qz[j])
    out = lo_q + frac * (hi_q - lo_q)
    below, above = z < qz[0], z > qz[-1]
    if below.any():
        log_e = log_ndtr(qz[0]) - log_ndtr(z[below])
        out[below] = q_S[below, 0] - _gpd_excess(log_e, tails[below, 0], tails[below, 1])
    if above.any():
        log_e = log_ndtr(-qz[-1]) - log_ndtr(-z[above])
        out[above] = q_S[above, -1] + _gpd_excess(log_e, tails[above, 2], tails[above, 3])
    return out


def empirical_error_numpy(u: np.ndarray, cells_S: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Measured errors (S) replayed by uniforms ``u`` (n,): cell ``floor(u * count)`` of each row
    of ``cells_S`` (n, n_max), whose first ``count`` (n,) entries are the level's measured cells."""
    i = np.minimum((np.asarray(u) * count).astype(np.int64), count - 1)
    return cells_S[np.arange(cells_S.shape[0]), i]


def _gpd_excess(log_e: np.ndarray, xi: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Generalized-Pareto quantile at exceedance ratio ``e = p0 / p >= 1``, from ``log(e)``."""
    small = np.abs(xi) < 1e-9
    safe = np.where(small, 1.0, xi)
    return np.where(small, beta * log_e, beta / safe * np.expm1(safe * log_e))


#: Probit nodes of the tabulated Student-t quantile function (step 0.01): a float64 normal from
#: the samplers' Box-Muller never exceeds |z| = 8.6, so the Pareto tails beyond are almost never used.
STUDENT_T_Z = np.linspace(-8.5, 8.5, 1701)


def student_t_of_normal(z: np.ndarray, df: np.ndarray) -> np.ndarray:
    """The standard Student-t quantile at ``Phi(z)``, elementwise (``z``, ``df`` broadcast; ``df``
    > 0, ``inf``: ``z`` itself). Computed from the nearer tail, so it keeps full precision there."""
    from scipy.special import ndtr, stdtrit

    z, df = np.broadcast_arrays(np.asarray(z, dtype=np.float64), np.asarray(df, dtype=np.float64))
    out = z.copy()
    heavy = np.isfinite(df)
    if heavy.any():
        zh = z[heavy]
        out[heavy] = -np.sign(zh) * stdtrit(df[heavy], ndtr(-np.abs(zh)))
    return out


@lru_cache(maxsize=4096)
def _student_t_row(df: float) -> tuple[np.ndarray, np.ndarray]:
    q = student_t_of_normal(STUDENT_T_Z, np.full(STUDENT_T_Z.size, df))
    beta = abs(q[-1]) / df  # Pareto tail of the t: P(|T| > x) ~ C x^-df, i.e. GPD xi = 1 / df
    return q, np.array([1.0 / df, beta, 1.0 / df, beta])


def student_t_table(df: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tabulated standard Student-t quantile functions for the samplers: ``(q, tails)`` with ``q``
    (L, J) the quantiles at :data:`STUDENT_T_Z` and ``tails`` (L, 4) in the layout of
    :func:`quantile_error_numpy` (generalized Pareto with ``xi = 1 / df``, the t's own tail index,
    continuing the end node); one row per entry of ``df`` (L,), zeros where ``df`` is infinite."""
    df = np.asarray(df, dtype=np.float64).reshape(-1)
    q = np.zeros((df.size, STUDENT_T_Z.size))
    tails = np.zeros((df.size, 4))
    for i, d in enumerate(df):
        if np.isfinite(d):
            q[i], tails[i] = _student_t_row(float(d))
    return q, tails


def drift_numpy(dm: "cimsim.device.model.DeviceModel", g_S: np.ndarray, t_s: float, rng: np.random.Generator) -> np.ndarray:
    """Power-law drift of programmed conductances from ``t0`` to ``t_s`` (one nu per cell)."""
    d = dm.drift
    if d is None or t_s <= d.t0_s:
        return g_S
    gn = np.clip(g_S / dm.gmax_S, 0.0, None)
    nu = d.nu_mean(gn) + d.nu_std(gn) * rng.standard_normal(np.shape(g_S))
    return g_S * (t_s / d.t0_s) ** (-nu)


def read_sigma_S(poly_uS, g_S: np.ndarray) -> np.ndarray:
    """Standard deviation (S) of one read at ``g_S`` (zeros for ``poly_uS`` None): the polynomial
    in microsiemens, clipped at 0."""
    g = np.asarray(g_S, dtype=np.float64)
    if poly_uS is None:
        return np.zeros_like(g)
    return np.maximum(np.polyval(poly_uS, g / _UNIT_S), 0.0) * _UNIT_S


# ------------------------------------------------------------------------ Numba
@njit(cache=True, inline="always")
def _gpd_excess_one(log_e, xi, beta):  # pragma: no cover - compiled
    if abs(xi) < 1e-9:
        return beta * log_e
    return beta / xi * math.expm1(xi * log_e)


@njit(cache=True)
def _log_ndtr(z):  # pragma: no cover - compiled
    """log Phi(z) for the tails the sampler reaches (|z| < 38): erfc keeps full relative precision."""
    return math.log(0.5 * math.erfc(-z / math.sqrt(2.0)))


@njit(cache=True, inline="always")
def quantile_error_one(z, qz, q, tails):  # pragma: no cover - compiled
    """:func:`quantile_error_numpy` of one cell: ``q`` (J,) its quantiles, ``tails`` (4,)."""
    nj = qz.shape[0]
    if z < qz[0]:
        return q[0] - _gpd_excess_one(_log_ndtr(qz[0]) - _log_ndtr(z), tails[0], tails[1])
    if z > qz[nj - 1]:
        return q[nj - 1] + _gpd_excess_one(_log_ndtr(-qz[nj - 1]) - _log_ndtr(-z), tails[2], tails[3])
    lo = min(max(np.int64((z - qz[0]) / (qz[1] - qz[0])), 0), nj - 2)  # the node, if evenly spaced
    hi = lo + 1
    if not (qz[lo] <= z <= qz[hi]):  # uneven nodes: bisect, qz[lo] <= z <= qz[hi]
        lo, hi = 0, nj - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if qz[mid] <= z:
                lo = mid
            else:
                hi = mid
    frac = (z - qz[lo]) / (qz[hi] - qz[lo])
    return q[lo] + frac * (q[hi] - q[lo])


@njit(parallel=True, cache=True, nogil=True)
def _sample_levels_kernel(idx, seed, target, shift, scale, df, tz, ttab, ttails, p_lo, p_hi, g_lo, g_hi, floor, qz, qtab,
                          tails, ecells, ecount, out):  # pragma: no cover
    """idx: (N,) level index per cell; target, shift, scale, df: (L,) per level (df = inf: normal);
    tz (J_t,) = :data:`STUDENT_T_Z`, ttab (L, J_t), ttails (L, 4): the Student-t levels' tabulated
    quantiles (:func:`student_t_table`);
    qz (J,), qtab (L, J), tails (L, 4): the quantile family (J = 0: parametric levels); ecells
    (L, n_max), ecount (L,): an empirical device's measured errors (n_max = 0: none).
    Cell i uses stream ``mix(seed, i)``: draws 0-1 decide stuck cells, draws 2.. the error."""
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
        if ecells.shape[1] > 0:
            n = ecount[k]
            g = target[k] + ecells[k, min(np.int64(_uniform(key, np.uint64(2)) * n), n - 1)]
        elif qz.shape[0] > 0:
            g = target[k] + quantile_error_one(_normal(key, np.uint64(2)), qz, qtab[k], tails[k])
        elif np.isfinite(df[k]):
            t = quantile_error_one(_normal(key, np.uint64(2)), tz, ttab[k], ttails[k])
            g = target[k] + shift[k] + scale[k] * t
        else:
            g = target[k] + shift[k] + scale[k] * _normal(key, np.uint64(2))
        out[i] = g if g > floor else floor


def sample_levels_numba(dm: "cimsim.device.model.DeviceModel", levels_S: np.ndarray, index: np.ndarray, t_s: float,
                        seed: int) -> np.ndarray:
    """Cells at ``levels_S[index]`` (any shape) before drift: a parallel counter-based kernel keyed
    by ``seed`` (63-bit), reproducible on any number of threads; same law as :func:`sample_targets`."""
    lv = np.asarray(levels_S, dtype=np.float64)
    idx = np.asarray(index)
    shift, scale, df = dm.programming_params(lv, t_s)
    floor = -np.inf if dm.g_floor_S is None else float(dm.g_floor_S)
    out = np.empty(idx.size, dtype=np.float64)
    if dm.is_quantile:
        qtab, tails = dm.quantile_params(lv, t_s)
        qz = np.asarray(dm.quantile_z, dtype=np.float64)
    else:
        qz, qtab, tails = np.zeros(0), np.zeros((lv.size, 0)), np.zeros((lv.size, 4))
    if dm.is_empirical:
        ecells, ecount = dm.empirical_params(lv, t_s)
    else:
        ecells, ecount = np.zeros((lv.size, 0)), np.zeros(lv.size, dtype=np.int64)
    ttab, ttails = student_t_table(df)
    _sample_levels_kernel(np.ascontiguousarray(idx.reshape(-1)), int(seed), lv, shift, scale, df, STUDENT_T_Z, ttab, ttails,
                          float(dm.stuck_at_gmin), float(dm.stuck_at_gmax), dm.gmin_S, dm.gmax_S, floor, qz,
                          np.ascontiguousarray(qtab), np.ascontiguousarray(tails), np.ascontiguousarray(ecells),
                          ecount, out)
    return out.reshape(idx.shape)


@njit(cache=True, inline="always")
def read_sigma_one_S(poly_uS, g_S):  # pragma: no cover - compiled
    """:func:`read_sigma_S` of one cell (``poly_uS`` a float64 array, empty: no read noise)."""
    x = g_S / 1e-6
    acc = 0.0
    for c in poly_uS:
        acc = acc * x + c
    return max(acc, 0.0) * 1e-6


# ------------------------------------------------------------------------ torch
@dataclass
class LevelTable:
    """Per-level programming parameters of one (device model, levels, read time) on a torch device.

    levels, shift, scale: (L,) siemens in ``dtype``; df: (L,) float64 (inf = normal); heavy: whether
    any level is Student-t, whose tabulated standard quantiles are then ``t_q`` (L, J_t) at
    ``t_z`` (J_t,) with tails ``t_tails`` (L, 4) (:func:`student_t_table`); qz (J,), q (L, J), tails
    (L, 4): a quantile-family model's nodes, error quantiles and tails (``None`` otherwise); cells
    (L, n_max), count (L,): an empirical device's measured errors.
    """

    levels: torch.Tensor
    shift: torch.Tensor
    scale: torch.Tensor
    df: torch.Tensor
    heavy: bool
    qz: "torch.Tensor | None" = None
    q: "torch.Tensor | None" = None
    tails: "torch.Tensor | None" = None
    cells: "torch.Tensor | None" = None
    count: "torch.Tensor | None" = None
    t_z: "torch.Tensor | None" = None
    t_q: "torch.Tensor | None" = None
    t_tails: "torch.Tensor | None" = None

    @classmethod
    def make(cls, dm: "cimsim.device.model.DeviceModel", levels_S: np.ndarray, t_s: float, device: torch.device | str,
             dtype=None) -> "LevelTable":
        import torch

        lv = np.asarray(levels_S, dtype=np.float64)
        shift, scale, df = dm.programming_params(lv, t_s)
        dtype = torch.float64 if dtype is None else dtype

        def t(a, dt=dtype):
            return torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=dt, device=device)

        if dm.is_empirical:
            cells, count = dm.empirical_params(lv, t_s)
            return cls(t(lv), t(shift), t(scale), t(df, torch.float64), False, cells=t(cells),
                       count=torch.as_tensor(count, device=device))
        if not dm.is_quantile:
            if not np.isfinite(df).any():
                return cls(t(lv), t(shift), t(scale), t(df, torch.float64), False)
            tq, ttails = student_t_table(df)
            return cls(t(lv), t(shift), t(scale), t(df, torch.float64), True, t_z=t(STUDENT_T_Z), t_q=t(tq),
                       t_tails=t(ttails))
        q, tails = dm.quantile_params(lv, t_s)
        return cls(t(lv), t(shift), t(scale), t(df, torch.float64), False, t(dm.quantile_z), t(q), t(tails))


def sample_levels_torch(index: torch.Tensor, table: LevelTable, dm: "cimsim.device.model.DeviceModel", generator: torch.Generator,
                        t_s: float, spread: float = 1.0) -> torch.Tensor:
    """Cells at ``table.levels[index]`` (any shape) on ``index``'s device, in the table's dtype.

    ``spread`` multiplies the table's scale (the device-noise backend's sigma). Draws from
    ``generator`` in a fixed order: normals for every cell (and uniforms for an empirical device),
    drift, stuck cells; then the floor. Student-t levels map their normals through the tabulated
    t quantile function (no draws of their own).
    """
    import torch

    dtype = table.levels.dtype
    z = torch.randn(index.shape, generator=generator, device=index.device, dtype=dtype)
    if table.heavy:
        dfk = table.df[index]
        hv = torch.isfinite(dfk)
        if hv.any():
            z[hv] = quantile_error_torch(z[hv], table.t_z, table.t_q, table.t_tails, index[hv])
    if table.cells is not None:
        u = torch.rand(index.shape, generator=generator, device=index.device, dtype=dtype)
        g = table.levels[index] + empirical_error_torch(u, table.cells, table.count, index)
    elif table.q is not None:
        med = _median_error(table)
        err = quantile_error_torch(z.reshape(-1), table.qz, table.q, table.tails, index.reshape(-1))
        g = table.levels[index] + (med[index] + spread * (err.view(index.shape) - med[index]))
    else:
        g = table.levels[index] + table.shift[index] + table.scale[index] * spread * z
    g = drift_torch(dm, g, t_s, generator)
    if dm.stuck_at_gmin or dm.stuck_at_gmax:
        u = torch.rand(g.shape, generator=generator, device=g.device, dtype=g.dtype)
        g = torch.where(u < dm.stuck_at_gmin, torch.full_like(g, dm.gmin_S), g)
        hi = (u >= dm.stuck_at_gmin) & (u < dm.stuck_at_gmin + dm.stuck_at_gmax)
        g = torch.where(hi, torch.full_like(g, dm.gmax_S), g)
    if dm.g_floor_S is not None:
        g = torch.clamp(g, min=dm.g_floor_S)
    return g


def empirical_error_torch(u: "torch.Tensor", cells: "torch.Tensor", count: "torch.Tensor",
                          index: "torch.Tensor") -> "torch.Tensor":
    """:func:`empirical_error_numpy` in torch: uniforms ``u`` and level indices ``index`` (same
    shape), ``cells`` (L, n_max), ``count`` (L,)."""
    import torch

    n = count[index]
    i = torch.minimum((u * n).long(), n - 1)
    return cells[index, i]


def _median_error(table: LevelTable) -> "torch.Tensor":
    """(L,) the error quantile function at z = 0 (the centre ``spread`` scales about)."""
    import torch

    j = int(torch.searchsorted(table.qz, torch.zeros((), dtype=table.qz.dtype, device=table.qz.device), right=True))
    j = min(max(j - 1, 0), table.qz.numel() - 2)
    a = (0 - table.qz[j]) / (table.qz[j + 1] - table.qz[j])
    return table.q[:, j] + a.clamp(0, 1) * (table.q[:, j + 1] - table.q[:, j])


def quantile_error_torch(z: "torch.Tensor", qz: "torch.Tensor", q: "torch.Tensor",
                         tails: "torch.Tensor", rows: "torch.Tensor | None" = None) -> "torch.Tensor":
    """:func:`quantile_error_numpy` in torch: ``z`` (n,), ``qz`` (J,), ``q`` (n, J), ``tails`` (n, 4);
    or, with ``rows`` (n,) level indices, ``q`` (L, J) and ``tails`` (L, 4) per level (no (n, J)
    copy is made)."""
    import torch

    nj = qz.numel()
    r = torch.arange(z.numel(), device=z.device) if rows is None else rows
    j = (torch.searchsorted(qz, z.contiguous(), right=True) - 1).clamp(0, nj - 2)
    lo_q = q[r, j]
    hi_q = q[r, j + 1]
    frac = (z.clamp(qz[0], qz[-1]) - qz[j]) / (qz[j + 1] - qz[j])
    out = lo_q + frac * (hi_q - lo_q)
    below, above = z < qz[0], z > qz[-1]
    if bool(below.any()):
        rb = r[below]
        log_e = torch.special.log_ndtr(qz[0]) - torch.special.log_ndtr(z[below])
        out[below] = q[rb, 0] - _gpd_excess_torch(log_e, tails[rb, 0], tails[rb, 1])
    if bool(above.any()):
        ra = r[above]
        log_e = torch.special.log_ndtr(-qz[-1]) - torch.special.log_ndtr(-z[above])
        out[above] = q[ra, -1] + _gpd_excess_torch(log_e, tails[ra, 2], tails[ra, 3])
    return out


def _gpd_excess_torch(log_e, xi, beta):
    import torch

    small = xi.abs() < 1e-9
    safe = torch.where(small, torch.ones_like(xi), xi)
    return torch.where(small, beta * log_e, beta / safe * torch.expm1(safe * log_e))


def drift_torch(dm: "cimsim.device.model.DeviceModel", g: torch.Tensor, t_s: float, generator: torch.Generator) -> torch.Tensor:
    """:func:`drift_numpy` in torch (one nu per cell, from ``generator``)."""
    import torch

    d = dm.drift
    if d is None or t_s <= d.t0_s:
        return g
    lg = torch.log(torch.clamp(torch.clamp(g / dm.gmax_S, min=0.0), min=1e-12))
    mu, sd = d.nu_mean, d.nu_std
    nu = torch.clamp(mu.a * lg + mu.b, mu.lo, mu.hi) + torch.clamp(sd.a * lg + sd.b, sd.lo, sd.hi) * torch.randn(
        g.shape, generator=generator, device=g.device, dtype=g.dtype)
    return g * torch.pow(torch.as_tensor(t_s / d.t0_s, dtype=g.dtype, device=g.device), -nu)


def read_sigma_torch(poly_uS, g_S: torch.Tensor) -> torch.Tensor:
    """:func:`read_sigma_S` in torch (``poly_uS`` a sequence, highest power first)."""
    import torch

    g_uS = g_S / _UNIT_S
    acc = torch.zeros_like(g_uS)
    for c in poly_uS:
        acc = acc * g_uS + c
    return acc.clamp_min(0) * _UNIT_S


__all__ = ["sample_targets", "programming_error_numpy", "quantile_error_numpy", "empirical_error_numpy", "empirical_error_torch", "drift_numpy", "read_sigma_S", "sample_levels_numba",
           "quantile_error_one", "read_sigma_one_S", "student_t_of_normal", "student_t_table", "STUDENT_T_Z", "LevelTable", "sample_levels_torch",
           "quantile_error_torch", "drift_torch", "read_sigma_torch"]

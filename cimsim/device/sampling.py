"""Drawing cells from a device model: every sampler of the project, one idea per row.

==========================  =======================  ==========================  ==========================
idea                        numpy (reference)        Numba (host, fast)          torch (any torch device)
==========================  =======================  ==========================  ==========================
programmed cell at a level  :func:`sample_targets`   :func:`sample_levels_numba` :func:`sample_levels_torch`
drift to the read time      :func:`drift_numpy`      (host: ``drift_numpy``)     :func:`drift_torch`
read-noise sigma (S)        :func:`read_sigma_S`     :func:`read_sigma_one_S`    :func:`read_sigma_torch`
==========================  =======================  ==========================  ==========================

``DeviceModel.sample`` / ``sample_levels`` / ``apply_drift`` / ``read_sigma_S`` call these;
``cimsim.crossbar.program`` (host chips), ``cimsim.crossbar.program_torch`` (chips on a torch
device), the training package's device-noise backend and write-verify (one-shot cells, verify
reads) call them too, so a new physics changes this file only (docs/extending.md). The twins are
tested against each other (tests/test_device.py, tests/test_program_torch.py): the numpy and Numba
level samplers in distribution, the torch sampler in distribution and bit for bit against itself.

A programmed cell: ``G = level + shift + scale * Z`` with ``(shift, scale, df)`` the level's
programming error at the read time (``DeviceModel.programming_params``; ``Z`` normal, or
Student-t where ``df`` is finite); then power-law drift (PCM), stuck-at-gmin/gmax cells, and the
conductance floor, in that order. Conductances in siemens, float64 unless a dtype is given.
The torch twins import torch when first called, so the numpy and Numba samplers (and
``cimsim.writeverify``) load without it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numba import njit, prange

from cimsim.kernels import _GOLDEN, _mix64, _normal, _student_t, _uniform

if TYPE_CHECKING:  # annotations only; the torch twins import torch when called
    import torch

_UNIT_S = 1e-6  # read-noise polynomials take and give microsiemens


# ------------------------------------------------------------------------ numpy reference
def sample_targets(dm: "DeviceModel", targets_S: np.ndarray, t_s: float, rng: np.random.Generator,
                   drift: bool = True) -> np.ndarray:
    """Programmed conductances (S) for ``targets_S`` (any shape) read at ``t_s``, from ``rng``."""
    tg = np.asarray(targets_S, dtype=np.float64)
    shift, scale, df = dm.programming_params(tg, t_s)
    z = rng.standard_normal(tg.shape)
    heavy = np.isfinite(df)
    if heavy.any():
        z[heavy] = rng.standard_t(df[heavy])
    g = tg + shift + scale * z
    if drift and dm.drift is not None:
        g = drift_numpy(dm, g, t_s, rng)
    if dm.stuck_at_gmin or dm.stuck_at_gmax:
        u = rng.random(tg.shape)
        g = np.where(u < dm.stuck_at_gmin, dm.gmin_S, g)
        g = np.where((u >= dm.stuck_at_gmin) & (u < dm.stuck_at_gmin + dm.stuck_at_gmax), dm.gmax_S, g)
    if dm.g_floor_S is not None:
        g = np.maximum(g, dm.g_floor_S)
    return g


def drift_numpy(dm: "DeviceModel", g_S: np.ndarray, t_s: float, rng: np.random.Generator) -> np.ndarray:
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
@njit(parallel=True, cache=True, nogil=True)
def _sample_levels_kernel(idx, seed, target, shift, scale, df, p_lo, p_hi, g_lo, g_hi, floor, out):  # pragma: no cover
    """idx: (N,) level index per cell; target, shift, scale, df: (L,) per level (df = inf: normal).
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
        if np.isfinite(df[k]):
            z = _student_t(key, np.uint64(2), df[k])
        else:
            z = _normal(key, np.uint64(2))
        g = target[k] + shift[k] + scale[k] * z
        out[i] = g if g > floor else floor


def sample_levels_numba(dm: "DeviceModel", levels_S: np.ndarray, index: np.ndarray, t_s: float,
                        seed: int) -> np.ndarray:
    """Cells at ``levels_S[index]`` (any shape) before drift: a parallel counter-based kernel keyed
    by ``seed`` (63-bit), reproducible on any number of threads; same law as :func:`sample_targets`."""
    lv = np.asarray(levels_S, dtype=np.float64)
    idx = np.asarray(index)
    shift, scale, df = dm.programming_params(lv, t_s)
    floor = -np.inf if dm.g_floor_S is None else float(dm.g_floor_S)
    out = np.empty(idx.size, dtype=np.float64)
    _sample_levels_kernel(np.ascontiguousarray(idx.reshape(-1)), int(seed), lv, shift, scale, df,
                          float(dm.stuck_at_gmin), float(dm.stuck_at_gmax), dm.gmin_S, dm.gmax_S, floor, out)
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
def student_t_torch(df: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard Student-t draws, one per element of ``df`` (any shape, values > 0), same device.

    Bailey's polar method (Math. Comp. 62, 1994): ``U, V ~ U(-1, 1)``, ``W = U^2 + V^2`` accepted
    when ``0 < W < 1``; then ``T = U * sqrt(df * (W^(-2/df) - 1) / W)``. Rejected elements are
    redrawn (acceptance pi/4), all from ``generator``. Computed in float64.
    """
    import torch

    flat = df.reshape(-1).to(torch.float64)
    out = torch.empty_like(flat)
    todo = torch.arange(flat.numel(), device=flat.device)
    while todo.numel():
        uv = torch.rand((2, todo.numel()), generator=generator, device=flat.device, dtype=torch.float64) * 2 - 1
        w = uv[0] * uv[0] + uv[1] * uv[1]
        ok = (w < 1) & (w > 0)
        idx, d, wk = todo[ok], flat[todo[ok]], w[ok]
        out[idx] = uv[0][ok] * torch.sqrt(d * (wk.pow(-2.0 / d) - 1) / wk)
        todo = todo[~ok]
    return out.view(df.shape).to(df.dtype)


@dataclass
class LevelTable:
    """Per-level programming parameters of one (device model, levels, read time) on a torch device.

    levels, shift, scale: (L,) siemens in ``dtype``; df: (L,) float64 (inf = normal); heavy: whether
    any level is Student-t.
    """

    levels: torch.Tensor
    shift: torch.Tensor
    scale: torch.Tensor
    df: torch.Tensor
    heavy: bool

    @classmethod
    def make(cls, dm: "DeviceModel", levels_S: np.ndarray, t_s: float, device: torch.device | str,
             dtype=None) -> "LevelTable":
        import torch

        lv = np.asarray(levels_S, dtype=np.float64)
        shift, scale, df = dm.programming_params(lv, t_s)
        dtype = torch.float64 if dtype is None else dtype

        def t(a, dt=dtype):
            return torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=dt, device=device)

        return cls(t(lv), t(shift), t(scale), t(df, torch.float64), bool(np.isfinite(df).any()))


def sample_levels_torch(index: torch.Tensor, table: LevelTable, dm: "DeviceModel", generator: torch.Generator,
                        t_s: float, spread: float = 1.0) -> torch.Tensor:
    """Cells at ``table.levels[index]`` (any shape) on ``index``'s device, in the table's dtype.

    ``spread`` multiplies the table's scale (the device-noise backend's sigma). Draws from
    ``generator`` in a fixed order: normals for every cell, Student-t for the heavy-tailed ones,
    drift, stuck cells; then the floor.
    """
    import torch

    dtype = table.levels.dtype
    z = torch.randn(index.shape, generator=generator, device=index.device, dtype=dtype)
    if table.heavy:
        dfk = table.df[index]
        hv = torch.isfinite(dfk)
        if hv.any():
            z[hv] = student_t_torch(dfk[hv], generator).to(dtype)
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


def drift_torch(dm: "DeviceModel", g: torch.Tensor, t_s: float, generator: torch.Generator) -> torch.Tensor:
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


__all__ = ["sample_targets", "drift_numpy", "read_sigma_S", "sample_levels_numba", "read_sigma_one_S",
           "student_t_torch", "LevelTable", "sample_levels_torch", "drift_torch", "read_sigma_torch"]

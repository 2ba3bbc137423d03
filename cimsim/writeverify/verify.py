"""Write-verify of an array of cells: acceptance windows, :func:`write_verify` (pulses, then
relaxation to the read time), :func:`relax`, :func:`one_shot` programming and tolerance sweeps.
Shapes: any; conductances in siemens. Relaxation choices: ``docs/design.md`` (write-verify)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from cimsim.crossbar.program import program_cells
from cimsim.device.model import DeviceModel
from cimsim.device.sampling import programming_error_numpy

from cimsim.writeverify.kernel import _seed_from, _stuck_codes, build_inputs, run_kernel, run_reference
from cimsim.writeverify.pulse import PulseModel, WriteVerifyError, _check_algorithm, default_pulse_model

RELAXATION_MODES = ("increment", "none", "full")


@dataclass(frozen=True)
class WriteVerifyResult:
    """Programmed conductances and per-cell statistics; every array has the targets' shape.

    ``g_S``: conductance at ``t_read_s`` (after relaxation/drift), S; ``g_programmed_S``: right
    after programming (t = 0), S; ``pulses_set``/``pulses_reset``/``reads``: counts per cell
    (one-shot cells: 1 SET pulse, 0 reads); ``success``: verified cells whose last read was
    inside the window (one-shot cells: False); ``verified``: the mask; ``v2g_set_V2S`` /
    ``v2g_reset_V2S``: sum over the cell's pulses of V^2 * (G_before + G_after) / 2 (V^2 S; times the pulse
    width gives joules); ``g_read_sum_S``: sum of G over the cell's verify reads (S).
    """

    g_S: np.ndarray
    g_programmed_S: np.ndarray
    targets_S: np.ndarray
    lo_S: np.ndarray
    hi_S: np.ndarray
    pulses_set: np.ndarray
    pulses_reset: np.ndarray
    reads: np.ndarray
    success: np.ndarray
    verified: np.ndarray
    v2g_set_V2S: np.ndarray
    v2g_reset_V2S: np.ndarray
    g_read_sum_S: np.ndarray
    algorithm: str
    t_read_s: float
    seed: int

    @property
    def pulses(self) -> np.ndarray:
        return self.pulses_set + self.pulses_reset

    @property
    def failed(self) -> np.ndarray:
        """Verified cells that hit the pulse limit (or ended outside the window)."""
        return self.verified & ~self.success

    def summary(self) -> dict[str, float]:
        """Statistics over the verified cells: success rate, pulse mean/quantiles, SET/RESET
        means, reads mean, and the fraction of cells verified."""
        v = self.verified
        n = int(v.sum())
        out = {"cells": float(v.size), "verified_fraction": n / max(v.size, 1)}
        if n:
            pulses = self.pulses[v]
            out.update(pulse_summary(pulses))
            out.update({
                "success_rate": float(self.success[v].mean()),
                "set_mean": float(self.pulses_set[v].mean()),
                "reset_mean": float(self.pulses_reset[v].mean()),
                "reads_mean": float(self.reads[v].mean()),
            })
        return out


def pulse_summary(pulses: np.ndarray) -> dict[str, float]:
    """Mean and the quantiles p10, p25, median, p75, p90, p99 of a pulse-count array."""
    p = np.asarray(pulses, dtype=np.float64).ravel()
    q = np.quantile(p, [0.10, 0.25, 0.5, 0.75, 0.90, 0.99])
    q = [float(v) for v in q]
    return {"pulses_mean": float(p.mean()), "pulses_p10": q[0], "pulses_p25": q[1], "pulses_median": q[2],
            "pulses_p75": q[3], "pulses_p90": q[4], "pulses_p99": q[5]}


def acceptance_window(targets_S: np.ndarray, tolerance: float, relative: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(lo_S, hi_S)`` = target -+ tolerance (siemens), or target * (1 -+ tolerance) if ``relative``."""
    if not (isinstance(tolerance, (int, float, np.floating)) and math.isfinite(tolerance) and tolerance > 0):
        raise WriteVerifyError(f"tolerance must be a finite number > 0, got {tolerance!r}")
    if relative and tolerance >= 1:
        raise WriteVerifyError(f"a relative tolerance must be < 1, got {tolerance}")
    t = np.asarray(targets_S, dtype=np.float64)
    half = np.abs(t) * tolerance if relative else np.full(t.shape, float(tolerance))
    return t - half, t + half


def _initial_state(init: str | np.ndarray, shape: tuple[int, ...], device: DeviceModel,
                   gen: np.random.Generator) -> np.ndarray:
    """Conductance before programming (S): ``"erased"`` = gmin (all cells reset, HRS),
    ``"random"`` = uniform over the range (an unknown previous state), or an array."""
    if isinstance(init, str):
        if init == "erased":
            return np.full(shape, device.gmin_S)
        if init == "random":
            return gen.uniform(device.gmin_S, device.gmax_S, shape)
        raise WriteVerifyError(f"init must be 'erased', 'random' or an array of conductances, got {init!r}")
    g0 = np.asarray(init, dtype=np.float64)
    if g0.shape != shape:
        raise WriteVerifyError(f"init array has shape {g0.shape}, targets have {shape}")
    return np.clip(g0, device.gmin_S, device.gmax_S)


def relax(g_verify_S: np.ndarray, targets_S: np.ndarray, device: DeviceModel, t_read_s: float,
          gen: np.random.Generator, mode: str = "increment") -> np.ndarray:
    """Conductance at ``t_read_s`` of cells left at ``g_verify_S`` by write-verify (S, same shape).

    ``mode="increment"``: add the model's shift and quadrature spread increment from its earliest
    time to ``t_read_s``, shaped like the level's error law at ``t_read_s`` (its skew and tails,
    whatever the family: normal, Student-t, quantile, empirical; module docstring); ``"full"``: add
    the model's whole error at ``t_read_s``; ``"none"``: no relaxation. Drift (if the model has it)
    and the conductance floor are applied in every mode but ``"none"``.
    """
    if mode not in RELAXATION_MODES:
        raise WriteVerifyError(f"relaxation must be one of {RELAXATION_MODES}, got {mode!r}")
    if not (isinstance(t_read_s, (int, float, np.floating)) and t_read_s >= 0):
        raise WriteVerifyError(f"t_read_s must be a number >= 0 s, got {t_read_s!r}")
    g = np.asarray(g_verify_S, dtype=np.float64)
    if mode == "none" or g.size == 0:
        return g.copy()
    tg = np.asarray(targets_S, dtype=np.float64)
    t = float(t_read_s)
    if mode == "increment":  # D = dshift + dscale * X, X the level's law at t_read standardized
        unit = device if device.sigma_scale == 1.0 else device.replace(sigma_scale=1.0)
        err = programming_error_numpy(unit, tg, t, gen)
        shift_t, unit_scale_t, _ = unit.programming_params(tg, t)
        x = np.divide(err - shift_t, unit_scale_t, out=np.zeros_like(err), where=unit_scale_t > 0)
        _, scale_t, _ = device.programming_params(tg, t)
        shift_0, scale_0, _ = device.programming_params(tg, device.times_s[0])
        out = g + (shift_t - shift_0) + np.sqrt(np.maximum(scale_t**2 - scale_0**2, 0.0)) * x
    else:
        out = g + programming_error_numpy(device, tg, t, gen)
    if device.drift is not None:
        out = device.apply_drift(out, float(t_read_s), gen)
    if device.g_floor_S is not None:
        out = np.maximum(out, device.g_floor_S)
    return out


def write_verify(
    targets_S: np.ndarray,
    device: DeviceModel,
    algorithm: str = "ispp",
    tolerance: float = 1e-6,
    max_pulses: int | None = 100,
    rng: np.random.Generator | int | None = None,
    mask: np.ndarray | None = None,
    t_read_s: float = 0.0,
    *,
    relative: bool = False,
    pulse_model: PulseModel | None = None,
    init: str | np.ndarray = "erased",
    n_read_avg: int = 1,
    relaxation: str = "increment",
    backend: str = "numba",
) -> WriteVerifyResult:
    """Program ``targets_S`` (S, any shape) by write-verify and read the array at ``t_read_s``.

    ``tolerance``: half-width of the acceptance window, siemens (or a fraction of the target if
    ``relative``; a target of 0 S then has an empty window and can only fail); ``max_pulses``: pulse limit per cell (None: no limit, i.e.
    ``NO_LIMIT_PULSES``); ``rng``: int seed or numpy Generator; ``mask`` (bool, broadcastable to
    the targets): cells to verify -- the others are programmed one-shot at ``t_read_s`` by
    :func:`cimsim.crossbar.program.program_cells` (from an int ``rng``, the very cells
    ``program`` draws from that seed for targets laid out as ``(2, S, in, out)``; ``None``:
    verify every cell; an all-False mask is plain one-shot);
    ``pulse_model``: default the calibrated preset of the algorithm; ``init``: state before
    programming (``"erased"``, ``"random"`` or an array, S); ``n_read_avg``: reads averaged per
    verify (lowers read noise by sqrt(n)); ``relaxation``: see :func:`relax`; ``backend``:
    ``"numba"`` or ``"reference"`` (plain Python, slow).

    Returns a :class:`WriteVerifyResult` of the targets' shape.
    """
    algorithm = _check_algorithm(algorithm)
    if not isinstance(device, DeviceModel):
        raise WriteVerifyError(f"device must be a cimsim DeviceModel, got {type(device).__name__}")
    if backend not in ("numba", "reference"):
        raise WriteVerifyError(f"backend must be 'numba' or 'reference', got {backend!r}")
    tg = np.asarray(targets_S, dtype=np.float64)
    if not np.all(np.isfinite(tg)):
        raise WriteVerifyError("targets_S contains NaN or inf")
    if tg.size and (tg.min() < device.gmin_S - 1e-15 or tg.max() > device.gmax_S + 1e-15):
        raise WriteVerifyError(
            f"targets_S must lie in the device range [{device.gmin_S}, {device.gmax_S}] S, "
            f"got [{tg.min()}, {tg.max()}] (targets are conductances in siemens)")
    lo, hi = acceptance_window(tg, tolerance, relative)
    if mask is None:
        m = np.ones(tg.shape, dtype=bool)
    else:
        mask = np.asarray(mask)
        if mask.dtype != bool:
            raise WriteVerifyError(f"mask must be boolean, got dtype {mask.dtype}")
        try:
            m = np.broadcast_to(mask, tg.shape)
        except ValueError:
            raise WriteVerifyError(f"mask of shape {mask.shape} does not broadcast to targets {tg.shape}") from None
    seed, gen = _seed_from(rng)
    pm = default_pulse_model(algorithm) if pulse_model is None else pulse_model
    g0 = _initial_state(init, tg.shape, device, gen)
    stuck = _stuck_codes(device, tg.size, gen).reshape(tg.shape)

    idx = np.flatnonzero(m)
    inp = build_inputs(lo.ravel()[idx], hi.ravel()[idx], g0.ravel()[idx], stuck.ravel()[idx], device, pm,
                       algorithm, seed, max_pulses, n_read_avg)
    if backend == "numba":
        out_f, out_i = run_kernel(inp)
    else:
        out_f, out_i = run_reference(inp)

    n = tg.size
    g_prog = np.empty(n)
    stats_i = np.zeros((n, 4), dtype=np.int64)
    stats_f = np.zeros((n, 4))
    g_prog[idx] = out_f[:, 0]
    stats_i[idx] = out_i
    stats_f[idx] = out_f
    g_relaxed = np.empty(n)
    g_relaxed[idx] = relax(out_f[:, 0], tg.ravel()[idx], device, t_read_s, gen, relaxation)
    rest = np.flatnonzero(~m.ravel())
    if rest.size:  # one-shot: the device model's own programming, one SET pulse, no verify read
        levels, index = np.unique(tg, return_inverse=True)
        os_seed = int(rng) if isinstance(rng, (int, np.integer)) else seed
        g_os = program_cells(device, levels, index.reshape(tg.shape), float(t_read_s), os_seed)[1].ravel()[rest]
        g_relaxed[rest] = g_os
        g_prog[rest] = g_os
        v2 = pm.v_set_V**2
        stats_i[rest, 0] = 1
        stats_f[rest, 1] = v2 * 0.5 * (g0.ravel()[rest] + g_os)  # one pulse from the start to the landing value
    # verified stuck cells stay stuck after relaxation (one-shot cells got their own stuck draw in sample)
    st = np.where(m.ravel(), stuck.ravel(), 0)
    g_relaxed = np.where(st == 1, device.gmin_S, np.where(st == 2, device.gmax_S, g_relaxed))

    shp = tg.shape
    return WriteVerifyResult(
        g_S=g_relaxed.reshape(shp), g_programmed_S=g_prog.reshape(shp), targets_S=tg, lo_S=lo, hi_S=hi,
        pulses_set=stats_i[:, 0].reshape(shp), pulses_reset=stats_i[:, 1].reshape(shp),
        reads=np.where(m.ravel(), stats_i[:, 2], 0).reshape(shp), success=(stats_i[:, 3] == 1).reshape(shp),
        verified=m.copy(), v2g_set_V2S=stats_f[:, 1].reshape(shp), v2g_reset_V2S=stats_f[:, 2].reshape(shp),
        g_read_sum_S=np.where(m.ravel(), stats_f[:, 3], 0.0).reshape(shp), algorithm=algorithm,
        t_read_s=float(t_read_s), seed=seed,
    )


def one_shot(targets_S: np.ndarray, device: DeviceModel, rng: np.random.Generator | int, t_read_s: float = 0.0,
             **kw: Any) -> WriteVerifyResult:
    """Plain one-shot programming (:func:`cimsim.crossbar.program.program_cells`), no verify: ``write_verify`` with an all-False mask."""
    tg = np.asarray(targets_S, dtype=np.float64)
    return write_verify(tg, device, rng=rng, mask=np.zeros(tg.shape, bool), t_read_s=t_read_s, **kw)


def tolerance_sweep(targets_S: np.ndarray, device: DeviceModel, tolerances: Sequence[float], *,
                    rng: int = 0, **kw: Any) -> list[dict[str, float]]:
    """Write-verify the same targets at each tolerance (same seed) and return one summary row per
    tolerance: ``{"tolerance": ..., **WriteVerifyResult.summary(), "rms_error_S": ...}``."""
    if not isinstance(rng, (int, np.integer)):
        raise WriteVerifyError("tolerance_sweep takes an int seed (each tolerance reuses it)")
    rows = []
    for tol in tolerances:
        res = write_verify(targets_S, device, tolerance=tol, rng=int(rng), **kw)
        row = {"tolerance": float(tol), **res.summary()}
        row["rms_error_S"] = float(np.sqrt(np.mean((res.g_S - res.targets_S) ** 2)))
        rows.append(row)
    return rows



"""The specification of a crossbar matrix-vector product: float64, plain loops, slow and obvious.

Tests compare the fast path (:mod:`cimsim.crossbar.mvm`) with this function on random shapes and configs;
when the two disagree, this one is right. Read noise here is drawn *per cell per read*, as the
physics has it; the fast path draws the column current's distribution instead, which the tests
check statistically.
"""
from __future__ import annotations

import numpy as np

from cimsim.crossbar.mapping import quantize_inputs
from cimsim.crossbar.program import ProgrammedArray


def adc_convert(value: float, lsb: float, lo: int, hi: int) -> float:
    """One ADC conversion of an analog ``value`` (unit currents): ``clip(round(value / lsb), lo, hi) * lsb``."""
    return float(np.clip(np.rint(value / lsb), lo, hi) * lsb)


def mvm_reference(arr: ProgrammedArray, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """``y`` (B, out) for inputs ``x`` (B, in), computed read by read.

    For every input vector, input phase (positive, then negative magnitudes), DAC cycle (one
    for a multi-bit DAC, one per bit for a bit-serial one), slice and row tile, each column's
    current is summed over the tile's rows, converted by the ADC, and shifted-and-added
    digitally. A row of ``x`` with a NaN or infinite entry gives a NaN row. ``rng`` draws read noise (per cell and read) and ADC noise when the config asks
    for them; without ``rng`` both are off.
    """
    cfg = arr.config
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    bad_rows = ~np.isfinite(x).all(axis=1)  # NaN/inf in a row: NaN out for that row
    x = np.where(bad_rows[:, None], 0.0, x)
    clip = arr.resolved_input_clip(x)
    x_int = quantize_inputs(x, clip, cfg.input_bits).astype(np.int64)
    base = 1 << cfg.bits_per_cell
    step = arr.step_S
    lsb = np.broadcast_to(arr.adc_lsb(), (arr.n_groups, arr.n_out))  # separate: G- side at S + k
    lo, hi = arr.adc_code_limits()
    read_noise = cfg.read_noise and rng is not None
    out_noise = cfg.output_noise if rng is not None else 0.0
    B = x.shape[0]
    y_int = np.zeros((B, arr.n_out))
    for b in range(B):
        for sign, mag in ((1, np.maximum(x_int[b], 0)), (-1, np.maximum(-x_int[b], 0))):
            if not mag.any():
                continue
            if cfg.dac == "multibit":
                cycles = [(mag, 1)]
            else:
                cycles = [((mag >> j) & 1, 1 << j) for j in range(cfg.input_bits)]
            for v, cycle_weight in cycles:
                for k in range(cfg.n_slices):
                    for r0 in range(0, arr.n_in, cfg.tile_rows):
                        rows = slice(r0, min(r0 + cfg.tile_rows, arr.n_in))
                        for o in range(arr.n_out):
                            gp = arr.g_pos_S[k, rows, o]
                            gn = arr.g_neg_S[k, rows, o]
                            if read_noise:
                                gp = arr.device_model.read(gp, rng)
                                gn = arr.device_model.read(gn, rng)
                            ip = float(np.dot(v[rows], gp)) / step
                            in_ = float(np.dot(v[rows], gn)) / step
                            if cfg.adc_convert == "differential":
                                d = ip - in_ + (out_noise * lsb[k, o] * rng.standard_normal() if out_noise else 0.0)
                                val = adc_convert(d, lsb[k, o], lo, hi)
                            else:
                                lp, ln = lsb[k, o], lsb[cfg.n_slices + k, o]
                                if out_noise:
                                    ip += out_noise * lp * rng.standard_normal()
                                    in_ += out_noise * ln * rng.standard_normal()
                                val = adc_convert(ip, lp, lo, hi) - adc_convert(in_, ln, lo, hi)
                            y_int[b, o] += sign * cycle_weight * base**k * val
    y_int[bad_rows] = np.nan
    return y_int * arr.output_scale(clip)[None, :]


def matmul_quantized(arr: ProgrammedArray, x: np.ndarray) -> np.ndarray:
    """What an exact digital accelerator returns: quantized inputs times quantized weights, rescaled."""
    cfg = arr.config
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    clip = arr.resolved_input_clip(x)
    x_int = quantize_inputs(x, clip, cfg.input_bits).astype(np.int64)
    y_int = x_int @ arr.mapped.w_int.T.astype(np.int64)
    return y_int * arr.output_scale(clip)[None, :]

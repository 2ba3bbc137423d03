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
    digitally. With interconnect resistance (``arr.g_cells_pos_S`` set) every tile read is the
    tile's full nodal circuit solved for that drive (:func:`cimsim.crossbar.circuit.tile_currents_reference`
    on the cells' own conductances, read noise drawn per cell before the solve), with the physical
    column layout of :func:`cimsim.crossbar.circuit.layer_columns`.
    A row of ``x`` with a NaN or infinite entry gives a NaN row. ``rng`` draws read noise (per cell
    and read) and ADC noise when the config asks for them; without ``rng`` both are off.
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
    circuit = None if arr.g_cells_pos_S is None else cfg.circuit

    def convert(k, o, ip, in_):
        """One column pair of slice k, output o: ADC conversion(s) of the currents (unit currents)."""
        if cfg.adc_convert == "differential":
            d = ip - in_ + (out_noise * lsb[k, o] * rng.standard_normal() if out_noise else 0.0)
            return adc_convert(d, lsb[k, o], lo, hi)
        lp, ln = lsb[k, o], lsb[cfg.n_slices + k, o]
        if out_noise:
            ip += out_noise * lp * rng.standard_normal()
            in_ += out_noise * ln * rng.standard_normal()
        return adc_convert(ip, lp, lo, hi) - adc_convert(in_, ln, lo, hi)

    for b in range(B):
        for sign, mag in ((1, np.maximum(x_int[b], 0)), (-1, np.maximum(-x_int[b], 0))):
            if not mag.any():
                continue
            if cfg.dac == "multibit":
                cycles = [(mag, 1)]
            else:
                cycles = [((mag >> j) & 1, 1 << j) for j in range(cfg.input_bits)]
            for v, cycle_weight in cycles:
                if circuit is not None:
                    for _rows, ip_all, in_all in _circuit_reads(arr, circuit, v, rng if read_noise else None):
                        for k in range(cfg.n_slices):
                            for o in range(arr.n_out):
                                val = convert(k, o, ip_all[k, o] / step, in_all[k, o] / step)
                                y_int[b, o] += sign * cycle_weight * base**k * val
                    continue
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
                            y_int[b, o] += sign * cycle_weight * base**k * convert(k, o, ip, in_)
    y_int[bad_rows] = np.nan
    return y_int * arr.output_scale(clip)[None, :]


def _circuit_reads(arr: ProgrammedArray, circuit, v: np.ndarray, rng: np.random.Generator | None):
    """Per row tile, the column currents of one read with drive ``v`` (in,) through the circuit:
    yields ``(rows, i_pos, i_neg)`` with ``i_pos``/``i_neg`` (S, out) summed over the tile's rows."""
    from cimsim.crossbar.circuit import layer_columns, layer_tiles, partial_tile_circuit, tile_currents_reference

    cfg = arr.config
    S, n_in, n_out = arr.g_cells_pos_S.shape
    cells = np.stack([arr.g_cells_pos_S, arr.g_cells_neg_S], axis=1)  # (S, 2, in, out)
    col = layer_columns(n_out, S)  # (S, 2, out) -> layer column
    where = {int(c): idx for idx, c in np.ndenumerate(col)}
    by_rows: dict[tuple[int, int], np.ndarray] = {}
    for rows, cols, (nr, nc) in layer_tiles(n_in, n_out, S, cfg.tile_rows, cfg.tile_cols):
        g = np.empty((nr, nc))
        for c in range(cols.start, cols.stop):
            k, s, j = where[c]
            g[:, c - cols.start] = cells[k, s, rows, j]
        if rng is not None:
            g = arr.device_model.read(g, rng)
        cur = tile_currents_reference(g, v[rows].astype(np.float64),
                                      partial_tile_circuit(circuit, nr, nc, cfg.tile_rows, cfg.tile_cols))
        acc = by_rows.setdefault((rows.start, rows.stop), np.zeros((S, 2, n_out)))
        for c in range(cols.start, cols.stop):
            acc[where[c]] = cur[c - cols.start]
    for (r0, r1), acc in by_rows.items():
        yield slice(r0, r1), acc[:, 0], acc[:, 1]


def matmul_quantized(arr: ProgrammedArray, x: np.ndarray) -> np.ndarray:
    """What an exact digital accelerator returns (:meth:`ProgrammedArray.matmul_digital`)."""
    return arr.matmul_digital(x)

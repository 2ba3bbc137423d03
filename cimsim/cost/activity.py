"""What a layer's arrays do for a set of input rows: the counts every inference cost is priced from.

:func:`layer_activity` follows the fast MVM (:mod:`cimsim.crossbar.mvm`) read by read, for the
rows the layer actually reads (a Linear layer: one row per image; a convolution: one per output
position), with the chip's own conductances and input quantization:

* phases: per row, one for its positive (quantized) entries and one for the magnitudes of its
  negative ones, each only when the row has such entries (as the read-by-read reference
  :func:`cimsim.crossbar.mvm_ref.mvm_reference` does: an all-zero row is not read);
* reads (array cycles): phases x DAC cycles (1 multi-bit, ``input_bits`` bit-serial), every row
  tile and column tile at once;
* DAC drives: rows driven with a non-zero value in a read, on every column tile (a row's input
  register feeds each column tile's drivers); zero-valued rows draw no drive energy;
* ADC conversions: every used column group (a differential pair, or each side for separate
  conversion) of every row tile in every read;
* shift-and-add operations: one per conversion (its code, weighted by cycle and slice
  significance, added into the output accumulator; row tiles add into the same accumulator);
* array charge: ``sum over reads and rows of (V_i / V_read)^2 * G_row_i`` (S) with ``G_row_i``
  the summed conductance of every cell on row ``i`` (both pair sides, every slice, the unused
  side at its lowest level): the array energy is ``V_read^2 * t_read`` times it;
* buffer traffic: each row's sign-magnitude inputs (``input_bits + 1`` bits) read once per column
  tile, and one ``accumulator_bits`` partial sum per output and row tile written (the row tiles'
  partial sums of an output meet in one accumulator).

Shapes: ``rows`` (N, n_in). Counts are exact integers; charge in siemens. Units in names.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from cimsim.crossbar.config import CrossbarConfig
from cimsim.crossbar.mapping import quantize_inputs


@dataclass(frozen=True)
class LayerActivity:
    """Counts of one layer's arrays for ``rows`` input rows of ``images`` images (see module doc)."""

    name: str
    n_in: int
    n_out: int
    images: int
    rows: int
    phases: int
    reads: int
    dac_drives: int
    adc_conversions: int
    shift_adds: int
    input_buffer_bits: int
    output_buffer_bits: int
    array_charge_S: float  # sum over reads and rows of (V_i / V_read)^2 * G_row_i
    macs: int
    row_tiles: int
    col_tiles: int
    max_conversions_per_tile_read: int  # column groups converted in one read of the fullest tile
    config: CrossbarConfig  # the layer's crossbar config (tile size, DAC, ADC, read voltage)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["config"] = self.config.to_dict()
        return d

    def __add__(self, other: "LayerActivity") -> "LayerActivity":
        """Two batches through the same layer: every count adds, the geometry stays."""
        if not isinstance(other, LayerActivity):
            return NotImplemented
        geo = ("name", "n_in", "n_out", "row_tiles", "col_tiles", "max_conversions_per_tile_read", "config")
        if any(getattr(self, k) != getattr(other, k) for k in geo):
            raise ValueError(f"cannot add the activity of layer {other.name!r} to that of {self.name!r}")
        return replace(self, **{f.name: getattr(self, f.name) + getattr(other, f.name)
                                for f in fields(self) if f.name not in geo})


def row_conductance_S(arr) -> np.ndarray:
    """(n_in,) float64 summed conductance (S) of every cell on each input row: both pair sides,
    every slice. The cells' own conductances (``g_cells_*`` under IR drop) when the chip has them."""
    gp = getattr(arr, "g_cells_pos_S", None)
    gn = getattr(arr, "g_cells_neg_S", None)
    if gp is None:
        gp, gn = (arr.g_pos_S, arr.g_neg_S) if hasattr(arr, "g_pos_S") else (arr.g_pos, arr.g_neg)
    tot = 0.0
    for g in (gp, gn):
        g = g.detach().cpu().numpy() if hasattr(g, "detach") else np.asarray(g)
        tot = tot + g.astype(np.float64).sum(axis=(0, 2))
    return np.asarray(tot, dtype=np.float64)


def _popcount(m: np.ndarray, bits: int) -> np.ndarray:
    out = np.zeros(m.shape, dtype=np.int64)
    for j in range(bits):
        out += (m >> j) & 1
    return out


_CHUNK_ROWS = 16384


def layer_activity(arr, rows, images: int, name: str = "layer", accumulator_bits: int = 16) -> LayerActivity:
    """The counts of :class:`LayerActivity` for the programmed chip ``arr`` reading ``rows`` (N, n_in)
    (numpy or torch; non-finite rows are left out: the chip gives them no DAC code), ``images`` the
    number of network inputs they belong to."""
    cfg = arr.config
    x = rows.detach().cpu().numpy() if hasattr(rows, "detach") else np.asarray(rows)
    x = x.reshape(-1, arr.n_in)
    x = x[np.isfinite(x).all(axis=1)]
    n = x.shape[0]
    clip = arr.resolved_input_clip(x)  # one clip for all the rows, as the layer's forward uses
    C = cfg.n_cycles
    S = cfg.n_slices
    n_in, n_out = arr.n_in, arr.n_out
    row_tiles = -(-n_in // cfg.tile_rows)
    col_tiles = -(-(2 * S * n_out) // cfg.tile_cols)
    phases = drives = 0
    drive_sq_per_row = np.zeros(n_in)  # sum over the rows read of (V_i / V_read)^2
    for k in range(0, n, _CHUNK_ROWS):  # bounded memory for large convolutions
        xq = quantize_inputs(np.asarray(x[k:k + _CHUNK_ROWS], dtype=np.float64), clip, cfg.input_bits)
        xq = xq.astype(np.int64)
        pos, neg = np.maximum(xq, 0), np.maximum(-xq, 0)
        phases += int((pos > 0).any(axis=1).sum() + (neg > 0).any(axis=1).sum())
        if cfg.dac == "bit_serial":
            d = (_popcount(pos, cfg.input_bits) + _popcount(neg, cfg.input_bits)).astype(np.float64)
            drives += int(d.sum())  # one 0/1 pulse per set bit
        else:
            d = (pos.astype(np.float64) ** 2 + neg.astype(np.float64) ** 2) / float(cfg.x_max_int) ** 2
            drives += int((pos > 0).sum() + (neg > 0).sum())
        drive_sq_per_row += d.sum(axis=0)
    reads = phases * C
    groups = S * (1 if cfg.adc_convert == "differential" else 2)
    adc = reads * row_tiles * groups * n_out
    conv_cols_tile = cfg.tile_cols // 2 if cfg.adc_convert == "differential" else cfg.tile_cols
    return LayerActivity(
        name=name, n_in=n_in, n_out=n_out, images=int(images), rows=n,
        phases=phases, reads=reads,
        dac_drives=drives * col_tiles,
        adc_conversions=adc,
        shift_adds=adc,
        input_buffer_bits=n * n_in * (cfg.input_bits + 1) * col_tiles,
        output_buffer_bits=n * n_out * row_tiles * int(accumulator_bits),
        array_charge_S=float(drive_sq_per_row @ row_conductance_S(arr)),
        macs=n * n_in * n_out,
        row_tiles=row_tiles, col_tiles=col_tiles,
        max_conversions_per_tile_read=min(conv_cols_tile, groups * n_out),
        config=cfg,
    )

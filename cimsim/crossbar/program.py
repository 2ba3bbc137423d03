"""Programming a layer onto crossbar tiles: :func:`program` -> :class:`ProgrammedArray`.

A :class:`ProgrammedArray` is one chip's copy of one layer: the conductance of every cell as
programmed (sampled from the device model, read at ``config.read_time_s``), the quantization
scales, and the read-out state (input clipping range, ADC ranges, drift-compensation factor).
It computes matrix-vector products with :meth:`ProgrammedArray.matmul` (fast path,
:mod:`cimsim.crossbar.mvm`) or :func:`cimsim.crossbar.mvm_ref.mvm_reference` (slow float64 specification).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cimsim.crossbar.config import CrossbarConfig
from cimsim.device.model import DeviceModel
from cimsim.crossbar.mapping import (
    MappedWeights, conductance_targets, level_step_S, map_weights, quantize_inputs, unmap,
)
from cimsim.crossbar.readout import ChipReadout

@dataclass
class ProgrammedArray(ChipReadout):
    """One layer programmed on one chip.

    g_pos_S, g_neg_S: (n_slices, in, out) float64 conductances of the G+ / G- cells, siemens, as
        they read at ``config.read_time_s`` (programming error, relaxation, drift, stuck cells);
        with interconnect resistance in the config (``config.circuit``), the *effective*
        conductances the periphery sees through the wires (tile by tile,
        :func:`cimsim.crossbar.circuit.effective_layer_S`): every read is then exact with IR drop.
    g_cells_pos_S, g_cells_neg_S: the cells' own conductances when IR drop replaced them above
        (``None`` otherwise). ir_exact: False when the effective conductances were not solved for
        this chip but read through another chip's solve (``CrossbarConfig.ir_fresh_solve_every``).
    levels_S: (cell_levels,) nominal level conductances; step_S their spacing.
    mapped: the quantized weights the array was programmed from.
    input_clip: inputs are clipped to +-input_clip (None until set or calibrated).
    adc_range: (n_groups, 1) or (n_groups, out) ADC full-scale in unit currents (None until
        calibrated when the policy is ``calibrated``); a group is a slice's columns (differential
        conversion) or one side of a slice (separate conversion).
    drift_scale: output multiplier of global drift compensation (1.0 without).
    output_gain: (out,) digital gain per output (:meth:`calibrate_output_gain`; None: 1).
    seed: the seed the chip was programmed from; read noise draws from a generator seeded
        from it, advanced on every read.
    """

    config: CrossbarConfig
    device_model: DeviceModel
    mapped: MappedWeights
    g_pos_S: np.ndarray
    g_neg_S: np.ndarray
    levels_S: np.ndarray
    seed: int | None = None
    input_clip: float | None = None
    adc_range: np.ndarray | None = None
    drift_scale: float = 1.0
    output_gain: np.ndarray | None = None
    g_cells_pos_S: np.ndarray | None = None
    g_cells_neg_S: np.ndarray | None = None
    ir_exact: bool = True
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------ geometry
    @property
    def n_in(self) -> int:
        return self.g_pos_S.shape[1]

    @property
    def n_out(self) -> int:
        return self.g_pos_S.shape[2]

    @property
    def step_S(self) -> float:
        return level_step_S(self.levels_S)

    @property
    def n_row_tiles(self) -> int:
        return -(-self.n_in // self.config.tile_rows)

    @property
    def n_col_tiles(self) -> int:
        """Column tiles: every weight takes 2 * n_slices columns (G+ and G- of each slice)."""
        return -(-(2 * self.config.n_slices * self.n_out) // self.config.tile_cols)

    @property
    def n_cells(self) -> int:
        return 2 * self.g_pos_S.size

    @property
    def scale(self) -> np.ndarray:
        """(out,) weight units per integer weight step."""
        return self.mapped.scale

    def effective_weights(self) -> np.ndarray:
        """(out, in) float64 weights the programmed conductances realise (inverse mapping)."""
        w = unmap(self.g_pos_S, self.g_neg_S, self.levels_S, self.scale, self.config.bits_per_cell) * self.drift_scale
        return w if self.output_gain is None else w * self.output_gain[:, None]

    # ---------------------------------------------------------- ADC state
    @property
    def cycle_input_max(self) -> int:
        """Largest integer a row is driven with in one read: 2^b - 1 (multi-bit) or 1 (bit-serial)."""
        return self.config.x_max_int if self.config.dac == "multibit" else 1

    def adc_code_limits(self) -> tuple[int, int]:
        """Smallest and largest ADC code: symmetric signed for differential, unsigned for separate."""
        b = self.config.adc_bits
        if self.config.adc_convert == "differential":
            return -((1 << (b - 1)) - 1), (1 << (b - 1)) - 1
        return 0, (1 << b) - 1

    def full_adc_range(self) -> np.ndarray:
        """(n_groups, 1) largest possible ideal partial sum of one tile read, in unit currents."""
        rows = min(self.config.tile_rows, self.n_in)
        top = (self.levels_S[-1] - self.levels_S[0]) if self.config.adc_convert == "differential" else self.levels_S[-1]
        r = rows * self.cycle_input_max * top / self.step_S
        return np.full((self.n_groups, 1), r)

    def adc_lsb(self) -> np.ndarray:
        """(n_groups, 1 | out) ADC step in unit currents (groups: see :attr:`n_groups`).

        ``full``: ``max(1, R_full / c_max)``: an ADC with more codes than distinct ideal partial
        sums keeps a one-unit step (its extra codes then cover excursions beyond the ideal range),
        which makes an ideal array exact. ``calibrated`` / ``fixed``: ``range / c_max``.
        """
        _, cmax = self.adc_code_limits()
        pol = self.config.adc_range
        if pol == "full":
            return np.maximum(self.full_adc_range() / cmax, 1.0)
        if pol == "fixed":
            return np.full((self.n_groups, 1), self.config.adc_fixed_range / cmax)
        if self.adc_range is None:
            raise RuntimeError("ADC range not calibrated: call calibrate(x) first (or matmul does it on its first batch)")
        return np.maximum(np.asarray(self.adc_range, dtype=np.float64), 1e-9) / cmax

    def resolved_input_clip(self, x: np.ndarray | None = None) -> float:
        """The input clipping range: config's, else the calibrated one, else max|x| of this batch."""
        if self.config.input_clip is not None:
            return float(self.config.input_clip)
        if self.input_clip is not None:
            return float(self.input_clip)
        if x is None:
            raise RuntimeError("input clipping range not set: calibrate(x) first")
        m = float(np.abs(np.asarray(x)).max()) if np.size(x) else 0.0
        return m if m > 0 else 1.0

    @property
    def needs_calibration(self) -> bool:
        return (self.config.adc_range == "calibrated" and self.adc_range is None) or (
            self.config.input_clip is None and self.input_clip is None
        )

    def calibrate(self, x: np.ndarray, percentile: float | None = None) -> None:
        """Set input clip and (for the ``calibrated`` policy) ADC ranges from a batch ``x`` (B, in).

        Input clip: the ``percentile`` of |x| (default ``config.adc_percentile``). ADC range: the
        percentile of |partial sum| over every tile read of the batch, per column group (and per column
        when ``config.adc_per_column``), from the noise-free programmed conductances.
        """
        from cimsim.crossbar.mvm import calibration_percentiles

        q = self.config.adc_percentile if percentile is None else percentile
        x = check_calibration_batch(x, self.n_in)
        if self.config.input_clip is None:
            m = float(np.percentile(np.abs(x), q))
            self.input_clip = m if m > 0 else float(np.abs(x).max())
        if self.config.adc_range == "calibrated":
            r, top = calibration_percentiles(self, x, q, self.config.adc_per_column)  # bounded memory
            r = np.where(r > 0, r, top)  # sparse sums (percentile 0, some non-zero): the largest seen
            self.adc_range = np.maximum(np.asarray(r, dtype=np.float64), 1.0)
        self._cache.pop("plan", None)

    def calibrate_output_gain(self, x: np.ndarray) -> np.ndarray:
        """Set ``output_gain`` (out,): per output, the gain that best maps this chip's outputs for
        the rows ``x`` (B, in) onto an exact digital accelerator's (the same input and weight
        quantisation, :meth:`matmul_digital`), least squares through 0;
        1 where the chip's output is 0 on every row. Run after the input clip and ADC ranges are
        set: it measures through the ADC, the wires and (when on) read noise. Returns the gains."""
        x = check_calibration_batch(x, self.n_in)
        self.output_gain = None
        self._drop_weight_caches()
        y, target = self.matmul(x), self.matmul_digital(x)  # y with drift compensation: the gain replaces it
        num, den = (y * target).sum(0), (y * y).sum(0)
        self.output_gain = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)
        self._drop_weight_caches()
        return self.output_gain

    def matmul_digital(self, x: np.ndarray) -> np.ndarray:
        """What an exact digital accelerator returns for ``x`` (B, in): quantized inputs times the
        quantized weights, rescaled by the weight and input steps (no analog corrections: drift
        compensation, output gain)."""
        cfg = self.config
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        clip = self.resolved_input_clip(x)
        x_int = quantize_inputs(x, clip, cfg.input_bits).astype(np.int64)
        return (x_int @ self.mapped.w_int.T.astype(np.int64)) * (self.scale * (clip / cfg.x_max_int))[None, :]

    def _drop_weight_caches(self) -> None:
        """Forget cached effective weights (the autograd backward's), which carry the output gain."""
        for k in [k for k in self._cache if isinstance(k, tuple) and k and k[0] == "w_eff"]:
            del self._cache[k]

    # ------------------------------------------------------------- compute
    def matmul(self, x: np.ndarray, **kw: Any) -> np.ndarray:
        """``y = x @ W_eff.T`` as the chip computes it: x (B, in) or (in,) -> (B, out) or (out,).

        Keyword arguments go to :func:`cimsim.crossbar.mvm.crossbar_matmul_torch` (``kernel``, ``dtype``).
        """
        from cimsim.crossbar.mvm import crossbar_matmul

        return crossbar_matmul(self, x, **kw)

    __matmul__ = None  # arrays are the right operand: use matmul(x) or x @ array

    def __rmatmul__(self, x: np.ndarray) -> np.ndarray:
        return self.matmul(x)



def check_calibration_batch(x: np.ndarray, n_in: int) -> np.ndarray:
    """``x`` as a float64 (N, n_in) calibration batch; ValueError when it cannot set ranges:
    empty, with NaN/inf values, or all zeros (no input clip or partial sum can come from it)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0 or x.size % n_in:
        raise ValueError(f"calibration batch must be non-empty rows of {n_in} inputs, got shape {x.shape}")
    x = x.reshape(-1, n_in)
    bad = ~np.isfinite(x)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"calibration batch has {int(bad.sum())} NaN/inf values (first at row {r}, input {c})")
    if not x.any():
        raise ValueError("calibration batch is all zeros: it cannot set the input clip or ADC ranges "
                         "(calibrate on real inputs, or set CrossbarConfig.input_clip)")
    return x


def check_seed(seed: int) -> int:
    """A chip seed as an int in [0, 2^64); ValueError naming it otherwise."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return int(seed)


def program(weights: np.ndarray, config: CrossbarConfig, seed: int | np.random.Generator | None = None,
            device_model: DeviceModel | None = None,
            ir_solved=None) -> ProgrammedArray:
    """Program ``weights`` (out, in) onto crossbar tiles: one chip's draw of every cell.

    seed: the chip's identity, an int (the same seed gives the same chip; ``None`` means 0), or
        a numpy Generator that the chip's seed is drawn from.
    device_model: overrides the model ``config.device`` names (``config.sigma_scale`` still applied).

    Every cell's conductance is sampled from the device model at ``config.read_time_s``. With
    drift compensation on, the reference response is measured before drift (t0) and again at
    the read time (on the cells, without the wires); the layer's outputs are multiplied by their
    ratio. With interconnect resistance, the chip is then read through it (:func:`with_interconnect`;
    ``ir_solved``: another chip's solve to read it through instead).
    """
    if device_model is None:
        device_model = config.device_model()
    elif config.sigma_scale is not None:
        device_model = device_model.replace(sigma_scale=config.sigma_scale)
    if isinstance(seed, np.random.Generator):
        seed = int(seed.integers(0, 2**63 - 1))  # the chip's seed, drawn from the caller's generator
    seed = 0 if seed is None else check_seed(seed)
    weights = np.asarray(weights)
    if weights.ndim != 2 or 0 in weights.shape:
        raise ValueError(f"weights must be a non-empty 2-D (out, in) array, got shape {weights.shape}")
    mapped = map_weights(weights, config)
    levels = device_model.level_conductances(config.cell_levels)
    t = config.read_time_s
    if device_model.is_ideal:
        g_pos, g_neg = conductance_targets(mapped, levels)
        arr = ProgrammedArray(config=config, device_model=device_model, mapped=mapped, g_pos_S=g_pos, g_neg_S=g_neg,
                              levels_S=levels, seed=seed)
    else:
        g0, g = program_cells(device_model, levels, np.stack([mapped.digits_pos, mapped.digits_neg]), t, seed)
        arr = ProgrammedArray(config=config, device_model=device_model, mapped=mapped, g_pos_S=g[0], g_neg_S=g[1],
                              levels_S=levels, seed=seed)
        if device_model.drift is not None and config.drift_compensation:
            arr.drift_scale = _drift_compensation(g0[0] - g0[1], g[0] - g[1])
    return with_interconnect(arr, ir_solved)


def with_interconnect(arr: ProgrammedArray, solved=None) -> ProgrammedArray:
    """``arr`` read through its config's tile circuit: the cells' conductances move to
    ``g_cells_*_S`` and ``g_*_S`` become the effective ones (unchanged without resistance), solved
    exactly, or, given ``solved`` (``((cells G+, cells G-), (effective G+, effective G-))`` of another
    chip of the layer), read through that solve (:func:`cimsim.crossbar.circuit.read_through_solve`;
    ``arr.ir_exact`` False)."""
    circuit = arr.config.circuit
    if circuit.is_ideal or arr.g_cells_pos_S is not None:
        return arr
    arr.g_cells_pos_S, arr.g_cells_neg_S = arr.g_pos_S, arr.g_neg_S
    if solved is not None:
        from cimsim.crossbar.circuit import read_through_solve

        (c_pos, c_neg), (e_pos, e_neg) = solved
        if c_pos.shape != arr.g_pos_S.shape:
            raise ValueError(f"a solve of shape {c_pos.shape} for a layer of shape {arr.g_pos_S.shape}")
        arr.g_pos_S = read_through_solve(arr.g_pos_S, c_pos, e_pos)
        arr.g_neg_S = read_through_solve(arr.g_neg_S, c_neg, e_neg)
        arr.ir_exact = False
    else:
        from cimsim.crossbar.circuit import effective_layer_S

        arr.g_pos_S, arr.g_neg_S = effective_layer_S(arr.g_pos_S, arr.g_neg_S, circuit, arr.config.tile_rows,
                                                     arr.config.tile_cols)
    arr._cache.clear()
    return arr


def program_cells(device_model: DeviceModel, levels_S: np.ndarray, index: np.ndarray, t_s: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One-shot programming of cells at ``levels_S[index]`` from an int ``seed``, as :func:`program`
    draws a layer (``index`` of shape ``(2, S, in, out)``: G+ then G-) and write-verify draws its
    one-shot cells: the same seed and layout give the same conductances.

    Returns ``(g_t0_S, g_S)``: before drift and at ``t_s`` (the same array for a model without drift).
    """
    rng = np.random.default_rng(seed)
    g0 = device_model.sample_levels(levels_S, index, t_s, rng, drift=False)
    return g0, (device_model.apply_drift(g0, t_s, rng) if device_model.drift is not None else g0)


def _drift_compensation(gd_t0: np.ndarray, gd_t: np.ndarray) -> float:
    """Ratio of reference responses before and after drift (aihwkit's global drift compensation).

    The reference input is all-ones on every row; the response is the sum of absolute column
    currents over all slices. Returns ``sum|I(t0)| / sum|I(t)|``.
    """
    r0 = np.abs(gd_t0.sum(axis=1)).sum()
    rt = np.abs(gd_t.sum(axis=1)).sum()
    return float(r0 / rt) if rt > 0 else 1.0


__all__ = ["ProgrammedArray", "program", "program_cells", "with_interconnect",
           "check_calibration_batch", "check_seed"]

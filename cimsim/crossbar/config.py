"""Crossbar configuration: one frozen, flat dataclass, validated on creation, TOML/JSON round trip.

Every field that has a unit says it in its name (``_S`` siemens, ``_s`` seconds, ``_V`` volts).
Integer conventions used throughout the simulator:

* weights are sign-magnitude integers ``w_int`` in ``[-(2^weight_bits - 1), 2^weight_bits - 1]``
  (the sign is carried by which side of a differential pair holds the magnitude), so 8-bit
  weights on 2-bit cells are four slices of significance ``4^k`` (the NeFT paper's mapping);
  with ``slice_align = "msb"`` they are shifted left by ``pad_bits`` (multiples of
  ``2^pad_bits`` up to ``2^(n_slices * bits_per_cell) - 1``) and the step is divided to match;
* inputs are sign-magnitude integers ``x_int`` in ``[-(2^input_bits - 1), 2^input_bits - 1]``
  after clipping to ``[-input_clip, input_clip]``; negative inputs are applied in a second
  phase (same magnitudes on the rows, result subtracted digitally);
* column currents are expressed in *unit currents* ``V_read * G_step / (2^input_bits - 1)`` for a
  multi-bit DAC (``V_read * G_step`` for a bit-serial read), where ``G_step`` is the conductance
  between two adjacent cell levels: with an ideal device a partial sum is an exact integer.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import cimsim  # noqa: F401 - resolves the annotation "cimsim.crossbar.circuit.TileCircuit"
from cimsim.device.model import DeviceModel, DeviceModelError, load_device_cached

DAC_MODES = ("multibit", "bit_serial")
ADC_RANGES = ("calibrated", "full", "fixed")
ADC_CONVERTS = ("differential", "separate")
MAPPINGS = ("differential",)
WEIGHT_SCALES = ("layer", "column")
SLICE_ALIGNS = ("lsb", "msb")


class ConfigError(ValueError):
    """An impossible or inconsistent configuration value; the message names the field."""


_OPTIONAL = ("input_clip", "adc_fixed_range", "sigma_scale")
#: The interconnect fields, named as in :class:`cimsim.crossbar.circuit.TileCircuit`.
CIRCUIT_FIELDS = ("r_row_segment_ohm", "r_col_segment_ohm", "r_driver_ohm", "r_sense_ohm", "r_access_ohm",
                  "drive_end", "sense_end")


@dataclass(frozen=True)
class CrossbarConfig:
    """How a layer is laid out on crossbar tiles and how those tiles are read.

    Tiles and mapping
        tile_rows, tile_cols: array size (rows = inputs, columns = outputs x slices x pair side).
        weight_bits: magnitude bits of a weight (sign from the differential pair).
        weight_scale: ``layer`` (one scale) or ``column`` (one per output) for quantization.
        mapping: ``differential`` (each weight on G+/G-, the unused side at the lowest level).
        bits_per_cell: bits stored per cell; ``n_slices = ceil(weight_bits / bits_per_cell)``.
        slice_align: which slice is short when ``weight_bits`` is not a multiple of
        ``bits_per_cell`` (e.g. 8 bits on 3-bit cells: 3 + 3 + 2). ``lsb`` (default; the order in
        which DNN+NeuroSim's wrapper cuts digits): digits are cut from the least significant bit
        up, so the most significant slice is short and uses only part of its cell's levels.
        ``msb``: the magnitude is aligned to the top of the ``n_slices * bits_per_cell`` bits
        (``w_int`` shifted left by :attr:`pad_bits`, the step divided by ``2^pad_bits``, the same
        weights), so the least significant slice is short (its digits multiples of
        ``2^pad_bits``) and every cell above it spans its full range: less weight error from cell
        spread (docs/design.md, "Slicing").

    DAC
        dac: ``multibit`` (one read per phase, input as a quantized voltage) or ``bit_serial``
        (one read per input bit with a 1-bit DAC, combined by shift-and-add).
        input_bits: magnitude bits of an input; input_clip: inputs are clipped to +-input_clip
        (``None``: calibrated per layer, or the batch's max |x| before calibration).

    ADC
        adc_bits: bits per conversion (sign included for differential conversion).
        adc_range: ``calibrated`` (a percentile of observed partial sums, per slice and
        optionally per column), ``full`` (the largest possible partial sum) or ``fixed``
        (``adc_fixed_range`` unit currents). adc_convert: ``differential`` converts
        ``I(G+) - I(G-)``; ``separate`` converts each column and subtracts digitally.

    Device and noise
        device: preset name or JSON path of a :class:`cimsim.device.model.DeviceModel`;
        ``ideal`` means exact programming with the default conductance range.
        read_time_s: time between programming and reading (relaxation, drift).
        read_noise: per-read cell noise from the device model's sigma_read(G).
        output_noise: additive Gaussian noise per ADC conversion, std in ADC LSBs.
        drift_compensation: rescale each layer's output by a factor measured at read time
        with a reference input (as IBM aihwkit's global drift compensation).
        output_gain_calibration: after a chip is programmed, give each output a digital gain that
        maps the chip's outputs for the layer's calibration rows onto an exact digital
        accelerator's (least squares; compensates per-column attenuation such as IR drop and
        each output's mean conductance error; :meth:`ProgrammedArray.calibrate_output_gain`).
        sigma_scale: multiplies the device model's programming spread (``None``: the model's).

    Interconnect (IR drop; :class:`cimsim.crossbar.circuit.TileCircuit`, docs/design.md "IR drop")
        r_row_segment_ohm, r_col_segment_ohm: wire resistance between two adjacent cells of a row
        (word line) and of a column (bit line); r_driver_ohm, r_sense_ohm: the row driver's output
        and the column sense amplifier's input resistance; r_access_ohm: an access transistor's
        on-resistance in series with every cell (1T1R). drive_end / sense_end: rows driven at
        column ``first`` or ``last``, columns sensed at row ``first`` or ``last``. All zero (the
        default): no IR drop. Otherwise every tile of every slice and pair side is solved once
        when the chip is programmed (its effective conductance matrix; exact, the circuit is
        linear) and every read goes through it. Columns are laid out weight by weight: output
        ``j``, slice ``k``, side ``s`` (G+ 0, G- 1) at layer column ``(j * n_slices + k) * 2 + s``.
        ir_fresh_solve_every: in fresh-chip mode (a new chip per forward, as in training), solve
        the circuit exactly on every n-th chip of a layer and read the chips between through that
        solve (:func:`cimsim.crossbar.circuit.read_through_solve`, first order in the difference);
        1 (the default): every chip exact. Frozen chips are always exact. Its error and speed:
        ``python -m cimsim.bench ir_drop``, docs/design.md "IR drop".
    """

    tile_rows: int = 256
    tile_cols: int = 256
    weight_bits: int = 8
    weight_scale: str = "layer"
    mapping: str = "differential"
    bits_per_cell: int = 2
    slice_align: str = "lsb"
    dac: str = "multibit"
    input_bits: int = 8
    input_clip: float | None = None
    adc_bits: int = 8
    adc_range: str = "calibrated"
    adc_percentile: float = 99.99
    adc_per_column: bool = False
    adc_fixed_range: float | None = None
    adc_convert: str = "differential"
    device: str = "ideal"
    read_time_s: float = 1.0
    read_noise: bool = False
    output_noise: float = 0.0
    drift_compensation: bool = False
    output_gain_calibration: bool = False
    sigma_scale: float | None = None
    v_read_V: float = 0.2
    r_row_segment_ohm: float = 0.0
    r_col_segment_ohm: float = 0.0
    r_driver_ohm: float = 0.0
    r_sense_ohm: float = 0.0
    r_access_ohm: float = 0.0
    drive_end: str = "first"
    sense_end: str = "last"
    ir_fresh_solve_every: int = 1

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"CrossbarConfig.{name} = {getattr(self, name)!r}: {why}")

        for name in ("tile_rows", "tile_cols", "weight_bits", "bits_per_cell", "input_bits", "adc_bits",
                     "ir_fresh_solve_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise bad(name, "must be a positive integer")
        for name in ("adc_percentile", "adc_fixed_range", "input_clip", "read_time_s", "output_noise", "sigma_scale",
                     "v_read_V"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)):
                raise bad(name, "must be a finite number" + (" or None" if name in _OPTIONAL else ""))
        for name in ("read_noise", "adc_per_column", "drift_compensation", "output_gain_calibration"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be true or false")
        if self.weight_bits > 16:
            raise bad("weight_bits", "at most 16")
        if self.input_bits > 16:
            raise bad("input_bits", "at most 16")
        if self.bits_per_cell > self.weight_bits:
            raise bad("bits_per_cell", f"more bits per cell than the weight has ({self.weight_bits})")
        if self.bits_per_cell > 8:
            raise bad("bits_per_cell", "at most 8")
        if self.adc_bits > 24:
            raise bad("adc_bits", "at most 24 (partial sums are float32)")
        if self.adc_convert == "differential" and self.adc_bits < 2:
            raise bad("adc_bits", "a differential (signed) conversion needs at least 2 bits")
        for name, allowed in (
            ("dac", DAC_MODES),
            ("adc_range", ADC_RANGES),
            ("adc_convert", ADC_CONVERTS),
            ("mapping", MAPPINGS),
            ("weight_scale", WEIGHT_SCALES),
            ("slice_align", SLICE_ALIGNS),
        ):
            if getattr(self, name) not in allowed:
                raise bad(name, f"choose one of {allowed}")
        if not 50.0 <= self.adc_percentile <= 100.0:
            raise bad("adc_percentile", "must lie in [50, 100]")
        if self.adc_range == "fixed" and not (self.adc_fixed_range and self.adc_fixed_range > 0):
            raise bad("adc_fixed_range", "adc_range 'fixed' needs a positive range in unit currents")
        if self.input_clip is not None and not self.input_clip > 0:
            raise bad("input_clip", "must be positive or None")
        if not self.read_time_s >= 0:
            raise bad("read_time_s", "must be >= 0 seconds")
        if not self.output_noise >= 0:
            raise bad("output_noise", "must be >= 0 (ADC LSBs)")
        if self.sigma_scale is not None and not self.sigma_scale >= 0:
            raise bad("sigma_scale", "must be >= 0 or None")
        if not self.v_read_V > 0:
            raise bad("v_read_V", "must be positive")
        from cimsim.crossbar.circuit import CircuitError

        try:
            _ = self.circuit  # validated where the circuit is defined; the message names the field
        except CircuitError as e:
            raise ConfigError(str(e).replace("TileCircuit.", "CrossbarConfig.", 1)) from None
        if not isinstance(self.device, str) or not self.device:
            raise bad("device", "a preset name, a JSON path or 'ideal'")
        if self.device != "ideal":
            self.device_model()  # loads the model once (cached) and checks the cell fits

    # ----------------------------------------------------------- derived
    def device_model(self) -> DeviceModel:
        """The :class:`DeviceModel` ``device`` names (``sigma_scale`` applied), checked against the cell."""
        try:
            dev = load_device_cached(self.device)
        except DeviceModelError as e:
            raise ConfigError(f"CrossbarConfig.device = {self.device!r}: {e}") from None
        if self.sigma_scale is not None:
            dev = dev.replace(sigma_scale=self.sigma_scale)
        if dev.n_levels is not None and self.cell_levels > dev.n_levels:
            raise ConfigError(
                f"CrossbarConfig.bits_per_cell = {self.bits_per_cell}: {self.cell_levels} levels per cell, "
                f"but device {dev.name!r} has only {dev.n_levels}"
            )
        return dev

    @property
    def circuit(self) -> "cimsim.crossbar.circuit.TileCircuit":
        """The tile circuit of the interconnect fields (ideal when every resistance is zero)."""
        from cimsim.crossbar.circuit import TileCircuit

        return TileCircuit(**{name: getattr(self, name) for name in CIRCUIT_FIELDS})

    @property
    def n_slices(self) -> int:
        """Number of cells (slices) per weight magnitude: ceil(weight_bits / bits_per_cell)."""
        return -(-self.weight_bits // self.bits_per_cell)

    @property
    def pad_bits(self) -> int:
        """Bits a weight magnitude is shifted left by on the slices: ``n_slices * bits_per_cell -
        weight_bits`` with ``slice_align = msb``, else 0."""
        return self.n_slices * self.bits_per_cell - self.weight_bits if self.slice_align == "msb" else 0

    @property
    def cell_levels(self) -> int:
        """Levels a cell is programmed to: 2^bits_per_cell."""
        return 1 << self.bits_per_cell

    @property
    def n_cycles(self) -> int:
        """Reads per input phase: 1 for a multi-bit DAC, input_bits for a bit-serial one."""
        return 1 if self.dac == "multibit" else self.input_bits

    @property
    def w_max_int(self) -> int:
        return (1 << self.weight_bits) - 1

    @property
    def x_max_int(self) -> int:
        return (1 << self.input_bits) - 1

    def partial_products_floor(self, signed_inputs: bool = False) -> int:
        """GEMMs per layer forward: cycles x slices, x2 for separate conversion, x2 for signed inputs."""
        n = self.n_cycles * self.n_slices
        n *= 2 if self.adc_convert == "separate" else 1
        n *= 2 if signed_inputs else 1
        return n

    def replace(self, **changes: Any) -> "CrossbarConfig":
        return dataclasses.replace(self, **changes)

    # --------------------------------------------------------------- I/O
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "<dict>") -> "CrossbarConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown CrossbarConfig field(s) {unknown}")
        kw = {k: (None if v == "none" and k in _OPTIONAL else v)
              for k, v in d.items()}
        return cls(**kw)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def to_toml(self) -> str:
        """Flat TOML; ``None`` is written as the string ``"none"`` (TOML has no null)."""
        lines = ["# cimsim CrossbarConfig"]
        for k, v in self.to_dict().items():
            lines.append(f"{k} = {_toml_value(v)}")
        return "\n".join(lines) + "\n"

    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``.toml`` or ``.json`` (by suffix), atomically."""
        from cimsim.io import atomic_write_text

        path = Path(path)
        text = self.to_toml() if path.suffix == ".toml" else self.to_json() + "\n"
        atomic_write_text(path, text)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CrossbarConfig":
        from cimsim.io import read_table

        path = Path(path)
        d = read_table(path, "config", ConfigError)
        try:
            return cls.from_dict(d, source=str(path))
        except ConfigError as e:
            raise ConfigError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None


def _toml_value(v: Any) -> str:
    if v is None:
        return '"none"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    return json.dumps(str(v))

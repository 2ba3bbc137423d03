"""Energy and latency of programming (write-verify), in joules and seconds.

One frozen, JSON-serializable :class:`CostConfig` holds every constant (SI units), each with its
source (``shared/reference/README.md`` s.2-3; NeuroSim, RADAR, ISAAC, EMBER):

* write pulse: ``E = V^2 * G * t_pulse`` per cell, with ``V`` the pulse amplitude and ``G`` the
  cell conductance before it (the write-verify kernel sums ``V^2 G`` per cell);
* verify read: ``V_read^2 * G * t_read`` plus one sense conversion of ``verify_adc_bits``;
* the ADC energy per conversion by resolution (``adc_energy_pJ``) prices the verify reads; inference
  has its own model (:mod:`cimsim.cost.inference`);
* optional periphery terms (default 0): a fixed energy per pulse and a static programming power.

Latency (:func:`programming_latency_s`; ``pulses`` / ``reads`` per cell of shape ``(..., cols)``,
one row per leading index): a row programs groups of ``drivers_per_row`` consecutive columns one
after another, a group lasting as long as its slowest cell; ``rows_parallel`` rows run at once.
:class:`Cost` adds (layers are programmed one after another: energy and latency both sum);
:func:`model_cost` returns per-layer costs and their total.

Constants, sources and the latency model: docs/design.md, section 'Cost model (cimsim/cost)'.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from cimsim.io import parse_json_object

# ISAAC (Shafiee et al., ISCA 2016), 32 nm: ADC energy per conversion, (bits, pJ)
ISAAC_ADC_PJ: tuple[tuple[int, float], ...] = ((4, 0.79), (5, 0.99), (6, 1.20), (7, 1.42), (8, 1.67), (9, 1.97), (10, 2.38))


class CostError(ValueError):
    """Bad cost configuration or inputs."""


@dataclass(frozen=True)
class CostConfig:
    """Constants of the cost model (SI units: J, s, V, W). See the module docstring for sources."""

    t_pulse_s: float = 100e-9  # RADAR 100-200 ns (NeuRRAM: 1e-6)
    t_verify_read_s: float = 100e-9  # one verify read (assumption: same order as a pulse)
    v_read_V: float = 0.2  # read voltage across the cell (typical RRAM 0.1-0.3 V; cell read energy is tiny)
    verify_adc_bits: int = 8  # resolution of the sense conversion of a verify read
    e_pulse_overhead_J: float = 0.0  # periphery energy per pulse not in V^2 G t (drivers, pumps)
    p_static_W: float = 0.0  # periphery power while programming
    drivers_per_row: int = 8  # cells of one row programmed in parallel
    rows_parallel: int = 1  # rows programmed at the same time
    adc_energy_pJ: tuple[tuple[int, float], ...] = ISAAC_ADC_PJ  # (bits, pJ per conversion)

    def __post_init__(self) -> None:
        object.__setattr__(self, "adc_energy_pJ", tuple((int(b), float(e)) for b, e in self.adc_energy_pJ))
        for k in ("t_pulse_s", "t_verify_read_s", "v_read_V", "e_pulse_overhead_J", "p_static_W"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise CostError(f"CostConfig.{k} must be a finite number >= 0, got {v!r}")
        if self.t_pulse_s <= 0:
            raise CostError("CostConfig.t_pulse_s must be > 0")
        for k in ("drivers_per_row", "rows_parallel", "verify_adc_bits"):
            v = getattr(self, k)
            if not (isinstance(v, (int, np.integer)) and v >= 1):
                raise CostError(f"CostConfig.{k} must be an int >= 1, got {v!r}")
        bits = [b for b, _ in self.adc_energy_pJ]
        if not bits or bits != sorted(set(bits)) or any(e <= 0 for _, e in self.adc_energy_pJ):
            raise CostError("CostConfig.adc_energy_pJ must list (bits, pJ > 0) with increasing, distinct bits")

    def adc_energy_J(self, bits: int) -> float:
        """Energy (J) of one ADC conversion of ``bits`` bits from the table; a resolution below the
        table takes the smallest entry (an upper bound), one above it is an error."""
        if not (isinstance(bits, (int, np.integer)) and bits >= 1):
            raise CostError(f"ADC bits must be an int >= 1, got {bits!r}")
        table = dict(self.adc_energy_pJ)
        if bits in table:
            return table[bits] * 1e-12
        lo_bits, hi_bits = self.adc_energy_pJ[0][0], self.adc_energy_pJ[-1][0]
        if bits < lo_bits:
            return table[lo_bits] * 1e-12
        if bits > hi_bits:
            raise CostError(f"no ADC energy for {bits} bits: the table covers {lo_bits}..{hi_bits} bits")
        b0 = max(b for b in table if b < bits)
        b1 = min(b for b in table if b > bits)
        w = (bits - b0) / (b1 - b0)
        return ((1 - w) * table[b0] + w * table[b1]) * 1e-12

    def replace(self, **changes: Any) -> "CostConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["adc_energy_pJ"] = [list(x) for x in self.adc_energy_pJ]
        return {"kind": "cimsim.CostConfig", **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CostConfig":
        if not isinstance(d, Mapping):
            raise CostError(f"a cost config is a JSON object of fields, got {type(d).__name__}")
        if d.get("kind", "cimsim.CostConfig") != "cimsim.CostConfig":
            raise CostError(f"not a cost config (kind {d.get('kind')!r})")
        kw = {k: v for k, v in d.items() if k != "kind"}
        unknown = set(kw) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise CostError(f"cost config has unknown fields {sorted(unknown)}")
        if "adc_energy_pJ" in kw:
            kw["adc_energy_pJ"] = tuple(tuple(x) for x in kw["adc_energy_pJ"])
        return cls(**kw)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "CostConfig":
        return cls.from_dict(parse_json_object(text, "cost config", CostError))

    @classmethod
    def neurram(cls) -> "CostConfig":
        """NeuRRAM chip settings (Wan et al., Nature 2022): 1 us pulses, verify averaged over 8 reads."""
        return cls(t_pulse_s=1e-6, t_verify_read_s=8 * 100e-9)


@dataclass(frozen=True)
class Cost:
    """Energy (J) and latency (s) with a breakdown (J or counts by name); ``a + b`` adds all of them."""

    energy_J: float = 0.0
    latency_s: float = 0.0
    breakdown: Mapping[str, float] = field(default_factory=dict)

    def __add__(self, other: "Cost") -> "Cost":
        if not isinstance(other, Cost):
            return NotImplemented
        keys = set(self.breakdown) | set(other.breakdown)
        bd = {k: self.breakdown.get(k, 0.0) + other.breakdown.get(k, 0.0) for k in sorted(keys)}
        return Cost(self.energy_J + other.energy_J, self.latency_s + other.latency_s, bd)

    def __radd__(self, other: Any) -> "Cost":
        if other == 0:  # sum([...]) starts at 0
            return self
        return NotImplemented

    def to_dict(self) -> dict[str, Any]:
        return {"energy_J": self.energy_J, "latency_s": self.latency_s, "breakdown": dict(self.breakdown)}


@dataclass(frozen=True)
class CostReport:
    """Per-layer costs and their total (energy and latency summed over layers)."""

    layers: Mapping[str, Cost]
    total: Cost

    def to_dict(self) -> dict[str, Any]:
        return {"layers": {k: v.to_dict() for k, v in self.layers.items()}, "total": self.total.to_dict()}


def model_cost(layers: Mapping[str, Cost]) -> CostReport:
    """Collect per-layer costs (name -> :class:`Cost`) into a report whose total is their sum."""
    if not layers:
        raise CostError("model_cost needs at least one layer")
    total = Cost()
    for name, c in layers.items():
        if not isinstance(c, Cost):
            raise CostError(f"layer {name!r}: expected a Cost, got {type(c).__name__}")
        total = total + c
    return CostReport(dict(layers), total)


# ------------------------------------------------------------------------ programming
def cell_energy_J(v2g_set_V2S: np.ndarray, v2g_reset_V2S: np.ndarray, pulses: np.ndarray, reads: np.ndarray,
                  g_read_sum_S: np.ndarray, config: CostConfig = CostConfig()) -> dict[str, np.ndarray]:
    """Per-cell programming energy (J) by part, arrays of the inputs' shape.

    ``set``/``reset``: ``t_pulse * sum(V^2 G)`` of the cell's pulses (NeuroSim form);
    ``overhead``: ``pulses * e_pulse_overhead``; ``read``: ``V_read^2 * t_read * sum(G over reads)
    + reads * E_ADC(verify_adc_bits)``.
    """
    c = config
    return {
        "set": np.asarray(v2g_set_V2S, dtype=np.float64) * c.t_pulse_s,
        "reset": np.asarray(v2g_reset_V2S, dtype=np.float64) * c.t_pulse_s,
        "overhead": np.asarray(pulses, dtype=np.float64) * c.e_pulse_overhead_J,
        "read": (c.v_read_V**2 * c.t_verify_read_s) * np.asarray(g_read_sum_S, dtype=np.float64)
        + np.asarray(reads, dtype=np.float64) * c.adc_energy_J(c.verify_adc_bits),
    }


def programming_latency_s(pulses: np.ndarray, reads: np.ndarray, config: CostConfig = CostConfig()) -> float:
    """Latency (s) of programming an array; ``pulses``/``reads`` per cell of shape (..., cols):
    the last axis runs along a row, all leading axes enumerate rows (see the module docstring)."""
    p = np.asarray(pulses, dtype=np.float64)
    r = np.asarray(reads, dtype=np.float64)
    if p.shape != r.shape:
        raise CostError(f"pulses {p.shape} and reads {r.shape} differ in shape")
    if p.size == 0:
        return 0.0
    if p.ndim == 0:
        p, r = p.reshape(1, 1), r.reshape(1, 1)
    c = config
    cols = p.shape[-1]
    t_cell = (p * c.t_pulse_s + r * c.t_verify_read_s).reshape(-1, cols)
    d = c.drivers_per_row
    n_groups = -(-cols // d)
    pad = n_groups * d - cols
    if pad:
        t_cell = np.concatenate([t_cell, np.zeros((t_cell.shape[0], pad))], axis=1)
    t_row = t_cell.reshape(t_cell.shape[0], n_groups, d).max(axis=2).sum(axis=1)
    rp = c.rows_parallel
    n_batches = -(-t_row.size // rp)
    t_row = np.concatenate([t_row, np.zeros(n_batches * rp - t_row.size)])
    return float(t_row.reshape(n_batches, rp).max(axis=1).sum())


def write_verify_cost(result: Any, config: CostConfig = CostConfig(), bits_per_cell: int | None = None) -> Cost:
    """Energy and latency of one programmed array from a write-verify result.

    ``result``: any object with per-cell arrays ``pulses_set``, ``pulses_reset``, ``reads``,
    ``v2g_set_V2S``, ``v2g_reset_V2S``, ``g_read_sum_S`` of shape (..., cols) (e.g.
    :class:`cimsim.writeverify.WriteVerifyResult`). The breakdown holds energies in J
    (``e_set_J``, ``e_reset_J``, ``e_overhead_J``, ``e_read_J``, ``e_static_J``) and counts
    (``cells``, ``pulses_set``, ``pulses_reset``, ``reads``, and ``bits`` if ``bits_per_cell``).
    """
    pulses = np.asarray(result.pulses_set) + np.asarray(result.pulses_reset)
    parts = cell_energy_J(result.v2g_set_V2S, result.v2g_reset_V2S, pulses, result.reads, result.g_read_sum_S,
                          config)
    latency = programming_latency_s(pulses, result.reads, config)
    bd = {f"e_{k}_J": float(v.sum()) for k, v in parts.items()}
    bd["e_static_J"] = config.p_static_W * latency
    bd.update(cells=float(pulses.size), pulses_set=float(np.sum(result.pulses_set)),
              pulses_reset=float(np.sum(result.pulses_reset)), reads=float(np.sum(result.reads)))
    if bits_per_cell is not None:
        bd["bits"] = float(pulses.size * bits_per_cell)
    energy = sum(v for k, v in bd.items() if k.startswith("e_"))
    return Cost(energy, latency, bd)


def energy_per_bit_J(cost: Cost) -> float:
    """Programming energy per stored bit (J/bit); needs a cost made with ``bits_per_cell``."""
    bits = cost.breakdown.get("bits", 0.0)
    if not bits:
        raise CostError("energy_per_bit_J: the cost has no 'bits' (pass bits_per_cell to write_verify_cost)")
    return cost.energy_J / bits

"""Energy (J), latency (s) and area (mm^2) of inference on a programmed chip, priced from the counts
of :mod:`cimsim.cost.activity` with the constants of a :class:`cimsim.cost.technology.Technology`.

Per layer (a weight-stationary chip: every layer has its own tiles):

* energy: array ``V_read^2 * t_read * charge``; DAC ``drives * E_dac(bits)`` (1 bit for a
  bit-serial DAC, ``input_bits`` for a multi-bit one); ADC ``conversions * E_adc(adc_bits)``;
  sample-and-hold per conversion; shift-and-add per conversion; buffer traffic per bit;
* latency: the layer's reads follow each other (its tiles read in parallel); one read lasts
  ``max(t_read, conversions of the busiest ADC x t_conversion)`` (the sample-and-hold lets the
  array's next read overlap the conversions, as in ISAAC); shift-and-add is pipelined behind
  the conversions. ``latency_s`` of a network: its layers one after another (one inference
  alone); ``interval_s``: with the layers pipelined (ISAAC), the slowest layer;
* area: per tile the array (``tile_rows * tile_cols * cell_area_F2 * F^2``), one DAC per row,
  ``ceil(converted columns / columns_per_adc)`` ADCs each with a shift-and-add unit, one
  sample-and-hold per converted column, input and output registers; times the layer's tiles.

Throughput figures: ``TOPS/W = 2 * MACs / energy``; ``TOPS/mm^2 = 2 * MACs / interval / area``.
Constants and their sources: :mod:`cimsim.cost.technology`; rationale: docs/design.md,
section 'Inference cost (cimsim/cost)'.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from cimsim.cost.activity import LayerActivity, layer_activity
from cimsim.cost.programming import CostError
from cimsim.cost.technology import Technology, technology


@dataclass(frozen=True)
class ChipCostConfig:
    """How the chip's periphery is organised, and which technology prices it.

    technology: a preset name (:data:`cimsim.cost.technology.TECHNOLOGIES`) or a JSON file.
    columns_per_adc: converted columns (differential pairs, or single columns for separate
        conversion) multiplexed onto one ADC of a tile.
    t_read_s: how long the DAC drives the rows in one read (s).
    accumulator_bits: width of a partial sum / output word in the output registers and buffer.
    """

    technology: str = "isaac32"
    columns_per_adc: int = 8
    t_read_s: float = 100e-9
    accumulator_bits: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.technology, str) or not self.technology:
            raise CostError(f"ChipCostConfig.technology must be a preset name or a JSON file, got {self.technology!r}")
        for k in ("columns_per_adc", "accumulator_bits"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise CostError(f"ChipCostConfig.{k} must be an int >= 1, got {v!r}")
        v = self.t_read_s
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise CostError(f"ChipCostConfig.t_read_s must be a finite number > 0 (s), got {v!r}")

    @property
    def tech(self) -> Technology:
        return technology(self.technology)

    def replace(self, **changes: Any) -> "ChipCostConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "<dict>") -> "ChipCostConfig":
        if not isinstance(d, Mapping):
            raise CostError(f"{source}: a chip cost config is a table of fields")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise CostError(f"{source}: unknown ChipCostConfig field(s) {unknown}")
        try:
            return cls(**d)
        except CostError as e:
            raise CostError(f"{source}: {e}") from None

    def to_toml(self) -> str:
        return "# cimsim ChipCostConfig\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in self.to_dict().items())

    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``.toml`` or ``.json`` (by suffix), atomically."""
        from cimsim.io import atomic_write_text

        path = Path(path)
        atomic_write_text(path, self.to_toml() if path.suffix == ".toml" else json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ChipCostConfig":
        from cimsim.io import read_table

        return cls.from_dict(read_table(path, "chip cost config", CostError), str(path))


@dataclass(frozen=True)
class LayerCost:
    """One layer's cost for its :class:`LayerActivity` (all its images): energy parts (J), latency
    (s), area parts (mm^2)."""

    name: str
    activity: LayerActivity
    energy_J: Mapping[str, float]
    latency_s: float
    area_mm2: Mapping[str, float]

    @property
    def total_energy_J(self) -> float:
        return float(sum(self.energy_J.values()))

    @property
    def total_area_mm2(self) -> float:
        return float(sum(self.area_mm2.values()))


ENERGY_PARTS = ("array", "dac", "adc", "sample_hold", "shift_add", "buffer")
AREA_PARTS = ("array", "dac", "adc", "sample_hold", "shift_add", "registers")


def converter_prices(cfg, tech: Technology, where: str = "") -> tuple[float, float, float, float, float]:
    """``(ADC J per conversion, ADC mm^2, conversion s, DAC J per drive, DAC mm^2)`` of a crossbar
    config's converters; :class:`CostError` naming ``where`` if ``tech`` does not price them."""
    dac_bits = 1 if cfg.dac == "bit_serial" else cfg.input_bits
    return (*tech.adc(cfg.adc_bits, where), *tech.dac(dac_bits, where))


def check_priceable(model, chip: ChipCostConfig = ChipCostConfig()) -> None:
    """Raise :class:`CostError` now, before any long work, if ``chip`` cannot price a crossbar layer
    of ``model`` (ADC or DAC resolution outside its technology's tables)."""
    from cimsim.nn.modules import cim_layers

    tech = chip.tech
    for name, m in cim_layers(model):
        converter_prices(m.config, tech, f"layer {name!r}")


def price_layer(act: LayerActivity, chip: ChipCostConfig = ChipCostConfig(), tech: Technology | None = None) -> LayerCost:
    """Energy, latency and area of one layer's activity (see the module docstring)."""
    tech = tech or chip.tech
    cfg = act.config
    e_adc, a_adc, t_conv, e_dac, a_dac = converter_prices(cfg, tech, f"layer {act.name!r}")
    energy = {
        "array": cfg.v_read_V ** 2 * chip.t_read_s * act.array_charge_S,
        "dac": act.dac_drives * e_dac,
        "adc": act.adc_conversions * e_adc,
        "sample_hold": act.adc_conversions * tech.sample_hold_energy_J,
        "shift_add": act.shift_adds * tech.shift_add_energy_J,
        "buffer": (act.input_buffer_bits + act.output_buffer_bits) * tech.buffer_energy_J_per_bit,
    }
    conv_cols_tile = cfg.tile_cols // 2 if cfg.adc_convert == "differential" else cfg.tile_cols
    adcs_per_tile = -(-conv_cols_tile // chip.columns_per_adc)
    busiest = -(-act.max_conversions_per_tile_read // adcs_per_tile)
    t_read = max(chip.t_read_s, busiest * t_conv)
    tiles = act.row_tiles * act.col_tiles
    f_m = tech.node_nm * 1e-9
    area = {
        "array": tiles * cfg.tile_rows * cfg.tile_cols * tech.cell_area_F2 * f_m ** 2 * 1e6,
        "dac": tiles * cfg.tile_rows * a_dac,
        "adc": tiles * adcs_per_tile * a_adc,
        "sample_hold": tiles * conv_cols_tile * tech.sample_hold_area_mm2,
        "shift_add": tiles * adcs_per_tile * tech.shift_add_area_mm2,
        "registers": tiles * (cfg.tile_rows * (cfg.input_bits + 1) + conv_cols_tile * chip.accumulator_bits)
        * tech.register_area_mm2_per_bit,
    }
    return LayerCost(act.name, act, energy, act.reads * t_read, area)


@dataclass(frozen=True)
class InferenceCost:
    """Per-layer costs of a network and its per-inference totals (see the module docstring)."""

    layers: tuple[LayerCost, ...]
    chip: ChipCostConfig
    technology: Technology

    @property
    def images(self) -> int:
        return self.layers[0].activity.images

    def energy_J(self) -> float:
        """Energy per inference (J)."""
        return sum(lc.total_energy_J for lc in self.layers) / self.images

    def latency_s(self) -> float:
        """One inference alone, layers one after another (s)."""
        return sum(lc.latency_s for lc in self.layers) / self.images

    def interval_s(self) -> float:
        """Time between inferences with the layers pipelined: the slowest layer's time per image (s)."""
        return max(lc.latency_s for lc in self.layers) / self.images

    def area_mm2(self) -> float:
        return sum(lc.total_area_mm2 for lc in self.layers)

    def macs(self) -> float:
        return sum(lc.activity.macs for lc in self.layers) / self.images

    def tops_per_W(self) -> float:
        return 2 * self.macs() / self.energy_J() / 1e12

    def tops_per_mm2(self) -> float:
        return 2 * self.macs() / self.interval_s() / self.area_mm2() / 1e12

    def rows(self) -> list[dict[str, Any]]:
        """One dict per layer and a ``total`` row: per-inference energy parts (J), latency (s), area
        parts (mm^2) and counts per inference."""
        out = []
        n = self.images
        for lc in self.layers:
            a = lc.activity
            r: dict[str, Any] = {"layer": lc.name, "in": a.n_in, "out": a.n_out, "tiles": a.row_tiles * a.col_tiles,
                                 "macs": a.macs / n, "reads": a.reads / n, "adc_conversions": a.adc_conversions / n,
                                 "dac_drives": a.dac_drives / n}
            r.update({f"e_{k}_J": v / n for k, v in lc.energy_J.items()})
            r["energy_J"] = lc.total_energy_J / n
            r["latency_s"] = lc.latency_s / n
            r.update({f"area_{k}_mm2": v for k, v in lc.area_mm2.items()})
            r["area_mm2"] = lc.total_area_mm2
            out.append(r)
        tot: dict[str, Any] = {"layer": "total", "in": "", "out": ""}
        for k in out[0]:
            if k not in tot:
                tot[k] = sum(r[k] for r in out)
        out.append(tot)
        return out

    def summary(self) -> dict[str, float]:
        return {"images": self.images, "energy_J": self.energy_J(), "latency_s": self.latency_s(),
                "interval_s": self.interval_s(), "area_mm2": self.area_mm2(), "macs": self.macs(),
                "tops_per_W": self.tops_per_W(), "tops_per_mm2": self.tops_per_mm2()}

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "layers": self.rows(), "chip": self.chip.to_dict(),
                "technology": self.technology.to_dict(),
                "activity": [lc.activity.to_dict() for lc in self.layers]}

    def to_csv(self) -> str:
        rows = self.rows()
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()

    def table(self) -> str:
        """A plain-text table per layer: energy (nJ), latency (us), area (mm^2), and the totals."""
        lines = [f"{'layer':<22}{'MACs':>12}{'energy nJ':>12}{'ADC %':>8}{'latency us':>12}{'area mm2':>11}"]
        for r in self.rows():
            e = r["energy_J"]
            lines.append(f"{r['layer']:<22}{r['macs']:>12.0f}{e * 1e9:>12.3f}{100 * r['e_adc_J'] / e if e else 0:>8.1f}"
                         f"{r['latency_s'] * 1e6:>12.3f}{r['area_mm2']:>11.4f}")
        s = self.summary()
        lines.append(f"per inference: {s['energy_J'] * 1e9:.3f} nJ, latency {s['latency_s'] * 1e6:.3f} us "
                     f"(pipelined interval {s['interval_s'] * 1e6:.3f} us), area {s['area_mm2']:.4f} mm^2, "
                     f"{s['tops_per_W']:.2f} TOPS/W, {s['tops_per_mm2']:.4f} TOPS/mm^2 "
                     f"({self.technology.name}, {self.technology.node_nm:g} nm)")
        return "\n".join(lines)


def price(activities: list[LayerActivity], chip: ChipCostConfig = ChipCostConfig()) -> InferenceCost:
    """Price every layer's activity; the layers must have seen the same images."""
    if not activities:
        raise CostError("no crossbar layer ran: nothing to price (is the model converted with cimsim.nn.convert?)")
    n = {a.images for a in activities}
    if len(n) != 1 or 0 in n:
        raise CostError(f"the layers saw different numbers of images {sorted(n)}: price one forward pass")
    tech = chip.tech
    return InferenceCost(tuple(price_layer(a, chip, tech) for a in activities), chip, tech)


@contextlib.contextmanager
def recording(model, accumulator_bits: int = 16) -> Iterator[dict[str, LayerActivity]]:
    """Record, while the block runs, every crossbar layer's activity (layer name -> summed
    :class:`LayerActivity`, complete when the block ends). Images are counted at the model: the
    first dimension of its first input, per forward call (batch-first inputs); a layer that runs
    several times per forward (shared weights) adds all its reads to the same images."""
    from cimsim.nn.modules import cim_layers

    layers = cim_layers(model)
    if not layers:
        raise CostError("the model has no crossbar layers (convert it with cimsim.nn.convert first)")
    acts: dict[str, LayerActivity] = {}
    seen = {"images": 0}

    def count(mod, args, kwargs):
        x = args[0] if args else next(iter(kwargs.values()), None)
        if not hasattr(x, "shape") or len(x.shape) == 0:
            raise CostError(f"cannot count images: the model's first input is a {type(x).__name__}, not a batch")
        seen["images"] += int(x.shape[0])

    def hook(name):
        def fn(mod, inputs, output):
            if mod.mode != "chip":
                raise CostError(f"layer {name!r} is in mode {mod.mode!r}: the cost needs a programmed chip "
                                "(cimsim.nn.program(model, seed) or set_mode(model, 'chip'))")
            a = layer_activity(mod.chip(), mod.input_rows(inputs[0]), images=0, name=name,
                               accumulator_bits=accumulator_bits)
            acts[name] = acts[name] + a if name in acts else a
        return fn

    handles = [model.register_forward_pre_hook(count, with_kwargs=True)]
    handles += [m.register_forward_hook(hook(name)) for name, m in layers]
    try:
        yield acts
    finally:
        for h in handles:
            h.remove()
        for name in acts:
            acts[name] = dataclasses.replace(acts[name], images=seen["images"])


def inference_cost(model, batches, chip: ChipCostConfig = ChipCostConfig()) -> InferenceCost:
    """Run ``batches`` (an iterable of input tensors, or of ``(x, y)`` pairs) through a converted
    model on its programmed chip (no gradients) and price what its crossbar layers did."""
    import torch

    check_priceable(model, chip)
    with recording(model, chip.accumulator_bits) as acts, torch.no_grad():
        for b in batches:
            model(b[0] if isinstance(b, (tuple, list)) else b)
    return price(list(acts.values()), chip)

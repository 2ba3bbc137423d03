"""Cross-check of the inference cost model against ISAAC's published IMA (Shafiee et al., ISCA 2016, Table I).

ISAAC's in-situ multiply-accumulate unit (IMA): 8 arrays of 128x128 2-bit cells holding 16-bit
weights (8 cells per weight), 16-bit inputs fed bit-serially through 1024 1-bit DACs (one input
bit per 100 ns cycle), 1024 sample-and-holds, 8 ADCs of 8 bits at 1.2 GS/s (one per array, 128
columns each), 4 shift-and-add units, a 2 KB input and a 256 B output register. Table I gives
its power (at full activity) and area per component.

cimsim is configured the same way (tile 128x128, ``bits_per_cell=2``, ``weight_bits=16``,
``input_bits=16``, bit-serial DAC, every column converted: ``adc_convert="separate"``), one layer
of 128 inputs and 64 outputs (2 sides x 8 slices x 64 = 1024 columns = 8 arrays), priced with
the ``isaac32`` technology and ``columns_per_adc=128``, for one input vector with every bit set
(ISAAC's peak power assumes every DAC drives every cycle). Powers are cimsim's energies over
cimsim's latency. Since ``isaac32`` takes its per-event constants from the same table, agreement
checks the counting (how many reads, conversions, drives, ADCs, registers); the array energy is
cimsim's own (``V_read^2 G t`` of the programmed cells) and is compared without being forced.

``python -m cimsim.cost.crosscheck`` prints the table (docs/design.md, 'Inference cost').
"""
from __future__ import annotations

import numpy as np

from cimsim.cost.activity import layer_activity
from cimsim.cost.inference import ChipCostConfig, price_layer

# ISAAC Table I, one IMA: (power mW, area mm^2)
ISAAC_IMA = {
    "ADC": (16.0, 0.0096), "DAC": (4.0, 0.00017), "S+H": (0.01, 0.00004), "array": (2.4, 0.0002),
    "S+A": (0.2, 0.00024), "IR+OR": (1.24 + 0.23, 0.0021 + 0.00077),
}
ISAAC_CYCLE_S = 100e-9
_PARTS = {"ADC": "adc", "DAC": "dac", "S+H": "sample_hold", "array": "array", "S+A": "shift_add"}


def isaac_ima(device: str = "rram", v_read_V: float = 0.2, seed: int = 0) -> list[dict]:
    """Rows ``{component, unit, isaac, cimsim, ratio, compare}`` of the cross-check (module doc).
    ``compare`` is False for the array power, which depends on the cells (``device``, ``v_read_V``)."""
    from cimsim.crossbar.config import CrossbarConfig
    from cimsim.crossbar.program import program

    cfg = CrossbarConfig(tile_rows=128, tile_cols=128, bits_per_cell=2, weight_bits=16, input_bits=16,
                         dac="bit_serial", adc_bits=8, adc_convert="separate", input_clip=1.0, device=device,
                         v_read_V=v_read_V)
    arr = program(np.random.default_rng(seed).normal(size=(64, 128)), cfg, seed)
    act = layer_activity(arr, np.ones((1, 128)), images=1, accumulator_bits=16)
    cost = price_layer(act, ChipCostConfig(technology="isaac32", columns_per_adc=128, t_read_s=ISAAC_CYCLE_S))
    t = cost.latency_s
    rows = []
    for comp, (p_mW, a_mm2) in ISAAC_IMA.items():
        if comp == "IR+OR":
            e, a = cost.energy_J["buffer"], cost.area_mm2["registers"]
        else:
            e, a = cost.energy_J[_PARTS[comp]], cost.area_mm2[_PARTS[comp]]
        rows.append(dict(component=f"{comp} power", unit="mW", isaac=p_mW, cimsim=e / t * 1e3,
                         ratio=e / t * 1e3 / p_mW, compare=comp != "array"))
        rows.append(dict(component=f"{comp} area", unit="mm^2", isaac=a_mm2, cimsim=a, ratio=a / a_mm2, compare=True))
    isaac_t = cfg.input_bits * ISAAC_CYCLE_S
    rows.append(dict(component="latency (16-bit vector)", unit="us", isaac=isaac_t * 1e6, cimsim=t * 1e6,
                     ratio=t / isaac_t, compare=True))
    return rows


def markdown(rows: list[dict]) -> str:
    out = ["| component | ISAAC | cimsim | cimsim / ISAAC |", "| --- | ---: | ---: | ---: |"]
    for r in rows:
        out.append(f"| {r['component']} ({r['unit']}) | {r['isaac']:.4g} | {r['cimsim']:.4g} | {r['ratio']:.3g}"
                   f"{'' if r['compare'] else ' (not forced)'} |")
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover - prints the docs table
    print(markdown(isaac_ima()))

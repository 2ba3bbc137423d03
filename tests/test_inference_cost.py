"""Inference cost (cimsim.cost.activity / inference / technology): the counts against a slow read-by-read
reference, the scaling laws a cost model must obey, the ISAAC cross-check and one-line errors."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cimsim.cost import (
    TECHNOLOGIES, ChipCostConfig, CostError, Technology, inference_cost, layer_activity, price, price_layer,
    technology,
)
from cimsim.crossbar.circuit import layer_tiles
from cimsim.crossbar.config import CrossbarConfig
from cimsim.crossbar.mapping import quantize_inputs
from cimsim.crossbar.program import program
from cimsim.nn import convert


def reference_counts(arr, x: np.ndarray) -> dict:
    """Read by read, as :func:`cimsim.crossbar.mvm_ref.mvm_reference` walks a product: reads, DAC drives,
    ADC conversions and array charge sum((V_i/V_read)^2 G) over every cell of every read tile."""
    cfg = arr.config
    xq = quantize_inputs(x, arr.resolved_input_clip(x), cfg.input_bits).astype(np.int64)
    tiles = list(layer_tiles(arr.n_in, arr.n_out, cfg.n_slices, cfg.tile_rows, cfg.tile_cols))
    col_tiles = len({(t[1].start, t[1].stop) for t in tiles})
    row_tiles = sorted({(t[0].start, t[0].stop) for t in tiles})
    out = dict(reads=0, dac_drives=0, adc_conversions=0, array_charge_S=0.0, buffer_bits=0)
    for b in range(x.shape[0]):
        # the row's inputs (sign + magnitude) to every column tile; a partial sum per output and row tile
        out["buffer_bits"] += arr.n_in * (cfg.input_bits + 1) * col_tiles + arr.n_out * len(row_tiles) * 16
        for mag in (np.maximum(xq[b], 0), np.maximum(-xq[b], 0)):
            if not mag.any():
                continue
            if cfg.dac == "multibit":
                cycles = [mag / cfg.x_max_int]
            else:
                cycles = [((mag >> j) & 1).astype(float) for j in range(cfg.input_bits)]
            for v in cycles:
                out["reads"] += 1
                out["dac_drives"] += int(np.count_nonzero(v)) * col_tiles
                for k in range(cfg.n_slices):
                    for r0, r1 in row_tiles:
                        for o in range(arr.n_out):
                            out["adc_conversions"] += 1 if cfg.adc_convert == "differential" else 2
                            for i in range(r0, r1):
                                out["array_charge_S"] += v[i] ** 2 * (arr.g_pos_S[k, i, o] + arr.g_neg_S[k, i, o])
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_in=st.integers(1, 40), n_out=st.integers(1, 7), batch=st.integers(1, 4),
       tile=st.sampled_from([(8, 8), (16, 12), (32, 64)]), dac=st.sampled_from(["multibit", "bit_serial"]),
       convert_mode=st.sampled_from(["differential", "separate"]), bits_per_cell=st.sampled_from([1, 2, 4]),
       input_bits=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_activity_matches_read_by_read_reference(n_in, n_out, batch, tile, dac, convert_mode, bits_per_cell,
                                                 input_bits, seed):
    rng = np.random.default_rng(seed)
    cfg = CrossbarConfig(tile_rows=tile[0], tile_cols=tile[1], dac=dac, adc_convert=convert_mode,
                         bits_per_cell=bits_per_cell, input_bits=input_bits, weight_bits=4, device="rram")
    arr = program(rng.normal(size=(n_out, n_in)), cfg, seed)
    x = rng.normal(size=(batch, n_in))
    x[rng.random(x.shape) < 0.3] = 0.0
    if batch > 1:
        x[0] = np.abs(x[0])  # a row without negative entries: one phase
        x[1] = 0.0  # an all-zero row: not read
    ref = reference_counts(arr, x)
    act = layer_activity(arr, x, images=batch)
    assert act.reads == ref["reads"] * 1 and act.dac_drives == ref["dac_drives"]
    assert act.adc_conversions == ref["adc_conversions"] == act.shift_adds
    assert act.array_charge_S == pytest.approx(ref["array_charge_S"], rel=1e-9, abs=1e-30)
    assert act.macs == batch * n_in * n_out and act.rows == batch
    assert act.input_buffer_bits + act.output_buffer_bits == ref["buffer_bits"]


def _model(cfg: CrossbarConfig, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 10))
    return convert(m, cfg, seed=seed)


def test_twice_the_batch_twice_the_energy():
    m = _model(CrossbarConfig(tile_rows=32, tile_cols=32, device="rram"))
    x = torch.randn(4, 1, 8, 8)
    one, two = inference_cost(m, [x]), inference_cost(m, [x, x])
    for a, b in zip(one.layers, two.layers):
        for k in a.energy_J:
            assert b.energy_J[k] == pytest.approx(2 * a.energy_J[k], rel=1e-12)
        assert b.latency_s == pytest.approx(2 * a.latency_s, rel=1e-12)
        assert b.area_mm2 == a.area_mm2  # the same chip
    assert two.energy_J() == pytest.approx(one.energy_J(), rel=1e-12)  # per inference
    assert two.summary()["images"] == 8
    rows = one.rows()
    assert rows[-1]["layer"] == "total" and rows[-1]["energy_J"] == pytest.approx(one.energy_J(), rel=1e-12)
    assert one.to_csv().count("\n") == len(one.layers) + 2
    json.dumps(one.to_dict())  # serialisable


def test_bit_serial_takes_input_bits_reads():
    base = CrossbarConfig(tile_rows=64, tile_cols=64, input_bits=6, device="rram")
    x = torch.randn(3, 1, 8, 8)
    chip = ChipCostConfig(columns_per_adc=1)  # conversions never slower than a read
    mb = inference_cost(_model(base), [x], chip)
    bs = inference_cost(_model(base.replace(dac="bit_serial")), [x], chip)
    for a, b in zip(mb.layers, bs.layers):
        assert b.activity.reads == 6 * a.activity.reads
        assert b.activity.adc_conversions == 6 * a.activity.adc_conversions
        assert b.latency_s == pytest.approx(6 * a.latency_s, rel=1e-12)
    assert bs.latency_s() == pytest.approx(6 * mb.latency_s(), rel=1e-12)


def test_sharing_an_adc_trades_latency_for_area():
    cfg = CrossbarConfig(tile_rows=128, tile_cols=256, adc_convert="separate", device="rram")
    arr = program(np.random.default_rng(0).normal(size=(64, 128)), cfg, 0)
    act = layer_activity(arr, np.random.default_rng(1).normal(size=(5, 128)), images=5)
    costs = [price_layer(act, ChipCostConfig(columns_per_adc=c)) for c in (1, 8, 64, 256)]
    adc_area = [c.area_mm2["adc"] for c in costs]
    latency = [c.latency_s for c in costs]
    assert all(a > b for a, b in zip(adc_area, adc_area[1:]))
    assert all(a <= b for a, b in zip(latency, latency[1:])) and latency[-1] > latency[0]
    # 256 columns on one 1.2 GS/s ADC: each read waits for 256 conversions
    assert latency[-1] == pytest.approx(act.reads * 256 / 1.2e9, rel=1e-12)
    assert latency[0] == pytest.approx(act.reads * 100e-9, rel=1e-12)
    assert len({c.total_energy_J for c in costs}) == 1  # the same conversions


def test_larger_tiles_need_fewer_adcs():
    rng = np.random.default_rng(0)
    w, x = rng.normal(size=(128, 512)), rng.normal(size=(4, 512))  # 1024 columns: every tile full
    chip = ChipCostConfig(columns_per_adc=8)
    n_adcs, conversions = [], []
    for t in (64, 128, 256, 512):
        arr = program(w, CrossbarConfig(tile_rows=t, tile_cols=t, device="rram"), 0)
        c = price_layer(layer_activity(arr, x, images=4), chip)
        n_adcs.append(c.area_mm2["adc"] / chip.tech.adc(8)[1])
        conversions.append(c.activity.adc_conversions)
    assert all(a > b for a, b in zip(n_adcs, n_adcs[1:])), n_adcs
    assert all(a > b for a, b in zip(conversions, conversions[1:])), conversions


def test_array_energy_is_v_read_squared_g_t():
    """One read of one row with the full input: E_array = V_read^2 t_read * (summed G of that row)."""
    cfg = CrossbarConfig(tile_rows=8, tile_cols=8, device="rram", input_clip=1.0, v_read_V=0.3)
    arr = program(np.random.default_rng(2).normal(size=(3, 5)), cfg, 2)
    x = np.zeros((1, 5))
    x[0, 2] = 1.0
    c = price_layer(layer_activity(arr, x, images=1), ChipCostConfig(t_read_s=50e-9))
    g_row = sum(float(g[:, 2, :].sum()) for g in (arr.g_pos_S, arr.g_neg_S))
    assert c.energy_J["array"] == pytest.approx(0.3 ** 2 * 50e-9 * g_row, rel=1e-12)


def test_isaac_crosscheck_within_a_factor_of_two():
    from cimsim.cost.crosscheck import isaac_ima

    rows = isaac_ima()
    checked = [r for r in rows if r["compare"]]
    assert {r["component"] for r in checked} >= {"ADC power", "DAC power", "ADC area", "DAC area", "array area",
                                                  "S+H area", "S+A area"}
    for r in checked:
        assert 0.5 <= r["ratio"] <= 2.0, r


def test_technology_json_round_trip_and_presets(tmp_path):
    for t in TECHNOLOGIES.values():
        p = t.save(tmp_path / f"{t.name}.json")
        assert technology(p) == t == technology(t.name)
    i = TECHNOLOGIES["isaac32"]
    assert i.adc(8)[0] == pytest.approx(1.67e-12) and i.adc(8)[2] == pytest.approx(1 / 1.2e9)
    assert 1024 * i.dac(1)[0] / 100e-9 == pytest.approx(4e-3)  # ISAAC: 1024 DACs, 4 mW
    assert i.dac(8)[0] < i.dac(10)[0] == pytest.approx(4 * i.dac(8)[0])
    s = TECHNOLOGIES["survey22"]
    assert s.node_nm == 22 and s.cell_area_F2 == 48


@pytest.mark.parametrize("make, match", [
    (lambda: ChipCostConfig(columns_per_adc=0), "columns_per_adc"),
    (lambda: ChipCostConfig(t_read_s=float("nan")), "t_read_s"),
    (lambda: ChipCostConfig(technology="isaac64").tech, "unknown technology 'isaac64'"),
    (lambda: ChipCostConfig.from_dict({"colums_per_adc": 8}), "unknown ChipCostConfig field"),
    (lambda: TECHNOLOGIES["isaac32"].adc(12, "layer 'fc'"), "layer 'fc': technology 'isaac32' prices ADCs of 4-10 bits, not 12"),
    (lambda: TECHNOLOGIES["isaac32"].dac(16), "prices DACs of 1-10 bits, not 16"),
    (lambda: Technology.from_dict({"name": "x"}), "missing technology field"),
    (lambda: TECHNOLOGIES["isaac32"].replace(adc_bits=(8, 4)), "adc_bits"),
    (lambda: TECHNOLOGIES["isaac32"].replace(cell_area_F2=0.0), "cell_area_F2"),
    (lambda: price([]), "nothing to price"),
])
def test_bad_configs_one_line(make, match):
    with pytest.raises(CostError, match=match) as e:
        make()
    assert "\n" not in str(e.value)


def test_bad_files_and_models_one_line(tmp_path):
    bad = tmp_path / "chip.toml"
    bad.write_text("columns_per_adc = [")
    with pytest.raises(CostError, match="chip.toml: cannot parse"):
        ChipCostConfig.load(bad)
    tech = tmp_path / "tech.json"
    tech.write_text(json.dumps({**TECHNOLOGIES["isaac32"].to_dict(), "adc_rate_Hz": -1}))
    with pytest.raises(CostError, match="tech.json: .*adc_rate_Hz"):
        technology(tech)
    with pytest.raises(CostError, match="no crossbar layers"):
        inference_cost(nn.Linear(3, 2), [torch.randn(1, 3)])
    m = _model(CrossbarConfig(device="rram"))
    m[0].mode = "ideal"
    with pytest.raises(CostError, match="layer '0' is in mode 'ideal'"):
        inference_cost(m, [torch.randn(1, 1, 8, 8)])
    m = _model(CrossbarConfig(adc_bits=12, device="rram"))
    with pytest.raises(CostError, match="layer '0': technology 'isaac32' prices ADCs of 4-10 bits, not 12"):
        inference_cost(m, [torch.randn(1, 1, 8, 8)])


def test_chip_config_round_trip(tmp_path):
    c = ChipCostConfig(technology="survey22", columns_per_adc=16, t_read_s=10e-9)
    for suffix in (".toml", ".json"):
        assert ChipCostConfig.load(c.save(tmp_path / f"c{suffix}")) == c
    assert math.isclose(c.tech.node_nm, 22)


def test_images_are_counted_at_the_model_and_shared_layers_add_up():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x):
            return self.fc(torch.relu(self.fc(x)))

    cfg = CrossbarConfig(tile_rows=8, tile_cols=8, device="rram")
    m = convert(Twice(), cfg)
    x = torch.randn(5, 6)
    c = inference_cost(m, [x])
    once = layer_activity(m.fc.chip(), x, images=5)
    assert c.images == 5 and len(c.layers) == 1
    assert c.layers[0].activity.macs == 2 * once.macs  # two passes through the same array per image
    assert c.macs() == 2 * 6 * 6


def test_counts_do_not_depend_on_the_chunking(monkeypatch):
    import cimsim.cost.activity as activity

    rng = np.random.default_rng(3)
    arr = program(rng.normal(size=(5, 20)), CrossbarConfig(tile_rows=8, tile_cols=8, device="rram", dac="bit_serial"), 3)
    x = rng.normal(size=(50, 20))
    whole = layer_activity(arr, x, images=50)
    monkeypatch.setattr(activity, "_CHUNK_ROWS", 7)
    chunked = layer_activity(arr, x, images=50)
    assert chunked.array_charge_S == pytest.approx(whole.array_charge_S, rel=1e-12)
    assert chunked.to_dict() | {"array_charge_S": 0} == whole.to_dict() | {"array_charge_S": 0}

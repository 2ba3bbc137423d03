"""Tests of cimsim.cost: energy adds up over cells and layers, latency model, tables, config."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cimsim.cost import (
    Cost,
    CostConfig,
    CostError,
    cell_energy_J,
    energy_per_bit_J,
    model_cost,
    programming_latency_s,
    write_verify_cost,
)
from cimsim.device.model import DeviceModel
from cimsim.writeverify import write_verify

US = 1e-6


def device(**kw) -> DeviceModel:
    args = dict(name="flat", gmin_S=1 * US, gmax_S=100 * US, times_s=(0.0,), sigma_poly_uS=((0.0,),))
    args.update(kw)
    return DeviceModel(**args)


def result(shape=(16, 24), seed=0, **kw):
    dev = device()
    tg = np.random.default_rng(seed).uniform(10 * US, 90 * US, shape)
    return write_verify(tg, dev, "ispp", tolerance=1 * US, rng=seed, **kw)


def test_energy_is_sum_of_per_cell_pulse_energies():
    cfg = CostConfig(e_pulse_overhead_J=1e-13)
    res = result()
    cost = write_verify_cost(res, cfg)
    parts = cell_energy_J(res.v2g_set_V2S, res.v2g_reset_V2S, res.pulses, res.reads, res.g_read_sum_S, cfg)
    per_cell = sum(parts.values())
    assert np.isclose(cost.energy_J, per_cell.sum(), rtol=1e-12)
    # cells split into two halves cost the same energy as the whole
    halves = [SimpleNamespace(**{f: getattr(res, f)[sl] for f in ("pulses_set", "pulses_reset", "reads", "v2g_set_V2S",
                                                                  "v2g_reset_V2S", "g_read_sum_S")})
              for sl in (np.s_[:8], np.s_[8:])]
    assert np.isclose(sum(write_verify_cost(h, cfg).energy_J for h in halves), cost.energy_J, rtol=1e-12)
    assert cost.breakdown["pulses_set"] == res.pulses_set.sum()


def test_pulse_energy_is_v2_g_t_for_a_cell_that_cannot_move():
    """A cell stuck at gmax pulsed N times by FPPV RESETs costs N * V^2 * gmax * t_pulse exactly."""
    dev = device(stuck_at_gmax=1.0)
    res = write_verify(np.full(5, 20 * US), dev, "fppv", tolerance=1 * US, max_pulses=7, rng=0)
    cfg = CostConfig(t_pulse_s=200e-9, verify_adc_bits=6)
    cost = write_verify_cost(res, cfg)
    v = 1.0  # radar_fppv RESET amplitude
    pulse_J = 5 * 7 * v**2 * dev.gmax_S * 200e-9
    read_J = 5 * 8 * (cfg.v_read_V**2 * dev.gmax_S * cfg.t_verify_read_s + 1.20e-12)
    assert np.isclose(cost.breakdown["e_reset_J"], pulse_J, rtol=1e-12)
    assert np.isclose(cost.breakdown["e_read_J"], read_J, rtol=1e-12)
    assert np.isclose(cost.energy_J, pulse_J + read_J, rtol=1e-12)


def test_layers_add_up_to_model_total():
    cfg = CostConfig(p_static_W=1e-3)
    layers = {f"fc{i}": write_verify_cost(result((8, 10 + i), seed=i), cfg, bits_per_cell=2) for i in range(3)}
    rep = model_cost(layers)
    assert np.isclose(rep.total.energy_J, sum(c.energy_J for c in layers.values()), rtol=1e-12)
    assert np.isclose(rep.total.latency_s, sum(c.latency_s for c in layers.values()), rtol=1e-12)
    assert rep.total.breakdown["cells"] == sum(8 * (10 + i) for i in range(3))
    assert set(rep.to_dict()["layers"]) == set(layers)
    assert sum(layers.values()).energy_J == rep.total.energy_J


def test_latency_hand_computed():
    cfg = CostConfig(t_pulse_s=1.0, t_verify_read_s=0.5, drivers_per_row=2)
    pulses = np.array([[1, 5, 2], [3, 0, 0]])
    reads = pulses + 1
    t = lambda p: p * 1.0 + (p + 1) * 0.5  # noqa: E731
    row0 = max(t(1), t(5)) + t(2)
    row1 = max(t(3), t(0)) + t(0)
    assert programming_latency_s(pulses, reads, cfg) == pytest.approx(row0 + row1)
    assert programming_latency_s(pulses, reads, cfg.replace(rows_parallel=2)) == pytest.approx(max(row0, row1))
    wide = cfg.replace(drivers_per_row=8)
    assert programming_latency_s(pulses, reads, wide) == pytest.approx(t(5) + t(3))
    # rows programmed one after the other: latency adds over stacked arrays
    a, b = result((6, 9), seed=1), result((5, 9), seed=2)
    both = programming_latency_s(np.vstack([a.pulses, b.pulses]), np.vstack([a.reads, b.reads]))
    assert both == pytest.approx(programming_latency_s(a.pulses, a.reads) + programming_latency_s(b.pulses, b.reads))


def test_verify_adc_table():
    cfg = CostConfig()
    expect = {4: 0.79, 5: 0.99, 6: 1.20, 7: 1.42, 8: 1.67, 9: 1.97, 10: 2.38}
    for b, pj in expect.items():
        assert cfg.adc_energy_J(b) == pytest.approx(pj * 1e-12)
    assert cfg.adc_energy_J(2) == pytest.approx(0.79e-12)  # below the table: the smallest entry
    with pytest.raises(CostError, match="covers 4..10"):
        cfg.adc_energy_J(12)


def test_config_json_and_errors():
    cfg = CostConfig.neurram()
    assert CostConfig.from_json(cfg.to_json()) == cfg
    assert cfg.t_pulse_s == 1e-6
    with pytest.raises(CostError, match="t_pulse_s"):
        CostConfig(t_pulse_s=-1.0)
    with pytest.raises(CostError, match="drivers_per_row"):
        CostConfig(drivers_per_row=0)
    with pytest.raises(CostError, match="adc_energy_pJ"):
        CostConfig(adc_energy_pJ=((8, 1.0), (4, 0.5)))
    with pytest.raises(CostError, match="unknown fields"):
        CostConfig.from_dict({"t_pulse": 1.0})
    with pytest.raises(CostError, match="bits"):
        energy_per_bit_J(Cost(1.0, 0.0, {}))
    with pytest.raises(CostError):
        model_cost({})
    with pytest.raises(CostError, match="differ in shape"):
        programming_latency_s(np.ones(3), np.ones(4))


def test_energy_per_bit_and_ember_crosscheck_runs():
    from cimsim.writeverify import calibration as pc
    try:
        out = pc.ember_crosscheck(n_cells=300)
    except FileNotFoundError:
        pytest.skip("../shared/reference/write_verify_pulse_stats.csv not found beside the repo (CI has it)")
    assert {(r["algorithm"], r["bits_per_cell"]) for r in out} == {("fppv", 1), ("fppv", 2), ("ispp", 1), ("ispp", 2)}
    for r in out:
        assert 0 < r["simulated_nJ_per_bit"] < 10 and 0 < r["measured_counts_nJ_per_bit"] < 10
    cost = write_verify_cost(result(), bits_per_cell=2)
    assert energy_per_bit_J(cost) == pytest.approx(cost.energy_J / (16 * 24 * 2))

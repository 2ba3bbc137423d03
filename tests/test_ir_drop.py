"""IR drop through a programmed layer (issue #20): the effective-conductance fast path of
``program``/``matmul`` against the per-read nodal specification of ``mvm_reference``, the physical
column layout, partial tiles, configs and the nn layers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cimsim.crossbar.circuit import (
    TileCircuit, effective_layer_S, layer_columns, partial_tile_circuit, tile_currents_reference,
)
from cimsim.crossbar.config import ConfigError, CrossbarConfig
from cimsim.crossbar.mvm_ref import mvm_reference
from cimsim.crossbar.program import program

WIRES = dict(r_row_segment_ohm=50.0, r_col_segment_ohm=80.0, r_driver_ohm=100.0, r_sense_ohm=200.0,
             r_access_ohm=5000.0)
NO_WIRES = {k: 0.0 for k in WIRES}


@settings(max_examples=12, deadline=None)
@given(st.integers(1, 19), st.integers(1, 5), st.sampled_from(["multibit", "bit_serial"]),
       st.sampled_from(["differential", "separate"]), st.sampled_from(["first", "last"]),
       st.sampled_from(["first", "last"]), st.sampled_from(["full", "calibrated"]), st.integers(0, 2**31 - 1))
def test_fast_path_is_the_per_read_circuit(n_in, n_out, dac, convert, drive_end, sense_end, adc_range, seed):
    """Every read of the fast path (effective conductances per tile) equals the nodal solve of that
    read, for multi-bit and bit-serial DACs, both conversions, both line ends and partial tiles."""
    rng = np.random.default_rng(seed)
    w, x = rng.normal(size=(n_out, n_in)), rng.normal(size=(2, n_in))
    cfg = CrossbarConfig(tile_rows=6, tile_cols=8, device="rram", adc_bits=10, adc_range=adc_range, dac=dac,
                         input_bits=4, adc_convert=convert, drive_end=drive_end, sense_end=sense_end, **WIRES)
    arr = program(w, cfg, seed)
    arr.calibrate(x)
    ref = mvm_reference(arr, x)
    np.testing.assert_allclose(arr.matmul(x), ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


def test_ir_drop_moves_the_outputs_and_zero_resistance_is_todays_chip():
    rng = np.random.default_rng(0)
    w, x = rng.normal(size=(6, 30)), np.abs(rng.normal(size=(4, 30)))
    base = CrossbarConfig(tile_rows=16, tile_cols=16, device="rram", adc_bits=12, adc_range="full")
    plain = program(w, base, 3)
    zero = program(w, base.replace(**NO_WIRES, drive_end="last", sense_end="first"), 3)
    assert zero.g_cells_pos_S is None and np.array_equal(zero.g_pos_S, plain.g_pos_S)
    wired = program(w, base.replace(**WIRES), 3)
    assert np.array_equal(wired.g_cells_pos_S, plain.g_pos_S)
    assert np.all(wired.g_pos_S <= plain.g_pos_S * (1 + 1e-12) + 1e-15) or wired.g_pos_S.sum() < plain.g_pos_S.sum()
    rel = np.abs(wired.matmul(x) - plain.matmul(x)).max() / np.abs(plain.matmul(x)).max()
    assert rel > 0.01  # these wires matter


def test_layer_columns_and_the_tiles_they_fill():
    col = layer_columns(n_out=3, n_slices=2)
    assert col.shape == (2, 2, 3) and sorted(col.ravel().tolist()) == list(range(12))
    assert col[0, 0, 0] == 0 and col[0, 1, 0] == 1 and col[1, 0, 0] == 2 and col[0, 0, 1] == 4
    g = np.random.default_rng(1).uniform(1e-6, 40e-6, (2, 5, 3))
    a_pos, a_neg = effective_layer_S(g, g[::-1].copy(), TileCircuit(), 4, 4)
    assert np.array_equal(a_pos, g) and np.array_equal(a_neg, g[::-1])
    # one tile holds whole columns: a column's cells in rows of one row tile only see that tile
    c = TileCircuit(r_row_segment_ohm=30.0, r_col_segment_ohm=30.0)
    a_pos, _ = effective_layer_S(g, g, c, 5, 12)
    cells = np.stack([g, g], axis=1).transpose(2, 3, 0, 1).reshape(5, 12)
    expect = [tile_currents_reference(cells, e, c)[col[1, 0, 2]] for e in np.eye(5)]  # row i driven alone
    np.testing.assert_allclose(a_pos[1, :, 2], expect, rtol=1e-9)


@pytest.mark.parametrize("drive_end", ["first", "last"])
@pytest.mark.parametrize("sense_end", ["first", "last"])
def test_a_partial_tile_is_its_used_block_with_the_empty_wire_at_the_ends(drive_end, sense_end):
    rng = np.random.default_rng(2)
    g = rng.uniform(0, 50e-6, (3, 4))
    v = rng.uniform(0, 0.3, 3)
    c = TileCircuit(r_row_segment_ohm=7.0, r_col_segment_ohm=11.0, r_driver_ohm=3.0, r_sense_ohm=5.0,
                    r_access_ohm=100.0, drive_end=drive_end, sense_end=sense_end)
    full = np.zeros((6, 7))
    full[:3, :4] = g  # the used block sits at index 0 of a 6x7 tile, as layer_tiles fills tiles
    padded = tile_currents_reference(full, np.r_[v, 0.1, 0.2, 0.0], c)
    trimmed = tile_currents_reference(g, v, partial_tile_circuit(c, 3, 4, 6, 7))
    np.testing.assert_allclose(trimmed, padded[:4], rtol=1e-10)
    assert np.all(padded[4:] == 0)


def test_read_noise_through_the_wires_matches_per_cell_draws_statistically():
    """With read noise the fast path perturbs the effective conductances by the cells' read
    sigma; the specification draws noisy cells and solves: the spreads agree within 15 %."""
    rng = np.random.default_rng(4)
    w, x = rng.normal(size=(2, 10)), np.abs(rng.normal(size=(1, 10)))
    cfg = CrossbarConfig(tile_rows=10, tile_cols=8, device="rram", adc_bits=16, adc_range="full", read_noise=True,
                         input_clip=3.0, **WIRES)
    arr = program(w, cfg, 1)
    fast = np.stack([arr.matmul(x)[0] for _ in range(400)])
    ref_rng = np.random.default_rng(5)
    ref = np.stack([mvm_reference(arr, x, ref_rng)[0] for _ in range(400)])
    assert np.allclose(fast.std(0), ref.std(0), rtol=0.15)
    assert np.allclose(fast.mean(0), ref.mean(0), atol=0.2 * ref.std(0).max())


@pytest.mark.parametrize("field, value, words", [
    ("r_row_segment_ohm", -1.0, "r_row_segment_ohm = -1.0: must be a finite number >= 0"),
    ("r_sense_ohm", float("nan"), "r_sense_ohm = nan"),
    ("r_access_ohm", "1k", "r_access_ohm = '1k'"),
    ("drive_end", "middle", "drive_end = 'middle': must be one of first, last"),
    ("sense_end", None, "sense_end = None"),
])
def test_bad_interconnect_fields_are_named(field, value, words):
    with pytest.raises(ConfigError, match="CrossbarConfig." + words.replace("(", r"\(").replace(")", r"\)")):
        CrossbarConfig(**{field: value})


def test_interconnect_round_trips_through_toml_and_json(tmp_path):
    cfg = CrossbarConfig(r_row_segment_ohm=2.12, r_col_segment_ohm=6.36, r_access_ohm=1500, drive_end="last")
    assert cfg.circuit == TileCircuit(r_row_segment_ohm=2.12, r_col_segment_ohm=6.36, r_access_ohm=1500,
                                      drive_end="last")
    for suffix in (".toml", ".json"):
        assert CrossbarConfig.load(cfg.save(tmp_path / f"c{suffix}")) == cfg


def test_nn_layers_read_through_the_wires_and_draw_fresh_chips_on_the_host():
    from cimsim.nn import CIMLinear

    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 4)
    cfg = CrossbarConfig(tile_rows=8, tile_cols=8, device="rram", **WIRES)
    x = torch.rand(5, 12)
    frozen = CIMLinear.from_module(lin, cfg, seed=7, mode="chip")
    frozen.calibrate(x)
    chip = frozen.chip()
    assert chip.g_cells_pos_S is not None
    y = frozen(x).detach().numpy()
    np.testing.assert_allclose(y - lin.bias.detach().numpy(), chip.matmul(x.numpy().astype(np.float64)),
                               rtol=1e-5, atol=1e-6)
    host = CIMLinear.from_module(lin, cfg, seed=7, mode="fresh")
    host.program_on_device = False
    host.calibrate(x)
    assert host.fresh_chip().g_cells_pos_S is not None  # programmed on the host, read through the wires


def test_chips_drawn_in_torch_read_through_the_same_wires():
    """program_on_device reads through the same wires as the host (on the CPU its tiles go to the
    Numba kernel; the torch solver, the CUDA path, is run here on the CPU as well): with an ideal
    device it gives the host chip's effective conductances and outputs."""
    from cimsim.crossbar.circuit import effective_conductance_torch
    from cimsim.crossbar.mvm import crossbar_matmul_torch
    from cimsim.crossbar.program_torch import level_table, program_on_device

    rng = np.random.default_rng(6)
    w, x = rng.normal(size=(5, 21)), np.abs(rng.normal(size=(4, 21)))
    cfg = CrossbarConfig(tile_rows=8, tile_cols=12, device="ideal", input_clip=3.0, adc_bits=14, adc_range="full",
                         drive_end="last", sense_end="first", **WIRES)
    host = program(w, cfg, 0)
    bare = program(w, cfg.replace(**NO_WIRES), 0)  # the same cells, read without wires
    host_cells = (bare.g_pos_S, bare.g_neg_S)
    dm = cfg.device_model()
    dev = program_on_device(torch.from_numpy(w), cfg, dm, 0, 3.0, None, level_table(dm, cfg, torch.device("cpu")))
    top = host.g_pos_S.max()
    np.testing.assert_allclose(dev.g_pos.numpy(), host.g_pos_S, rtol=1e-9, atol=1e-9 * top)
    np.testing.assert_allclose(dev.g_neg.numpy(), host.g_neg_S, rtol=1e-9, atol=1e-9 * top)
    np.testing.assert_allclose(crossbar_matmul_torch(dev, torch.from_numpy(x)).numpy(), host.matmul(x), rtol=1e-6)
    # the torch solver (the CUDA path) on the same layer: every tile shape of it (full, partial
    # rows, partial columns) against the Numba kernel the CPU uses
    from cimsim.crossbar.circuit import effective_layer_torch

    gp, gn = torch.from_numpy(host_cells[0]), torch.from_numpy(host_cells[1])
    for a_t, a_n in zip(effective_layer_torch(gp, gn, cfg.circuit, cfg.tile_rows, cfg.tile_cols, kernel="torch"),
                        effective_layer_torch(gp, gn, cfg.circuit, cfg.tile_rows, cfg.tile_cols)):
        np.testing.assert_allclose(a_t.numpy(), a_n.numpy(), rtol=1e-9, atol=1e-9 * top)
    g = torch.rand(2, 7, 5, dtype=torch.float64) * 4e-5
    c = cfg.circuit
    from cimsim.crossbar.circuit import CircuitNotConverged

    with pytest.raises(CircuitNotConverged, match="7x5 tile"):
        effective_conductance_torch(g, c, max_iter=1)


@pytest.mark.parametrize("on_device", [False, True])
def test_fresh_chips_between_solves_read_through_the_last_solve(on_device):
    """ir_fresh_solve_every = 3: fresh draws 1, 4, 7 are solved exactly (as a chip of that seed
    programmed alone), draws 2-3 and 5-6 are their own cells read through the block's solve; 1
    solves them all."""
    from cimsim.crossbar.circuit import read_through_solve
    from cimsim.crossbar.program_torch import level_table, program_on_device
    from cimsim.nn import CIMLinear
    from cimsim.nn.modules import fresh_seed

    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 4)
    x = torch.rand(5, 12)
    cfg = CrossbarConfig(tile_rows=8, tile_cols=8, device="rram", ir_fresh_solve_every=3, **WIRES)
    no_wires = cfg.replace(**NO_WIRES)
    layer = CIMLinear.from_module(lin, cfg, seed=7, mode="fresh")
    layer.program_on_device = on_device
    layer.calibrate(x)
    dm = layer.device_model()

    def alone(config, seed):  # (G+) of the chip of this seed programmed by itself, as the layer would
        if on_device:
            clip, adc = layer._calibration()
            return program_on_device(layer.weight_matrix().detach(), config, dm, seed, clip, adc,
                                     level_table(dm, config, torch.device("cpu"))).g_pos.numpy()
        return program(lin.weight.detach().double().numpy(), config, seed, device_model=dm).g_pos_S

    chips = [layer.fresh_chip() for _ in range(7)]
    assert [c.ir_exact for c in chips] == [True, False, False, True, False, False, True]
    for k, chip in enumerate(chips):
        seed = fresh_seed(7, k + 1)
        g = chip.g_pos.numpy() if on_device else chip.g_pos_S
        exact, own = alone(cfg, seed), alone(no_wires, seed)
        if chip.ir_exact:
            np.testing.assert_allclose(g, exact, rtol=1e-9, atol=1e-12 * exact.max())
            solved = (own, exact)
        else:
            np.testing.assert_allclose(g, read_through_solve(own, *solved), rtol=1e-12, atol=1e-15)
            assert not np.allclose(g, exact, rtol=1e-6)  # not this chip's own solve
    every_chip = CIMLinear.from_module(lin, cfg.replace(ir_fresh_solve_every=1), seed=7, mode="fresh")
    every_chip.program_on_device = on_device
    every_chip.calibrate(x)
    assert all(every_chip.fresh_chip().ir_exact for _ in range(3))
    with pytest.raises(ConfigError, match="ir_fresh_solve_every = 0: must be a positive integer"):
        cfg.replace(ir_fresh_solve_every=0)


def test_output_gain_calibration_recovers_the_ir_drop_attenuation():
    """Per-output gain calibration on the programmed chip: the gain is the least-squares map of
    the chip's outputs onto the exact digital product, it is in the reference read as well as in
    the fast path, and on a tile with strong wires it brings the outputs closer to the digital
    product; the nn layer calibrates every chip it programs, and says when it cannot."""
    from cimsim.crossbar.mvm_ref import matmul_quantized
    from cimsim.nn import CIMLinear

    rng = np.random.default_rng(3)
    w, x = rng.normal(size=(6, 40)), np.abs(rng.normal(size=(64, 40)))
    cfg = CrossbarConfig(tile_rows=40, tile_cols=48, device="ideal", input_clip=3.0, adc_bits=12, adc_range="full",
                         r_row_segment_ohm=20.0, r_col_segment_ohm=60.0, r_access_ohm=1500.0)
    arr = program(w, cfg, 0)
    target = matmul_quantized(arr, x)
    before = np.linalg.norm(arr.matmul(x) - target)
    y0, w0 = arr.matmul(x), arr.effective_weights()
    gain = arr.calibrate_output_gain(x)
    np.testing.assert_allclose(gain, (y0 * target).sum(0) / (y0 * y0).sum(0), rtol=1e-9)
    assert np.all(gain > 1.05)  # the wires attenuate every output
    after = np.linalg.norm(arr.matmul(x) - target)
    assert after < 0.5 * before
    np.testing.assert_allclose(arr.matmul(x), mvm_reference(arr, x), rtol=1e-6, atol=1e-9)  # the spec applies it too
    np.testing.assert_allclose(arr.effective_weights(), w0 * gain[:, None], rtol=1e-12)
    lin = torch.nn.Linear(40, 6)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
    layer = CIMLinear.from_module(lin, cfg.replace(output_gain_calibration=True), seed=1, mode="chip")
    with pytest.raises(ValueError, match="output_gain_calibration needs the layer's calibration rows"):
        layer.chip()
    layer.calibrate(torch.from_numpy(x).float())
    np.testing.assert_allclose(layer.chip().output_gain, gain, rtol=1e-4)
    assert layer.fresh_chip().output_gain is not None


def test_output_gain_survives_a_state_dict_and_old_checkpoints_still_load():
    """A frozen chip's output gain is saved with it and restored without refitting; the backward's
    cached effective weights follow a refit; a checkpoint written before the read-only fields
    existed (no ir_fresh_solve_every / output_gain_calibration) loads, and those fields may differ."""
    import json

    from cimsim.nn import CIMLinear

    torch.manual_seed(2)
    lin = torch.nn.Linear(30, 5)
    x = torch.rand(40, 30)
    cfg = CrossbarConfig(tile_rows=16, tile_cols=16, device="rram", output_gain_calibration=True, **WIRES)
    layer = CIMLinear.from_module(lin, cfg, seed=3, mode="chip")
    layer.calibrate(x)
    chip = layer.chip()
    gain = chip.output_gain.copy()
    w_before = chip.effective_weights()
    from cimsim.nn.autograd import effective_weight_tensor

    cached = effective_weight_tensor(chip, torch.device("cpu"), torch.float64).clone()
    chip.calibrate_output_gain(x[:7].double().numpy())  # another batch: another gain, and the cache follows
    assert not np.allclose(chip.output_gain, gain)
    np.testing.assert_allclose(effective_weight_tensor(chip, torch.device("cpu"), torch.float64).numpy(),
                               cached.numpy() / gain[:, None] * chip.output_gain[:, None], rtol=1e-9)
    chip.calibrate_output_gain(layer._gain_rows)
    np.testing.assert_allclose(chip.effective_weights(), w_before, rtol=1e-12)
    state = layer.state_dict()
    assert "chip_output_gain" in state
    fresh = CIMLinear.from_module(torch.nn.Linear(30, 5), cfg, seed=3, mode="chip")
    fresh.load_state_dict(state)  # no calibration rows here: the saved gain is kept, not refitted
    np.testing.assert_allclose(fresh.chip().output_gain, gain, rtol=1e-12)
    np.testing.assert_allclose(fresh(x).detach().numpy(), layer(x).detach().numpy(), rtol=1e-6, atol=1e-7)
    old = dict(state)  # as written before the two fields existed
    extra = dict(old["_extra_state"])
    cfg_old = json.loads(extra["config"])
    del cfg_old["ir_fresh_solve_every"], cfg_old["output_gain_calibration"]
    extra["config"] = json.dumps(cfg_old)
    old["_extra_state"] = extra
    other = CIMLinear.from_module(torch.nn.Linear(30, 5), cfg.replace(ir_fresh_solve_every=7), seed=3, mode="chip")
    other.load_state_dict(old)
    with pytest.raises(RuntimeError, match="tile_rows"):
        CIMLinear.from_module(torch.nn.Linear(30, 5), cfg.replace(tile_rows=8), seed=3).load_state_dict(state)


def test_smallest_solve_interval_within_a_step_budget_matches_a_search():
    """The bench's amortisation: the smallest n with (T_solve + (n - 1) T_reuse) / n <= budget,
    against a linear search; 1 when a solve fits the budget, inf when a reused step does not."""
    from cimsim.bench.ir_drop import _solve_every_for

    rng = np.random.default_rng(0)
    for _ in range(200):
        budget, solve, reuse = rng.uniform(0.01, 1.0), rng.uniform(0.01, 20.0), rng.uniform(0.0, 0.99)
        reuse *= budget
        n = next(k for k in range(1, 10 ** 6) if (solve + (k - 1) * reuse) / k <= budget * (1 + 1e-12))
        assert _solve_every_for(budget, solve, reuse) == n
    assert _solve_every_for(1.0, 0.5, 0.2) == 1.0
    assert _solve_every_for(1.0, 5.0, 1.0) == float("inf")


def test_per_step_calibration_reads_the_nominal_chip_through_the_last_solve(monkeypatch):
    """Calibration at every training step (the crossbar backend's ``"batch"`` mode) with
    ir_fresh_solve_every = 3: the nominal chip is solved exactly at calibrations 1, 4, ... and read
    through that solve in between (ADC ranges of the read-through chip, not of an exact solve);
    an ordinary calibration is always exact; without reuse every step would solve."""
    import cimsim.crossbar.circuit as circuit
    from cimsim.crossbar.circuit import read_through_solve
    from cimsim.nn import CIMLinear

    solves = []
    real = circuit.effective_layer_S
    monkeypatch.setattr(circuit, "effective_layer_S", lambda *a, **k: solves.append(1) or real(*a, **k))
    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 4)
    cfg = CrossbarConfig(tile_rows=8, tile_cols=8, device="rram", ir_fresh_solve_every=3, adc_per_column=True, **WIRES)
    layer = CIMLinear.from_module(lin, cfg, seed=7, mode="fresh")
    ideal = layer._device_models()[1]
    rows = torch.rand(64, 12)

    def nominal(config, solved=None):  # the nominal chip of the current weights, calibrated on rows
        arr = program(layer.weight_matrix().detach().double().numpy(), config, 0, device_model=ideal)
        if solved is not None:
            own = program(layer.weight_matrix().detach().double().numpy(), config.replace(**NO_WIRES), 0,
                          device_model=ideal)
            arr.g_pos_S = read_through_solve(own.g_pos_S, *solved[0])
            arr.g_neg_S = read_through_solve(own.g_neg_S, *solved[1])
            arr._cache.clear()
        arr.calibrate(rows.double().numpy())
        return np.asarray(arr.adc_range)

    kept = None
    for step in range(6):
        with torch.no_grad():
            lin_w = layer.weight
            lin_w.add_(0.05 * torch.randn(lin_w.shape, generator=torch.Generator().manual_seed(step)))
        before = len(solves)
        layer.calibrate_rows(rows, reuse_ir_solve=True)
        got = layer.adc_range.double().numpy()
        if step % 3 == 0:
            assert len(solves) == before + 1
            np.testing.assert_allclose(got, nominal(cfg), rtol=1e-9)
            exact = program(layer.weight_matrix().detach().double().numpy(), cfg, 0, device_model=ideal)
            own = program(layer.weight_matrix().detach().double().numpy(), cfg.replace(**NO_WIRES), 0,
                          device_model=ideal)
            kept = ((own.g_pos_S, exact.g_pos_S), (own.g_neg_S, exact.g_neg_S))
        else:
            assert len(solves) == before
            np.testing.assert_allclose(got, nominal(cfg, kept), rtol=1e-9)
            assert not np.allclose(got, nominal(cfg), rtol=1e-6)
    before = len(solves)
    layer.calibrate_rows(rows)  # an ordinary calibration (epoch end, evaluation): exact
    assert len(solves) == before + 1
    np.testing.assert_allclose(layer.adc_range.double().numpy(), nominal(cfg), rtol=1e-9)
    every = CIMLinear.from_module(lin, cfg.replace(ir_fresh_solve_every=1), seed=7, mode="fresh")
    before = len(solves)
    for _ in range(3):
        every.calibrate_rows(rows, reuse_ir_solve=True)
    assert len(solves) == before + 3

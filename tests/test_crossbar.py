"""The crossbar simulator against its float64 reference and against exact integer arithmetic."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cimsim.crossbar.config import ConfigError, CrossbarConfig
from cimsim.device.model import DeviceModel, load_device
from cimsim.kernels import adc_shift_add_tiles
from cimsim.crossbar.mapping import map_weights, quantize_weights, slice_digits, unmap
from cimsim.crossbar.mvm import _adc_shift_add_torch, crossbar_matmul, make_plan
from cimsim.crossbar.mvm_ref import matmul_quantized, mvm_reference
from cimsim.crossbar.program import program

EXACT = dict(adc_bits=24, adc_range="full")


def _layer(rng, n_out, n_in, batch, signed=True):
    w = rng.normal(size=(n_out, n_in))
    x = rng.normal(size=(batch, n_in)) if signed else np.abs(rng.normal(size=(batch, n_in)))
    return w, x


@st.composite
def exact_cases(draw):
    weight_bits = draw(st.integers(1, 8))
    cfg = CrossbarConfig(
        tile_rows=draw(st.integers(1, 24)),
        weight_bits=weight_bits,
        bits_per_cell=draw(st.integers(1, weight_bits)),
        input_bits=draw(st.integers(1, 8)),
        dac=draw(st.sampled_from(["multibit", "bit_serial"])),
        adc_convert=draw(st.sampled_from(["differential", "separate"])),
        weight_scale=draw(st.sampled_from(["layer", "column"])),
        slice_align=draw(st.sampled_from(["lsb", "msb"])),
        input_clip=draw(st.sampled_from([None, 0.5, 2.0])),
        **EXACT,
    )
    shape = (draw(st.integers(1, 6)), draw(st.integers(1, 40)), draw(st.integers(1, 4)))
    return cfg, shape, draw(st.integers(0, 2**31 - 1))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(exact_cases())
def test_ideal_device_reproduces_quantized_matmul_exactly(case):
    cfg, (n_out, n_in, batch), seed = case
    rng = np.random.default_rng(seed)
    w, x = _layer(rng, n_out, n_in, batch)
    arr = program(w, cfg, seed)
    arr.calibrate(x)  # input clip from the batch when the config leaves it open
    expect = matmul_quantized(arr, x)
    assert np.array_equal(arr.matmul(x), expect)
    assert np.array_equal(arr.matmul(x, kernel="torch"), expect)
    assert np.array_equal(mvm_reference(arr, x), expect)
    lsb = program(w, cfg.replace(slice_align="lsb"), seed).mapped  # the same weights, however sliced
    assert np.array_equal(arr.mapped.w_int * arr.scale[:, None], lsb.w_int * lsb.scale[:, None])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(["multibit", "bit_serial"]))
def test_sliced_equals_unsliced_and_tiled_equals_untiled(seed, dac):
    rng = np.random.default_rng(seed)
    w, x = _layer(rng, 5, 50, 3)
    base = CrossbarConfig(weight_bits=6, bits_per_cell=6, tile_rows=256, dac=dac, input_clip=2.0, **EXACT)
    y0 = program(w, base).matmul(x)
    for bpc, align in ((1, "lsb"), (2, "lsb"), (3, "lsb"), (4, "lsb"), (4, "msb"), (5, "msb")):
        for rows in (7, 16, 50):
            y = program(w, base.replace(bits_per_cell=bpc, slice_align=align, tile_rows=rows)).matmul(x)
            assert np.array_equal(y, y0)


def test_negated_weights_negate_output_and_zero_input_gives_zero():
    rng = np.random.default_rng(1)
    w, x = _layer(rng, 7, 33, 4)
    cfg = CrossbarConfig(tile_rows=10, input_clip=2.0, **EXACT)
    y = program(w, cfg).matmul(x)
    assert np.array_equal(program(-w, cfg).matmul(x), -y)
    assert np.array_equal(program(w, cfg).matmul(np.zeros_like(x)), np.zeros_like(y))


def test_mapping_round_trip_and_digits():
    cfg = CrossbarConfig(weight_bits=8, bits_per_cell=2)
    w = np.array([[255.0, -1.0, 0.0, -128.0]])
    w_int, scale = quantize_weights(w, cfg)
    assert w_int.tolist() == [[255, -1, 0, -128]] and scale[0] == 1.0
    assert slice_digits(np.array([255, 6]), 2, 4).T.tolist() == [[3, 3, 3, 3], [2, 1, 0, 0]]
    m = map_weights(w, cfg)
    levels = np.linspace(0, 3e-6, 4)
    lv = levels[m.digits_pos] - levels[m.digits_neg]
    assert np.allclose(unmap(levels[m.digits_pos], levels[m.digits_neg], levels, m.scale, 2), w)
    assert lv.shape == (4, 4, 1)


def _test_device(**kw) -> DeviceModel:
    base = dict(name="t", gmin_S=1e-6, gmax_S=40e-6, times_s=(0.0,), sigma_poly_uS=((0.02, 0.5),))
    base.update(kw)
    return DeviceModel(**base)


@pytest.mark.parametrize("convert", ["differential", "separate"])
@pytest.mark.parametrize("dac", ["multibit", "bit_serial"])
def test_fast_path_matches_reference_with_variation(convert, dac):
    rng = np.random.default_rng(2)
    w, x = _layer(rng, 6, 45, 3)
    cfg = CrossbarConfig(tile_rows=16, adc_bits=7, adc_convert=convert, dac=dac, input_bits=5, input_clip=1.5,
                         adc_range="calibrated", adc_percentile=99.0)
    arr = program(w, cfg, 3, device_model=_test_device())
    arr.calibrate(x)
    ref = mvm_reference(arr, x)
    for kernel in ("numba", "torch"):
        y = arr.matmul(x, kernel=kernel, dtype=torch.float64)
        assert np.allclose(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["neurram", "rram1"])
def test_programming_statistics_match_device_model(name):
    """Mean and std of outputs over 2000 programmed copies equal the device model's prediction (5 %).

    neurram: a smooth sigma(G) on a range moved to start at 10 uS, so that no sample meets the
    conductance floor (which biases the mean, as on a real chip); rram1: per-level spreads (the
    NeFT paper's RRAM1, no floor)."""
    dev = load_device(name)
    if name == "neurram":
        dev = dev.replace(gmin_S=10e-6)
    rng = np.random.default_rng(4)
    w, x = _layer(rng, 4, 24, 2, signed=False)
    cfg = CrossbarConfig(tile_rows=8, input_clip=float(x.max()), **EXACT)
    arr0 = program(w, cfg, 0, device_model=dev)
    ideal = matmul_quantized(arr0, x)
    # prediction: y = a * sum_k base^k sum_i x_i (G+ - G-)/step with independent cells
    from cimsim.crossbar.mapping import conductance_targets, quantize_inputs

    def cell_var(targets):
        _, scale, df = dev.programming_params(targets, cfg.read_time_s)
        t_var = np.divide(df, df - 2, out=np.ones_like(df), where=np.isfinite(df))  # Student-t variance factor
        return scale**2 * t_var

    tp, tn = conductance_targets(arr0.mapped, arr0.levels_S)
    var_cell = (cell_var(tp) + cell_var(tn)) / arr0.step_S**2
    sig = (4.0 ** np.arange(cfg.n_slices))[:, None, None]
    xi = quantize_inputs(x, cfg.input_clip, cfg.input_bits).astype(float)
    a = arr0.scale * cfg.input_clip / cfg.x_max_int
    pred_std = np.sqrt(np.einsum("bi,kio->bo", xi**2, sig**2 * var_cell)) * a
    # 2000 programmings at once: the layer repeated 2000 times, each copy on its own cells (cells
    # are independent draws, and the full-range ADC does not depend on the weights)
    reps = 2000
    ys = program(np.tile(w, (reps, 1)), cfg, 1, device_model=dev).matmul(x)
    ys = ys.reshape(len(x), reps, len(w)).transpose(1, 0, 2)
    # unbiased: every output's mean within 4 standard errors (8 outputs: a false alarm ~5e-4)
    assert np.all(np.abs(ys.mean(0) - ideal) <= 4 * ys.std(0) / np.sqrt(len(ys)))
    assert np.allclose(ys.std(0), pred_std, rtol=0.05)


def test_msb_aligned_slices_halve_the_weight_error_of_8_bits_on_3_bit_cells():
    """8-bit magnitudes on 3-bit cells: LSB-first slicing leaves the top slice 2 bits wide at
    significance 64; aligned to the MSB the slices weigh 1/2, 4, 32 (in 8-bit steps). With the same
    spread on every cell (both sides of each pair), the weight error's std is
    sqrt(2 sum sig_k^2) sigma / step: exactly half. The same quantized weights, the same cells."""
    dev = _test_device(sigma_poly_uS=((0.4,),))  # 0.4 uS on every level
    w = np.random.default_rng(8).normal(size=(64, 200))
    arrs = {a: program(w, CrossbarConfig(weight_bits=8, bits_per_cell=3, slice_align=a, **EXACT), 3, device_model=dev)
            for a in ("lsb", "msb")}
    assert arrs["msb"].config.pad_bits == 1 and arrs["lsb"].config.pad_bits == 0
    assert np.array_equal(arrs["msb"].mapped.w_int, arrs["lsb"].mapped.w_int * 2)
    assert np.array_equal(arrs["msb"].scale * 2, arrs["lsb"].scale)
    errs = {}
    for align, arr in arrs.items():
        step_8bit = arr.scale[0] * (1 << arr.config.pad_bits)  # one step of the 8-bit weight
        sig = 8.0 ** np.arange(3) / (1 << arr.config.pad_bits)  # slice significance in 8-bit steps
        pred = np.sqrt(2 * (sig**2).sum()) * 0.4e-6 / np.diff(arr.levels_S).mean() * step_8bit
        errs[align] = (arr.effective_weights() - arr.mapped.w_int * arr.scale[:, None]).std()
        assert errs[align] == pytest.approx(pred, rel=0.03)
    assert errs["msb"] / errs["lsb"] == pytest.approx(0.5, rel=0.04)


def test_read_noise_column_current_matches_per_cell_draws():
    """One GEMM on squared inputs gives the same output distribution as per-cell read noise."""
    dev = _test_device(sigma_poly_uS=((0.0,),), read_noise_poly_uS=(0.05, 0.3))
    rng = np.random.default_rng(5)
    w, x = _layer(rng, 3, 12, 1)
    cfg = CrossbarConfig(tile_rows=6, input_clip=2.0, read_noise=True, **EXACT)
    arr = program(w, cfg, 0, device_model=dev)
    xs = np.repeat(x, 1500, axis=0)  # 1500 reads of one input, each with its own read noise
    fast = arr.matmul(xs)
    ref = mvm_reference(arr, xs, np.random.default_rng(6))
    assert np.allclose(fast.mean(0), ref.mean(0), atol=0.1 * ref.std(0).max())
    assert np.allclose(fast.std(0), ref.std(0), rtol=0.08)
    assert ref.std(0).min() > 0


def test_read_noise_is_fresh_per_read_and_replays_per_chip():
    dev = _test_device(read_noise_poly_uS=(0.5,))
    w, x = _layer(np.random.default_rng(7), 3, 20, 2)
    cfg = CrossbarConfig(input_clip=2.0, read_noise=True, **EXACT)
    a, b = program(w, cfg, 11, device_model=dev), program(w, cfg, 11, device_model=dev)
    ya1, ya2 = a.matmul(x), a.matmul(x)
    assert not np.array_equal(ya1, ya2)
    assert np.array_equal(b.matmul(x), ya1)


def test_same_seed_same_chip_different_seed_differs():
    w, _ = _layer(np.random.default_rng(8), 4, 30, 1)
    cfg = CrossbarConfig(device="neurram")
    assert np.array_equal(program(w, cfg, 5).g_pos_S, program(w, cfg, 5).g_pos_S)
    assert not np.array_equal(program(w, cfg, 5).g_pos_S, program(w, cfg, 6).g_pos_S)


@pytest.mark.parametrize("convert", ["differential", "separate"])
def test_adc_error_at_most_half_lsb_when_nothing_clips(convert):
    rng = np.random.default_rng(9)
    C, B, n_out, G = 2, 5, 7, 3
    P = (rng.normal(size=(C * B, G * n_out)) * 20).astype(np.float32)
    if convert == "separate":
        P = np.abs(P)
    lsb = rng.uniform(0.3, 2.0, G * n_out).astype(np.float32)
    lo, hi = (-(2**20), 2**20) if convert == "differential" else (0, 2**21)
    for g in range(G):
        for c in range(C):
            colw, cycw = np.zeros(G), np.zeros(C)
            colw[g], cycw[c] = 1.0, 1.0
            acc = np.zeros((B, n_out))
            adc_shift_add_tiles(P[None], np.zeros((0, 0, 0), np.int16), np.zeros(G * n_out, np.float32), 0, 0,
                                C, B, n_out, lsb, lo, hi, colw, cycw, 1.0, acc)
            exact = P[c * B:(c + 1) * B, g * n_out:(g + 1) * n_out]
            assert np.all(np.abs(acc - exact) <= 0.5 * lsb[g * n_out:(g + 1) * n_out] * (1 + 1e-6))


def test_torch_and_numba_adc_agree_and_clip():
    rng = np.random.default_rng(10)
    w, x = _layer(rng, 5, 40, 6)
    cfg = CrossbarConfig(adc_bits=4, adc_range="calibrated", adc_percentile=90.0, tile_rows=16, device="neurram")
    arr = program(w, cfg, 0)
    arr.calibrate(x)
    y_numba, y_torch = arr.matmul(x, kernel="numba"), arr.matmul(x, kernel="torch")
    assert np.allclose(y_numba, y_torch, rtol=0, atol=1e-6 * np.abs(y_torch).max())  # float32 GEMMs
    assert np.array_equal(arr.matmul(x, kernel="numba", dtype=torch.float64),
                          arr.matmul(x, kernel="numba", dtype=torch.float64))
    # a 4-bit ADC at the 90th percentile clips: the result differs from the unclipped one
    wide = program(w, cfg.replace(adc_bits=16, adc_percentile=100.0), 0)
    wide.calibrate(x)
    assert not np.allclose(arr.matmul(x), wide.matmul(x))


def test_calibrated_range_is_the_percentile_of_partial_sums():
    rng = np.random.default_rng(11)
    w, x = _layer(rng, 8, 64, 32, signed=False)
    cfg = CrossbarConfig(tile_rows=32, adc_percentile=95.0, adc_per_column=True)
    arr = program(w, cfg, 0)
    arr.calibrate(x)
    assert arr.adc_range.shape == (cfg.n_slices, 8)
    from cimsim.crossbar.mvm import partial_sums

    ps = partial_sums(arr, x)
    frac_above = (ps > arr.adc_range[:, None, :]).mean()
    assert 0.03 < frac_above < 0.07
    for k in range(arr.n_groups):  # one group at a time (what calibrate uses) gives the same sums
        np.testing.assert_allclose(partial_sums(arr, x, k), ps[k], rtol=1e-6)
    full = program(w, cfg.replace(adc_range="full"), 0)
    assert np.all(full.adc_lsb() >= 1.0)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), q=st.sampled_from([50.0, 95.0, 99.0, 99.99, 100.0]),
       per_column=st.booleans(), signed=st.booleans(), serial=st.booleans(), rows=st.sampled_from([8, 16, 40]),
       batch=st.integers(1, 37))
def test_calibration_in_parts_equals_the_percentile_of_all_partial_sums(seed, q, per_column, signed, serial, rows,
                                                                         batch):
    """A batch too large for CALIBRATION_BYTES is read in parts that keep only their largest sums:
    the ranges equal numpy's percentile of every partial sum (both DAC phases counted for the
    whole batch when any input is negative, as one read of it does)."""
    import cimsim.crossbar.mvm as mvm

    rng = np.random.default_rng(seed)
    w, x = _layer(rng, 6, 40, batch, signed=signed)
    if signed:
        x[: batch // 2] = np.abs(x[: batch // 2])  # some parts have no negative input
    cfg = CrossbarConfig(tile_rows=rows, adc_percentile=q, adc_per_column=per_column,
                         dac="bit_serial" if serial else "multibit")
    arr = program(w, cfg, seed)
    arr.calibrate(x)  # the whole batch in one part
    whole = arr.adc_range.copy()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mvm, "CALIBRATION_BYTES", int(rng.integers(200, 3000)))
        arr.calibrate(x)
    np.testing.assert_allclose(arr.adc_range, whole, rtol=1e-6, atol=0)


def test_drift_compensation_restores_output_scale():
    rng = np.random.default_rng(12)
    w, x = _layer(rng, 16, 64, 8, signed=False)
    cfg = CrossbarConfig(device="pcm_joshi", read_time_s=1e6, input_clip=float(x.max()), adc_bits=16,
                         adc_range="full", sigma_scale=0.0)
    ideal = matmul_quantized(program(w, cfg, 0), x)
    drifted = program(w, cfg, 0).matmul(x)
    comp = program(w, cfg.replace(drift_compensation=True), 0).matmul(x)
    ratio = lambda y: np.sum(np.abs(y)) / np.sum(np.abs(ideal))  # noqa: E731
    assert ratio(drifted) < 0.8
    assert abs(ratio(comp) - 1) < 0.05


def test_plan_respects_batch_blocks(monkeypatch):
    import cimsim.crossbar.mvm as mvm

    rng = np.random.default_rng(13)
    w, x = _layer(rng, 5, 30, 9)
    cfg = CrossbarConfig(dac="bit_serial", input_clip=2.0, tile_rows=8, **EXACT)
    y = program(w, cfg).matmul(x)
    monkeypatch.setattr(mvm, "BLOCK_BYTES", 64)  # forces one batch row per block
    assert np.array_equal(program(w, cfg).matmul(x), y)
    assert make_plan(program(w, cfg)).G.shape == (4, 8, cfg.n_slices * 5)  # 30 rows on 4 padded tiles of 8


def test_torch_twins_of_kernels_match_numba():
    from cimsim import kernels
    from cimsim.crossbar.mvm import _drive_torch

    rng = np.random.default_rng(14)
    arr = program(rng.normal(size=(4, 10)), CrossbarConfig(adc_bits=5, adc_range="full", tile_rows=4))
    plan = make_plan(arr)
    C, B = 2, 3
    P = torch.from_numpy((rng.normal(size=(plan.n_tiles, C * B, plan.G.shape[2])) * 50).astype(np.float32))
    cycw = torch.tensor([1.0, 2.0], dtype=torch.float64)
    a_t = torch.zeros(B, 4, dtype=torch.float64)
    _adc_shift_add_torch(P, C, B, 4, plan, cycw, -1.0, a_t)
    a_n = np.zeros((B, 4))
    no_var = np.zeros((0, 0, 0), np.int16)
    kernels.adc_shift_add_tiles(P.numpy(), no_var, np.zeros_like(plan.lsb.numpy()), 0, 0, C, B, 4, plan.lsb.numpy(),
                                plan.lo, plan.hi, plan.colw.numpy(), cycw.numpy(), -1.0, a_n)
    assert np.allclose(a_t.numpy(), a_n)
    for dac in ("multibit", "bit_serial"):
        cfg = CrossbarConfig(dac=dac, input_bits=3)
        x = rng.normal(size=(B, 10))
        shape = (3, cfg.n_cycles * B, 4)  # 10 inputs on 3 row tiles of 4
        pos, neg = np.full(shape, 9, np.float32), np.full(shape, 9, np.float32)
        n_neg = kernels.dac_drive(x, 1.0 / 1.3, 7.0, cfg.n_cycles, 4, pos, neg, True)
        tp, tn, any_neg = _drive_torch(torch.from_numpy(x), 1.3, cfg, 3, 4, torch.float32)
        assert np.array_equal(pos, tp.numpy()) and np.array_equal(neg, tn.numpy())
        assert (n_neg > 0) == any_neg == (x < -0.5 * 1.3 / 7).any()


@pytest.fixture(scope="module")
def read_normals():
    """4 M of the counter-based normals the ADC kernel adds read noise with (seed 123)."""
    from cimsim import kernels

    z = np.empty(1 << 22)
    kernels.standard_normals(123, z)
    return z


def test_counter_based_normals_are_standard_normal(read_normals):
    """Moments, KS, a fine histogram and the tail frequencies of N(0, 1), each within ~5 standard errors."""
    from scipy import stats

    z = read_normals
    n = z.size
    assert np.isfinite(z).all()
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / n)
    assert abs(stats.skew(z)) < 5 * np.sqrt(6 / n)
    assert abs(stats.kurtosis(z)) < 5 * np.sqrt(24 / n)
    assert stats.kstest(z[:1 << 20], "norm").pvalue > 1e-3
    # a histogram fine enough (0.04 wide) to see a density distorted within the table's segments
    edges = np.concatenate([[-np.inf], np.linspace(-4, 4, 201), [np.inf]])
    counts = np.histogram(z, edges)[0]
    expect = n * np.diff(stats.norm.cdf(edges))
    assert stats.chisquare(counts, expect).pvalue > 1e-3
    for t in (3.0, 3.5, 4.0, 4.5):  # beyond a = 3.668 the draws come from the exact tail sampler
        p = 2 * stats.norm.sf(t)
        assert abs((np.abs(z) > t).sum() - n * p) < 5 * np.sqrt(n * p), t


def test_counter_based_normal_tails_are_exact(read_normals):
    """Beyond a (1 draw in 4096) the normals are the Gaussian tail: |z| | |z| > a is N(0,1) truncated at a."""
    from scipy import stats

    from cimsim import kernels

    a = kernels._ICDF_A
    assert abs(a - stats.norm.isf(2.0**-13)) < 1e-12
    tail = np.abs(read_normals[np.abs(read_normals) > a])
    n, p = read_normals.size, 2.0**-12
    assert abs(tail.size - n * p) < 5 * np.sqrt(n * p)
    sf_a = stats.norm.sf(a)
    assert stats.kstest(tail, lambda x: 1 - stats.norm.sf(x) / sf_a).pvalue > 1e-3
    assert abs((read_normals[np.abs(read_normals) > a] > 0).mean() - 0.5) < 5 * 0.5 / np.sqrt(tail.size)


def test_counter_based_normals_body_is_the_inverse_cdf():
    """The table path: z = sign * Q^-1((u + 1/2) / 2^31) within 4e-6 for every 31-bit u above the tail."""
    from numba import njit
    from scipy import special

    from cimsim import kernels

    icdf = njit(lambda w: np.array([kernels._icdf_word(v) for v in w]))
    rng = np.random.default_rng(0)
    u = np.concatenate([rng.integers(2**19, 2**31, 200_000), 2**19 + np.arange(1000), 2**31 - 1 - np.arange(1000),
                        (2.0 ** np.arange(19, 31)).astype(np.int64)])
    sign = rng.integers(0, 2, u.size)
    z = icdf((u | (sign << 31)).astype(np.uint32))
    exact = np.sqrt(2.0) * special.erfcinv((u + 0.5) / 2.0**31) * (1 - 2 * sign)
    assert np.max(np.abs(z - exact)) < 4e-6
    assert np.isnan(icdf(np.array([0, 2**19 - 1, 2**31, 2**31 + 2**19 - 1], np.uint32))).all()  # tail words


def test_counter_based_normals_have_no_serial_correlation(read_normals):
    """Consecutive counters (including the two halves of one hash) are uncorrelated, in value and magnitude."""
    z = read_normals
    tol = 5 / np.sqrt(z.size // 2)
    for x, y in ((z[:-1], z[1:]), (z[0::2], z[1::2]), (z[1:-1:2], z[2::2]), (z[:-2], z[2:])):
        assert abs(np.corrcoef(x, y)[0, 1]) < tol
        assert abs(np.corrcoef(x * x, y * y)[0, 1]) < tol
        assert abs(np.mean(np.sign(x) == np.sign(y)) - 0.5) < tol / 2


def test_counter_based_normals_do_not_depend_on_threads_or_blocks(read_normals):
    """Normal n of a seed is the same on 1 or all threads, and in the ADC kernel's odd-sized, odd-offset blocks."""
    import numba

    from cimsim import kernels

    z1 = np.empty(20_000)
    n_threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        kernels.standard_normals(123, z1)
    finally:
        numba.set_num_threads(n_threads)
    assert np.array_equal(z1, read_normals[:z1.size])
    z2 = np.empty(z1.size)
    kernels.standard_normals(124, z2)
    assert not np.allclose(z1, z2)
    # the ADC kernel with P = 0, unit noise variance and a fine ADC reads the normals back, rounded
    T, C, B, n_out, G, offset = 2, 3, 5, 7, 1, 1001
    P = np.zeros((T, C * B, G * n_out), np.float32)
    V = np.zeros(P.shape, np.int16)
    lsb = np.full(G * n_out, 2.0**-20, np.float32)
    zs = read_normals[offset:offset + P.size].reshape(P.shape)
    for c in range(C):
        cycw = np.zeros(C)
        cycw[c] = 1.0
        acc = np.zeros((B, n_out))
        adc_shift_add_tiles(P, V, np.ones(G * n_out, np.float32), 123, offset, C, B, n_out, lsb, -(2**40), 2**40,
                            np.ones(G), cycw, 1.0, acc)
        assert np.allclose(acc, zs[:, c * B:(c + 1) * B].sum(0), rtol=0, atol=T * 2.0**-20)


def test_read_noise_numba_and_torch_paths_agree_in_distribution():
    dev = _test_device(sigma_poly_uS=((0.0,),), read_noise_poly_uS=(0.05, 0.3))
    rng = np.random.default_rng(16)
    w, x = _layer(rng, 4, 40, 2)
    cfg = CrossbarConfig(tile_rows=16, input_clip=2.0, read_noise=True, output_noise=0.5, dac="bit_serial",
                         input_bits=4, **EXACT)
    arr = program(w, cfg, 0, device_model=dev)
    a = np.stack([arr.matmul(x, kernel="numba") for _ in range(800)])
    b = np.stack([arr.matmul(x, kernel="torch") for _ in range(800)])
    assert np.allclose(a.mean(0), b.mean(0), atol=0.15 * b.std(0).max())
    assert np.allclose(a.std(0), b.std(0), rtol=0.1)


def test_config_validation_and_round_trip(tmp_path):
    with pytest.raises(ConfigError, match="adc_bits"):
        CrossbarConfig(adc_bits=0)
    with pytest.raises(ConfigError, match="bits_per_cell"):
        CrossbarConfig(weight_bits=4, bits_per_cell=5)
    with pytest.raises(ConfigError, match="bits_per_cell"):
        CrossbarConfig(device="rram1", bits_per_cell=3)
    with pytest.raises(ConfigError, match="dac"):
        CrossbarConfig(dac="pwm")
    with pytest.raises(ConfigError, match="adc_fixed_range"):
        CrossbarConfig(adc_range="fixed")
    with pytest.raises(ConfigError, match="slice_align"):
        CrossbarConfig(slice_align="middle")
    cfg = CrossbarConfig(tile_rows=128, dac="bit_serial", input_clip=None, sigma_scale=0.3, device="rram1")
    for suffix in (".toml", ".json"):
        assert CrossbarConfig.load(cfg.save(tmp_path / f"c{suffix}")) == cfg
    (tmp_path / "bad.toml").write_text("tile_rows = 4\nfoo = 1\n")
    with pytest.raises(ConfigError, match="foo"):
        CrossbarConfig.load(tmp_path / "bad.toml")
    assert cfg.n_slices == 4 and cfg.partial_products_floor() == 32
    assert CrossbarConfig(adc_convert="separate").partial_products_floor(signed_inputs=True) == 16


def test_numpy_front_end_accepts_vectors():
    rng = np.random.default_rng(15)
    w, x = _layer(rng, 3, 9, 1)
    arr = program(w, CrossbarConfig(input_clip=2.0, **EXACT))
    assert np.array_equal(crossbar_matmul(arr, x[0]), arr.matmul(x)[0])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(1, 8), st.sampled_from(["layer", "column"]), st.sampled_from(["lsb", "msb"]),
       st.integers(0, 2**31 - 1))
def test_torch_twin_of_the_mapping_equals_numpy(weight_bits, bits_per_cell, weight_scale, slice_align, seed):
    """mapping.quantize_weights_torch / digit_pairs_torch reproduce map_weights digit for digit."""
    from cimsim.crossbar.mapping import digit_pairs_torch, quantize_weights_torch

    bits_per_cell = min(bits_per_cell, weight_bits)
    cfg = CrossbarConfig(weight_bits=weight_bits, bits_per_cell=bits_per_cell, weight_scale=weight_scale,
                         slice_align=slice_align)
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(5, 7)) * (rng.random((5, 1)) > 0.2)  # some all-zero rows
    mapped = map_weights(w, cfg)
    w_int, scale = quantize_weights_torch(torch.from_numpy(w), weight_bits, weight_scale == "column", cfg.pad_bits)
    assert np.array_equal(w_int.numpy(), mapped.w_int)
    assert np.allclose(scale.expand(5).numpy(), mapped.scale, rtol=0, atol=0)
    d_pos, d_neg = digit_pairs_torch(w_int.T, bits_per_cell, cfg.n_slices)
    assert np.array_equal(d_pos.numpy(), mapped.digits_pos) and np.array_equal(d_neg.numpy(), mapped.digits_neg)

"""Tests of cimsim.device.model: sampling statistics against the parameters, reproducible seeds, exact
JSON round trips, the shipped presets, and errors for bad device-model JSON."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cimsim.device.model import (
    PRESET_DIR, ClippedLogLinear, DeviceModel, DeviceModelError, LevelFit, PowerLawDrift, load_device,
    preset_names,
)

US = 1e-6


def leveled_model(**kw) -> DeviceModel:
    """Two read times, three levels (0, 20, 40 uS): normal and Student-t levels with known parameters."""
    levels = (0.0, 20e-6, 40e-6)
    fits = []
    for t, grow in ((1.0, 1.0), (100.0, 2.0)):
        fits += [
            LevelFit(level=0, t_s=t, target_S=levels[0], n=100, mean_shift_S=0.5 * US * grow, sigma_S=0.4 * US * grow,
                     robust_sigma_S=0.4 * US * grow),
            LevelFit(level=1, t_s=t, target_S=levels[1], n=100, mean_shift_S=-0.3 * US * grow,
                     sigma_S=2.0 * US * grow * math.sqrt(5 / 3), robust_sigma_S=2.0 * US, family="student-t",
                     scale_S=2.0 * US * grow, df=5.0, ks=0.02),
            LevelFit(level=2, t_s=t, target_S=levels[2], n=100, mean_shift_S=-1.0 * US * grow, sigma_S=1.0 * US * grow,
                     robust_sigma_S=1.0 * US * grow),
        ]
    base = dict(name="test", gmin_S=0.0, gmax_S=40e-6, times_s=(1.0, 100.0), levels_S=levels,
                sigma_poly_uS=((0.01, 1.0), (0.02, 2.0)), shift_poly_uS=((0.0,), (-0.5,)), level_fits=tuple(fits),
                g_floor_S=None, provenance={"test": True})
    base.update(kw)
    return DeviceModel(**base)


# ------------------------------------------------------------------------- sampling
def test_sampling_statistics_match_level_parameters():
    m = leveled_model()
    rng = np.random.default_rng(0)
    n = 200_000
    for t, grow in ((1.0, 1.0), (100.0, 2.0)):
        for k, lf in enumerate(lf for lf in m.level_fits if lf.t_s == t):
            g = m.sample(np.full(n, m.levels_S[k]), t, rng)
            err = (g - lf.target_S) / US
            assert err.mean() == pytest.approx(lf.mean_shift_S / US, abs=0.02 * grow + 3 * lf.sigma_S / US / math.sqrt(n))
            assert err.std() == pytest.approx(lf.sigma_S / US, rel=0.02)
            if lf.family == "student-t":  # heavy tails: kurtosis of t5 is 9 (excess 6)
                z = (err - err.mean()) / err.std()
                assert np.mean(z**4) > 6
            else:
                assert np.quantile(err, 0.75) - np.quantile(err, 0.25) == pytest.approx(1.349 * lf.sigma_S / US, rel=0.02)


def test_sampling_off_level_uses_smooth_polynomials():
    m = leveled_model()
    tg = np.full(100_000, 10e-6)  # between levels 0 and 1
    g = m.sample(tg, 1.0, np.random.default_rng(1))
    assert (g - tg).mean() / US == pytest.approx(0.0, abs=0.02)
    assert (g - tg).std() / US == pytest.approx(0.01 * 10 + 1.0, rel=0.02)


def test_time_interpolation_in_log_time():
    m = leveled_model()
    t_mid = math.sqrt((1.0 + 1e-3) * (100.0 + 1e-3)) - 1e-3  # halfway on the log10(t + 1 ms) axis
    shift, scale, df = m.programming_params(np.array([0.0, 40e-6]), t_mid)
    np.testing.assert_allclose(shift / US, [0.75, -1.5], rtol=1e-9)
    np.testing.assert_allclose(scale / US, [0.6, 1.5], rtol=1e-9)
    assert np.all(np.isinf(df))
    # held constant outside the measured range
    np.testing.assert_allclose(m.programming_params(np.array([0.0]), 1e6)[0], m.programming_params(np.array([0.0]), 100.0)[0])
    np.testing.assert_allclose(m.programming_params(np.array([0.0]), 0.0)[0], m.programming_params(np.array([0.0]), 1.0)[0])


def test_sigma_scale_and_floor():
    m = leveled_model(sigma_scale=0.5, g_floor_S=0.0)
    g = m.sample(np.full(100_000, 40e-6), 1.0, np.random.default_rng(2))
    assert (g - 40e-6).std() / US == pytest.approx(0.5, rel=0.02)
    g0 = m.sample(np.zeros(10_000), 100.0, np.random.default_rng(3))
    assert g0.min() >= 0.0


def test_stuck_fractions_and_read_noise():
    m = leveled_model(stuck_at_gmin=0.1, stuck_at_gmax=0.05, read_noise_poly_uS=(0.01, 0.2))
    g = m.sample(np.full(200_000, 20e-6), 1.0, np.random.default_rng(4))
    assert np.mean(g == 0.0) == pytest.approx(0.1, abs=0.003)
    assert np.mean(g == 40e-6) == pytest.approx(0.05, abs=0.003)
    r = m.read(np.full(200_000, 20e-6), np.random.default_rng(5))
    assert (r - 20e-6).std() / US == pytest.approx(0.01 * 20 + 0.2, rel=0.02)
    assert m.read_sigma_S(np.array(0.0)) == pytest.approx(0.2e-6)


def test_drift_power_law():
    m = load_device("pcm_joshi")
    g0 = np.full(50_000, 20e-6)
    rng = np.random.default_rng(6)
    g = m.apply_drift(g0, 2000.0, rng)
    nu = -np.log(g / g0) / np.log(2000.0 / 20.0)
    gn = 20.0 / 25.0
    assert nu.mean() == pytest.approx(np.clip(-0.0155 * np.log(gn) + 0.0244, 0.049, 0.1), rel=0.02)
    assert np.array_equal(m.apply_drift(g0, 10.0, rng), g0)  # before t0: no drift


def test_seeds_reproducible():
    m = leveled_model(stuck_at_gmin=0.01)
    tg = np.tile(np.array(m.levels_S), 1000).reshape(30, 100)
    a = m.sample(tg, 3.0, np.random.default_rng(42))
    b = m.sample(tg, 3.0, np.random.default_rng(42))
    c = m.sample(tg, 3.0, np.random.default_rng(43))
    assert a.shape == tg.shape
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_ideal_model_is_exact():
    m = leveled_model().ideal()
    tg = np.array(m.levels_S)
    assert m.is_ideal
    assert np.array_equal(m.sample(tg, 1.0, np.random.default_rng(0)), tg)
    assert np.array_equal(m.read(tg, np.random.default_rng(0)), tg)


def test_level_conductances_and_index():
    m = load_device("neurram")
    np.testing.assert_allclose(m.level_conductances(4), np.linspace(1e-6, 40e-6, 4))
    lm = leveled_model()
    np.testing.assert_array_equal(lm.level_index(np.array([1e-6, 19e-6, 31e-6])), [0, 1, 2])
    with pytest.raises(DeviceModelError, match="at least that many"):
        lm.level_conductances(4)


# ----------------------------------------------------------------------------- JSON
@pytest.mark.parametrize("name", preset_names())
def test_presets_load_and_round_trip(name, tmp_path):
    m = load_device(name)
    assert m == load_device(PRESET_DIR / f"{name}.json")
    assert DeviceModel.from_dict(m.to_dict()) == m
    assert DeviceModel.from_dict(json.loads(m.to_json())) == m
    back = DeviceModel.load(m.save(tmp_path / f"{name}.json"))
    assert back == m and back.level_fits == m.level_fits
    assert back.to_json() == m.to_json()
    g = m.sample(np.full(1000, m.gmax_S / 2), 1.0, np.random.default_rng(0))
    assert np.all(np.isfinite(g))


def test_expected_presets_exist():
    assert {"neurram", "pcm_joshi", "rram1", "rram4", "fefet2", "fefet6"} <= set(preset_names())


def test_round_trip_exact_with_everything(tmp_path):
    m = leveled_model(read_noise_poly_uS=(1e-3, 0.21), stuck_at_gmin=1 / 3, stuck_at_gmax=0.1,
                      drift=PowerLawDrift(20.0, ClippedLogLinear(-0.0155, 0.0244, 0.049, 0.1),
                                          ClippedLogLinear(-0.0125, -0.0059, 0.008, 0.045)),
                      sigma_scale=0.7, technology="x", citation="y")
    assert DeviceModel.from_dict(m.to_dict()) == m
    back = DeviceModel.load(m.save(tmp_path / "m.json"))
    assert back == m and back.drift == m.drift and back.provenance == {"test": True}


# ---------------------------------------------------------------------- bad JSON
def test_bad_json_errors(tmp_path):
    good = leveled_model().to_dict()
    p = tmp_path / "m.json"
    with pytest.raises(DeviceModelError, match="no such device model file"):
        DeviceModel.load(p)
    p.write_text("{not json")
    with pytest.raises(DeviceModelError, match="not valid JSON"):
        DeviceModel.load(p)
    for change, pattern in [
        ({"kind": "something"}, "not a cimsim device model"),
        ({"schema_version": 99}, "schema_version 99"),
        ({"gmax_S": -1.0}, "gmin_S < gmax_S"),
        ({"times_s": [100.0, 1.0]}, "strictly increasing"),
        ({"stuck_at_gmin": 1.5}, "stuck fractions"),
        ({"sigma_poly_uS": [[1.0]]}, "one sigma and one shift polynomial per read time"),
        ({"levels_S": [0.0, 40e-6, 20e-6]}, "increasing conductances"),
        ({"drift": {"kind": "exponential"}}, "unknown drift kind"),
    ]:
        p.write_text(json.dumps({**good, **change}))
        with pytest.raises(DeviceModelError, match=pattern) as e:
            DeviceModel.load(p)
        assert str(p) in str(e.value)
    missing = dict(good)
    del missing["gmin_S"]
    p.write_text(json.dumps(missing))
    with pytest.raises(DeviceModelError, match="missing the field 'gmin_S'"):
        DeviceModel.load(p)
    no_level = dict(good, level_fits=good["level_fits"][1:])
    p.write_text(json.dumps(no_level))
    with pytest.raises(DeviceModelError, match="no level fit for level 0"):
        DeviceModel.load(p)
    bad_family = json.loads(json.dumps(good))
    bad_family["level_fits"][0]["family"] = "cauchy"
    p.write_text(json.dumps(bad_family))
    with pytest.raises(DeviceModelError, match="unknown family"):
        DeviceModel.load(p)
    with pytest.raises(DeviceModelError, match="unknown device model"):
        load_device("no-such-device")


@pytest.mark.parametrize("name", ["rram", "rram1", "neurram"])
def test_fast_level_sampler_matches_numpy_sampler(name):
    """The Numba sampler (counter-based RNG) draws the same distribution as DeviceModel.sample."""
    from scipy import stats

    from cimsim.device.model import load_device

    dev = load_device(name).replace(stuck_at_gmin=0.01, stuck_at_gmax=0.02)
    levels = dev.level_conductances(4)
    idx = np.random.default_rng(0).integers(0, 4, 200_000)
    for t in (0.0, 1.0, 1e5):
        fast = dev.sample_levels(levels, idx, t, np.random.default_rng(1))
        ref = dev.sample(levels[idx], t, np.random.default_rng(2))
        for k in range(4):
            a, b = fast[idx == k], ref[idx == k]
            assert stats.ks_2samp(a, b).pvalue > 1e-3, (name, t, k)
    # reproducible from the seed, independent of the thread count
    import numba

    a = dev.sample_levels(levels, idx, 1.0, np.random.default_rng(3))
    n = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        b = dev.sample_levels(levels, idx, 1.0, np.random.default_rng(3))
    finally:
        numba.set_num_threads(n)
    assert np.array_equal(a, b)
    with pytest.raises(Exception, match="level index"):
        dev.sample_levels(levels, np.array([4]), 1.0, np.random.default_rng(0))


@pytest.mark.parametrize("df", [1.0, 1.5, 2.2, 5.0, 30.0])
def test_student_t_inverse_cdf_exact_and_tabulated(df):
    """The numpy reference is the exact t quantile at Phi(z); the samplers' table is within 1e-3 of it."""
    from scipy import stats
    from scipy.special import ndtr

    from cimsim.device.sampling import STUDENT_T_Z, quantile_error_numpy, student_t_of_normal, student_t_table

    z = np.linspace(-9.5, 9.5, 4001)
    exact = student_t_of_normal(z, np.full(z.size, df))
    mid = np.abs(z) < 5
    assert np.allclose(exact[mid], stats.t.ppf(ndtr(z[mid]), df), rtol=1e-9)
    assert np.allclose(exact[z < -5], stats.t.ppf(ndtr(z[z < -5]), df), rtol=1e-6)  # tail from the near side
    assert np.array_equal(student_t_of_normal(-z, df), -exact) and np.all(np.diff(exact) > 0)
    assert np.array_equal(student_t_of_normal(z, np.inf), z)
    q, tails = student_t_table(np.full(z.size, df))
    tab = quantile_error_numpy(z, STUDENT_T_Z, q, tails)
    inside = np.abs(z) <= STUDENT_T_Z[-1]
    rel = np.abs(tab - exact) / np.maximum(np.abs(exact), 1e-2)
    assert rel[inside].max() < 1e-3
    assert rel[~inside].max() < 0.05  # past the nodes (p < 1e-17): the t's Pareto tail


def test_student_t_levels_follow_the_t_law_in_every_sampler():
    """numpy, Numba and torch draw a Student-t level's cells through one inverse CDF: each is the t law."""
    import torch
    from scipy import stats

    from cimsim.device.sampling import LevelTable, sample_levels_torch

    m = leveled_model()
    lf = next(f for f in m.level_fits if f.family == "student-t" and f.t_s == 1.0)
    n = 100_000
    idx = np.full(n, 1)
    lv = np.asarray(m.levels_S)
    draws = {
        "numpy": m.sample(lv[idx], 1.0, np.random.default_rng(0)),
        "numba": m.sample_levels(lv, idx, 1.0, np.random.default_rng(1)),
        "torch": sample_levels_torch(torch.from_numpy(idx), LevelTable.make(m, lv, 1.0, "cpu"), m,
                                     torch.Generator().manual_seed(2), 1.0).numpy(),
    }
    for name, g in draws.items():
        t = (g - lf.target_S - lf.mean_shift_S) / lf.scale_S
        assert stats.kstest(t, "t", args=(lf.df,)).pvalue > 1e-3, name
        assert np.mean(np.abs(t) > 6) == pytest.approx(2 * stats.t.sf(6, lf.df), rel=0.3), name


# -------------------------------------------------------- malformed files (issue #15)
@pytest.mark.parametrize("top", ["[1, 2]", '"rram"', "3", "null"])
def test_top_level_not_an_object(tmp_path, top):
    from cimsim.crossbar.config import ConfigError, CrossbarConfig

    p = tmp_path / "m.json"
    p.write_text(top)
    with pytest.raises(DeviceModelError, match="not a cimsim device model .*not a JSON object") as e:
        DeviceModel.load(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DeviceModelError, match="not a JSON object"):
        load_device(p)
    with pytest.raises(ConfigError, match="not a JSON object"):
        CrossbarConfig(device=str(p))


@pytest.mark.parametrize("change, field", [
    ({"gmin_S": "abc"}, "'gmin_S' must be a finite number"),
    ({"gmin_S": None}, "'gmin_S' must be a finite number"),
    ({"gmax_S": True}, "'gmax_S' must be a finite number"),
    ({"gmax_S": float("nan")}, "'gmax_S' must be a finite number"),
    ({"name": 5}, "'name' must be a string"),
    ({"times_s": 5}, "'times_s' must be a list of finite numbers"),
    ({"times_s": [1.0, "x"]}, "'times_s' must be a list of finite numbers"),
    ({"sigma_poly_uS": [1.0, 2.0]}, "'sigma_poly_uS' must be a list of polynomials"),
    ({"read_noise_poly_uS": [float("inf")]}, "'read_noise_poly_uS' must be a polynomial"),
    ({"g_floor_S": "x"}, "'g_floor_S' must be a finite number or null"),
    ({"provenance": []}, "'provenance' must be a JSON object"),
    ({"level_fits": {"a": 1}}, "'level_fits' must be a list"),
    ({"level_fits": [1]}, "'level_fits[0]' must be a JSON object"),
    ({"drift": "power_law"}, "'drift' must be a JSON object"),
    ({"drift": {"kind": "power_law", "nu_mean": {}, "nu_std": {}}}, "missing the field 'drift.t0_s'"),
    ({"drift": {"t0_s": 0.0, "nu_mean": {}, "nu_std": {}}}, "'drift.t0_s' must be > 0"),
    ({"drift": {"t0_s": 20.0, "nu_mean": {"a": 1, "b": 0, "lo": 0}, "nu_std": {}}},
     "missing the field 'drift.nu_mean.hi'"),
])
def test_wrong_field_types_name_the_field(tmp_path, change, field):
    p = tmp_path / "m.json"
    p.write_text(json.dumps({**leveled_model().to_dict(), **change}))
    with pytest.raises(DeviceModelError) as e:
        DeviceModel.load(p)
    msg = str(e.value)
    assert str(p) in msg and field in msg and "\n" not in msg, msg


@pytest.mark.parametrize("change, field", [
    ({"sigma_S": "0.1"}, "'level_fits[1].sigma_S' must be a finite number"),
    ({"level": -1}, "'level_fits[1].level' must be an integer >= 0"),
    ({"n": 2.5}, "'level_fits[1].n' must be an integer >= 0"),
    ({"df": "five"}, "'level_fits[1].df' must be a finite number or null"),
    ({"sigma": 1.0}, "unknown field 'level_fits[1].sigma'"),
])
def test_wrong_level_fit_fields_name_the_field(tmp_path, change, field):
    d = leveled_model().to_dict()
    d["level_fits"][1].update(change)
    p = tmp_path / "m.json"
    p.write_text(json.dumps(d))
    with pytest.raises(DeviceModelError) as e:
        DeviceModel.load(p)
    assert str(p) in str(e.value) and field in str(e.value), str(e.value)


def test_missing_level_fit_field_is_named(tmp_path):
    d = leveled_model().to_dict()
    del d["level_fits"][1]["mean_shift_S"]
    p = tmp_path / "m.json"
    p.write_text(json.dumps(d))
    with pytest.raises(DeviceModelError, match=r"missing the field 'level_fits\[1\]\.mean_shift_S'"):
        DeviceModel.load(p)


def test_device_file_bom_directory_and_duplicate_keys(tmp_path):
    m = leveled_model()
    p = tmp_path / "m.json"
    p.write_bytes(b"\xef\xbb\xbf" + m.to_json().encode())
    assert DeviceModel.load(p) == m
    for path in (tmp_path, ):
        with pytest.raises(DeviceModelError, match="is a directory"):
            DeviceModel.load(path)
    (tmp_path / "dev").mkdir()
    with pytest.raises(DeviceModelError, match="is a directory"):
        load_device(tmp_path / "dev")
    text = m.to_json()
    p.write_text(text.replace('"gmin_S": 0.0,', '"gmin_S": 0.0, "gmin_S": 1e-06,', 1))
    with pytest.raises(DeviceModelError, match="the key 'gmin_S' appears twice"):
        DeviceModel.load(p)
    p.write_bytes(b"\xff\xfe{}")
    with pytest.raises(DeviceModelError, match="not UTF-8"):
        DeviceModel.load(p)


def test_stray_or_duplicate_level_fits_refused(tmp_path):
    d = leveled_model().to_dict()
    p = tmp_path / "m.json"
    for change, pattern in [({"level": 7}, "level fit for level 7 at t = 1.0 s, outside"),
                            ({"t_s": 5.0}, "level fit for level 0 at t = 5.0 s, outside"),
                            ({"level": 1}, "two level fits for level 1 at t = 1.0 s")]:
        bad = json.loads(json.dumps(d))
        bad["level_fits"][0].update(change)
        if change.get("level") != 1:
            bad["level_fits"].append(d["level_fits"][0])  # keep level 0 at t = 1 s covered
        p.write_text(json.dumps(bad))
        with pytest.raises(DeviceModelError, match=pattern) as e:
            DeviceModel.load(p)
        assert str(p) in str(e.value)

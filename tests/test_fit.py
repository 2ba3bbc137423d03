"""Tests of cimsim.device.fit: recovery of known parameters, agreement with the measured data's sample
statistics (tech C and tech B cells in ../shared), summary-vs-raw agreement, JSON round trips,
every bad-input case of the command line, and the end-to-end CLI on the shipped summary."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cimsim.device.model import DeviceModel
from cimsim.device.fit import (
    FitOptions, fit_device, fit_level_quantiles, fit_level_samples, fit_poly, read_noise_sigma_S,
)
from cimsim.device.fit_command import main
from cimsim.device.measured import QUANTILES, read_tidy, summarize, summary_to_csv

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "measured"
SUMMARY = REPO / "data" / "measured" / "rram.csv"
TECH_C = SHARED / "rram_techC_cells.csv"
TECH_B = SHARED / "rram_techB_cells.csv"
READ_NOISE = SHARED / "rram_techA_readnoise.tsv.gz"
needs_shared = pytest.mark.skipif(not TECH_C.exists() or not TECH_B.exists() or not READ_NOISE.exists(),
                                  reason=f"measured data not found in {SHARED} (the ../shared folder beside the repo)")


# ------------------------------------------------------------------------------ helpers
def synthetic_cells(rng: np.random.Generator, n: int = 40, n_levels: int = 4, times=(0.0, 1.0),
                    sigma: float = 0.3) -> pd.DataFrame:
    """A small tidy per-cell table (uS), the column layout of ../shared/measured/rram_tech*_cells.csv."""
    w = 10.0
    rows = []
    cell = 0
    for lev in range(n_levels):
        lo, hi = lev * w, (lev + 1) * w
        for _ in range(n):
            for t in times:
                g = (lo + hi) / 2 + (rng.uniform(-0.4, 0.4) * w if t == 0 else rng.normal(0, sigma * w / 2))
                rows.append((cell, lev, (lo + hi) / 2, lo, hi, t, t, round(g, 4)))
            cell += 1
    return pd.DataFrame(rows, columns=["cell", "level", "g_target_uS", "g_lo_uS", "g_hi_uS", "t_nominal_s", "t_s", "g_uS"])


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    df.to_csv(path, index=False)
    return path


def sample_sigma(path: Path) -> pd.Series:
    """Directly computed per-(time, level) sample std (ddof = 1), uS."""
    df = pd.read_csv(path)
    return df.groupby(["t_nominal_s", "level"]).g_uS.std(ddof=1)


# ----------------------------------------------------------------- known parameters
def test_recovers_normal_parameters():
    rng = np.random.default_rng(1)
    x = 20.0 + 0.3 + 1.2 * rng.standard_normal(20000)
    r = fit_level_samples(x, 20.0)
    assert r.family == "normal"
    assert r.shift_uS == pytest.approx(0.3, abs=0.03)
    assert r.sigma_uS == pytest.approx(1.2, rel=0.02)
    assert r.robust_uS == pytest.approx(1.2, rel=0.03)
    assert r.ks < 0.015


@pytest.mark.parametrize("df", [3.0, 6.0])
def test_recovers_student_t_parameters(df):
    rng = np.random.default_rng(2)
    scale = 0.8
    x = 10.0 - 0.5 + scale * rng.standard_t(df, 40000)
    r = fit_level_samples(x, 10.0)
    assert r.family == "student-t"
    assert r.shift_uS == pytest.approx(-0.5, abs=0.05)
    assert r.df == pytest.approx(df, rel=0.2)
    # sigma is the sample std; the fitted law has exactly that std
    assert r.sigma_uS == pytest.approx(np.std(x, ddof=1), rel=1e-12)
    assert r.scale_uS * np.sqrt(r.df / (r.df - 2)) == pytest.approx(r.sigma_uS, rel=1e-9)
    if df > 4:  # finite 4th moment: the sample std converges to the true one
        assert r.sigma_uS == pytest.approx(scale * np.sqrt(df / (df - 2)), rel=0.03)
        assert r.scale_uS == pytest.approx(scale, rel=0.06)


def test_recovers_parameters_from_quantiles():
    rng = np.random.default_rng(3)
    for df_true, fam in ((4.0, "student-t"), (None, "normal")):
        x = 5.0 + 0.1 + (rng.standard_t(df_true, 30000) if df_true else rng.standard_normal(30000))
        q = np.quantile(x, QUANTILES)
        r = fit_level_quantiles(q, float(x.mean()), float(x.std(ddof=1)), x.size, 5.0)
        # 9 quantiles of 30000 normal samples may favour a nearly normal t: then df must be large
        assert r.family == fam or (fam == "normal" and r.df > 30)
        assert r.sigma_uS == float(x.std(ddof=1))
        assert r.shift_uS == pytest.approx(0.1, abs=0.03)
        if df_true:
            assert r.df == pytest.approx(df_true, rel=0.3)


def test_forced_family():
    x = np.random.default_rng(4).standard_normal(2000)
    assert fit_level_samples(x, 0.0, family="student-t").family == "student-t"
    y = np.random.default_rng(4).standard_t(3, 2000)
    assert fit_level_samples(y, 0.0, family="normal").family == "normal"


def test_fit_poly_recovers_cubic():
    g = np.linspace(0, 40, 32)
    coeffs = np.array([1.536e-4, -1.167e-2, 0.2374, 1.053])  # NeuRRAM form, ../shared/reference s.4
    c, r2 = fit_poly(g, np.polyval(coeffs, g), 3)
    np.testing.assert_allclose(c, coeffs, rtol=1e-6)
    assert r2 == pytest.approx(1.0)


def test_read_noise_estimator_separates_slow_components():
    rng = np.random.default_rng(5)
    n, sigma = 100_000, 0.25e-6
    slow = 50e-6 + 2e-6 * np.cumsum(rng.standard_normal(n)) / np.sqrt(n)  # relaxation-like random walk
    rtn = 3e-6 * (np.cumsum(rng.random(n) < 0.002) % 2)  # telegraph: 3 uS steps, rare switching
    g = slow + rtn + sigma * rng.standard_normal(n)
    est, diag = read_noise_sigma_S(g)
    assert est == pytest.approx(sigma, rel=0.05)
    assert diag["series_std_uS"] > 5 * sigma * 1e6  # the whole-series std would be far off


# ---------------------------------------------------------------- measured data
@needs_shared
@pytest.mark.parametrize("path", [TECH_C, TECH_B], ids=["techC", "techB"])
def test_sigma_matches_measured_sample_statistics(path):
    res = fit_device(path)
    direct = sample_sigma(path)
    model = res.model
    assert len(model.level_fits) == direct.size
    levels = np.asarray(model.provenance["level_labels"])
    for lf in model.level_fits:
        s = direct.loc[(lf.t_s, int(levels[lf.level]))] * 1e-6
        assert lf.sigma_S == pytest.approx(s, rel=0.05)
        if lf.family == "student-t":  # the implied std of the fitted law
            assert lf.scale_S * np.sqrt(lf.df / (lf.df - 2)) == pytest.approx(s, rel=0.05)
    assert model.provenance["stuck"]["measured"] is True
    assert model.gmin_S == 0.0


@needs_shared
def test_summary_and_raw_fits_agree():
    raw = fit_device(TECH_C).model
    summ = fit_device(SUMMARY).model
    assert raw.times_s == summ.times_s and raw.levels_S == summ.levels_S
    assert (raw.gmin_S, raw.gmax_S) == (summ.gmin_S, summ.gmax_S) == (0.0, 40e-6)
    for a, b in zip(raw.level_fits, summ.level_fits):
        assert (a.level, a.t_s, a.n) == (b.level, b.t_s, b.n)
        assert b.sigma_S == pytest.approx(a.sigma_S, rel=0.05)
        assert b.mean_shift_S == pytest.approx(a.mean_shift_S, abs=1e-9)
        assert b.robust_sigma_S == pytest.approx(a.robust_sigma_S, rel=1e-4)
    assert (summ.stuck_at_gmin, summ.stuck_at_gmax) == (raw.stuck_at_gmin, raw.stuck_at_gmax)
    assert summ.provenance["stuck"]["n_cells_t0"] == raw.provenance["stuck"]["n_cells_t0"]
    agree = np.mean([a.family == b.family for a, b in zip(raw.level_fits, summ.level_fits)])
    assert agree > 0.8


@needs_shared
def test_shipped_summary_is_regenerated_from_the_cells():
    fresh = summarize(read_tidy(TECH_C)).sort_values(["level", "t_nominal_s"], kind="stable")
    shipped = pd.read_csv(SUMMARY, comment="#")
    assert list(shipped.columns) == list(fresh.columns)
    np.testing.assert_allclose(shipped.to_numpy(float), fresh.to_numpy(float), rtol=0, atol=2e-6)


@needs_shared
def test_quantile_model_from_the_shipped_summary_follows_the_measured_cells():
    """The default family fitted from the 9 stored quantiles per level stays close to every measured
    (level, read time) of tech C: at most 5 % of them beyond the two-sample 5 % KS critical value,
    none beyond 1.5 times it; the normal / Student-t fit (`auto`) misses most of them."""
    from scipy import stats

    cells = read_tidy(TECH_C)
    far = {}
    for family in ("quantile", "auto"):
        model = fit_device(SUMMARY, FitOptions(family=family)).model
        rng = np.random.default_rng(0)
        ratio = []
        for (ti, li), x in cells.g_uS.items():
            t = float(cells.times_s[ti])
            g = model.sample(np.full(4000, model.levels_S[li]), t, rng) / 1e-6
            crit = 1.36 * np.sqrt(1 / x.size + 1 / g.size)
            ratio.append(stats.ks_2samp(x, g).statistic / crit)
        far[family] = np.array(ratio)
    assert np.mean(far["quantile"] > 1) <= 0.05 and far["quantile"].max() < 1.5
    assert np.mean(far["auto"] > 1) > 0.3


def test_shipped_summary_fit_properties():
    res = fit_device(SUMMARY, FitOptions(time_s=1.0))
    m = res.model
    assert m.times_s == (1.0,) and len(m.levels_S) == 32
    assert m.gmax_S == pytest.approx(40e-6)
    np.testing.assert_allclose(np.diff(m.levels_S), 1.25e-6)
    assert m.provenance["stuck"]["measured"] is True and m.stuck_at_gmin == 0.0
    assert 0.5 < res.smooth_r2["sigma"][0] <= 1.0
    # sigma at 1 s is close to the NeuRRAM cubic (../shared/reference/README.md s.4) in mid-range
    neurram = np.polyval([1.536e-4, -1.167e-2, 0.2374, 1.053], 20.0)
    assert m.sigma_smooth_S(20e-6, 1.0) * 1e6 == pytest.approx(neurram, rel=0.25)


# -------------------------------------------------------------------------- JSON
def test_json_round_trip_exact(tmp_path):
    df = synthetic_cells(np.random.default_rng(6))
    m = fit_device(write_csv(df, tmp_path / "cells.csv")).model
    assert DeviceModel.from_dict(m.to_dict()) == m
    assert DeviceModel.from_dict(json.loads(m.to_json())) == m
    m.save(tmp_path / "m.json")
    back = DeviceModel.load(tmp_path / "m.json")
    assert back == m
    assert back.level_fits == m.level_fits
    assert back.provenance == json.loads(json.dumps(m.to_dict()["provenance"]))


# --------------------------------------------------------------------- tidy data
def test_stuck_cells_measured_from_t0(tmp_path):
    df = synthetic_cells(np.random.default_rng(7))
    t0 = df.index[df.t_nominal_s == 0]
    df.loc[t0[df.loc[t0, "level"] == 2][:3], "g_uS"] = 0.5  # level-2 cells sitting at gmin
    df.loc[t0[df.loc[t0, "level"] == 1][:1], "g_uS"] = 39.9  # one at gmax
    m = fit_device(write_csv(df, tmp_path / "c.csv")).model
    n_t0 = int((df.t_nominal_s == 0).sum())
    assert m.stuck_at_gmin == pytest.approx(3 / n_t0)
    assert m.stuck_at_gmax == pytest.approx(1 / n_t0)


def test_stuck_not_measured_without_windows(tmp_path):
    df = synthetic_cells(np.random.default_rng(8)).drop(columns=["g_lo_uS", "g_hi_uS"])
    m = fit_device(write_csv(df, tmp_path / "c.csv")).model
    assert m.provenance["stuck"]["measured"] is False
    assert m.gmin_S == pytest.approx(0.0) and m.gmax_S == pytest.approx(40e-6)


def test_column_overrides_and_siemens(tmp_path):
    df = synthetic_cells(np.random.default_rng(9))
    ref = fit_device(write_csv(df, tmp_path / "a.csv")).model
    alt = df.rename(columns={"level": "lvl", "g_target_uS": "target", "t_nominal_s": "time", "g_uS": "G",
                             "g_lo_uS": "lo", "g_hi_uS": "hi"})
    for c in ("target", "G", "lo", "hi"):
        alt[c] = alt[c] * 1e-6
    p = write_csv(alt, tmp_path / "b.csv")
    out = tmp_path / "b.json"
    rc = main([str(p), "--col-level", "lvl", "--col-target", "target", "--col-time", "time", "--col-g", "G",
               "--col-lo", "lo", "--col-hi", "hi", "--units", "S", "-o", str(out), "-q"])
    assert rc == 0
    m = DeviceModel.load(out)
    for a, b in zip(ref.level_fits, m.level_fits):
        assert b.sigma_S == pytest.approx(a.sigma_S, rel=1e-9)
        assert b.target_S == pytest.approx(a.target_S, rel=1e-12)


def test_single_time_and_progress(tmp_path, capsys):
    df = synthetic_cells(np.random.default_rng(10))
    out = tmp_path / "m.json"
    assert main([str(write_csv(df, tmp_path / "c.csv")), "--time", "1", "-o", str(out)]) == 0
    cap = capsys.readouterr()
    assert "t = 1 s" in cap.out and "robust" in cap.out and "family" in cap.out
    assert "cimsim.fit: read times: 1/1 (100 %)" in cap.err and "t = 1 s: 4 levels fitted" in cap.err
    assert DeviceModel.load(out).times_s == (1.0,)


# ------------------------------------------------------------------- bad input
def _bad_cases(tmp_path: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (extra argv with the data file first, fragments the one-line error must contain)."""
    good = synthetic_cells(np.random.default_rng(11))
    cases: dict[str, tuple[list[str], list[str]]] = {}

    def put(name: str, df: pd.DataFrame | None = None, text: str | None = None, args=(), frags=()):
        p = tmp_path / f"{name}.csv"
        if text is not None:
            p.write_text(text)
        else:
            write_csv(df, p)
        cases[name] = ([str(p), *args], [p.name, *frags])

    cases["missing_file"] = ([str(tmp_path / "nope.csv")], ["nope.csv", "no such file"])
    put("missing_column", good.drop(columns=["g_uS"]), frags=["'g_uS'", "--col-g"])
    put("misnamed_column", good.rename(columns={"g_uS": "G_uS"}), frags=["'g_uS'", "did you mean 'G_uS'"])
    bad = good.astype({"g_uS": object})
    bad.loc[5, "g_uS"] = "abc"
    put("non_numeric", bad, frags=["line 7 (header on line 1)", "'g_uS'", "'abc'"])
    nan = good.copy()
    nan.loc[9, "g_target_uS"] = np.nan
    put("nan_cell", nan, frags=["line 11", "'g_target_uS'", "empty"])
    nan_txt = good.astype({"g_uS": object})
    nan_txt.loc[3, "g_uS"] = "NaN"
    put("nan_text", nan_txt, frags=["line 5", "'g_uS'", "NaN"])
    neg = good.copy()
    neg.loc[12, "g_uS"] = -5.0
    put("negative_g", neg, frags=["line 14", "negative conductance"])
    put("too_few_cells", good[~((good.level == 2) & (good.t_nominal_s == 1.0)) | (good.cell % 40 < 5)],
        frags=["level 2 at t = 1 s (first row on line 163, header on line 1) has 5 cells", "--min-cells 20"])
    put("too_few_option", good, args=["--min-cells", "100"], frags=["has 40 cells", "--min-cells 100"])
    put("empty_file", text="", frags=["empty"])
    put("header_only", text="cell,level,g_target_uS,g_lo_uS,g_hi_uS,t_nominal_s,t_s,g_uS\n", frags=["no data rows"])
    put("siemens_as_uS", good.assign(g_uS=good.g_uS * 1e-6, g_target_uS=good.g_target_uS * 1e-6),
        frags=["siemens", "--units S"])
    put("missing_time", good, args=["--time", "5"], frags=["no read at t = 5 s"])
    level_mix = good.copy()
    level_mix.loc[20, "g_target_uS"] = 99.0
    put("inconsistent_target", level_mix, frags=["line 22", "'g_target_uS'", "differs"])
    summ = summarize_df(good)
    summ.loc[2, "std_uS"] = "x"
    put("summary_non_numeric", summ, frags=["line 4", "'std_uS'"])
    put("summary_missing_q", summarize_df(good).drop(columns=["q50_uS"]), frags=["'q50_uS'", "summary format"])
    rn = tmp_path / "rn.tsv"
    rn.write_text("0\t0\t" + "\t".join(["1e-5"] * 200) + "\n8\t0\t" + "\t".join(["1e-5"] * 100 + ["oops"]) + "\n")
    cases["read_noise_bad"] = ([str(write_csv(good, tmp_path / "ok.csv")), "--read-noise", str(rn)],
                               ["rn.tsv", "line 2", "'oops'"])
    cases["read_noise_missing"] = ([str(tmp_path / "ok.csv"), "--read-noise", str(tmp_path / "rn2.tsv")],
                                   ["rn2.tsv", "no such file"])
    return cases


def summarize_df(cells: pd.DataFrame) -> pd.DataFrame:
    """Summary-format frame of a tidy frame (via the library, through a temporary CSV)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = write_csv(cells, Path(d) / "c.csv")
        return summarize(read_tidy(p)).astype(object)


def test_bad_inputs_exit_2_one_line_no_output(tmp_path, capsys):
    cases = _bad_cases(tmp_path)
    for name, (argv, frags) in cases.items():
        out, png = tmp_path / f"{name}.json", tmp_path / f"{name}.png"
        rc = main([*argv, "-o", str(out), "--plot", str(png)])
        cap = capsys.readouterr()
        err = cap.err.strip()
        assert rc == 2, name
        assert err.count("\n") == 0, f"{name}: more than one line: {err!r}"
        assert "Traceback" not in err
        for f in frags:
            assert f in err, f"{name}: {f!r} not in {err!r}"
        assert not out.exists() and not png.exists(), name
        assert not any(p.name.startswith(f".{name}.") for p in tmp_path.iterdir()), f"{name}: temp file left"


def test_summary_roundtrip_via_csv_text(tmp_path):
    df = synthetic_cells(np.random.default_rng(12))
    cells = read_tidy(write_csv(df, tmp_path / "c.csv"))
    (tmp_path / "s.csv").write_text(summary_to_csv(summarize(cells), {"technology": "synthetic"}))
    a = fit_device(tmp_path / "c.csv").model
    b = fit_device(tmp_path / "s.csv").model
    assert b.technology == "synthetic"
    for x, y in zip(a.level_fits, b.level_fits):
        assert y.sigma_S == pytest.approx(x.sigma_S, rel=1e-5)


# ----------------------------------------------------------------------- CLI e2e
def test_cli_end_to_end_on_shipped_summary(tmp_path, capsys):
    out, png = tmp_path / "rram.json", tmp_path / "fit.png"
    argv = [str(SUMMARY), "-o", str(out), "--plot", str(png)]
    if READ_NOISE.exists():
        argv += ["--read-noise", str(READ_NOISE)]
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert "t = 1 s" in cap.out and f"wrote {out}" in cap.out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000
    m = DeviceModel.load(out)
    assert m.times_s == (0.0, 0.01, 0.1, 1.0, 4.0, 1e5)
    assert len(m.level_fits) == 32 * 6
    prov = m.provenance
    assert prov["sha256"] and prov["cimsim_version"] and prov["fit_options"]["family"] == "quantile"
    assert len(prov["fit_quality"]["sigma_poly_r2"]) == 6 and prov["fit_quality"]["ks_per_level"]["1"]
    if READ_NOISE.exists():
        assert prov["read_noise"]["source_technology"] == "tech A"
        assert 0.1e-6 < m.read_sigma_S(np.array(20e-6)) < 0.5e-6


def test_shipped_device_model_matches_fit():
    """device_models/rram.json is the fit of the shipped summary (regenerated by the documented command)."""
    shipped = DeviceModel.load(REPO / "device_models" / "rram.json")
    fresh = fit_device(SUMMARY).model
    assert shipped.provenance["sha256"] == fresh.provenance["sha256"]
    assert (shipped.times_s, shipped.levels_S) == (fresh.times_s, fresh.levels_S)
    for a, b in zip(shipped.level_fits, fresh.level_fits):
        assert (a.level, a.t_s, a.n, a.family) == (b.level, b.t_s, b.n, b.family)
        assert a.sigma_S == pytest.approx(b.sigma_S, rel=1e-9)
        assert (a.df is None and b.df is None) or a.df == pytest.approx(b.df, rel=1e-4)
    np.testing.assert_allclose(np.concatenate(shipped.sigma_poly_uS), np.concatenate(fresh.sigma_poly_uS), rtol=1e-6)


# ----------------------------------------------- outputs, options and inputs (issue #15)
def run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    """``main(argv)``: exit status and stderr, checked to be one line without a traceback on failure."""
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    if rc:
        assert err.count("\n") == 0 and "Traceback" not in err, err
    return rc, err


@pytest.mark.parametrize("case", ["o_is_data", "plot_is_data", "o_is_plot", "o_is_read_noise", "o_is_data_via_link"])
def test_output_that_is_an_input_is_refused(tmp_path, capsys, case):
    data = write_csv(synthetic_cells(np.random.default_rng(20)), tmp_path / "data.csv")
    rn = tmp_path / "rn.tsv"
    rn.write_text("0\t0\t" + "\t".join(["1e-5", "1.1e-5"] * 100) + "\n")
    (tmp_path / "link.csv").symlink_to(data)
    before = {p: p.read_bytes() for p in (data, rn)}
    argv = {
        "o_is_data": [str(data), "-o", str(data)],
        "plot_is_data": [str(data), "--plot", str(tmp_path / "sub" / ".." / "data.csv")],
        "o_is_plot": [str(data), "-o", str(tmp_path / "x.out"), "--plot", str(tmp_path / "x.out")],
        "o_is_read_noise": [str(data), "--read-noise", str(rn), "-o", str(rn)],
        "o_is_data_via_link": [str(tmp_path / "link.csv"), "-o", str(data)],
    }[case]
    rc, err = run_cli(capsys, [*argv, "-q"])
    assert rc == 2 and "the same file as" in err
    assert ("--plot" if case.startswith("plot") or case == "o_is_plot" else "-o") in err
    assert {p: p.read_bytes() for p in (data, rn)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv", "link.csv", "rn.tsv"]


def test_outputs_all_or_nothing_when_plot_is_a_directory(tmp_path, capsys):
    data = write_csv(synthetic_cells(np.random.default_rng(21)), tmp_path / "data.csv")
    (tmp_path / "figs").mkdir()
    rc, err = run_cli(capsys, [str(data), "-o", str(tmp_path / "new" / "deep" / "m.json"), "--plot",
                               str(tmp_path / "figs"), "-q"])
    assert rc == 2 and str(tmp_path / "figs") in err and ".figs." not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv", "figs"]  # no JSON, no folder 'new'
    assert not any((tmp_path / "figs").iterdir())


@pytest.mark.parametrize("args, frags", [
    (["--neg-tol", "-1"], ["--neg-tol", "-1"]),
    (["--neg-tol", "nan"], ["--neg-tol", "nan"]),
    (["--neg-tol", "inf"], ["--neg-tol", "inf"]),
    (["--time", "nan"], ["--time", "nan"]),
    (["--time", "-1"], ["--time", "-1"]),
    (["--col-g", "g_target_uS"], ["--col-target", "--col-g", "'g_target_uS'"]),
    (["--col-lo", "g_uS"], ["--col-g", "--col-lo", "'g_uS'"]),
    (["--min-cells", "1"], ["--min-cells", "1"]),
    (["--poly-deg", "-1"], ["--poly-deg", "-1"]),
])
def test_bad_option_values_name_the_option(tmp_path, capsys, args, frags):
    data = write_csv(synthetic_cells(np.random.default_rng(22)), tmp_path / "data.csv")
    out = tmp_path / "m.json"
    rc, err = run_cli(capsys, [str(data), *args, "-o", str(out), "-q"])
    assert rc == 2 and not out.exists()
    assert "line" not in err and "data.csv" not in err, err  # not blamed on the data
    for f in frags:
        assert f in err, f"{f!r} not in {err!r}"


def _bad_file_cases(tmp_path: Path) -> dict[str, tuple[Path, list[str]]]:
    """name -> (input file, fragments the one-line error must contain)."""
    good = synthetic_cells(np.random.default_rng(23))
    cases = {}
    dup = tmp_path / "dup.csv"
    good.rename(columns={"t_s": "g_uS"}).to_csv(dup, index=False)  # two g_uS columns: read times and conductances
    cases["duplicate_column"] = (dup, ["'g_uS'", "twice", "line 1"])
    summ = summarize_df(good)
    neg = summ.copy()
    neg.loc[3, "q01_uS"] = -4.0
    cases["summary_negative"] = (write_csv(neg, tmp_path / "neg.csv"), ["line 5", "'q01_uS'", "negative conductance"])
    cases["summary_missing_std"] = (write_csv(summ.drop(columns=["std_uS"]), tmp_path / "nostd.csv"),
                                    ["'std_uS'", "summary format"])
    cases["directory"] = (tmp_path, ["is a directory"])
    raw = bytearray(gzip_bytes(good.to_csv(index=False)))
    raw[40:60] = b"\xff" * 20
    (tmp_path / "corrupt.csv.gz").write_bytes(bytes(raw))
    cases["gzip_corrupt"] = (tmp_path / "corrupt.csv.gz", ["gzip"])
    (tmp_path / "trunc.csv.gz").write_bytes(gzip_bytes(good.to_csv(index=False))[:300])
    cases["gzip_truncated"] = (tmp_path / "trunc.csv.gz", ["gzip"])
    (tmp_path / "binary.csv").write_bytes(b"level,g_uS\n\xff\xfe\x00\n")
    cases["not_utf8"] = (tmp_path / "binary.csv", ["UTF-8"])
    (tmp_path / "comments_only.csv").write_text("# technology: x\n")
    cases["comments_only"] = (tmp_path / "comments_only.csv", ["empty"])
    return cases


def gzip_bytes(text: str) -> bytes:
    import gzip

    return gzip.compress(text.encode())


@pytest.mark.parametrize("name", ["duplicate_column", "summary_negative", "summary_missing_std", "directory",
                                  "gzip_corrupt", "gzip_truncated", "not_utf8", "comments_only"])
def test_bad_files_exit_2_one_line_no_output(tmp_path, capsys, name):
    path, frags = _bad_file_cases(tmp_path)[name]
    out, png = tmp_path / f"{name}.json", tmp_path / f"{name}.png"
    rc, err = run_cli(capsys, [str(path), "-o", str(out), "--plot", str(png)])
    assert rc == 2, name
    for f in [path.name, *frags]:
        assert f in err, f"{name}: {f!r} not in {err!r}"
    if name == "summary_missing_std":
        assert "--col-" not in err, err  # not read as tidy data
    assert not out.exists() and not png.exists(), name


def test_byte_order_mark_accepted(tmp_path, capsys):
    df = synthetic_cells(np.random.default_rng(24))
    plain = write_csv(df, tmp_path / "plain.csv")
    ref = fit_device(plain).model
    cells = read_tidy(plain)
    summary_text = summary_to_csv(summarize(cells), {"technology": "synthetic"})
    for name, text in [("tidy_comments.csv", "# technology: synthetic\n" + plain.read_text()),
                       ("tidy.csv", plain.read_text()), ("summary.csv", summary_text)]:
        p = tmp_path / name
        p.write_bytes(b"\xef\xbb\xbf" + text.encode())
        rc, err = run_cli(capsys, [str(p), "-o", str(tmp_path / f"{name}.json"), "-q"])
        assert rc == 0, f"{name}: {err}"
        m = DeviceModel.load(tmp_path / f"{name}.json")
        assert m.technology == ("" if name == "tidy.csv" else "synthetic")
        for a, b in zip(ref.level_fits, m.level_fits):
            assert b.sigma_S == pytest.approx(a.sigma_S, rel=1e-5)

"""``python -m cimsim.fit CELLS --validate DIR``: held-out halves, leave one level out, the network
check against the empirical device; its statistics against scipy; bad input."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from cimsim.device.fit import FitOptions, fit_level_quantile_samples
from cimsim.device.fit_command import main
from cimsim.device.measured import read_measured
from cimsim.device.model import ideal_device
from cimsim.device.validate import (
    ValidateOptions, chip_accuracy, ks_distance, pair_levels, split_halves, train_digits_mlp, validate, without_level,
)

REPO = Path(__file__).resolve().parents[1]
SUMMARY = REPO / "data" / "measured" / "rram.csv"
FILES = ("heldout.csv", "leave_one_level_out.csv", "network.csv", "targets.csv", "validation.png",
         "validate_config.json")


def skewed_cells(path: Path, n: int = 240, n_levels: int = 6, times=(0.0, 1.0, 100.0), seed: int = 0) -> Path:
    """Tidy per-cell data (uS): levels 0..n_levels-1 in 4-uS windows, errors a shifted lognormal
    whose right tail grows with read time (the shape of the lowest RRAM levels)."""
    rng = np.random.default_rng(seed)
    rows, cell = [], 0
    for lev in range(n_levels):
        lo, hi = 4.0 * lev, 4.0 * (lev + 1)
        target = (lo + hi) / 2
        for _ in range(n):
            for t in times:
                s = 0.3 + 0.1 * math.log10(1 + t)
                g = max(target + 0.8 * (rng.lognormal(0.0, s) - math.exp(s * s / 2)), 0.0)
                rows.append((cell, lev, target, lo, hi, t, t, round(g, 5)))
            cell += 1
    pd.DataFrame(rows, columns=["cell", "level", "g_target_uS", "g_lo_uS", "g_hi_uS", "t_nominal_s", "t_s",
                                "g_uS"]).to_csv(path, index=False)
    return path


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=60), st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=60))
def test_ks_distance_is_scipys_two_sample_statistic(a, b):
    assert ks_distance(np.sort(a), np.sort(b)) == pytest.approx(stats.ks_2samp(a, b, method="asymp").statistic, abs=1e-12)


def test_halves_and_left_out_levels_keep_every_cell_once(tmp_path):
    data = read_measured(skewed_cells(tmp_path / "c.csv", n=41), "auto", FitOptions().columns, "auto", 0.01)
    fit, test = split_halves(data, 3)
    for key, g in data.g_uS.items():
        assert fit.g_uS[key].size == 20 and test.g_uS[key].size == 21
        assert np.array_equal(np.sort(np.concatenate([fit.g_uS[key], test.g_uS[key]])), np.sort(g))
    again = split_halves(data, 3)[0]
    assert all(np.array_equal(again.g_uS[k], fit.g_uS[k]) for k in data.g_uS)
    less = without_level(data, 2)
    assert list(less.levels) == [0, 1, 3, 4, 5] and np.array_equal(less.g_uS[(1, 2)], data.g_uS[(1, 3)])


def test_fitted_tails_end_just_past_the_furthest_cell():
    rng = np.random.default_rng(5)
    x = 5.0 + rng.standard_t(2.2, 400)  # heavy tails: the unbounded fit would reach hundreds of uS
    q, lo, hi = fit_level_quantile_samples(x, 5.0, floor_uS=0.0)
    err = np.sort(x) - 5.0
    y_hi, y_lo = err[err > q[-1]] - q[-1], q[0] - err[err < q[0]]
    for (xi, beta), y in ((hi, y_hi), (lo, y_lo)):
        end = -beta / xi if xi < 0 else math.inf
        assert y.max() <= end <= y.max() * (1 + 1 / y.size) * (1 + 1e-6)


def test_chip_on_an_ideal_device_is_the_quantized_network():
    net = train_digits_mlp(0, hidden=16, steps=150)
    assert net.accuracy(net.w1, net.w2) > 0.9
    dm = ideal_device().replace(levels_S=tuple(np.linspace(0, 40e-6, 32)))
    for n_levels in (32, 4):
        (p1, m1, s1), (p2, m2, s2) = pair_levels(net.w1, n_levels), pair_levels(net.w2, n_levels)
        want = net.accuracy((p1 - m1) / (n_levels - 1) * s1, (p2 - m2) / (n_levels - 1) * s2)
        assert chip_accuracy(net, dm, n_levels, 1.0, seed=7) == pytest.approx(want)
        assert np.abs(p1 - m1).max() == n_levels - 1 and np.all((p1 == 0) | (m1 == 0))


def test_neighbour_prediction_is_exact_for_levels_linear_in_their_law():
    """The model-free leave-one-level-out prediction averages the neighbours' quantile functions:
    for levels whose error law moves linearly with the level it is the level's own law."""
    from scipy.stats import norm

    from cimsim.device.measured import CellTable
    from cimsim.device.validate import ValidateOptions, lolo_neighbour_rows

    rng = np.random.default_rng(0)
    levels = np.arange(5)
    u = np.sort(rng.random(2000))
    g = {(0, k): 10.0 * k + (1 + 0.5 * k) * norm.ppf(u) for k in levels}  # scale linear in the level

    data = CellTable(path="x", levels=levels, target_uS=10.0 * levels, lo_uS=10.0 * levels - 5,
                     hi_uS=10.0 * levels + 5, times_s=np.array([1.0]), windows_measured=True, g_uS=g)
    rows = lolo_neighbour_rows(data, ValidateOptions(model_draws=2000))
    assert [r["level"] for r in rows] == [1, 2, 3] and max(r["ks"] for r in rows) < 0.01


def test_validate_command_writes_every_check(tmp_path):
    cells = skewed_cells(tmp_path / "cells.csv")
    out = tmp_path / "val"
    assert main([str(cells), "--validate", str(out), "--chips", "20", "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    held = pd.read_csv(out / "heldout.csv")
    assert set(held.family) == {"quantile", "auto", "empirical"} and len(held) == 3 * 3 * 6
    assert np.allclose(held.ks_crit, 1.36 * np.sqrt(1 / held.n_fit + 1 / held.n_test))
    assert {"dq0.1_uS", "dq50_uS", "dq99.9_uS"} <= set(held.columns)
    lolo = pd.read_csv(out / "leave_one_level_out.csv")
    assert sorted(set(lolo.level)) == [1, 2, 3, 4] and set(lolo.family) == {"quantile", "auto", "neighbours"}
    net = pd.read_csv(out / "network.csv")
    assert set(net.family) == {"quantile", "auto", "empirical", "cells_a", "cells_b"}
    assert set(net.n_levels) == {4} and (net.chips == 20).all()  # 6 device levels: only the 4-level subset fits
    targets = pd.read_csv(out / "targets.csv")
    q = targets[(targets.family == "quantile") & (targets.target == "heldout_share_above_crit")]
    assert q.value.iloc[0] <= 0.10  # the lognormal levels are followed on cells the fit never saw
    nb = targets[(targets.family == "neighbours") & (targets.target == "lolo_median_ks")]
    assert len(nb) == 1 and nb.value.iloc[0] == pytest.approx(lolo[lolo.family == "neighbours"].ks.median())
    cfg = json.loads((out / "validate_config.json").read_text())
    assert cfg["validate"]["chips"] == 20 and cfg["fit_options"]["family"] == "quantile"
    # one seed, one result
    again = tmp_path / "val2"
    assert main([str(cells), "--validate", str(again), "--chips", "20", "-q"]) == 0
    assert (again / "network.csv").read_bytes() == (out / "network.csv").read_bytes()


def test_the_empirical_device_and_its_halves_agree_with_the_cells(tmp_path):
    data = read_measured(skewed_cells(tmp_path / "c.csv", n_levels=4), "auto", FitOptions().columns, "auto", 0.01)
    v = validate(data, FitOptions(), ValidateOptions(families=("quantile",), chips=30, network_levels=(4,)))
    fit_half = [r for r in v.heldout if r["family"] == "empirical"]
    assert np.mean([r["ks_ratio"] > 1 for r in fit_half]) <= 0.25  # half the cells predict the other half
    assert {r["target"] for r in v.targets if r["family"] == "cells_a"} == {
        "network_mean_diff_pts", "network_std_ratio", "network_p05_diff_pts"}


@pytest.mark.parametrize("args, words", [
    (["--validate-families", "quantile,bogus"], ["--validate-families", "bogus"]),
    (["--validate-families", "empirical"], ["--validate-families", "reference"]),
    (["--chips", "1"], ["--chips", "2"]),
    (["--seed", "-1"], ["--seed"]),
    (["-o", "m.json"], ["--validate", "-o"]),
    (["--time", "1"], ["--validate", "--time"]),
    (["--family", "quantile"], ["--validate-families", "--family"]),
])
def test_bad_validate_options_exit_2_and_write_nothing(tmp_path, capsys, args, words):
    cells = skewed_cells(tmp_path / "cells.csv", n=30, n_levels=3, times=(0.0, 1.0))
    out = tmp_path / "val"
    assert main([str(cells), "--validate", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and all(w in err for w in words), err
    assert not out.exists() and not (tmp_path / "m.json").exists()


def test_validate_refuses_a_summary_and_a_file_in_the_way(tmp_path, capsys):
    out = tmp_path / "val"
    assert main([str(SUMMARY), "--validate", str(out)]) == 2
    assert "per-cell data" in capsys.readouterr().err and not out.exists()
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    cells = skewed_cells(tmp_path / "cells.csv", n=30, n_levels=3, times=(0.0, 1.0))
    assert main([str(cells), "--validate", str(blocker)]) == 2
    assert "file" in capsys.readouterr().err and blocker.read_text() == "mine"

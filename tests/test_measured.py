"""Tests of cimsim.device.measured: the tidy and summary readers, their checks, summaries, read-noise files."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cimsim.device.measured import (
    QUANTILE_COLUMNS, QUANTILES, SUMMARY_COLUMNS, CellTable, MeasuredDataError, SummaryTable, TidyColumns,
    detect_format, miss_near_edges, read_measured, read_read_noise, read_summary, read_tidy, summarize,
    summary_to_csv,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "measured"
SUMMARY = REPO / "data" / "measured" / "rram.csv"
HEADER = "cell,level,g_target_uS,g_lo_uS,g_hi_uS,t_nominal_s,t_s,g_uS\n"


def tidy_text(rows: list[tuple]) -> str:
    return HEADER + "".join(",".join(str(v) for v in r) + "\n" for r in rows)


def small_rows(n: int = 3) -> list[tuple]:
    """Two levels (windows [0, 2) and [2, 4) uS), reads at 0 and 1 s."""
    rows = []
    for lev, (lo, hi) in enumerate(((0.0, 2.0), (2.0, 4.0))):
        for c in range(n):
            for t in (0.0, 1.0):
                rows.append((lev * 100 + c, lev, (lo + hi) / 2, lo, hi, t, t, round((lo + hi) / 2 + 0.1 * c - 0.05 * t, 4)))
    return rows


def test_read_tidy_groups_and_windows(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text(tidy_text(small_rows()))
    c = read_tidy(p)
    assert isinstance(c, CellTable) and c.windows_measured
    np.testing.assert_array_equal(c.levels, [0, 1])
    np.testing.assert_array_equal(c.times_s, [0.0, 1.0])
    assert (c.gmin_uS, c.gmax_uS) == (0.0, 4.0)
    np.testing.assert_allclose(c.g_uS[(1, 1)], [2.95, 3.05, 3.15])
    assert c.first_line[(0, 0)] == 2 and c.first_line[(1, 0)] == 3


def test_read_tidy_siemens_and_renamed_columns(tmp_path):
    df = pd.DataFrame(small_rows(), columns=HEADER.strip().split(","))
    for col in ("g_target_uS", "g_lo_uS", "g_hi_uS", "g_uS"):
        df[col] *= 1e-6
    df = df.rename(columns={"g_uS": "G_S", "g_target_uS": "tgt_S", "g_lo_uS": "lo_S", "g_hi_uS": "hi_S"})
    p = tmp_path / "s.csv"
    df.to_csv(p, index=False)
    c = read_tidy(p, TidyColumns(target="tgt_S", g="G_S", lo="lo_S", hi="hi_S"))  # units from the _S suffix
    assert c.units == "S"
    assert c.gmax_uS == pytest.approx(4.0)
    np.testing.assert_allclose(c.g_uS[(0, 1)], [3.0, 3.1, 3.2])


def test_windows_inferred_when_absent(tmp_path):
    df = pd.DataFrame(small_rows(), columns=HEADER.strip().split(",")).drop(columns=["g_lo_uS", "g_hi_uS"])
    p = tmp_path / "c.csv"
    df.to_csv(p, index=False)
    c = read_tidy(p)
    assert not c.windows_measured
    np.testing.assert_allclose(c.lo_uS, [0.0, 2.0])
    np.testing.assert_allclose(c.hi_uS, [2.0, 4.0])


def test_comment_lines_carry_metadata_and_shift_line_numbers(tmp_path):
    rows = small_rows()
    rows[4] = rows[4][:-1] + ("oops",)
    p = tmp_path / "c.csv"
    p.write_text("# technology: test chip\n# note: x\n" + tidy_text(rows))
    with pytest.raises(MeasuredDataError, match=r"line 8 \(header on line 3\): column 'g_uS' has 'oops'"):
        read_tidy(p)
    rows[4] = small_rows()[4]
    p.write_text("# technology: test chip\n" + tidy_text(rows))
    assert read_tidy(p).meta == {"technology": "test chip"}


def test_gzip_input(tmp_path):
    p = tmp_path / "c.csv.gz"
    with gzip.open(p, "wt") as fh:
        fh.write(tidy_text(small_rows()))
    assert read_measured(p).levels.size == 2


@pytest.mark.parametrize("mutate, pattern", [
    (lambda r: r.__setitem__(3, r[3][:7] + ("",)), r"line 5 .*column 'g_uS' is empty"),
    (lambda r: r.__setitem__(2, r[2][:7] + ("nan",)), r"line 4 .*column 'g_uS' is NaN"),
    (lambda r: r.__setitem__(2, r[2][:7] + ("inf",)), r"line 4 .*column 'g_uS' is infinite"),
    (lambda r: r.__setitem__(1, r[1][:7] + (-1.0,)), r"line 3 .*negative conductance -1 uS"),
    (lambda r: r.__setitem__(0, (0, 0.5) + r[0][2:]), r"line 2 .*column 'level' must hold integers"),
    (lambda r: r.__setitem__(0, r[0][:5] + (-1.0,) + r[0][6:]), r"line 2 .*read time must be >= 0"),
    (lambda r: r.__setitem__(7, r[7][:3] + (9.0,) + r[7][4:]), r"line 9 .*'g_lo_uS' differs"),
])
def test_tidy_cell_errors_name_the_line(tmp_path, mutate, pattern):
    rows = small_rows()
    mutate(rows)
    p = tmp_path / "c.csv"
    p.write_text(tidy_text(rows))
    with pytest.raises(MeasuredDataError, match=pattern) as e:
        read_tidy(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_small_negative_read_is_kept(tmp_path):
    """A read slightly below zero is a read-circuit offset (tech C has one at -0.12 uS), not an error."""
    rows = small_rows()
    rows[0] = rows[0][:7] + (-0.03,)
    p = tmp_path / "c.csv"
    p.write_text(tidy_text(rows))
    assert read_tidy(p).g_uS[(0, 0)].min() == pytest.approx(-0.03)


def test_structural_errors(tmp_path):
    p = tmp_path / "c.csv"
    with pytest.raises(MeasuredDataError, match="no such file"):
        read_tidy(p)
    p.write_text("")
    with pytest.raises(MeasuredDataError, match="empty"):
        read_measured(p)
    p.write_text(HEADER)
    with pytest.raises(MeasuredDataError, match="no data rows"):
        read_tidy(p)
    p.write_text(tidy_text(small_rows()).replace("g_uS\n", "conductance\n", 1))
    with pytest.raises(MeasuredDataError, match=r"missing column 'g_uS'.*--col-g"):
        read_tidy(p)
    one_level = [r for r in small_rows() if r[1] == 0]
    p.write_text(tidy_text(one_level))
    with pytest.raises(MeasuredDataError, match="at least 2 levels"):
        read_tidy(p)
    swapped = [r[:2] + (4.0 - r[2],) + r[3:] for r in small_rows()]
    p.write_text(tidy_text(swapped))
    with pytest.raises(MeasuredDataError, match="increase with the level"):
        read_tidy(p)
    p.write_text(tidy_text(small_rows()))
    with pytest.raises(MeasuredDataError, match="look like microsiemens"):
        read_tidy(p, units="S")
    with pytest.raises(MeasuredDataError, match="cannot tell the unit"):
        read_tidy(p, TidyColumns(g="cell"))


def test_summary_round_trip(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text(tidy_text(small_rows(30)))
    cells = read_tidy(p)
    table = summarize(cells)
    assert list(table.columns) == list(SUMMARY_COLUMNS) + ["n_miss_near_gmin", "n_miss_near_gmax"]
    s = tmp_path / "s.csv"
    s.write_text(summary_to_csv(table, {"source": "unit test"}))
    assert detect_format(s) == "summary" and detect_format(p) == "tidy"
    summ = read_measured(s)
    assert isinstance(summ, SummaryTable) and summ.meta == {"source": "unit test"}
    row = summ.rows[(1, 1)]
    g = cells.g_uS[(1, 1)]
    assert row["n"] == g.size
    assert row["std_uS"] == pytest.approx(np.std(g, ddof=1), abs=1e-6)
    np.testing.assert_allclose([row[c] for c in QUANTILE_COLUMNS], np.quantile(g, QUANTILES), atol=1e-6)


def test_summary_checks(tmp_path):
    table = pd.read_csv(SUMMARY, comment="#")
    p = tmp_path / "s.csv"
    bad = table.copy()
    bad.loc[3, "q50_uS"] = bad.loc[3, "q75_uS"] + 1
    bad.to_csv(p, index=False)
    with pytest.raises(MeasuredDataError, match=r"line 5 .*must not decrease"):
        read_summary(p)
    dup = pd.concat([table, table.iloc[[7]]])
    dup.to_csv(p, index=False)
    with pytest.raises(MeasuredDataError, match=r"line 194 .*appears twice \(first on line 9\)"):
        read_summary(p)
    neg = table.copy()
    neg.loc[0, "std_uS"] = -1
    neg.to_csv(p, index=False)
    with pytest.raises(MeasuredDataError, match=r"line 2 .*'std_uS' must be >= 0"):
        read_summary(p)


def test_shipped_summary_contents():
    s = read_summary(SUMMARY)
    assert s.levels.size == 32 and s.times_s.tolist() == [0.0, 0.01, 0.1, 1.0, 4.0, 1e5]
    assert (s.gmin_uS, s.gmax_uS) == (0.0, 40.0)
    np.testing.assert_allclose(s.target_uS, (np.arange(32) + 0.5) * 40 / 32)
    assert s.header_line == 6 and "MIT" in s.meta["citation"]
    assert min(r["n"] for r in s.rows.values()) >= 100  # fewest: 4 s reads (half the cells)


def test_miss_near_edges_rule():
    g = np.array([5.0, 0.3, 39.8, 6.25, 6.26, 20.0])
    # window [5, 6.25) of width 1.25; tolerance 1 % of the width; range [0, 40]
    assert miss_near_edges(g, 5.0, 6.25, 0.0, 40.0, 1.25) == (1, 1)


def test_read_noise_file(tmp_path):
    p = tmp_path / "rn.tsv.gz"
    rng = np.random.default_rng(0)
    with gzip.open(p, "wt") as fh:
        for lev in (0, 8):
            fh.write("\t".join([str(lev), "0"] + [f"{v:.6e}" for v in 1e-5 + 1e-7 * rng.standard_normal(500)]) + "\n")
    series = read_read_noise(p)
    assert [s.level for s in series] == [0.0, 8.0] and series[1].g_S.size == 500 and series[1].line == 2
    p2 = tmp_path / "bad.tsv"
    p2.write_text("0\t0\t" + "\t".join(["10.0"] * 200) + "\n")
    with pytest.raises(MeasuredDataError, match="line 1 .*look like microsiemens"):
        read_read_noise(p2)
    p2.write_text("0\t0\t" + "\t".join(["1e-5"] * 50) + "\n")
    with pytest.raises(MeasuredDataError, match="need at least 100"):
        read_read_noise(p2)
    p2.write_text("0\t0\t" + "\t".join(["1e-5"] * 100 + ["-1e-5"]) + "\n")
    with pytest.raises(MeasuredDataError, match="field 103: conductance must be finite and > 0"):
        read_read_noise(p2)
    p2.write_text("")
    with pytest.raises(MeasuredDataError, match="empty"):
        read_read_noise(p2)


@pytest.mark.skipif(not (SHARED / "rram_techC_cells.csv").exists(), reason=f"measured data not found in {SHARED}")
def test_measured_tech_c_facts():
    c = read_tidy(SHARED / "rram_techC_cells.csv")
    assert c.levels.size == 32 and (c.gmin_uS, c.gmax_uS) == (0.0, 40.0)
    n0 = sum(g.size for (t, _), g in c.g_uS.items() if t == 0)
    assert n0 == 16223
    assert min(g.min() for g in c.g_uS.values()) < 0  # the one -0.12 uS read is kept


# ------------------------------------------------------------------ issue #15 inputs
def summary_frame(tmp_path: Path, n: int = 30) -> pd.DataFrame:
    p = tmp_path / "cells_for_summary.csv"
    p.write_text(tidy_text(small_rows(n)))
    return summarize(read_tidy(p))


def test_duplicate_column_names_refused(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text(tidy_text(small_rows()).replace(",t_s,", ",g_uS,", 1))  # read times under the name g_uS
    for read in (read_tidy, read_measured, detect_format):
        with pytest.raises(MeasuredDataError,
                           match=r"line 1 \(header\): column 'g_uS' appears twice \(columns 7 and 8\)") as e:
            read(p)
        assert str(p) in str(e.value)
    s = tmp_path / "s.csv"
    s.write_text("# note: x\n" + summary_to_csv(summary_frame(tmp_path)).replace(",q99_uS", ",q95_uS"))
    with pytest.raises(MeasuredDataError, match=r"line 2 \(header\): column 'q95_uS' appears twice"):
        read_summary(s)
    p.write_text(tidy_text(small_rows()).replace(",t_s,", ", g_uS ,", 1))  # the same name once stripped
    with pytest.raises(MeasuredDataError, match="'g_uS' appears twice"):
        read_tidy(p)
    p.write_text(tidy_text(small_rows()).replace("\n", ",,\n"))  # unnamed empty columns are not duplicates
    assert read_tidy(p).levels.size == 2


def test_summary_refuses_negative_conductances(tmp_path):
    table = summary_frame(tmp_path)
    p = tmp_path / "s.csv"
    for col, value, line in (("q01_uS", -1.0, 3), ("mean_uS", -0.5, 4)):
        bad = table.copy()
        bad.loc[line - 2, col] = value
        if col == "q01_uS":
            bad.loc[line - 2, "q05_uS"] = max(bad.loc[line - 2, "q05_uS"], value)
        p.write_text(summary_to_csv(bad))
        pattern = rf"line {line} .*column '{col}': negative conductance {value:g} uS"
        with pytest.raises(MeasuredDataError, match=pattern) as e:
            read_summary(p)
        assert str(p) in str(e.value)
    ok = table.copy()
    ok.loc[0, "q01_uS"] = -0.02  # within the read offset tolerated (1 % of gmax = 0.04 uS)
    p.write_text(summary_to_csv(ok))
    assert read_summary(p).rows[(0, 0)]["q01_uS"] == pytest.approx(-0.02)
    with pytest.raises(MeasuredDataError, match="negative conductance"):
        read_measured(p, neg_tol_frac=0.0)


def test_byte_order_mark_accepted_in_every_format(tmp_path):
    bom = b"\xef\xbb\xbf"
    text = tidy_text(small_rows())
    for name, data, line in [("c.csv", bom + b"# technology: t\n" + text.encode(), 3),
                             ("d.csv", bom + text.encode(), 2),
                             ("e.csv.gz", gzip.compress(bom + b"# technology: t\n" + text.encode()), 3)]:
        p = tmp_path / name
        p.write_bytes(data)
        c = read_measured(p)
        assert isinstance(c, CellTable) and c.levels.size == 2 and c.first_line[(0, 0)] == line
        assert c.meta == ({"technology": "t"} if line == 3 else {})
    s = tmp_path / "s.csv"
    s.write_bytes(bom + summary_to_csv(summary_frame(tmp_path), {"source": "x"}).encode())
    assert detect_format(s) == "summary" and read_measured(s).meta == {"source": "x"}
    rn = tmp_path / "rn.tsv"
    rn.write_bytes(bom + ("3\t0\t" + "\t".join(["1e-5"] * 120) + "\n").encode())
    assert read_read_noise(rn)[0].level == 3.0


def test_summary_missing_std_is_still_a_summary(tmp_path):
    s = tmp_path / "s.csv"
    s.write_text(summary_to_csv(summary_frame(tmp_path).drop(columns=["std_uS"]), {"source": "x"}))
    assert detect_format(s) == "summary"
    with pytest.raises(MeasuredDataError, match=r"missing column 'std_uS'.*summary format") as e:
        read_measured(s)
    assert "--col-" not in str(e.value) and "g_uS" not in str(e.value)


@pytest.mark.parametrize("neg_tol", [-0.1, float("nan"), float("inf")])
def test_bad_neg_tol_is_not_blamed_on_the_data(tmp_path, neg_tol):
    p = tmp_path / "c.csv"
    p.write_text(tidy_text(small_rows()))
    with pytest.raises(MeasuredDataError, match="--neg-tol must be a finite number >= 0") as e:
        read_measured(p, neg_tol_frac=neg_tol)
    assert "line" not in str(e.value)


def test_one_column_for_two_roles_refused(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text(tidy_text(small_rows()))
    with pytest.raises(MeasuredDataError, match="--col-target and --col-g both name the column 'g_target_uS'"):
        read_tidy(p, TidyColumns(g="g_target_uS"))


def test_unreadable_and_corrupt_files(tmp_path, monkeypatch):
    p = tmp_path / "c.csv.gz"
    raw = bytearray(gzip.compress(tidy_text(small_rows(30)).encode()))
    raw[30:50] = b"\xff" * 20
    p.write_bytes(bytes(raw))
    for read in (read_tidy, read_summary, read_read_noise, detect_format):
        with pytest.raises(MeasuredDataError, match="corrupt or truncated gzip data") as e:
            read(p)
        assert str(p) in str(e.value)
    for read in (read_tidy, read_read_noise, detect_format):
        with pytest.raises(MeasuredDataError, match="is a directory"):
            read(tmp_path)
    q = tmp_path / "ok.csv"
    q.write_text(tidy_text(small_rows()))

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(MeasuredDataError, match=r"ok.csv: cannot read the file \(Permission denied\)"):
        read_measured(q)


def test_read_noise_level_must_be_finite(tmp_path):
    p = tmp_path / "rn.tsv"
    p.write_text("nan\t0\t" + "\t".join(["1e-5"] * 120) + "\n")
    with pytest.raises(MeasuredDataError, match="line 1 .*field 1 \\(the level\\) must be a finite number"):
        read_read_noise(p)


def test_tidy_only_options_refused_for_a_summary(tmp_path):
    s = tmp_path / "s.csv"
    s.write_text(summary_to_csv(summary_frame(tmp_path)))
    assert isinstance(read_measured(s, units="uS"), SummaryTable)
    with pytest.raises(MeasuredDataError, match="--units S applies to tidy per-cell data only"):
        read_measured(s, units="S")
    with pytest.raises(MeasuredDataError, match="--col-\\* applies to tidy per-cell data only"):
        read_measured(s, fmt="summary", columns=TidyColumns(g="G_uS"))

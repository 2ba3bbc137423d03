"""The sweep ledger (``results.csv``) against damaged files, and ``--out`` / config checks (issue #15).

A damaged row (cut short, unparseable) is a cell to rerun, reported once on stderr as one line
naming the file and line; it never counts as done and never reaches the summary. Rows are never
appended onto a line that lacks its newline. A bad ``--out`` is one line and exit 2 before any work.
"""
import csv
import shutil

import pytest

from training.sweep import (
    EVAL_LEDGER,
    SWEEP_LEDGER,
    LedgerError,
    append_row,
    main,
    read_rows,
    repair_ledger,
)

TINY = ["--model", "mlp", "--dataset", "digits", "--sigmas", "0.1", "--epochs", "1", "--batch-size", "64",
        "--lr", "0.005", "--train-limit", "256", "--test-limit", "128", "--eval-chips", "2", "--val-chips", "1",
        "--threads", "1", "--quiet", "--workers", "0"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-cell sweep (plain, nit; seed 0), copied by each test that damages it."""
    out = tmp_path_factory.mktemp("ledger") / "sw"
    assert main(TINY + ["--methods", "plain,nit", "--seeds", "1", "--out", str(out)]) == 0
    return out


def _copy(finished, tmp_path):
    out = tmp_path / "sw"
    shutil.copytree(finished, out)
    return out


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _summary(out):
    return {r["method"]: r for r in _rows(out / "summary.csv")}


def _lines(path):
    return path.read_bytes().decode().splitlines(keepends=True)


def _err_lines(capsys):
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def test_row_cut_after_a_field_is_rerun_not_done(finished, tmp_path, capsys):
    """The issue's case: a last row cut after ``nit,0.1,0,ok,0.65`` counted as done (acc 0.65, P(converge) 0)."""
    out = _copy(finished, tmp_path)
    good = _rows(out / "results.csv")
    head, plain, _nit = _lines(out / "results.csv")
    (out / "results.csv").write_text(head + plain + "nit,0.1,0,ok,0.65")
    capsys.readouterr()
    assert main(TINY + ["--methods", "plain,nit", "--seeds", "1", "--out", str(out)]) == 0
    err = _err_lines(capsys)
    assert len(err) == 1 and str(out / "results.csv") in err[0] and "line 3" in err[0], err
    rows = _rows(out / "results.csv")
    assert sorted((r["method"], r["status"]) for r in rows) == [("nit", "ok"), ("plain", "ok")]
    nit = next(r for r in rows if r["method"] == "nit")
    assert nit["acc_mean"] == next(r for r in good if r["method"] == "nit")["acc_mean"]
    summ = _summary(out)
    assert summ["nit"]["acc_mean"] == nit["acc_mean"] and float(summ["nit"]["convergence_probability"]) == 1.0
    assert "nit,0.1,0,ok,0.65" in (out / "results.csv.damaged").read_text()  # kept aside, not lost
    capsys.readouterr()
    assert main(TINY + ["--methods", "plain,nit", "--seeds", "1", "--out", str(out)]) == 0  # reported once
    assert _err_lines(capsys) == []


def test_row_cut_inside_its_key_is_one_line_not_a_traceback(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    head, plain, _nit = _lines(out / "results.csv")
    (out / "results.csv").write_text(head + plain + "nit,0.")
    capsys.readouterr()
    assert main(TINY + ["--methods", "plain,nit", "--seeds", "1", "--out", str(out)]) == 0
    err = _err_lines(capsys)
    assert len(err) == 1 and "line 3" in err[0]
    assert sorted(r["method"] for r in _rows(out / "results.csv")) == ["nit", "plain"]


def test_unparseable_field_is_a_damaged_row(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    head, plain, nit = _lines(out / "results.csv")
    f = nit.split(",")
    f[4] = "0.5x"  # acc_mean
    (out / "results.csv").write_text(head + plain + ",".join(f))
    rows = read_rows(out / "results.csv")
    assert [r["method"] for r in rows] == ["plain"]
    capsys.readouterr()
    assert main(TINY + ["--methods", "plain,nit", "--seeds", "1", "--out", str(out)]) == 0
    err = _err_lines(capsys)
    assert len(err) == 1 and "line 3" in err[0] and "acc_mean" in err[0]


def test_no_final_newline_never_glues_the_next_row(finished, tmp_path, capsys):
    """A ledger whose last (whole) row lacks its newline: the next row goes on a line of its own."""
    out = _copy(finished, tmp_path)
    text = (out / "results.csv").read_bytes()
    (out / "results.csv").write_bytes(text.rstrip(b"\r\n"))
    capsys.readouterr()
    assert main(TINY + ["--methods", "plain,nit", "--seeds", "2", "--out", str(out)]) == 0
    assert _err_lines(capsys) == []  # the last row was whole: nothing damaged
    rows = _rows(out / "results.csv")
    assert sorted((r["method"], r["seed"], r["status"]) for r in rows) == [
        ("nit", "0", "ok"), ("nit", "1", "ok"), ("plain", "0", "ok"), ("plain", "1", "ok")]
    assert {k: int(v["seeds"]) for k, v in _summary(out).items()} == {"nit": 2, "plain": 2}


def test_append_row_repairs_a_missing_final_newline(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text(",".join(SWEEP_LEDGER.fields) + "\r\nnit,0.1,0,ok,0.65")
    append_row(path, {"method": "plain", "sigma": 0.1, "seed": 1, "status": "failed", "error": "x"})
    lines = path.read_text().splitlines()
    assert lines[1] == "nit,0.1,0,ok,0.65" and lines[2].startswith("plain,0.1,1,failed,")
    assert [r["method"] for r in read_rows(path)] == ["plain"]  # the cut row is ignored


def test_foreign_csv_as_ledger_is_refused_untouched(tmp_path, capsys):
    out = tmp_path / "sw"
    out.mkdir()
    (out / "results.csv").write_text("name,value\na,1\n")
    assert main(TINY + ["--methods", "plain", "--seeds", "1", "--out", str(out)]) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and str(out / "results.csv") in err[0]
    assert (out / "results.csv").read_text() == "name,value\na,1\n"
    assert not (out / "runs").exists()
    with pytest.raises(LedgerError):
        read_rows(out / "results.csv")


def test_header_cut_short_is_rewritten(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("method,sigma,se")
    repair_ledger(path, SWEEP_LEDGER, log=lambda m: None)
    assert path.read_text() == ""  # an empty ledger: the next append writes the header
    append_row(path, {"method": "plain", "sigma": 0.1, "seed": 1, "status": "failed"})
    assert [r["seed"] for r in read_rows(path)] == ["1"]


def test_eval_ledger_schema_validates_rows(tmp_path):
    path = tmp_path / "results.csv"
    fields = EVAL_LEDGER.fields
    ok = {k: "" for k in fields} | {"method": "nit", "sigma": "0.3", "seed": "0", "variant": "a", "status": "ok",
                                    "acc_mean": "0.9", "chips": "3", "run_dir": "r"}
    for row in (ok, ok | {"variant": "b", "chips": "x"}):
        append_row(path, row, EVAL_LEDGER)
    assert [r["variant"] for r in read_rows(path, EVAL_LEDGER)] == ["a"]


# ------------------------------------------------------------------------------ --out
@pytest.mark.parametrize("make", ["file", "under_file"])
def test_bad_out_is_one_line_exit_2(tmp_path, capsys, make):
    f = tmp_path / "afile"
    f.write_text("mine\n")
    out = f if make == "file" else f / "sub" / "sw"
    assert main(TINY + ["--methods", "plain", "--seeds", "1", "--out", str(out)]) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and "--out" in err[0] and "Traceback" not in err[0]
    assert f.read_text() == "mine\n"


def test_unwritable_out_is_one_line_exit_2(capsys):
    """/proc takes no new folder, not even from root (CI runs as root, so chmod cannot make one)."""
    assert main(TINY + ["--methods", "plain", "--seeds", "1", "--out", "/proc/cimsim-nope/sw"]) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and "--out" in err[0]


def test_continuing_with_other_options_is_refused(finished, tmp_path, capsys):
    """Rerunning into an --out made with other options used to call its cells done (silently wrong)."""
    out = _copy(finished, tmp_path)
    before = (out / "results.csv").read_bytes(), (out / "sweep_config.json").read_bytes()
    capsys.readouterr()
    assert main([a if a != "1" or i != TINY.index("--epochs") + 1 else "2" for i, a in enumerate(TINY)]
                + ["--methods", "plain,nit", "--seeds", "1", "--out", str(out)]) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and "epochs" in err[0] and "--out" in err[0]
    assert ((out / "results.csv").read_bytes(), (out / "sweep_config.json").read_bytes()) == before
    # the same options (other threads: not a result-changing option) continue, and a wider grid is fine
    args = [a if a != "1" or i != TINY.index("--threads") + 1 else "2" for i, a in enumerate(TINY)]
    assert main(args + ["--methods", "plain,nit,ovf", "--seeds", "1", "--out", str(out)]) == 0
    assert len(_rows(out / "results.csv")) == 3


def test_continuing_after_a_named_file_changed_is_refused(tmp_path, capsys):
    """The same crossbar_config path with other contents used to continue the sweep, its earlier
    cells kept as if made with the new file."""
    from cimsim.crossbar.config import CrossbarConfig

    xb = tmp_path / "xb.toml"
    xb.write_text(CrossbarConfig(adc_bits=8).to_toml())
    out = tmp_path / "sw"
    args = TINY + ["--noise", "crossbar", "--crossbar-config", str(xb), "--methods", "plain", "--seeds", "1",
                   "--out", str(out)]
    assert main(args) == 0
    before = (out / "results.csv").read_bytes(), (out / "sweep_config.json").read_bytes()
    xb.write_text(CrossbarConfig(adc_bits=4).to_toml())
    capsys.readouterr()
    assert main(args) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and "crossbar_config" in err[0] and str(xb) in err[0] and "--out" in err[0], err
    assert ((out / "results.csv").read_bytes(), (out / "sweep_config.json").read_bytes()) == before
    xb.write_text(CrossbarConfig(adc_bits=8).to_toml())  # restored: the sweep continues
    assert main(args) == 0

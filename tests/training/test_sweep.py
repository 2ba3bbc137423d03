"""Sweep: two tiny cells write the CSV and plots; a rerun skips finished cells."""
import csv

import pytest

from training.config import ConfigError
from training.sweep import main, parse_seeds, parse_sigmas


def test_parse_grid():
    assert parse_sigmas("0:0.4:0.05") == pytest.approx([0.05 * i for i in range(9)])
    assert parse_sigmas("0.1,0.3") == [0.1, 0.3]
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("4,7") == [4, 7]
    with pytest.raises(ConfigError):
        parse_sigmas("0:x:1")


def test_sweep_two_cells_and_resume(tmp_path, capsys):
    out = tmp_path / "sw"
    args = ["--model", "mlp", "--dataset", "digits", "--methods", "plain,nit", "--sigmas", "0.1", "--seeds", "1",
            "--epochs", "1", "--batch-size", "64", "--lr", "0.005", "--eval-chips", "4", "--val-chips", "1",
            "--out", str(out)]
    assert main(args) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["method"], float(r["sigma"]), int(r["seed"]), r["status"]) for r in rows] == [
        ("plain", 0.1, 0, "ok"), ("nit", 0.1, 0, "ok")]
    assert all(0 <= float(r["acc_mean"]) <= 1 and r["ekl"] != "" for r in rows)
    for f in ("summary.csv", "accuracy.png", "ekl.png"):
        assert (out / f).is_file()
    stamp = (out / "runs" / "nit_sigma0.1000_seed0" / "eval.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    assert "2 done, 0 to run" in capsys.readouterr().err
    assert len(list(csv.DictReader(open(out / "results.csv")))) == 2
    assert (out / "runs" / "nit_sigma0.1000_seed0" / "eval.json").stat().st_mtime_ns == stamp
    # A finished run folder whose row was lost is read back, not retrained.
    lines = open(out / "results.csv").read().splitlines()
    (out / "results.csv").write_text("\n".join(lines[:2]) + "\n")
    assert main(args) == 0
    assert len(list(csv.DictReader(open(out / "results.csv")))) == 2


def test_sweep_bad_method_no_folder(tmp_path):
    assert main(["--methods", "plain,bogus", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()

"""Tests of cimsim.io (all-or-nothing writes, messages naming the target) and of the quick start's
command line (``python -m cimsim``) on bad output paths; the quick start's study is stubbed."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

import cimsim.quickstart as quickstart
from cimsim.io import write_outputs


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ---------------------------------------------------------------------- write_outputs
def test_target_that_is_a_directory_writes_nothing_and_is_named(tmp_path):
    (tmp_path / "a.json").write_text("old")
    (tmp_path / "fig.png").mkdir()
    before = listing(tmp_path)
    with pytest.raises(OSError) as e:
        write_outputs({tmp_path / "a.json": "new", tmp_path / "new" / "b.csv": "x", tmp_path / "fig.png": b"png"})
    assert e.value.filename == str(tmp_path / "fig.png")
    assert ".fig.png." not in str(e.value) and "\n" not in str(e.value)
    assert (tmp_path / "a.json").read_text() == "old"
    assert listing(tmp_path) == before  # no temporary file, no folder 'new'


def test_write_error_names_the_target_not_the_temporary_file(tmp_path, monkeypatch):
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, fd):
            self.fh = real_fdopen(fd, "wb")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r": Full(fd))
    target = tmp_path / "sub" / "m.json"
    with pytest.raises(OSError) as e:
        write_outputs({target: "{}"})
    assert e.value.filename == str(target)
    assert str(target) in str(e.value) and "No space left" in str(e.value)
    assert listing(tmp_path) == set()  # the folder 'sub' made for the output is gone again


def test_failed_rename_restores_earlier_targets_and_removes_new_folders(tmp_path, monkeypatch):
    (tmp_path / "a.json").write_text("old")
    targets = {tmp_path / "a.json": "new", tmp_path / "d1" / "d2" / "b.csv": "b", tmp_path / "c.png": b"c"}
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == tmp_path / "c.png":
            raise OSError(errno.EIO, "Input/output error", str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError) as e:
        write_outputs(targets)
    assert e.value.filename == str(tmp_path / "c.png") and ".c.png." not in str(e.value)
    assert (tmp_path / "a.json").read_text() == "old"
    assert listing(tmp_path) == {"a.json"}


def test_write_outputs_replaces_and_creates(tmp_path):
    (tmp_path / "a.json").write_text("old")
    write_outputs({tmp_path / "a.json": "new", tmp_path / "d" / "b.bin": b"\x00\x01"})
    assert (tmp_path / "a.json").read_text() == "new"
    assert (tmp_path / "d" / "b.bin").read_bytes() == b"\x00\x01"
    assert listing(tmp_path) == {"a.json", "d", "d/b.bin"}


def test_check_outputs_refuses_unwritable_targets(tmp_path):
    from cimsim.io import check_outputs

    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match="not a directory") as e:
        check_outputs([tmp_path / "ok.json", tmp_path / "file" / "sub" / "m.json"])
    assert e.value.filename == str(tmp_path / "file" / "sub" / "m.json")
    with pytest.raises(OSError, match="is a directory"):
        check_outputs([tmp_path])
    with pytest.raises(OSError, match="same file"):
        check_outputs([tmp_path / "x.json", tmp_path / "sub" / ".." / "x.json"])


# ------------------------------------------------------------------------ quick start
@pytest.fixture
def fast_study(monkeypatch):
    """The quick start with its crossbar study replaced by a stub (the fit and the writing stay real)."""
    def study(device_json, chips=8, **kw):
        assert Path(device_json).exists()
        return [dict(read_time_s=t, adc_bits=b, chips=chips, rel_rms_error_mean=0.1, rel_rms_error_std=0.01)
                for t in quickstart.READ_TIMES_S for b in quickstart.ADC_BITS]

    monkeypatch.setattr(quickstart, "crossbar_error_study", study)


def cells_csv(path: Path, n_levels: int = 4) -> Path:
    """A small tidy per-cell file (reads at 0 and 1 s, 30 cells per level, windows 10 uS wide)."""
    rng = np.random.default_rng(0)
    lines = ["cell,level,g_target_uS,g_lo_uS,g_hi_uS,t_nominal_s,t_s,g_uS"]
    for lev in range(n_levels):
        for c in range(30):
            for t in (0.0, 1.0):
                g = lev * 10 + 5 + rng.uniform(-4, 4)
                lines.append(f"{lev * 100 + c},{lev},{lev * 10 + 5},{lev * 10},{lev * 10 + 10},{t},{t},{g:.4f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def run_quickstart(capsys, *argv: str) -> tuple[int, str]:
    rc = quickstart.main([*argv, "--read-noise", "", "--chips", "2"])
    err = capsys.readouterr().err.strip()
    return rc, err


def test_quickstart_writes_everything_at_the_end(tmp_path, capsys, fast_study):
    data = cells_csv(tmp_path / "cells.csv")
    rc, err = run_quickstart(capsys, "--data", str(data), "--out", str(tmp_path / "out"))
    assert rc == 0, err
    assert listing(tmp_path / "out") == set(quickstart.OUTPUTS)


def test_quickstart_output_failure_writes_nothing(tmp_path, capsys, fast_study):
    data = cells_csv(tmp_path / "cells.csv")
    out = tmp_path / "out"
    (out / "crossbar_error.png").mkdir(parents=True)
    rc, err = run_quickstart(capsys, "--data", str(data), "--out", str(out))
    assert rc == 2 and err.count("\n") == 0 and "Traceback" not in err
    assert str(out / "crossbar_error.png") in err
    assert listing(out) == {"crossbar_error.png"}  # no rram.json / rram_fit.png left from the fit


def test_quickstart_out_is_a_file(tmp_path, capsys, fast_study):
    data = cells_csv(tmp_path / "cells.csv")
    out = tmp_path / "out"
    out.write_text("mine")
    rc, err = run_quickstart(capsys, "--data", str(data), "--out", str(out))
    assert rc == 2 and err.count("\n") == 0 and "not a directory" in err and str(out) in err
    assert out.read_text() == "mine"


def test_quickstart_refuses_to_overwrite_its_input(tmp_path, capsys, fast_study):
    out = tmp_path / "out"
    out.mkdir()
    data = cells_csv(out / "rram.json")  # measured data under the name of an output
    before = data.read_bytes()
    rc, err = run_quickstart(capsys, "--data", str(data), "--out", str(out))
    assert rc == 2 and err.count("\n") == 0 and "--data" in err and "rram.json" in err
    assert data.read_bytes() == before and listing(out) == {"rram.json"}


def test_quickstart_bad_option_is_one_line(capsys):
    for argv in (["--chips", "x"], ["--chips", "1"]):
        rc = quickstart.main(argv)
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.count("\n") == 0 and "--chips" in err, err


def test_quickstart_device_unfit_for_the_study_is_one_line(tmp_path, capsys):
    data = cells_csv(tmp_path / "two.csv", n_levels=2)  # a 2-bit cell needs 4 levels: the real study refuses it
    rc, err = run_quickstart(capsys, "--data", str(data), "--out", str(tmp_path / "out"))
    assert rc == 2 and err.count("\n") == 0 and "Traceback" not in err
    assert "two.csv" in err and "has only 2" in err
    assert not (tmp_path / "out").exists()


def test_read_table_reads_toml_and_json_and_says_what_is_wrong_in_one_line(tmp_path):
    from cimsim.io import read_table

    class Bad(ValueError):
        pass

    (tmp_path / "a.toml").write_text("x = 1\n")
    (tmp_path / "a.json").write_bytes(b"\xef\xbb\xbf" + b'{"x": 1}')  # a byte-order mark is fine
    assert read_table(tmp_path / "a.toml", "thing", Bad) == read_table(tmp_path / "a.json", "thing", Bad) == {"x": 1}
    (tmp_path / "list.json").write_text("[1]")
    (tmp_path / "bad.toml").write_text("x = [")
    for path, match in ((tmp_path / "missing.json", "no such thing file"), (tmp_path, "cannot read the thing file"),
                        (tmp_path / "list.json", "a thing is a table of fields, got list"),
                        (tmp_path / "bad.toml", "cannot parse the thing")):
        with pytest.raises(Bad, match=match) as e:
            read_table(path, "thing", Bad)
        assert "\n" not in str(e.value) and str(path) in str(e.value)

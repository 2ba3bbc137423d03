"""Sweep: two tiny cells write the CSV and plots; a rerun skips finished cells; the local engine's
fault handling (dead workers retried, raising cells recorded as failed, Ctrl-C then --resume)."""
import csv
import os
import signal
import subprocess
import sys
import time

import pytest

from training.run_config import ConfigError
from training.engines import LocalEngine, Task
from training.sweep import (
    FAULT_ENV,
    ROW_FIELDS,
    append_row,
    drop_failed_rows,
    failed_row,
    main,
    parse_faults,
    parse_seeds,
    parse_sigmas,
    run_cell,
)


def test_parse_grid():
    assert parse_sigmas("0:0.4:0.05") == pytest.approx([0.05 * i for i in range(9)])
    assert parse_sigmas("0.1,0.3") == [0.1, 0.3]
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("4,7") == [4, 7]
    with pytest.raises(ConfigError):
        parse_sigmas("0:x:1")


def test_grid_refuses_two_sigmas_in_one_run_folder_and_keeps_one_of_a_repeat(tmp_path):
    """sigmas 0.10001 and 0.10004 shared the folder nit_sigma0.1000_seed0: the second cell took the
    first one's result as its own."""
    from training.run_config import RunConfig
    from training.sweep import grid

    base = RunConfig(model="mlp", dataset="digits")
    with pytest.raises(ConfigError, match="0.10001 and 0.10004"):
        grid(base, ["nit"], [0.10001, 0.10004], [0])
    assert [(c.sigma, c.seed) for c in grid(base, ["nit"], [0.1, 0.2, 0.1], [0])] == [(0.1, 0), (0.2, 0)]
    err = tmp_path / "none"
    assert main(["--model", "mlp", "--dataset", "digits", "--sigmas", "0.10001,0.10004", "--out", str(err),
                 "--quiet", "--workers", "0"]) == 2 and not err.exists()


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


# --------------------------------------------------------------------- engines, faults, ledger
TINY = ["--model", "mlp", "--dataset", "digits", "--sigmas", "0.1", "--epochs", "1", "--batch-size", "64",
        "--lr", "0.005", "--train-limit", "256", "--test-limit", "128", "--eval-chips", "2", "--val-chips", "1",
        "--threads", "1", "--quiet"]


def _read(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _statuses(path):
    return sorted((r["method"], int(r["seed"]), r["status"]) for r in _read(path))


def test_importing_training_does_not_import_ray():
    code = ("import sys, training.sweep, training.engines, training.evaluate, training.train; "
            "print('ray' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_ray_engine_without_ray_says_how_to_install(tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from training.sweep import main; "
            f"sys.exit(main(['--model', 'mlp', '--methods', 'plain', '--out', {str(tmp_path / 'x')!r}, '--engine', 'ray']))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install -e ".[ray]"' in lines[0]
    assert not (tmp_path / "x").exists()


def test_local_engine_retries_dead_worker_and_records_failed_cell(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sw"
    args = TINY + ["--methods", "plain", "--seeds", "3", "--out", str(out), "--workers", "2", "--retries", "1"]
    monkeypatch.setenv(FAULT_ENV, "crash_once=plain_sigma0.1000_seed0;raise=plain_sigma0.1000_seed2")
    assert main(args) == 1
    assert "1 of 3 cell(s) failed" in capsys.readouterr().err
    assert _statuses(out / "results.csv") == [("plain", 0, "ok"), ("plain", 1, "ok"), ("plain", 2, "failed")]
    assert (out / "runs" / "plain_sigma0.1000_seed0.crashed-once").exists()
    row = next(r for r in _read(out / "results.csv") if r["seed"] == "2")
    assert row["error"].startswith("RuntimeError: injected fault")
    monkeypatch.delenv(FAULT_ENV)
    assert main(args + ["--retry-failed"]) == 0
    assert _statuses(out / "results.csv") == [("plain", 0, "ok"), ("plain", 1, "ok"), ("plain", 2, "ok")]


def test_local_engine_survives_dead_worker(tmp_path):
    """The engine layer alone: a task that kills its worker once is retried in a rebuilt pool."""
    marker = str(tmp_path / "died")
    with LocalEngine(workers=2, retries=1) as eng:
        outs = {o.key: o for o in eng.run([Task(i, _die_once, (i, marker)) for i in range(4)])}
    assert sorted(outs) == [0, 1, 2, 3] and all(o.ok for o in outs.values())
    assert [outs[i].value for i in range(4)] == [0, 10, 20, 30] and eng.pool_restarts == 1
    with LocalEngine(workers=1, retries=0) as eng:  # no retries left: the task fails, the others run
        outs = {o.key: o for o in eng.run([Task(i, _die_once, (i, str(tmp_path / "again"))) for i in range(3)])}
    assert not outs[1].ok and "worker process died" in outs[1].error
    assert outs[0].value == 0 and outs[2].value == 20


def _die_once(i, marker):
    """Task for the test above: task 1 kills its worker the first time it runs."""
    if i == 1 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(70)
    return 10 * i


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_leaves_valid_csv_and_resume_finishes(tmp_path):
    # 16 cells of ~0.3 s: seconds of work left after the first row, so a poller starved by a loaded
    # machine still interrupts the sweep (with 6 cells one CI run saw it finish first)
    out = tmp_path / "sw"
    args = TINY + ["--methods", "plain,nit", "--seeds", "8", "--out", str(out), "--workers", "1"]
    cmd = [sys.executable, "-m", "training.sweep", *args]
    # Ctrl-C as a terminal delivers it: the child starts with SIGINT at its default (so Python turns
    # it into KeyboardInterrupt) and unblocked, whatever the test process inherited or set
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "results.csv").exists() and len(_statuses(out / "results.csv")) >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, signal.getsignal(signal.SIGINT), err)
    assert "rerun with --resume" in err
    done = _statuses(out / "results.csv")  # parses: every row whole
    assert len(done) == len(set(done)) and all(s == "ok" for *_, s in done)
    assert main(args + ["--resume"]) == 0
    assert [(m, k) for m, k, _ in _statuses(out / "results.csv")] == [(m, k) for m in ("nit", "plain") for k in range(8)]


def test_ledger_keeps_an_older_header_and_drops_failed_rows(tmp_path):
    path = tmp_path / "results.csv"
    old = [f for f in ROW_FIELDS if f != "error"]
    path.write_text(",".join(old) + "\n")
    append_row(path, failed_row("plain", 0.1, 0, tmp_path, "ValueError: bad\nthing"))
    append_row(path, {"method": "plain", "sigma": 0.1, "seed": 1, "status": "ok"})
    rows = _read(path)
    assert list(rows[0]) == old and [r["status"] for r in rows] == ["failed", "ok"]
    append_row(path, failed_row("nit", 0.1, 0, tmp_path, "not in the grid now"))
    assert drop_failed_rows(path, {("plain", 0.1, 0)}) == 1  # only the cells about to run again
    assert [(r["method"], r["seed"]) for r in _read(path)] == [("plain", "1"), ("nit", "0")]
    assert drop_failed_rows(path) == 1
    assert [r["seed"] for r in _read(path)] == ["1"]
    assert parse_faults("crash_once=a,b;raise=c") == {"crash_once": {"a", "b"}, "raise": {"c"}}


def test_cell_restarts_when_a_checkpoint_was_cut_short(tmp_path):
    """A worker killed while saving leaves a truncated checkpoint: the cell starts afresh, not fails."""
    from training.run_config import RunConfig

    cfg = RunConfig(model="mlp", dataset="digits", epochs=1, batch_size=64, lr=5e-3, train_limit=256,
                    test_limit=128, eval_chips=2, val_chips=1, threads=1, seed=3)
    rd = tmp_path / "runs" / "cell"
    part = rd.with_name("cell.partial")
    part.mkdir(parents=True)
    (part / "last.pt").write_bytes(b"PK\x03\x04 cut short")
    row = run_cell(cfg.to_dict(), str(rd), 1)
    assert row["status"] == "ok" and (rd / "eval.json").is_file() and not part.exists()
    assert run_cell(cfg.to_dict(), str(rd), 1)["acc_mean"] == row["acc_mean"]  # idempotent: read back

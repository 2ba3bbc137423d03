"""The Ray engine on a real local Ray cluster (one session for the module, 2 CPUs).

Same CSV as the local engine for the same seeds; a cell whose worker dies once is retried and
recorded once; a cell that raises is recorded as failed while the rest finish; Monte Carlo chips
fanned out to Ray equal the local ones chip for chip. Ray's files (session folder, auth token under
HOME) go to this module's temporary folder, and Ray is shut down at the end.
"""
import csv
import json
import shutil
import tempfile

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]' or '.[test]')")

from training.engines import InlineEngine, RayEngine
from training.evaluate import evaluate_run
from training.evaluate import main as evaluate_main
from training.sweep import FAULT_ENV
from training.sweep import main as sweep_main

BASE = ["--model", "mlp", "--dataset", "digits", "--sigmas", "0.1", "--epochs", "1", "--batch-size", "64",
        "--lr", "0.005", "--eval-chips", "4", "--val-chips", "1", "--threads", "1", "--quiet"]
METRICS = ["acc_mean", "acc_std", "acc_min", "ekl", "confidence", "clean_test_acc", "best_val_acc_clean",
           "best_val_acc_noisy", "best_epoch", "chips"]


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    """A local Ray (2 CPUs, no dashboard) whose HOME and temp folder lie in this module's tmp folder."""
    root = tmp_path_factory.mktemp("ray")
    # Ray's unix sockets live under its temp dir; their paths must stay under ~107 characters.
    short = len(str(root)) > 40
    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp") if short else str(root / "t")
    mp = pytest.MonkeyPatch()
    mp.setenv("HOME", str(root / "home"))
    mp.setenv("RAY_TMPDIR", tmp)
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, log_to_driver=False)
    yield root
    ray.shutdown()
    mp.undo()
    if short:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """The 4-cell reference sweep on the local engine (2 worker processes)."""
    out = tmp_path_factory.mktemp("local") / "sw"
    assert sweep_main(BASE + ["--methods", "plain,nit", "--seeds", "2", "--out", str(out), "--workers", "2"]) == 0
    return out


def _rows(path):
    with open(path, newline="") as fh:
        return sorted(csv.DictReader(fh), key=lambda r: (r["method"], int(r["seed"])))


def test_ray_sweep_equals_local(ray_session, local_sweep, tmp_path):
    out = tmp_path / "sw"
    args = BASE + ["--methods", "plain,nit", "--seeds", "2", "--out", str(out), "--engine", "ray", "--cpus-per-cell", "1"]
    assert sweep_main(args) == 0
    ray_rows, local_rows = _rows(out / "results.csv"), _rows(local_sweep / "results.csv")
    assert [(r["method"], r["sigma"], r["seed"], r["status"]) for r in ray_rows] == \
        [(r["method"], r["sigma"], r["seed"], r["status"]) for r in local_rows]
    assert len(ray_rows) == 4 and all(r["status"] == "ok" for r in ray_rows)
    for a, b in zip(ray_rows, local_rows):
        for k in METRICS:
            assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-6, abs=1e-9), k
    assert (out / "summary.csv").is_file()


def test_ray_retries_dead_worker_and_records_failed_cell(ray_session, tmp_path, monkeypatch):
    out = tmp_path / "sw"
    args = BASE + ["--methods", "plain", "--seeds", "3", "--out", str(out), "--engine", "ray", "--retries", "2"]
    monkeypatch.setenv(FAULT_ENV, "crash_once=plain_sigma0.1000_seed1;raise=plain_sigma0.1000_seed2")
    assert sweep_main(args) == 1  # one failed cell
    rows = _rows(out / "results.csv")
    assert [(r["seed"], r["status"]) for r in rows] == [("0", "ok"), ("1", "ok"), ("2", "failed")]
    assert (out / "runs" / "plain_sigma0.1000_seed1.crashed-once").exists()  # the worker really died once
    assert "injected fault" in rows[2]["error"] and "\n" not in rows[2]["error"]
    monkeypatch.delenv(FAULT_ENV)
    assert sweep_main(args + ["--resume", "--retry-failed"]) == 0
    rows = _rows(out / "results.csv")
    assert [(r["seed"], r["status"]) for r in rows] == [("0", "ok"), ("1", "ok"), ("2", "ok")]


def test_ray_monte_carlo_equals_local_chip_for_chip(ray_session, local_sweep, tmp_path):
    run = local_sweep / "runs" / "nit_sigma0.1000_seed1"
    assert evaluate_main(["--run", str(run), "--chips", "10", "--engine", "ray", "--chunk-size", "3",
                          "--out", str(tmp_path / "mc.json")]) == 0
    on_ray = json.loads((tmp_path / "mc.json").read_text())
    inline = evaluate_run(run, chips=10, engine=InlineEngine(), chunk_size=10)
    assert on_ray["acc_per_chip"] == inline.acc_per_chip.tolist()
    for k in ("acc_mean", "acc_std", "ekl", "confidence"):
        assert on_ray[k] == pytest.approx(inline.metrics[k], rel=1e-9, abs=1e-12)
    # ... and equal to the chips the training run itself evaluated (chip i: seed from (run seed, i)).
    trained = np.loadtxt(run / "chips.csv", delimiter=",", skiprows=1, usecols=2)
    assert np.allclose(inline.acc_per_chip[:4], trained, atol=1e-6)
    with RayEngine(cpus_per_task=1) as eng:
        again = evaluate_run(run, chips=10, engine=eng, chunk_size=4)
    assert again.acc_per_chip.tolist() == on_ray["acc_per_chip"]
    assert ray.is_initialized()  # an engine joining an open session leaves it open


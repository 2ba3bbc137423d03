"""RunConfig.precision: bfloat16 autocast in training and every evaluation path, float32 unchanged."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from training.config import ConfigError, RunConfig
from training.evaluate import evaluate_run
from training.precision import autocast
from training.train import main as train_main
from training.train import run


def test_precision_choices_and_crossbar_refused():
    assert RunConfig().precision == "float32"
    with pytest.raises(ConfigError, match="precision"):
        RunConfig(precision="float16")
    with pytest.raises(ConfigError, match="crossbar"):
        RunConfig(precision="bfloat16", noise="crossbar")
    RunConfig(precision="bfloat16", noise="device", device_model="rram", sigma_mode="multiply", sigma=1.0)


def test_cli_refuses_bfloat16_on_crossbar_in_one_line(tmp_path, capsys):
    assert train_main(["--precision", "bfloat16", "--noise", "crossbar", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "precision" in err[-1] and "crossbar" in err[-1]
    assert not (tmp_path / "r").exists()


def test_autocast_context():
    conv = torch.nn.Conv2d(1, 4, 3)
    x = torch.randn(2, 1, 8, 8)
    with autocast("float32", "cpu"):
        assert conv(x).dtype == torch.float32
    with autocast("bfloat16", "cpu"):
        assert conv(x).dtype == torch.bfloat16
    with pytest.raises(ValueError):
        autocast("int8", "cpu")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same NIT run on digits in float32 and in bfloat16."""
    root = tmp_path_factory.mktemp("precision")
    base = RunConfig(model="mlp", dataset="digits", method="nit", sigma=0.2, epochs=8, train_limit=800,
                     test_limit=300, eval_chips=6, val_chips=2, threads=1, seed=3)
    out = {}
    for p in ("float32", "bfloat16"):
        run(base.replace(precision=p), root / p, quiet=True)
        out[p] = root / p
    return out


def test_bfloat16_training_changes_numerics_not_accuracy(runs):
    m32 = pd.read_csv(runs["float32"] / "metrics.csv")
    m16 = pd.read_csv(runs["bfloat16"] / "metrics.csv")
    assert not m32["train_loss"].equals(m16["train_loss"])  # the training forwards really ran in bfloat16
    e32 = json.loads((runs["float32"] / "eval.json").read_text())
    e16 = json.loads((runs["bfloat16"] / "eval.json").read_text())
    assert e32["clean_test_acc"] > 0.8
    assert abs(e32["clean_test_acc"] - e16["clean_test_acc"]) < 0.05
    assert abs(e32["acc_mean"] - e16["acc_mean"]) < 0.05
    assert RunConfig.load(runs["bfloat16"] / "config.json").precision == "bfloat16"  # recorded with the run


def test_reevaluation_uses_the_runs_precision(runs):
    own = json.loads((runs["bfloat16"] / "eval.json").read_text())
    again = evaluate_run(runs["bfloat16"], threads=1)  # bfloat16, as trained
    assert again.metrics["confidence"] == pytest.approx(own["confidence"], abs=1e-7)
    assert again.metrics["ekl"] == pytest.approx(own["ekl"], abs=1e-7)
    as32 = evaluate_run(runs["bfloat16"], threads=1, overrides={"precision": "float32"})
    assert abs(as32.metrics["confidence"] - own["confidence"]) > 1e-6  # the precision really changed the forwards
    assert abs(as32.metrics["acc_mean"] - own["acc_mean"]) < 0.03

"""RunConfig.precision: bfloat16 autocast in training and every evaluation path, float32 unchanged."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from training.run_config import ConfigError, RunConfig
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


def test_feedback_and_penalty_stay_float32_under_autocast():
    from training.methods import negative_feedback_logits, orthogonality_penalty
    from training.models import build_model

    z0 = torch.full((2, 3), 100.0, dtype=torch.bfloat16)
    zs = [torch.full((2, 3), 100.0, dtype=torch.bfloat16)]
    out = negative_feedback_logits(z0, zs, beta=1e-3)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.full((2, 3), (100.0 - 0.1) / 2))  # 50 - 0.05: lost in bfloat16 (step 0.25)
    torch.manual_seed(0)
    model = build_model("lenet", (1, 28, 28), 10)
    ref = orthogonality_penalty(model)
    with autocast("bfloat16", "cpu"):
        got = orthogonality_penalty(model)
    assert got.dtype == torch.float32 and float(got) == pytest.approx(float(ref), rel=1e-6)


def test_crossbar_reevaluation_of_a_bfloat16_run_is_float32():
    from training.evaluate import eval_config

    cfg = RunConfig(precision="bfloat16", noise="paper")
    assert eval_config(cfg, {"noise": "crossbar", "adc_bits": 6}).precision == "float32"
    assert eval_config(cfg, {"read_time_s": 10.0}).precision == "bfloat16"
    with pytest.raises(ConfigError, match="crossbar"):
        eval_config(cfg, {"noise": "crossbar", "precision": "bfloat16"})


@pytest.mark.parametrize("model,method,noise", [("vgg8", "ovf", "paper"), ("vgg8", "irs", "paper"),
                                                ("vgg8", "correctnet", "paper"), ("mlp", "ovf", "device")])
def test_every_method_trains_in_bfloat16(model, method, noise, tmp_path):
    """VGG-8 (convolutions + BatchNorm on bfloat16 activations) with each NeFT method; the device backend."""
    kw = dict(device_model="rram", sigma_mode="multiply", sigma=1.0) if noise == "device" else dict(sigma=0.2)
    cfg = RunConfig(model=model, dataset="digits", method=method, noise=noise, precision="bfloat16", epochs=1,
                    batch_size=32, train_limit=64, test_limit=20, eval_chips=2, val_chips=1, threads=1, **kw)
    res = run(cfg, tmp_path / method, quiet=True)
    m = pd.read_csv(tmp_path / method / "metrics.csv")
    assert m["train_loss"].notna().all() and (m["train_loss"] < 1e3).all()
    assert 0.0 <= res["acc_mean"] <= 1.0 and res["chips"] == 2

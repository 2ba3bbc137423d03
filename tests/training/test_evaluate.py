"""Monte Carlo metrics on constructed cases with known answers, and reproducible chips."""
import math

import numpy as np
import pytest
import torch

from training.data import load_dataset
from training.evaluate import (
    converged,
    convergence_probability,
    evaluate_mc,
    metrics_from_probs,
)
from training.models import build_model
from cimsim.seeds import chip_seed
from training.variation import PaperNoise


def test_ekl_zero_when_all_chips_agree():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    m = metrics_from_probs(p.expand(5, 2, 3), torch.tensor([0, 1]))
    assert m["ekl"] == pytest.approx(0.0, abs=1e-12)
    assert m["acc_mean"] == pytest.approx(0.5)
    assert m["acc_std"] == 0.0
    assert m["confidence"] == pytest.approx((0.7 + 0.8) / 2)


def test_two_chip_case_by_hand():
    p1 = torch.tensor([[0.9, 0.1]], dtype=torch.float64)
    p2 = torch.tensor([[0.3, 0.7]], dtype=torch.float64)
    pm = np.array([0.6, 0.4])
    kl = lambda p: float(np.sum(p * np.log(p / pm)))
    want = 0.5 * (kl(np.array([0.9, 0.1])) + kl(np.array([0.3, 0.7])))
    m = metrics_from_probs(torch.stack([p1, p2]), torch.tensor([0]))
    assert m["ekl"] == pytest.approx(want, rel=1e-12)
    assert m["acc_per_chip"] == [1.0, 0.0]
    assert m["acc_mean"] == 0.5 and m["acc_std"] == pytest.approx(math.sqrt(0.5))
    half = 12.706204736 * math.sqrt(0.5) / math.sqrt(2)  # t(0.975, 1)
    assert m["acc_ci95_low"] == pytest.approx(0.5 - half, rel=1e-6)
    assert m["confidence"] == pytest.approx(0.8)


def test_chip_seed_is_spawned_child_and_chip_reproducible():
    from numpy.random import SeedSequence

    assert chip_seed(5, 3) == int(SeedSequence(5).spawn(4)[3].generate_state(1, dtype=np.uint64)[0])
    assert len({chip_seed(5, i) for i in range(100)}) == 100
    data = load_dataset("digits", "test").subset(slice(0, 100))
    model = build_model("lenet", data.input_shape, 10)
    pn = PaperNoise(1.0)
    full = evaluate_mc(model, pn, data, 0.3, chips=4, seed=9, batch_size=32)
    # Chip 2 alone, re-made from (seed, 2):
    chip = pn.chip(model.eval(), 0.3, chip_seed(9, 2))
    x, y = data.batch(slice(0, 100))
    acc2 = (pn.forward_chip(model, chip, x).argmax(1) == y).float().mean().item()
    assert acc2 == pytest.approx(full.acc_per_chip[2])
    again = evaluate_mc(model, pn, data, 0.3, chips=4, seed=9, batch_size=100)
    assert np.array_equal(full.acc_per_chip, again.acc_per_chip)
    assert full.metrics["ekl"] > 0  # chips differ
    clean = evaluate_mc(model, pn, data, 0.0, chips=3, seed=9)
    assert clean.metrics["ekl"] == pytest.approx(0.0, abs=1e-12) and clean.metrics["acc_std"] == 0


def test_convergence_definition():
    assert converged(0.56, 10, 0.5)  # threshold 0.1 + 0.5 * 0.9 = 0.55
    assert not converged(0.54, 10, 0.5)
    assert not converged(0.99, 10, 0.5, diverged=True)
    assert convergence_probability([True, False, True, True]) == 0.75


def _bn_model_and_data():
    torch.manual_seed(0)
    data = load_dataset("digits", "test").subset(slice(0, 64))
    model = build_model("vgg8", data.input_shape, 10).eval()
    for m in model.modules():  # non-trivial running statistics, as a trained model has
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model, data


def test_per_chip_batchnorm_recalibration_uses_the_chip_and_restores_the_model():
    from training.evaluate import batchnorm_layers, recalibrated_batchnorm

    model, data = _bn_model_and_data()
    pn = PaperNoise(1.0)
    chip = pn.chip(model, 0.3, chip_seed(3, 0))
    x_cal, _ = data.batch(slice(0, 48))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = batchnorm_layers(model)[0]
    seen = {}
    hook = first.register_forward_hook(lambda m, inp, out: seen.setdefault("x", inp[0].detach().clone()))
    with torch.no_grad(), recalibrated_batchnorm(model, lambda x: pn.forward_chip(model, chip, x), x_cal,
                                                 batch_size=48) as n:
        hook.remove()
        assert n == 48 and not any(m.training for m in batchnorm_layers(model))
        # the first BatchNorm holds the statistics of its input on this chip: batch mean, unbiased var
        feats = seen["x"]
        np.testing.assert_allclose(first.running_mean, feats.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(first.running_var, feats.var((0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-6)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and statistics as before
    assert first.momentum == 0.1 and not model.training


def test_recalibrated_evaluation_reports_its_cost_and_skips_models_without_batchnorm():
    model, data = _bn_model_and_data()
    pn = PaperNoise(1.0)
    x_cal, _ = data.batch(slice(0, 32))
    plain = evaluate_mc(model, pn, data, 0.3, chips=3, seed=1, batch_size=64)
    recal = evaluate_mc(model, pn, data, 0.3, chips=3, seed=1, batch_size=64, recal_x=x_cal)
    assert plain.metrics["bn_recal_images_per_chip"] == 0
    assert recal.metrics["bn_recal_images_per_chip"] == 32 and recal.metrics["bn_recal_images_total"] == 96
    assert not np.array_equal(plain.acc_per_chip, recal.acc_per_chip) or plain.metrics["ekl"] != recal.metrics["ekl"]
    lenet = build_model("lenet", data.input_shape, 10)
    r = evaluate_mc(lenet, pn, data, 0.3, chips=2, seed=1, batch_size=64, recal_x=x_cal)
    assert r.metrics["bn_recal_images_per_chip"] == 0  # no BatchNorm: nothing to recalibrate


def test_bn_recal_option_is_checked_and_an_evaluation_override():
    from training.evaluate import parse_overrides, recalibration_images
    from training.run_config import ConfigError, RunConfig

    assert parse_overrides(["bn_recal_images=256"]) == {"bn_recal_images": 256}
    with pytest.raises(ConfigError, match="bn_recal_images"):
        RunConfig(bn_recal_images=-1)
    train = load_dataset("digits", "train").subset(slice(0, 10))
    with pytest.raises(ConfigError, match="only 10 images"):
        recalibration_images(train, 11, "cpu")
    assert recalibration_images(train, 0, "cpu") is None


def test_write_verify_chips_recalibrate_their_batchnorm_too():
    """training.programming.chip_probs (write-verify's chips) runs the same per-chip recalibration."""
    from training.evaluate import MCAccumulator
    from training.programming import chip_probs

    model, data = _bn_model_and_data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x_cal, _ = data.batch(slice(0, 32))
    plain, recal = MCAccumulator(len(data), 10), MCAccumulator(len(data), 10)
    assert chip_probs(model, None, data, plain, 64) == 0
    assert chip_probs(model, None, data, recal, 64, recal_x=x_cal) == 32
    assert not torch.allclose(plain.sum_p, recal.sum_p)  # the statistics of 32 images, not the stored ones
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

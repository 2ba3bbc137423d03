"""The ``crossbar`` variation backend: training and Monte Carlo chips on the full simulated array."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cimsim.crossbar.config import CrossbarConfig
from cimsim.crossbar.mapping import quantize_weights
from cimsim.nn import CIMConv2d, CIMLinear, cim_layers
from training.run_config import ConfigError, RunConfig
from training.data import load_dataset
from training.evaluate import evaluate_mc
from training.methods import MethodSpec, batch_loss
from training.models import build_model
from training.train import run
from training.variation import (
    CrossbarNoise,
    float_state,
    make_generator,
    make_variation,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train")


def _prepared(variation, digits, model="lenet", heads=False, seed=0):
    torch.manual_seed(seed)
    m = variation.prepare(build_model(model, digits.input_shape, digits.num_classes, with_heads=heads))
    variation.calibrate(m, digits, 128, 2)
    return m


def _quantized_reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of ``model`` computed in float with every crossbar layer's weights quantized as the
    array stores them (``quantize_weights``) and its inputs clipped to the layer's ``input_clip``
    and rounded to its input grid: the array's result when nothing else (noise, ADC) intervenes."""

    def exact(layer, args, _out):
        cfg = layer.config
        w_int, scale = quantize_weights(layer.weight_matrix().detach().double().numpy(), cfg)
        wq = (torch.from_numpy(w_int).double() * torch.from_numpy(scale)[:, None]).view_as(layer.weight)
        clip, xmax = float(layer.input_clip), cfg.x_max_int
        xq = torch.round(torch.clamp(args[0].double() / clip, -1, 1) * xmax) * (clip / xmax)
        b = None if layer.bias is None else layer.bias.double()
        if isinstance(layer, CIMLinear):
            return F.linear(xq, wq, b).float()
        return F.conv2d(xq, wq, b, layer.stride, layer.padding, layer.dilation).float()

    hooks = [layer.register_forward_hook(exact) for _, layer in cim_layers(model)]
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for h in hooks:
            h.remove()


def test_ideal_crossbar_is_the_quantized_model(tmp_path, digits):
    # Ideal device, full-range 20-bit ADC (one-unit steps: every partial sum exact).
    path = CrossbarConfig(adc_range="full").save(tmp_path / "xbar.toml")
    v = make_variation(RunConfig(noise="crossbar", device_model="ideal", crossbar_config=str(path), adc_bits=20))
    m = _prepared(v, digits)
    assert isinstance(m.conv1, CIMConv2d) and isinstance(m.fc3, CIMLinear) and m.conv1.mode == "ideal"
    m.eval()
    x = digits.batch(slice(0, 100))[0]
    chip = v.chip(m, 0.0, 0)
    z_chip = v.forward_chip(m, chip, x)  # calibrated clips from training images
    ref = _quantized_reference(m, x)
    assert torch.allclose(z_chip, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    assert not torch.allclose(z_chip, m(x), rtol=1e-5, atol=1e-5 * ref.abs().max().item())  # quantization shows
    z = v.forward(m, x, 0.7, make_generator(1))  # a training draw: any sigma is noise-free on an ideal device
    ref = _quantized_reference(m, x)  # with the clips this forward calibrated from its own inputs
    assert torch.allclose(z, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_forward_draws_replay_from_the_generator_and_grow_with_sigma(digits):
    v = make_variation(RunConfig(noise="crossbar", device_model="rram", sigma=1.0))
    m = _prepared(v, digits, "mlp")
    x, y = digits.batch(slice(0, 64))
    a = v.forward(m, x, 1.0, make_generator(0))
    assert torch.equal(v.forward(m, x, 1.0, make_generator(0)), a)  # replayed from the same seed
    assert not torch.allclose(v.forward(m, x, 1.0, make_generator(1)), a)
    g = make_generator(5)
    assert not torch.allclose(v.forward(m, x, 1.0, g), v.forward(m, x, 1.0, g))  # each call a new draw
    # OVF-style larger sigmas: the same draw scaled, so the spread around the sigma-0 array grows
    base = v.forward(m, x, 0.0, make_generator(2)).detach()
    spread = [(v.forward(m, x, s, make_generator(2)).detach() - base).std().item() for s in (0.5, 1.0, 3.0)]
    assert 0 < spread[0] < spread[1] < spread[2]
    assert v.device_models(1.0) is v.device_models(1.0) and v.device_models(3.0)[0].sigma_scale == 3.0
    multiply = make_variation(RunConfig(noise="crossbar", device_model="rram1", sigma_mode="multiply"))
    assert multiply.sigma_eff(2.0) == pytest.approx(0.2)  # rram1's own sigma_scale is 0.1
    # straight-through gradients reach every float weight
    m.zero_grad()
    F.cross_entropy(a, y).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_chip_is_frozen_and_reproducible_heads_run_on_the_crossbar(digits):
    v = make_variation(RunConfig(noise="crossbar", device_model="rram", sigma=1.0))
    m = _prepared(v, digits, "lenet", heads=True)
    assert all(isinstance(h.fc1, CIMLinear) and isinstance(h.fc2, CIMLinear) for h in m.heads)
    x, y = digits.batch(slice(0, 80))
    m.eval()
    c1 = v.chip(m, 1.0, 7)
    assert set(c1) == {"crossbar.seed", "crossbar.sigma_scale"}
    assert all(torch.equal(c1[k], v.chip(m, 1.0, 7)[k]) for k in c1)
    a = v.forward_chip(m, c1, x)
    assert torch.equal(v.forward_chip(m, c1, x), a)  # frozen: the same array for every batch
    assert not torch.allclose(v.forward_chip(m, v.chip(m, 1.0, 8), x), a)
    z, hs = v.forward_chip(m, c1, x, heads=True)
    assert torch.equal(z, a) and len(hs) == 2
    # training draws in between (at another sigma) overwrite layer state; the chip is re-made from its seed
    m.train()
    for method in ("ovf", "irs"):
        loss, _ = batch_loss(MethodSpec(method, 1.0, beta=1e-2), m, x, y, v, make_generator(0))
        assert torch.isfinite(loss)
        loss.backward()
    m.eval()
    v.calibrate(m, digits, 128, 2)  # training forwards re-calibrate per batch; a run re-calibrates before chips
    assert torch.equal(v.forward_chip(m, c1, x), a)


def test_nit_on_the_crossbar_learns_digits_and_best_pt_replays(tmp_path, fast_cfg):
    # CPU: chips are drawn with the eval device's generator, and the replay below evaluates on the CPU
    cfg = fast_cfg.replace(method="nit", noise="crossbar", device_model="rram", sigma=1.0, eval_chips=3, torch_device="cpu")
    res = run(cfg, tmp_path / "r", quiet=True)
    assert res["acc_mean"] > 0.8 and res["clean_test_acc"] > 0.8, res  # chance is 0.1
    state = torch.load(tmp_path / "r" / "best.pt", weights_only=True)["model"]
    assert "hidden.0.adc_range" in state and not any("chip_g_pos_S" in k for k in state)
    # Monte Carlo evaluation of the reloaded checkpoint repeats the run's own, chip for chip
    v = make_variation(cfg)
    test = load_dataset("digits", "test")
    m = v.prepare(build_model("mlp", test.input_shape, test.num_classes))
    m.load_state_dict(state)
    mc = evaluate_mc(m, v, test, cfg.eval_sigma_value, 3, cfg.seed, cfg.eval_batch_size)
    assert mc.metrics["acc_mean"] == res["acc_mean"] and mc.metrics["chips"] == 3
    rows = (tmp_path / "r" / "chips.csv").read_text().splitlines()[1:]
    assert [float(r.split(",")[2]) for r in rows] == pytest.approx(list(mc.acc_per_chip), abs=1e-6)
    plain = build_model("mlp", test.input_shape, test.num_classes)
    plain.load_state_dict(float_state(state))  # the trained float weights, for tools without the crossbar
    x = test.batch(slice(0, 50))[0]
    assert torch.equal(plain(x), m(x))


def test_cli_trains_lenet_on_the_crossbar(tmp_path):
    out = tmp_path / "xbar"
    args = ["--model", "lenet", "--dataset", "digits", "--method", "nit", "--noise", "crossbar", "--device-model",
            "rram", "--sigma", "1.0", "--adc-bits", "6", "--keep-last", "true", "--epochs", "1", "--train-limit",
            "400", "--eval-chips", "2", "--val-chips", "1", "--threads", "1", "--quiet", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "training.train", *args], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    ev = json.loads((out / "eval.json").read_text())
    assert ev["noise"] == "crossbar" and ev["chips"] == 2 and 0 <= ev["acc_mean"] <= 1
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["adc_bits"] == 6 and cfg["keep_last"] is True
    state = torch.load(out / "best.pt", weights_only=True)["model"]
    assert "conv1.input_clip" in state and "fc3.input_clip" not in state  # fc3 kept digital


def test_crossbar_options_validate_and_override_the_file(tmp_path, digits):
    for bad in ({"adc_bits": 0}, {"adc_bits": 25}, {"dac": "pwm"}, {"keep_first": "yes"},
                {"crossbar_calibration": "never"}, {"crossbar_config": ""}):
        with pytest.raises(ConfigError):
            RunConfig(**bad)
    cfg = RunConfig(noise="crossbar", device_model="rram", weight_bits=6, dac="bit_serial", keep_first=True,
                    crossbar_calibration="epoch")
    assert RunConfig.from_dict(json.loads(cfg.to_json())) == cfg
    path = CrossbarConfig(adc_bits=4, input_bits=6, tile_rows=64, weight_bits=8).save(tmp_path / "x.json")
    v = make_variation(cfg.replace(crossbar_config=str(path)))
    assert isinstance(v, CrossbarNoise)
    c = v.config
    assert (c.adc_bits, c.input_bits, c.tile_rows, c.weight_bits, c.dac, c.device) == (4, 6, 64, 6, "bit_serial", "rram")
    assert make_variation(cfg.replace(crossbar_config=str(path), adc_bits=10)).config.adc_bits == 10
    m = _prepared(v, digits, "lenet", heads=True)
    assert type(m.conv1) is nn.Conv2d and isinstance(m.fc3, CIMLinear)  # keep_first: the backbone's first layer
    clips = [layer.input_clip.clone() for _, layer in cim_layers(m)]
    v.forward(m, digits.batch(slice(0, 16))[0], 0.1, make_generator(0))
    assert all(torch.equal(a, layer.input_clip) for a, (_, layer) in zip(clips, cim_layers(m)))  # "epoch": no per-batch


def test_crossbar_backend_trains_and_tests_through_the_wires(tmp_path, digits):
    """A crossbar config file with interconnect resistance reaches every chip of the backend: the
    Monte Carlo chips and the fresh training chips are read through their tiles' circuits."""
    wires = dict(r_row_segment_ohm=200.0, r_col_segment_ohm=200.0, r_access_ohm=5000.0)
    path = CrossbarConfig(tile_rows=32, tile_cols=32, **wires).save(tmp_path / "ir.toml")
    v = make_variation(RunConfig(noise="crossbar", device_model="rram", crossbar_config=str(path)))
    from training.models import MLP

    torch.manual_seed(0)
    m = v.prepare(MLP(digits.input_shape, digits.num_classes, hidden=(16,)))  # few tiles: the solves are slow
    v.calibrate(m, digits, 128, 2)
    layers = [layer for _, layer in cim_layers(m)]
    assert all(layer.config.circuit.r_access_ohm == 5000.0 for layer in layers)
    x = digits.batch(slice(0, 64))[0]
    chip = v.chip(m, 1.0, 0)
    z_wired = v.forward_chip(m, chip, x)
    assert z_wired.shape == (64, 10) and torch.isfinite(z_wired).all()
    assert layers[0].fresh_chip().g_cells_pos_S is not None
    z = v.forward(m, x, 1.0, make_generator(1))
    z.sum().backward()
    assert all(layer.weight.grad is not None for layer in layers)


def test_a_circuit_that_does_not_converge_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    """A tile solve that cannot reach its tolerance (here: one iteration allowed) stops training
    with one line naming the resistances, exit 2, and no run folder (not even a .partial)."""
    import cimsim.crossbar.circuit as circuit
    from training.train import main

    solve = circuit.effective_conductance_S
    monkeypatch.setattr(circuit, "effective_conductance_S", lambda g, c, **kw: solve(g, c, max_iter=1))
    path = CrossbarConfig(tile_rows=16, tile_cols=16, r_row_segment_ohm=50.0, r_col_segment_ohm=50.0).save(
        tmp_path / "ir.toml")
    out = tmp_path / "run"
    rc = main(["--model", "mlp", "--dataset", "digits", "--noise", "crossbar", "--device-model", "rram",
               "--crossbar-config", str(path), "--epochs", "1", "--eval-chips", "2", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0
    assert "after 1 iterations" in err and "r_row_segment_ohm = 50" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ir.toml"]


def test_a_crossbar_run_evaluates_with_output_gain_calibration(tmp_path, fast_cfg):
    """A run trained on the crossbar, evaluated with per-output gain calibration turned on: its
    checkpoint carries input clips and ADC ranges but not the calibration rows each chip's gain
    is fitted on, so the model is calibrated again on the training images (giving back the
    checkpoint's ranges exactly); without the override nothing is recalibrated."""
    from training.evaluate import evaluate_run, load_run

    cfg = fast_cfg.replace(method="nit", noise="crossbar", device_model="rram", sigma=1.0, epochs=1, eval_chips=2,
                           torch_device="cpu")
    run(cfg, tmp_path / "r", quiet=True)
    gain = CrossbarConfig(output_gain_calibration=True).save(tmp_path / "gain.toml")
    state = torch.load(tmp_path / "r" / "best.pt", weights_only=True)["model"]
    _, m, _, _, _ = load_run(tmp_path / "r", "cpu", {"crossbar_config": str(gain)})
    layers = [layer for _, layer in cim_layers(m)]
    assert all(layer._gain_rows is not None for layer in layers)
    for name, layer in cim_layers(m):
        assert torch.equal(layer.adc_range, state[f"{name}.adc_range"]), name
    _, own, _, _, _ = load_run(tmp_path / "r", "cpu")
    assert all(layer._gain_rows is None for _, layer in cim_layers(own))
    res = evaluate_run(tmp_path / "r", chips=2, overrides={"crossbar_config": str(gain)}, threads=1)
    assert 0.1 < res.metrics["acc_mean"] <= 1.0

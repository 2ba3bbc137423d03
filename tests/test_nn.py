"""Crossbar layers in models: convolution by im2col, convert, calibration, state dicts, training."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cimsim.nn import functional as CF
from cimsim.crossbar.config import CrossbarConfig
from cimsim.crossbar.mapping import quantize_inputs
from cimsim.nn import (CHIP_KEYS, CIMConv2d, CIMLinear, calibrate, cim_layers, convert, program, reprogram,
                       set_mode, unconvert, use_mode)

IDEAL = CrossbarConfig(device="ideal", adc_range="full", adc_bits=24, tile_rows=32)
NOISY = CrossbarConfig(device="neurram", adc_bits=8, tile_rows=32)
CONV_GEOMETRIES = [dict(stride=1, padding=1, dilation=1), dict(stride=2, padding=(0, 2), dilation=1),
                   dict(stride=1, padding="same", dilation=(2, 1)), dict(stride=1, padding="valid", dilation=2)]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)  # default initialisation only
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 2 * 2, 16), nn.ReLU(),
                         nn.Linear(16, 10))


@pytest.mark.parametrize("geom", CONV_GEOMETRIES)
def test_conv_rows_is_transposed_unfold(geom):
    x = torch.randn(2, 3, 11, 9, generator=_gen(0))
    ks, st, dl = (3, 2), CF._pair(geom["stride"]), CF._pair(geom["dilation"])
    pad = geom["padding"]
    rows, (ho, wo) = CF.conv_rows(x, ks, st, pad if isinstance(pad, str) else CF._pair(pad), dl)
    xp = F.pad(x, CF.same_padding(ks, dl)) if pad == "same" else x
    ref = F.unfold(xp, ks, dilation=dl, padding=0 if isinstance(pad, str) else pad, stride=st)
    assert torch.equal(rows, ref.transpose(1, 2).reshape(-1, ref.shape[1]))
    assert ho * wo == ref.shape[2]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")  # torch's own F.conv2d
@pytest.mark.parametrize("geom", CONV_GEOMETRIES)
def test_conv_equals_unfold_plus_crossbar_linear(geom):
    torch.manual_seed(0)
    conv = CIMConv2d(3, 5, (3, 2), bias=True, config=NOISY, **geom)
    x = torch.randn(2, 3, 11, 9, generator=_gen(1))
    y = conv(x)
    ref = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation)
    assert y.shape == ref.shape
    rows = conv.input_rows(x)
    y_lin = CF.linear(rows, conv.weight_matrix(), conv.chip(), None)
    B, C, H, W = y.shape
    expect = y_lin.view(B, H * W, C).transpose(1, 2).reshape(B, C, H, W) + conv.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(y, expect, rtol=0, atol=0)
    assert (y - ref).abs().max() < 0.2 * ref.abs().max()  # a noisy 8-bit chip, still the same convolution


def test_ideal_conv_matches_conv2d_of_quantized_weights_and_inputs():
    torch.manual_seed(0)
    conv = CIMConv2d(3, 6, 3, stride=2, padding=1, config=IDEAL).double()
    x = torch.randn(2, 3, 9, 10, generator=_gen(2), dtype=torch.float64, requires_grad=True)
    y = conv(x)
    arr = conv.chip()
    clip = arr.resolved_input_clip()
    xq = quantize_inputs(x.detach().numpy(), clip, IDEAL.input_bits) * (clip / IDEAL.x_max_int)
    w_eff = torch.from_numpy(arr.effective_weights()).view_as(conv.weight)
    ref = F.conv2d(torch.from_numpy(xq), w_eff, conv.bias.detach(), stride=2, padding=1)
    torch.testing.assert_close(y.detach(), ref, rtol=1e-12, atol=1e-12)
    # backward: the float convolution's gradients at the effective weights (input gradient) and
    # at the inputs (weight gradient)
    gy = torch.randn(y.shape, generator=_gen(3), dtype=torch.float64)
    y.backward(gy)
    xr, wr = x.detach().clone().requires_grad_(), w_eff.clone().requires_grad_()
    F.conv2d(xr, wr, None, stride=2, padding=1).backward(gy)
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(conv.weight.grad, wr.grad)


def test_convert_swaps_layers_shares_parameters_and_converts_back():
    model = _cnn()
    x = torch.randn(3, 1, 8, 8, generator=_gen(4))
    y_plain = model(x)
    conv0_weight = model[0].weight
    model.add_module("grouped", nn.Conv2d(4, 4, 1, groups=2))  # not eligible: stays digital
    convert(model, NOISY, seed=7)
    names = [n for n, _ in cim_layers(model)]
    assert names == ["0", "3", "7", "9"]
    assert model[0].weight is conv0_weight and isinstance(model.grouped, nn.Conv2d)
    with use_mode(model, "ideal"):
        torch.testing.assert_close(model[:10](x), y_plain, rtol=0, atol=0)
    assert model[0].mode == "chip"
    unconvert(model)
    assert not cim_layers(model) and type(model[0]) is nn.Conv2d and model[0].weight is conv0_weight
    torch.testing.assert_close(model[:10](x), y_plain, rtol=0, atol=0)


@pytest.mark.parametrize("kw, kept", [
    (dict(keep_first=True), ["0"]),
    (dict(keep_last=True), ["9"]),
    (dict(keep_first=True, keep_last=True), ["0", "9"]),
    (dict(skip=["3", "7"]), ["3", "7"]),
    (dict(skip="9"), ["9"]),
    (dict(skip=lambda name, m: isinstance(m, nn.Conv2d)), ["0", "3"]),
])
def test_convert_skip_options(kw, kept):
    model = convert(_cnn(), NOISY, **kw)
    digital = [n for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)]
    assert digital == kept
    assert len(cim_layers(model)) == 4 - len(kept)


def test_convert_a_subtree_by_name_and_a_bare_layer():
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)), nn.Linear(4, 2))
    convert(model, NOISY, skip="0")
    assert [n for n, _ in cim_layers(model)] == ["1"]
    bare = convert(nn.Linear(4, 2), NOISY)
    assert isinstance(bare, CIMLinear) and isinstance(bare.to_module(), nn.Linear)


def test_model_program_gives_every_layer_its_own_seed_and_reprogram_draws_a_new_chip():
    model = convert(_cnn(), NOISY)
    x = torch.randn(3, 1, 8, 8, generator=_gen(5))
    calibrate(model, [x], batches=1)
    program(model, 1)
    seeds = [layer.seed for _, layer in cim_layers(model)]
    assert len(set(seeds)) == 4
    y1 = model(x)
    g1 = model[3].chip().g_pos_S.copy()
    program(model, 1)
    torch.testing.assert_close(model(x), y1, rtol=0, atol=0)
    reprogram(model)
    assert not np.array_equal(model[3].chip().g_pos_S, g1)
    program(model, 2)
    assert not torch.equal(model(x), y1)


def test_calibration_sets_buffers_and_every_chip_inherits_it():
    model = convert(_cnn(), NOISY.replace(adc_percentile=99.0))
    data = [torch.randn(16, 1, 8, 8, generator=_gen(s)) for s in range(3)]
    calibrate(model, data, batches=2)
    first = model[0]
    rows = torch.cat([first.input_rows(x) for x in data[:2]]).double()
    assert float(first.input_clip) == pytest.approx(float(np.percentile(rows.abs().numpy(), 99.0)))
    for _, layer in cim_layers(model):
        assert layer.is_calibrated and torch.isfinite(layer.adc_range).all()
        assert layer.adc_range.shape == (NOISY.n_slices, 1)
    clip, adc = float(first.input_clip), first.adc_range.numpy()
    assert first.chip().input_clip == clip and np.array_equal(first.chip().adc_range, adc)
    reprogram(model)
    assert first.chip().input_clip == clip and np.array_equal(first.chip().adc_range, adc)
    assert first.fresh_chip().input_clip == clip
    # recalibrating updates the frozen chip in place (no re-programming)
    chip = first.chip()
    calibrate(model, data[2:], batches=1)
    assert first.chip() is chip and chip.input_clip == float(first.input_clip) != clip


def test_uncalibrated_layer_calibrates_from_its_first_batch():
    layer = CIMLinear(10, 3, config=NOISY)
    assert not layer.is_calibrated
    layer(torch.randn(32, 10, generator=_gen(6)))
    assert layer.is_calibrated


def _round_trip(model: nn.Module, target: nn.Module) -> nn.Module:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    target.load_state_dict(torch.load(buf, weights_only=True))
    return target


def test_state_dict_round_trip_is_exact():
    model = convert(_cnn(0), NOISY, seed=3)
    x = torch.randn(5, 1, 8, 8, generator=_gen(7))
    calibrate(model, [x], batches=1)
    set_mode(model[9], "fresh")
    y = model[:9](x)  # chip-mode layers program their chips (lazily, from seed 3); layer 9 has none
    model[9](y)
    sd = model.state_dict()
    assert all(f"0.{k}" in sd for k in CHIP_KEYS) and "9.chip_g_pos_S" not in sd  # a fresh-mode layer has no frozen chip
    other = _round_trip(model, convert(_cnn(1), NOISY, seed=4))
    for (name, a), (_, b) in zip(cim_layers(model), cim_layers(other)):
        assert a.mode == b.mode and a.seed == b.seed and a.chip_seed == b.chip_seed
        assert torch.equal(a.input_clip, b.input_clip) and torch.equal(a.adc_range, b.adc_range)
        assert torch.equal(a.weight, b.weight)
    for i in (0, 3, 7):
        assert np.array_equal(model[i].chip().g_pos_S, other[i].chip().g_pos_S)
        assert np.array_equal(model[i].chip().g_neg_S, other[i].chip().g_neg_S)
    torch.testing.assert_close(other[:9](x), y, rtol=0, atol=0)
    # the fresh layer continues the same stream of draws
    torch.testing.assert_close(other[9](y), model[9](y), rtol=0, atol=0)


def test_loaded_chip_is_the_saved_chip_not_a_reprogramming():
    src = convert(_cnn(0), NOISY)
    program(src, 5)
    src[0].chip().g_pos_S[0, 0, 0] += 1e-7  # a chip no seed re-makes: only the saved tensors give it back
    dst = _round_trip(src, convert(_cnn(0), NOISY))
    assert np.array_equal(dst[0].chip().g_pos_S, src[0].chip().g_pos_S)


def test_loading_a_wrong_shape_or_config_names_the_layer_and_field():
    model = convert(_cnn(), NOISY)
    program(model, 0)
    sd = model.state_dict()
    wide = convert(nn.Sequential(*list(_cnn())[:9], nn.Linear(16, 12)), NOISY)
    with pytest.raises(RuntimeError, match=r"size mismatch for 9\.weight"):
        wide.load_state_dict(sd)
    other = convert(_cnn(), NOISY.replace(adc_bits=6))
    with pytest.raises(RuntimeError, match=r"config mismatch for 0: CrossbarConfig\.adc_bits is 8 in the checkpoint "
                                           r"but 6 in this model"):
        other.load_state_dict(sd)
    sd["3.chip_g_pos_S"] = sd["3.chip_g_pos_S"][:, :5]
    with pytest.raises(RuntimeError, match=r"size mismatch for 3\.chip_g_pos_S"):
        convert(_cnn(), NOISY).load_state_dict(sd)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*0\._extra_state"):
        convert(_cnn(), NOISY).load_state_dict(_cnn().state_dict())


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=_gen(0))
    return x[perm[:1400]], y[perm[:1400]], x[perm[1400:]], y[perm[1400:]]


@pytest.mark.slow
def test_converted_cnn_trains_on_digits_with_the_simulator_in_the_loop():
    x_tr, y_tr, x_te, y_te = _digits()
    model = convert(_cnn(0), NOISY, seed=0, mode="fresh")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = _gen(1)
    losses = []
    for epoch in range(10):
        calibrate(model, [x_tr[:256]], batches=1)  # activations grow while training: re-calibrate
        perm = torch.randperm(len(y_tr), generator=gen)
        for i in range(0, len(y_tr), 50):
            idx = perm[i:i + 50]
            loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.3 * np.mean(losses[:10])
    set_mode(model, "chip")
    program(model, 123)
    with torch.no_grad():
        acc = (model(x_te).argmax(1) == y_te).float().mean().item()
    assert acc > 0.7, acc


@pytest.mark.parametrize("geom", [dict(stride=1, padding=1, dilation=1), dict(stride=2, padding=0, dilation=2),
                                  dict(stride=1, padding="same", dilation=1)])
def test_conv1d_is_the_ideal_quantized_convolution_and_its_gradients(geom):
    from cimsim.nn import CIMConv1d

    torch.manual_seed(0)
    conv = CIMConv1d(3, 5, 3, bias=True, config=IDEAL, **geom).double()
    x = torch.randn(2, 3, 17, generator=_gen(5), dtype=torch.float64, requires_grad=True)
    y = conv(x)
    arr = conv.chip()
    clip = arr.resolved_input_clip()
    xq = torch.from_numpy(quantize_inputs(x.detach().numpy(), clip, IDEAL.input_bits) * (clip / IDEAL.x_max_int))
    w_eff = torch.from_numpy(arr.effective_weights()).view_as(conv.weight)
    ref = F.conv1d(xq, w_eff, conv.bias.detach(), conv.stride, conv.padding, conv.dilation)
    torch.testing.assert_close(y.detach(), ref, rtol=1e-12, atol=1e-12)
    gy = torch.randn(y.shape, generator=_gen(6), dtype=torch.float64)
    y.backward(gy)
    xr, wr = x.detach().clone().requires_grad_(), w_eff.clone().requires_grad_()
    F.conv1d(xr, wr, None, conv.stride, conv.padding, conv.dilation).backward(gy)
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(conv.weight.grad, wr.grad)
    # on a noisy chip: the array read of the unfolded rows, as for every crossbar layer
    noisy = CIMConv1d.from_module(conv.to_module().float(), NOISY)
    xf = x.detach().float()
    yn = noisy(xf)
    y_lin = CF.linear(noisy.input_rows(xf), noisy.weight_matrix(), noisy.chip(), None)
    B, C, L = yn.shape
    torch.testing.assert_close(yn, y_lin.view(B, L, C).transpose(1, 2) + noisy.bias.view(1, -1, 1), rtol=0, atol=0)


def test_convert_takes_conv1d():
    from cimsim.nn import CIMConv1d

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8, 3))
    x = torch.randn(2, 2, 8, generator=_gen(7))
    y = model(x)
    convert(model, NOISY, seed=1)
    assert isinstance(model[0], CIMConv1d) and [n for n, _ in cim_layers(model)] == ["0", "3"]
    with use_mode(model, "ideal"):
        torch.testing.assert_close(model(x), y, rtol=0, atol=0)
    unconvert(model)
    assert type(model[0]) is nn.Conv1d

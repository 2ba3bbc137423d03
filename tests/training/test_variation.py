"""Noise backends: the paper formula (statistically), straight-through gradients, chips, device mapping."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from cimsim.device.model import load_device, neft_stylized
from training.run_config import RunConfig
from training.models import build_model
from training.variation import (
    PAPER_C,
    CrossbarNoise,
    DeviceNoise,
    PaperNoise,
    VariationError,
    make_generator,
    make_variation,
    paper_s,
)


def _weights(n=400_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g) * 2 - 1  # max|W| ~ 1, a quarter in each |W| band


@pytest.mark.parametrize("s", [1.0, 4.0, 6.0])
def test_paper_noise_std_and_mask_match_formula(s):
    w = _weights()
    sigma = 0.2
    noise = PaperNoise(s).realise([w], [False], sigma, make_generator(1)) [0] - w
    m = w.abs().max().item()
    r = w.abs() / m
    mid = (r > 0.25) & (r < 0.75)
    base = PAPER_C * m * sigma / math.sqrt(0.4 * s * s + 0.6)
    # std of a normal sample of n values has relative standard error 1/sqrt(2n) (~0.16 % here)
    for sel, want in ((mid, s * base), (~mid, base)):
        got = noise[sel].std().item()
        assert got == pytest.approx(want, rel=0.01)
    assert abs(noise.mean().item()) < 5 * base * s / math.sqrt(w.numel())


def test_paper_mask_is_strict_and_head_factor_is_one():
    w = torch.tensor([1.0, 0.25, 0.75, 0.5, -0.25])
    std = PaperNoise(4.0).noise_std(w, 0.1)
    base = PAPER_C * 0.1 / math.sqrt(0.4 * 16 + 0.6)
    assert torch.allclose(std, torch.tensor([base, base, base, 4 * base, base]))
    head = PaperNoise(4.0).noise_std(w, 0.1, head=True)
    assert torch.allclose(head, torch.full((5,), PAPER_C * 0.1))


def test_straight_through_gradient_and_fresh_noise():
    model = build_model("mlp", (1, 8, 8), 10)
    pn = PaperNoise(2.0)
    x = torch.randn(4, 1, 8, 8)
    g = make_generator(0)
    out1 = pn.forward(model, x, 0.3, g)
    out1.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    # The gradient of the clean weight equals the gradient w.r.t. the realised weight: check one layer by hand.
    model.zero_grad()
    g = make_generator(0)
    names = ["hidden.0.weight", "hidden.1.weight", "hidden.2.weight", "fc.weight"]
    real = [t.detach().requires_grad_(True) for t in pn.realise([dict(model.named_parameters())[n] for n in names], [False] * 4, 0.3, g)]
    out2 = torch.func.functional_call(model, dict(zip(names, real)), (x,))
    assert torch.allclose(out1, out2)
    out2.sum().backward()
    for n, r in zip(names, real):
        assert torch.allclose(grads[n], r.grad, atol=1e-6)
    out3 = pn.forward(model, x, 0.3, make_generator(1))
    assert not torch.allclose(out1, out3)  # a different draw
    assert torch.allclose(pn.forward(model, x, 0.0, g), model(x))  # sigma 0: clean


def test_chip_is_frozen_and_reproducible():
    model = build_model("lenet", (1, 8, 8), 10, with_heads=True)
    pn = PaperNoise(1.0)
    c1 = pn.chip(model, 0.2, 7)
    c2 = pn.chip(model, 0.2, 7)
    assert set(c1) == {n for n in c1 if not n.startswith("heads.")}  # heads dropped
    for k in c1:
        assert torch.equal(c1[k], c2[k])
    x = torch.randn(3, 1, 8, 8)
    model.eval()
    assert torch.equal(pn.forward_chip(model, c1, x), pn.forward_chip(model, c1, x))


def test_device_noise_quantizes_exactly_when_ideal():
    dn = DeviceNoise(load_device("rram1"), "replace", weight_bits=8, bits_per_cell=2)
    w = _weights(10_000)
    real = dn.realise([w], [False], 0.0, make_generator(0))[0]
    m = w.abs().max()
    assert torch.allclose(real, torch.round(w / m * 255) * m / 255, atol=1e-6)
    w.requires_grad_(True)
    dn.realise([w], [False], 0.1, make_generator(0))[0].sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # straight-through


def test_device_noise_rram1_is_paper_noise_on_both_cells_of_the_pair():
    # Four 2-bit slices, every cell (G+ and G-) with spread (gmax-gmin) * sigma: the per-weight
    # std is sqrt(2) * 0.77763 * max|W| * sigma (the paper's formula counts one noisy cell per slice).
    dn = DeviceNoise(load_device("rram1"), "replace")
    w = _weights(200_000)
    g = make_generator(3)
    noise = dn.realise([w], [False], 0.1, g)[0] - dn.realise([w], [False], 0.0, g)[0]
    assert noise.std().item() == pytest.approx(math.sqrt(2) * PAPER_C * w.abs().max().item() * 0.1, rel=0.01)


def test_device_cells_match_devicemodel_sample_statistics():
    # Heavy-tailed, per-level model: compare torch cells to DeviceModel.sample on the same targets.
    base = neft_stylized("t", 2.0)
    from cimsim.device.model import LevelFit

    fits = tuple(LevelFit(level=k, t_s=0.0, target_S=lf.target_S, n=0, mean_shift_S=1e-7 * k, sigma_S=lf.sigma_S,
                          robust_sigma_S=lf.sigma_S, family="student-t", scale_S=lf.sigma_S * 0.5, df=4.0)
                 for k, lf in enumerate(base.level_fits))
    dm = base.replace(level_fits=fits, sigma_scale=0.05)
    dn = DeviceNoise(dm, "multiply")
    w = torch.full((50_000,), 0.5)
    w[0] = 1.0  # max -> q = 128 for 0.5 -> digits (0, 0, 0, 2): G+ of slice 3 at level 2
    g, k, _ = dn.conductances(w, 1.0, make_generator(5))
    cells = g[0, 3, 1:].double().numpy()
    ref = dm.sample(np.full(cells.shape, dm.levels_S[2]), 0.0, np.random.default_rng(0))
    assert np.all(k[0, 3, 1:].numpy() == 2)
    assert cells.mean() == pytest.approx(ref.mean(), abs=4 * ref.std() / math.sqrt(cells.size))
    assert stats.ks_2samp(cells, ref).pvalue > 1e-3


def test_device_noise_drift_and_stuck_cells_run():
    pcm = DeviceNoise(load_device("pcm_joshi"), "multiply", read_time_s=3600.0)
    w = _weights(5000)
    real = pcm.realise([w], [False], 1.0, make_generator(0))[0]
    assert torch.isfinite(real).all()
    stuck = DeviceNoise(load_device("rram1").replace(stuck_at_gmax=1.0), "replace")
    g, _, _ = stuck.conductances(w, 0.0, make_generator(0))
    assert torch.allclose(g, torch.full_like(g, 40e-6))


def test_make_variation_backends_and_errors():
    assert isinstance(make_variation(RunConfig(noise="paper", device_model="fefet6")), PaperNoise)
    assert paper_s(load_device("rram4")) == 4.0
    assert isinstance(make_variation(RunConfig(noise="device", device_model="neurram")), DeviceNoise)
    with pytest.raises(VariationError, match="stylized"):
        make_variation(RunConfig(noise="paper", device_model="neurram"))
    assert isinstance(make_variation(RunConfig(noise="crossbar", device_model="rram")), CrossbarNoise)
    with pytest.raises(VariationError, match="no such config file"):
        make_variation(RunConfig(noise="crossbar", crossbar_config="/nonexistent/xbar.toml"))


def test_device_noise_msb_alignment_shifts_the_digits_and_halves_the_error_on_3_bit_cells():
    """``slice_align = "msb"`` in the device backend, as in the crossbar (``CrossbarConfig.slice_align``):
    8-bit magnitudes on three 3-bit cells are shifted left by one bit, the same weights come back at
    sigma 0, and with the same spread on every cell (rram1) the weight noise's std halves
    (slice weights 1, 8, 64 against 1/2, 4, 32 in 8-bit steps)."""
    from cimsim.crossbar.config import CrossbarConfig
    from cimsim.crossbar.mapping import digit_pairs_torch, quantize_weights_torch
    from cimsim.device.model import DeviceModel

    dev = DeviceModel(name="t", gmin_S=4e-6, gmax_S=40e-6, times_s=(0.0,), sigma_poly_uS=((0.4,),))  # 0.4 uS everywhere
    w = _weights(200_000)
    dn = {a: DeviceNoise(dev, "multiply", weight_bits=8, bits_per_cell=3, slice_align=a) for a in ("lsb", "msb")}
    assert (dn["lsb"].pad_bits, dn["msb"].pad_bits) == (0, 1)
    for a in ("lsb", "msb"):  # the cells' digits are the crossbar's, whose quantisation shifts by its pad_bits
        xb = CrossbarConfig(weight_bits=8, bits_per_cell=3, slice_align=a)
        w_int, _ = quantize_weights_torch(w, 8, pad_bits=xb.pad_bits)
        _, k, _ = dn[a].conductances(w, 0.0, make_generator(0))
        assert torch.equal(k, torch.stack(digit_pairs_torch(w_int, 3, xb.n_slices)))
    clean = {a: d.realise([w], [False], 0.0, make_generator(0))[0] for a, d in dn.items()}
    assert torch.allclose(clean["msb"], clean["lsb"], atol=1e-6)
    std = {a: (d.realise([w], [False], 1.0, make_generator(1))[0] - clean[a]).std().item() for a, d in dn.items()}
    assert std["msb"] / std["lsb"] == pytest.approx(0.5, rel=0.02)
    with pytest.raises(VariationError, match="slice_align"):
        DeviceNoise(dev, "multiply", slice_align="middle")


def test_run_slice_align_reaches_both_backends_and_overrides_the_crossbar_file_only_when_set(tmp_path):
    from cimsim.crossbar.config import CrossbarConfig
    from training.run_config import ConfigError
    from training.variation import crossbar_config

    f = tmp_path / "xb.toml"
    f.write_text(CrossbarConfig(slice_align="msb").to_toml())
    assert crossbar_config(RunConfig(noise="crossbar", crossbar_config=str(f))).slice_align == "msb"
    assert crossbar_config(RunConfig(noise="crossbar", crossbar_config=str(f), slice_align="lsb")).slice_align == "lsb"
    assert crossbar_config(RunConfig(noise="crossbar", slice_align="msb")).slice_align == "msb"
    assert make_variation(RunConfig(noise="device", device_model="rram", bits_per_cell=3, slice_align="msb")).pad_bits == 1
    assert make_variation(RunConfig(noise="device", device_model="rram", bits_per_cell=3)).pad_bits == 0
    with pytest.raises(ConfigError, match="slice_align"):
        RunConfig(slice_align="middle")

"""Programming in torch on the weights' device (the CUDA training path) against the host path."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cimsim.crossbar.config import CrossbarConfig
from cimsim.device.model import load_device
from cimsim.crossbar.mvm import crossbar_matmul_torch
from cimsim.crossbar.mvm_ref import matmul_quantized
from cimsim.nn import CIMLinear
from cimsim.device.model import ideal_device
from cimsim.crossbar.program import program
from cimsim.crossbar.program_torch import level_table, program_on_device

EXACT = dict(adc_bits=24, adc_range="full")


def _layer(seed=0, n_out=6, n_in=40, batch=5):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_out, n_in)), np.abs(rng.normal(size=(batch, n_in)))


@pytest.mark.parametrize("convert, bits_per_cell, slice_align", [("differential", 2, "lsb"), ("separate", 2, "lsb"),
                                                                  ("differential", 3, "msb")])
def test_ideal_device_programmed_in_torch_is_exact(convert, bits_per_cell, slice_align):
    w, x = _layer()
    cfg = CrossbarConfig(tile_rows=16, input_clip=2.0, adc_convert=convert, bits_per_cell=bits_per_cell,
                         slice_align=slice_align, **EXACT)
    host = program(w, cfg, 0)
    dev = program_on_device(torch.from_numpy(w), cfg, ideal_device(), 0, 2.0, None)
    assert np.array_equal(dev.g_pos.numpy(), host.g_pos_S) and np.array_equal(np.asarray(dev.scale), host.scale)
    xt = torch.from_numpy(x)
    expect = matmul_quantized(host, x)
    for kernel in ("numba", "torch"):
        assert np.array_equal(crossbar_matmul_torch(dev, xt, kernel=kernel).numpy(), expect)
    assert torch.allclose(dev.effective_weight_tensor(xt.device, torch.float64),
                          torch.from_numpy(host.effective_weights()))


@pytest.mark.parametrize("name", ["rram", "rram1"])
def test_torch_programming_draws_the_host_distribution(name):
    """Per-level conductances (heavy tails and stuck cells included) follow the host sampler's law."""
    from scipy import stats

    dm = load_device(name).replace(stuck_at_gmin=0.01, stuck_at_gmax=0.005)
    w = np.random.default_rng(2).normal(size=(64, 256))
    cfg = CrossbarConfig(device=name, read_time_s=1.0)
    table = level_table(dm, cfg, torch.device("cpu"))
    dev = [program_on_device(torch.from_numpy(w), cfg, dm, s, 1.0, None, table) for s in range(4)]
    host = [program(w, cfg, s, device_model=dm) for s in range(4)]
    d = host[0].mapped.digits_pos  # same mapping on both paths
    for k in range(4):
        a = np.concatenate([c.g_pos.numpy()[d == k] for c in dev])
        b = np.concatenate([c.g_pos_S[d == k] for c in host])
        assert stats.ks_2samp(a, b).pvalue > 1e-3, (name, k)
    a = program_on_device(torch.from_numpy(w), cfg, dm, 3, 1.0, None, table)
    b = program_on_device(torch.from_numpy(w), cfg, dm, 3, 1.0, None, table)
    assert torch.equal(a.g_pos, b.g_pos)
    assert not torch.equal(a.g_pos, program_on_device(torch.from_numpy(w), cfg, dm, 4, 1.0, None, table).g_pos)


def test_torch_programming_output_statistics_match_host():
    dm = load_device("rram1")
    w, x = _layer(1)
    cfg = CrossbarConfig(tile_rows=16, input_clip=float(x.max()), device="rram1", **EXACT)
    table = level_table(dm, cfg, torch.device("cpu"))
    ys_dev = np.stack([crossbar_matmul_torch(program_on_device(torch.from_numpy(w), cfg, dm, s, cfg.input_clip, None,
                                                               table), torch.from_numpy(x)).numpy()
                       for s in range(800)])
    ys_host = np.stack([program(w, cfg, s, device_model=dm).matmul(x) for s in range(800)])
    spread = ys_host.std(0)
    assert np.allclose(ys_dev.mean(0), ys_host.mean(0), atol=0.15 * spread.max())
    assert np.allclose(ys_dev.std(0), spread, rtol=0.12)


def test_layer_fresh_chips_drawn_on_device_train():
    """A CIMLinear drawing its fresh chips in torch gives gradients and varying outputs."""
    lin = CIMLinear.from_module(torch.nn.Linear(40, 6), CrossbarConfig(device="rram"), seed=0, mode="fresh")
    lin.program_on_device = True
    x = torch.rand(8, 40)
    lin.calibrate(x)
    y1, y2 = lin(x), lin(x)
    assert not torch.equal(y1, y2)
    y1.sum().backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()
    drift = CIMLinear.from_module(torch.nn.Linear(40, 6), CrossbarConfig(device="pcm_joshi"), mode="fresh")
    drift.program_on_device = True
    drift.calibrate(x)
    assert drift(x).shape == (8, 6)  # drift models fall back to host programming

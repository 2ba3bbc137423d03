"""The crossbar as a torch op: forward = simulated array, backward = straight-through estimator."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cimsim.nn.autograd import CrossbarMatMul, crossbar_matmul, effective_weight_tensor
from cimsim.crossbar.config import CrossbarConfig
from cimsim.crossbar.mapping import quantize_inputs
from cimsim.crossbar.mvm_ref import matmul_quantized
from cimsim.nn import CIMLinear, program, reprogram, set_mode
from cimsim.seeds import layer_seed

#: an exact array: ideal device, an ADC with more codes than partial sums, full-range ADC
IDEAL = CrossbarConfig(device="ideal", adc_range="full", adc_bits=24, input_bits=8, weight_bits=8, tile_rows=16)
NOISY = CrossbarConfig(device="neurram", adc_bits=8, tile_rows=32)


def _linear(config: CrossbarConfig, n_in: int = 40, n_out: int = 7, seed: int = 0, **kw) -> CIMLinear:
    torch.manual_seed(seed)  # nn.Linear's default initialisation only
    return CIMLinear(n_in, n_out, config=config, seed=seed, **kw).double()


def _inputs(shape, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_ideal_forward_is_quantized_matmul_and_backward_is_float_layer_at_effective_weights():
    layer = _linear(IDEAL)
    x = _inputs((9, 40)).requires_grad_()
    y = layer(x)
    arr = layer.chip()
    expect = matmul_quantized(arr, x.detach().numpy()) + layer.bias.detach().numpy()
    assert y.dtype == torch.float64
    np.testing.assert_allclose(y.detach().numpy(), expect, rtol=1e-12, atol=1e-12)

    gy = _inputs((9, 7), seed=2)
    y.backward(gy)
    w_eff = torch.from_numpy(arr.effective_weights()).requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    xr = x.detach().clone().requires_grad_()
    F.linear(xr, w_eff, b).backward(gy)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.weight.grad, w_eff.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.bias.grad, b.grad, rtol=1e-12, atol=1e-12)


def test_high_precision_ideal_array_approaches_the_float_layer():
    cfg = IDEAL.replace(input_bits=12, weight_bits=12, bits_per_cell=3, input_clip=5.0)
    layer = _linear(cfg)
    x = _inputs((6, 40)).requires_grad_()
    layer(x).sum().backward()
    xr = x.detach().clone().requires_grad_()
    w = layer.weight.detach().clone().requires_grad_()
    y_float = F.linear(xr, w, layer.bias.detach())
    y_float.sum().backward()
    with torch.no_grad():
        y_sim = layer(x)
    step = layer.weight.abs().max().item() / cfg.w_max_int * 5.0 * 40  # error bound scale
    assert (y_sim - y_float).abs().max().item() < step
    torch.testing.assert_close(layer.weight.grad, w.grad)  # grad_W = grad_y^T x, as the float layer
    torch.testing.assert_close(x.grad, xr.grad, rtol=0, atol=2 * layer.weight.abs().max().item() / cfg.w_max_int)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_output_dtype_follows_input_dtype(dtype):
    layer = CIMLinear(12, 3, config=NOISY).to(dtype)
    x = _inputs((4, 12), dtype=dtype).requires_grad_()
    y = layer(x)
    assert y.dtype == dtype
    y.float().sum().backward()
    assert x.grad.dtype == dtype and layer.weight.grad.dtype == dtype


def test_function_is_stateless_and_checks_shapes():
    layer = _linear(NOISY)
    x = _inputs((5, 40))
    arr = layer.chip()
    w = layer.weight
    y1 = crossbar_matmul(x, w, arr)
    y2 = CrossbarMatMul.apply(x, w, effective_weight_tensor(arr, x.device, x.dtype), arr, "auto")
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    with pytest.raises(ValueError, match="x must be"):
        crossbar_matmul(x[:, :3], w, arr)
    with pytest.raises(ValueError, match="kernel"):
        crossbar_matmul(x, w, arr, kernel="cuda")


def test_torch_kernel_matches_numba_kernel_on_cpu():
    numba_layer = _linear(NOISY, n_in=70, n_out=9)
    torch_layer = _linear(NOISY, n_in=70, n_out=9, kernel="torch")
    x = _inputs((16, 70)).float()
    numba_layer.float(), torch_layer.float()
    y_numba, y_torch = numba_layer(x), torch_layer(x)
    assert np.array_equal(numba_layer.chip().g_pos_S, torch_layer.chip().g_pos_S)  # same seed, same chip
    torch.testing.assert_close(y_numba, y_torch, rtol=0, atol=1e-5 * y_numba.abs().max().item())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_take_the_torch_path(monkeypatch):
    import cimsim.kernels as kernels

    cpu = _linear(NOISY, n_in=70, n_out=9).float()
    gpu = _linear(NOISY, n_in=70, n_out=9).float().cuda()
    x = _inputs((16, 70)).float()
    y_cpu = cpu(x)

    def no_numba(*a, **k):
        raise AssertionError("the numba kernel ran for a CUDA tensor")

    monkeypatch.setattr(kernels, "adc_shift_add_tiles", no_numba)
    monkeypatch.setattr(kernels, "dac_drive", no_numba)
    xg = x.cuda().requires_grad_()
    y_gpu = gpu(xg)
    assert y_gpu.is_cuda and y_gpu.dtype == torch.float32
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, rtol=0, atol=1e-4 * y_cpu.abs().max().item())
    y_gpu.sum().backward()
    assert xg.grad.is_cuda and gpu.weight.grad.is_cuda


def test_same_seed_same_chip_different_seed_differs():
    a, b = _linear(NOISY), _linear(NOISY)
    x = _inputs((4, 40))
    program(a, 3), program(b, 3)
    assert a.seed == layer_seed(3, 0)
    assert np.array_equal(a.chip().g_pos_S, b.chip().g_pos_S)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    program(b, 4)
    assert not np.array_equal(a.chip().g_pos_S, b.chip().g_pos_S)
    assert not torch.equal(a(x), b(x))


def test_chip_mode_keeps_the_chip_until_the_weights_change():
    layer = _linear(NOISY)
    x = _inputs((4, 40))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(x)
    chip = layer.chip()
    y = layer(x)
    assert layer.chip() is chip
    y.sum().backward()
    opt.step()  # in-place update: the next forward re-programs the same chip seed
    layer(x)
    assert layer.chip() is not chip and layer.chip().seed == chip.seed
    reprogram(layer)
    assert layer.chip().seed != chip.seed
    # moving or casting the layer keeps its chip (the weights' values did not change)
    chip = layer.chip()
    layer.float()
    assert layer.chip() is chip


def test_fresh_mode_draws_every_forward_and_replays_from_the_seed():
    layer = _linear(NOISY)
    x = _inputs((4, 40))
    set_mode(layer, "train_variation")
    assert layer.mode == "fresh"
    program(layer, 11)
    y1, y2 = layer(x), layer(x)
    assert not torch.equal(y1, y2)
    program(layer, 11)
    torch.testing.assert_close(layer(x), y1, rtol=0, atol=0)
    # gradients flow through the drawn chip's effective weights
    xg = x.clone().requires_grad_()
    layer(xg).sum().backward()
    assert xg.grad.abs().sum() > 0 and layer.weight.grad.abs().sum() > 0


def test_ideal_mode_is_the_float_layer():
    layer = _linear(NOISY)
    x = _inputs((4, 40))
    set_mode(layer, "ideal")
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=0, atol=0)
    with pytest.raises(ValueError, match="mode"):
        set_mode(layer, "analog")


def test_clipped_inputs_pass_their_gradient_straight_through():
    layer = _linear(IDEAL.replace(input_clip=0.5))
    x = torch.full((1, 40), 3.0, dtype=torch.float64, requires_grad=True)
    layer(x).sum().backward()
    assert np.all(quantize_inputs(x.detach().numpy(), 0.5, 8) == 255)
    expect = torch.from_numpy(layer.chip().effective_weights()).sum(0)
    torch.testing.assert_close(x.grad[0], expect)

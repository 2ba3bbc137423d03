"""The simulated crossbar as a differentiable PyTorch op: :class:`CrossbarMatMul`.

Forward: ``y = x @ W_chip.T`` as a programmed array computes it (DAC, bit slices, read noise,
ADC, shift-and-add; :func:`cimsim.crossbar.mvm.crossbar_matmul_torch`): the Numba kernel for CPU
tensors, the pure-torch kernel for CUDA tensors (and on CPU when asked for, as a cross-check).

Backward: a straight-through estimator (STE). The simulator's quantizers (DAC rounding, input
clipping, ADC rounding and clipping) have zero or undefined derivatives, so the backward pass
treats the array as the linear map its programmed conductances realise:

* input gradient ``grad_x = grad_y @ W_eff`` with ``W_eff`` (out, in) the effective weights of
  the programmed array (:meth:`cimsim.crossbar.program.ProgrammedArray.effective_weights`: quantization,
  programming error, drift and drift compensation included; read noise and ADC excluded);
  clipped inputs pass their gradient unchanged;
* weight gradient ``grad_W = grad_y.T @ x``, as for the ideal float layer: the update goes to
  the float (master) weights, which are re-quantized and re-programmed on the next draw;
* the bias is added outside this op (digitally, by the caller), so it has the usual gradient.

The two training regimes differ only in which array the caller passes: a frozen chip (the same
``ProgrammedArray`` every step) or a fresh programming draw per forward (variation-aware
training); the op itself is stateless.
"""
from __future__ import annotations

from typing import Any

import torch

from cimsim.crossbar.mvm import crossbar_matmul_torch
from cimsim.crossbar.program import ProgrammedArray

KERNELS = ("auto", "numba", "torch")


def gemm_dtype(dtype: torch.dtype) -> torch.dtype:
    """Precision of the simulated GEMMs for inputs of ``dtype``: float64 for float64, else float32.

    Partial sums of integer drives and conductance steps are exact in float32 up to 2^24, so
    float32 loses nothing for the default 8-bit configurations.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def effective_weight_tensor(arr: ProgrammedArray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(out, in) effective weights of ``arr`` as a tensor on ``device`` in ``dtype``, cached per chip."""
    own = getattr(arr, "effective_weight_tensor", None)  # a chip programmed on the device
    if own is not None:
        return own(device, dtype)
    key = ("w_eff", str(device), dtype)
    w = arr._cache.get(key)
    if w is None:
        w = torch.from_numpy(arr.effective_weights()).to(device=device, dtype=dtype)
        arr._cache[key] = w
    return w


class CrossbarMatMul(torch.autograd.Function):
    """``y = CrossbarMatMul.apply(x, weight, w_eff, arr, kernel)``: simulated forward, STE backward.

    x: (B, in) float tensor (any float dtype; CPU or CUDA). weight: (out, in) float master
    weights (receive ``grad_y.T @ x``; their values are not read - ``arr`` holds the programmed
    copy). w_eff: (out, in) effective programmed weights in ``x``'s dtype and device (carry
    the input gradient). arr: the programmed array. kernel: ``auto`` | ``numba`` | ``torch``.
    Returns (B, out) in ``x``'s dtype.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, w_eff: torch.Tensor, arr: ProgrammedArray,
                kernel: str = "auto") -> torch.Tensor:
        xk = x if x.dtype in (torch.float32, torch.float64) else x.float()
        y = crossbar_matmul_torch(arr, xk.contiguous(), kernel=kernel, dtype=gemm_dtype(x.dtype))
        ctx.save_for_backward(x, w_eff)
        ctx.weight_dtype = weight.dtype
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor):
        x, w_eff = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_y.to(w_eff.dtype) @ w_eff
        if ctx.needs_input_grad[1]:
            grad_w = (grad_y.transpose(0, 1) @ x.to(grad_y.dtype)).to(ctx.weight_dtype)
        return grad_x, grad_w, None, None, None


def crossbar_matmul(x: torch.Tensor, weight: torch.Tensor, arr: ProgrammedArray, kernel: str = "auto") -> torch.Tensor:
    """Differentiable simulated ``x @ W.T``: x (B, in), weight (out, in) master weights -> (B, out).

    ``arr`` must be programmed from ``weight`` (same shape); see :class:`CrossbarMatMul` for the
    estimator. No bias: add it to the result.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel {kernel!r}: choose one of {KERNELS}")
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"crossbar_matmul: x must be (B, in) and weight (out, in), got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if (arr.n_out, arr.n_in) != tuple(weight.shape):
        raise ValueError(f"programmed array is ({arr.n_out}, {arr.n_in}), weight is {tuple(weight.shape)}")
    w_eff = effective_weight_tensor(arr, x.device, x.dtype)
    return CrossbarMatMul.apply(x, weight, w_eff, arr, kernel)


__all__ = ["CrossbarMatMul", "crossbar_matmul", "effective_weight_tensor", "gemm_dtype", "KERNELS"]

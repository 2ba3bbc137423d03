"""Functional forms of the crossbar layers: linear and im2col convolution on a programmed array.

A convolution runs on the crossbar as a matrix product: its weight (out, C, kh, kw) is laid on
the array as the matrix (out, C*kh*kw); ``F.unfold`` turns the input (B, C, H, W) into one row
of C*kh*kw values per output pixel; the array computes every pixel's outputs; the result is
reshaped back to (B, out, H', W'). Each output pixel is therefore one crossbar read, exactly as
an im2col accelerator streams it.

All functions are differentiable through :class:`cimsim.nn.autograd.CrossbarMatMul` (straight-
through backward; see :mod:`cimsim.nn.autograd`). The bias is added digitally after the array.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cimsim.nn.autograd import crossbar_matmul
from cimsim.crossbar.program import ProgrammedArray

Pair = tuple[int, int]


def _pair(v: int | tuple[int, ...]) -> Pair:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def same_padding(kernel_size: Pair, dilation: Pair) -> tuple[int, int, int, int]:
    """``F.pad`` amounts (left, right, top, bottom) of PyTorch's ``padding='same'`` (extra on the right/bottom)."""
    pads = []
    for k, d in zip(reversed(kernel_size), reversed(dilation)):
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    return tuple(pads)  # type: ignore[return-value]


def conv_rows(x: torch.Tensor, kernel_size: Pair, stride: Pair, padding: Pair | str, dilation: Pair
              ) -> tuple[torch.Tensor, Pair]:
    """im2col: x (B, C, H, W) -> rows (B*H'*W', C*kh*kw), and the output size (H', W').

    Row ``b*H'*W' + p`` holds the receptive field of output pixel ``p`` of image ``b``, in the
    order of ``weight.reshape(out, -1)`` (channel, then kernel row, then kernel column): the
    transposed ``F.unfold(x, ...)``. ``padding`` is ``(ph, pw)`` zeros, ``'valid'`` or ``'same'``.
    Built from strided views (``Tensor.unfold``) with a single copy, which is faster than
    ``F.unfold`` + transpose forward and backward.
    """
    if x.dim() != 4:
        raise ValueError(f"conv input must be (B, C, H, W), got {tuple(x.shape)}")
    if padding == "same":
        pads = same_padding(kernel_size, dilation)
    elif padding == "valid":
        pads = (0, 0, 0, 0)
    else:
        pads = (padding[1], padding[1], padding[0], padding[0])
    if any(pads):
        x = F.pad(x, pads)
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, stride, dilation
    u = x.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)  # (B, C, H', W', span_h, span_w)
    if dh > 1 or dw > 1:
        u = u[..., ::dh, ::dw]
    B, C, ho, wo = u.shape[:4]
    return u.permute(0, 2, 3, 1, 4, 5).reshape(B * ho * wo, C * kh * kw), (ho, wo)


def rows_to_image(y: torch.Tensor, batch: int, out_hw: Pair) -> torch.Tensor:
    """(B*H'*W', out) per-pixel outputs -> (B, out, H', W')."""
    ho, wo = out_hw
    return y.view(batch, ho * wo, y.shape[1]).transpose(1, 2).reshape(batch, y.shape[1], ho, wo)


def linear(x: torch.Tensor, weight: torch.Tensor, arr: ProgrammedArray, bias: torch.Tensor | None = None,
           kernel: str = "auto") -> torch.Tensor:
    """Simulated ``F.linear``: x (..., in), weight (out, in) -> (..., out) in ``x``'s dtype."""
    lead = x.shape[:-1]
    y = crossbar_matmul(x.reshape(-1, x.shape[-1]), weight, arr, kernel)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.view(*lead, y.shape[-1])


def conv2d(x: torch.Tensor, weight: torch.Tensor, arr: ProgrammedArray, bias: torch.Tensor | None = None,
           stride: int | Pair = 1, padding: int | Pair | str = 0, dilation: int | Pair = 1,
           kernel: str = "auto") -> torch.Tensor:
    """Simulated ``F.conv2d`` (groups=1): x (B, C, H, W), weight (out, C, kh, kw) -> (B, out, H', W').

    ``arr`` is programmed from ``weight.reshape(out, -1)``.
    """
    ks = (weight.shape[2], weight.shape[3])
    pad = padding if isinstance(padding, str) else _pair(padding)
    rows, out_hw = conv_rows(x, ks, _pair(stride), pad, _pair(dilation))
    y = crossbar_matmul(rows, weight.reshape(weight.shape[0], -1), arr, kernel)
    y = rows_to_image(y, x.shape[0], out_hw)
    if bias is not None:
        y = y + bias.to(y.dtype).view(1, -1, 1, 1)
    return y


__all__ = ["linear", "conv2d", "conv_rows", "rows_to_image", "same_padding"]

"""Weights -> integer slices -> conductance targets, and the exact inverse.

Shapes: a layer's weight matrix ``W`` is ``(out, in)`` (PyTorch's ``nn.Linear`` layout). On the
crossbar, inputs drive rows and outputs are read on columns, so conductance arrays are
``(n_slices, in, out)``: slice ``k`` (significance ``base^k``, ``base = 2^bits_per_cell``) of
every weight lies on its own columns, one array for the G+ side and one for the G- side.

Differential mapping: a weight ``w_int = sign * sum_k d_k base^k`` puts digit ``d_k`` on G+ when
``sign > 0`` and on G- when ``sign < 0``; the other side stays at the lowest level. The ideal
difference ``G+ - G-`` of slice ``k`` is then ``(levels[d_k] - levels[0])`` with the sign, i.e.
``d_k * G_step`` for evenly spaced levels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cimsim.crossbar.config import CrossbarConfig


@dataclass(frozen=True)
class MappedWeights:
    """A quantized layer ready to program.

    w_int: (out, in) int32 sign-magnitude integer weights (shifted left by ``config.pad_bits``
        with ``slice_align = "msb"``).
    scale: (out,) float64 weight units per integer step (same value for every column when
        ``weight_scale == "layer"``).
    digits_pos, digits_neg: (n_slices, in, out) uint8 digit on the G+ / G- cell of each slice.
    """

    w_int: np.ndarray
    scale: np.ndarray
    digits_pos: np.ndarray
    digits_neg: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.w_int.shape


def weight_scale(w: np.ndarray, config: CrossbarConfig) -> np.ndarray:
    """Quantization step per output column, shape (out,): max|W| / (2^weight_bits - 1).

    A column (or layer) of zeros gets step 1 so that it maps to zeros without dividing by zero.
    """
    w = np.asarray(w, dtype=np.float64)
    if config.weight_scale == "column":
        m = np.abs(w).max(axis=1)
    else:
        m = np.full(w.shape[0], np.abs(w).max() if w.size else 0.0)
    m = np.where(m > 0, m, config.w_max_int)
    return m / config.w_max_int


def quantize_weights(w: np.ndarray, config: CrossbarConfig) -> tuple[np.ndarray, np.ndarray]:
    """Round ``W`` (out, in) to sign-magnitude integers; returns ``(w_int int32, scale (out,))``.
    With ``config.pad_bits`` = p > 0 (``slice_align = msb``) the integers are shifted left by p and
    the step divided by ``2^p``: the same ``w_int * scale``, aligned to the top slice."""
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"weights must be 2-D (out, in), got shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("weights contain NaN or inf")
    scale = weight_scale(w, config)
    w_int = np.clip(np.rint(w / scale[:, None]), -config.w_max_int, config.w_max_int).astype(np.int32)
    pad = config.pad_bits
    return (w_int << pad, scale / (1 << pad)) if pad else (w_int, scale)


def slice_digits(magnitude: np.ndarray, bits_per_cell: int, n_slices: int) -> np.ndarray:
    """Split non-negative integers into ``n_slices`` base-``2^bits_per_cell`` digits, LSB first.

    Returns uint8 of shape ``(n_slices, *magnitude.shape)``.
    """
    mag = np.asarray(magnitude, dtype=np.int64)
    mask = (1 << bits_per_cell) - 1
    return np.stack([(mag >> (bits_per_cell * k)) & mask for k in range(n_slices)]).astype(np.uint8)


def map_weights(w: np.ndarray, config: CrossbarConfig) -> MappedWeights:
    """Quantize and slice ``W`` (out, in) onto differential pairs; digits laid out (S, in, out)."""
    w_int, scale = quantize_weights(w, config)
    return mapped_from_int(w_int, scale, config)


def mapped_from_int(w_int: np.ndarray, scale: np.ndarray, config: CrossbarConfig) -> MappedWeights:
    """The differential digit layout of integer weights ``w_int`` (out, in) with steps ``scale`` (out,)."""
    wt = w_int.T  # (in, out): rows are inputs
    digits = slice_digits(np.abs(wt), config.bits_per_cell, config.n_slices)
    return MappedWeights(
        w_int=w_int,
        scale=scale,
        digits_pos=np.where((wt > 0)[None], digits, 0).astype(np.uint8),
        digits_neg=np.where((wt < 0)[None], digits, 0).astype(np.uint8),
    )


# ------------------------------------------------------------------ torch twin (tensors on any device)
def quantize_weights_torch(w, weight_bits: int, per_column: bool = False, pad_bits: int = 0):
    """Torch twin of :func:`quantize_weights` for a tensor ``w`` of any shape (dim 0 = output):
    ``(w_int int64, scale)``, ``scale`` (out,) with ``per_column`` else a 0-d tensor. Same rounding,
    the same shift by ``pad_bits`` (``CrossbarConfig.pad_bits``)."""
    import torch

    wmax = float((1 << weight_bits) - 1)
    w = w.detach()
    m = w.abs().flatten(1).amax(dim=1) if per_column else w.abs().amax()
    scale = torch.where(m > 0, m, torch.full_like(m, wmax)) / wmax
    s = scale.view(-1, *([1] * (w.dim() - 1))) if per_column else scale
    w_int = torch.clamp(torch.round(w / s), -wmax, wmax).to(torch.int64)
    return (w_int << pad_bits, scale / (1 << pad_bits)) if pad_bits else (w_int, scale)


def digit_pairs_torch(w_int, bits_per_cell: int, n_slices: int):
    """Torch twin of the differential slicing of :func:`mapped_from_int` for integer weights of any
    shape: ``(digits_pos, digits_neg)``, each int64 ``[n_slices, *w_int.shape]``, LSB first."""
    import torch

    mag = w_int.abs()
    shifts = torch.arange(n_slices, device=w_int.device).view(-1, *([1] * w_int.dim())) * bits_per_cell
    digits = (mag.unsqueeze(0) >> shifts) & ((1 << bits_per_cell) - 1)
    zero = torch.zeros((), dtype=digits.dtype, device=digits.device)
    return torch.where(w_int > 0, digits, zero), torch.where(w_int < 0, digits, zero)


def conductance_targets(mapped: MappedWeights, levels_S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Target conductances (S) of the G+ and G- cells, each (n_slices, in, out) float64."""
    lv = np.asarray(levels_S, dtype=np.float64)
    return lv[mapped.digits_pos], lv[mapped.digits_neg]


def level_step_S(levels_S: np.ndarray) -> float:
    """Nominal conductance between adjacent levels (S): (G_top - G_bottom) / (n_levels - 1)."""
    lv = np.asarray(levels_S, dtype=np.float64)
    return float((lv[-1] - lv[0]) / (lv.size - 1))


def unmap(g_pos_S: np.ndarray, g_neg_S: np.ndarray, levels_S: np.ndarray, scale: np.ndarray,
          bits_per_cell: int) -> np.ndarray:
    """Effective weights (out, in) that programmed conductances realise (exact inverse of mapping).

    ``W_eff[o, i] = scale[o] * sum_k base^k * (G+[k, i, o] - G-[k, i, o]) / G_step``. With the
    targets of :func:`conductance_targets` on evenly spaced levels this returns
    ``w_int * scale`` exactly (up to float rounding).
    """
    base = float(1 << bits_per_cell)
    step = level_step_S(levels_S)
    sig = base ** np.arange(g_pos_S.shape[0], dtype=np.float64)
    diff = (np.asarray(g_pos_S, np.float64) - np.asarray(g_neg_S, np.float64)) / step
    w_t = np.tensordot(sig, diff, axes=(0, 0))  # (in, out)
    return (w_t * np.asarray(scale, np.float64)[None, :]).T


def quantize_inputs(x: np.ndarray, clip: float, input_bits: int) -> np.ndarray:
    """Inputs (..., in) to sign-magnitude integers in [-(2^b - 1), 2^b - 1] (int32).

    ``x_int = rint(clip(x * (1 / clip), -1, 1) * (2^b - 1))`` (the fast path computes exactly
    these float operations): a symmetric uniform quantizer whose step is ``clip / (2^b - 1)``.
    """
    xmax = (1 << input_bits) - 1
    x = np.asarray(x, dtype=np.float64)
    q = np.rint(np.clip(x * (1.0 / clip), -1.0, 1.0) * xmax)
    return q.astype(np.int32)

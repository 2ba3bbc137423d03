"""The fast crossbar MVM: dense GEMMs per row tile (BLAS via torch), fused ADC + shift-and-add.

One layer forward for inputs ``x`` (B, in):

1. quantize inputs (DAC): sign-magnitude integers, positive and negative phases;
2. per phase, stack the DAC cycles along the batch (``C x b`` rows; one cycle for a multi-bit
   DAC, one per bit for a bit-serial one) and all slices (and pair sides, for separate
   conversion) along the columns: one GEMM per row tile gives every partial sum of the block;
3. read noise: the column current of independent per-cell Gaussian read noise is Gaussian with
   variance ``sum_i x_i^2 sigma_read(G_i)^2`` - one more GEMM of the squared inputs with the
   variance matrix gives it exactly in distribution (plus the ADC noise variance);
4. ADC (clip, round) and shift-and-add over cycles, slices and row tiles into a float64
   accumulator: a Numba kernel on the CPU, torch ops on CUDA (and on request, as a cross-check).

Blocks over the batch keep the partial-sum tensor (C x b x G*out floats) under ``BLOCK_BYTES``.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cimsim.crossbar.mapping import quantize_inputs
from cimsim.crossbar.readout import ChipReadout


#: upper bound on the partial-sum block a forward materialises (bytes)
BLOCK_BYTES = int(os.environ.get("CIMSIM_BLOCK_BYTES", 16 * 2**20))  # 16 MiB: measured fastest of 2, 8, 16, 32 here


@dataclass
class Plan:
    """Tensors of one programmed array laid out for the GEMMs, on one torch device.

    G: (T, tile_rows, Gc*out) conductances in units of G_step, one slab per row tile (the last
       zero-padded); column groups Gc = n_slices (differential: G+ - G-) or 2 * n_slices
       (separate: every G+ slice, then every G- slice).
    V: like G, read-noise variance per cell in (unit)^2, or None.
    lsb: (Gc*out,) ADC step; colw: (Gc,) significance x sign; lo, hi: ADC code limits.
    """

    G: torch.Tensor
    V: torch.Tensor | None
    lsb: torch.Tensor
    colw: torch.Tensor
    lo: int
    hi: int
    n_groups: int
    V_bf16: torch.Tensor | None = None  # V in bfloat16, made on first use (see _variance)

    @property
    def n_tiles(self) -> int:
        return self.G.shape[0]

    @property
    def padded_in(self) -> int:
        return self.G.shape[0] * self.G.shape[1]


def _groups(arr: ChipReadout, values) -> np.ndarray:
    """Stack per-cell ``values(g_S)`` into column groups (Gc, in, out): G+ - G- per slice
    (differential conversion) or every G+ slice then every G- slice (separate conversion)."""
    if arr.config.adc_convert == "differential":
        return values(arr.g_pos_S, arr.g_neg_S)
    return np.concatenate([values(arr.g_pos_S, None), values(arr.g_neg_S, None)])


def _to_tiles(a: np.ndarray, rows: int, device, dtype) -> torch.Tensor:
    """(Gc, in, out) -> (T, rows, Gc*out) tensor, inputs zero-padded to T * rows."""
    gc, n_in, n_out = a.shape
    t = -(-n_in // rows)
    m = np.zeros((t * rows, gc * n_out), dtype=np.float64 if dtype == torch.float64 else np.float32)
    m[:n_in] = a.transpose(1, 0, 2).reshape(n_in, gc * n_out)
    return torch.from_numpy(m).view(t, rows, gc * n_out).to(device, dtype)


def group_conductances(arr: ChipReadout) -> np.ndarray:
    """(Gc, in, out) conductances in units of G_step, grouped as the ADCs see them."""
    step = arr.step_S
    return _groups(arr, lambda gp, gn: (gp - gn) / step if gn is not None else gp / step)


def make_plan(arr: ChipReadout, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Plan:
    cfg = arr.config
    S, n_in, n_out = arr.g_pos_S.shape
    sig = float(1 << cfg.bits_per_cell) ** np.arange(S)
    colw = sig if cfg.adc_convert == "differential" else np.concatenate([sig, -sig])
    g = group_conductances(arr)
    var = None
    if cfg.read_noise:
        rs = arr.device_model.read_sigma_S
        step2 = arr.step_S ** 2
        var = _groups(arr, lambda gp, gn: (rs(gp) ** 2 + (rs(gn) ** 2 if gn is not None else 0.0)) / step2)
    n_groups = g.shape[0]
    lsb = np.broadcast_to(arr.adc_lsb(), (n_groups, n_out))
    lo, hi = arr.adc_code_limits()
    rows = min(cfg.tile_rows, n_in)
    return Plan(
        G=_to_tiles(g, rows, device, dtype),
        V=None if var is None or not var.any() else _to_tiles(var, rows, device, dtype),
        lsb=torch.from_numpy(np.array(lsb, dtype=np.float64).reshape(-1)).to(device, dtype),
        colw=torch.from_numpy(colw.astype(np.float64)).to(device),
        lo=lo,
        hi=hi,
        n_groups=n_groups,
    )


def get_plan(arr: ChipReadout, device: torch.device, dtype: torch.dtype) -> Plan:
    key = ("plan", str(device), dtype)
    plan = arr._cache.get("plan")
    if plan is None or plan[0] != key:
        maker = getattr(arr, "make_plan", None)  # a chip programmed on the device builds its own
        plan = (key, maker(device, dtype) if maker is not None else make_plan(arr, device, dtype))
        arr._cache["plan"] = plan
    return plan[1]


def _cycle_weights(cfg, device) -> torch.Tensor:
    """(C,) significance of each DAC cycle: 1 (multi-bit) or 2^j (bit j, bit-serial)."""
    return 2.0 ** torch.arange(cfg.n_cycles, dtype=torch.float64, device=device)


def _drive_torch(x: torch.Tensor, clip: float, cfg, n_tiles: int, rows: int,
                 dtype) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Pure-torch twin of :func:`cimsim.kernels.dac_drive`: ((T, C*b, rows) x 2, any negative)."""
    xq = torch.round(torch.clamp(x.to(torch.float64) * (1.0 / clip), -1.0, 1.0) * cfg.x_max_int).to(dtype)  # as mapping.quantize_inputs
    b = x.shape[0]
    phases = []
    for mag in (torch.clamp(xq, min=0), torch.clamp(-xq, min=0)):
        if cfg.dac == "bit_serial":
            mi = mag.to(torch.int64)
            mag = torch.stack([(mi >> j) & 1 for j in range(cfg.input_bits)]).to(dtype)
        else:
            mag = mag.unsqueeze(0)
        mag = torch.nn.functional.pad(mag, (0, n_tiles * rows - x.shape[1]))  # (C, b, T*rows)
        phases.append(mag.view(-1, b, n_tiles, rows).permute(2, 0, 1, 3).reshape(n_tiles, -1, rows))
    return phases[0], phases[1], bool((xq < 0).any())


@functools.lru_cache(maxsize=1)
def _cpu_has_fast_bf16() -> bool:
    """True when this CPU multiplies bfloat16 matrices in hardware (AMX or AVX512-BF16)."""
    if os.environ.get("CIMSIM_NOISE_BF16", "1") == "0":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _variance(dd: torch.Tensor, plan: Plan, bf16: bool) -> torch.Tensor:
    """Read-noise variance of every partial sum: (T, C*b, rows) squared drive @ plan.V.

    ``bf16`` (the Numba path): the result in bfloat16, which the ADC kernel reads as raw bits
    (<= 0.4 % relative error in the variance, <= 0.2 % in the noise std: far below what any
    read-noise model is known to). On a CPU with hardware bfloat16 (AMX / AVX512-BF16) the GEMM
    itself runs in bfloat16 with float32 accumulation (~7x faster here than float32);
    ``CIMSIM_NOISE_BF16=0`` keeps the GEMM in float32 and only rounds its result.
    """
    if not bf16:
        return torch.bmm(dd, plan.V)
    if dd.device.type == "cpu" and _cpu_has_fast_bf16():
        if plan.V_bf16 is None:
            plan.V_bf16 = plan.V.to(torch.bfloat16)
        return torch.bmm(dd.to(torch.bfloat16), plan.V_bf16)
    return torch.bmm(dd, plan.V).to(torch.bfloat16)


def _adc_shift_add_torch(P, C, b, n_out, plan: Plan, cycw, sign, acc):
    """Pure-torch twin of :func:`cimsim.kernels.adc_shift_add_tiles`; P is (T, C*b, Gc*out)."""
    q = torch.clamp(torch.round(P / plan.lsb), plan.lo, plan.hi) * plan.lsb
    q = q.view(P.shape[0], C, b, plan.n_groups, n_out).to(torch.float64)
    acc += sign * torch.einsum("c,g,tcbgo->bo", cycw, plan.colw, q)


def crossbar_matmul_torch(arr: ChipReadout, x: torch.Tensor, kernel: str = "auto",
                          generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Simulated ``y = x @ W_eff.T`` for a torch tensor ``x`` (B, in) -> (B, out) float64, no autograd.

    A row of ``x`` with a NaN or infinite entry gives a NaN output row (no DAC code stands for it);
    the other rows are computed as usual (and, on a first uncalibrated call, calibrate alone).

    kernel: ``numba`` (CPU only), ``torch``, or ``auto`` (numba for CPU tensors, torch otherwise).
    generator: torch generator for read/ADC noise on ``x``'s device (default: seeded from the
        array's read counter, so every call draws fresh noise and a chip replays identically).
    dtype: GEMM precision (float32 default; float64 to compare number for number with the
        reference).
    """
    cfg = arr.config
    if x.dim() != 2 or x.shape[1] != arr.n_in:
        raise ValueError(f"input must be (B, {arr.n_in}), got {tuple(x.shape)}")
    finite = torch.isfinite(x).all(1)
    bad_rows = None if bool(finite.all()) else ~finite  # rows with NaN/inf: NaN out, the rest as usual
    if bad_rows is not None:
        x = torch.where(bad_rows[:, None], torch.zeros((), dtype=x.dtype, device=x.device), x)
    if arr.needs_calibration:
        xc = x if bad_rows is None else x[finite]
        arr.calibrate(xc.detach().cpu().numpy())
    dev = x.device
    if kernel == "auto":
        kernel = "numba" if dev.type == "cpu" else "torch"
    if kernel == "numba" and dev.type != "cpu":
        raise ValueError("the numba kernel runs on CPU tensors only")
    if kernel == "numba":
        from cimsim import kernels
    plan = get_plan(arr, dev, dtype)
    n_out, B, C, T = arr.n_out, x.shape[0], cfg.n_cycles, plan.n_tiles
    rows, ncol = plan.G.shape[1], plan.G.shape[2]
    clip = arr.resolved_input_clip()
    x = x.detach()
    acc = torch.zeros(B, n_out, dtype=torch.float64, device=dev)
    cycw = _cycle_weights(cfg, dev)
    noisy = plan.V is not None or cfg.output_noise > 0
    if noisy and generator is None:
        generator = torch.Generator(device=dev)
        generator.manual_seed(arr.next_read_seed())
    out_var = (cfg.output_noise * plan.lsb) ** 2 if cfg.output_noise > 0 else torch.zeros_like(plan.lsb)
    if kernel == "numba":
        seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if noisy else 0
        offset = 0  # counter of the noise stream: distinct for every conversion of this call
        no_var = np.zeros((0, 0, 0), dtype=np.int16)  # no noise: an empty bfloat16-bits array
    bblock = max(1, BLOCK_BYTES // (T * C * ncol * (torch.finfo(dtype).bits // 8)))
    for b0 in range(0, B, bblock):
        b1 = min(B, b0 + bblock)
        nb = b1 - b0
        if kernel == "numba":
            pos = torch.empty(T, C * nb, rows, dtype=dtype)
            neg = torch.empty_like(pos)
            xb = x[b0:b1].numpy()
            signed = bool(xb.min() < 0) if xb.size else False
            any_neg = kernels.dac_drive(xb, 1.0 / clip, float(cfg.x_max_int), C, rows, pos.numpy(), neg.numpy(),
                                        signed) > 0
        else:
            pos, neg, any_neg = _drive_torch(x[b0:b1], clip, cfg, T, rows, dtype)
        for sign, d in ((1.0, pos), (-1.0, neg)):
            if sign < 0 and not any_neg:
                continue
            P = torch.bmm(d, plan.G)  # (T, C*nb, Gc*out): every partial sum of the block
            var = None
            if noisy:  # bit-serial drives are 0/1, so d*d == d
                dd = d if cfg.dac == "bit_serial" else d * d
                bf16 = kernel == "numba"
                var = _variance(dd, plan, bf16) if plan.V is not None else \
                    torch.zeros_like(P, dtype=torch.bfloat16 if bf16 else P.dtype)
            if kernel == "numba":
                kernels.adc_shift_add_tiles(P.numpy(), no_var if var is None else var.view(torch.int16).numpy(),
                                            out_var.numpy(), seed,
                                            offset, C, nb, n_out, plan.lsb.numpy(), plan.lo, plan.hi,
                                            plan.colw.numpy(), cycw.numpy(), sign, acc[b0:b1].numpy())
                offset += P.numel()
            else:
                if var is not None:
                    P = P + (var + out_var).sqrt_() * torch.randn(P.shape, generator=generator, device=dev, dtype=dtype)
                _adc_shift_add_torch(P, C, nb, n_out, plan, cycw, sign, acc[b0:b1])
    acc.mul_(torch.as_tensor(arr.output_scale(clip), device=dev))
    if bad_rows is not None:
        acc[bad_rows] = float("nan")
    return acc


def crossbar_matmul(arr: ChipReadout, x: np.ndarray, **kw) -> np.ndarray:
    """Numpy front end of :func:`crossbar_matmul_torch`: x (B, in) or (in,) -> float64 (B, out) or (out,)."""
    x = np.asarray(x)
    one = x.ndim == 1
    xt = torch.from_numpy(np.ascontiguousarray(np.atleast_2d(x), dtype=np.float64))
    y = crossbar_matmul_torch(arr, xt, **kw).numpy()
    return y[0] if one else y


def partial_sums(arr: ChipReadout, x: np.ndarray, group: int | None = None) -> np.ndarray:
    """|Noise-free partial sums| of every tile read for inputs ``x`` (B, in), for ADC calibration.

    Returns (n_groups, n_reads, out) float32 where n_reads = phases x tiles x cycles x B
    (n_groups: slices, or slices x 2 sides for separate conversion); with ``group``, only that
    column group's (n_reads, out), in 1/n_groups of the memory.
    """
    reads = _CalibrationReads(arr, x)
    drives = reads.drives(x)
    if group is not None:
        return reads.group_sums(drives, group)
    return np.stack([reads.group_sums(drives, k) for k in range(reads.n_groups)])


CALIBRATION_BYTES = int(os.environ.get("CIMSIM_CALIBRATION_BYTES", 256 * 2**20))


class _CalibrationReads:
    """The noise-free tile reads of a calibration batch ``x`` (B, in): its input clip, whether its
    quantized inputs need the negative DAC phase (decided for the whole batch, as one read of it
    does), and the group-by-group partial sums of any part of it."""

    def __init__(self, arr: ChipReadout, x: np.ndarray):
        cfg = arr.config
        self.arr, self.cfg, self.n_out = arr, cfg, arr.n_out
        self.rows = min(cfg.tile_rows, arr.n_in)
        self.G = _to_tiles(group_conductances(arr), self.rows, "cpu", torch.float32)  # (tiles, rows, groups * out)
        self.n_tiles, self.n_groups = self.G.shape[0], self.G.shape[2] // arr.n_out
        self.clip = arr.resolved_input_clip(x)
        self.both = any(bool((quantize_inputs(x[b0:b0 + 4096], self.clip, cfg.input_bits) < 0).any())
                        for b0 in range(0, x.shape[0], 4096))
        self.phases = 2 if self.both else 1
        self.reads_per_row = self.phases * self.n_tiles * cfg.n_cycles  # tile reads per input row

    def drives(self, x: np.ndarray) -> tuple[torch.Tensor, ...]:
        """The DAC drives of rows ``x``: one (tiles, cycles * B, rows) tensor per phase."""
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
        pos, neg, _ = _drive_torch(xt, self.clip, self.cfg, self.n_tiles, self.rows, torch.float32)
        return (pos, neg) if self.both else (pos,)

    def group_sums(self, drives: tuple[torch.Tensor, ...], group: int) -> np.ndarray:
        """(reads, out) float32 |partial sums| of column group ``group`` for ``drives``."""
        Gk = self.G[:, :, group * self.n_out:(group + 1) * self.n_out]
        shape = drives[0].shape
        per = shape[0] * shape[1]  # reads of one phase
        P = torch.empty(len(drives) * per, self.n_out)
        for i, d in enumerate(drives):  # written in place: no concatenated copy
            torch.bmm(d, Gk, out=P[i * per:(i + 1) * per].view(shape[0], shape[1], self.n_out)).abs_()
        return P.numpy()


def calibration_percentiles(arr: ChipReadout, x: np.ndarray, q: float,
                            per_column: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(percentile q, max)`` of every column group's |partial sums| (:func:`partial_sums`) over
    every tile read of ``x`` (B, in): (n_groups, out) per column, else (n_groups, 1). When a
    group's partial sums fit in :data:`CALIBRATION_BYTES` this is ``np.percentile`` on them.
    Larger batches are read in parts, each keeping only the values that can still be the
    percentile's two neighbouring order statistics, so memory stays bounded (a VGG-8 layer with a
    bit-serial DAC needed ~20 GB otherwise); the result is numpy's linear interpolation between
    those two, equal to ``np.percentile`` within one float32 step (tested). The DAC drives of a
    part are shared by its groups."""
    reads, B, n_out = _CalibrationReads(arr, x), x.shape[0], arr.n_out
    n_total = reads.reads_per_row * B * (1 if per_column else n_out)  # values per percentile
    virtual = (n_total - 1) * (float(q) / 100.0)
    lo = int(np.floor(virtual))
    keep = n_total - lo  # the order statistics lo, lo + 1, ... : the only ones the result needs
    group_row_bytes = reads.reads_per_row * n_out * 4
    drive_row_bytes = reads.reads_per_row * reads.rows * 4
    whole = B * group_row_bytes <= CALIBRATION_BYTES or keep * (n_out if per_column else 1) * 4 > CALIBRATION_BYTES
    step = B if whole else max(1, CALIBRATION_BYTES // (group_row_bytes + drive_row_bytes))
    r, top, kept = [], [], [None] * reads.n_groups
    for b0 in range(0, B, step):
        drives = reads.drives(x[b0:b0 + step])
        for k in range(reads.n_groups):
            ps = reads.group_sums(drives, k)
            if whole:
                r.append(np.percentile(ps, q, axis=0) if per_column else np.percentile(ps, q)[None])
                top.append(ps.max(axis=0) if per_column else ps.max()[None])
            else:
                kept[k] = _keep_largest(kept[k], ps if per_column else ps.reshape(-1), keep)
            del ps
        del drives
    if whole:
        return np.stack(r), np.stack(top)
    gamma = virtual - lo
    for k in range(reads.n_groups):
        v = np.sort(kept[k], axis=0)
        g = np.asarray(gamma, dtype=v.dtype)  # numpy interpolates in the data's dtype
        a, b = v[0], v[1] if keep > 1 else v[0]
        r.append(np.asarray(a + (b - a) * g if g < 0.5 else b - (b - a) * (1 - g)).reshape(-1))  # numpy's lerp
        top.append(v[-1].reshape(-1))
    return np.stack(r), np.stack(top)


def _keep_largest(kept: np.ndarray | None, vals: np.ndarray, keep: int) -> np.ndarray:
    """The ``keep`` largest of ``kept`` and ``vals`` along axis 0 (unsorted). Flat values below the
    smallest kept one are dropped first: they cannot be among the largest."""
    if kept is not None and vals.ndim == 1 and kept.shape[0] == keep:
        vals = vals[vals >= kept.min()]
    vals = vals if kept is None else np.concatenate([kept, vals])
    if vals.shape[0] > keep:
        vals = np.partition(vals, vals.shape[0] - keep, axis=0)[vals.shape[0] - keep:]
    return vals

"""Programming on the tensors' device: a chip drawn in torch, where the weights live (CUDA).

:func:`cimsim.crossbar.program.program` samples every cell on the host (Numba). For training against
variation on a GPU, where every forward draws a fresh chip, that would copy every layer's
conductances to the GPU on every forward. :func:`program_on_device` does the same programming
with torch ops on the weights' device instead - the same mapping (:mod:`cimsim.crossbar.mapping`), the same
per-level programming error (:meth:`DeviceModel.programming_params`: shift, spread, Student-t
tails), stuck cells and conductance floor - from a ``torch.Generator`` on that device, and returns
a :class:`DeviceArray` whose tensors the fast path (:mod:`cimsim.crossbar.mvm`, torch kernels) uses as they
are. Only a few per-level numbers travel, once per layer and read time (cached by the caller).

Not covered (the caller falls back to host programming): devices with drift (PCM).
Tests check it against the host path: exactly equal outputs for an ideal device, the same output
statistics for a variable one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cimsim.crossbar.config import CrossbarConfig
from cimsim.device.model import DeviceModel
from cimsim.crossbar.mapping import digit_pairs_torch, level_step_S, quantize_weights_torch
from cimsim.crossbar.readout import ChipReadout


def student_t(df: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard Student-t draws, one per element of ``df`` (any shape, values > 0), same device.

    Bailey's polar method (Math. Comp. 62, 1994): ``U, V ~ U(-1, 1)``, ``W = U^2 + V^2`` accepted
    when ``0 < W < 1``; then ``T = U * sqrt(df * (W^(-2/df) - 1) / W)``. Rejected elements are
    redrawn (acceptance pi/4), all from ``generator``. Computed in float64.
    """
    flat = df.reshape(-1).to(torch.float64)
    out = torch.empty_like(flat)
    todo = torch.arange(flat.numel(), device=flat.device)
    while todo.numel():
        uv = torch.rand((2, todo.numel()), generator=generator, device=flat.device, dtype=torch.float64) * 2 - 1
        w = uv[0] * uv[0] + uv[1] * uv[1]
        ok = (w < 1) & (w > 0)
        idx, d, wk = todo[ok], flat[todo[ok]], w[ok]
        out[idx] = uv[0][ok] * torch.sqrt(d * (wk.pow(-2.0 / d) - 1) / wk)
        todo = todo[~ok]
    return out.view(df.shape).to(df.dtype)


@dataclass
class LevelTable:
    """Per-level programming parameters of one (device, cell, read time) on one torch device.

    levels, shift, scale: (L,) siemens; df: (L,) (inf = normal); step: level spacing (S).
    """

    levels: torch.Tensor
    shift: torch.Tensor
    scale: torch.Tensor
    df: torch.Tensor
    step: float
    heavy: bool

    @classmethod
    def make(cls, device_model: DeviceModel, config: CrossbarConfig, device: torch.device) -> "LevelTable":
        lv = device_model.level_conductances(config.cell_levels)
        shift, scale, df = device_model.programming_params(lv, config.read_time_s)

        def t(a):
            return torch.as_tensor(np.asarray(a, dtype=np.float64), device=device)

        return cls(t(lv), t(shift), t(scale), t(df), level_step_S(lv), bool(np.isfinite(df).any()))


@dataclass
class DeviceArray(ChipReadout):
    """One layer programmed on one chip, every tensor on one torch device (see the module doc).

    Offers what :func:`cimsim.crossbar.mvm.crossbar_matmul_torch` and :mod:`cimsim.nn.autograd` use of a
    :class:`cimsim.crossbar.program.ProgrammedArray`: shapes, calibration, output scale, read seeds, the
    GEMM plan (:meth:`make_plan`) and the effective weights (:meth:`effective_weight_tensor`).
    g_pos, g_neg: (n_slices, in, out) float64 conductances (S); scale: (out,) weight step.
    """

    config: CrossbarConfig
    device_model: DeviceModel
    g_pos: torch.Tensor
    g_neg: torch.Tensor
    table: LevelTable
    scale: np.ndarray
    scale_t: torch.Tensor
    input_clip: float
    adc_range: np.ndarray | None
    seed: int
    drift_scale: float = 1.0
    needs_calibration: bool = False
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def n_in(self) -> int:
        return self.g_pos.shape[1]

    @property
    def n_out(self) -> int:
        return self.g_pos.shape[2]

    def resolved_input_clip(self, x=None) -> float:
        return float(self.config.input_clip if self.config.input_clip is not None else self.input_clip)

    def _host_like(self):
        """A host ProgrammedArray with the same geometry and calibration (for ADC steps only)."""
        from cimsim.crossbar.program import ProgrammedArray

        lv = self.table.levels.cpu().numpy()
        return ProgrammedArray(config=self.config, device_model=self.device_model, mapped=None,  # type: ignore[arg-type]
                               g_pos_S=np.empty((self.config.n_slices, self.n_in, 0)), g_neg_S=np.empty(0),
                               levels_S=lv, seed=self.seed, input_clip=self.input_clip,
                               adc_range=self.adc_range)

    def make_plan(self, device: torch.device, dtype: torch.dtype):
        """The :class:`cimsim.crossbar.mvm.Plan` of this chip, built from its device tensors (no host copy
        of conductances; the ADC steps are a few numbers)."""
        from cimsim.crossbar.mvm import Plan

        cfg = self.config
        S, n_in, n_out = self.g_pos.shape
        step = self.table.step
        sig = float(1 << cfg.bits_per_cell) ** np.arange(S)
        if cfg.adc_convert == "differential":
            g = (self.g_pos - self.g_neg) / step
            colw = sig
        else:
            g = torch.cat([self.g_pos, self.g_neg]) / step
            colw = np.concatenate([sig, -sig])
        var = None
        if cfg.read_noise and self.device_model.read_noise_poly_uS is not None:
            rs = self._read_var
            var = (rs(self.g_pos) + rs(self.g_neg)) / step**2 if cfg.adc_convert == "differential" else \
                torch.cat([rs(self.g_pos), rs(self.g_neg)]) / step**2
        host = self._host_like()
        host_groups = host.n_groups
        lsb = np.broadcast_to(host.adc_lsb(), (host_groups, n_out))
        lo, hi = host.adc_code_limits()
        rows = min(cfg.tile_rows, n_in)
        return Plan(G=_tiles(g, rows, dtype), V=None if var is None else _tiles(var, rows, dtype),
                    lsb=torch.as_tensor(np.array(lsb, dtype=np.float64).reshape(-1), device=device, dtype=dtype),
                    colw=torch.as_tensor(colw.astype(np.float64), device=device), lo=lo, hi=hi, n_groups=g.shape[0])

    def _read_var(self, g: torch.Tensor) -> torch.Tensor:
        """Per-cell read variance (S^2) from the device model's polynomial, in torch."""
        g_uS = g / 1e-6
        acc = torch.zeros_like(g_uS)
        for c in self.device_model.read_noise_poly_uS:
            acc = acc * g_uS + c
        return (acc.clamp_min(0) * 1e-6) ** 2

    def effective_weight_tensor(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(out, in) weights the programmed conductances realise (see :func:`cimsim.crossbar.mapping.unmap`)."""
        key = ("w_eff", str(device), dtype)
        w = self._cache.get(key)
        if w is None:
            S = self.g_pos.shape[0]
            sig = float(1 << self.config.bits_per_cell) ** torch.arange(S, device=self.g_pos.device, dtype=torch.float64)
            w_t = torch.einsum("k,kio->io", sig, (self.g_pos - self.g_neg) / self.table.step)
            w = (w_t * self.scale_t[None, :] * self.drift_scale).T.to(device=device, dtype=dtype)
            self._cache[key] = w
        return w


def _tiles(a: torch.Tensor, rows: int, dtype: torch.dtype) -> torch.Tensor:
    """(Gc, in, out) -> (T, rows, Gc*out), inputs zero-padded to T * rows (as mvm._to_tiles)."""
    gc, n_in, n_out = a.shape
    t = -(-n_in // rows)
    m = torch.zeros(t * rows, gc * n_out, dtype=dtype, device=a.device)
    m[:n_in] = a.permute(1, 0, 2).reshape(n_in, gc * n_out).to(dtype)
    return m.view(t, rows, gc * n_out)


def program_on_device(weights: torch.Tensor, config: CrossbarConfig, device_model: DeviceModel, seed: int,
                      input_clip: float, adc_range: np.ndarray | None, table: LevelTable | None = None) -> DeviceArray:
    """Program ``weights`` (out, in) on their own torch device; one chip per ``seed``.

    The same quantization, slicing and differential mapping as :func:`cimsim.crossbar.mapping.map_weights`
    (in torch), then per cell ``G = level + shift + scale * Z`` with ``Z`` normal or Student-t per
    level, stuck-at-Gmin/Gmax cells and the conductance floor, as
    :meth:`DeviceModel.sample`; draws from a generator on the weights' device seeded with ``seed``.
    ``table``: the per-level parameters (made once per layer with :meth:`LevelTable.make`).
    """
    if device_model.drift is not None:
        raise ValueError(f"{device_model.name}: device-side programming does not model drift; program on the host")
    dev = weights.device
    table = table if table is not None else LevelTable.make(device_model, config, dev)
    w_int, scale_t = quantize_weights_torch(weights.to(torch.float64), config.weight_bits,
                                            config.weight_scale == "column")
    scale_t = scale_t.expand(w_int.shape[0])
    d_pos, d_neg = digit_pairs_torch(w_int.T, config.bits_per_cell, config.n_slices)  # (S, in, out)
    gen = torch.Generator(device=dev)
    gen.manual_seed(int(seed) & (2**63 - 1))
    g_pos, g_neg = (_sample(d, table, device_model, gen) for d in (d_pos, d_neg))
    return DeviceArray(config=config, device_model=device_model, g_pos=g_pos, g_neg=g_neg, table=table,
                       scale=scale_t.cpu().numpy(), scale_t=scale_t, input_clip=float(input_clip),
                       adc_range=None if adc_range is None else np.asarray(adc_range, dtype=np.float64), seed=int(seed))


def _sample(idx: torch.Tensor, table: LevelTable, dm: DeviceModel, gen: torch.Generator) -> torch.Tensor:
    """Conductances (S) of cells at level indices ``idx`` (any shape), float64, on idx's device."""
    z = torch.randn(idx.shape, generator=gen, device=idx.device, dtype=torch.float64)
    if table.heavy:
        df = table.df[idx]
        heavy = torch.isfinite(df)
        z = torch.where(heavy, student_t(torch.where(heavy, df, torch.full_like(df, 4.0)), gen), z)
    g = table.levels[idx] + table.shift[idx] + table.scale[idx] * z
    if dm.stuck_at_gmin or dm.stuck_at_gmax:
        u = torch.rand(idx.shape, generator=gen, device=idx.device, dtype=torch.float64)
        g = torch.where(u < dm.stuck_at_gmin, torch.full_like(g, dm.gmin_S), g)
        g = torch.where((u >= dm.stuck_at_gmin) & (u < dm.stuck_at_gmin + dm.stuck_at_gmax),
                        torch.full_like(g, dm.gmax_S), g)
    if dm.g_floor_S is not None:
        g = g.clamp_min(dm.g_floor_S)
    return g

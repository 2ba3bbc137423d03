"""Programming on the tensors' device: a chip drawn in torch, where the weights live (CUDA).

:func:`program_on_device` maps weights as :func:`cimsim.crossbar.program.program` does
(:mod:`cimsim.crossbar.mapping`, in torch) and draws every cell with the torch twin of the level
sampler (:func:`cimsim.device.sampling.sample_levels_torch`) from a ``torch.Generator`` on the
weights' device, so a GPU forward that draws a fresh chip never copies conductances from the host.
The :class:`DeviceArray` it returns is what the fast path (:mod:`cimsim.crossbar.mvm`) and
:mod:`cimsim.nn.autograd` use of a chip. Devices with drift are programmed on the host (drift
compensation needs the undrifted chip). Tested against the host path: equal outputs for an ideal
device, the same cell law and output statistics for a variable one.
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
from cimsim.device.sampling import LevelTable, read_sigma_torch, sample_levels_torch


def level_table(device_model: DeviceModel, config: CrossbarConfig, device: torch.device) -> LevelTable:
    """The float64 :class:`cimsim.device.sampling.LevelTable` of a config's cell levels at its read time."""
    return LevelTable.make(device_model, device_model.level_conductances(config.cell_levels), config.read_time_s,
                           device)


@dataclass
class DeviceArray(ChipReadout):
    """One layer programmed on one chip, every tensor on one torch device (see the module doc).

    Offers what :func:`cimsim.crossbar.mvm.crossbar_matmul_torch` and :mod:`cimsim.nn.autograd` use of a
    :class:`cimsim.crossbar.program.ProgrammedArray`: shapes, calibration, output scale, read seeds, the
    GEMM plan (:meth:`make_plan`) and the effective weights (:meth:`effective_weight_tensor`).
    g_pos, g_neg: (n_slices, in, out) float64 conductances (S); scale: (out,) weight step.
    With interconnect resistance they are the effective ones; ``ir_solved`` then holds the exact
    solve, ``((cells G+, G-), (effective G+, G-))`` (``None`` when read through another chip's,
    ``ir_exact`` False).
    """

    config: CrossbarConfig
    device_model: DeviceModel
    g_pos: torch.Tensor
    g_neg: torch.Tensor
    table: LevelTable
    scale: np.ndarray
    scale_t: torch.Tensor
    step_S: float
    input_clip: float
    adc_range: np.ndarray | None
    seed: int
    drift_scale: float = 1.0
    output_gain: np.ndarray | None = None
    needs_calibration: bool = False
    ir_exact: bool = True
    ir_solved: tuple | None = None
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
        step = self.step_S
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
        return read_sigma_torch(self.device_model.read_noise_poly_uS, g) ** 2

    def effective_weight_tensor(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(out, in) weights the programmed conductances realise (see :func:`cimsim.crossbar.mapping.unmap`)."""
        key = ("w_eff", str(device), dtype)
        w = self._cache.get(key)
        if w is None:
            S = self.g_pos.shape[0]
            sig = float(1 << self.config.bits_per_cell) ** torch.arange(S, device=self.g_pos.device, dtype=torch.float64)
            w_t = torch.einsum("k,kio->io", sig, (self.g_pos - self.g_neg) / self.step_S)
            w = w_t * self.scale_t[None, :] * self.drift_scale
            if self.output_gain is not None:
                w = w * torch.as_tensor(self.output_gain, device=w.device, dtype=w.dtype)[None, :]
            w = w.T.to(device=device, dtype=dtype)
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
                      input_clip: float, adc_range: np.ndarray | None, table: LevelTable | None = None,
                      ir_solved: tuple | None = None) -> DeviceArray:
    """Program ``weights`` (out, in) on their own torch device; one chip per ``seed``.

    The same quantization, slicing and differential mapping as :func:`cimsim.crossbar.mapping.map_weights`
    (in torch), then per cell ``G = level + shift + scale * Z`` with ``Z`` normal or Student-t per
    level, stuck-at-Gmin/Gmax cells and the conductance floor, as
    :meth:`DeviceModel.sample`; draws from a generator on the weights' device seeded with ``seed``.
    With interconnect resistance in ``config`` the conductances are the tiles' effective ones
    (:func:`cimsim.crossbar.circuit.effective_layer_torch`), as on the host, or read through
    ``ir_solved`` (another chip's solve, :func:`cimsim.crossbar.program.with_interconnect`).
    ``table``: the per-level parameters (made once per layer with :func:`level_table`).
    """
    if device_model.drift is not None:
        raise ValueError(f"{device_model.name}: device-side programming does not model drift; program on the host")
    dev = weights.device
    table = table if table is not None else level_table(device_model, config, dev)
    w_int, scale_t = quantize_weights_torch(weights.to(torch.float64), config.weight_bits,
                                            config.weight_scale == "column", config.pad_bits)
    scale_t = scale_t.expand(w_int.shape[0])
    d_pos, d_neg = digit_pairs_torch(w_int.T, config.bits_per_cell, config.n_slices)  # (S, in, out)
    gen = torch.Generator(device=dev)
    gen.manual_seed(int(seed) & (2**63 - 1))
    g = sample_levels_torch(torch.stack([d_pos, d_neg]), table, device_model, gen, config.read_time_s)
    g_pos, g_neg = g[0], g[1]
    solved = None
    if not config.circuit.is_ideal and ir_solved is not None:  # another chip's solve
        from cimsim.crossbar.circuit import read_through_solve

        (c_pos, c_neg), (e_pos, e_neg) = ir_solved
        if c_pos.shape != g_pos.shape:
            raise ValueError(f"a solve of shape {tuple(c_pos.shape)} for a layer of shape {tuple(g_pos.shape)}")
        g_pos, g_neg = read_through_solve(g_pos, c_pos, e_pos), read_through_solve(g_neg, c_neg, e_neg)
    elif not config.circuit.is_ideal:  # read through the wires: each tile's effective matrix, on the device
        from cimsim.crossbar.circuit import effective_layer_torch

        a_pos, a_neg = effective_layer_torch(g_pos, g_neg, config.circuit, config.tile_rows, config.tile_cols)
        solved = ((g_pos, g_neg), (a_pos, a_neg))
        g_pos, g_neg = a_pos, a_neg
    return DeviceArray(config=config, device_model=device_model, g_pos=g_pos, g_neg=g_neg, table=table,
                       scale=scale_t.cpu().numpy(), scale_t=scale_t,
                       step_S=level_step_S(device_model.level_conductances(config.cell_levels)), input_clip=float(input_clip),
                       adc_range=None if adc_range is None else np.asarray(adc_range, dtype=np.float64), seed=int(seed),
                       ir_exact=ir_solved is None, ir_solved=solved)

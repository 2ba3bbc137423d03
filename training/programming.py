"""Programming a trained model onto simulated crossbars under a write-verify policy.

One *chip* programs every backbone conv/linear weight (IRS side heads, biases and BatchNorm are
not programmed). Per layer: ``W`` (``[out, ...]``) is flattened to ``(out, in)`` and mapped to
conductance targets ``(2, S, in, out)`` (index 0 = G+, 1 = G-; siemens); cells are write-verified
(:func:`cimsim.writeverify.write_verify`) where the policy's mask says so and one-shot elsewhere,
relaxed to ``t_read_s`` and decoded to effective weights of ``W``'s shape. Energy (J) and latency
(s) per layer: :func:`cimsim.cost.write_verify_cost`; per model: :func:`cimsim.cost.model_cost`.

Policies (:class:`Policy`): ``none`` one-shot; ``full`` verify every cell to ``target +- tolerance``;
``selective`` (SWIM, Yan et al., DAC 2022, arXiv 2202.08395) verify all ``2 * S`` cells of the top
``fraction`` of weights (``scope`` ``"global"`` or ``"layer"``) by a sensitivity computed on the
run's training split (:func:`sensitivities`): ``first`` = ``|w * g|``, ``second`` =
``|w^2 * F| / 2`` with ``F`` the empirical Fisher diagonal.

Seeds: chip ``i`` of a run with seed ``s`` programs layer ``l`` from :func:`cimsim.seeds.layer_seed`
``(cimsim.seeds.chip_seed(s, i), l)`` whatever the policy, so every policy sees the same chips and
``selective`` at fraction 1 reproduces ``full`` number for number.

Memory: a layer of more than :data:`PROGRAM_BLOCK_CELLS` cells is write-verified in blocks of
whole input rows (a multiple of the cost model's ``rows_parallel``, so latencies add exactly), block
``b`` from :func:`cimsim.seeds.program_block_seed` ``(layer seed, b)``; a write-verify result
holds ~20 arrays per cell, and VGG-8's fc1 (67 M cells) whole took more than 18 GB. The blocks
depend on the layer's shape only, so a chip is still its seed; smaller layers (every LeNet-5
layer) are programmed whole, from the layer seed, as before.

Steps, sensitivities and latency layout: docs/design.md,
section 'Programming policies (training/programming.py)'.
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from cimsim.crossbar.config import CrossbarConfig
from cimsim.cost import Cost, CostConfig, CostReport, model_cost, write_verify_cost
from cimsim.device.model import DeviceModel
from cimsim.crossbar.mapping import MappedWeights, conductance_targets, map_weights, unmap
from cimsim.seeds import layer_seed, program_block_seed
from cimsim.writeverify import PulseModel, write_verify

from .data import ImageSet
from .evaluate import MCAccumulator, recalibrated_batchnorm
from .models import noisy_weight_names
from .selective import fisher_diag, selective_mask, sensitivity_first_order, sensitivity_second_order

POLICIES = ("none", "full", "selective")
SENSITIVITIES = ("first", "second")
SCOPES = ("global", "layer")


class ProgrammingError(ValueError):
    """A policy or setup that cannot be programmed as asked (one-line message)."""


# ------------------------------------------------------------------------------ setup
@dataclass(frozen=True)
class Policy:
    """One write-verify policy.

    kind: ``none | full | selective``. tolerance: half-width of the acceptance window, siemens
    (or a fraction of the target when ``relative``); ``None`` for ``none``. fraction: share of
    weights verified, in (0, 1] (``selective`` only). sensitivity: ``first | second``
    (``selective`` only).
    """

    kind: str
    tolerance: float | None = None
    fraction: float | None = None
    sensitivity: str | None = None
    relative: bool = False

    def __post_init__(self) -> None:
        if self.kind not in POLICIES:
            raise ProgrammingError(f"unknown policy {self.kind!r} (choose from {', '.join(POLICIES)})")
        if self.kind == "none":
            return
        tol = self.tolerance
        if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
            raise ProgrammingError(f"policy {self.kind}: tolerance must be a finite number > 0, got {tol!r}")
        if self.relative and tol >= 1:
            raise ProgrammingError(f"policy {self.kind}: a relative tolerance must be < 1, got {tol}")
        if self.kind == "selective":
            f = self.fraction
            if not (isinstance(f, (int, float)) and 0 < f <= 1):
                raise ProgrammingError(f"selective policy: fraction must lie in (0, 1], got {f!r}")
            if self.sensitivity not in SENSITIVITIES:
                raise ProgrammingError(f"selective policy: sensitivity must be one of {SENSITIVITIES}, "
                                       f"got {self.sensitivity!r}")

    @property
    def verified_fraction(self) -> float:
        """Share of weights write-verified: 0 (none), 1 (full) or ``fraction``."""
        return {"none": 0.0, "full": 1.0}.get(self.kind, self.fraction or 0.0)

    def label(self) -> str:
        """Short human-readable name, e.g. ``selective(second, 10%) tol 1 uS``."""
        if self.kind == "none":
            return "none"
        unit = f"{100 * self.tolerance:g} %" if self.relative else f"{self.tolerance * 1e6:g} uS"
        if self.kind == "full":
            return f"full tol {unit}"
        return f"selective({self.sensitivity}, {100 * self.fraction:g} %) tol {unit}"


@dataclass(frozen=True)
class ProgrammingSetup:
    """How weights become cells and how cells are programmed.

    device_model: the cell's :class:`DeviceModel` (its ``sigma_scale`` already set). crossbar: the
    mapping fields of a :class:`CrossbarConfig` are used (``weight_bits``, ``bits_per_cell``,
    ``slice_align``, ``weight_scale``). algorithm: ``ispp | fppv``. t_read_s: read time after programming (s).
    max_pulses: pulse limit per cell (``None``: no limit). cost: energy/latency constants.
    relaxation: see :func:`cimsim.writeverify.relax`. pulse_model: ``None`` = the calibrated
    preset of the algorithm.
    """

    device_model: DeviceModel
    crossbar: CrossbarConfig = field(default_factory=CrossbarConfig)
    algorithm: str = "ispp"
    t_read_s: float = 1.0
    max_pulses: int | None = 100
    cost: CostConfig = field(default_factory=CostConfig)
    relaxation: str = "increment"
    pulse_model: PulseModel | None = None

    @property
    def levels_S(self) -> np.ndarray:
        """``(2^bits_per_cell,)`` level conductances, siemens."""
        return np.asarray(self.device_model.level_conductances(self.crossbar.cell_levels), dtype=np.float64)


@dataclass(frozen=True)
class LayerTargets:
    """One weight tensor ready to program (chip-independent).

    name: parameter name; shape: the tensor's shape ``(out, ...)``; mapped: its quantized,
    sliced form; targets_S: ``(2, S, in, out)`` conductance targets (siemens, 0 = G+, 1 = G-).
    """

    name: str
    shape: tuple[int, ...]
    mapped: MappedWeights
    targets_S: np.ndarray

    @property
    def n_weights(self) -> int:
        return int(np.prod(self.shape))


def backbone_weight_names(model: nn.Module) -> list[str]:
    """The conv/linear weights that are programmed: every crossbar weight but the IRS heads'."""
    return [n for n in noisy_weight_names(model) if not n.startswith("heads.")]


def prepare_layers(model: nn.Module, setup: ProgrammingSetup) -> list[LayerTargets]:
    """Map every backbone conv/linear weight of ``model`` to conductance targets (backbone order)."""
    params = dict(model.named_parameters())
    levels = setup.levels_S
    out = []
    for name in backbone_weight_names(model):
        w = params[name].detach().cpu().double().numpy()
        mapped = map_weights(w.reshape(w.shape[0], -1), setup.crossbar)
        gp, gn = conductance_targets(mapped, levels)
        out.append(LayerTargets(name, tuple(w.shape), mapped, np.stack([gp, gn])))
    if not out:
        raise ProgrammingError("the model has no conv/linear weights to program")
    return out


# ------------------------------------------------------------------------ programming
def _row_layout(a: np.ndarray) -> np.ndarray:
    """Per-cell array ``(2, S, in, out)`` -> crossbar layout ``(in, 2 * S * out)`` (rows = inputs)."""
    return np.ascontiguousarray(a.transpose(2, 0, 1, 3)).reshape(a.shape[2], -1)


def layer_cost(result, setup: ProgrammingSetup) -> Cost:
    """Energy (J) and latency (s) of one programmed layer; the breakdown adds ``failed`` (cells
    verified but left outside their window) and ``verified`` (cells write-verified) counts."""
    view = SimpleNamespace(**{k: _row_layout(np.asarray(getattr(result, k))) for k in (
        "pulses_set", "pulses_reset", "reads", "v2g_set_V2S", "v2g_reset_V2S", "g_read_sum_S")})
    c = write_verify_cost(view, setup.cost, setup.crossbar.bits_per_cell)
    bd = dict(c.breakdown, failed=float(np.count_nonzero(result.failed)),
              verified=float(np.count_nonzero(result.verified)))
    return Cost(c.energy_J, c.latency_s, bd)


def cell_mask(weight_mask: np.ndarray | None, layer: LayerTargets) -> np.ndarray | None:
    """Per-weight boolean mask (the tensor's shape) -> per-cell mask broadcastable to ``(2, S, in, out)``."""
    if weight_mask is None:
        return None
    m = np.asarray(weight_mask, dtype=bool).reshape(layer.shape[0], -1).T  # (in, out)
    return np.broadcast_to(m[None, None], layer.targets_S.shape)


#: most cells one write-verify call programs (module docstring, 'Memory')
PROGRAM_BLOCK_CELLS = 1 << 23


def row_blocks(shape: tuple[int, int, int, int], rows_parallel: int = 1,
               max_cells: int | None = None) -> list[slice]:
    """Input-row blocks of targets ``shape = (2, S, in, out)`` programmed one write-verify call each:
    one block when the layer has at most ``max_cells`` (default :data:`PROGRAM_BLOCK_CELLS`) cells,
    else blocks of the most whole rows (a multiple of ``rows_parallel``, at least that many) that fit."""
    max_cells = PROGRAM_BLOCK_CELLS if max_cells is None else int(max_cells)
    two, s, n_in, n_out = shape
    per_row = two * s * n_out
    if n_in * per_row <= max_cells:
        return [slice(0, n_in)]
    rp = max(1, int(rows_parallel))
    rows = max(rp, (max_cells // per_row) // rp * rp)
    return [slice(a, min(n_in, a + rows)) for a in range(0, n_in, rows)]


def program_layer(layer: LayerTargets, setup: ProgrammingSetup, policy: Policy, weight_mask: np.ndarray | None,
                  seed: int) -> tuple[np.ndarray, Cost]:
    """Program one layer on one chip: effective weights (float64, the tensor's shape) and its cost.

    ``weight_mask``: for ``selective``, the weights to verify (the tensor's shape, bool); ignored
    otherwise. ``seed``: the layer's seed on this chip (:func:`layer_seed`). A layer of more than
    :data:`PROGRAM_BLOCK_CELLS` cells is programmed in :func:`row_blocks`.
    """
    if policy.kind == "none":
        mask = np.zeros(layer.targets_S.shape, dtype=bool)
    elif policy.kind == "full":
        mask = None
    else:
        if weight_mask is None:
            raise ProgrammingError(f"{layer.name}: the selective policy needs a weight mask")
        mask = cell_mask(weight_mask, layer)
    verify = policy.kind != "none"  # one-shot cells ignore the window; any valid one will do
    blocks = row_blocks(layer.targets_S.shape, setup.cost.rows_parallel)
    g = np.empty(layer.targets_S.shape) if len(blocks) > 1 else None
    cost = Cost()
    for b, rows in enumerate(blocks):
        res = write_verify(layer.targets_S[:, :, rows], setup.device_model, setup.algorithm,
                           tolerance=policy.tolerance if verify else 1e-6, max_pulses=setup.max_pulses,
                           rng=seed if g is None else program_block_seed(seed, b),
                           mask=None if mask is None else mask[:, :, rows], t_read_s=setup.t_read_s,
                           relative=policy.relative and verify, pulse_model=setup.pulse_model,
                           relaxation=setup.relaxation)
        cost = cost + layer_cost(res, setup)
        if g is None:
            g = res.g_S
        else:
            g[:, :, rows] = res.g_S
        del res
    w = unmap(g[0], g[1], setup.levels_S, layer.mapped.scale, setup.crossbar.bits_per_cell)
    return w.reshape(layer.shape), cost


@dataclass(frozen=True)
class ChipProgram:
    """One programmed chip: effective weights by parameter name (float64 arrays) and the costs
    (per layer and total, :class:`cimsim.cost.CostReport`)."""

    weights: Mapping[str, np.ndarray]
    cost: CostReport


def program_chip(layers: Sequence[LayerTargets], setup: ProgrammingSetup, policy: Policy, chip: int,
                 masks: Mapping[str, np.ndarray] | None = None) -> ChipProgram:
    """Program every layer on the chip with 64-bit seed ``chip`` under ``policy``."""
    weights, costs = {}, {}
    for k, layer in enumerate(layers):
        m = None if masks is None else masks.get(layer.name)
        weights[layer.name], costs[layer.name] = program_layer(layer, setup, policy, m, layer_seed(chip, k))
    return ChipProgram(weights, model_cost(costs))


def ideal_weights(layers: Sequence[LayerTargets], setup: ProgrammingSetup) -> dict[str, np.ndarray]:
    """Effective weights of exact programming (every cell on its target): the quantized model."""
    return {la.name: unmap(la.targets_S[0], la.targets_S[1], setup.levels_S, la.mapped.scale,
                           setup.crossbar.bits_per_cell).reshape(la.shape) for la in layers}


# ------------------------------------------------------------------------ sensitivity
def sensitivity_batches(train: ImageSet, n_batches: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """Index tensors of ``n_batches`` disjoint batches (a seeded permutation of the training set;
    fewer batches when the set is smaller)."""
    if n_batches < 1 or batch_size < 1:
        raise ProgrammingError("sensitivity needs at least one batch of at least one sample")
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(len(train), generator=g)
    idx = [perm[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]
    return [b for b in idx if b.numel()]


def batch_gradients(model: nn.Module, train: ImageSet, batches: Sequence[torch.Tensor], names: Sequence[str],
                    device: torch.device | str = "cpu") -> list[list[torch.Tensor]]:
    """Per batch, the gradient of the batch-mean cross-entropy with respect to each weight in
    ``names`` (clean weights, eval mode: BatchNorm uses its running statistics, no heads)."""
    was = model.training
    model.eval()
    params = dict(model.named_parameters())
    ws = [params[n] for n in names]
    out = []
    try:
        for idx in batches:
            x, y = train.batch(idx, device)
            loss = nn.functional.cross_entropy(model(x), y)
            out.append([g.detach().cpu() for g in torch.autograd.grad(loss, ws)])
    finally:
        model.train(was)
    return out


def sensitivities(model: nn.Module, train: ImageSet, kind: str, n_batches: int = 16, batch_size: int = 32,
                  seed: int = 0, device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """Sensitivity of every backbone weight (float64, the tensor's shape), see the module docstring.

    kind: ``first`` (``|w * mean g|``) or ``second`` (``|w^2 * mean g^2| / 2``, SWIM).
    """
    if kind not in SENSITIVITIES:
        raise ProgrammingError(f"unknown sensitivity {kind!r} (choose from {', '.join(SENSITIVITIES)})")
    names = backbone_weight_names(model)
    params = dict(model.named_parameters())
    grads = batch_gradients(model, train, sensitivity_batches(train, n_batches, batch_size, seed), names, device)
    out = {}
    for j, n in enumerate(names):
        w = params[n].detach().cpu()
        per_batch = [g[j] for g in grads]
        if kind == "first":
            out[n] = sensitivity_first_order(w, torch.stack(per_batch).double().mean(0))
        else:
            out[n] = sensitivity_second_order(w, fisher_diag(per_batch))
    return out


def selection_masks(sens: Mapping[str, np.ndarray], fraction: float, scope: str = "global") -> dict[str, np.ndarray]:
    """Boolean masks (each tensor's shape) of the top ``fraction`` of weights by sensitivity,
    ranked over the whole model (``global``) or within each layer (``layer``)."""
    if scope not in SCOPES:
        raise ProgrammingError(f"unknown selection scope {scope!r} (choose from {', '.join(SCOPES)})")
    if scope == "layer":
        return {n: selective_mask(s, fraction) for n, s in sens.items()}
    names = list(sens)
    flat = np.concatenate([np.asarray(sens[n], dtype=np.float64).ravel() for n in names])
    sel = selective_mask(flat, fraction)
    out, off = {}, 0
    for n in names:
        k = np.asarray(sens[n]).size
        out[n] = sel[off:off + k].reshape(np.shape(sens[n]))
        off += k
    return out


# ------------------------------------------------------------------------- evaluation
def _as_params(model: nn.Module, weights: Mapping[str, np.ndarray],
               device: torch.device | str) -> dict[str, torch.Tensor]:
    """Weights as tensors of the model's parameter dtypes on ``device``."""
    params = dict(model.named_parameters())
    return {n: torch.as_tensor(w, dtype=params[n].dtype, device=device) for n, w in weights.items()}


@torch.no_grad()
@torch.no_grad()
def chip_probs(model: nn.Module, weights: Mapping[str, np.ndarray] | None, data: ImageSet, acc: MCAccumulator,
               batch_size: int = 1000, device: torch.device | str = "cpu", recal_x: torch.Tensor | None = None) -> int:
    """Run the test set through ``model`` with ``weights`` (a copy of the model's parameters with
    these replaced, via ``torch.func.functional_call``; ``None`` = the clean model) and add the
    chip's softmax outputs to ``acc``. ``recal_x``: images for per-chip BatchNorm recalibration
    (:func:`training.evaluate.recalibrated_batchnorm`); returns the images it ran (0: none)."""
    was = model.training
    model.eval()
    sub = None if weights is None else _as_params(model, weights, device)

    def forward(x):
        return model(x) if sub is None else functional_call(model, sub, (x,), strict=False)

    try:
        with recalibrated_batchnorm(model, forward, recal_x, batch_size) as recal:
            for s in range(0, len(data), batch_size):
                x, y = data.batch(slice(s, s + batch_size), device)
                acc.add_batch(s, torch.softmax(forward(x).float(), 1), y)
        acc.end_chip()
    finally:
        model.train(was)
    return recal


def weights_accuracy(model: nn.Module, weights: Mapping[str, np.ndarray] | None, data: ImageSet,
                     batch_size: int = 1000, device: torch.device | str = "cpu") -> float:
    """Test accuracy (fraction) of ``model`` with ``weights`` swapped in (``None``: clean)."""
    acc = MCAccumulator(len(data), data.num_classes, device)
    chip_probs(model, weights, data, acc, batch_size, device)
    return acc.accs[0]


@dataclass
class PolicyResult:
    """A policy evaluated on ``chips`` chips.

    metrics: accuracy statistics over chips (:meth:`training.evaluate.MCAccumulator.result`:
    ``acc_mean``, ``acc_std``, ``acc_ci95_low/high`` as fractions, ...); energy_J, latency_s,
    pulses, reads, failed, cells, verified: means over chips of the model totals (J, s, counts);
    layers: per layer the same means (``{name: {"energy_J": ..., ...}}``).
    """

    policy: Policy
    metrics: dict
    acc_per_chip: np.ndarray
    energy_J: float
    latency_s: float
    pulses: float
    reads: float
    failed: float
    cells: float
    verified: float
    layers: dict[str, dict[str, float]]


def _cost_row(c: Cost) -> dict[str, float]:
    b = c.breakdown
    return {"energy_J": c.energy_J, "latency_s": c.latency_s, "pulses": b["pulses_set"] + b["pulses_reset"],
            "reads": b["reads"], "failed": b["failed"], "cells": b["cells"], "verified": b["verified"]}


def evaluate_policy(model: nn.Module, layers: Sequence[LayerTargets], setup: ProgrammingSetup, policy: Policy,
                    data: ImageSet, seeds: Sequence[int], masks: Mapping[str, np.ndarray] | None = None,
                    batch_size: int = 1000, device: torch.device | str = "cpu",
                    progress: str | None = None, recal_x: torch.Tensor | None = None) -> PolicyResult:
    """Program ``len(seeds)`` chips under ``policy`` and evaluate each on ``data``.

    ``progress``: a prefix; when given, one line per chip goes to stderr. ``recal_x``: per-chip
    BatchNorm recalibration images (see :func:`chip_probs`).
    """
    acc = MCAccumulator(len(data), data.num_classes, device)
    rows: list[dict[str, float]] = []
    per_layer: list[dict[str, dict[str, float]]] = []
    t0 = time.time()
    for i, seed in enumerate(seeds):
        chip = program_chip(layers, setup, policy, seed, masks)
        chip_probs(model, chip.weights, data, acc, batch_size, device, recal_x)
        rows.append(_cost_row(chip.cost.total))
        per_layer.append({n: _cost_row(c) for n, c in chip.cost.layers.items()})
        if progress is not None:
            print(f"{progress} chip {i + 1}/{len(seeds)}: acc {acc.accs[-1]:.4f}, "
                  f"{chip.cost.total.energy_J:.3e} J, {chip.cost.total.latency_s:.3e} s, {time.time() - t0:.1f} s",
                  file=sys.stderr, flush=True)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    layer_means = {n: {k: float(np.mean([pl[n][k] for pl in per_layer])) for k in rows[0]} for n in per_layer[0]}
    return PolicyResult(policy, acc.result(), np.asarray(acc.accs), layers=layer_means, **mean)


def policies_grid(kinds: Sequence[str], tolerances: Sequence[float], fractions: Sequence[float],
                  sensitivity_kinds: Sequence[str], relative: bool = False) -> Iterator[Policy]:
    """Every policy of a sweep: ``none`` once, ``full`` per tolerance, ``selective`` per
    sensitivity x tolerance x fraction (tolerances in siemens, or fractions when ``relative``)."""
    for kind in kinds:
        if kind == "none":
            yield Policy("none")
        elif kind == "full":
            for t in tolerances:
                yield Policy("full", float(t), 1.0, None, relative)
        elif kind == "selective":
            for s in sensitivity_kinds:
                for t in tolerances:
                    for f in fractions:
                        yield Policy("selective", float(t), float(f), s, relative)
        else:
            raise ProgrammingError(f"unknown policy {kind!r} (choose from {', '.join(POLICIES)})")


def policy_fields(p: Policy) -> dict[str, object]:
    """Table fields of a policy: tolerance in uS (or as a fraction when relative), fraction verified."""
    tol = "" if p.tolerance is None else (p.tolerance if p.relative else p.tolerance * 1e6)
    return {"policy": p.kind, "sensitivity": p.sensitivity or "", "tolerance": tol,
            "tolerance_unit": "" if p.tolerance is None else ("relative" if p.relative else "uS"),
            "fraction": p.verified_fraction}

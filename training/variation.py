"""Where the variation comes from: one interface, several backends.

A :class:`Variation` runs a model forward "on a chip":

* ``forward(model, x, sigma, generator, heads=False)`` - training: a fresh draw of every noisy
  weight for this one forward (straight-through gradients to the clean weights);
* ``chip(model, sigma, chip_seed, heads=False)`` - test: one frozen draw from the chip's seed
  (:func:`cimsim.seeds.chip_seed`), a ``dict name -> tensor``; ``forward_chip(model, chip, x)``
  runs inputs through it. An empty chip means "the clean model".

Backends (``make_variation``): ``paper`` (:class:`PaperNoise`, the NeFT authors' Gaussian weight
noise, Qin et al., arXiv 2305.14561), ``device`` (:class:`DeviceNoise`, weight noise from a fitted
``DeviceModel`` through the weight -> conductance mapping) and ``crossbar`` (:class:`CrossbarNoise`,
the full simulated array). A backend that changes the model does it in :meth:`Variation.prepare`
(right after the model is built) and keeps it fitted in :meth:`Variation.calibrate`;
:func:`checkpoint_state` and :func:`float_state` give the state dicts to save and to load into
the plain model.

Backend formulas and design: docs/design.md, section 'Variation backends (training/variation.py)'.
"""
from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from cimsim.crossbar.config import ConfigError as CrossbarConfigError
from cimsim.crossbar.config import SLICE_ALIGNS, CrossbarConfig
from cimsim.device.model import DeviceModel, load_device
from cimsim.device.sampling import LevelTable, sample_levels_torch
from cimsim.nn import CHIP_KEYS, CIMModule, cim_layers, use_mode
from cimsim.nn import calibrate as cim_calibrate
from cimsim.nn import convert as cim_convert
from cimsim.crossbar.mapping import digit_pairs_torch, level_step_S
from cimsim.seeds import chip_generator, layer_seed

from .models import noisy_weight_names

PAPER_C = 0.77763  # sqrt(sum_i 4^(2i)) / sum_i 4^i for an 8-bit weight on four 2-bit cells (README s.1)


class VariationError(ValueError):
    """A variation backend that cannot be built as asked (one-line message)."""


Chip = Mapping[str, torch.Tensor]


class Variation(abc.ABC):
    """How a model runs on variable hardware (see the module docstring)."""

    name: str = ""

    @abc.abstractmethod
    def forward(self, model: nn.Module, x: torch.Tensor, sigma: float, generator: torch.Generator, heads: bool = False):
        """Logits ``[B, classes]`` (and head logits if ``heads``) with a fresh variation draw."""

    @abc.abstractmethod
    def chip(self, model: nn.Module, sigma: float, chip_seed: int, heads: bool = False) -> Chip:
        """The chip with seed ``chip_seed`` (a programmed chip): realised weights by parameter name, detached."""

    @abc.abstractmethod
    def forward_chip(self, model: nn.Module, chip: Chip, x: torch.Tensor, heads: bool = False):
        """Logits of inputs ``x`` through the frozen ``chip`` (no gradient to the chip)."""

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model made ready for this backend, in place where possible (default: unchanged).

        Call it right after building the model, before creating the optimizer's state or loading
        a checkpoint written by a run of the same backend (the state dict's keys depend on it).
        """
        return model

    def calibrate(self, model: nn.Module, data, batch_size: int = 128, batches: int = 8) -> None:
        """Fit data-dependent hardware settings to training ``data`` (an ``ImageSet``); default: nothing."""


class WeightNoise(Variation):
    """Backends that replace each conv/linear weight by a realised (noisy) weight."""

    def is_identity(self, sigma: float) -> bool:
        """True when this backend leaves weights untouched at ``sigma`` (the forward is then clean)."""
        return False

    @abc.abstractmethod
    def realise(self, weights: list[torch.Tensor], heads_mask: list[bool], sigma: float, generator: torch.Generator) -> list[torch.Tensor]:
        """Realised weights for clean ``weights`` (same shapes, device, dtype), built so that the
        gradient flows straight through to the clean weight: ``W_real = W + (R(W) - W).detach()``."""

    def _named(self, model: nn.Module, heads: bool) -> tuple[list[str], list[torch.Tensor], list[bool]]:
        params = dict(model.named_parameters())
        names = [n for n in noisy_weight_names(model) if heads or not n.startswith("heads.")]
        return names, [params[n] for n in names], [n.startswith("heads.") for n in names]

    def forward(self, model, x, sigma, generator, heads=False):
        if self.is_identity(sigma):
            return model(x, heads=heads)
        names, ws, hm = self._named(model, heads)
        real = self.realise(ws, hm, sigma, generator)
        return functional_call(model, dict(zip(names, real)), (x,), {"heads": heads}, strict=False)

    def chip(self, model, sigma, chip_seed, heads=False):
        if self.is_identity(sigma):
            return {}
        names, ws, hm = self._named(model, heads)
        generator = chip_generator(chip_seed, ws[0].device)  # cimsim.seeds: the chip's generator
        with torch.no_grad():
            real = self.realise([w.detach() for w in ws], hm, sigma, generator)
        return dict(zip(names, real))

    def forward_chip(self, model, chip, x, heads=False):
        if not chip:
            return model(x, heads=heads)
        return functional_call(model, dict(chip), (x,), {"heads": heads}, strict=False)


# ------------------------------------------------------------------------- paper
class PaperNoise(WeightNoise):
    """The NeFT authors' Gaussian weight noise for stylized device ``s`` (RRAM1 1, FeFET2 2, RRAM4 4, FeFET6 6).

    For a weight tensor ``W`` and ``m = max|W|`` (detached):
    ``std = 0.77763 * m * sigma / sqrt(0.4 s^2 + 0.6)``; ``n = N(0,1) * std * (s if 0.25 < |W|/m < 0.75 else 1)``.
    Head weights: ``n = N(0,1) * 0.77763 * m * sigma``. All normals come from one
    ``torch.randn`` call per forward on the weights' device.
    """

    name = "paper"

    def __init__(self, s: float = 1.0):
        if not s > 0:
            raise VariationError(f"paper noise needs s > 0, got {s}")
        self.s = float(s)
        self.norm = math.sqrt(0.4 * self.s**2 + 0.6)

    def is_identity(self, sigma):
        return sigma == 0

    def noise_std(self, w: torch.Tensor, sigma: float, head: bool = False) -> torch.Tensor:
        """Per-weight noise standard deviation (same shape as ``w``), the formula above."""
        wd = w.detach()
        m = wd.abs().amax()
        if head:
            return torch.full_like(wd, 1.0) * (PAPER_C * sigma) * m
        r = wd.abs() / m
        factor = torch.where((r > 0.25) & (r < 0.75), self.s, 1.0).to(wd.dtype)
        return factor * (PAPER_C * sigma / self.norm) * m

    def realise(self, weights, heads_mask, sigma, generator):
        if not weights:
            return []
        w0 = weights[0]
        total = sum(w.numel() for w in weights)
        z = torch.randn(total, generator=generator, device=w0.device, dtype=w0.dtype)
        out, off = [], 0
        for w, head in zip(weights, heads_mask):
            n = w.numel()
            noise = z[off : off + n].view_as(w) * self.noise_std(w, sigma, head)
            off += n
            out.append(w + noise)  # noise is detached: d(W + n)/dW = 1
        return out


# ------------------------------------------------------------------------ device
class DeviceNoise(WeightNoise):
    """Weight noise through the weight -> conductance mapping of a ``DeviceModel``.

    Per weight tensor ``W`` (shape any, ``m = max|W|`` detached, ``B = weight_bits``,
    ``b = bits_per_cell``, ``S = ceil(B / b)`` slices, ``K = 2^b`` levels per cell):

    1. ``q = round(|W| / m * (2^B - 1))`` (magnitude; sign on the differential pair, so an 8-bit
       weight has 255 magnitude steps, the convention behind the paper's 0.77763);
    2. with ``slice_align = "msb"`` (``CrossbarConfig.slice_align``) ``q`` is shifted left by
       ``p = S b - B`` bits so that the short slice is the least significant one (``p = 0`` for
       ``"lsb"``, the default); digits ``d_i = (q >> (b i)) & (K - 1)``, ``i = 0..S-1`` (least
       significant first);
    3. cell pair per digit: ``G+ = L[d_i]`` and ``G- = L[0]`` for ``W >= 0``, mirrored for
       ``W < 0``; ``L = DeviceModel.level_conductances(K)`` (S);
    4. programmed ``G = L[k] + shift[k] + scale[k] * sigma_eff * X``, with ``(shift, scale, df)``
       from ``DeviceModel.programming_params(L, read_time_s)`` at ``sigma_scale = 1`` (a per-level
       table built once per torch device), ``X`` standard normal, or Student-t(df) where the level
       is heavy-tailed; then the model's drift to ``read_time_s`` (one nu per cell), stuck-at-gmin /
       gmax cells and the conductance floor, in the order of ``DeviceModel.sample``;
    5. realised ``W = m / ((2^B - 1) 2^p) * sum_i K^i * (G+_i - G-_i) / step``,
       ``step = (L[-1] - L[0]) / (K - 1)``.

    ``sigma_eff = sigma`` (``sigma_mode="replace"``, i.e. ``DeviceModel.replace(sigma_scale=sigma)``)
    or ``sigma * model.sigma_scale`` (``"multiply"``: sigma is a multiplier of the model's spread).
    Everything is batched over all ``2 * S * W.numel()`` cells of a tensor in torch.
    At ``sigma = 0`` the weights are still quantized (and shifted/stuck if the model says so).
    """

    name = "device"

    def __init__(self, model: DeviceModel, sigma_mode: str = "replace", weight_bits: int = 8,
                 bits_per_cell: int = 2, read_time_s: float = 1.0, slice_align: str = "lsb"):
        if sigma_mode not in ("replace", "multiply"):
            raise VariationError(f"unknown sigma_mode {sigma_mode!r} (replace or multiply)")
        if slice_align not in SLICE_ALIGNS:
            raise VariationError(f"unknown slice_align {slice_align!r} ({' or '.join(SLICE_ALIGNS)})")
        if not (1 <= bits_per_cell <= weight_bits):
            raise VariationError(f"need 1 <= bits_per_cell <= weight_bits, got {bits_per_cell}, {weight_bits}")
        self.model = model
        self.sigma_mode = sigma_mode
        self.weight_bits = int(weight_bits)
        self.bits_per_cell = int(bits_per_cell)
        self.read_time_s = float(read_time_s)
        self.K = 2**self.bits_per_cell
        self.S = -(-self.weight_bits // self.bits_per_cell)
        self.slice_align = slice_align
        self.pad_bits = self.S * self.bits_per_cell - self.weight_bits if slice_align == "msb" else 0
        try:
            self.levels_S = np.asarray(model.level_conductances(self.K), dtype=np.float64)
        except ValueError as e:
            raise VariationError(str(e)) from None
        self.unit = model.replace(sigma_scale=1.0)  # the table's spread; sigma multiplies it per call
        self.step_S = level_step_S(self.levels_S)
        self._tables: dict[tuple[str, torch.dtype], LevelTable] = {}

    def sigma_eff(self, sigma: float) -> float:
        return float(sigma) if self.sigma_mode == "replace" else float(sigma) * self.model.sigma_scale

    def table(self, device: torch.device, dtype: torch.dtype) -> LevelTable:
        """Per-level parameters (levels, shift, scale at sigma_scale 1, df) on ``device``, cached."""
        key = (str(device), dtype)
        if key not in self._tables:
            self._tables[key] = LevelTable.make(self.unit, self.levels_S, self.read_time_s, device, dtype)
        return self._tables[key]

    def conductances(self, w: torch.Tensor, sigma: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Programmed cells of one tensor: ``G [2, S, *w.shape]`` (S; index 0 = G+, 1 = G-),
        the level index of each cell ``k`` (same shape) and ``m = max|W|``. The cells are drawn by
        :func:`cimsim.device.sampling.sample_levels_torch` (the sampler of chips on a torch device)."""
        wd = w.detach()
        m = wd.abs().amax()
        qmax = 2**self.weight_bits - 1
        # step 1 of the class doc (|W| / m * qmax, the order of operations the shipped results used)
        q = torch.round(wd.abs() / torch.clamp(m, min=torch.finfo(wd.dtype).tiny) * qmax).to(torch.int64)
        q = q << self.pad_bits  # step 2: msb alignment
        k = torch.stack(digit_pairs_torch(torch.where(wd >= 0, q, -q), self.bits_per_cell, self.S))  # [2, S, *shape]
        g = sample_levels_torch(k, self.table(wd.device, wd.dtype), self.model, generator, self.read_time_s,
                                self.sigma_eff(sigma))
        return g, k, m

    def decode(self, g: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Weights ``[*shape]`` from cells ``g [2, S, *shape]`` and the tensor's scale ``m``."""
        place = (float(self.K) ** torch.arange(self.S, device=g.device, dtype=g.dtype)).view(-1, *([1] * (g.dim() - 2)))
        digits = (g[0] - g[1]) / self.step_S
        return (place * digits).sum(0) * (m / ((2**self.weight_bits - 1) * 2**self.pad_bits))

    def realise(self, weights, heads_mask, sigma, generator):
        out = []
        for w in weights:
            g, _, m = self.conductances(w, sigma, generator)
            real = self.decode(g, m)
            out.append(w + (real - w.detach()))  # straight-through: gradient 1 to the clean weight
        return out


# ---------------------------------------------------------------------- crossbar
CHIP_SEED, CHIP_SIGMA = "crossbar.seed", "crossbar.sigma_scale"
CALIBRATIONS = ("batch", "epoch")
#: rows (array reads) per layer that a training forward's own calibration looks at
BATCH_CALIBRATION_ROWS = 4096
_MASK64 = (1 << 64) - 1


def crossbar_config(cfg) -> CrossbarConfig:
    """The ``CrossbarConfig`` of a run (a :class:`training.run_config.RunConfig`).

    Base: the file ``cfg.crossbar_config`` (TOML or JSON, as ``CrossbarConfig.save`` writes it),
    else ``CrossbarConfig()`` (256x256 tiles, multi-bit DAC, 8-bit inputs, 8-bit calibrated ADC).
    The run's own fields always replace the file's: ``device = device_model``, ``weight_bits``,
    ``bits_per_cell``, ``read_time_s``; ``adc_bits``, ``dac`` and ``slice_align`` when set. The file's
    ``sigma_scale`` (if any) is the device's base spread that ``sigma_mode="multiply"`` multiplies.
    Raises :class:`VariationError` (one line) for a missing file or an impossible combination.
    """
    try:
        from .run_config import shipped_path

        base = CrossbarConfig.load(shipped_path(cfg.crossbar_config)) if cfg.crossbar_config else CrossbarConfig()
        changes = {"device": cfg.device_model, "weight_bits": cfg.weight_bits, "bits_per_cell": cfg.bits_per_cell,
                   "read_time_s": cfg.read_time_s}
        changes.update({k: getattr(cfg, k) for k in ("adc_bits", "dac", "slice_align") if getattr(cfg, k) is not None})
        return base.replace(**changes)
    except CrossbarConfigError as e:
        raise VariationError(f"crossbar backend: {e}") from None


def _eligible_layers(model: nn.Module) -> list[str]:
    """Names of the layers ``cimsim.nn.convert`` would put on crossbars, backbone first, heads last."""
    names = [n for n, m in model.named_modules()
             if type(m) is nn.Linear or (type(m) is nn.Conv2d and m.groups == 1 and m.padding_mode == "zeros")]
    return [n for n in names if not n.startswith("heads.")] + [n for n in names if n.startswith("heads.")]


class _WithHeads(nn.Module):
    """``model(x, heads=True)`` as a one-argument module, so calibration reaches the side heads too."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model(x, heads=True)


class CrossbarNoise(Variation):
    """Training and testing on the simulated crossbar (``cimsim.nn`` layers, ``cimsim.crossbar.program``).

    Model. :meth:`prepare` converts, in place, every plain ``nn.Linear`` / ``nn.Conv2d`` (groups 1,
    zero padding) to a ``CIMLinear`` / ``CIMConv2d`` sharing its parameters, in ``ideal`` mode
    (so ``model(x)`` stays the clean float model: clean accuracy means what it means for the other
    backends). ``keep_first`` / ``keep_last`` keep the first / last *backbone* layer digital (float,
    noise-free). Side heads (IRS) are converted too: on the paper's chip they are crossbar layers
    as noisy as the rest (the ``paper`` and ``device`` backends make them noisy as well), so IRS
    trains against the same hardware in every branch. Heads take no part in test chips.

    Sigma. ``sigma_eff = sigma`` (``sigma_mode="replace"``: ``DeviceModel.sigma_scale = sigma``,
    for a fitted model sigma 1 is the measured spread, for a NeFT preset it is the paper's sigma_d)
    or ``sigma * base.sigma_scale`` (``"multiply"``), where ``base`` is the config's device model
    with the config's own ``sigma_scale`` applied. Each layer programs with
    ``base.replace(sigma_scale=sigma_eff)``; these device models are cached per ``sigma_eff``, so
    OVF's extra forwards at sigma + delta rebuild nothing but the draw. Sigma scales the
    programming spread only: shifts, drift, stuck cells, read noise and the ADC are not scaled.
    With an ideal device any sigma gives the quantized, noise-free array.

    Draws. :meth:`forward` takes one 62-bit seed ``s`` from ``generator``
    (``torch.randint(0, 2**62)`` on the generator's device); CIM layer ``i`` (in
    ``named_modules`` order) then programs a fresh array with seed
    ``cimsim.seeds.fresh_seed(layer_seed(s, i), 1)`` (:mod:`cimsim.seeds`; the layer's ``fresh`` mode), so a
    forward is replayed exactly from the generator's state. Programming itself is cimsim's
    (numpy, on the host, per layer and forward); the array's GEMMs, read noise and ADC run where
    the activations live (Numba kernel on CPU, torch kernel on CUDA). Gradients: cimsim's
    straight-through estimator (input gradient through the programmed effective weights, weight
    gradient as for the float layer).

    Chips. :meth:`chip` takes the chip's seed ``c`` (:func:`cimsim.seeds.chip_seed`) and returns
    ``{"crossbar.seed": c, "crossbar.sigma_scale": sigma_eff}`` (int64 / float64 scalars; the
    64-bit seed stored in two's complement): a chip is its seed. It programs layer ``i``
    (backbone order, heads after them when ``heads``) from ``cimsim.seeds.layer_seed(c, i)``
    (``cimsim.nn.program``'s rule, and write-verify's: chip ``c`` is the same chip there) and freezes it; :meth:`forward_chip`
    runs ``chip`` mode, re-programming (deterministically, from the seed) only the layers whose
    frozen array is another chip. Read noise, when the config turns it on, is drawn per read from
    the chip's read counter (fresh per batch, replayed when the chip is re-programmed).

    Calibration. :meth:`calibrate` sets every layer's input clip and ADC ranges from training
    images (``cimsim.nn.calibrate``: float forward, the config's percentile of |x| and of nominal
    partial sums; heads included). A run calls it before training and after every epoch (the
    weights moved); the values are buffers of the model, so checkpoints carry them, and every test
    chip uses them. A layer used before any calibration calibrates itself from its first batch.
    ``calibration="batch"`` (default) also re-calibrates, in every training forward, each layer
    from the rows of its own input in that forward (at most :data:`BATCH_CALIBRATION_ROWS`, evenly
    spaced): ranges track the weights step by step, as batch statistics do in BatchNorm (and as
    aihwkit's per-batch noise/bound management does; with interconnect resistance the nominal chip
    reads through its last exact solve, solved again every ``ir_fresh_solve_every`` steps, as fresh
    chips do); these overwrite the model's calibration, so
    call :meth:`calibrate` again before evaluating chips (a run does, at every epoch end). ``"epoch"`` keeps one calibration per epoch;
    measured on digits (MLP, Adam lr 5e-3, ideal device, 8-bit ADC) the ranges set at
    initialisation go stale within the first epoch: the loss stays at ~2.2 for its 25 steps (the
    float model reaches ~0.5) and jumps to ~50 after the epoch-end re-calibration, while
    ``"batch"`` follows the float model's loss curve step for step.
    """

    name = "crossbar"

    def __init__(self, config: CrossbarConfig, sigma_mode: str = "replace", keep_first: bool = False,
                 keep_last: bool = False, calibration: str = "batch"):
        if sigma_mode not in ("replace", "multiply"):
            raise VariationError(f"unknown sigma_mode {sigma_mode!r} (replace or multiply)")
        if calibration not in CALIBRATIONS:
            raise VariationError(f"unknown crossbar calibration {calibration!r} (choose from {', '.join(CALIBRATIONS)})")
        self.sigma_mode = sigma_mode
        self.calibration = calibration
        self.keep_first, self.keep_last = bool(keep_first), bool(keep_last)
        self.base = config.device_model()
        self.config = config.replace(sigma_scale=None)  # the spread is set per call (device models below)
        self._devices: dict[float, tuple[DeviceModel, DeviceModel]] = {}

    # ----------------------------------------------------------------- sigma
    def sigma_eff(self, sigma: float) -> float:
        """The ``DeviceModel.sigma_scale`` programming uses at ``sigma`` (see the class docstring)."""
        return float(sigma) if self.sigma_mode == "replace" else float(sigma) * self.base.sigma_scale

    def device_models(self, sigma_eff: float) -> tuple[DeviceModel, DeviceModel]:
        """(device model at ``sigma_eff``, its ideal twin for nominal calibration), cached."""
        key = float(sigma_eff)
        if key not in self._devices:
            dev = self.base.replace(sigma_scale=key)
            self._devices[key] = (dev, dev.ideal())
        return self._devices[key]

    # ----------------------------------------------------------------- model
    def prepare(self, model: nn.Module) -> nn.Module:
        """Convert ``model``'s layers to crossbar layers in place (idempotent); see the class docstring."""
        if getattr(model, "_crossbar_prepared", False):
            return model
        if cim_layers(model):
            raise VariationError("crossbar backend: the model already holds crossbar layers it did not convert")
        backbone = [n for n in _eligible_layers(model) if not n.startswith("heads.")]
        keep = set(backbone[:1] if self.keep_first else []) | set(backbone[-1:] if self.keep_last else [])
        model = cim_convert(model, self.config, skip=sorted(keep), mode="ideal")
        model._crossbar_prepared = True
        return model

    def layers(self, model: nn.Module, heads: bool = True) -> list[tuple[int, CIMModule]]:
        """``(index, layer)`` of the model's crossbar layers (index over all of them, heads last)."""
        self.prepare(model)
        return [(i, m) for i, (n, m) in enumerate(cim_layers(model)) if heads or not n.startswith("heads.")]

    def _use(self, layer: CIMModule, sigma_eff: float) -> None:
        """Make ``layer`` program with the device models of ``sigma_eff``.

        ``cimsim.nn`` resolves a layer's ``(device, ideal twin)`` once into ``layer._devices`` and
        programs every later array with them; replacing that pair is the cheap per-call spread
        override (the layer config's ``sigma_scale`` is None, so ``cimsim.crossbar.program`` keeps it).
        """
        layer._devices = self.device_models(sigma_eff)

    # -------------------------------------------------------------- forwards
    def forward(self, model, x, sigma, generator, heads=False):
        s, se = _draw_seed(generator), self.sigma_eff(sigma)
        layers = self.layers(model, heads=True)
        for i, layer in layers:
            self._use(layer, se)
            layer.seed, layer.draw_count = layer_seed(s, i), 0  # fresh draw n: fresh_seed(seed, n)
        hooks = [layer.register_forward_pre_hook(_calibrate_on_input) for _, layer in layers] \
            if self.calibration == "batch" else []
        try:
            with use_mode(model, "fresh"):
                return model(x, heads=heads)
        finally:
            for h in hooks:
                h.remove()

    def chip(self, model, sigma, chip_seed, heads=False):
        c, se = int(chip_seed) & _MASK64, self.sigma_eff(sigma)
        chip = {CHIP_SEED: torch.tensor(c - (1 << 64) if c >= 1 << 63 else c, dtype=torch.int64),
                CHIP_SIGMA: torch.tensor(se, dtype=torch.float64)}
        self._program(model, chip, heads)
        return chip

    def forward_chip(self, model, chip, x, heads=False):
        self._program(model, chip, heads)
        with use_mode(model, "chip"):
            return model(x, heads=heads)

    def _program(self, model: nn.Module, chip: Chip, heads: bool) -> None:
        """Freeze ``chip`` on every layer (backbone, and heads if ``heads``) that holds another one."""
        s, se = int(chip[CHIP_SEED]) & _MASK64, float(chip[CHIP_SIGMA])
        devices = self.device_models(se)
        with torch.no_grad():
            for i, layer in self.layers(model, heads):
                cs = layer_seed(s, i)
                if layer.chip_seed != cs or layer._devices is not devices or layer._chip is None:
                    self._use(layer, se)
                    layer.program(cs)

    # ----------------------------------------------------------- calibration
    def calibrate(self, model, data, batch_size=128, batches=8):
        """Calibrate input clips and ADC ranges from ``batches`` batches of ``batch_size`` images of
        ``data`` (an ``ImageSet``), a fixed random subset (``torch.Generator`` seeded 0)."""
        self.prepare(model)
        if not cim_layers(model):
            return
        param = next(model.parameters())
        n = min(len(data), batch_size * batches)
        idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n]
        loader = [data.batch(idx[k : k + batch_size], param.device)[0] for k in range(0, n, batch_size)]
        has_heads = len(getattr(model, "heads", ())) > 0
        cim_calibrate(_WithHeads(model) if has_heads else model, loader, batches=None)


def _calibrate_on_input(layer: CIMModule, args: tuple) -> None:
    """Forward pre-hook: calibrate ``layer`` from the array rows of its own input ``args[0]``
    (at most :data:`BATCH_CALIBRATION_ROWS` of them, evenly spaced: deterministic, no RNG)."""
    rows = layer.input_rows(args[0].detach())
    if rows.shape[0] > BATCH_CALIBRATION_ROWS:
        rows = rows[torch.linspace(0, rows.shape[0] - 1, BATCH_CALIBRATION_ROWS, device=rows.device).long()]
    layer.calibrate_rows(rows, reuse_ir_solve=True)


def _draw_seed(generator: torch.Generator) -> int:
    """One 62-bit seed from ``generator`` (on the generator's device)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


def checkpoint_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` without frozen-chip tensors (``cimsim.nn.CHIP_KEYS``): the weights,
    calibration and layer settings, not the conductances of whatever chip was last evaluated."""
    return {k: v for k, v in model.state_dict().items() if k.rpartition(".")[2] not in CHIP_KEYS}


def float_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A crossbar model's state dict as the plain (unconverted) model's: the float weights, biases
    and BatchNorm entries, without calibration buffers (``input_clip``, ``adc_range``), layer extra
    state or chip tensors. For tools that only want the trained weights of a crossbar run."""
    drop = {"input_clip", "adc_range", "_extra_state", *CHIP_KEYS}
    return {k: v for k, v in state.items() if k.rpartition(".")[2] not in drop}


# ---------------------------------------------------------------------- registry
def paper_s(model: DeviceModel) -> float:
    """The stylized-device factor ``s`` of a NeFT preset (rram1 1, fefet2 2, rram4 4, fefet6 6)."""
    s = (model.provenance or {}).get("s")
    if s is None:
        raise VariationError(
            f"the paper noise backend needs a NeFT stylized device model (rram1, fefet2, rram4, fefet6); "
            f"{model.name!r} has no 's' (use --noise device for fitted models)"
        )
    return float(s)


def _paper(cfg) -> Variation:
    return PaperNoise(paper_s(load_device(cfg.device_model)))


def _device(cfg) -> Variation:
    return DeviceNoise(load_device(cfg.device_model), cfg.sigma_mode, cfg.weight_bits, cfg.bits_per_cell, cfg.read_time_s,
                       cfg.slice_align or "lsb")


def _crossbar(cfg) -> Variation:
    return CrossbarNoise(crossbar_config(cfg), cfg.sigma_mode, cfg.keep_first, cfg.keep_last, cfg.crossbar_calibration)


BACKENDS: dict[str, Callable[..., Variation]] = {"paper": _paper, "device": _device, "crossbar": _crossbar}


def make_variation(cfg) -> Variation:
    """Build the backend named by ``cfg.noise`` (a :class:`training.run_config.RunConfig`).

    Raises :class:`VariationError` (or ``cimsim.device.model.DeviceModelError``) with a one-line message.
    """
    if cfg.noise not in BACKENDS:
        raise VariationError(f"unknown noise backend {cfg.noise!r} (choose from {', '.join(BACKENDS)})")
    return BACKENDS[cfg.noise](cfg)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded with ``seed`` (64-bit)."""
    return torch.Generator(device=device).manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)

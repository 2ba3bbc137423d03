"""Where the variation comes from: one interface, several backends.

A :class:`Variation` runs a model forward "on a chip":

* ``forward(model, x, sigma, generator, heads=False)`` - training: a fresh draw of every noisy
  weight for this one forward (gradients reach the clean weights straight through,
  ``d(W + n)/dW = 1``); BatchNorm behaves as the model's mode says.
* ``chip(model, sigma, generator, heads=False)`` - test: one frozen draw of every noisy weight
  (one programmed chip), a ``dict name -> tensor``; ``forward_chip(model, chip, x)`` runs inputs
  through that same chip (use it for the whole test set).

Backends (``make_variation``):

``paper``  :class:`PaperNoise` - the NeFT authors' Gaussian weight noise (Qin et al., arXiv
    2305.14561; README s.1): per conv/linear weight tensor ``W`` (never biases or BN)
    ``n = N(0, 1) * 0.77763 * max|W| * sigma / sqrt(0.4 s^2 + 0.6)``, times ``s`` where
    ``0.25 < |W|/max|W| < 0.75`` (strict); ``max|W|`` detached. IRS head weights always use the
    RRAM1 factor (s = 1: ``0.77763 * max|W| * sigma``, no mask), as in the authors' code.
``device`` :class:`DeviceNoise` - weight noise derived from a fitted ``cimsim.device.DeviceModel``
    through the weight -> conductance mapping (quantize, bit-slice, differential pair, per-level
    time-dependent possibly heavy-tailed programming error, drift, stuck cells, floor), decoded back
    to the weight actually realised. With a NeFT stylized preset (rram1...) and
    ``sigma_mode="replace"`` its per-weight spread equals the paper formula's (test-checked for s=1).
``crossbar`` - the full simulated array (``cimsim.nn.convert``). Not part of this package: the
    extension point is to subclass :class:`Variation` (``forward``, ``chip``, ``forward_chip``) on
    top of converted modules and register it in :data:`BACKENDS`; :func:`make_variation` says so
    in one line while ``cimsim.nn`` does not offer ``convert``.

Weight-noise backends (:class:`WeightNoise`) perturb parameters functionally with
:func:`torch.func.functional_call`: the module keeps its clean weights, noise is drawn with torch on
the weights' device from an explicit :class:`torch.Generator` (no host copies), one random call for
all tensors of a forward where the backend allows.
"""
from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from cimsim.device import DeviceModel, load_device

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
    def chip(self, model: nn.Module, sigma: float, generator: torch.Generator, heads: bool = False) -> Chip:
        """One frozen draw (a programmed chip): realised weights by parameter name, detached."""

    @abc.abstractmethod
    def forward_chip(self, model: nn.Module, chip: Chip, x: torch.Tensor, heads: bool = False):
        """Logits of inputs ``x`` through the frozen ``chip`` (no gradient to the chip)."""


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

    def chip(self, model, sigma, generator, heads=False):
        if self.is_identity(sigma):
            return {}
        names, ws, hm = self._named(model, heads)
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


class DeviceNoise(WeightNoise):
    """Weight noise through the weight -> conductance mapping of a ``DeviceModel``.

    Per weight tensor ``W`` (shape any, ``m = max|W|`` detached, ``B = weight_bits``,
    ``b = bits_per_cell``, ``S = ceil(B / b)`` slices, ``K = 2^b`` levels per cell):

    1. ``q = round(|W| / m * (2^B - 1))`` (magnitude; sign on the differential pair, so an 8-bit
       weight has 255 magnitude steps, the convention behind the paper's 0.77763);
    2. digits ``d_i = (q >> (b i)) & (K - 1)``, ``i = 0..S-1`` (least significant first);
    3. cell pair per digit: ``G+ = L[d_i]`` and ``G- = L[0]`` for ``W >= 0``, mirrored for
       ``W < 0``; ``L = DeviceModel.level_conductances(K)`` (S);
    4. programmed ``G = L[k] + shift[k] + scale[k] * sigma_eff * X``, with ``(shift, scale, df)``
       from ``DeviceModel.programming_params(L, read_time_s)`` at ``sigma_scale = 1`` (a per-level
       table built once per torch device), ``X`` standard normal, or Student-t(df) where the level
       is heavy-tailed; then the model's drift to ``read_time_s`` (one nu per cell), stuck-at-gmin /
       gmax cells and the conductance floor, in the order of ``DeviceModel.sample``;
    5. realised ``W = m / (2^B - 1) * sum_i K^i * (G+_i - G-_i) / step``, ``step = (L[-1] - L[0]) / (K - 1)``.

    ``sigma_eff = sigma`` (``sigma_mode="replace"``, i.e. ``DeviceModel.replace(sigma_scale=sigma)``)
    or ``sigma * model.sigma_scale`` (``"multiply"``: sigma is a multiplier of the model's spread).
    Everything is batched over all ``2 * S * W.numel()`` cells of a tensor in torch.
    At ``sigma = 0`` the weights are still quantized (and shifted/stuck if the model says so).
    """

    name = "device"

    def __init__(self, model: DeviceModel, sigma_mode: str = "replace", weight_bits: int = 8,
                 bits_per_cell: int = 2, read_time_s: float = 1.0):
        if sigma_mode not in ("replace", "multiply"):
            raise VariationError(f"unknown sigma_mode {sigma_mode!r} (replace or multiply)")
        if not (1 <= bits_per_cell <= weight_bits):
            raise VariationError(f"need 1 <= bits_per_cell <= weight_bits, got {bits_per_cell}, {weight_bits}")
        self.model = model
        self.sigma_mode = sigma_mode
        self.weight_bits = int(weight_bits)
        self.bits_per_cell = int(bits_per_cell)
        self.read_time_s = float(read_time_s)
        self.K = 2**self.bits_per_cell
        self.S = -(-self.weight_bits // self.bits_per_cell)
        try:
            levels = np.asarray(model.level_conductances(self.K), dtype=np.float64)
        except ValueError as e:
            raise VariationError(str(e)) from None
        unit = model.replace(sigma_scale=1.0)
        shift, scale, df = unit.programming_params(levels, self.read_time_s)
        self._np = {"levels": levels, "shift": shift, "scale": scale, "df": df}
        self.step_S = float(levels[-1] - levels[0]) / (self.K - 1)
        self.heavy = bool(np.isfinite(df).any())
        self._tables: dict[tuple[str, torch.dtype], dict[str, torch.Tensor]] = {}

    def sigma_eff(self, sigma: float) -> float:
        return float(sigma) if self.sigma_mode == "replace" else float(sigma) * self.model.sigma_scale

    def tables(self, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Per-level tables (levels, shift, scale at sigma_scale 1, df) as tensors on ``device``."""
        key = (str(device), dtype)
        if key not in self._tables:
            t = {k: torch.as_tensor(v, dtype=dtype, device=device) for k, v in self._np.items()}
            t["df"] = torch.as_tensor(self._np["df"], dtype=torch.float64, device=device)
            self._tables[key] = t
        return self._tables[key]

    def conductances(self, w: torch.Tensor, sigma: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Programmed cells of one tensor: ``G [2, S, *w.shape]`` (S; index 0 = G+, 1 = G-),
        the level index of each cell ``k`` (same shape) and ``m = max|W|``."""
        wd = w.detach()
        tab = self.tables(wd.device, wd.dtype)
        m = wd.abs().amax()
        qmax = 2**self.weight_bits - 1
        q = torch.round(wd.abs() / torch.clamp(m, min=torch.finfo(wd.dtype).tiny) * qmax).to(torch.int64)
        shifts = torch.arange(self.S, device=wd.device).view(-1, *([1] * wd.dim())) * self.bits_per_cell
        digits = (q.unsqueeze(0) >> shifts) & (self.K - 1)  # [S, *shape]
        pos = (wd >= 0).unsqueeze(0)
        k = torch.stack((torch.where(pos, digits, 0), torch.where(pos, 0, digits)))  # [2, S, *shape]
        z = torch.randn(k.shape, generator=generator, device=wd.device, dtype=wd.dtype)
        if self.heavy:
            dfk = tab["df"][k]
            hv = torch.isfinite(dfk)
            if hv.any():
                z[hv] = student_t(dfk[hv], generator).to(wd.dtype)
        g = tab["levels"][k] + tab["shift"][k] + tab["scale"][k] * self.sigma_eff(sigma) * z
        dm = self.model
        if dm.drift is not None and self.read_time_s > dm.drift.t0_s:
            gn = torch.clamp(g / dm.gmax_S, min=0.0)
            lg = torch.log(torch.clamp(gn, min=1e-12))
            mu, sd = dm.drift.nu_mean, dm.drift.nu_std
            nu = torch.clamp(mu.a * lg + mu.b, mu.lo, mu.hi) + torch.clamp(sd.a * lg + sd.b, sd.lo, sd.hi) * torch.randn(
                g.shape, generator=generator, device=g.device, dtype=g.dtype)
            g = g * torch.pow(torch.as_tensor(self.read_time_s / dm.drift.t0_s, dtype=g.dtype, device=g.device), -nu)
        if dm.stuck_at_gmin or dm.stuck_at_gmax:
            u = torch.rand(g.shape, generator=generator, device=g.device, dtype=g.dtype)
            g = torch.where(u < dm.stuck_at_gmin, torch.full_like(g, dm.gmin_S), g)
            hi = (u >= dm.stuck_at_gmin) & (u < dm.stuck_at_gmin + dm.stuck_at_gmax)
            g = torch.where(hi, torch.full_like(g, dm.gmax_S), g)
        if dm.g_floor_S is not None:
            g = torch.clamp(g, min=dm.g_floor_S)
        return g, k, m

    def decode(self, g: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Weights ``[*shape]`` from cells ``g [2, S, *shape]`` and the tensor's scale ``m``."""
        place = (float(self.K) ** torch.arange(self.S, device=g.device, dtype=g.dtype)).view(-1, *([1] * (g.dim() - 2)))
        digits = (g[0] - g[1]) / self.step_S
        return (place * digits).sum(0) * (m / (2**self.weight_bits - 1))

    def realise(self, weights, heads_mask, sigma, generator):
        out = []
        for w in weights:
            g, _, m = self.conductances(w, sigma, generator)
            real = self.decode(g, m)
            out.append(w + (real - w.detach()))  # straight-through: gradient 1 to the clean weight
        return out


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
    return DeviceNoise(load_device(cfg.device_model), cfg.sigma_mode, cfg.weight_bits, cfg.bits_per_cell, cfg.read_time_s)


def _crossbar(cfg) -> Variation:
    raise VariationError(
        "noise backend 'crossbar' is not available: it needs cimsim.nn.convert(model, config), which this "
        "build does not provide yet (extension point: training/variation.py, Variation)"
    )


BACKENDS: dict[str, Callable[..., Variation]] = {"paper": _paper, "device": _device, "crossbar": _crossbar}


def make_variation(cfg) -> Variation:
    """Build the backend named by ``cfg.noise`` (a :class:`training.config.RunConfig`).

    Raises :class:`VariationError` (or ``cimsim.device.DeviceModelError``) with a one-line message.
    """
    if cfg.noise not in BACKENDS:
        raise VariationError(f"unknown noise backend {cfg.noise!r} (choose from {', '.join(BACKENDS)})")
    return BACKENDS[cfg.noise](cfg)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded with ``seed`` (64-bit)."""
    return torch.Generator(device=device).manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)

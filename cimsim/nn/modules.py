"""Crossbar layers for any PyTorch model: :class:`CIMLinear`, :class:`CIMConv2d`, :func:`convert`.

A converted layer keeps its float (master) weights as parameters and runs in one of three modes
(:func:`set_mode`): ``ideal`` (the plain float layer); ``chip`` (one frozen programmed chip,
re-programmed from the same seed only when the weights change); ``fresh`` (alias
``train_variation``: a new programming draw on every forward, draw ``n`` seeded
``cimsim.seeds.fresh_seed(layer.seed, n)``).

Seeds: a chip is a seed. :func:`program` ``(model, seed)`` gives CIM layer ``i`` (in
``model.named_modules()`` order) the seed ``cimsim.seeds.layer_seed(seed, i)``; :func:`reprogram`
draws every layer's next chip from its own stream. Nothing uses a global RNG.

Calibration (:func:`calibrate`) sets each layer's buffers ``input_clip`` (scalar) and ``adc_range``
``(n_groups, 1 | out)`` from a few batches run in ``ideal`` mode; an uncalibrated layer calibrates
itself on its first simulated batch. The state dict also holds the config, mode and seeds, and a
frozen chip's conductances (``chip_g_pos_S``, ``chip_g_neg_S``, siemens), so a saved model reloads
the very same chip.

Modes, calibration and state dict: docs/design.md, section 'Crossbar layers (cimsim/nn/modules.py)'.
"""
from __future__ import annotations

import abc
import contextlib
import json
import math
from typing import Callable, Iterable, Iterator, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cimsim.nn import functional as CF
from cimsim.nn.autograd import KERNELS
from cimsim.crossbar.config import CrossbarConfig
from cimsim.device.model import DeviceModel
from cimsim.crossbar.mapping import mapped_from_int
from cimsim.crossbar.program import ProgrammedArray, program as program_array
from cimsim.seeds import fresh_seed, layer_seed

MODES = ("ideal", "chip", "fresh")
_MODE_ALIASES = {"train_variation": "fresh"}
#: rows kept per layer for ``CrossbarConfig.output_gain_calibration`` (evenly spaced in the calibration batch)
GAIN_ROWS = 512
#: CrossbarConfig fields a checkpoint may differ in: they change how chips are read, not the saved state
READ_ONLY_FIELDS = frozenset({"ir_fresh_solve_every", "output_gain_calibration"})
#: extra state-dict entries of a frozen chip, and their roles
CHIP_KEYS = ("chip_g_pos_S", "chip_g_neg_S", "chip_w_int", "chip_scale", "chip_drift_scale")
_STATE_FORMAT = 1

Skip = Union[None, str, Iterable[str], Callable[[str, nn.Module], bool]]


def _check_mode(mode: str) -> str:
    mode = _MODE_ALIASES.get(mode, mode)
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: choose one of {MODES} (or 'train_variation' for 'fresh')")
    return mode


def _host_solve(arr: ProgrammedArray):
    """A host chip's exact interconnect solve, ((G+ cells, G- cells), (G+ eff, G- eff)); None without wires."""
    if arr.g_cells_pos_S is None:
        return None
    return (arr.g_cells_pos_S, arr.g_cells_neg_S), (arr.g_pos_S, arr.g_neg_S)


class CIMModule(nn.Module, metaclass=abc.ABCMeta):
    """Base of the crossbar layers: mode, seeds, chips, calibration and state-dict handling.

    Subclasses own ``weight`` (float master weights) and ``bias`` parameters and define
    :meth:`weight_matrix` (the (out, in) matrix laid on the array), :meth:`input_rows`,
    :meth:`_ideal_forward` and :meth:`_simulated_forward`.
    """

    weight: nn.Parameter
    bias: nn.Parameter | None

    def _init_cim(self, config: CrossbarConfig | None, seed: int, mode: str, kernel: str,
                  device: torch.device | str | None) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"kernel {kernel!r}: choose one of {KERNELS}")
        self.config = config if config is not None else CrossbarConfig()
        if not isinstance(self.config, CrossbarConfig):
            raise TypeError(f"config must be a CrossbarConfig, got {type(self.config).__name__}")
        self.kernel = kernel
        self._mode = _check_mode(mode)
        self.seed = int(seed)  # the layer's base seed: its first chip, and the stream of later draws
        self.chip_seed = int(seed)  # seed of the current frozen chip
        self.draw_count = 0  # draws taken from the layer's stream (fresh forwards and reprograms)
        self._chip: ProgrammedArray | None = None
        self._chip_key: tuple | None = None
        self._chip_weights: torch.Tensor | None = None  # the weights the frozen chip was programmed from
        self._calib_version = 0
        self._calib_cache: tuple | None = None
        self._devices: tuple[DeviceModel, DeviceModel] | None = None
        # fresh draws in torch on the weights' device: None = on CUDA devices only (see fresh_chip)
        self.program_on_device: bool | None = None
        self._level_tables: dict = {}  # per-level programming parameters on the weights' device
        self._ir_solved: dict = {}  # (where, device model, spread) -> (fresh draw, solve): the last exact solves
        self._gain_rows: np.ndarray | None = None  # calibration rows for output_gain_calibration
        self._init_buffers(device)

    def _init_buffers(self, device: torch.device | str | None) -> None:
        """Calibration buffers, NaN until calibrated: input_clip () and adc_range (n_groups, 1 | out)."""
        self.register_buffer("input_clip", torch.full((), math.nan, dtype=torch.float64, device=device))
        self.register_buffer("adc_range", torch.full(self._adc_range_shape(), math.nan, dtype=torch.float64,
                                                      device=device))

    # --------------------------------------------------------------- geometry
    @property
    def n_out(self) -> int:
        return self.weight.shape[0]

    @property
    def n_in(self) -> int:
        """Rows of the array: inputs per output (in_features, or C*kh*kw for a convolution)."""
        return int(np.prod(self.weight.shape[1:]))

    def _adc_range_shape(self) -> tuple[int, int]:
        cfg = self.config
        groups = cfg.n_slices * (1 if cfg.adc_convert == "differential" else 2)
        return groups, (self.n_out if cfg.adc_per_column else 1)

    def weight_matrix(self) -> torch.Tensor:
        """(out, in) view of the float weights as the array holds them."""
        return self.weight.reshape(self.weight.shape[0], -1)

    # ------------------------------------------------------------------- mode
    @property
    def mode(self) -> str:
        """``ideal``, ``chip`` or ``fresh`` (see the module docstring)."""
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        self._mode = _check_mode(value)

    def set_mode(self, mode: str) -> "CIMModule":
        self.mode = mode
        return self

    # ----------------------------------------------------------------- chips
    def device_model(self) -> DeviceModel:
        """The config's device model (resolved once per layer)."""
        return self._device_models()[0]

    def _device_models(self) -> tuple[DeviceModel, DeviceModel]:
        """(device model, its ideal twin for calibration), resolved once."""
        if self._devices is None:
            dev = self.config.device_model()
            self._devices = (dev, dev.ideal())
        return self._devices

    def _weight_key(self) -> tuple:
        """Changes whenever the weights may have changed (in-place updates bump ``_version``)."""
        w = self.weight
        return (w._version, w.data_ptr(), str(w.device), tuple(w.shape))

    def _program(self, seed: int, nominal: bool = False, ir_solved=None) -> ProgrammedArray:
        """Program the current weights with ``seed`` (nominal: exact target conductances)."""
        w = self.weight_matrix().detach().to("cpu", torch.float64).numpy()
        dev, ideal = self._device_models()
        arr = program_array(w, self.config, int(seed), device_model=ideal if nominal else dev,
                            ir_solved=ir_solved)
        if not nominal:
            self._apply_calibration(arr)
        return arr

    def _chip_is_current(self) -> bool:
        """True when the frozen chip holds the current weights: same version counter, or (after a
        device move, cast or other copy) the same values as the weights it was programmed from."""
        if self._chip is None:
            return False
        key = self._weight_key()
        if self._chip_key == key:
            return True
        w, src = self.weight.detach(), self._chip_weights
        if src is not None and src.shape == w.shape and torch.equal(src.to(w.device, w.dtype), w):
            self._chip_key = key
            return True
        return False

    def _set_chip(self, arr: ProgrammedArray) -> None:
        self._chip, self._chip_key = arr, self._weight_key()
        self._chip_weights = self.weight.detach().clone()

    def chip(self) -> ProgrammedArray:
        """The frozen chip, programmed from ``chip_seed`` on first use and whenever the weights changed."""
        if not self._chip_is_current():
            self._set_chip(self._program(self.chip_seed))
        elif self._chip._cache.get("calibration") != self._calib_version:
            self._apply_calibration(self._chip)
        return self._chip

    def program(self, seed: int | None = None) -> ProgrammedArray:
        """Program a frozen chip now; ``seed`` (default: the layer's seed) becomes the layer's seed."""
        if seed is not None:
            self.seed = int(seed)
        self.chip_seed = self.seed
        self.draw_count = 0
        self._chip = None
        return self.chip()

    def reprogram(self) -> ProgrammedArray:
        """Draw the next chip of the layer's stream and freeze it."""
        self.draw_count += 1
        self.chip_seed = fresh_seed(self.seed, self.draw_count)
        self._chip = None
        return self.chip()

    def fresh_chip(self) -> ProgrammedArray:
        """A new programming draw of the current weights (not kept): the next seed of the layer's stream.

        On a CUDA device (or with ``program_on_device = True``) the draw happens there, in torch
        (:mod:`cimsim.crossbar.program_torch`), so a fresh chip per forward copies no conductances (with
        interconnect resistance, its tiles are solved there too); devices with drift, and configs
        with output gain calibration, are programmed on the host.
        """
        self.draw_count += 1
        seed = fresh_seed(self.seed, self.draw_count)
        dm = self.device_model()
        on_device = self.program_on_device if self.program_on_device is not None else self.weight.is_cuda
        on_device = on_device and dm.drift is None and not self.config.output_gain_calibration  # host-side steps
        ir_key = (str(self.weight.device) if on_device else "host", dm.name, dm.sigma_scale)
        reuse = self._ir_reuse(ir_key)
        if on_device:
            from cimsim.crossbar.program_torch import level_table, program_on_device

            key = (dm.name, dm.sigma_scale, str(self.weight.device))  # OVF alternates a few spreads
            if key not in self._level_tables:
                self._level_tables[key] = level_table(dm, self.config, self.weight.device)
            clip, adc = self._calibration()
            arr = program_on_device(self.weight_matrix().detach(), self.config, dm, seed, clip, adc,
                                    self._level_tables[key], ir_solved=reuse)
            solved = arr.ir_solved
        else:
            arr = self._program(seed, ir_solved=reuse)
            solved = _host_solve(arr) if reuse is None else None
        self._keep_ir_solve(ir_key, solved)
        return arr

    def _keep_ir_solve(self, key: tuple, solved) -> None:
        """Keep an exact solve (cells, effective conductances) for the next draws of ``key``."""
        if solved is not None and self.config.ir_fresh_solve_every > 1:
            self._ir_solved[key] = [0, solved]  # [draws read through it so far, solve]

    def _ir_reuse(self, key: tuple):
        """The layer's last exact solve for ``key`` (where the chip is drawn, the device model and its
        spread) when this fresh draw may read through it, else None: with ``every =
        config.ir_fresh_solve_every``, a solve serves the next ``every - 1`` fresh draws of that key
        (whatever seeds they take). Forgotten when the layer is moved, cast or loaded."""
        every = self.config.ir_fresh_solve_every
        kept = self._ir_solved.get(key)
        if every <= 1 or kept is None or self.config.circuit.is_ideal:
            return None
        used, solved = kept
        if tuple(solved[0][0].shape) != (self.config.n_slices, self.n_in, self.n_out) or used >= every - 1:
            return None
        kept[0] += 1
        return solved

    # ------------------------------------------------------------ calibration
    def _calibration(self) -> tuple[float | None, np.ndarray | None]:
        """(input clip, ADC ranges (n_groups, 1 | out)) from the buffers, None where not calibrated;
        read once per calibration change (no device sync per forward)."""
        cached = self._calib_cache
        if cached is None or cached[0] != self._calib_version:
            clip = float(self.input_clip)
            r = self.adc_range.detach().to("cpu", torch.float64).numpy().copy()
            cached = (self._calib_version, clip if math.isfinite(clip) else None, r if np.isfinite(r).all() else None)
            self._calib_cache = cached
        return cached[1], cached[2]

    @property
    def is_calibrated(self) -> bool:
        clip, adc = self._calibration()
        clip_ok = self.config.input_clip is not None or clip is not None
        return clip_ok and (self.config.adc_range != "calibrated" or adc is not None)

    def calibrate(self, x: torch.Tensor) -> None:
        """Set input clip and ADC ranges from layer inputs ``x`` (the layer's input shape)."""
        self.calibrate_rows(self.input_rows(x.detach()))

    def calibrate_rows(self, rows: torch.Tensor, reuse_ir_solve: bool = False) -> None:
        """Set input clip and ADC ranges from array input rows (N, n_in): the config's percentile of
        |x| and of the nominal partial sums (:meth:`ProgrammedArray.calibrate`). With interconnect
        resistance the nominal chip is solved exactly; ``reuse_ir_solve`` (calibration at every
        training step) lets it read through the last exact nominal solve as fresh draws do, every
        ``config.ir_fresh_solve_every``-th calibration solved again."""
        key = ("nominal",)
        reuse = self._ir_reuse(key) if reuse_ir_solve else None
        nominal = self._program(0, nominal=True, ir_solved=reuse)
        if reuse is None:  # an exact solve serves the next per-step calibrations
            self._keep_ir_solve(key, _host_solve(nominal))
        x = rows.detach().to("cpu", torch.float64).numpy()
        nominal.calibrate(x)
        if self.config.output_gain_calibration:  # kept for each chip's gain (evenly spaced rows)
            self._gain_rows = x[np.unique(np.linspace(0, len(x) - 1, min(len(x), GAIN_ROWS)).astype(np.int64))]
        with torch.no_grad():
            if self.config.input_clip is None:
                self.input_clip.fill_(float(nominal.input_clip))
            if self.config.adc_range == "calibrated":
                self.adc_range.copy_(torch.from_numpy(np.asarray(nominal.adc_range, dtype=np.float64)))
        self._calib_version += 1

    def _apply_calibration(self, arr: ProgrammedArray) -> None:
        """Copy the layer's calibration into a chip (and drop its plan, whose ADC steps depend on it)."""
        clip, adc = self._calibration()
        arr.input_clip = clip
        if self.config.adc_range == "calibrated":
            arr.adc_range = None if adc is None else adc.copy()
        arr._cache.pop("plan", None)
        arr._cache["calibration"] = self._calib_version
        if self.config.output_gain_calibration and (self._gain_rows is not None or arr.output_gain is None):
            if self._gain_rows is None:
                raise ValueError(f"{type(self).__name__}: CrossbarConfig.output_gain_calibration needs the layer's "
                                 "calibration rows: calibrate the layer (calibrate(x) or cimsim.nn.calibrate) first")
            arr.calibrate_output_gain(self._gain_rows)

    def _apply(self, fn, recurse: bool = True):
        out = super()._apply(fn, recurse)
        self._calib_version += 1  # buffers may have been cast: chips re-read them
        self._ir_solved = {}
        return out

    # ---------------------------------------------------------------- forward
    @abc.abstractmethod
    def input_rows(self, x: torch.Tensor) -> torch.Tensor:
        """(N, n_in) rows the array reads for the layer input ``x``."""

    @abc.abstractmethod
    def _ideal_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The float layer's output for ``x`` (mode ``ideal``)."""

    @abc.abstractmethod
    def _simulated_forward(self, x: torch.Tensor, arr: ProgrammedArray) -> torch.Tensor:
        """The output for ``x`` computed on the programmed array ``arr``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._mode == "ideal":
            return self._ideal_forward(x)
        if not self.is_calibrated:
            self.calibrate(x)
        arr = self.chip() if self._mode == "chip" else self.fresh_chip()
        return self._simulated_forward(x, arr)

    # ------------------------------------------------------------- state dict
    def get_extra_state(self) -> dict:
        return {"format": _STATE_FORMAT, "config": self.config.to_json(), "mode": self._mode, "seed": self.seed,
                "chip_seed": self.chip_seed, "draw_count": self.draw_count}

    def set_extra_state(self, state: dict) -> None:
        self._mode = _check_mode(state["mode"])
        self.seed = int(state["seed"])
        self.chip_seed = int(state["chip_seed"])
        self.draw_count = int(state["draw_count"])

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        arr = self._chip
        if not self._chip_is_current():
            return  # no chip, or a stale one that the next forward re-programs from chip_seed
        if arr.output_gain is not None:
            destination[prefix + "chip_output_gain"] = torch.from_numpy(np.asarray(arr.output_gain, dtype=np.float64))
        destination[prefix + "chip_g_pos_S"] = torch.from_numpy(arr.g_pos_S)
        destination[prefix + "chip_g_neg_S"] = torch.from_numpy(arr.g_neg_S)
        destination[prefix + "chip_w_int"] = torch.from_numpy(arr.mapped.w_int)
        destination[prefix + "chip_scale"] = torch.from_numpy(np.asarray(arr.scale, dtype=np.float64))
        destination[prefix + "chip_drift_scale"] = torch.tensor(float(arr.drift_scale), dtype=torch.float64)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        name = prefix[:-1] or type(self).__name__
        n_errors = len(error_msgs)
        extra = state_dict.get(prefix + "_extra_state")
        if extra is not None:
            self._check_checkpoint_config(extra, name, error_msgs)
        chip = {k: state_dict[prefix + k] for k in CHIP_KEYS if prefix + k in state_dict}
        gain = state_dict.get(prefix + "chip_output_gain")
        rest = {k: v for k, v in state_dict.items()
                if not (k.startswith(prefix) and k[len(prefix):] in CHIP_KEYS + ("chip_output_gain",))}
        if len(error_msgs) > n_errors:
            return  # another config: its buffers and chip do not fit this layer
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._calib_version += 1
        self._chip, self._chip_key = None, None
        self._ir_solved = {}
        if chip and len(chip) < len(CHIP_KEYS):
            missing_keys.extend(prefix + k for k in CHIP_KEYS if k not in chip)
        elif chip and len(error_msgs) == n_errors:
            self._restore_chip(chip, prefix, error_msgs, gain)

    def _check_checkpoint_config(self, extra: object, name: str, error_msgs: list[str]) -> None:
        """Append an error naming ``name`` and every differing CrossbarConfig field."""
        try:
            saved = json.loads(extra["config"])  # type: ignore[index]
        except (KeyError, TypeError, ValueError) as e:
            error_msgs.append(f"{name}: the checkpoint's extra state holds no CrossbarConfig ({e!r})")
            return
        mine = self.config.to_dict()
        # fields added since the checkpoint was written read as their defaults; fields that shape no
        # saved state (how chips are read, not what the layer holds) may differ
        saved = {**CrossbarConfig().to_dict(), **saved}
        diff = [k for k in sorted(set(saved) | set(mine))
                if k not in READ_ONLY_FIELDS and saved.get(k, "<missing>") != mine.get(k, "<missing>")]
        if diff:
            what = "; ".join(f"CrossbarConfig.{k} is {saved.get(k, '<missing>')!r} in the checkpoint but "
                             f"{mine.get(k, '<missing>')!r} in this model" for k in diff)
            error_msgs.append(f"config mismatch for {name}: {what}")

    def _restore_chip(self, chip: dict[str, torch.Tensor], prefix: str, error_msgs: list[str],
                      gain: torch.Tensor | None = None) -> None:
        """Rebuild the frozen chip from its saved tensors (shapes checked against this layer); its
        output gain, when saved, is kept (refitted only when the layer is calibrated again)."""
        S = self.config.n_slices
        expect = {"chip_g_pos_S": (S, self.n_in, self.n_out), "chip_g_neg_S": (S, self.n_in, self.n_out),
                  "chip_w_int": (self.n_out, self.n_in), "chip_scale": (self.n_out,), "chip_drift_scale": ()}
        bad = [k for k, shape in expect.items() if tuple(chip[k].shape) != shape]
        for k in bad:
            error_msgs.append(f"size mismatch for {prefix}{k}: copying a chip tensor with shape "
                              f"{tuple(chip[k].shape)} from checkpoint, the shape in current model is {expect[k]}.")
        if bad:
            return
        dev = self.device_model()
        w_int = chip["chip_w_int"].detach().cpu().numpy().astype(np.int32)
        scale = chip["chip_scale"].detach().cpu().numpy().astype(np.float64)
        arr = ProgrammedArray(
            config=self.config, device_model=dev, mapped=mapped_from_int(w_int, scale, self.config),
            g_pos_S=chip["chip_g_pos_S"].detach().cpu().numpy().astype(np.float64),
            g_neg_S=chip["chip_g_neg_S"].detach().cpu().numpy().astype(np.float64),
            levels_S=dev.level_conductances(self.config.cell_levels), seed=self.chip_seed,
            drift_scale=float(chip["chip_drift_scale"]),
        )
        if gain is not None and tuple(gain.shape) == (self.n_out,):
            arr.output_gain = gain.detach().cpu().numpy().astype(np.float64)
        self._apply_calibration(arr)
        self._set_chip(arr)

    def _cim_repr(self) -> str:
        c = self.config
        return (f"mode={self._mode}, device={c.device}, dac={c.dac}, input_bits={c.input_bits}, "
                f"weight_bits={c.weight_bits}, slices={c.n_slices}, adc_bits={c.adc_bits}")


class CIMLinear(CIMModule):
    """``nn.Linear`` on a simulated crossbar: x (..., in_features) -> (..., out_features).

    weight (out_features, in_features) float master weights; bias (out_features,) added
    digitally after the array. See the module docstring for modes, seeds and calibration.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, config: CrossbarConfig | None = None,
                 *, seed: int = 0, mode: str = "chip", kernel: str = "auto", device=None, dtype=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        ref = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.weight = ref.weight
        self.register_parameter("bias", ref.bias)
        self._init_cim(config, seed, mode, kernel, None if device == "meta" else self.weight.device)

    @classmethod
    def from_module(cls, module: nn.Linear, config: CrossbarConfig | None = None, *, seed: int = 0,
                    mode: str = "chip", kernel: str = "auto") -> "CIMLinear":
        """A CIMLinear sharing ``module``'s weight and bias parameters."""
        new = cls(module.in_features, module.out_features, bias=False, config=config, seed=seed, mode=mode,
                  kernel=kernel, device="meta")
        new.weight, new.bias = module.weight, module.bias
        new._init_buffers(module.weight.device)
        new.train(module.training)
        return new

    def to_module(self) -> nn.Linear:
        """The plain ``nn.Linear`` sharing this layer's parameters."""
        m = nn.Linear(self.in_features, self.out_features, bias=False, device="meta")
        m.weight, m.bias = self.weight, self.bias
        m.train(self.training)
        return m

    def input_rows(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, self.in_features)

    def _ideal_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def _simulated_forward(self, x: torch.Tensor, arr: ProgrammedArray) -> torch.Tensor:
        return CF.linear(x, self.weight, arr, self.bias, self.kernel)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                + self._cim_repr())


class _CIMConv(CIMModule):
    """What the crossbar convolutions share: geometry, construction from and back to the torch layer
    (``_torch_class``; groups=1, zero padding), sharing its parameters."""

    _torch_class: type[nn.Module]

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, config: CrossbarConfig | None = None, *, seed: int = 0,
                 mode: str = "chip", kernel: str = "auto", device=None, dtype=None) -> None:
        super().__init__()
        if groups != 1:
            raise ValueError(f"{type(self).__name__} supports groups=1 only, got groups={groups}")
        ref = self._torch_class(in_channels, out_channels, kernel_size, stride, padding, dilation, 1, bias,
                                device=device, dtype=dtype)
        self._copy_geometry(ref)
        self.weight = ref.weight
        self.register_parameter("bias", ref.bias)
        self._init_cim(config, seed, mode, kernel, None if device == "meta" else self.weight.device)

    def _copy_geometry(self, conv: nn.Module) -> None:
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.dilation = conv.kernel_size, conv.stride, conv.dilation
        self.padding = conv.padding
        self.groups = 1

    @classmethod
    def from_module(cls, module: nn.Module, config: CrossbarConfig | None = None, *, seed: int = 0,
                    mode: str = "chip", kernel: str = "auto") -> "_CIMConv":
        """The crossbar twin of ``module`` sharing its parameters (groups=1, padding_mode='zeros')."""
        if module.groups != 1 or module.padding_mode != "zeros":
            raise ValueError(f"{cls.__name__} needs groups=1 and padding_mode='zeros', got groups={module.groups}, "
                             f"padding_mode={module.padding_mode!r}")
        new = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                  module.dilation, bias=False, config=config, seed=seed, mode=mode, kernel=kernel, device="meta")
        new.weight, new.bias = module.weight, module.bias
        new._init_buffers(module.weight.device)
        new.train(module.training)
        return new

    def to_module(self) -> nn.Module:
        """The plain torch layer sharing this layer's parameters."""
        m = self._torch_class(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                              self.dilation, bias=False, device="meta")
        m.weight, m.bias = self.weight, self.bias
        m.train(self.training)
        return m

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}, " + self._cim_repr())


class CIMConv2d(_CIMConv):
    """``nn.Conv2d`` (groups=1, zero padding) on a simulated crossbar by im2col.

    weight (out_channels, in_channels, kh, kw) is laid on the array as (out, in*kh*kw); every
    output pixel is one read of the array (:func:`cimsim.nn.functional.conv2d`).
    x (B, in_channels, H, W) -> (B, out_channels, H', W').
    """

    _torch_class = nn.Conv2d

    def input_rows(self, x: torch.Tensor) -> torch.Tensor:
        return CF.conv_rows(x, self.kernel_size, self.stride, self.padding, self.dilation)[0]

    def _ideal_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def _simulated_forward(self, x: torch.Tensor, arr: ProgrammedArray) -> torch.Tensor:
        return CF.conv2d(x, self.weight, arr, self.bias, self.stride, self.padding, self.dilation, self.kernel)


class CIMConv1d(_CIMConv):
    """``nn.Conv1d`` (groups=1, zero padding) on a simulated crossbar: the 2-D path on a height-1
    image. weight (out_channels, in_channels, k) is laid on the array as (out, in*k), the same
    layout as a (in, 1, k) convolution; x (B, in_channels, L) -> (B, out_channels, L')."""

    _torch_class = nn.Conv1d

    def _geometry_2d(self):
        pad = self.padding if isinstance(self.padding, str) else (0, self.padding[0])
        return (1, self.stride[0]), pad, (1, self.dilation[0])

    def input_rows(self, x: torch.Tensor) -> torch.Tensor:
        st, pad, dl = self._geometry_2d()
        return CF.conv_rows(x.unsqueeze(2), (1, self.kernel_size[0]), st, pad, dl)[0]

    def _ideal_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def _simulated_forward(self, x: torch.Tensor, arr: ProgrammedArray) -> torch.Tensor:
        st, pad, dl = self._geometry_2d()
        return CF.conv2d(x.unsqueeze(2), self.weight.unsqueeze(2), arr, self.bias, st, pad, dl, self.kernel).squeeze(2)


class CIMMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with its projections on the crossbar.

    The input projection (q, k, v stacked: weight (3E, E), the module's ``in_proj_weight``) and the
    output projection (E, E) are :class:`CIMLinear` layers sharing the original parameters. The
    products of activations with activations (``q k^T`` and the attention-weighted sum of ``v``),
    the softmax and the masks stay digital: a crossbar holds programmed weights, not activations.
    Self-attention (``query is key is value``) reads the input projection once; otherwise each of
    query, key and value is read through it and its third of the outputs kept. Shapes as
    ``nn.MultiheadAttention`` (``batch_first`` honoured, unbatched inputs accepted); returns
    ``(output, weights)``, weights ``(N, L, S)`` averaged over heads, ``(N, h, L, S)`` if not, or
    ``None`` when ``need_weights`` is false. No ``bias_k``/``bias_v``/``add_zero_attn``, and
    ``kdim = vdim = embed_dim``. Its state-dict keys are those of its two layers
    (``in_proj.weight``, ``in_proj.bias``, ``out_proj.*``), not ``in_proj_weight``: convert a model
    after loading a plain checkpoint into it, or :func:`unconvert` before saving one.
    """

    #: keeps ``nn.TransformerEncoderLayer`` off its fused fast path, which reads the projection
    #: weights directly and would bypass the crossbar in evaluation
    _qkv_same_embed_dim = False

    def __init__(self, mha: nn.MultiheadAttention, config: CrossbarConfig | None = None, *, mode: str = "chip",
                 kernel: str = "auto") -> None:
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("CIMMultiheadAttention needs kdim = vdim = embed_dim, no bias_k/bias_v and "
                             "add_zero_attn=False")
        e = mha.embed_dim
        self.embed_dim, self.num_heads, self.head_dim = e, mha.num_heads, mha.head_dim
        self.batch_first, self.dropout = mha.batch_first, mha.dropout
        proj = nn.Linear(e, 3 * e, bias=False, device="meta")
        proj.weight, proj.bias = mha.in_proj_weight, mha.in_proj_bias
        out = nn.Linear(e, e, bias=False, device="meta")
        out.weight, out.bias = mha.out_proj.weight, mha.out_proj.bias
        self.in_proj = CIMLinear.from_module(proj, config, mode=mode, kernel=kernel)
        self.out_proj = CIMLinear.from_module(out, config, mode=mode, kernel=kernel)
        self.train(mha.training)

    @classmethod
    def from_module(cls, module: nn.MultiheadAttention, config: CrossbarConfig | None = None, *, seed: int = 0,
                    mode: str = "chip", kernel: str = "auto") -> "CIMMultiheadAttention":
        """The crossbar twin of ``module``, sharing its parameters."""
        return cls(module, config, mode=mode, kernel=kernel)

    @property
    def in_proj_weight(self) -> torch.Tensor:
        return self.in_proj.weight

    @property
    def in_proj_bias(self) -> torch.Tensor | None:
        return self.in_proj.bias

    def to_module(self) -> nn.MultiheadAttention:
        """The plain ``nn.MultiheadAttention`` sharing this layer's parameters."""
        m = nn.MultiheadAttention(self.embed_dim, self.num_heads, self.dropout, bias=self.in_proj.bias is not None,
                                  batch_first=self.batch_first, device="meta")
        m.in_proj_weight, m.in_proj_bias = self.in_proj.weight, self.in_proj.bias
        m.out_proj.weight, m.out_proj.bias = self.out_proj.weight, self.out_proj.bias
        m.train(self.training)
        return m

    def _mask(self, attn_mask, key_padding_mask, is_causal, n, l, s, dtype, device) -> torch.Tensor | None:
        """Additive mask (N*h, L, S) or broadcastable, from ``attn_mask`` (bool: True = masked out, or
        float, added), ``key_padding_mask`` (N, S) and ``is_causal``."""
        def additive(m):
            if m.dtype == torch.bool:
                return torch.zeros(m.shape, dtype=dtype, device=device).masked_fill(m, float("-inf"))
            return m.to(dtype)

        total = None
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(l, s, dtype=torch.bool, device=device).triu(1)
        if attn_mask is not None:
            total = additive(attn_mask)
            if total.dim() == 3:
                total = total.view(n, self.num_heads, l, s)
        if key_padding_mask is not None:
            kp = additive(key_padding_mask).view(n, 1, 1, s)
            total = kp if total is None else total + kp
        return total

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        same = query is key and key is value
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        e, h, d = self.embed_dim, self.num_heads, self.head_dim
        if same:
            q, k, v = self.in_proj(query).chunk(3, dim=-1)
        else:
            q = self.in_proj(query)[..., :e]
            k = self.in_proj(key)[..., e:2 * e]
            v = self.in_proj(value)[..., 2 * e:]
        l, n, s = q.shape[0], q.shape[1], k.shape[0]
        q = q.reshape(l, n, h, d).permute(1, 2, 0, 3)  # (N, h, L, d)
        k = k.reshape(s, n, h, d).permute(1, 2, 0, 3)
        v = v.reshape(s, n, h, d).permute(1, 2, 0, 3)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # digital: activation x activation
        mask = self._mask(attn_mask, key_padding_mask, is_causal, n, l, s, scores.dtype, scores.device)
        if mask is not None:
            scores = scores + mask
        weights = torch.softmax(scores, dim=-1)
        out = F.dropout(weights, self.dropout, self.training) @ v  # (N, h, L, d)
        out = self.out_proj(out.permute(2, 0, 1, 3).reshape(l, n, e))
        if unbatched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        w = weights.mean(dim=1) if average_attn_weights else weights
        return out, (w.squeeze(0) if unbatched else w)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


# ============================================================== model-level functions
_TWINS = {nn.Linear: CIMLinear, nn.Conv2d: CIMConv2d, nn.Conv1d: CIMConv1d,
          nn.MultiheadAttention: CIMMultiheadAttention}


def _eligible(m: nn.Module) -> bool:
    """Plain ``nn.Linear``, ``nn.Conv2d`` and ``nn.Conv1d`` (groups=1, zero padding) and
    ``nn.MultiheadAttention`` (kdim = vdim = embed_dim, no bias_k/v); subclasses are left alone."""
    if type(m) is nn.Linear:
        return True
    if type(m) is nn.MultiheadAttention:
        return m._qkv_same_embed_dim and m.bias_k is None and not m.add_zero_attn
    return type(m) in (nn.Conv2d, nn.Conv1d) and m.groups == 1 and m.padding_mode == "zeros"


def _no_fused_fast_path(model: nn.Module) -> None:
    """A transformer layer that holds crossbar layers must not take torch's fused fast path (it
    reads the weights directly): a no-op forward pre-hook turns it off."""
    for m in model.modules():
        if isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)) and \
                any(isinstance(c, (CIMModule, CIMMultiheadAttention)) for c in m.modules()) and \
                not getattr(m, "_cim_no_fast_path", False):
            m.register_forward_pre_hook(lambda module, args: None)
            m._cim_no_fast_path = True


def _skip_predicate(skip: Skip) -> Callable[[str, nn.Module], bool]:
    """``skip`` as a predicate: names match a module or everything under it (``"features"``)."""
    if skip is None:
        return lambda name, m: False
    if callable(skip):
        return skip
    names = {skip} if isinstance(skip, str) else set(skip)
    return lambda name, m: any(name == s or name.startswith(s + ".") for s in names)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def cim_layers(model: nn.Module) -> list[tuple[str, CIMModule]]:
    """Every crossbar layer of ``model`` as (qualified name, module), in ``named_modules`` order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, CIMModule)]


def convert(model: nn.Module, config: CrossbarConfig | None = None, skip: Skip = None, *, keep_first: bool = False,
            keep_last: bool = False, seed: int = 0, mode: str = "chip", kernel: str = "auto") -> nn.Module:
    """Swap every eligible ``nn.Linear`` / ``nn.Conv2d`` / ``nn.Conv1d`` / ``nn.MultiheadAttention`` of
    ``model`` for its crossbar twin, in place (a ``nn.TransformerEncoderLayer`` is then converted
    through its attention and feed-forward layers, and kept off torch's fused fast path).

    skip: names (a module or a whole subtree, e.g. ``"classifier"``) or a predicate
        ``(name, module) -> bool`` of layers to keep digital.
    keep_first, keep_last: keep the first / last eligible layer (``named_modules`` order) digital.
    seed: the chip seed; CIM layer ``i`` gets ``cimsim.seeds.layer_seed(seed, i)`` (programmed lazily).
    Parameters are shared with the original layers (an existing optimizer keeps working).
    Returns the model (a new module only when ``model`` itself is an eligible layer).
    """
    config = config if config is not None else CrossbarConfig()
    eligible = [(n, m) for n, m in model.named_modules() if _eligible(m)]
    keep = ({eligible[0][0]} if keep_first and eligible else set()) | (
        {eligible[-1][0]} if keep_last and eligible else set())
    skip_fn = _skip_predicate(skip)
    for name, m in eligible:
        if name in keep or skip_fn(name, m):
            continue
        new = _TWINS[type(m)].from_module(m, config, mode=mode, kernel=kernel)
        if name == "":
            model = new
        else:
            _set_submodule(model, name, new)
    _no_fused_fast_path(model)
    _seed_layers(model, seed)
    return model


def unconvert(model: nn.Module) -> nn.Module:
    """Swap every crossbar layer back to its plain PyTorch layer (parameters shared), in place."""
    for name, m in [(n, m) for n, m in model.named_modules() if isinstance(m, CIMMultiheadAttention)]:
        if name == "":
            return m.to_module()
        _set_submodule(model, name, m.to_module())
    for name, m in cim_layers(model):
        if name == "":
            return m.to_module()
        _set_submodule(model, name, m.to_module())
    return model


def _seed_layers(model: nn.Module, seed: int) -> None:
    for i, (_, layer) in enumerate(cim_layers(model)):
        layer.seed = layer.chip_seed = layer_seed(int(seed), i)
        layer.draw_count = 0
        layer._chip = None


def set_mode(model: nn.Module, mode: str) -> nn.Module:
    """Put every crossbar layer in ``ideal``, ``chip`` or ``fresh`` (``train_variation``) mode."""
    mode = _check_mode(mode)
    for _, layer in cim_layers(model):
        layer.mode = mode
    return model


@contextlib.contextmanager
def use_mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Context manager: every crossbar layer in ``mode`` inside, its previous mode restored after."""
    before = [(layer, layer.mode) for _, layer in cim_layers(model)]
    set_mode(model, mode)
    try:
        yield model
    finally:
        for layer, m in before:
            layer.mode = m


def program(model: nn.Module, seed: int) -> nn.Module:
    """Program one chip now: CIM layer ``i`` gets chip seed ``cimsim.seeds.layer_seed(seed, i)``."""
    for i, (_, layer) in enumerate(cim_layers(model)):
        layer.program(layer_seed(int(seed), i))
    return model


def reprogram(model: nn.Module) -> nn.Module:
    """Draw the next chip of every crossbar layer (each from its own seed stream) and freeze it."""
    for _, layer in cim_layers(model):
        layer.reprogram()
    return model


def _batch_input(batch) -> torch.Tensor:
    """The model input of a loader item: the item itself or the first element of a tuple/list."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def calibrate(model: nn.Module, loader: Iterable, batches: int | None = 8, max_rows: int = 16384,
              seed: int = 0) -> nn.Module:
    """Calibrate every crossbar layer's input clip and ADC ranges from ``batches`` batches of ``loader``.

    The model runs in ``ideal`` mode, in eval mode, without gradients; each layer's array input
    rows are recorded (at most ``max_rows`` per layer, a uniform random subset drawn with a
    generator seeded by ``seed``) and passed to :meth:`CIMModule.calibrate_rows`. Modes and the
    train/eval flag are restored afterwards. Returns the model.
    """
    layers = cim_layers(model)
    if not layers:
        return model
    seen: dict[str, list[torch.Tensor]] = {name: [] for name, _ in layers}
    gen = torch.Generator().manual_seed(int(seed))
    per_batch = max_rows if batches is None else max(1, -(-max_rows // max(int(batches), 1)))

    def recorder(name: str):
        def hook(layer: CIMModule, args) -> None:
            # kept in the input's own dtype (float32 rows are exact in it; calibrate_rows widens them
            # to float64): half the memory of float64 copies, which on VGG-8 took ~8 GB
            rows = layer.input_rows(args[0].detach())
            if rows.shape[0] > per_batch:
                rows = rows[torch.randperm(rows.shape[0], generator=gen)[:per_batch].to(rows.device)]
            seen[name].append(rows.to("cpu"))
        return hook

    handles = [layer.register_forward_pre_hook(recorder(name)) for name, layer in layers]
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    try:
        model.eval()
        with use_mode(model, "ideal"), torch.no_grad():
            for i, batch in enumerate(loader):
                if batches is not None and i >= batches:
                    break
                model(_batch_input(batch).to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for name, layer in layers:
        if not seen[name]:
            raise RuntimeError(f"calibrate: layer {name!r} saw no input (is it used in forward? is the loader empty?)")
        rows = _take_rows(seen.pop(name), max_rows, gen)  # and the layer's recorded rows are freed
        layer.calibrate_rows(rows)
    return model


def _take_rows(chunks: list[torch.Tensor], max_rows: int, gen: torch.Generator) -> torch.Tensor:
    """The rows of ``torch.cat(chunks)``, or ``max_rows`` of them picked by ``torch.randperm(total,
    generator=gen)`` when there are more, gathered without concatenating them all first."""
    total = sum(c.shape[0] for c in chunks)
    if total <= max_rows:
        return torch.cat(chunks)
    pick = torch.randperm(total, generator=gen)[:max_rows]
    starts = torch.tensor([0] + [c.shape[0] for c in chunks]).cumsum(0)
    which = torch.searchsorted(starts, pick, right=True) - 1  # chunk of each picked row
    out = torch.empty((max_rows, *chunks[0].shape[1:]), dtype=chunks[0].dtype)
    for k, c in enumerate(chunks):
        sel = (which == k).nonzero().flatten()
        if sel.numel():
            out[sel] = c[pick[sel] - starts[k]]
        chunks[k] = None  # free each chunk once gathered
    return out


__all__ = ["CIMModule", "CIMLinear", "CIMConv2d", "CIMConv1d", "CIMMultiheadAttention", "convert", "unconvert",
           "cim_layers", "set_mode", "use_mode", "program", "reprogram", "calibrate", "MODES", "CHIP_KEYS"]

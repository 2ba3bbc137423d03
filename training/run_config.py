"""Run configuration: one flat, frozen dataclass, validated on construction, saved next to results.

A :class:`RunConfig` holds everything that decides a training run (model, data, method, noise
backend, optimiser, evaluation). It round-trips through JSON (``config.json``, written into every
run folder) and TOML (``config.toml``; read with :mod:`tomllib`, written by a small flat writer).

Defaults that come from the NeFT paper (Qin et al., arXiv 2305.14561; authors' code
github.com/YifanQin-ND/NeFT_CIM; ``/work/shared/reference/README.md`` s.1) are marked there:
OVF deltas (0.15, 0.10, 0.05) and decay 10, the beta table (:func:`default_beta`), Adam without
weight decay, cosine schedule, lr 1e-3 (VGG-8) / 1e-2 (ResNet-18), batch 128.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cimsim.crossbar.config import DAC_MODES, SLICE_ALIGNS

MODELS = ("mlp", "lenet", "vgg8", "resnet18")
#: how VGG-8 / ResNet-18 initialise their Linear layers (training.models.authors_init): ``authors``
#: (kaiming-normal fan_out, as the NeFT code) or ``pytorch`` (PyTorch's default uniform init, what
#: this code did before issue #21: the control that tells the initialisation's share in a result)
LINEAR_INITS = ("authors", "pytorch")
DATASETS = ("digits", "fashion-mnist", "mnist", "cifar10")
METHODS = ("plain", "nit", "ovf", "irs", "correctnet", "nit_temp", "ovf_beta0", "ovf_frozen_bn", "nit_multi")
#: the controls of issue #21 (training/methods.py) and the method whose defaults each shares
CONTROL_BASE = {"nit_temp": "nit", "ovf_beta0": "ovf", "ovf_frozen_bn": "ovf", "nit_multi": "nit"}
NOISES = ("paper", "device", "crossbar")
SIGMA_MODES = ("replace", "multiply")
#: the crossbar's DAC modes (its config's names)
DACS = DAC_MODES
PRECISIONS = ("float32", "bfloat16")  # see training.precision
CROSSBAR_CALIBRATIONS = ("batch", "epoch")
OPTIMIZERS = ("adam", "sgd")
SCHEDULERS = ("cosine", "none")


#: one line of ``--help`` per :class:`RunConfig` field (the class docstring says more)
FIELD_HELP = {
    "model": f"network: {' | '.join(MODELS)}",
    "dataset": f"data set: {' | '.join(DATASETS)}",
    "data_dir": "folder of the data set's files (default: its usual place)",
    "resize": "square side (pixels) the images are resized to",
    "train_limit": "use only the first N training images",
    "test_limit": "use only the first N test images",
    "val_fraction": "share of the training set held out for validation (chooses the checkpoint)",
    "method": f"training method: {' | '.join(METHODS)}",
    "noise": f"where variation comes from: {' | '.join(NOISES)}",
    "device_model": "device model: preset name (rram, rram1, fefet2, rram4, fefet6, neurram, pcm_joshi) or JSON path",
    "sigma": "training variation (paper: sigma_d; device/crossbar: see --sigma-mode)",
    "eval_sigma": "variation at test (default: = --sigma)",
    "sigma_mode": f"device/crossbar: {' | '.join(SIGMA_MODES)} the device model's sigma_scale by sigma",
    "weight_bits": "magnitude bits of a quantized weight (device/crossbar)",
    "bits_per_cell": "bits stored per cell (device/crossbar)",
    "read_time_s": "read time after programming, seconds (device/crossbar)",
    "crossbar_config": "crossbar: TOML/JSON file of a cimsim CrossbarConfig",
    "adc_bits": "crossbar: ADC bits (overrides the config file)",
    "dac": f"crossbar: {' | '.join(DACS)} (overrides the config file)",
    "slice_align": f"device/crossbar: {' | '.join(SLICE_ALIGNS)}: which end of a weight's slices is short when weight_bits "
                   "is not a multiple of bits_per_cell (crossbar: overrides the config file; unset: the file's, else lsb)",
    "keep_first": "crossbar: keep the first layer digital (true/false)",
    "keep_last": "crossbar: keep the last layer digital (true/false)",
    "crossbar_calibration": f"crossbar: when input clips and ADC ranges are fitted: {' | '.join(CROSSBAR_CALIBRATIONS)}",
    "beta": "negative-feedback strength of OVF/IRS (default: the paper's)",
    "ovf_deltas": "OVF: extra sigma of each extra forward, comma-separated",
    "ovf_decay": "OVF/IRS: z_i weighted decay^-i",
    "correctnet_lambda": "CorrectNet: weight of the orthogonality (Lipschitz) penalty",
    "temperature": "nit_temp: training logit temperature T, loss CE(z / T, y) (default: len(ovf_deltas) + 1)",
    "epochs": "training epochs",
    "batch_size": "training batch size",
    "lr": "learning rate (default: the paper's for the model)",
    "optimizer": f"optimizer: {' | '.join(OPTIMIZERS)}",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay",
    "scheduler": f"learning-rate schedule: {' | '.join(SCHEDULERS)}",
    "seed": "seed of the whole run (data order, noise, chips)",
    "torch_device": "auto | cpu | cuda",
    "threads": "torch and Numba threads",
    "precision": "compute precision of the network: float32 | bfloat16 (autocast; paper/device noise only)",
    "eval_chips": "Monte Carlo chips at test",
    "val_chips": "chips that score each epoch's validation accuracy",
    "eval_batch_size": "batch size of evaluation",
    "converge_frac": "a run converged when clean val accuracy >= chance + frac * (1 - chance)",
    "bn_recal_images": "per-chip BatchNorm recalibration: training images run through each chip before it is tested (0: off)",
    "linear_init": f"Linear layers' init of vgg8 / resnet18: {' | '.join(LINEAR_INITS)} (pytorch: the control)",
}

class ConfigError(ValueError):
    """An invalid run configuration (the message is one line, meant for the user)."""


def default_beta(model: str, method: str, dataset: str) -> float:
    """The negative-feedback strength beta the paper used (README s.1), or our documented pick.

    VGG-8: OVF 1e-3; IRS 1e-2 on MNIST-like data, 1e-1 on CIFAR-10.
    ResNet-18: OVF 1e-4 (MNIST-like) / 1e-1 (CIFAR); IRS 1e-1 (MNIST-like) / 1e-3 (CIFAR).
    LeNet-5 and MLP (not in the paper): the VGG-8 MNIST values, OVF 1e-3 and IRS 1e-2.
    Methods without negative feedback get 0.
    """
    method = CONTROL_BASE.get(method, method)
    if method not in ("ovf", "irs"):
        return 0.0
    cifar = dataset.startswith("cifar")
    if model == "resnet18":
        if method == "ovf":
            return 1e-1 if cifar else 1e-4
        return 1e-3 if cifar else 1e-1
    if method == "ovf":
        return 1e-3
    return 1e-1 if (cifar and model == "vgg8") else 1e-2


def default_lr(model: str) -> float:
    """Adam learning rate: 1e-2 for ResNet-18 (paper), 1e-3 otherwise (paper's VGG-8 value)."""
    return 1e-2 if model == "resnet18" else 1e-3


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides one training run. Fields (units in names where they have one):

    Model and data
        model: ``mlp | lenet | vgg8 | resnet18``. dataset: ``digits | fashion-mnist | mnist | cifar10``.
        data_dir: folder of the data set files (``None``: the data set's default place).
        resize: square side in pixels the images are interpolated to (``None``: native size).
        linear_init: ``authors | pytorch``, the Linear layers' initialisation of VGG-8 and ResNet-18
            (:data:`LINEAR_INITS`; LeNet-5 and the MLP always keep PyTorch's default).
        train_limit / test_limit: use only the first n training / test images (tests, quick looks).
        val_fraction: share of the training set held out for validation (chooses the checkpoint).
    Method and noise
        method: ``plain | nit | ovf | irs | correctnet``. noise: ``paper | device | crossbar``.
        device_model: preset name or JSON path. The ``paper`` backend needs a NeFT stylized
            model (rram1, fefet2, rram4, fefet6) and reads its ``s``; the ``device`` backend takes any.
        sigma: training variation (paper: sigma_d; device: see ``sigma_mode``).
        eval_sigma: variation at test (``None``: = sigma, as in the paper).
        sigma_mode (device backend): ``replace`` sets ``DeviceModel.sigma_scale = sigma`` (for the
            NeFT stylized presets this is exactly the paper's sigma_d); ``multiply`` multiplies the
            model's own ``sigma_scale`` by sigma (sigma = 1: the device as fitted).
        weight_bits: magnitude bits of a quantized weight (sign on the differential pair), device
            backend. bits_per_cell: bits stored per cell. read_time_s: read time after programming (s).
        crossbar backend (the full simulated array, ``training.variation.CrossbarNoise``):
            crossbar_config: TOML/JSON file of a ``cimsim.crossbar.config.CrossbarConfig`` (``None``: its
            defaults); device_model, weight_bits, bits_per_cell, read_time_s and sigma_mode above
            apply as for the device backend and replace the file's values. adc_bits (1..24) and
            dac (``multibit | bit_serial``) replace the file's when set, and so does slice_align
            (``lsb | msb``, ``CrossbarConfig.slice_align``; the device backend slices by it too, ``lsb``
            when unset). keep_first / keep_last:
            keep the first / last backbone layer digital (float, noise-free). crossbar_calibration:
            ``batch`` (input clips and ADC ranges re-fitted in every training forward from that
            forward's layer inputs, and on training images after every epoch for the test chips)
            or ``epoch`` (training images only: before training and after every epoch).
        beta: negative-feedback strength (``None``: :func:`default_beta`).
        ovf_deltas: extra sigma of OVF's extra forwards, in order (their count is N).
        ovf_decay: z_i is weighted ``ovf_decay ** -i``. correctnet_lambda: weight of CorrectNet's
            orthogonality (Lipschitz) penalty. temperature: ``nit_temp``'s training temperature
            (``None``: N + 1). The controls ``nit_temp | ovf_beta0 | ovf_frozen_bn | nit_multi``
            take the defaults (beta) of ``nit`` / ``ovf``.
    Optimisation
        epochs, batch_size, lr (``None``: :func:`default_lr`), optimizer ``adam | sgd``, momentum
        (sgd), weight_decay, scheduler ``cosine | none``, seed, torch_device (``auto | cpu | cuda``),
        threads (torch intra-op threads; ``None``: leave torch's default). precision:
        ``float32 | bfloat16``, the network's compute precision in training and evaluation
        (:mod:`training.precision`; bfloat16 only with the ``paper`` and ``device`` backends).
    Evaluation
        eval_chips: Monte Carlo chips at test. val_chips: chips that score each epoch's
        validation accuracy (selects the checkpoint). eval_batch_size. converge_frac: a run
        converged when its best clean validation accuracy >= chance + converge_frac * (1 - chance).
        bn_recal_images: per-chip BatchNorm recalibration at test - the first n training-split
        images run through each programmed chip to recompute its BatchNorm statistics (0: off;
        no effect on a model without BatchNorm).
    """

    model: str = "lenet"
    dataset: str = "digits"
    data_dir: str | None = None
    resize: int | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    val_fraction: float = 0.1
    method: str = "plain"
    noise: str = "paper"
    device_model: str = "rram1"
    sigma: float = 0.1
    eval_sigma: float | None = None
    sigma_mode: str = "replace"
    weight_bits: int = 8
    bits_per_cell: int = 2
    read_time_s: float = 1.0
    crossbar_config: str | None = None
    adc_bits: int | None = None
    dac: str | None = None
    slice_align: str | None = None
    keep_first: bool = False
    keep_last: bool = False
    crossbar_calibration: str = "batch"
    beta: float | None = None
    ovf_deltas: tuple[float, ...] = (0.15, 0.10, 0.05)
    ovf_decay: float = 10.0
    correctnet_lambda: float = 1e-3
    temperature: float | None = None
    epochs: int = 10
    batch_size: int = 128
    lr: float | None = None
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    seed: int = 0
    torch_device: str = "auto"
    threads: int | None = None
    precision: str = "float32"
    eval_chips: int = 200
    val_chips: int = 4
    eval_batch_size: int = 1000
    converge_frac: float = 0.5
    bn_recal_images: int = 0
    linear_init: str = "authors"

    def __post_init__(self) -> None:
        _check_types(self)
        object.__setattr__(self, "ovf_deltas", tuple(float(d) for d in self.ovf_deltas))
        _choice("model", self.model, MODELS)
        _choice("dataset", self.dataset, DATASETS)
        _choice("method", self.method, METHODS)
        _choice("noise", self.noise, NOISES)
        _choice("sigma_mode", self.sigma_mode, SIGMA_MODES)
        _choice("crossbar_calibration", self.crossbar_calibration, CROSSBAR_CALIBRATIONS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("torch_device", self.torch_device, ("auto", "cpu", "cuda"))
        _choice("precision", self.precision, PRECISIONS)
        _choice("linear_init", self.linear_init, LINEAR_INITS)
        if self.precision != "float32" and self.noise == "crossbar":
            raise ConfigError(f"precision {self.precision!r} needs noise 'paper' or 'device': the crossbar "
                              "simulator computes in float32/float64 (set precision = \"float32\")")
        for name in ("epochs", "batch_size", "eval_chips", "val_chips", "eval_batch_size", "weight_bits", "bits_per_cell"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ConfigError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("resize", "train_limit", "test_limit", "threads"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int) and v >= 1):
                raise ConfigError(f"{name} must be an integer >= 1 or unset, got {v!r}")
        if self.adc_bits is not None and not (type(self.adc_bits) is int and 1 <= self.adc_bits <= 24):
            raise ConfigError(f"adc_bits must be an integer in 1..24 or unset, got {self.adc_bits!r}")
        if self.dac is not None:
            _choice("dac", self.dac, DACS)
        if self.slice_align is not None:
            _choice("slice_align", self.slice_align, SLICE_ALIGNS)
        if self.crossbar_config is not None and not (isinstance(self.crossbar_config, str) and self.crossbar_config):
            raise ConfigError(f"crossbar_config must be a file path or unset, got {self.crossbar_config!r}")
        for name in ("keep_first", "keep_last"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.bits_per_cell > self.weight_bits:
            raise ConfigError(f"bits_per_cell ({self.bits_per_cell}) exceeds weight_bits ({self.weight_bits})")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        for name in ("sigma", "eval_sigma", "read_time_s", "weight_decay", "correctnet_lambda", "beta", "lr"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.lr is not None and self.lr == 0:
            raise ConfigError("lr must be > 0")
        if self.method in ("ovf", "ovf_beta0", "ovf_frozen_bn") and not self.ovf_deltas:
            raise ConfigError(f"{self.method} needs at least one extra forward (ovf_deltas is empty)")
        if self.temperature is not None and not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if any(not (math.isfinite(d) and d >= 0) for d in self.ovf_deltas):
            raise ConfigError(f"ovf_deltas must be finite and >= 0, got {self.ovf_deltas}")
        if not self.ovf_decay > 0:
            raise ConfigError(f"ovf_decay must be > 0, got {self.ovf_decay}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if not (isinstance(self.bn_recal_images, int) and self.bn_recal_images >= 0):
            raise ConfigError(f"bn_recal_images must be an integer >= 0, got {self.bn_recal_images!r}")
        if not 0 <= self.converge_frac <= 1:
            raise ConfigError(f"converge_frac must lie in [0, 1], got {self.converge_frac}")

    # ------------------------------------------------------------ resolved values
    @property
    def beta_value(self) -> float:
        """beta, or the paper's default for this model/method/data set."""
        return default_beta(self.model, self.method, self.dataset) if self.beta is None else float(self.beta)

    @property
    def lr_value(self) -> float:
        return default_lr(self.model) if self.lr is None else float(self.lr)

    @property
    def eval_sigma_value(self) -> float:
        return self.sigma if self.eval_sigma is None else float(self.eval_sigma)

    @property
    def uses_heads(self) -> bool:
        return self.method == "irs"

    # -------------------------------------------------------------------- I/O
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ovf_deltas"] = list(self.ovf_deltas)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        kw = dict(d)
        if "ovf_deltas" in kw:
            kw["ovf_deltas"] = tuple(kw["ovf_deltas"])
        try:
            return cls(**kw)
        except TypeError as e:
            raise ConfigError(f"malformed config: {e}") from None

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    def to_toml(self) -> str:
        """Flat TOML; fields that are ``None`` are left out (they take their default on reading)."""
        lines = []
        for k, v in self.to_dict().items():
            if v is None:
                continue
            lines.append(f"{k} = {_toml_value(v)}")
        return "\n".join(lines) + "\n"

    def save(self, folder: str | Path) -> None:
        """Write ``config.json`` and ``config.toml`` into ``folder``."""
        folder = Path(folder)
        (folder / "config.json").write_text(self.to_json() + "\n")
        (folder / "config.toml").write_text(self.to_toml())

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """Read a config from a ``.json`` or ``.toml`` file."""
        from cimsim.io import read_table

        path = Path(path)
        d = read_table(path, "config", ConfigError)
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None


def _check_types(cfg: RunConfig) -> None:
    """ConfigError naming the first field whose value has the wrong type (a hand-edited file)."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        kinds = f.type.replace(" ", "").split("|")
        if v is None and "None" in kinds:
            continue
        if kinds[0] == "tuple[float,...]":
            ok = isinstance(v, (tuple, list)) and all(_is_number(d) for d in v)
        elif kinds[0] == "float":
            ok = _is_number(v)
        elif kinds[0] == "int":
            ok = isinstance(v, int) and not isinstance(v, bool)
        else:
            ok = isinstance(v, {"str": str, "bool": bool}[kinds[0]])
        if not ok:
            raise ConfigError(f"{f.name} must be {' or '.join(kinds)}, got {v!r}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r} (choose from {', '.join(allowed)})")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ConfigError(f"cannot write {v!r} as TOML")


def shipped_path(path: str) -> Path:
    """``path`` as given when it exists (absolute, or from the working directory), else from the
    repository root when it exists there: the suites name the config files they ship
    (``training/suites/ir_drop/*.toml``) that way, so a run works from any directory."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    root = Path(__file__).resolve().parents[1] / p
    return root if root.exists() else p


#: fields that may name a file whose contents, not only its name, decide a run's results
FILE_FIELDS = ("crossbar_config", "device_model")


def referenced_files(values: Mapping[str, Any]) -> dict[str, str]:
    """SHA-256 of each existing file that ``values`` (config fields) name, by field: a resumed sweep
    or stage compares them, since a file edited under the same name changes the results."""
    from cimsim.io import sha256_file

    out = {}
    for f in FILE_FIELDS:
        v = values.get(f)
        if isinstance(v, str) and v and shipped_path(v).is_file():
            out[f] = sha256_file(shipped_path(v))
    return out

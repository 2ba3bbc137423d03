"""Monte Carlo evaluation over programmed chips, and the metrics the field reports.

A chip is one frozen draw of every noisy weight (:meth:`training.variation.Variation.chip`), held
for the whole test set (BatchNorm in eval mode, side heads dropped). Chip ``i`` of a run with seed
``s`` has the seed :func:`cimsim.seeds.chip_seed` ``(s, i)``, so any one chip can be re-made alone.

Metrics over ``T`` chips (``p_t [N, C]`` softmax of chip ``t``): accuracy per chip (a fraction)
and its ``acc_mean``, ``acc_std``, ``acc_ci95``, ``acc_min``, ``acc_p05``; ``ekl`` (nats);
``confidence``; the convergence probability over seeds (:func:`convergence_probability`).

Command line (:func:`evaluate_run`)::

    python -m training.evaluate --run runs/X --chips 200 [--engine local|ray] [--out metrics.json]

The chips are split into chunks run by a :mod:`training.engines` engine; every metric is the same
whichever engine ran them. Exit status: 0 done; 1 a chunk failed; 2 bad options or run folder
(one line on stderr); 130 on Ctrl-C.

Metric definitions, chip seeds and fan-out: docs/design.md,
section 'Monte Carlo evaluation (training/evaluate.py)'.
"""
from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cimsim.nn import CIMModule
from cimsim.progress import Progress
from cimsim.seeds import chip_seed

from .cli import Parser, UsageError, field_type, resolve_torch_device
from .data import ImageSet, load_splits
from .precision import autocast
from .variation import Variation
from .threads import set_threads


class MCAccumulator:
    """Streams chips' softmax outputs into the metrics above.

    ``add(probs [N, C], y [N])`` once per chip (the full test set, or successive batches of it via
    ``add_batch`` followed by ``end_chip``); ``result()`` gives the metrics dict.
    """

    def __init__(self, n: int, num_classes: int, device: torch.device | str = "cpu"):
        self.n = n
        self.sum_p = torch.zeros(n, num_classes, dtype=torch.float64, device=device)
        self.sum_h = torch.zeros(n, dtype=torch.float64, device=device)
        self.accs: list[float] = []
        self.conf_sum = 0.0
        self._correct = 0
        self._seen = 0
        self._conf = 0.0

    def add_batch(self, start: int, probs: torch.Tensor, y: torch.Tensor) -> None:
        """Softmax probabilities ``[b, C]`` of inputs ``start .. start+b-1`` under the current chip."""
        p = probs.to(torch.float64)
        b = p.shape[0]
        self.sum_p[start : start + b] += p
        self.sum_h[start : start + b] += -(p * torch.log(p.clamp_min(1e-300))).sum(1)
        self._correct += int((p.argmax(1) == y).sum())
        self._conf += float(p.max(1).values.sum())
        self._seen += b

    def end_chip(self) -> None:
        if self._seen != self.n:
            raise ValueError(f"a chip must see all {self.n} inputs, saw {self._seen}")
        self.accs.append(self._correct / self.n)
        self.conf_sum += self._conf / self.n
        self._correct, self._seen, self._conf = 0, 0, 0.0

    def add(self, probs: torch.Tensor, y: torch.Tensor) -> None:
        self.add_batch(0, probs, y)
        self.end_chip()

    def result(self) -> dict:
        T = len(self.accs)
        if T == 0:
            raise ValueError("no chips added")
        acc = np.asarray(self.accs)
        pm = self.sum_p / T
        h_mean = -(pm * torch.log(pm.clamp_min(1e-300))).sum(1)
        ekl = float(torch.clamp(h_mean - self.sum_h / T, min=0).mean())
        std = float(acc.std(ddof=1)) if T > 1 and acc.max() > acc.min() else 0.0  # exact 0 when all chips agree
        from scipy.stats import t as student

        half = float(student.ppf(0.975, T - 1)) * std / math.sqrt(T) if T > 1 else 0.0
        mean = float(acc.mean())
        return {
            "chips": T,
            "acc_mean": mean,
            "acc_std": std,
            "acc_ci95_low": mean - half,
            "acc_ci95_high": mean + half,
            "acc_min": float(acc.min()),
            "acc_p05": float(np.percentile(acc, 5)),
            "ekl": ekl,
            "confidence": self.conf_sum / T,
        }


def metrics_from_probs(probs: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> dict:
    """Metrics of ``probs [T, N, C]`` (softmax per chip) against labels ``y [N]``."""
    probs = torch.as_tensor(probs, dtype=torch.float64)
    y = torch.as_tensor(y)
    acc = MCAccumulator(probs.shape[1], probs.shape[2])
    for p in probs:
        acc.add(p, y)
    out = acc.result()
    out["acc_per_chip"] = list(acc.accs)
    return out


@dataclass
class MCResult:
    """Output of :func:`evaluate_mc`: the metrics dict and the accuracy of every chip ``[T]``."""

    metrics: dict
    acc_per_chip: np.ndarray


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The model's BatchNorm layers (those per-chip recalibration recomputes)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def recalibration_images(train: ImageSet, n: int, device: torch.device | str) -> torch.Tensor | None:
    """The first ``n`` images of the training split (unlabelled use; never the test set) as the
    float batch per-chip recalibration runs through each chip; ``None`` for ``n = 0``."""
    if n <= 0:
        return None
    if n > len(train):
        from .run_config import ConfigError

        raise ConfigError(f"bn_recal_images = {n}: the training split has only {len(train)} images")
    return train.batch(slice(0, n), device)[0]


@contextlib.contextmanager
def recalibrated_batchnorm(model: nn.Module, forward, x_cal: torch.Tensor | None, batch_size: int):
    """Per-chip BatchNorm recalibration: inside the block every BatchNorm layer holds the running
    statistics of ``x_cal`` (images ``[n, C, H, W]``) as this chip computes them, ``forward(x)``
    being the model's forward on the chip (equal-weight average over batches of ``batch_size``);
    afterwards the model's own statistics are back. Yields the number of images run (0 without
    ``x_cal`` or BatchNorm)."""
    bns = batchnorm_layers(model)
    if x_cal is None or not bns:
        yield 0
        return
    saved = [({k: v.clone() for k, v in m.state_dict().items()}, m.momentum, m.training) for m in bns]
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
            m.train()
        for s in range(0, x_cal.shape[0], batch_size):
            forward(x_cal[s:s + batch_size])
        for m in bns:
            m.eval()
        yield int(x_cal.shape[0])
    finally:
        for m, (state, momentum, training) in zip(bns, saved):
            m.load_state_dict(state)
            m.momentum = momentum
            m.train(training)


@torch.no_grad()
def evaluate_mc(model: nn.Module, variation: Variation, data: ImageSet, sigma: float, chips: int, seed: int,
                batch_size: int = 1000, device: torch.device | str = "cpu", progress: bool = False,
                recal_x: torch.Tensor | None = None) -> MCResult:
    """Monte Carlo accuracy over ``chips`` programmed chips at variation ``sigma`` (see module doc).

    Chips whose backend leaves the weights untouched (e.g. paper noise at sigma 0) are evaluated
    once and counted ``chips`` times (all identical). ``recal_x``: images for per-chip BatchNorm
    recalibration (:func:`recalibrated_batchnorm`); the metrics then count the images run.
    """
    was = model.training
    model.eval()
    dev = torch.device(device)
    data = data.to(dev)
    acc = MCAccumulator(len(data), data.num_classes, dev)
    recal = _chip_loop(model, variation, data, sigma, range(chips), seed, batch_size, dev, acc, progress, recal_x)
    model.train(was)
    return MCResult({**acc.result(), **_recal_metrics(recal, chips)}, np.asarray(acc.accs))


def _recal_metrics(images_per_chip: int, chips: int) -> dict:
    return {"bn_recal_images_per_chip": images_per_chip, "bn_recal_images_total": images_per_chip * chips}


def _chip_loop(model: nn.Module, variation: Variation, data: ImageSet, sigma: float, chip_ids: Sequence[int],
               seed: int, batch_size: int, dev: torch.device, acc: MCAccumulator, progress: bool = False,
               recal_x: torch.Tensor | None = None) -> int:
    """Add chips ``chip_ids`` (chip i drawn from :func:`chip_seed` ``(seed, i)``) to ``acc``; model in
    eval mode. Returns the recalibration images run per chip (0: none)."""
    n, total = len(data), len(chip_ids)
    bar = Progress(total, "evaluate: chips", quiet=not progress)
    logits_cache = None
    recal = 0
    for k, i in enumerate(chip_ids):
        chip = variation.chip(model, sigma, chip_seed(seed, i), heads=False)
        if not chip and logits_cache is not None:
            for s, p in logits_cache:
                acc.add_batch(s, p, data.y[s : s + p.shape[0]])
            acc.end_chip()
            bar.update()
            continue
        cache = []
        with recalibrated_batchnorm(model, lambda x: variation.forward_chip(model, chip, x), recal_x,
                                    batch_size) as recal:
            for s in range(0, n, batch_size):
                x, y = data.batch(slice(s, s + batch_size), dev)
                p = torch.softmax(variation.forward_chip(model, chip, x).float(), 1)
                acc.add_batch(s, p, y)
                if not chip:
                    cache.append((s, p))
        acc.end_chip()
        if not chip:
            logits_cache = cache
        bar.update(note=f"chip {i} acc {acc.accs[-1]:.4f}")
    bar.close()
    return recal


@torch.no_grad()
def clean_accuracy(model: nn.Module, data: ImageSet, batch_size: int = 1000, device: torch.device | str = "cpu") -> float:
    """Accuracy of the model with its clean weights (eval mode, no heads)."""
    was = model.training
    model.eval()
    correct = 0
    for s in range(0, len(data), batch_size):
        x, y = data.batch(slice(s, s + batch_size), device)
        correct += int((model(x).argmax(1) == y).sum())
    model.train(was)
    return correct / max(1, len(data))


def converged(clean_val_acc: float, num_classes: int, converge_frac: float = 0.5, diverged: bool = False) -> bool:
    """A run converged: not diverged and clean val accuracy >= chance + converge_frac * (1 - chance)."""
    if diverged or clean_val_acc is None or not math.isfinite(clean_val_acc):
        return False
    chance = 1.0 / num_classes
    return clean_val_acc >= chance + converge_frac * (1 - chance)


def convergence_probability(flags: Sequence[bool]) -> float:
    """Share of runs (seeds) that converged (see :func:`converged`); NaN for no runs."""
    flags = list(flags)
    return float(np.mean(flags)) if flags else float("nan")


def plot_histogram(acc_per_chip: np.ndarray, path: str | Path, title: str = "") -> None:
    """Histogram of accuracy over chips, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(100 * np.asarray(acc_per_chip), bins=min(30, max(5, len(acc_per_chip) // 5)), color="tab:blue", alpha=0.8)
    ax.set_xlabel("test accuracy per chip (%)")
    ax.set_ylabel("chips")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------- Monte Carlo of a finished run, fanned out to an engine
@dataclass
class MCPartial:
    """The sums :class:`MCAccumulator` keeps, over one chunk of chips (mergeable, picklable numpy)."""

    chip_ids: list[int]
    accs: list[float]
    sum_p: np.ndarray
    sum_h: np.ndarray
    conf_sum: float
    recal_images: int = 0


@torch.no_grad()
def evaluate_chips(model: nn.Module, variation: Variation, data: ImageSet, sigma: float, chip_ids: Sequence[int],
                   seed: int, batch_size: int = 1000, device: torch.device | str = "cpu",
                   recal_x: torch.Tensor | None = None) -> MCPartial:
    """Chips ``chip_ids`` only (chip i from :func:`chip_seed` ``(seed, i)``, exactly as in :func:`evaluate_mc`)."""
    model.eval()
    dev = torch.device(device)
    data = data.to(dev)
    acc = MCAccumulator(len(data), data.num_classes, dev)
    recal = _chip_loop(model, variation, data, sigma, list(chip_ids), seed, batch_size, dev, acc, recal_x=recal_x)
    return MCPartial(list(map(int, chip_ids)), list(acc.accs), acc.sum_p.cpu().numpy(), acc.sum_h.cpu().numpy(),
                     float(acc.conf_sum), recal)


def merge_partials(parts: Sequence[MCPartial]) -> MCResult:
    """The metrics of all chips of ``parts``, summed in chip order (so any engine gives the same numbers)."""
    parts = sorted(parts, key=lambda q: q.chip_ids[0])
    ids = [i for q in parts for i in q.chip_ids]
    if ids != list(range(len(ids))):
        raise ValueError(f"chunks do not cover chips 0..{len(ids) - 1} exactly once")
    n, c = parts[0].sum_p.shape
    acc = MCAccumulator(n, c)
    for q in parts:
        acc.sum_p += torch.tensor(q.sum_p, dtype=torch.float64)
        acc.sum_h += torch.tensor(q.sum_h, dtype=torch.float64)
        acc.accs.extend(q.accs)
        acc.conf_sum += q.conf_sum
    recal = max(q.recal_images for q in parts)
    return MCResult({**acc.result(), **_recal_metrics(recal, len(ids))}, np.asarray(acc.accs))


def chunk_chips(chips: int, chunk_size: int) -> list[list[int]]:
    """Chips ``0 .. chips-1`` in consecutive chunks of at most ``chunk_size``."""
    if chips < 1 or chunk_size < 1:
        raise ValueError("chips and chunk_size must be >= 1")
    return [list(range(s, min(chips, s + chunk_size))) for s in range(0, chips, chunk_size)]


#: RunConfig fields an evaluation may change (:func:`load_run` ``overrides``): the noise backend
#: and everything about the chips, never the model, data or training
EVAL_OVERRIDES = frozenset({
    "noise", "device_model", "sigma_mode", "weight_bits", "bits_per_cell", "read_time_s", "crossbar_config",
    "adc_bits", "dac", "slice_align", "keep_first", "keep_last", "crossbar_calibration", "test_limit", "eval_batch_size",
    "precision", "bn_recal_images",
})


def eval_config(cfg, overrides: dict | None):
    """``cfg`` with evaluation ``overrides`` applied (a ``ConfigError`` names a field that may not change).

    A bfloat16 run moved onto the crossbar (``noise = "crossbar"`` without a ``precision``
    override) is evaluated in float32, the only precision the simulator has."""
    from .run_config import ConfigError

    if not overrides:
        return cfg
    bad = sorted(set(overrides) - EVAL_OVERRIDES)
    if bad:
        raise ConfigError(f"evaluation cannot change {', '.join(bad)} (allowed: {', '.join(sorted(EVAL_OVERRIDES))})")
    if overrides.get("noise") == "crossbar" and "precision" not in overrides:
        overrides = {**overrides, "precision": "float32"}
    return cfg.replace(**overrides)


def load_best(run_dir: Path, model: nn.Module, dev, trained, cfg) -> None:
    """Load ``best.pt`` of ``run_dir`` into ``model`` (built for ``cfg``, the run's ``trained``
    config with any overrides); :class:`training.runfolder.RunFolderError` naming the file when
    it cannot be read or does not fit the model."""
    from .engines import one_line
    from .runfolder import RunFolderError
    from .variation import float_state

    path = run_dir / "best.pt"
    try:
        state = torch.load(path, map_location=dev, weights_only=True)["model"]
    except Exception as e:  # noqa: BLE001 - truncated, empty, random or foreign files raise many kinds
        raise RunFolderError(f"{path}: not a readable checkpoint ({one_line(e, 160)})") from None
    fits = f"{path} does not fit the {trained.model} model of {run_dir / 'config.json'}"
    try:
        if (trained.noise == "crossbar") == (cfg.noise == "crossbar"):
            model.load_state_dict(state)
            return
        missing, unexpected = model.load_state_dict(float_state(state), strict=False)
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]  # torch: a header, then the causes
        raise RunFolderError(f"{fits} ({(lines[-1] if lines else type(e).__name__)[:200]})") from None
    extra = [k for k in missing if k.rpartition(".")[2] not in ("input_clip", "adc_range", "_extra_state")]
    if extra or unexpected:
        raise RunFolderError(f"{fits} (missing {extra[:3]}, unexpected {unexpected[:3]})")


def load_run(run_dir: str | Path, torch_device: str | None = None, overrides: dict | None = None,
             calibrate: bool = True, check=None):
    """``(config, model with best.pt loaded, variation, test set, device)`` of a finished run folder.

    ``overrides``: RunConfig fields (:data:`EVAL_OVERRIDES`) to evaluate under instead of the run's
    own, e.g. ``{"noise": "crossbar", "adc_bits": 6}`` (a model trained against weight noise, put on
    the simulated crossbar) or ``{"read_time_s": 86400}``. When the backend changes to or from
    ``crossbar``, only the float weights, biases and BatchNorm entries of ``best.pt`` are loaded
    (:func:`training.variation.float_state`) and a crossbar model is calibrated (input clips, ADC
    ranges) on training images as training does; so is a crossbar run evaluated with per-output
    gain calibration, whose calibration rows its checkpoint does not carry (``calibrate=False``
    skips both: a check that the run loads); the returned config is the overridden one.
    ``check(model)``, if given, runs on the loaded model before that calibration (a caller's
    validation that should fail before the long work).
    """
    from .run_config import RunConfig
    from .data import load_dataset
    from .models import build_model
    from .variation import make_variation

    run_dir = Path(run_dir)
    if not (run_dir / "best.pt").exists():
        raise FileNotFoundError(f"{run_dir}: no best.pt (not a finished training run folder)")
    trained = RunConfig.load(run_dir / "config.json")
    cfg = eval_config(trained, overrides)
    dev = resolve_torch_device(torch_device or cfg.torch_device)
    test = load_dataset(cfg.dataset, "test", cfg.data_dir, cfg.resize)
    if cfg.test_limit:
        test = test.subset(slice(0, cfg.test_limit))
    variation = make_variation(cfg)
    model = build_model(cfg.model, test.input_shape, test.num_classes, with_heads=cfg.uses_heads,
                        linear_init=cfg.linear_init).to(dev)
    prepare = getattr(variation, "prepare", None)  # backends that convert the model's layers (crossbar)
    if prepare is not None:
        model = prepare(model)
    load_best(run_dir, model, dev, trained, cfg)
    if check is not None:
        check(model)
    if calibrate and cfg.noise == "crossbar" and (trained.noise != "crossbar" or _needs_gain_rows(model)):
        variation.calibrate(model, load_splits(cfg)[0], cfg.batch_size)
    return cfg, model, variation, test, dev


def _needs_gain_rows(model: nn.Module) -> bool:
    """A crossbar model whose config calibrates every chip's output gain, loaded without the
    calibration rows that takes (a checkpoint carries input clips and ADC ranges, not the rows):
    it is calibrated again, as its training run did after its last epoch."""
    return any(m.config.output_gain_calibration and m._gain_rows is None
               for m in model.modules() if isinstance(m, CIMModule))


def mc_chunk(run_dir: str, chip_ids: list[int], sigma: float | None, torch_device: str | None, threads: int,
             overrides: dict | None = None) -> MCPartial:
    """Engine task: load the run and evaluate chips ``chip_ids`` of it (see :func:`evaluate_run`)."""
    set_threads(threads)
    cfg, model, variation, test, dev = load_run(run_dir, torch_device, overrides)
    s = cfg.eval_sigma_value if sigma is None else float(sigma)
    recal_x = (recalibration_images(load_splits(cfg)[0], cfg.bn_recal_images, dev)
               if cfg.bn_recal_images and batchnorm_layers(model) else None)
    with autocast(cfg.precision, dev):
        return evaluate_chips(model, variation, test, s, chip_ids, cfg.seed, cfg.eval_batch_size, dev, recal_x)


def evaluate_run(run_dir: str | Path, chips: int | None = None, sigma: float | None = None, engine=None,
                 chunk_size: int | None = None, torch_device: str | None = None, threads: int | None = None,
                 overrides: dict | None = None, progress: bool = False) -> MCResult:
    """Monte Carlo test accuracy of a finished run, its chips split into chunks run on ``engine``.

    Chip i always uses ``chip_seed(run seed, i)`` and chunks are merged in chip order, so the
    result does not depend on the engine or the chunking (on the same kind of torch device). The
    defaults (the run's ``eval_chips``, ``eval_sigma``, ``torch_device``) repeat the run's own final
    evaluation. ``engine``: a :mod:`training.engines` engine (default: in this process);
    ``chunk_size`` default ``ceil(chips / 8)``; ``threads``: torch threads per chunk (default 1);
    ``overrides``: evaluate under other chip settings (:func:`load_run`).
    """
    from .run_config import RunConfig
    from .engines import InlineEngine, Task

    cfg = eval_config(RunConfig.load(Path(run_dir) / "config.json"), overrides)
    chips = chips or cfg.eval_chips
    chunks = chunk_chips(chips, chunk_size or max(1, math.ceil(chips / 8)))
    engine = engine or InlineEngine()
    tasks = [Task(ids[0], mc_chunk, (str(run_dir), ids, sigma, torch_device, threads or 1, overrides)) for ids in chunks]
    parts = []
    with Progress(chips, "evaluate: chips", quiet=not progress) as bar:
        for res in engine.run(tasks):
            if not res.ok:
                raise RuntimeError(f"chips {res.key}..: {res.error}")
            parts.append(res.value)
            bar.update(len(res.value.chip_ids))
    return merge_partials(parts)


def parse_overrides(items: Sequence[str]) -> dict:
    """``["noise=crossbar", "adc_bits=6"]`` -> RunConfig field values, typed and checked as a config
    file's are (a ``ConfigError`` names a malformed item or a field evaluation may not change)."""
    import dataclasses

    from .run_config import ConfigError, RunConfig

    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected FIELD=VALUE")
        if key not in EVAL_OVERRIDES:
            raise ConfigError(f"--set {key}: evaluation cannot change it (allowed: {', '.join(sorted(EVAL_OVERRIDES))})")
        try:
            out[key] = field_type(fields[key])(value.strip())
        except (ValueError, TypeError) as e:
            raise ConfigError(f"--set {item!r}: {e}") from None
    RunConfig().replace(**out)  # validates the values (ConfigError)
    return out


def _write_json(path: Path, obj: dict) -> None:
    """Write JSON all-or-nothing (a temporary file beside it, then a rename)."""
    import json

    from cimsim.io import write_outputs

    write_outputs({path: json.dumps(obj, indent=1) + "\n"})


def main(argv: list[str] | None = None) -> int:
    """``python -m training.evaluate --run DIR [--chips N] [--engine local|ray] ...`` (see :func:`evaluate_run`)."""
    from .run_config import ConfigError
    from .data import DataError
    from .engines import EngineError, make_engine
    from .runfolder import RunFolderError, check_output_file
    from .variation import VariationError
    from cimsim.crossbar.circuit import CircuitNotConverged
    from cimsim.device.model import DeviceModelError

    p = Parser(prog="python -m training.evaluate",
                description="Monte Carlo test accuracy of a finished run folder, chips fanned out to an engine.")
    p.add_argument("--run", required=True, help="finished run folder (config.json, best.pt)")
    p.add_argument("--chips", type=int, default=None, help="chips (default: the run's eval_chips)")
    p.add_argument("--sigma", type=float, default=None, help="variation at test (default: the run's eval sigma)")
    p.add_argument("--chunk-size", type=int, default=None, help="chips per task (default ceil(chips / 8))")
    p.add_argument("--torch-device", choices=("auto", "cpu", "cuda"), default=None,
                   help="device of the chips (default: the run's); CPU and CUDA chips differ")
    p.add_argument("--engine", choices=("local", "ray"), default="local")
    p.add_argument("--workers", type=int, default=1, help="local engine: worker processes (0: in this process)")
    p.add_argument("--address", default=None, help="ray engine: cluster address; default: a local Ray for this run")
    p.add_argument("--cpus-per-chunk", type=float, default=None, help="CPUs (and torch threads) per chunk (default 1)")
    p.add_argument("--gpus-per-chunk", type=float, default=0.0, help="ray engine: GPUs per chunk, fractions allowed")
    p.add_argument("--retries", type=int, default=2, help="retries of a chunk whose worker died (default 2)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="evaluate under another chip setting, e.g. --set noise=crossbar --set adc_bits=6 "
                        "--set read_time_s=86400 (repeatable; fields: " + ", ".join(sorted(EVAL_OVERRIDES)) + ")")
    p.add_argument("--out", default=None, help="write metrics and per-chip accuracies to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress and no summary line")
    ns = p.parse_args(argv)
    engine = None
    try:
        if ns.workers < 0 or ns.retries < 0 or (ns.chips is not None and ns.chips < 1) or \
                (ns.chunk_size is not None and ns.chunk_size < 1):
            raise ConfigError("--workers and --retries must be >= 0, --chips and --chunk-size >= 1")
        if ns.sigma is not None and not (math.isfinite(ns.sigma) and ns.sigma >= 0):
            raise ConfigError(f"--sigma must be a finite number >= 0, got {ns.sigma}")
        if not (Path(ns.run) / "best.pt").is_file() or not (Path(ns.run) / "config.json").is_file():
            raise UsageError(f"--run {ns.run}: no best.pt and config.json (not a finished training run folder)")
        if ns.out:
            check_output_file(Path(ns.out))
        overrides = parse_overrides(ns.set)
        load_run(ns.run, ns.torch_device, overrides, calibrate=False)  # the run loads: fail here, not in a task
        engine = make_engine(ns.engine, workers=ns.workers, retries=ns.retries, address=ns.address,
                             cpus_per_task=ns.cpus_per_chunk, gpus_per_task=ns.gpus_per_chunk)
        threads = max(1, round(ns.cpus_per_chunk or 1))
        res = evaluate_run(ns.run, ns.chips, ns.sigma, engine, ns.chunk_size, ns.torch_device, threads, overrides,
                           progress=not ns.quiet)
    except (UsageError, ConfigError, EngineError, RunFolderError, DataError, VariationError, DeviceModelError,
            CircuitNotConverged) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"{p.prog}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if engine is not None:
            engine.close()
    m = res.metrics
    if not ns.quiet:
        print(f"{ns.run}: test acc {100 * m['acc_mean']:.2f} +- {100 * m['acc_std']:.2f} % over {m['chips']} chips, "
              f"EKL {m['ekl']:.4f}", file=sys.stderr)
    if ns.out:
        try:
            _write_json(Path(ns.out), {**m, "run": str(ns.run), "acc_per_chip": res.acc_per_chip.tolist()})
        except OSError as e:
            print(f"{p.prog}: error: --out {ns.out}: cannot write ({e.strerror})", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write-verify budgets of trained models: ``python -m training.writeverify_budget``.

Example::

    python -m training.writeverify_budget --run runs/lenet_plain --run runs/lenet_nit --policies none,full,selective \\
        --tolerances 0.5,1,2 --fractions 0.01,0.05,0.1,0.25,0.5 --chips 20 --sensitivity second \\
        --algorithm ispp --out results/wv_lenet

Every run folder (``config.json`` + ``best.pt``) is programmed (:mod:`training.programming`) under
every policy of :func:`training.programming.policies_grid`, ``--chips`` Monte Carlo chips per row;
chip ``i`` of a run with seed ``s`` is seeded from ``cimsim.seeds.chip_seed(s, i)`` for every policy.
Units: ``--tolerances`` in uS (``--relative``: a fraction of the target), ``--t-read`` in s,
accuracies as fractions, energy in J, latency in s. Device: ``--device-model``, default each run's
own with ``sigma_scale`` = its eval sigma (times it for ``sigma_mode = multiply``); ``--sigma`` sets it.

Writes in ``--out``, all or nothing (:func:`cimsim.io.write_outputs`): ``writeverify.csv`` (one row
per run and policy), ``layers.csv``, ``budget.csv`` (per run: the least energy and latency whose
mean accuracy reaches ``--target-acc`` or ``--target-drop``), two PNG plots and ``config.json``.
Exit status: 0 done; 2 bad input (one line on stderr, nothing written). Progress goes to stderr.

Policies, options, defaults and output columns: docs/design.md,
section 'Write-verify budgets (training/writeverify_budget.py)'.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import pickle
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cimsim.progress import Progress
from cimsim.crossbar.config import ConfigError as CrossbarConfigError
from cimsim.crossbar.config import CrossbarConfig
from cimsim.cost import CostConfig, CostError
from cimsim.device.model import DeviceModel, DeviceModelError, load_device
from cimsim.io import write_outputs
from cimsim.seeds import SENSITIVITY, chip_seeds, run_stream_seed
from cimsim.writeverify import (
    ALGORITHMS,
    RELAXATION_MODES,
    WriteVerifyError,
    default_pulse_model,
)

from .run_config import ConfigError, RunConfig
from .data import DataError, check_available
from .models import build_model
from .programming import (
    POLICIES,
    SCOPES,
    SENSITIVITIES,
    PolicyResult,
    ProgrammingError,
    ProgrammingSetup,
    evaluate_policy,
    ideal_weights,
    policies_grid,
    policy_fields,
    prepare_layers,
    selection_masks,
    sensitivities,
    weights_accuracy,
)
from .evaluate import batchnorm_layers, recalibration_images
from .precision import autocast
from .runfolder import RunFolderError, check_output_dir
from .variation import float_state
from .cli import EXIT_USAGE, Parser, UsageError, resolve_torch_device
from .data import load_splits

TABLE_FIELDS = ["run", "method", "policy", "sensitivity", "tolerance", "tolerance_unit", "fraction", "chips",
                "acc_mean", "acc_std", "acc_ci95_low", "acc_ci95_high", "acc_min", "energy_J", "latency_s", "pulses",
                "reads", "failed_cells", "cells", "verified_cells"]
LAYER_FIELDS = ["run", "method", "policy", "sensitivity", "tolerance", "tolerance_unit", "fraction", "layer",
                "weights", "energy_J", "latency_s", "pulses", "reads", "failed_cells", "cells", "verified_cells"]
BUDGET_FIELDS = ["run", "method", "clean_acc", "quant_acc", "acc_none", "target_acc", "min_energy_J",
                 "energy_policy", "energy_sensitivity", "energy_tolerance", "energy_tolerance_unit", "energy_fraction",
                 "energy_acc", "energy_latency_s", "min_latency_s", "latency_policy", "latency_sensitivity",
                 "latency_tolerance", "latency_tolerance_unit", "latency_fraction", "latency_acc", "latency_energy_J"]
NOT_REACHED = "not reached"


# ------------------------------------------------------------------------- options
@dataclass(frozen=True)
class Options:
    """Validated command-line options (units: tolerances in siemens unless relative, seconds)."""

    runs: tuple[Path, ...]
    policies: tuple[str, ...]
    tolerances: tuple[float, ...]
    relative: bool
    fractions: tuple[float, ...]
    chips: int
    sensitivity: tuple[str, ...]
    scope: str
    algorithm: str
    device_model: str | None
    sigma: float | None
    t_read_s: float | None
    max_pulses: int | None
    relaxation: str
    crossbar: CrossbarConfig
    cost: CostConfig
    target_acc: float | None
    target_drop: float
    sens_batches: int
    sens_batch_size: int
    test_limit: int | None
    torch_device: str
    out: Path
    quiet: bool
    verbose: bool
    bn_recal_images: int = 0


def _split(text: str, name: str) -> list[str]:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise UsageError(f"--{name} is empty")
    return items


def _unique(items: list) -> tuple:
    return tuple(dict.fromkeys(items))


def parse_choices(text: str, name: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """Comma list of names, each in ``allowed`` (duplicates dropped, order kept)."""
    items = _split(text, name)
    for it in items:
        if it not in allowed:
            raise UsageError(f"unknown value {it!r} in --{name} (choose from {', '.join(allowed)})")
    return _unique(items)


def _float(text: str, name: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise UsageError(f"bad --{name} value {text!r}: not a number") from None
    if not math.isfinite(v):
        raise UsageError(f"bad --{name} value {text!r}: must be finite")
    return v


def parse_tolerances(text: str, relative: bool) -> tuple[float, ...]:
    """Tolerances in siemens (given in uS), or fractions of the target in (0, 1) when ``relative``."""
    vals = [_float(t, "tolerances") for t in _split(text, "tolerances")]
    for v in vals:
        if v <= 0:
            raise UsageError(f"bad --tolerances value {v:g}: must be > 0")
        if relative and v >= 1:
            raise UsageError(f"bad --tolerances value {v:g}: a relative tolerance is a fraction of the target, < 1")
    return _unique([v if relative else v * 1e-6 for v in vals])


def parse_fractions(text: str) -> tuple[float, ...]:
    """Fractions of weights to verify, each in (0, 1]."""
    vals = [_float(t, "fractions") for t in _split(text, "fractions")]
    for v in vals:
        if not 0 < v <= 1:
            raise UsageError(f"bad --fractions value {v:g}: must lie in (0, 1]")
    return _unique(vals)


def parse_max_pulses(text: str) -> int | None:
    """Pulse limit per cell: an integer >= 1, or ``none`` for no limit."""
    if str(text).strip().lower() == "none":
        return None
    try:
        v = int(text)
    except ValueError:
        raise UsageError(f"bad --max-pulses {text!r}: an integer >= 1 or 'none'") from None
    if v < 1:
        raise UsageError(f"bad --max-pulses {v}: must be >= 1 (or 'none' for no limit)")
    return v


def _crossbar(ns: argparse.Namespace) -> CrossbarConfig:
    base = CrossbarConfig.load(ns.crossbar_config) if ns.crossbar_config else CrossbarConfig()
    changes = {k: v for k, v in (("weight_bits", ns.weight_bits), ("bits_per_cell", ns.bits_per_cell)) if v is not None}
    return base.replace(**changes) if changes else base


def _cost(path: str | None) -> CostConfig:
    if not path:
        return CostConfig()
    try:
        return CostConfig.from_json(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"--cost-config {path}: no such file") from None
    except OSError as e:
        raise UsageError(f"--cost-config {path}: cannot read ({e.strerror})") from None
    except (CostError, TypeError, ValueError) as e:
        raise UsageError(f"--cost-config {path}: not a CostConfig JSON ({e})") from None


def options_from_args(ns: argparse.Namespace) -> Options:
    """Check every option; raises :class:`UsageError` (or a config/device error) with one line."""
    if ns.target_acc is not None and ns.target_drop is not None:
        raise UsageError("give --target-acc or --target-drop, not both")
    if ns.target_acc is not None and not (0 < ns.target_acc <= 1 and math.isfinite(ns.target_acc)):
        raise UsageError(f"bad --target-acc {ns.target_acc}: an accuracy as a fraction in (0, 1], e.g. 0.95")
    drop = 1.0 if ns.target_drop is None else ns.target_drop
    if not (math.isfinite(drop) and 0 <= drop <= 100):
        raise UsageError(f"bad --target-drop {drop}: percentage points in [0, 100]")
    for name in ("chips", "sens_batches", "sens_batch_size"):
        if getattr(ns, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(ns, name)}")
    if ns.test_limit is not None and ns.test_limit < 1:
        raise UsageError(f"--test-limit must be >= 1, got {ns.test_limit}")
    if ns.bn_recal_images < 0:
        raise UsageError(f"--bn-recal-images must be >= 0, got {ns.bn_recal_images}")
    max_pulses = parse_max_pulses(ns.max_pulses)
    if ns.t_read is not None and not (math.isfinite(ns.t_read) and ns.t_read >= 0):
        raise UsageError(f"--t-read must be a time >= 0 s, got {ns.t_read}")
    if ns.sigma is not None and not (math.isfinite(ns.sigma) and ns.sigma >= 0):
        raise UsageError(f"--sigma must be >= 0, got {ns.sigma}")
    out = Path(ns.out)
    try:
        check_output_dir(out)
    except RunFolderError as e:
        raise UsageError(str(e)) from None
    return Options(
        runs=tuple(Path(r) for r in ns.run), policies=parse_choices(ns.policies, "policies", POLICIES),
        tolerances=parse_tolerances(ns.tolerances, ns.relative), relative=ns.relative,
        fractions=parse_fractions(ns.fractions), chips=ns.chips,
        sensitivity=parse_choices(ns.sensitivity, "sensitivity", SENSITIVITIES), scope=ns.selection,
        algorithm=ns.algorithm, device_model=ns.device_model, sigma=ns.sigma, t_read_s=ns.t_read,
        max_pulses=max_pulses, relaxation=ns.relaxation,
        crossbar=_crossbar(ns), cost=_cost(ns.cost_config), target_acc=ns.target_acc, target_drop=drop,
        sens_batches=ns.sens_batches, sens_batch_size=ns.sens_batch_size, test_limit=ns.test_limit,
        torch_device=ns.torch_device, out=out, quiet=ns.quiet, verbose=ns.verbose,
        bn_recal_images=ns.bn_recal_images,
    )


# ----------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class RunSpec:
    """A run folder checked before any work: its config, the device and read time it is programmed with."""

    path: Path
    cfg: RunConfig
    device_model: DeviceModel
    t_read_s: float

    @property
    def label(self) -> str:
        return str(self.path)


def run_device(cfg: RunConfig, opts: Options) -> DeviceModel:
    """The device a run is programmed on (see the module docstring for the sigma rule)."""
    if opts.device_model is None:
        dev = load_device(cfg.device_model)
        if opts.sigma is not None:
            return dev.replace(sigma_scale=opts.sigma)
        sig = cfg.eval_sigma_value
        multiply = cfg.noise in ("device", "crossbar") and cfg.sigma_mode == "multiply"
        return dev.replace(sigma_scale=dev.sigma_scale * sig if multiply else sig)
    dev = load_device(opts.device_model)
    return dev if opts.sigma is None else dev.replace(sigma_scale=opts.sigma)


def check_run(path: Path, opts: Options) -> RunSpec:
    """A finished run folder with ``config.json`` and ``best.pt`` whose data set is on disk."""
    if not path.is_dir():
        raise UsageError(f"--run {path}: no such run folder")
    if not (path / "config.json").is_file():
        raise UsageError(f"--run {path}: no config.json (not a training run folder)")
    if not (path / "best.pt").is_file():
        raise UsageError(f"--run {path}: no best.pt (the run has no checkpoint)")
    cfg = RunConfig.load(path / "config.json")
    if opts.test_limit is not None:
        cfg = cfg.replace(test_limit=opts.test_limit)
    check_available(cfg.dataset, cfg.data_dir)
    dev = run_device(cfg, opts)
    dev.level_conductances(opts.crossbar.cell_levels)  # the cell's levels exist on this device
    t_read = cfg.read_time_s if opts.t_read_s is None else opts.t_read_s
    return RunSpec(path, cfg, dev, float(t_read))


def load_model(spec: RunSpec, input_shape: tuple[int, int, int], num_classes: int,
               device: torch.device) -> torch.nn.Module:
    """The run's model with its ``best.pt`` weights, in eval mode on ``device``."""
    cfg = spec.cfg
    model = build_model(cfg.model, input_shape, num_classes, with_heads=cfg.uses_heads,
                        linear_init=cfg.linear_init)
    try:
        state = torch.load(spec.path / "best.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(float_state(state["model"]))  # a crossbar run's checkpoint holds more
    except (pickle.UnpicklingError, EOFError, RuntimeError, KeyError, OSError, ValueError, TypeError) as e:
        raise UsageError(f"--run {spec.path}: cannot load best.pt ({str(e).splitlines()[0]})") from None
    return model.to(device).eval()


# ----------------------------------------------------------------------- evaluation
def _log(msg: str, opts: Options) -> None:
    if not opts.quiet:
        print(msg, file=sys.stderr, flush=True)


def table_row(spec: RunSpec, res: PolicyResult) -> dict:
    m = res.metrics
    return {
        "run": spec.label, "method": spec.cfg.method, **policy_fields(res.policy), "chips": m["chips"],
        "acc_mean": m["acc_mean"], "acc_std": m["acc_std"], "acc_ci95_low": m["acc_ci95_low"],
        "acc_ci95_high": m["acc_ci95_high"], "acc_min": m["acc_min"], "energy_J": res.energy_J,
        "latency_s": res.latency_s, "pulses": res.pulses, "reads": res.reads, "failed_cells": res.failed,
        "cells": res.cells, "verified_cells": res.verified,
    }


def layer_rows(spec: RunSpec, res: PolicyResult, sizes: dict[str, int]) -> list[dict]:
    base = {"run": spec.label, "method": spec.cfg.method, **policy_fields(res.policy)}
    return [{**base, "layer": n, "weights": sizes[n], "energy_J": c["energy_J"], "latency_s": c["latency_s"],
             "pulses": c["pulses"], "reads": c["reads"], "failed_cells": c["failed"], "cells": c["cells"],
             "verified_cells": c["verified"]} for n, c in res.layers.items()]


@dataclass
class RunOutcome:
    """Everything one run contributes to the outputs."""

    spec: RunSpec
    clean_acc: float
    quant_acc: float
    rows: list[dict]
    layer_rows: list[dict]
    setup: dict


def evaluate_run(spec: RunSpec, opts: Options) -> RunOutcome:
    """Every policy of the sweep on one run (progress on stderr)."""
    cfg = spec.cfg
    dev = resolve_torch_device(opts.torch_device)
    train, _, test = load_splits(cfg)
    model = load_model(spec, train.input_shape, train.num_classes, dev)
    test = test.to(dev)
    setup = ProgrammingSetup(device_model=spec.device_model, crossbar=opts.crossbar, algorithm=opts.algorithm,
                             t_read_s=spec.t_read_s, max_pulses=opts.max_pulses, cost=opts.cost,
                             relaxation=opts.relaxation)
    layers = prepare_layers(model, setup)
    bs = cfg.eval_batch_size
    with autocast(cfg.precision, dev):  # the run's own compute precision (training.precision)
        clean = weights_accuracy(model, None, test, bs, dev)
        quant = weights_accuracy(model, ideal_weights(layers, setup), test, bs, dev)
    n_cells = sum(la.targets_S.size for la in layers)
    if opts.relative and setup.levels_S[0] <= 0:
        _log(f"{spec.label}: warning: relative tolerance and a 0 S lowest level: those cells have an empty window "
             "and can only fail (use an absolute tolerance in uS for this device)", opts)
    _log(f"{spec.label}: {cfg.model}/{cfg.method}, {len(layers)} layers, {n_cells} cells on {spec.device_model.name} "
         f"(sigma_scale {spec.device_model.sigma_scale:g}); clean acc {clean:.4f}, quantized {quant:.4f}", opts)
    sens = {}
    if "selective" in opts.policies:
        for kind in opts.sensitivity:
            t0 = time.time()
            sens[kind] = sensitivities(model, train, kind, opts.sens_batches, opts.sens_batch_size,
                                       run_stream_seed(cfg.seed, SENSITIVITY), dev)
            _log(f"{spec.label}: {kind}-order sensitivity from {opts.sens_batches} training batches "
                 f"of {opts.sens_batch_size} in {time.time() - t0:.1f} s", opts)
    seeds = chip_seeds(cfg.seed, opts.chips)
    recal_x = (recalibration_images(train, opts.bn_recal_images, dev)
               if opts.bn_recal_images and batchnorm_layers(model) else None)
    if opts.bn_recal_images:
        _log(f"{spec.label}: per-chip BatchNorm recalibration: "
             f"{opts.bn_recal_images if recal_x is not None else 0} training images per chip"
             f"{'' if recal_x is not None else ' (the model has no BatchNorm)'}", opts)
    grid = list(policies_grid(opts.policies, opts.tolerances, opts.fractions, opts.sensitivity, opts.relative))
    rows, lrows = [], []
    sizes = {la.name: la.n_weights for la in layers}
    pace = Progress(len(grid), spec.label, quiet=True)  # the time left, shown on each setting's line
    for j, pol in enumerate(grid):
        t0 = time.time()
        masks = selection_masks(sens[pol.sensitivity], pol.fraction, opts.scope) if pol.kind == "selective" else None
        prefix = f"{spec.label} [{j + 1}/{len(grid)}, {100 * (j + 1) // len(grid)} %] {pol.label()}"
        with autocast(cfg.precision, dev):
            res = evaluate_policy(model, layers, setup, pol, test, seeds, masks, bs, dev,
                                  progress=prefix if opts.verbose else None, recal_x=recal_x)
        rows.append(table_row(spec, res))
        lrows.extend(layer_rows(spec, res, sizes))
        pace.update()
        left = f", {pace.left()}" if pace.left() else ""
        _log(f"{prefix}: acc {res.metrics['acc_mean']:.4f} +- {res.metrics['acc_std']:.4f}, "
             f"{res.energy_J:.3e} J, {res.latency_s:.3e} s, {res.failed:.0f} failed cells "
             f"({opts.chips} chips, {time.time() - t0:.1f} s{left})", opts)
    info = {"device": spec.device_model.name, "sigma_scale": spec.device_model.sigma_scale, "t_read_s": spec.t_read_s,
            "levels_S": setup.levels_S.tolist(), "seed": cfg.seed, "chip_seeds": seeds,
            "layers": {la.name: {"shape": list(la.shape), "cells": int(la.targets_S.size)} for la in layers},
            "clean_acc": clean, "quant_acc": quant, "method": cfg.method, "model": cfg.model, "dataset": cfg.dataset,
            "test_images": len(test)}
    return RunOutcome(spec, clean, quant, rows, lrows, info)


# --------------------------------------------------------------------------- budget
def target_for(outcome: RunOutcome, opts: Options) -> float:
    """Target accuracy (fraction): ``--target-acc``, or the clean accuracy minus ``--target-drop`` points."""
    return opts.target_acc if opts.target_acc is not None else outcome.clean_acc - opts.target_drop / 100.0


def _cheapest(rows: list[dict], target: float, key: str, other: str) -> dict | None:
    """Row with the least ``key`` (then ``other``) among rows whose mean accuracy reaches ``target``."""
    ok = [r for r in rows if r["acc_mean"] >= target - 1e-12]
    return min(ok, key=lambda r: (r[key], r[other])) if ok else None


def budget_row(outcome: RunOutcome, target: float) -> dict:
    """One row of ``budget.csv`` (see the module docstring)."""
    rows = outcome.rows
    none = [r for r in rows if r["policy"] == "none"]
    row = {k: "" for k in BUDGET_FIELDS}
    row.update(run=outcome.spec.label, method=outcome.spec.cfg.method, clean_acc=outcome.clean_acc,
               quant_acc=outcome.quant_acc, acc_none=none[0]["acc_mean"] if none else "", target_acc=target)
    for prefix, key, other in (("energy", "energy_J", "latency_s"), ("latency", "latency_s", "energy_J")):
        best = _cheapest(rows, target, key, other)
        col = "min_energy_J" if prefix == "energy" else "min_latency_s"
        if best is None:
            row[col] = NOT_REACHED
            continue
        row[col] = best[key]
        row[f"{prefix}_{'latency_s' if prefix == 'energy' else 'energy_J'}"] = best[other]
        for f in ("policy", "sensitivity", "tolerance", "tolerance_unit", "fraction"):
            row[f"{prefix}_{f}"] = best[f]
        row[f"{prefix}_acc"] = best["acc_mean"]
    return row


def format_budget(rows: list[dict]) -> str:
    """Human-readable budget table (accuracies in %)."""
    def setting(r: dict, p: str) -> str:
        if r[f"min_{'energy_J' if p == 'energy' else 'latency_s'}"] == NOT_REACHED:
            return NOT_REACHED
        pol = r[f"{p}_policy"]
        if pol == "none":
            return "none"
        tol = f"{r[f'{p}_tolerance']:g}{' uS' if r[f'{p}_tolerance_unit'] == 'uS' else ' rel'}"
        sel = f" {r[f'{p}_sensitivity']} {100 * r[f'{p}_fraction']:g}%" if pol == "selective" else ""
        return f"{pol}{sel} tol {tol}"

    header = (f"{'run':<28} {'method':<8} {'clean%':>7} {'quant%':>7} {'none%':>7} {'target%':>8} "
              f"{'min energy J':>13} {'setting':<32} {'min latency s':>13} setting")
    lines = [header]
    for r in rows:
        def pct(v): return f"{100 * v:.2f}" if v != "" else "-"
        def val(v): return v if isinstance(v, str) else f"{v:.4g}"
        lines.append(f"{r['run'][-28:]:<28} {r['method']:<8} {pct(r['clean_acc']):>7} {pct(r['quant_acc']):>7} "
                     f"{pct(r['acc_none']):>7} {pct(r['target_acc']):>8} {val(r['min_energy_J']):>13} "
                     f"{setting(r, 'energy'):<32} {val(r['min_latency_s']):>13} {setting(r, 'latency')}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- files
def csv_text(rows: list[dict], fields: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _pareto(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points of the front: cheapest first, each more accurate than every cheaper one."""
    order = np.lexsort((-y, x))
    keep, best = [], -np.inf
    for i in order:
        if y[i] > best:
            keep.append(i)
            best = y[i]
    return x[keep], y[keep]


def plot_png(outcomes: list[RunOutcome], key: str, xlabel: str) -> bytes:
    """PNG of accuracy (%) against ``key`` (energy_J or latency_s, log scale), one colour per run.

    Settings with zero cost (possible for one-shot programming from a 0 S erased state) cannot
    go on a log axis; they are drawn as a dashed horizontal line at their accuracy.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for k, oc in enumerate(outcomes):
        color = f"C{k % 10}"
        x = np.array([r[key] for r in oc.rows], dtype=float)
        y = 100 * np.array([r["acc_mean"] for r in oc.rows], dtype=float)
        label = f"{oc.spec.path.name} ({oc.spec.cfg.method})"
        pos = x > 0
        if pos.any():
            ax.scatter(x[pos], y[pos], s=14, color=color, alpha=0.5)
            fx, fy = _pareto(x[pos], y[pos])
            ax.plot(fx, fy, "-o", ms=3, color=color, label=label)
        for yy in y[~pos]:
            ax.axhline(yy, ls="--", lw=1, color=color, label=None if pos.any() else label)
        ax.axhline(100 * oc.clean_acc, ls=":", lw=1, color=color)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("write-verify budget (dotted: clean; dashed: zero-cost setting)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def config_record(opts: Options, outcomes: list[RunOutcome], argv: list[str]) -> dict:
    """``config.json``: options, per-run settings, mapping, cost and pulse models, seed rule."""
    return {
        "command": "python -m training.writeverify_budget " + " ".join(argv),
        "policies": list(opts.policies), "tolerances": list(opts.tolerances),
        "tolerance_unit": "fraction of target" if opts.relative else "S",
        "fractions": list(opts.fractions), "chips": opts.chips, "sensitivity": list(opts.sensitivity),
        "selection_scope": opts.scope, "algorithm": opts.algorithm, "device_model": opts.device_model,
        "sigma": opts.sigma, "t_read_s": opts.t_read_s, "max_pulses": opts.max_pulses, "relaxation": opts.relaxation,
        "target_acc": opts.target_acc, "target_drop_points": opts.target_drop,
        "sensitivity_batches": opts.sens_batches, "sensitivity_batch_size": opts.sens_batch_size,
        "test_limit": opts.test_limit, "bn_recal_images_per_chip": opts.bn_recal_images,
        "crossbar": {k: getattr(opts.crossbar, k) for k in ("weight_bits", "bits_per_cell", "slice_align", "weight_scale")},
        "cost": opts.cost.to_dict(), "pulse_model": default_pulse_model(opts.algorithm).to_dict(),
        "seed_rule": "chip i of a run with seed s: cimsim.seeds.chip_seed(s, i); layer l of that chip: "
                     "cimsim.seeds.layer_seed(chip seed, l); same chips for every policy",
        "runs": {oc.spec.label: oc.setup for oc in outcomes},
    }


def build_outputs(opts: Options, outcomes: list[RunOutcome], argv: list[str]) -> tuple[dict[Path, bytes | str], str]:
    """All output files (path -> content) and the printed budget table."""
    rows = [r for oc in outcomes for r in oc.rows]
    lrows = [r for oc in outcomes for r in oc.layer_rows]
    budget = [budget_row(oc, target_for(oc, opts)) for oc in outcomes]
    out = opts.out
    files: dict[Path, bytes | str] = {
        out / "writeverify.csv": csv_text(rows, TABLE_FIELDS),
        out / "layers.csv": csv_text(lrows, LAYER_FIELDS),
        out / "budget.csv": csv_text(budget, BUDGET_FIELDS),
        out / "acc_vs_energy.png": plot_png(outcomes, "energy_J", "programming energy per model (J)"),
        out / "acc_vs_latency.png": plot_png(outcomes, "latency_s", "programming latency per model (s)"),
        out / "config.json": json.dumps(config_record(opts, outcomes, argv), indent=1) + "\n",
    }
    return files, format_budget(budget)


# ------------------------------------------------------------------------------ CLI
def make_parser(prog: str = "python -m training.writeverify_budget") -> argparse.ArgumentParser:
    p = Parser(prog=prog, description="Accuracy against write-verify energy and latency of trained models "
                                       "(one-shot, full and selective write-verify; see training/writeverify_budget.py).")
    p.add_argument("--run", action="append", required=True, help="run folder (repeat for several runs)")
    p.add_argument("--policies", default="none,full,selective", help="comma list of none, full, selective")
    p.add_argument("--tolerances", default="0.5,1,2", help="acceptance half-widths in uS (fractions with --relative)")
    p.add_argument("--relative", action="store_true", help="tolerances are fractions of the target conductance")
    p.add_argument("--fractions", default="0.01,0.05,0.1,0.25,0.5", help="selective: fractions of weights verified")
    p.add_argument("--chips", type=int, default=10, help="Monte Carlo chips per setting (default 10)")
    p.add_argument("--sensitivity", default="second", help="selective: first, second or first,second (default second)")
    p.add_argument("--selection", choices=SCOPES, default="global", help="rank weights over the model or per layer")
    p.add_argument("--sens-batches", type=int, default=16, help="training batches for the sensitivity (default 16)")
    p.add_argument("--sens-batch-size", type=int, default=32, help="their size (default 32)")
    p.add_argument("--algorithm", choices=ALGORITHMS, default="ispp", help="write-verify algorithm (default ispp)")
    p.add_argument("--device-model", default=None, help="preset or JSON path (default: each run's device_model)")
    p.add_argument("--sigma", type=float, default=None, help="device sigma_scale (default: the run's eval sigma)")
    p.add_argument("--t-read", type=float, default=None, help="read time after programming, s (default: the run's)")
    p.add_argument("--max-pulses", default="100", help="pulse limit per cell, or 'none' (default 100)")
    p.add_argument("--relaxation", choices=RELAXATION_MODES, default="increment", help="see cimsim.writeverify.relax")
    p.add_argument("--crossbar-config", default=None, help="CrossbarConfig TOML/JSON for the mapping")
    p.add_argument("--weight-bits", type=int, default=None, help="weight magnitude bits (default 8)")
    p.add_argument("--bits-per-cell", type=int, default=None, help="bits per cell (default 2)")
    p.add_argument("--cost-config", default=None, help="CostConfig JSON (default: cimsim.cost defaults)")
    p.add_argument("--target-acc", type=float, default=None, help="target accuracy as a fraction, e.g. 0.95")
    p.add_argument("--target-drop", type=float, default=None, help="target = clean accuracy minus this many points "
                                                                       "(default 1)")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test images")
    p.add_argument("--torch-device", choices=("auto", "cpu", "cuda"), default="cpu", help="where inference runs")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--bn-recal-images", type=int, default=0,
                   help="per-chip BatchNorm recalibration: training images run through each programmed chip "
                        "before it is tested (0: off; default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--verbose", action="store_true", help="one progress line per chip")
    return p


USAGE_ERRORS = (UsageError, ConfigError, CrossbarConfigError, DataError, DeviceModelError, WriteVerifyError,
                CostError, ProgrammingError)


def main(argv: list[str] | None = None, prog: str = "python -m training.writeverify_budget") -> int:
    """Run the CLI; returns the exit code (0, or 2 for bad input with nothing written)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = make_parser(prog)
    ns = p.parse_args(argv)
    try:
        opts = options_from_args(ns)
        specs = [check_run(r, opts) for r in opts.runs]
        resolve_torch_device(opts.torch_device)
        t0 = time.time()
        outcomes = [evaluate_run(s, opts) for s in specs]
        files, table = build_outputs(opts, outcomes, argv)
        try:
            write_outputs(files)
        except OSError as e:
            raise UsageError(f"--out {opts.out}: cannot write ({e.strerror or e})") from None
    except USAGE_ERRORS as e:
        print(f"{prog}: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return EXIT_USAGE
    print(table)
    _log(f"done in {time.time() - t0:.1f} s -> {opts.out}", opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training loop, checkpoints, resume, and the ``python -m training.train`` command.

Example::

    python -m training.train --model lenet --dataset fashion-mnist --method ovf --noise device \\
        --device-model device_models/rram1.json --sigma 0.2 --epochs 5 --out runs/lenet_ovf

A run works in ``<out>.partial/`` and renames it to ``<out>`` when complete: ``config.json`` /
``config.toml``, ``metrics.csv`` (one row per epoch), ``best.pt`` (best validation epoch),
``last.pt`` (full state, for ``--resume``), ``eval.json`` (Monte Carlo test evaluation of
``best.pt``), ``chips.csv`` (accuracy per chip) and ``acc_hist.png``. The checkpoint is chosen on
a validation split of the training set, never the test set.

Exit status: 0 done; 2 bad options or missing files (one line on stderr, no folder created);
3 diverged (NaN/inf loss; the folder is completed with ``diverged.json``). The run is seeded at
its top and checkpoints its generator states, so ``--resume`` continues the exact same run.

Validation score, crossbar calibration and checkpoints: docs/design.md,
section 'Training runs (training/train.py)'.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from cimsim.crossbar.circuit import CircuitNotConverged
from cimsim.device.model import DeviceModelError

from .cli import EXIT_USAGE, Parser, UsageError, add_config_args, config_from_args, resolve_torch_device
from .run_config import ConfigError, RunConfig
from .data import DataError, check_available, load_splits
from .engines import one_line
from cimsim.seeds import SHUFFLE, TRAIN_NOISE, VALIDATION, chip_seed, run_stream_seed

from .evaluate import batchnorm_layers, clean_accuracy, converged, evaluate_mc, plot_histogram, recalibration_images
from .methods import MethodSpec, batch_loss
from .precision import autocast
from .runfolder import RunFolderError, RunLock, check_not_locked, check_output_dir, check_replaceable, write_marker
from .threads import set_threads
from .models import build_model
from .variation import VariationError, checkpoint_state, make_generator, make_variation

EXIT_DIVERGED = 3


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, loss: float):
        self.epoch, self.step, self.loss = epoch, step, loss
        super().__init__(f"training diverged: loss {loss} at epoch {epoch} step {step}; lower --lr or --sigma")



def save_atomic(obj, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: a killed run never leaves
    a truncated checkpoint (resume and the sweep's cell recovery read these)."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)

def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def check_options(cfg: RunConfig) -> None:
    """Data set present, noise backend buildable, torch device available; raises :class:`UsageError`."""
    try:
        check_available(cfg.dataset, cfg.data_dir)
        make_variation(cfg)
        resolve_torch_device(cfg.torch_device)
    except (DataError, VariationError, DeviceModelError) as e:
        raise UsageError(str(e)) from None


def check_run(cfg: RunConfig, out: Path, resume: bool, overwrite: bool = False) -> None:
    """Everything that can be checked before a folder is made; raises :class:`UsageError`.

    ``--overwrite`` replaces only a finished run folder (its ``.cimsim-run`` marker) that holds
    nothing but what a run writes (:func:`training.runfolder.check_replaceable`)."""
    check_options(cfg)
    try:
        check_output_dir(out)
        check_output_dir(partial_dir(out))
        if out.exists():
            if not overwrite:
                raise UsageError(f"{out} already exists; choose another --out or pass --overwrite (for a finished run)")
            check_replaceable(out)
        check_not_locked(partial_dir(out))
    except RunFolderError as e:
        raise UsageError(str(e)) from None
    work = partial_dir(out)
    if work.exists() and not resume:
        raise UsageError(f"{work} holds an unfinished run; pass --resume to continue it or remove it")


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def _write_metrics(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def run(cfg: RunConfig, out: str | Path, resume: bool = False, quiet: bool = False, overwrite: bool = False) -> dict:
    """Train and evaluate one run into folder ``out``; returns the final evaluation dict.

    overwrite: replace a finished run already in ``out`` (only once the new one is complete).

    Raises :class:`UsageError` before creating anything when the options cannot work, and
    :class:`Diverged` (after completing the folder with ``diverged.json``) on a NaN/inf loss.
    """
    out = Path(out)
    check_run(cfg, out, resume, overwrite)
    if cfg.threads:
        set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    dev = resolve_torch_device(cfg.torch_device)
    try:
        train, val, test = load_splits(cfg)
    except DataError as e:
        raise UsageError(str(e)) from None
    train_d, val_d = train.to(dev), val.to(dev)
    work = partial_dir(out)
    work.mkdir(parents=True, exist_ok=True)
    try:
        lock = RunLock(work).acquire()  # a second writer (a racing resume, a stray worker) stops here
    except RunFolderError as e:
        raise UsageError(str(e)) from None
    try:
        return _run_locked(cfg, out, work, resume, quiet, dev, train, val, test, train_d, val_d, lock)
    except BaseException as e:
        if not resume and not isinstance(e, Diverged) and not (work / "last.pt").exists():
            lock.release()  # failed before its first checkpoint (e.g. a chip's circuit solve): this
            shutil.rmtree(work, ignore_errors=True)  # call made the folder and nothing in it is worth keeping
        raise
    finally:
        lock.release()


def _load_checkpoint(path: Path, dev) -> dict:
    """A training checkpoint, or :class:`UsageError` naming the file when it cannot be read."""
    try:
        state = torch.load(path, map_location=dev, weights_only=False)
    except Exception as e:  # noqa: BLE001 - truncated, empty or foreign files raise many kinds
        raise UsageError(f"{path}: not a readable checkpoint ({one_line(e, 160)}); remove {path.parent} to start afresh") from None
    if not isinstance(state, dict) or not {"config", "model", "epoch"} <= set(state):
        raise UsageError(f"{path}: not a training checkpoint of training.train; remove {path.parent} to start afresh")
    return state


def _run_locked(cfg, out, work, resume, quiet, dev, train, val, test, train_d, val_d, lock) -> dict:
    variation = make_variation(cfg)
    model = variation.prepare(build_model(cfg.model, train.input_shape, train.num_classes, with_heads=cfg.uses_heads,
                                          linear_init=cfg.linear_init).to(dev))
    spec = MethodSpec.from_config(cfg)
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr_value, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr_value, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs) if cfg.scheduler == "cosine" else None
    shuffle_gen = torch.Generator().manual_seed(run_stream_seed(cfg.seed, SHUFFLE))
    noise_gen = make_generator(run_stream_seed(cfg.seed, TRAIN_NOISE), dev)
    val_seed = run_stream_seed(cfg.seed, VALIDATION)
    eval_sigma = cfg.eval_sigma_value

    start_epoch, best_score, history = 0, -math.inf, []
    ck = work / "last.pt"
    if resume and ck.exists():
        state = _load_checkpoint(ck, dev)
        try:
            saved = RunConfig.from_dict(state["config"])
        except ConfigError as e:
            raise UsageError(f"{ck}: {e}") from None
        # threads and the data folder do not change what is computed; the torch device does (its
        # generators' states do not carry over), so it must match like every other field
        if saved.replace(threads=cfg.threads, data_dir=cfg.data_dir) != cfg:
            raise UsageError(f"{work}: the unfinished run was made with a different config; resume with the same options")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state["scheduler"] is not None:
            sched.load_state_dict(state["scheduler"])
        shuffle_gen.set_state(state["shuffle_gen"].cpu())
        noise_gen.set_state(state["noise_gen"].cpu())  # generator states are CPU byte tensors
        torch.set_rng_state(state["torch_rng"].cpu())
        start_epoch, best_score, history = state["epoch"] + 1, state["best_score"], state["history"]
        _log(f"resuming {work} at epoch {start_epoch + 1}/{cfg.epochs}", quiet)
    else:
        cfg.save(work)
        variation.calibrate(model, train_d, cfg.batch_size)  # crossbar: input clips and ADC ranges
    write_marker(work)

    n, bs = len(train_d), cfg.batch_size
    steps = max(1, math.ceil(n / bs))
    t_run = time.time()
    try:
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            t0, loss_sum, correct, seen, last_print = time.time(), 0.0, 0, 0, time.time()
            perm = torch.randperm(n, generator=shuffle_gen).to(dev)
            for step in range(steps):
                idx = perm[step * bs : (step + 1) * bs]
                x, y = train_d.batch(idx, dev)
                with autocast(cfg.precision, dev):
                    loss, logits = batch_loss(spec, model, x, y, variation, noise_gen)
                if not torch.isfinite(loss):
                    raise Diverged(epoch + 1, step + 1, float(loss.detach()))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += float(loss.detach()) * len(y)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
                if not quiet and (time.time() - last_print > 5 or step + 1 == steps):
                    last_print = time.time()
                    _log(f"epoch {epoch + 1}/{cfg.epochs} step {step + 1}/{steps} loss {loss_sum / seen:.4f} "
                         f"acc {correct / seen:.4f} {time.time() - t0:.1f} s", quiet)
            if sched is not None:
                sched.step()
            variation.calibrate(model, train_d, cfg.batch_size)  # the weights moved: re-fit the ADC ranges
            train_time = time.time() - t0
            with autocast(cfg.precision, dev):
                clean_val = clean_accuracy(model, val_d, cfg.eval_batch_size, dev)
                noisy_val = evaluate_mc(model, variation, val_d, eval_sigma, cfg.val_chips, val_seed,
                                        cfg.eval_batch_size, dev).metrics["acc_mean"]
            score = noisy_val
            is_best = score > best_score
            if is_best:
                best_score = score
                save_atomic({"model": checkpoint_state(model), "epoch": epoch + 1}, work / "best.pt")
            history.append({
                "epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                "val_acc_clean": clean_val, "val_acc_noisy": noisy_val, "best": int(is_best),
                "lr": opt.param_groups[0]["lr"], "epoch_time_s": round(train_time, 3),
            })
            _write_metrics(work / "metrics.csv", history)
            save_atomic({
                "config": cfg.to_dict(), "model": checkpoint_state(model), "optimizer": opt.state_dict(),
                "scheduler": None if sched is None else sched.state_dict(), "epoch": epoch,
                "best_score": best_score, "history": history, "shuffle_gen": shuffle_gen.get_state(),
                "noise_gen": noise_gen.get_state(), "torch_rng": torch.get_rng_state(),
            }, ck)
            _log(f"epoch {epoch + 1}/{cfg.epochs} done: val clean {clean_val:.4f} noisy {noisy_val:.4f}"
                 f"{' (best)' if is_best else ''} {train_time:.1f} s", quiet)
    except Diverged as d:
        _write_metrics(work / "metrics.csv", history)
        (work / "diverged.json").write_text(json.dumps({"epoch": d.epoch, "step": d.step, "loss": str(d.loss)}) + "\n")
        _finish(work, out, lock)
        raise

    # Final evaluation of the best checkpoint (backbone only) on the test set.
    best = torch.load(work / "best.pt", map_location=dev, weights_only=True)
    model.load_state_dict(best["model"])
    t0 = time.time()
    recal_x = recalibration_images(train, cfg.bn_recal_images, dev) if batchnorm_layers(model) else None
    with autocast(cfg.precision, dev):
        mc = evaluate_mc(model, variation, test.to(dev), eval_sigma, cfg.eval_chips, cfg.seed,
                         cfg.eval_batch_size, dev, progress=not quiet, recal_x=recal_x)
        clean_test = clean_accuracy(model, test, cfg.eval_batch_size, dev)
    best_row = max(history, key=lambda r: (r["val_acc_noisy"], -r["epoch"])) if history else {}
    result = {
        **mc.metrics,
        "sigma": cfg.sigma, "eval_sigma": eval_sigma, "method": cfg.method, "noise": cfg.noise,
        "model": cfg.model, "dataset": cfg.dataset, "seed": cfg.seed,
        "best_epoch": best["epoch"],
        "best_val_acc_noisy": best_row.get("val_acc_noisy", float("nan")),
        "best_val_acc_clean": max((r["val_acc_clean"] for r in history), default=float("nan")),
        "clean_test_acc": clean_test,
        "diverged": False,
        "train_time_s": round(sum(r["epoch_time_s"] for r in history), 3),
        "eval_time_s": round(time.time() - t0, 3),
        "chip_seed_rule": "chip i: cimsim.seeds.chip_seed(seed, i); weight-noise backends draw it from a torch generator with that seed on the eval device, the crossbar backend programs layer l from cimsim.seeds.layer_seed(chip seed, l)",
    }
    result["converged"] = converged(result["best_val_acc_clean"], test.num_classes, cfg.converge_frac)
    (work / "eval.json").write_text(json.dumps(result, indent=1) + "\n")
    with open(work / "chips.csv", "w") as fh:
        fh.write("chip,seed,accuracy\n")
        fh.writelines(f"{i},{chip_seed(cfg.seed, i)},{a:.6f}\n" for i, a in enumerate(mc.acc_per_chip))
    plot_histogram(mc.acc_per_chip, work / "acc_hist.png",
                   f"{cfg.model} {cfg.method} {cfg.noise} sigma={eval_sigma:g}: {100 * mc.metrics['acc_mean']:.2f} %")
    _finish(work, out, lock)
    _log(f"done in {time.time() - t_run:.1f} s: test acc {100 * result['acc_mean']:.2f} +- "
         f"{100 * result['acc_std']:.2f} % over {result['chips']} chips -> {out}", quiet)
    return result


def _finish(work: Path, out: Path, lock: RunLock) -> None:
    """Move the complete run into ``out``; an old run there (``--overwrite``, checked replaceable
    again now) is moved aside first and deleted only once the new one is in place."""
    old = None
    if out.exists():
        try:
            check_replaceable(out)
        except RunFolderError as e:
            raise UsageError(f"{e}; the new run stays in {work}") from None
        old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
        out.rename(old)
    lock.release()  # the finished folder keeps no .lock
    work.rename(out)
    if old is not None:
        shutil.rmtree(old)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m training.train", description="Train one model with a NeFT method and evaluate it on Monte Carlo chips.")
    add_config_args(p)
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--resume", action="store_true", help="continue the unfinished run in <out>.partial")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in <out> once the new one completes")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    ns = p.parse_args(argv)
    try:
        cfg = config_from_args(ns)
        run(cfg, Path(ns.out), resume=ns.resume, quiet=ns.quiet, overwrite=ns.overwrite)
    except (UsageError, ConfigError, DataError, VariationError, DeviceModelError, RunFolderError,
            CircuitNotConverged) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Diverged as d:
        print(f"{p.prog}: {d}", file=sys.stderr)
        return EXIT_DIVERGED
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Grids of runs -> one results CSV and plots: ``python -m training.sweep``.

Example::

    python -m training.sweep --model lenet --dataset fashion-mnist --methods plain,nit,ovf,irs \\
        --sigmas 0:0.4:0.05 --seeds 3 --noise paper --epochs 5 --out results/lenet_fm --workers 2

Cells are (method, sigma, seed) with seeds ``0 .. seeds-1`` (or ``--seeds 0,4,7``) and sigmas
``start:stop:step`` (stop included) or a comma list. Each cell is one :func:`training.train.run`
into ``<out>/runs/<method>_sigma<sigma>_seed<seed>``; its row is appended to
``<out>/results.csv`` (whole, flushed) only after that folder is complete. Rerunning skips cells
that have a row; a finished folder without a row (interrupted between the two) is read back, and an
unfinished ``.partial`` folder is resumed. Cells run in ``--workers`` spawned processes, each with
``max(1, cores // workers)`` torch threads (``--threads`` overrides). At the end: ``summary.csv``
(per method and sigma: mean over seeds, pooled chip std, convergence probability), ``accuracy.png``
(accuracy vs sigma, error bars = pooled std over all chips of all seeds) and ``ekl.png``.
"""
from __future__ import annotations

import csv
import json
import math
import multiprocessing as mp
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from .config import ConfigError, RunConfig

ROW_FIELDS = [
    "method", "sigma", "seed", "status", "acc_mean", "acc_std", "acc_ci95_low", "acc_ci95_high", "acc_min",
    "acc_p05", "ekl", "confidence", "clean_test_acc", "best_val_acc_clean", "best_val_acc_noisy", "converged",
    "best_epoch", "chips", "eval_sigma", "train_time_s", "eval_time_s", "run_dir",
]


def parse_sigmas(text: str) -> list[float]:
    """``"0:0.4:0.05"`` (stop included) or ``"0.1,0.2"`` -> list of sigmas."""
    try:
        if ":" in text:
            a, b, c = (float(v) for v in text.split(":"))
            if c <= 0 or b < a:
                raise ValueError
            n = int(math.floor((b - a) / c + 1e-9)) + 1
            return [round(a + i * c, 10) for i in range(n)]
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"bad --sigmas {text!r}: use start:stop:step (e.g. 0:0.4:0.05) or a comma list") from None


def parse_seeds(text: str) -> list[int]:
    """``"3"`` -> [0, 1, 2]; ``"0,4,7"`` -> [0, 4, 7]."""
    try:
        if "," in text:
            return [int(v) for v in text.split(",") if v.strip()]
        n = int(text)
        if n < 1:
            raise ValueError
        return list(range(n))
    except ValueError:
        raise ConfigError(f"bad --seeds {text!r}: a count (3) or a comma list (0,4,7)") from None


def cell_name(method: str, sigma: float, seed: int) -> str:
    return f"{method}_sigma{sigma:.4f}_seed{seed}"


def row_from_result(method: str, sigma: float, seed: int, run_dir: Path) -> dict:
    """The CSV row of a finished run folder (from ``eval.json`` or ``diverged.json``)."""
    row = {k: "" for k in ROW_FIELDS}
    row.update(method=method, sigma=sigma, seed=seed, run_dir=str(run_dir))
    if (run_dir / "diverged.json").exists():
        row.update(status="diverged", converged=False)
        for k in ("acc_mean", "acc_std", "ekl", "confidence"):
            row[k] = float("nan")
        return row
    res = json.loads((run_dir / "eval.json").read_text())
    row["status"] = "ok"
    for k in ROW_FIELDS:
        if k in res and k not in ("method", "sigma", "seed"):
            row[k] = res[k]
    return row


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_cell(cfg_dict: dict, run_dir: str, resume: bool) -> dict:
    from .train import Diverged, run

    cfg = RunConfig.from_dict(cfg_dict)
    try:
        run(cfg, Path(run_dir), resume=resume, quiet=True)
    except Diverged:
        pass
    return row_from_result(cfg.method, cfg.sigma, cfg.seed, Path(run_dir))


def _key(method: str, sigma: float, seed: int) -> tuple[str, float, int]:
    return (method, round(float(sigma), 8), int(seed))


def read_done(csv_path: Path) -> set:
    if not csv_path.exists():
        return set()
    with open(csv_path, newline="") as fh:
        return {_key(r["method"], r["sigma"], r["seed"]) for r in csv.DictReader(fh)}


def append_row(csv_path: Path, row: dict) -> None:
    """Append one whole row (header first if the file is new) and flush it to disk."""
    new = not csv_path.exists() or csv_path.stat().st_size == 0
    with open(csv_path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=ROW_FIELDS)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in ROW_FIELDS})
        fh.flush()
        os.fsync(fh.fileno())


def sweep(base: RunConfig, methods: list[str], sigmas: list[float], seeds: list[int], out: str | Path,
          workers: int = 1, threads: int | None = None, quiet: bool = False) -> Path:
    """Run every missing (method, sigma, seed) cell; returns the results CSV path."""
    out = Path(out)
    cells = []
    for m in methods:
        for s in sigmas:
            for k in seeds:
                cells.append(base.replace(method=m, sigma=float(s), seed=int(k)))  # validates each
    if base.threads is None:
        base_threads = threads or max(1, (os.cpu_count() or 1) // max(1, workers))
    else:
        base_threads = base.threads
    from .train import check_options

    for cfg in {c.replace(seed=0, sigma=0.0) for c in cells}:
        check_options(cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep_config.json").write_text(json.dumps(
        {"base": base.to_dict(), "methods": methods, "sigmas": sigmas, "seeds": seeds}, indent=1) + "\n")
    csv_path = out / "results.csv"
    done = read_done(csv_path)
    todo = []
    for cfg in cells:
        key = _key(cfg.method, cfg.sigma, cfg.seed)
        if key in done:
            continue
        rd = out / "runs" / cell_name(cfg.method, cfg.sigma, cfg.seed)
        if rd.exists():  # finished before the row was written
            append_row(csv_path, row_from_result(cfg.method, cfg.sigma, cfg.seed, rd))
            continue
        resume = rd.with_name(rd.name + ".partial").exists()
        todo.append((cfg, rd, resume))
    if not quiet:
        print(f"sweep: {len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run with {workers} worker(s) "
              f"x {base_threads} thread(s)", file=sys.stderr, flush=True)
    if workers <= 1:
        _init_worker(base_threads)
        for i, (cfg, rd, resume) in enumerate(todo):
            append_row(csv_path, _run_cell(cfg.to_dict(), str(rd), resume))
            if not quiet:
                print(f"sweep: cell {i + 1}/{len(todo)} {rd.name} done", file=sys.stderr, flush=True)
    else:
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(base_threads,)) as ex:
            futs = {ex.submit(_run_cell, cfg.to_dict(), str(rd), resume): rd for cfg, rd, resume in todo}
            for i, f in enumerate(as_completed(futs)):
                append_row(csv_path, f.result())
                if not quiet:
                    print(f"sweep: cell {i + 1}/{len(todo)} {futs[f].name} done", file=sys.stderr, flush=True)
    summarize(csv_path, out)
    return csv_path


def summarize(csv_path: Path, out: Path) -> None:
    """Write ``summary.csv``, ``accuracy.png`` and ``ekl.png`` from ``results.csv``."""
    import pandas as pd

    df = pd.read_csv(csv_path)
    if df.empty:
        return
    df["converged_flag"] = df["converged"].astype(str).str.lower().isin(["true", "1"])
    rows = []
    for (m, s), g in df.groupby(["method", "sigma"], sort=True):
        ok = g[g["status"] == "ok"]
        var_pooled = (ok["acc_std"] ** 2).mean() + (ok["acc_mean"].var(ddof=0) if len(ok) > 1 else 0.0)
        rows.append({
            "method": m, "sigma": s, "seeds": len(g), "diverged": int((g["status"] == "diverged").sum()),
            "acc_mean": ok["acc_mean"].mean(), "acc_std_pooled": float(np.sqrt(var_pooled)) if len(ok) else float("nan"),
            "acc_mean_seed_std": ok["acc_mean"].std(ddof=1) if len(ok) > 1 else 0.0,
            "ekl": ok["ekl"].mean(), "confidence": ok["confidence"].mean(),
            "convergence_probability": g["converged_flag"].mean(),
        })
    summ = pd.DataFrame(rows)
    summ.to_csv(out / "summary.csv", index=False)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for metric, fname, ylabel in (("acc_mean", "accuracy.png", "test accuracy over chips (%)"),
                                  ("ekl", "ekl.png", "EKL (nats)")):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for m, g in summ.groupby("method"):
            g = g.sort_values("sigma")
            scale = 100 if metric == "acc_mean" else 1
            err = scale * g["acc_std_pooled"] if metric == "acc_mean" else None
            ax.errorbar(g["sigma"], scale * g[metric], yerr=err, marker="o", capsize=3, label=m)
        ax.set_xlabel("sigma")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=100)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from cimsim.device import DeviceModelError

    from .data import DataError
    from .train import UsageError, _Parser, add_config_args, config_from_args
    from .variation import VariationError

    skip = ("method", "sigma", "seed")
    p = _Parser(prog="python -m training.sweep", description="Grid of training runs -> results CSV and plots.")
    add_config_args(p, skip=skip)
    p.add_argument("--methods", default="plain,nit,ovf,irs", help="comma list (default plain,nit,ovf,irs)")
    p.add_argument("--sigmas", default="0:0.4:0.05", help="start:stop:step (stop included) or comma list")
    p.add_argument("--seeds", default="3", help="a count (seeds 0..n-1) or a comma list")
    p.add_argument("--out", required=True, help="results folder (created or resumed)")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
    p.add_argument("--quiet", action="store_true")
    ns = p.parse_args(argv)
    try:
        if ns.workers < 1:
            raise ConfigError("--workers must be >= 1")
        base = config_from_args(ns, skip=skip)
        methods = [m.strip() for m in ns.methods.split(",") if m.strip()]
        for m in methods:
            base.replace(method=m)
        sweep(base, methods, parse_sigmas(ns.sigmas), parse_seeds(ns.seeds), ns.out, ns.workers, quiet=ns.quiet)
    except (UsageError, ConfigError, DataError, VariationError, DeviceModelError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

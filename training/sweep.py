"""Grids of runs -> one results CSV and plots: ``python -m training.sweep``.

Example::

    python -m training.sweep --model lenet --dataset fashion-mnist --methods plain,nit,ovf,irs \\
        --sigmas 0:0.4:0.05 --seeds 3 --noise paper --epochs 5 --out results/lenet_fm --workers 2
    python -m training.sweep ... --out /shared/results/lenet_fm --engine ray --address auto \\
        --cpus-per-cell 4 --gpus-per-cell 0.25

Cells are (method, sigma, seed) with seeds ``0 .. seeds-1`` (or ``--seeds 0,4,7``) and sigmas
``start:stop:step`` (stop included) or a comma list. Each cell is one :func:`training.train.run`
into ``<out>/runs/<method>_sigma<sigma>_seed<seed>`` (written as ``<name>.partial`` and renamed
when complete).

Engines (:mod:`training.engines`): ``--engine local`` (default) runs cells in ``--workers``
spawned worker processes on this machine (``--workers 0``: in this process), each with
``--cpus-per-cell`` torch threads (default ``max(1, cores // workers)``; a config's ``--threads``
overrides). ``--engine ray`` submits each cell as a Ray task with ``--cpus-per-cell`` CPUs
(default 1) and ``--gpus-per-cell`` GPUs (fractions share a GPU) to the cluster at ``--address``
(``auto``: the cluster this node belongs to), or to a local Ray started for the run. Ray is an
optional dependency, imported only for ``--engine ray``.

The ledger: ``<out>/results.csv`` gets one whole row per cell, appended and flushed by this
(driver) process only, as cells finish, in completion order. Rerunning (``--resume`` says so
explicitly; it is the default) skips cells that have a row; a finished folder without a row
(interrupted between the two) is read back, an unfinished ``.partial`` folder is resumed from its
last epoch (or restarted when a checkpoint in it was cut short by a killed worker). A cell is
idempotent (it reads back its finished folder, or resumes its ``.partial``), so a retried cell
never doubles a row.

Faults: a worker process that dies mid-cell is retried up to ``--retries`` times (Ray:
``max_retries``; local: the pool is rebuilt, see :class:`training.engines.LocalEngine`). A cell
that raises gets a row with status ``failed`` and the one-line ``error``; the others go on;
``--retry-failed`` reruns failed cells (their rows are replaced). Exit status: 0 when every cell
of the grid has an ``ok`` or ``diverged`` row, 1 when some are ``failed`` (the count is printed),
2 for bad options (or ``--engine ray`` without Ray installed), 130 on Ctrl-C (the CSV stays valid;
rerun with ``--resume``).

At the end: ``summary.csv`` (per method and sigma: mean over seeds, pooled chip std, convergence
probability), ``accuracy.png`` (accuracy vs sigma, error bars = pooled std over all chips of all
seeds) and ``ekl.png``. ``--bench`` measures the engines instead (:func:`bench_engines`).

Testing hook: the environment variable ``CIMSIM_TEST_FAULTS`` (read by the driver, passed to the
cells) injects faults by cell name, e.g. ``crash_once=plain_sigma0.1000_seed1;raise=nit_sigma0.1000_seed0``:
``crash_once`` kills the cell's worker (``os._exit(70)``) on its first attempt (a marker file
``<run>.crashed-once`` remembers it), ``raise`` makes the cell raise. Never set it in real runs.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .threads import set_threads
from .config import ConfigError, RunConfig
from .engines import ENGINES, Engine, EngineError, InlineEngine, LocalEngine, Task, make_engine, one_line

ROW_FIELDS = [
    "method", "sigma", "seed", "status", "acc_mean", "acc_std", "acc_ci95_low", "acc_ci95_high", "acc_min",
    "acc_p05", "ekl", "confidence", "clean_test_acc", "best_val_acc_clean", "best_val_acc_noisy", "converged",
    "best_epoch", "chips", "eval_sigma", "train_time_s", "eval_time_s", "run_dir", "error",
]
FAULT_ENV = "CIMSIM_TEST_FAULTS"
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


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


def failed_row(method: str, sigma: float, seed: int, run_dir: Path | str, error: str) -> dict:
    """The CSV row of a cell that raised or whose worker died too often."""
    row = {k: "" for k in ROW_FIELDS}
    row.update(method=method, sigma=sigma, seed=seed, run_dir=str(run_dir), status="failed",
               error=" ".join(error.split()))
    return row


# ------------------------------------------------------------------------------ the cell
def parse_faults(text: str | None) -> dict[str, set[str]]:
    """``"crash_once=a,b;raise=c"`` -> ``{"crash_once": {"a", "b"}, "raise": {"c"}}`` (testing hook)."""
    faults: dict[str, set[str]] = {}
    for part in (text or "").split(";"):
        if "=" in part:
            kind, names = part.split("=", 1)
            faults.setdefault(kind.strip(), set()).update(n.strip() for n in names.split(",") if n.strip())
    return faults


def _inject_fault(faults: dict[str, set[str]], run_dir: Path) -> None:
    """Testing hook (see the module doc): crash this worker once, or raise, when the cell is named."""
    name = run_dir.name
    if name in faults.get("crash_once", ()):
        marker = run_dir.with_name(name + ".crashed-once")
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"{os.getpid()}\n")
            os._exit(70)
    if name in faults.get("raise", ()):
        raise RuntimeError(f"injected fault in cell {name} ({FAULT_ENV})")


def _checkpoints_load(work: Path) -> bool:
    """Whether every checkpoint in an unfinished run folder can be read (a killed worker may leave one cut short)."""
    import torch

    for f in sorted(work.glob("*.pt")):
        try:
            torch.load(f, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - any unreadable file means: do not resume from this folder
            return False
    return True


def run_cell(cfg_dict: dict, run_dir: str, threads: int, faults: dict | None = None) -> dict:
    """Train and evaluate one cell into ``run_dir``; returns its CSV row (never raises on cell errors).

    Idempotent: a finished folder is read back, an unfinished ``.partial`` one is resumed, so an
    engine may run it again after its worker died. An exception becomes a ``failed`` row.
    """
    from .train import Diverged, partial_dir, run

    cfg = RunConfig.from_dict(cfg_dict)
    rd = Path(run_dir)
    try:
        _inject_fault(faults or {}, rd)
        if rd.exists():
            return row_from_result(cfg.method, cfg.sigma, cfg.seed, rd)
        set_threads(threads)
        work = partial_dir(rd)
        if work.exists() and not _checkpoints_load(work):  # killed while saving one: start the cell afresh
            shutil.rmtree(work)
        try:
            run(cfg, rd, resume=work.exists(), quiet=True)
        except Diverged:
            pass
        return row_from_result(cfg.method, cfg.sigma, cfg.seed, rd)
    except Exception as e:  # noqa: BLE001 - a failing cell is recorded, the sweep goes on
        return failed_row(cfg.method, cfg.sigma, cfg.seed, rd, one_line(e))


# ---------------------------------------------------------------------------- the ledger
def _key(method: str, sigma: float, seed: int) -> tuple[str, float, int]:
    return (method, round(float(sigma), 8), int(seed))


def read_rows(csv_path: Path) -> list[dict]:
    """All rows of the results CSV ([] when it does not exist)."""
    if not csv_path.exists():
        return []
    with open(csv_path, newline="") as fh:
        return list(csv.DictReader(fh))


def read_done(csv_path: Path) -> set:
    """Keys ``(method, sigma, seed)`` of the cells that have a row."""
    return {_key(r["method"], r["sigma"], r["seed"]) for r in read_rows(csv_path)}


def _header(csv_path: Path) -> list[str]:
    """The header of an existing CSV (older ledgers lack later columns), else :data:`ROW_FIELDS`."""
    if csv_path.exists() and csv_path.stat().st_size > 0:
        with open(csv_path, newline="") as fh:
            head = next(csv.reader(fh), None)
        if head:
            return head
    return ROW_FIELDS


def append_row(csv_path: Path, row: dict) -> None:
    """Append one whole row (header first if the file is new) and flush it to disk."""
    fields = _header(csv_path)
    new = not csv_path.exists() or csv_path.stat().st_size == 0
    with open(csv_path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in fields})
        fh.flush()
        os.fsync(fh.fileno())


def drop_failed_rows(csv_path: Path) -> int:
    """Rewrite the CSV without its ``failed`` rows (temporary file, then rename); returns how many."""
    rows = read_rows(csv_path)
    keep = [r for r in rows if r.get("status") != "failed"]
    if len(keep) == len(rows):
        return 0
    fields = _header(csv_path)
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(keep)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(csv_path)
    return len(rows) - len(keep)


def count_failed(csv_path: Path, cells: list[RunConfig]) -> int:
    """How many cells of the grid have a ``failed`` row."""
    keys = {_key(c.method, c.sigma, c.seed) for c in cells}
    return sum(1 for r in read_rows(csv_path)
               if r.get("status") == "failed" and _key(r["method"], r["sigma"], r["seed"]) in keys)


# ----------------------------------------------------------------------------- the sweep
def grid(base: RunConfig, methods: list[str], sigmas: list[float], seeds: list[int]) -> list[RunConfig]:
    """Every (method, sigma, seed) cell as a validated config; the options are checked once per kind."""
    from .train import check_options

    cells = [base.replace(method=m, sigma=float(s), seed=int(k)) for m in methods for s in sigmas for k in seeds]
    for cfg in {c.replace(seed=0, sigma=0.0) for c in cells}:
        check_options(cfg)
    return cells


def cell_threads(engine: Engine, threads: int | None) -> int:
    """torch threads per cell: ``threads`` if given, else the engine's CPUs per cell (local: cores // workers)."""
    if threads:
        return int(threads)
    if isinstance(engine, LocalEngine):
        return max(1, (os.cpu_count() or 1) // engine.workers)
    if isinstance(engine, InlineEngine):
        return os.cpu_count() or 1
    return max(1, round(getattr(engine, "cpus", 1) or 1))


def plan(cells: list[RunConfig], out: Path, csv_path: Path) -> list[tuple[RunConfig, Path]]:
    """Cells still to run; finished folders that lack a row get their row now."""
    done = read_done(csv_path)
    todo = []
    for cfg in cells:
        if _key(cfg.method, cfg.sigma, cfg.seed) in done:
            continue
        rd = out / "runs" / cell_name(cfg.method, cfg.sigma, cfg.seed)
        if rd.exists():  # finished before the row was written
            try:
                row = row_from_result(cfg.method, cfg.sigma, cfg.seed, rd)
            except (OSError, ValueError) as e:  # an unreadable result is a failed cell, not a failed sweep
                row = failed_row(cfg.method, cfg.sigma, cfg.seed, rd, one_line(e))
            append_row(csv_path, row)
            continue
        todo.append((cfg, rd))
    return todo


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def sweep(base: RunConfig, methods: list[str], sigmas: list[float], seeds: list[int], out: str | Path,
          workers: int = 1, threads: int | None = None, quiet: bool = False, engine: Engine | None = None,
          retries: int = 2, retry_failed: bool = False, summary: bool = True) -> Path:
    """Run every missing (method, sigma, seed) cell; returns the results CSV path.

    ``engine``: where cells run (default: a :class:`~training.engines.LocalEngine` of ``workers``
    processes with ``retries``, or in this process for ``workers=0``); an engine passed in is left
    open. ``threads``: torch threads per cell (default: see :func:`cell_threads`). On Ctrl-C the
    engine is stopped and ``KeyboardInterrupt`` re-raised; the CSV holds the cells that finished.
    """
    out = Path(out)
    cells = grid(base, methods, sigmas, seeds)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "sweep_config.json.tmp"
    tmp.write_text(json.dumps({"base": base.to_dict(), "methods": methods, "sigmas": sigmas, "seeds": seeds},
                              indent=1) + "\n")
    tmp.replace(out / "sweep_config.json")
    csv_path = out / "results.csv"
    if retry_failed:
        _log(f"sweep: rerunning {drop_failed_rows(csv_path)} failed cell(s)", quiet)
    todo = plan(cells, out, csv_path)
    own = engine is None
    engine = engine or make_engine("local", workers=workers, retries=retries)
    try:
        nthreads = base.threads or cell_threads(engine, threads)
        _log(f"sweep: {len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run on "
             f"{engine.describe()} x {nthreads} thread(s)", quiet)
        _run_todo(engine, todo, csv_path, nthreads, quiet)
    finally:
        if own:
            engine.close()
    if summary:
        summarize(csv_path, out)
    return csv_path


def _run_todo(engine: Engine, todo: list[tuple[RunConfig, Path]], csv_path: Path, threads: int, quiet: bool) -> None:
    """Submit the cells, append each row once as its cell finishes (this process writes the CSV)."""
    faults = parse_faults(os.environ.get(FAULT_ENV))
    tasks = [Task(_key(c.method, c.sigma, c.seed), run_cell, (c.to_dict(), str(rd), threads, faults)) for c, rd in todo]
    by_key = {t.key: (c, rd) for t, (c, rd) in zip(tasks, todo)}
    written: set = set()
    try:
        for i, res in enumerate(engine.run(tasks)):
            if res.key in written:
                continue
            cfg, rd = by_key[res.key]
            row = res.value if res.ok else failed_row(cfg.method, cfg.sigma, cfg.seed, rd, res.error)
            append_row(csv_path, row)
            written.add(res.key)
            note = f" ({res.attempts} attempts)" if res.attempts > 1 else ""
            err = f": {row['error']}" if row["status"] == "failed" else ""
            _log(f"sweep: cell {i + 1}/{len(tasks)} {rd.name} {row['status']}{note}{err}", quiet)
    except KeyboardInterrupt:
        _log(f"sweep: interrupted; {len(written)} of {len(tasks)} cell(s) recorded in {csv_path}; "
             "rerun with --resume to continue", False)
        raise


def summarize(csv_path: Path, out: Path) -> None:
    """Write ``summary.csv``, ``accuracy.png`` and ``ekl.png`` from ``results.csv``.

    Failed cells are counted (``failed``) but left out of every mean and of the convergence
    probability (a failed run says nothing about convergence).
    """
    import pandas as pd

    df = pd.read_csv(csv_path)
    if df.empty:
        return
    df["converged_flag"] = df["converged"].astype(str).str.lower().isin(["true", "1"])
    rows = []
    for (m, s), g in df.groupby(["method", "sigma"], sort=True):
        ok = g[g["status"] == "ok"]
        ran = g[g["status"] != "failed"]
        var_pooled = (ok["acc_std"] ** 2).mean() + (ok["acc_mean"].var(ddof=0) if len(ok) > 1 else 0.0)
        rows.append({
            "method": m, "sigma": s, "seeds": len(ran), "diverged": int((g["status"] == "diverged").sum()),
            "failed": int((g["status"] == "failed").sum()),
            "acc_mean": ok["acc_mean"].mean(), "acc_std_pooled": float(np.sqrt(var_pooled)) if len(ok) else float("nan"),
            "acc_mean_seed_std": ok["acc_mean"].std(ddof=1) if len(ok) > 1 else 0.0,
            "ekl": ok["ekl"].mean(), "confidence": ok["confidence"].mean(),
            "convergence_probability": ran["converged_flag"].mean() if len(ran) else float("nan"),
        })
    summ = pd.DataFrame(rows)
    summ.to_csv(out / "summary.csv", index=False)
    _plot_summary(summ, out)


def _plot_summary(summ, out: Path) -> None:
    """``accuracy.png`` and ``ekl.png``: the summary's means vs sigma, one line per method."""
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


# ------------------------------------------------------------------------------ benchmark
BENCH_REPEATS = 3


def bench_config() -> RunConfig:
    """A short cell (about a third of a second here): MLP on digits, one epoch, four test chips."""
    return RunConfig(model="mlp", dataset="digits", epochs=1, batch_size=64, lr=5e-3, eval_chips=4, val_chips=1,
                     sigma=0.1, threads=1, torch_device="cpu")


def _timed_sweep(engine: Engine, seeds: list[int], folder: Path, repeats: int = 1) -> float:
    """Wall seconds of a sweep of bench cells (one per seed) on ``engine``; the least of ``repeats`` fresh sweeps."""
    best = math.inf
    for r in range(repeats):
        t0 = time.perf_counter()
        sweep(bench_config(), ["plain"], [0.1], seeds, folder / f"r{r}", engine=engine, quiet=True, summary=False)
        best = min(best, time.perf_counter() - t0)
    return best


def _bench_engine(label: str, make, slots: int, cells: int, folder: Path, inline_s: float) -> dict:
    """Start-up (engine + one warm-up cell per slot), warm no-op round trip, and the timed sweep."""
    from .engines import noop, time_tasks

    t0 = time.perf_counter()
    engine = make()
    try:
        _timed_sweep(engine, list(range(1000, 1000 + slots)), folder / "warmup")
        startup = time.perf_counter() - t0
        noop_s, _ = time_tasks(engine, [Task(i, noop, (i,)) for i in range(cells)])
        wall = _timed_sweep(engine, list(range(cells)), folder / "sweep", BENCH_REPEATS)
    finally:
        engine.close()
    return {"engine": label, "slots": slots, "startup_s": startup, "noop_ms_per_task": 1e3 * noop_s / cells,
            "sweep_s": wall, "overhead_s_per_cell": (wall * slots - inline_s) / cells}


def bench_engines(cells: int = 8, ray: bool = True) -> list[dict]:
    """Per-cell overhead of each engine and the 2-worker speed-up, on ``cells`` short cells.

    The reference is the same sweep run in this process (after a warm-up cell): its time is the
    cells' own work. Each engine is first warmed up with one cell per parallel slot (``startup_s``:
    starting the pool or a local Ray, spawning workers, importing torch in them, one cell each);
    then ``noop_ms_per_task`` is a warm no-op round trip and ``sweep_s`` the wall time of the
    ``cells`` cells (the least of :data:`BENCH_REPEATS` sweeps). Overhead per cell = ``(sweep_s x slots - reference) / cells``: the extra
    worker-seconds a cell costs (transfers, scheduling, the CSV, and with 2 slots the contention of
    two cells for the machine's cores and memory bandwidth).
    """
    from .engines import RayEngine, import_ray

    rows = []
    with tempfile.TemporaryDirectory(prefix="cimsim-bench-") as tmp:
        tmp = Path(tmp)
        run_cell(bench_config().to_dict(), str(tmp / "warmup"), 1)
        inline_s = _timed_sweep(InlineEngine(), list(range(cells)), tmp / "inline", BENCH_REPEATS)
        rows.append({"engine": "inline (this process)", "slots": 1, "startup_s": 0.0, "noop_ms_per_task": 0.0,
                     "sweep_s": inline_s, "overhead_s_per_cell": 0.0})
        rows.append(_bench_engine("local, 1 worker", lambda: LocalEngine(1), 1, cells, tmp / "l1", inline_s))
        rows.append(_bench_engine("local, 2 workers", lambda: LocalEngine(2), 2, cells, tmp / "l2", inline_s))
        if ray:
            try:
                import_ray()
            except EngineError as e:
                print(f"bench: ray skipped: {e}", file=sys.stderr)
                return rows
            ray_tmp = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))
            try:
                for label, n in (("ray, local 1 CPU, 1 CPU/cell", 1), ("ray, local 2 CPUs, 1 CPU/cell", 2)):
                    rows.append(_bench_engine(label, lambda n=n: RayEngine(cpus_per_task=1, init_kwargs={
                        "num_cpus": n, "_temp_dir": str(ray_tmp), "log_to_driver": False}), n, cells,
                        tmp / f"ray{n}", inline_s))
            finally:
                shutil.rmtree(ray_tmp, ignore_errors=True)
    return rows


def print_bench(rows: list[dict], cells: int) -> None:
    """The benchmark table and the 2-worker speed-ups over the serial (1-worker) sweep."""
    print(f"engine benchmark: {cells} short cells (MLP, digits, 1 epoch, 4 chips), {os.cpu_count()} cores; "
          f"inline {rows[0]['sweep_s'] / cells:.3f} s of work per cell")
    print(f"{'engine':32s} {'startup s':>10s} {'no-op ms':>9s} {'sweep s':>8s} {'overhead s/cell':>16s}")
    for r in rows:
        print(f"{r['engine']:32s} {r['startup_s']:10.2f} {r['noop_ms_per_task']:9.2f} {r['sweep_s']:8.2f} "
              f"{r['overhead_s_per_cell']:16.3f}")
    serial = {r["engine"].split(",")[0]: r["sweep_s"] for r in rows if r["slots"] == 1 and r["startup_s"] > 0}
    for r in rows:
        kind = r["engine"].split(",")[0]
        if r["slots"] == 2 and kind in serial:
            print(f"speed-up of '{r['engine']}' over its serial (1-slot) sweep: {serial[kind] / r['sweep_s']:.2f}x")


# ---------------------------------------------------------------------------------- CLI
def _add_engine_args(p) -> None:
    """The engine options, shared by the sweep and evaluate commands."""
    p.add_argument("--engine", choices=ENGINES, default="local", help="local worker processes (default) or ray")
    p.add_argument("--workers", type=int, default=1,
                   help="local engine: worker processes (default 1; 0 runs in this process, no isolation)")
    p.add_argument("--address", default=None,
                   help="ray engine: cluster address (host:port or 'auto'); default: start a local Ray for this run")
    p.add_argument("--cpus-per-cell", type=float, default=None,
                   help="CPUs per cell (ray: task num_cpus, default 1; both: torch threads per cell)")
    p.add_argument("--gpus-per-cell", type=float, default=0.0, help="ray engine: GPUs per cell, fractions allowed (default 0)")
    p.add_argument("--retries", type=int, default=2, help="retries of a cell whose worker died (default 2)")


def engine_from_args(ns) -> Engine:
    """The engine the options ask for (raises :class:`EngineError` or :class:`ConfigError`)."""
    if ns.workers < 0:
        raise ConfigError("--workers must be >= 0")
    if ns.retries < 0:
        raise ConfigError("--retries must be >= 0")
    if (ns.cpus_per_cell is not None and ns.cpus_per_cell <= 0) or ns.gpus_per_cell < 0:
        raise ConfigError("--cpus-per-cell must be > 0 and --gpus-per-cell >= 0")
    return make_engine(ns.engine, workers=ns.workers, retries=ns.retries, address=ns.address,
                       cpus_per_task=ns.cpus_per_cell, gpus_per_task=ns.gpus_per_cell)


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
    p.add_argument("--out", default=None, help="results folder (created, or continued when it exists)")
    _add_engine_args(p)
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep in --out (the default behaviour; skips cells with a row)")
    p.add_argument("--retry-failed", action="store_true", help="rerun cells whose row says failed")
    p.add_argument("--bench", action="store_true", help="measure the engines' per-cell overhead instead")
    p.add_argument("--bench-cells", type=int, default=8, help="cells per benchmark sweep (default 8)")
    p.add_argument("--quiet", action="store_true")
    ns = p.parse_args(argv)
    if ns.bench:
        print_bench(bench_engines(ns.bench_cells), ns.bench_cells)
        return 0
    engine = None
    try:
        if not ns.out:
            raise ConfigError("--out is required (or --bench)")
        base = config_from_args(ns, skip=skip)
        methods = [m.strip() for m in ns.methods.split(",") if m.strip()]
        for m in methods:
            base.replace(method=m)
        sigmas, seeds = parse_sigmas(ns.sigmas), parse_seeds(ns.seeds)
        cells = grid(base, methods, sigmas, seeds)
        engine = engine_from_args(ns)
        threads = None if ns.cpus_per_cell is None else max(1, round(ns.cpus_per_cell))
        csv_path = sweep(base, methods, sigmas, seeds, ns.out, threads=threads, quiet=ns.quiet, engine=engine,
                         retry_failed=ns.retry_failed)
    except (UsageError, ConfigError, DataError, VariationError, DeviceModelError, EngineError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        if engine is not None:
            engine.close()
    failed = count_failed(csv_path, cells)
    if failed:
        print(f"{p.prog}: {failed} of {len(cells)} cell(s) failed (status 'failed', error in {csv_path}); "
              "rerun with --retry-failed after fixing", file=sys.stderr)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())

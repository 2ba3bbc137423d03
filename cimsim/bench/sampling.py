"""Cell-sampling throughput (``python -m cimsim.bench sampling``): programmed cells per second of
each device family through the Numba level kernel and its torch twin, measured in one run.

Target (issue #17): the quantile family at >= 30 M cells/s through the Numba kernel on a 2-core
CPU (AVX2, no AMX assumed), and the torch twin at least as fast as the Student-t rejection
sampler it replaces.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

TARGET_CELLS_PER_S = 30e6
SUMMARY = Path(__file__).resolve().parents[2] / "data" / "measured" / "rram.csv"
CELLS = Path(__file__).resolve().parents[3] / "shared" / "measured" / "rram_techC_cells.csv"


def _models() -> dict[str, object]:
    """Device models of every family: from tech C's cells when ``../shared`` has them (33 probit
    nodes), else from the shipped summary (7 nodes); ``empirical`` needs the cells."""
    from cimsim.device.fit import FitOptions, fit_device

    src = CELLS if CELLS.exists() else SUMMARY
    fams = ("normal", "student-t", "quantile") + (("empirical",) if src == CELLS else ())
    return {f: fit_device(src, FitOptions(family=f, time_s=1.0)).model for f in fams}


def _best(fn, repeats: int) -> float:
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_sampling(n_cells: int = 4_000_000, repeats: int = 3, quiet: bool = False) -> dict[str, float]:
    """M cells/s per family and sampler; returns ``{"<family> <sampler>": cells_per_s}``. Level
    indices follow a trained layer's use of 32 levels: most cells at level 0 (unused pair sides)."""
    import numba
    import torch

    from cimsim.device.sampling import LevelTable, sample_levels_numba, sample_levels_torch

    rng = np.random.default_rng(0)
    idx = np.minimum(np.abs(rng.laplace(0, 3, n_cells)).astype(np.int64), 31)
    tidx = torch.from_numpy(idx)
    out = {}
    for fam, dm in _models().items():
        lv = np.asarray(dm.levels_S)
        s = _best(lambda: sample_levels_numba(dm, lv, idx, 1.0, seed=1), repeats)
        out[f"{fam} numba"] = n_cells / s
        for dtype in (torch.float32, torch.float64):
            table = LevelTable.make(dm, lv, 1.0, "cpu", dtype)
            gen = torch.Generator().manual_seed(1)
            s = _best(lambda: sample_levels_torch(tidx, table, dm, gen, 1.0), repeats)
            out[f"{fam} torch {str(dtype).split('.')[-1]}"] = n_cells / s
    if not quiet:
        print(f"cell sampling, {n_cells / 1e6:g} M cells of 32 levels at t = 1 s, numba threads "
              f"{numba.get_num_threads()} ({numba.threading_layer()}), torch threads {torch.get_num_threads()}, "
              f"source {'tech C cells' if CELLS.exists() else 'shipped summary'}")
        for k, v in out.items():
            print(f"  {k:<24} {v / 1e6:8.1f} M cells/s")
        q = out["quantile numba"]
        print(f"quantile family, Numba kernel: {q / 1e6:.1f} M cells/s, target {TARGET_CELLS_PER_S / 1e6:.0f}: "
              f"{'met' if q >= TARGET_CELLS_PER_S else 'NOT met'}; torch float32 quantile / Student-t: "
              f"{out['quantile torch float32'] / out['student-t torch float32']:.2f}x")
    return out

"""``python -m cimsim.bench``: the simulator's speed, measured in one run, as ratios.

``mvm`` (default): crossbar forward and programming (:mod:`cimsim.bench.mvm`); ``train``: one
LeNet-5 training step simulated vs plain torch (:mod:`cimsim.bench.training_step`); ``writeverify``:
the write-verify kernel (:mod:`cimsim.bench.writeverify`); ``sampling``: programmed cells per second
of every device family (:mod:`cimsim.bench.sampling`); ``ir_drop``: the IR-drop solvers
(:mod:`cimsim.bench.ir_drop`; without ``--quick`` also a frozen chip's 1024x1024 layer and a
fresh-chip LeNet-5 training step, with and without IR drop); ``all``: the five.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cimsim.bench.mvm import BATCHES, SHAPES, TARGET, run, summarize
from cimsim.bench.writeverify import bench_writeverify


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cimsim.bench", description=__doc__.split("\n")[0])
    ap.add_argument("what", nargs="?", default="mvm", choices=("mvm", "train", "writeverify", "sampling", "ir_drop", "all"),
                    help="mvm: crossbar forward and programming (default); train: one LeNet-5 training step "
                         "simulated vs plain torch; writeverify: the write-verify kernel; sampling: cells per "
                         "second of every device family; ir_drop: the IR-drop solvers")
    ap.add_argument("--quick", action="store_true", help="the target shape and batch only, 8-bit ADC")
    ap.add_argument("-o", "--out", type=Path, default=Path("results/bench_mvm.csv"), help="CSV of the table")
    ap.add_argument("--threads", type=int, default=None, help="torch and numba threads (default: all cores)")
    a = ap.parse_args(argv)
    if a.threads is not None and a.threads < 1:
        print(f"{ap.prog}: error: --threads must be >= 1, got {a.threads}", file=sys.stderr)
        return 2
    if a.what in ("mvm", "all"):
        from cimsim.io import OutputError, check_outputs

        try:
            check_outputs([a.out])  # before minutes of timing, not after
        except OutputError as e:
            print(f"{ap.prog}: error: --out {e}", file=sys.stderr)
            return 2
    if a.threads:
        import numba
        import torch

        torch.set_num_threads(a.threads)
        numba.set_num_threads(a.threads)
    ok = True
    if a.what in ("mvm", "all"):
        shapes, batches = ((TARGET[0],), (TARGET[1],)) if a.quick else (SHAPES, BATCHES)
        rows = run(shapes, batches, quick=a.quick, out=a.out)
        print(f"wrote {a.out}")
        ok &= summarize(rows)
    if a.what in ("train", "all"):
        from cimsim.bench.training_step import TARGET_RATIO, bench_training_step

        res = bench_training_step()
        ok &= max(res["chip_ratio"], res["fresh_ratio"]) <= TARGET_RATIO
    if a.what in ("writeverify", "all"):
        bench_writeverify()
    if a.what in ("sampling", "all"):
        from cimsim.bench.sampling import TARGET_CELLS_PER_S, bench_sampling

        ok &= bench_sampling()["quantile numba"] >= TARGET_CELLS_PER_S
    if a.what in ("ir_drop", "all"):
        from cimsim.bench.ir_drop import (
            TARGET_LAYER_RATIO, TARGET_STEP_RATIO, bench_ir_drop, bench_ir_drop_layer, bench_ir_drop_training_step,
        )

        bench_ir_drop((64, 128) if a.quick else (64, 128, 256, 512))
        if not a.quick:
            ok &= all(r["ratio"] <= TARGET_LAYER_RATIO for r in bench_ir_drop_layer())
            ok &= bench_ir_drop_training_step()["ratio"] <= TARGET_STEP_RATIO
    return 0 if ok else 1

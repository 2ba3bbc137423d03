"""Crossbar forward and programming speed (``python -m cimsim.bench mvm``), measured in one run, as ratios.

For each layer shape, batch and config: the simulated forward time, the ideal float32 ``torch``
matmul of the same shape (same threads, same run), their ratio, and the floor of that ratio (the
number of partial-product GEMMs: input cycles x slices, x2 when each pair side is converted
separately); programming throughput (cells/s); the peak resident memory the forward added.
Also a read-noise-on row per config at the target shape. Writes the table as CSV.

Targets (README, "Performance"): 1024x1024 at batch 256, every config: simulated forward within
1.5 x (floor x ideal matmul); read noise adding at most 1 x the noise-free time; programming at
least 20 million cells per second.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

SHAPES = ((256, 256), (1024, 1024), (4096, 1024))  # (out, in)
BATCHES = (1, 64, 256)
SLICES = (1, 2, 4)  # 8-bit weights on 8-, 4-, 2-bit cells
ADC_BITS = (6, 8, 10)
TARGET = ((1024, 1024), 256)


def _paired(sim: Callable[[], object], ideal: Callable[[], object], min_time_s: float = 0.5,
            max_reps: int = 40) -> tuple[float, float, float]:
    """Time ``sim`` and ``ideal`` alternately; returns (median sim s, median ideal s, median ratio).

    Alternating the two keeps a load that comes and goes from biasing their ratio.
    """
    sim(), ideal()
    ts, ti, r = [], [], []
    t_end = time.perf_counter() + min_time_s
    while len(ts) < 5 or (time.perf_counter() < t_end and len(ts) < max_reps):
        t0 = time.perf_counter()
        ideal()
        t1 = time.perf_counter()
        sim()
        t2 = time.perf_counter()
        ti.append(t1 - t0)
        ts.append(t2 - t1)
        r.append((t2 - t1) / (t1 - t0))
    return float(np.median(ts)), float(np.median(ti)), float(np.median(r))


def _reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (Linux) and return the current RSS in bytes (0 if unknown)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _rss("VmRSS")
    except OSError:
        return 0


def _rss(field: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _configs(quick: bool, at_target: bool):
    from cimsim.crossbar.config import CrossbarConfig

    for dac in ("multibit", "bit_serial"):
        for n_slices in SLICES:
            for adc in (ADC_BITS if at_target and not quick else (8,)):
                yield CrossbarConfig(dac=dac, input_bits=8, weight_bits=8, bits_per_cell=8 // n_slices,
                                     adc_bits=adc, adc_range="calibrated", device="neurram")


def run(shapes=SHAPES, batches=BATCHES, quick: bool = False, out: Path | None = None, log=print) -> "list[dict]":
    import numba
    import torch

    from cimsim.device.model import load_device
    from cimsim.crossbar.mvm import crossbar_matmul_torch
    from cimsim.crossbar.program import program

    rows: list[dict] = []
    rng = np.random.default_rng(0)
    noisy_dev = load_device("neurram").replace(read_noise_poly_uS=(0.01, 0.05))  # 1 % + 0.05 uS per read
    log(f"# torch {torch.__version__}, {torch.get_num_threads()} torch threads; numba {numba.__version__}, "
        f"threading layer {os.environ.get('CIMSIM_NUMBA_THREADING', 'omp')}, {numba.get_num_threads()} threads")
    for n_out, n_in in shapes:
        w = rng.normal(size=(n_out, n_in)).astype(np.float32)
        wt = torch.from_numpy(w)
        for batch in batches:
            x = torch.from_numpy(np.abs(rng.normal(size=(batch, n_in))).astype(np.float32))
            def ideal():
                return x @ wt.T

            at_target = ((n_out, n_in), batch) == TARGET
            for cfg in _configs(quick, at_target):
                variants = [("off", None)] + ([("on", noisy_dev)] if at_target else [])
                r_off = None
                for noise, dev in variants:
                    c = cfg.replace(read_noise=noise == "on")
                    t_prog = np.inf
                    for _ in range(2):  # the first call may compile the sampler
                        t0 = time.perf_counter()
                        arr = program(w, c, 0, device_model=dev)
                        t_prog = min(t_prog, time.perf_counter() - t0)
                    arr.calibrate(x.numpy())
                    base_rss = _reset_peak_rss()
                    t_sim, t_ideal, ratio = _paired(lambda: crossbar_matmul_torch(arr, x), ideal)
                    peak = max(_rss("VmHWM") - base_rss, 0) if base_rss else float("nan")
                    floor = c.partial_products_floor()
                    row = dict(
                        out=n_out, inp=n_in, batch=batch, dac=c.dac, slices=c.n_slices, adc_bits=c.adc_bits,
                        read_noise=noise, sim_s=t_sim, ideal_s=t_ideal, ratio=ratio, floor=floor,
                        ratio_over_floor=ratio / floor, program_cells_per_s=arr.n_cells / t_prog,
                        peak_mem_MiB=peak / 2**20,
                    )
                    if noise == "off":
                        r_off = ratio
                    else:  # extra time of the read-noise GEMM and draws, relative to the noise-free forward
                        row["noise_cost_x"] = (ratio - r_off) / r_off
                    rows.append(row)
                    log(_fmt(row))
    if out is not None:
        _write_csv(rows, out)
    return rows


def _fmt(r: dict) -> str:
    s = (f"{r['out']:>5}x{r['inp']:<5} b={r['batch']:<4} {r['dac']:<10} S={r['slices']} adc={r['adc_bits']:<2} "
         f"noise={r['read_noise']:<3} sim {r['sim_s'] * 1e3:8.2f} ms  ideal {r['ideal_s'] * 1e3:7.3f} ms  "
         f"ratio {r['ratio']:7.1f}  floor {r['floor']:3d}  ratio/floor {r['ratio_over_floor']:5.2f}  "
         f"prog {r['program_cells_per_s'] / 1e6:6.1f} Mcell/s  peak {r['peak_mem_MiB']:6.1f} MiB")
    if "noise_cost_x" in r:
        s += f"  noise +{r['noise_cost_x']:.2f}x"
    return s


def _write_csv(rows: list[dict], out: Path) -> None:
    import pandas as pd

    from cimsim.io import atomic_write_text

    atomic_write_text(Path(out), pd.DataFrame(rows).to_csv(index=False))


def summarize(rows: list[dict], log=print) -> bool:
    """Print the target checks at 1024x1024, batch 256; True when every target holds."""
    tgt = [r for r in rows if ((r["out"], r["inp"]), r["batch"]) == TARGET]
    if not tgt:
        return True
    ok = True
    worst = max(r["ratio_over_floor"] for r in tgt if r["read_noise"] == "off")
    noise = max((r["noise_cost_x"] for r in tgt if "noise_cost_x" in r), default=0.0)
    prog = min(r["program_cells_per_s"] for r in rows if r["out"] * r["inp"] >= 2**20)
    for name, val, lim, good in (
        ("forward / (floor x ideal), worst config", worst, "<= 1.5", worst <= 1.5),
        ("read noise extra time / noise-free, worst", noise, "<= 1.0", noise <= 1.0),
        ("programming, Mcells/s, slowest large layer", prog / 1e6, ">= 20", prog >= 20e6),
    ):
        log(f"target {name}: {val:.2f} ({lim}) {'ok' if good else 'MISSED'}")
        ok &= good
    return ok

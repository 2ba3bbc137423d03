"""Training-step speed of a converted model against plain PyTorch: :func:`bench_training_step`.

One step = forward + backward (cross-entropy, batch 128) of LeNet-5 on 28x28 inputs, timed in the
same run for: the plain float model; the converted model on one frozen chip (``chip`` mode: the
programmed array and its GEMM plan are reused); the converted model with a fresh programming draw
on every forward (``fresh`` mode: programming, plan building and effective weights every step).
The steps are interleaved, so machine load hits all three alike; the ratios are medians.

Target (issue): at most 8 x plain torch with a multi-bit DAC and 4 slices of 2-bit cells.
"""
from __future__ import annotations

import copy
import time
from typing import Callable

import numpy as np

TARGET_RATIO = 8.0


def lenet5():
    """LeNet-5 for (B, 1, 28, 28) inputs (LeCun et al. 1998, with ReLU and max pooling) -> (B, 10) logits."""
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )


def default_config():
    """The benchmark's crossbar: multi-bit 8-bit DAC, 8-bit weights on 4 slices of 2-bit cells,
    calibrated 8-bit ADC, NeuRRAM device model."""
    from cimsim.crossbar.config import CrossbarConfig

    return CrossbarConfig(dac="multibit", input_bits=8, weight_bits=8, bits_per_cell=2, adc_bits=8,
                          adc_range="calibrated", device="neurram")


def _mnist_like(batch: int, generator) -> tuple:
    """Sparse binary 28x28 images normalised like MNIST (both signs present) and random labels."""
    import torch

    x = (torch.rand(batch, 1, 28, 28, generator=generator) > 0.8).float()
    x = (x - 0.1307) / 0.3081
    y = torch.randint(0, 10, (batch,), generator=generator)
    return x, y


def _step(model, x, y) -> Callable[[], None]:
    import torch.nn.functional as F

    def run() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    return run


def _interleaved(fns: dict[str, Callable[[], None]], reps: int) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved round-robin after one warm-up each."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def bench_training_step(batch: int = 128, reps: int = 20, config=None, seed: int = 0, threads: int | None = None,
                        log=print) -> dict:
    """Time one LeNet-5 training step (forward + backward) plain vs simulated; returns the numbers.

    threads: torch and numba threads for the measurement (default: as configured), restored after.
    Returns a dict with ``plain_s``, ``chip_s``, ``fresh_s`` (median seconds per step), the ratios
    ``chip_ratio`` and ``fresh_ratio`` to plain torch, ``target`` and the thread count.
    """
    import numba
    import torch

    before = (torch.get_num_threads(), numba.get_num_threads())
    if threads:
        torch.set_num_threads(threads)
        numba.set_num_threads(threads)
    try:
        return _bench(batch, reps, config, seed, log)
    finally:
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])


def _bench(batch: int, reps: int, config, seed: int, log) -> dict:
    import torch

    from cimsim.nn import calibrate, convert, set_mode

    config = config if config is not None else default_config()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # LeNet's default initialisation only
    plain = lenet5()
    sim = convert(copy.deepcopy(plain), config, seed=seed)
    x, y = _mnist_like(batch, gen)
    calibrate(sim, [(x, y)], batches=1)
    sim_fresh = copy.deepcopy(sim)
    set_mode(sim_fresh, "fresh")
    t = _interleaved({"plain": _step(plain, x, y), "chip": _step(sim, x, y), "fresh": _step(sim_fresh, x, y)}, reps)
    res = dict(batch=batch, threads=torch.get_num_threads(), plain_s=t["plain"], chip_s=t["chip"], fresh_s=t["fresh"],
               chip_ratio=t["chip"] / t["plain"], fresh_ratio=t["fresh"] / t["plain"], target=TARGET_RATIO)
    log(f"# LeNet-5 training step (forward + backward), batch {batch}, {res['threads']} torch threads, "
        f"{config.dac} DAC {config.input_bits} bit, {config.n_slices} slices x {config.bits_per_cell} bit, "
        f"ADC {config.adc_bits} bit {config.adc_range}, device {config.device}")
    log(f"plain torch        {t['plain'] * 1e3:8.2f} ms")
    for k in ("chip", "fresh"):
        r = res[f"{k}_ratio"]
        log(f"simulated, {k:<6}   {t[k] * 1e3:8.2f} ms  ratio {r:6.2f}  (target <= {TARGET_RATIO:g}: "
            f"{'ok' if r <= TARGET_RATIO else 'MISSED'})")
    return res


if __name__ == "__main__":
    import sys

    bench_training_step(threads=int(sys.argv[1]) if len(sys.argv) > 1 else None)

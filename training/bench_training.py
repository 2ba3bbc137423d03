"""Benchmarks (not tests): ``python -m training.bench_training``.

1. Epoch time of LeNet-5 on Fashion-MNIST (54,000 training images after the validation split,
   batch 128) per method and noise backend. ``--steps N`` times N steps and extrapolates to the
   epoch (the line says so); ``--steps 0`` runs whole epochs. Falls back to digits (said in the
   output) when Fashion-MNIST is not installed. Backends ``paper``, ``device`` and ``crossbar``
   (the full simulated array: the model converted and calibrated first, not timed; every step
   programs every layer afresh), all with device model rram1 at sigma 0.1.
2. One training step (forward + backward + Adam) of VGG-8 (32x32, batch ``--vgg-batch``) with NIT
   in the ``paper`` backend against a re-implementation of the authors' approach: the noise of each
   layer drawn on the host with numpy per forward and copied to the device. Prints the ratio.
3. What VGG-8 costs at the scale of the results suites: one plain training step at batch 128 and
   one evaluation forward of 1000 images (32x32), extrapolated to an epoch of 54,000 images and to
   200 Monte Carlo chips over the 10,000 test images, in float32 and in bfloat16 autocast
   (``precision``, :mod:`training.precision`), with the speed-up measured in the same run
   (``--skip-vgg-cost`` leaves it out).
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch

from .run_config import METHODS, NOISES, RunConfig
from .data import DataError, load_dataset
from .methods import MethodSpec, batch_loss
from .models import build_model
from .precision import PRECISIONS, autocast
from .variation import PAPER_C, PaperNoise, WeightNoise, make_generator, make_variation


class HostPaperNoise(WeightNoise):
    """The authors' way: per layer, per forward, numpy normal noise on the host, then ``.to(device)``."""

    name = "paper-host"

    def __init__(self, s: float = 1.0, seed: int = 0):
        self.s, self.norm = s, math.sqrt(0.4 * s * s + 0.6)
        self.rng = np.random.default_rng(seed)

    def is_identity(self, sigma):
        return sigma == 0

    def realise(self, weights, heads_mask, sigma, generator):
        out = []
        for w in weights:
            wc = w.detach().cpu().numpy()
            m = np.abs(wc).max()
            r = np.abs(wc) / m
            std = np.where((r > 0.25) & (r < 0.75), self.s, 1.0) * PAPER_C * m * sigma / self.norm
            noise = torch.from_numpy(self.rng.normal(0.0, 1.0, wc.shape).astype(np.float32) * std.astype(np.float32))
            out.append(w + noise.to(w.device))
        return out


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def bench_lenet(dev: torch.device, steps: int, methods: list[str], noises: list[str], data_dir: str | None = None) -> None:
    try:
        train = load_dataset("fashion-mnist", "train", data_dir)
        name = "fashion-mnist"
    except DataError:
        train, name = load_dataset("digits", "train"), "digits (Fashion-MNIST not installed)"
    n_epoch = int(round(len(train) * 0.9))
    train = train.to(dev)
    bs = 128
    steps_epoch = math.ceil(n_epoch / bs)
    todo = steps_epoch if steps <= 0 else min(steps, steps_epoch)
    print(f"LeNet-5 on {name}: {n_epoch} images/epoch, batch {bs}, {steps_epoch} steps/epoch; timing {todo} steps"
          f"{'' if todo == steps_epoch else ' and extrapolating'}; device {dev}, {torch.get_num_threads()} threads")
    for noise in noises:
        cfg = RunConfig(model="lenet", dataset="fashion-mnist", noise=noise, device_model="rram1", sigma=0.1)
        variation = make_variation(cfg)
        for method in methods:
            torch.manual_seed(0)
            model = variation.prepare(build_model("lenet", train.input_shape, 10, with_heads=method == "irs").to(dev))
            variation.calibrate(model, train, bs)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            spec = MethodSpec.from_config(cfg.replace(method=method))
            gen = make_generator(0, dev)
            perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).to(dev)
            for k in range(2):  # warm-up
                x, y = train.batch(perm[k * bs:(k + 1) * bs], dev)
                loss, _ = batch_loss(spec, model, x, y, variation, gen)
                opt.zero_grad()
                loss.backward()
                opt.step()
            _sync(dev)
            t0 = time.perf_counter()
            for k in range(todo):
                x, y = train.batch(perm[(k % steps_epoch) * bs:(k % steps_epoch + 1) * bs], dev)
                loss, _ = batch_loss(spec, model, x, y, variation, gen)
                opt.zero_grad()
                loss.backward()
                opt.step()
            _sync(dev)
            dt = time.perf_counter() - t0
            print(f"  {noise:8s} {method:10s} {1e3 * dt / todo:8.2f} ms/step  epoch {dt / todo * steps_epoch:8.2f} s", flush=True)


def bench_vgg(dev: torch.device, batch: int, reps: int) -> float:
    torch.manual_seed(0)
    x = torch.randn(batch, 1, 32, 32, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    times = {}
    for label, var in (("torch on device (ours)", PaperNoise(1.0)), ("host numpy + copy (authors')", HostPaperNoise(1.0))):
        model = build_model("vgg8", (1, 32, 32), 10).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        gen = make_generator(0, dev)
        spec = MethodSpec("nit", 0.1)
        best = math.inf
        for r in range(reps + 1):
            _sync(dev)
            t0 = time.perf_counter()
            loss, _ = batch_loss(spec, model, x, y, var, gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
            _sync(dev)
            if r:  # first is warm-up
                best = min(best, time.perf_counter() - t0)
        times[label] = best
        print(f"VGG-8 NIT step, batch {batch}, {label}: {1e3 * best:.1f} ms (best of {reps})", flush=True)
    ratio = times["host numpy + copy (authors')"] / times["torch on device (ours)"]
    print(f"VGG-8 step time ratio authors'/ours = {ratio:.2f}")
    return ratio


def bench_vgg_cost(dev: torch.device, reps: int) -> dict[str, tuple[float, float]]:
    """Per precision (``float32``, ``bfloat16``, :mod:`training.precision`): (seconds per plain
    training step at batch 128, seconds per 1000-image evaluation forward), and their ratios."""
    x, y = torch.randn(128, 1, 32, 32, device=dev), torch.randint(0, 10, (128,), device=dev)
    xe = torch.randn(1000, 1, 32, 32, device=dev)
    out = {}
    for precision in PRECISIONS:
        torch.manual_seed(0)
        model = build_model("vgg8", (1, 32, 32), 10).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        step = ev = math.inf
        for r in range(reps + 1):
            _sync(dev)
            t0 = time.perf_counter()
            with autocast(precision, dev):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            _sync(dev)
            if r:
                step = min(step, time.perf_counter() - t0)
        model.eval()
        with torch.no_grad(), autocast(precision, dev):
            for r in range(reps + 1):
                _sync(dev)
                t0 = time.perf_counter()
                model(xe)
                _sync(dev)
                if r:
                    ev = min(ev, time.perf_counter() - t0)
        out[precision] = (step, ev)
        print(f"VGG-8 {precision}: plain step, batch 128: {step:.3f} s -> epoch of 54,000 images "
              f"{step * math.ceil(54000 / 128) / 60:.1f} min; eval forward of 1000 images: {ev:.2f} s -> 200 chips x "
              f"10,000 test images {ev * 2000 / 3600:.2f} h (best of {reps}, {torch.get_num_threads()} threads)", flush=True)
    (s32, e32), (s16, e16) = out["float32"], out["bfloat16"]
    print(f"VGG-8 bfloat16 speed-up over float32 (same run): training step {s32 / s16:.2f}x, "
          f"evaluation forward {e32 / e16:.2f}x", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.bench_training", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50, help="LeNet steps to time (0: whole epochs)")
    p.add_argument("--methods", default="plain,nit,ovf,irs,correctnet")
    p.add_argument("--noises", default="paper,device,crossbar")
    p.add_argument("--vgg-batch", type=int, default=32)
    p.add_argument("--vgg-reps", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST idx folder (default: the Debian package's)")
    p.add_argument("--skip-lenet", action="store_true")
    p.add_argument("--skip-vgg", action="store_true")
    p.add_argument("--skip-vgg-cost", action="store_true")
    ns = p.parse_args(argv)
    methods, noises = ns.methods.split(","), ns.noises.split(",")
    bad = ([f"--methods: unknown method {m!r} (choose from {', '.join(METHODS)})" for m in methods if m not in METHODS]
           + [f"--noises: unknown noise {n!r} (choose from {', '.join(NOISES)})" for n in noises if n not in NOISES]
           + [f"--{k.replace('_', '-')} must be >= {lo}, got {getattr(ns, k)}" for k, lo in
              (("steps", 0), ("vgg_batch", 1), ("vgg_reps", 1)) if getattr(ns, k) < lo]
           + ([f"--device must be auto, cpu or cuda (available), got {ns.device!r}"]
              if ns.device not in ("auto", "cpu", "cuda") or (ns.device == "cuda" and not torch.cuda.is_available()) else []))
    if bad:
        print(f"{p.prog}: error: {bad[0]}", file=sys.stderr)
        return 2
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if ns.device == "auto" else ns.device)
    if not ns.skip_lenet:
        bench_lenet(dev, ns.steps, methods, noises, ns.data_dir)
    if not ns.skip_vgg:
        bench_vgg(dev, ns.vgg_batch, ns.vgg_reps)
    if not ns.skip_vgg_cost:
        bench_vgg_cost(dev, ns.vgg_reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())

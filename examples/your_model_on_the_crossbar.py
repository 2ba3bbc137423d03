"""Put your own PyTorch model on the crossbar and sweep the ADC bits.

    python examples/your_model_on_the_crossbar.py [--out example_out/adc_sweep] [--chips 5]

A small CNN is trained on scikit-learn's digits in float (replace ``build_model`` and the data with
yours); ``cimsim.nn.convert`` swaps its Conv2d and Linear layers for crossbar twins sharing the
parameters; each chip is calibrated on training images and tested per ADC resolution. Writes
``adc_sweep.csv`` (ADC bits, mean and std test accuracy over chips).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from cimsim import nn as cim
from cimsim.crossbar.config import CrossbarConfig
from cimsim.io import write_outputs


def build_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))


def digits() -> tuple[torch.Tensor, ...]:
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    test, train = perm[:360], perm[360:]
    return x[train], y[train], x[test], y[test]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="example_out/adc_sweep")
    ap.add_argument("--chips", type=int, default=5)
    ap.add_argument("--device", default="rram", help="device model preset or JSON (default: the fitted rram)")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    xtr, ytr, xte, yte = digits()
    model = build_model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(15):
        for i in torch.randperm(len(ytr), generator=torch.Generator().manual_seed(epoch)).split(64):
            loss = nn.functional.cross_entropy(model(xtr[i]), ytr[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        float_acc = (model(xte).argmax(1) == yte).float().mean().item()
    print(f"float model: {100 * float_acc:.1f} % on {len(yte)} test digits")
    rows = ["adc_bits,acc_mean,acc_std,chips"]
    for bits in (4, 5, 6, 8):
        cfg = CrossbarConfig(device=a.device, adc_bits=bits, bits_per_cell=2, weight_bits=8, read_time_s=1.0)
        accs = []
        for chip in range(a.chips):
            cim.convert(model, cfg, seed=chip)  # chip = seed: the same seed is the same chip
            cim.calibrate(model, [(xtr[:512], None)], batches=1)
            with torch.no_grad():
                accs.append((model(xte).argmax(1) == yte).float().mean().item())
            cim.unconvert(model)
        m, s = 100 * np.mean(accs), 100 * np.std(accs, ddof=1)
        rows.append(f"{bits},{m:.2f},{s:.2f},{a.chips}")
        print(f"{bits}-bit ADC: {m:.1f} +- {s:.1f} % over {a.chips} chips")
    out = Path(a.out) / "adc_sweep.csv"
    write_outputs({out: "\n".join(rows) + "\n"})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

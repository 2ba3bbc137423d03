"""Train with NeFT's OVF against a fitted device model, then test it on programmed chips.

    python examples/train_ovf_on_a_device.py [--out example_out/ovf] [--epochs 5]

The same run as ``python -m training.train --method ovf --noise device --device-model rram ...``:
LeNet-5 on scikit-learn's digits, trained with OVF against the fitted RRAM model at twice its
measured spread, and plain training beside it; each run folder holds its config, metrics, best
checkpoint and the Monte Carlo evaluation (eval.json, chips.csv).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from training.run_config import RunConfig
from training.train import run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="example_out/ovf")
    ap.add_argument("--epochs", type=int, default=5)
    a = ap.parse_args(argv)
    base = RunConfig(model="lenet", dataset="digits", noise="device", device_model="rram", sigma_mode="multiply",
                     sigma=2.0, epochs=a.epochs, batch_size=64, lr=1e-2, eval_chips=20, val_chips=2, threads=1)
    for method in ("plain", "ovf"):
        res = run(base.replace(method=method), Path(a.out) / method, quiet=True, overwrite=True)
        print(f"{method:>5}: {100 * res['acc_mean']:.2f} +- {100 * res['acc_std']:.2f} % over {res['chips']} chips "
              f"(clean {100 * res['clean_test_acc']:.1f} %, worst chip {100 * res['acc_min']:.1f} %) -> {a.out}/{method}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

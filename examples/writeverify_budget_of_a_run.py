"""The write-verify budget of a trained run: what programming the chip costs to reach a target.

    python examples/writeverify_budget_of_a_run.py [--out example_out/wv] [--run RUN_FOLDER]

Without ``--run`` a LeNet-5 is trained on scikit-learn's digits first (plain, a few seconds).
Then ``python -m training.writeverify_budget`` programs it on the fitted RRAM model one-shot, with
full write-verify (ISPP) and with write-verify of the most sensitive weights only, and reports
accuracy, energy (J) and latency (s) of each setting and the cheapest that stays within 2 points
of the clean accuracy (budget.csv, settings.csv, the Pareto plots).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from training import writeverify_budget
from training.run_config import RunConfig
from training.train import run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="example_out/wv")
    ap.add_argument("--run", default=None, help="a finished training run folder (default: train one)")
    ap.add_argument("--chips", type=int, default=3)
    a = ap.parse_args(argv)
    out = Path(a.out)
    run_dir = a.run
    if run_dir is None:
        run_dir = str(out / "run")
        cfg = RunConfig(model="lenet", dataset="digits", noise="device", device_model="rram", sigma_mode="multiply",
                        sigma=1.0, epochs=4, batch_size=64, lr=1e-2, eval_chips=4, val_chips=1, threads=1)
        run(cfg, Path(run_dir), quiet=True, overwrite=True)
    return writeverify_budget.main([
        "--run", run_dir, "--policies", "none,full,selective", "--tolerances", "1", "--fractions", "0.1",
        "--chips", str(a.chips), "--sens-batches", "4", "--target-drop", "2", "--out", str(out / "budget"), "--quiet"])


if __name__ == "__main__":
    raise SystemExit(main())

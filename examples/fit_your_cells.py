"""Fit a device model to your own measured cells, use it on a crossbar, and judge it.

    python examples/fit_your_cells.py [CELLS.csv] [--out example_out/fit]

CELLS.csv: per-cell reads in the tidy format of ``../shared/measured/rram_tech*_cells.csv``
(columns level, g_target_uS, g_lo_uS, g_hi_uS, t_nominal_s, g_uS) or the per-level summary of
``data/measured/rram.csv`` (the default). Writes the model JSON, the fit figure and the relative
error of a 128x256 layer programmed on it, per read time.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cimsim.crossbar.config import CrossbarConfig
from cimsim.crossbar.program import program
from cimsim.device.fit import FitOptions, fit_device, render_figure
from cimsim.io import write_outputs

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cells", nargs="?", default=str(REPO / "data" / "measured" / "rram.csv"))
    ap.add_argument("--family", default="quantile", help="auto | normal | student-t | quantile (default quantile)")
    ap.add_argument("--out", default="example_out/fit")
    a = ap.parse_args(argv)
    out = Path(a.out)
    fit = fit_device(a.cells, FitOptions(family=a.family))  # one line of MeasuredDataError on bad data
    model_path = out / "my_device.json"
    write_outputs({model_path: fit.model.to_json() + "\n", out / "fit.png": render_figure(fit)})
    rng = np.random.default_rng(0)
    w, x = rng.normal(size=(128, 256)), rng.normal(size=(64, 256))
    lines = ["read_time_s,rel_rms_error"]
    for t in fit.model.times_s:
        chip = program(w, CrossbarConfig(device=str(model_path), read_time_s=t), seed=1)
        chip.calibrate(x)
        ref = x @ w.T  # the float layer
        err = float(np.sqrt(np.mean((chip.matmul(x) - ref) ** 2) / np.mean(ref ** 2)))
        lines.append(f"{t:g},{err:.4f}")
        print(f"t = {t:g} s: relative RMS error of the layer {err:.3f}")
    write_outputs({out / "layer_error.csv": "\n".join(lines) + "\n"})
    print(f"wrote {model_path}, {out / 'fit.png'}, {out / 'layer_error.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

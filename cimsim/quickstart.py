"""``python -m cimsim``: the main job on the shipped data, end to end, in about a minute.

1. Fit a device model to the measured RRAM data shipped in ``data/measured/rram.csv``
   (``python -m cimsim.fit``): JSON + figure.
2. Program a layer onto simulated crossbars with that model and measure what the chip returns
   against the exact quantized matmul, for several read times after programming (relaxation)
   and ADC resolutions, over several chips: CSV + figure.

Everything lands in ``--out`` (default ``out/``), with the config used.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED_READ_NOISE = REPO.parent / "shared" / "measured" / "rram_techA_readnoise.tsv.gz"
READ_TIMES_S = (0.0, 1.0, 4.0, 1e5)
ADC_BITS = (6, 8, 10)


def crossbar_error_study(device_json: Path, n_out: int = 256, n_in: int = 512, batch: int = 64, chips: int = 8,
                         seed: int = 0, log=print) -> "list[dict]":
    """Relative RMS error of a programmed layer vs the exact quantized matmul (one row per setting)."""
    from .config import CrossbarConfig
    from .mvm_ref import matmul_quantized
    from .program import program, seed_sequence_child

    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n_out, n_in)) / np.sqrt(n_in)
    x = np.maximum(rng.normal(size=(batch, n_in)), 0.0)  # post-ReLU activations
    rows = []
    for t in READ_TIMES_S:
        for adc in ADC_BITS:
            cfg = CrossbarConfig(device=str(device_json), read_time_s=t, adc_bits=adc, read_noise=True)
            errs = []
            for c in range(chips):
                arr = program(w, cfg, seed_sequence_child(seed, c))
                arr.calibrate(x)
                y = arr.matmul(x)
                ref = matmul_quantized(arr, x)
                errs.append(float(np.sqrt(np.mean((y - ref) ** 2) / np.mean(ref**2))))
            rows.append(dict(read_time_s=t, adc_bits=adc, chips=chips, rel_rms_error_mean=float(np.mean(errs)),
                             rel_rms_error_std=float(np.std(errs, ddof=1))))
            log(f"cimsim: t = {t:g} s, {adc}-bit ADC: relative RMS error {np.mean(errs):.4f} +- {np.std(errs):.4f} "
                f"over {chips} chips")
    return rows


def _plot(rows: "list[dict]", read_noise: bool) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for adc in ADC_BITS:
        r = [x for x in rows if x["adc_bits"] == adc]
        t = [max(x["read_time_s"], 1e-3) for x in r]
        ax.errorbar(t, [x["rel_rms_error_mean"] for x in r], yerr=[x["rel_rms_error_std"] for x in r],
                    marker="o", capsize=3, label=f"{adc}-bit ADC")
    ax.set_xscale("log")
    ax.set_xlabel("read time after programming (s; 0 s drawn at 1 ms)")
    ax.set_ylabel("relative RMS error vs exact quantized matmul")
    ax.set_title(f"256x512 layer on the fitted RRAM model (tech C), read noise {'on' if read_noise else 'off'}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cimsim", description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(REPO / "data/measured/rram.csv"), help="measured data to fit")
    ap.add_argument("--out", type=Path, default=Path("out"), help="folder for the results (default out/)")
    ap.add_argument("--chips", type=int, default=8, help="programmed chips per setting (default 8)")
    ap.add_argument("--read-noise", default=str(SHARED_READ_NOISE) if SHARED_READ_NOISE.exists() else None,
                    help="read-noise time series to fit (default: the measured tech A series in ../shared when "
                         "present; none otherwise, and the study runs without read noise)")
    a = ap.parse_args(argv)
    if a.chips < 2:
        print("python -m cimsim: --chips must be at least 2", file=sys.stderr)
        return 2
    from . import fit
    from .io import write_outputs

    t0 = time.perf_counter()
    model_json = a.out / "rram.json"
    fit_args = [a.data, "-o", str(model_json), "--plot", str(a.out / "rram_fit.png")]
    if a.read_noise:
        fit_args += ["--read-noise", a.read_noise]
    rc = fit.main(fit_args)
    if rc:
        return rc
    rows = crossbar_error_study(model_json, chips=a.chips)
    from .device import DeviceModel

    has_read_noise = DeviceModel.load(model_json).read_noise_poly_uS is not None
    import pandas as pd

    config = {"data": a.data, "device_model": str(model_json), "read_times_s": READ_TIMES_S, "adc_bits": ADC_BITS,
              "chips": a.chips, "layer": [256, 512], "batch": 64, "seed": 0, "read_noise": has_read_noise,
              "read_noise_data": a.read_noise}
    write_outputs({
        a.out / "crossbar_error.csv": pd.DataFrame(rows).to_csv(index=False),
        a.out / "crossbar_error.png": _plot(rows, has_read_noise),
        a.out / "crossbar_error_config.json": json.dumps(config, indent=1),
    })
    print(f"wrote {a.out / 'crossbar_error.csv'}, {a.out / 'crossbar_error.png'} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m cimsim``: the main job on the shipped data, end to end, in about a minute.

1. Fit a device model to the measured RRAM data shipped in ``data/measured/rram.csv``
   (``python -m cimsim.fit``): JSON + figure.
2. Program a layer onto simulated crossbars with that model and measure what the chip returns
   against the exact quantized matmul, for several read times after programming (relaxation)
   and ADC resolutions, over several chips: CSV + figure.

Everything lands in ``--out`` (default ``out/``), with the config used, written together at the end
(all or nothing). Bad input or an output that cannot be written: one line on stderr, exit status 2.
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
    from cimsim.crossbar.config import CrossbarConfig
    from cimsim.crossbar.mvm_ref import matmul_quantized
    from cimsim.crossbar.program import program
    from cimsim.seeds import chip_seed, layer_seed

    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n_out, n_in)) / np.sqrt(n_in)
    x = np.maximum(rng.normal(size=(batch, n_in)), 0.0)  # post-ReLU activations
    rows = []
    for t in READ_TIMES_S:
        for adc in ADC_BITS:
            cfg = CrossbarConfig(device=str(device_json), read_time_s=t, adc_bits=adc, read_noise=True)
            errs = []
            for c in range(chips):
                arr = program(w, cfg, layer_seed(chip_seed(seed, c), 0))
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


OUTPUTS = ("rram.json", "rram_fit.png", "crossbar_error.csv", "crossbar_error.png", "crossbar_error_config.json")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; returns 0 on success, 2 on bad input (one line on stderr, nothing written)."""
    from cimsim.device.model import DeviceModelError
    from cimsim.device.fit_command import _Parser, _UsageError
    from cimsim.io import OutputError
    from cimsim.device.measured import MeasuredDataError

    ap = _Parser(prog="python -m cimsim", description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(REPO / "data/measured/rram.csv"), help="measured data to fit")
    ap.add_argument("--out", type=Path, default=Path("out"), help="folder for the results (default out/)")
    ap.add_argument("--chips", type=int, default=8, help="programmed chips per setting (default 8)")
    ap.add_argument("--read-noise", default=str(SHARED_READ_NOISE) if SHARED_READ_NOISE.exists() else None,
                    help="read-noise time series to fit (default: the measured tech A series in ../shared when "
                         "present; none otherwise, and the study runs without read noise; '' for none)")
    try:
        a = ap.parse_args(argv)
    except _UsageError as e:
        print(f"python -m cimsim: error: {e} (see python -m cimsim --help)", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    try:
        return _run(a)
    except (MeasuredDataError, DeviceModelError, OutputError, _UsageError) as e:
        print(f"python -m cimsim: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. no room for the temporary device model
        print(f"python -m cimsim: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2


def _run(a: argparse.Namespace) -> int:
    """Fit, study, then write every output together (all or nothing)."""
    import tempfile

    import pandas as pd

    from cimsim.crossbar.config import ConfigError
    from cimsim.device.fit import FitOptions, fit_device, format_table, render_figure
    from cimsim.device.fit_command import _UsageError, check_paths
    from cimsim.io import write_outputs

    if a.chips < 2:
        raise _UsageError(f"--chips must be at least 2, got {a.chips}")
    paths = {name: a.out / name for name in OUTPUTS}
    check_paths([("--data", a.data), ("--read-noise", a.read_noise)],
                [("--out", p) for p in paths.values()])
    t0 = time.perf_counter()
    print(f"cimsim: fitting a device model to {a.data}" + (f" and {a.read_noise}" if a.read_noise else ""), flush=True)
    result = fit_device(a.data, FitOptions(), a.read_noise or None)  # stderr is kept for the one-line error
    print(format_table(result))
    model_json = result.model.to_json() + "\n"
    with tempfile.TemporaryDirectory() as tmp:  # the study reads the model from a file; --out waits for the end
        device = Path(tmp) / "rram.json"
        device.write_text(model_json)
        try:
            rows = crossbar_error_study(device, chips=a.chips)
        except ConfigError as e:  # e.g. fewer levels than a cell of the study needs
            raise _UsageError(f"--data {a.data}: the device model fitted to it does not suit the study: {e}") from None
    has_read_noise = result.model.read_noise_poly_uS is not None
    config = {"data": a.data, "device_model": str(paths["rram.json"]), "read_times_s": READ_TIMES_S,
              "adc_bits": ADC_BITS, "chips": a.chips, "layer": [256, 512], "batch": 64, "seed": 0,
              "read_noise": has_read_noise, "read_noise_data": a.read_noise}
    write_outputs({
        paths["rram.json"]: model_json,
        paths["rram_fit.png"]: render_figure(result),
        paths["crossbar_error.csv"]: pd.DataFrame(rows).to_csv(index=False),
        paths["crossbar_error.png"]: _plot(rows, has_read_noise),
        paths["crossbar_error_config.json"]: json.dumps(config, indent=1),
    })
    print(f"wrote {', '.join(str(p) for p in paths.values())} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

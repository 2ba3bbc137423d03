"""Calibrate the write-verify pulse model against measured pulse-count statistics.

Data: ``shared/reference/write_verify_pulse_stats.csv`` -- pulses per cell on 1T1R RRAM arrays
(RADAR, Levy et al., IEEE TED 2021, doi:10.1109/TED.2021.3097975) per algorithm, bits per cell and
level; resistance windows in ohm, conductances in siemens. :func:`simulate_row` simulates one row
(cells start at gmin; pulse limit: the row's p99 when fewer than 99 % of its cells succeeded, else
2000; noiseless verify reads). :func:`calibrate` fits one parameter set per experiment (presets
``radar_fppv``, ``radar_fppv_3bpc``, ``radar_ispp``; :data:`EXPERIMENT_PRESET`) on the
intermediate levels only.

CLI (exit status 0, or 2 for bad options or data)::

    python -m cimsim.writeverify.calibration              # side-by-side table for the presets
    python -m cimsim.writeverify.calibration --fit        # re-fit, print the fitted parameters and the table
    python -m cimsim.writeverify.calibration --ember      # also the EMBER energy-per-bit cross-check

Row simulation, calibrated levels and the objective: docs/design.md,
section 'Pulse-model calibration (cimsim/writeverify/calibration.py)'.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cimsim.device.model import DeviceModel
from cimsim.writeverify import (
    PulseModel,
    WriteVerifyError,
    build_inputs,
    pulse_preset,
    pulse_summary,
    run_kernel,
)

DEFAULT_CSV = Path(__file__).resolve().parents[3] / "shared" / "reference" / "write_verify_pulse_stats.csv"
RADAR_GMIN_S = 1e-6
RADAR_GMAX_S = 260e-6
DEFAULT_LIMIT = 2000
STATS = ("pulses_p25", "pulses_median", "pulses_p75", "pulses_p90", "pulses_mean", "set_mean", "reset_mean")
# which preset simulates which measured experiment
EXPERIMENT_PRESET = {
    "fppv_2bpc_chip1": "radar_fppv",
    "fppv_3bpc_chip1": "radar_fppv_3bpc",
    "ispp_2bpc_chip2": "radar_ispp",
}
# the parameters each fit adjusts (log-space); ISPP also fits its amplitude ramp
FIT_PARAMS = {
    "fppv": ("alpha_set", "alpha_reset", "sigma_c2c", "sigma_d2d"),
    "ispp": ("alpha_set", "alpha_reset", "sigma_c2c", "sigma_d2d", "ispp_step_V", "ispp_set_start_V"),
}


@dataclass(frozen=True)
class MeasuredRow:
    """One (experiment, level) row of the measured statistics; conductances in S."""

    experiment: str
    algorithm: str
    bits_per_cell: int
    level: int
    cells: int
    lo_S: float
    hi_S: float
    success_rate: float
    stats: dict[str, float]

    @property
    def intermediate(self) -> bool:
        """True for a two-sided window (not the lowest or highest level)."""
        return 0 < self.level < 2**self.bits_per_cell - 1

    @property
    def max_pulses(self) -> int:
        """Pulse limit inferred from the data (see the module docstring)."""
        return int(round(self.stats["pulses_p99"])) if self.success_rate < 0.99 else DEFAULT_LIMIT


#: columns of the measured pulse statistics CSV (shared/reference/write_verify_pulse_stats.csv)
PULSE_STATS_COLUMNS = ("experiment", "algorithm", "bits_per_cell", "level", "cells", "r_lo_ohm", "r_hi_ohm",
                       "success_rate", "pulses_mean", "pulses_p10", "pulses_p25", "pulses_median", "pulses_p75",
                       "pulses_p90", "pulses_p99", "set_mean", "reset_mean")


class PulseStatsError(ValueError):
    """A pulse statistics file that cannot be used (one line naming the file and line)."""


def load_pulse_stats(path: str | Path | None = None) -> list[MeasuredRow]:
    """Read the measured pulse statistics CSV (columns as in the reference README)."""
    path = Path(path) if path is not None else DEFAULT_CSV
    if not path.exists():
        raise FileNotFoundError(f"{path}: pulse statistics CSV not found (pass --csv)")
    rows = []
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in PULSE_STATS_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise PulseStatsError(f"{path}: missing column {missing[0]!r} (needs {', '.join(PULSE_STATS_COLUMNS)})")
            for r in reader:
                try:
                    r_lo, r_hi = float(r["r_lo_ohm"]), float(r["r_hi_ohm"])
                    stats = {k: float(r[k]) for k in PULSE_STATS_COLUMNS[8:]}
                    row = MeasuredRow(
                        experiment=r["experiment"], algorithm=r["algorithm"].lower(),
                        bits_per_cell=int(r["bits_per_cell"]), level=int(r["level"]), cells=int(r["cells"]),
                        lo_S=max(1.0 / r_hi, RADAR_GMIN_S),
                        hi_S=RADAR_GMAX_S if r_lo <= 0 else min(1.0 / r_lo, RADAR_GMAX_S),
                        success_rate=float(r["success_rate"]), stats=stats)
                except (TypeError, ValueError, ZeroDivisionError, AttributeError):
                    raise PulseStatsError(f"{path}: line {reader.line_num}: a missing or non-numeric value") from None
                if not (all(math.isfinite(v) for v in (r_lo, r_hi, row.success_rate, *stats.values()))
                        and r_hi > 0 and row.cells > 0 and 0 <= row.success_rate <= 1):
                    raise PulseStatsError(f"{path}: line {reader.line_num}: values out of range (r_hi_ohm > 0, "
                                          "cells > 0, success_rate in [0, 1], all finite)")
                rows.append(row)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise PulseStatsError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    if not rows:
        raise PulseStatsError(f"{path}: no data rows")
    return rows


def radar_device() -> DeviceModel:
    """A noiseless device with the RADAR chip's conductance range (pulse counting only)."""
    return DeviceModel(name="radar-range", gmin_S=RADAR_GMIN_S, gmax_S=RADAR_GMAX_S, times_s=(0.0,),
                       sigma_poly_uS=((0.0,),))


def simulate_row(row: MeasuredRow, pm: PulseModel, n_cells: int = 4000, seed: int = 0) -> dict[str, float]:
    """Simulated statistics of one measured row: pulse mean/quantiles, success rate, SET/RESET means."""
    dev = radar_device()
    lo = np.full(n_cells, row.lo_S)
    hi = np.full(n_cells, row.hi_S)
    g0 = np.full(n_cells, dev.gmin_S)
    inp = build_inputs(lo, hi, g0, np.zeros(n_cells, np.int8), dev, pm, row.algorithm,
                       seed * 1000 + row.level, row.max_pulses)
    _, out_i = run_kernel(inp)
    out = pulse_summary(out_i[:, 0] + out_i[:, 1])
    out.update(success_rate=float(out_i[:, 3].mean()), set_mean=float(out_i[:, 0].mean()),
               reset_mean=float(out_i[:, 1].mean()))
    return out


def compare(rows: Sequence[MeasuredRow], models: dict[str, PulseModel] | None = None, n_cells: int = 4000,
            seed: int = 0) -> list[dict[str, Any]]:
    """Measured vs simulated statistics per row; ``models`` maps experiment -> pulse model
    (default: :data:`EXPERIMENT_PRESET`)."""
    out = []
    for row in rows:
        pm = (models or {}).get(row.experiment) or pulse_preset(EXPERIMENT_PRESET[row.experiment])
        sim = simulate_row(row, pm, n_cells, seed)
        out.append({"experiment": row.experiment, "level": row.level, "calibrated": row.intermediate,
                    "measured": {**row.stats, "success_rate": row.success_rate}, "simulated": sim})
    return out


def format_table(result: Sequence[dict[str, Any]]) -> str:
    """The side-by-side table: measured/simulated median, mean, p90, p99 and success rate."""
    head = (f"{'experiment':<17}{'lvl':>3} {'cal':>3} | {'median':>13} | {'mean':>15} | {'p90':>13} | "
            f"{'p99':>15} | {'success':>13} | {'mean ratio':>10}")
    lines = [head, " " * 25 + "|  meas    sim |   meas     sim |  meas    sim |   meas     sim |  meas   sim  |  sim/meas",
             "-" * len(head)]
    for r in result:
        m, s = r["measured"], r["simulated"]
        lines.append(
            f"{r['experiment']:<17}{r['level']:>3} {'yes' if r['calibrated'] else 'no':>3} | "
            f"{m['pulses_median']:6.0f} {s['pulses_median']:6.0f} | {m['pulses_mean']:7.1f} {s['pulses_mean']:7.1f} | "
            f"{m['pulses_p90']:6.0f} {s['pulses_p90']:6.0f} | {m['pulses_p99']:7.0f} {s['pulses_p99']:7.0f} | "
            f"{m['success_rate']:6.3f} {s['success_rate']:6.3f} | {s['pulses_mean'] / m['pulses_mean']:9.2f}")
    return "\n".join(lines)


def _loss(sim: dict[str, float], meas: dict[str, float]) -> float:
    return sum((math.log1p(sim[k]) - math.log1p(meas[k])) ** 2 for k in STATS)


def calibrate(rows: Sequence[MeasuredRow], start: PulseModel, n_cells: int = 2000, seed: int = 0,
              maxiter: int = 200, start_alphas: Sequence[float] = (0.005, 0.02, 0.05, 0.15, 0.4),
              verbose: bool = False) -> tuple[PulseModel, float]:
    """Fit :data:`FIT_PARAMS` of ``start`` to the intermediate levels of ``rows`` (one algorithm).

    Returns ``(fitted model, final loss)``; the loss is the summed squared log error of
    :data:`STATS` over the levels (Nelder-Mead in log parameters, common random numbers). The
    loss has local minima, so the fit is started from ``start`` and from ``start`` with both
    median steps set to each of ``start_alphas``; the best result wins.
    """
    from scipy.optimize import minimize

    cal = [r for r in rows if r.intermediate]
    if not cal:
        raise WriteVerifyError("calibrate: no intermediate (two-sided window) levels among the rows")
    algos = {r.algorithm for r in cal}
    if len(algos) != 1:
        raise WriteVerifyError(f"calibrate one algorithm at a time, got {sorted(algos)}")
    names = FIT_PARAMS[algos.pop()]
    x0 = np.log([getattr(start, k) for k in names])

    def model_of(x: np.ndarray) -> PulseModel:
        return start.replace(**{k: float(v) for k, v in zip(names, np.exp(x))})

    def objective(x: np.ndarray) -> float:
        if np.any(np.abs(x) > 12) or any(k.startswith("alpha") and v > 1.0 for k, v in zip(names, np.exp(x))):
            return 1e9  # outside the model's domain (a median step above the whole range)
        try:
            pm = model_of(x)
        except WriteVerifyError:
            return 1e9
        loss = sum(_loss(simulate_row(r, pm, n_cells, seed), r.stats) for r in cal)
        if verbose:
            print(f"  loss {loss:8.4f}  " + " ".join(f"{k}={v:.4g}" for k, v in zip(names, np.exp(x))), flush=True)
        return loss

    best = None
    for a in (None, *start_alphas):
        x = x0.copy()
        if a is not None:
            x[list(names).index("alpha_set")] = x[list(names).index("alpha_reset")] = math.log(a)
        res = minimize(objective, x, method="Nelder-Mead", options={"maxiter": maxiter, "xatol": 1e-3, "fatol": 1e-4})
        if best is None or res.fun < best.fun:
            best = res
    return model_of(best.x), float(best.fun)


def _row_cost(row: MeasuredRow, pm: PulseModel, n_cells: int, seed: int, config: Any) -> Any:
    """Simulate ``n_cells`` cells of one row (as :func:`simulate_row`) and cost them."""
    from types import SimpleNamespace

    from cimsim.cost import write_verify_cost

    dev = radar_device()
    inp = build_inputs(np.full(n_cells, row.lo_S), np.full(n_cells, row.hi_S), np.full(n_cells, dev.gmin_S),
                       np.zeros(n_cells, np.int8), dev, pm, row.algorithm, seed * 1000 + row.level, row.max_pulses)
    out_f, out_i = run_kernel(inp)
    res = SimpleNamespace(pulses_set=out_i[:, 0], pulses_reset=out_i[:, 1], reads=out_i[:, 2],
                          v2g_set_V2S=out_f[:, 1], v2g_reset_V2S=out_f[:, 2], g_read_sum_S=out_f[:, 3])
    return write_verify_cost(res, config, bits_per_cell=row.bits_per_cell)


def ember_crosscheck(rows: Sequence[MeasuredRow] | None = None, n_cells: int = 4000, seed: int = 0,
                     config: Any = None) -> list[dict[str, Any]]:
    """Write+verify energy per bit against EMBER's full-chip figures (0.4-0.5 nJ/bit at 1 bit/cell,
    1-3 nJ/bit at 2 bits/cell; Levy et al., shared/reference/README.md s.2).

    For each algorithm: 2 bits/cell = the four RADAR 2-bit windows, equally used; 1 bit/cell = its
    lowest and highest windows (LRS > 200 uS, HRS < 12.5 uS). Two estimates per case, both with
    the :class:`cimsim.cost.CostConfig` constants (cell energy V^2 G t_pulse, verify read = one
    ADC conversion): ``simulated`` from the calibrated pulse model, ``measured_counts`` from the
    measured mean SET/RESET/read counts with G at the window centre (or the bound). Returns one
    row per (algorithm, bits per cell) with nJ/bit and the EMBER range.
    """
    from cimsim.cost import CostConfig

    config = config or CostConfig()
    rows = list(rows) if rows is not None else load_pulse_stats()
    ember = {1: (0.4, 0.5), 2: (1.0, 3.0)}
    out = []
    for exp in ("fppv_2bpc_chip1", "ispp_2bpc_chip2"):
        sel = [r for r in rows if r.experiment == exp]
        if not sel:
            continue
        pm = pulse_preset(EXPERIMENT_PRESET[exp])
        for bpc, levels in ((1, (0, 3)), (2, (0, 1, 2, 3))):
            use = [r for r in sel if r.level in levels]
            sim = [_row_cost(r, pm, n_cells, seed, config) for r in use]
            sim_J_bit = sum(c.energy_J for c in sim) / (len(use) * n_cells * bpc)
            meas_J = 0.0
            for r in use:  # cell energy at the window centre, amplitude of the FPPV pulse
                g = 0.5 * (r.lo_S + r.hi_S)
                meas_J += (r.stats["set_mean"] * pm.v_set_V**2 + r.stats["reset_mean"] * pm.v_reset_V**2) * g * config.t_pulse_s
                meas_J += (r.stats["set_mean"] + r.stats["reset_mean"] + 1) * config.adc_energy_J(config.verify_adc_bits)
            meas_J_bit = meas_J / (len(use) * bpc)
            lo, hi = ember[bpc]
            out.append({"algorithm": sel[0].algorithm, "bits_per_cell": bpc, "simulated_nJ_per_bit": sim_J_bit * 1e9,
                        "measured_counts_nJ_per_bit": meas_J_bit * 1e9, "ember_nJ_per_bit": (lo, hi),
                        "ember_over_simulated": (lo / (sim_J_bit * 1e9), hi / (sim_J_bit * 1e9))})
    return out


def format_ember(result: Sequence[dict[str, Any]]) -> str:
    lines = [f"{'algorithm':<9} {'bits/cell':>9} {'simulated':>10} {'from counts':>12} {'EMBER':>10} {'EMBER/sim':>12}   (nJ/bit)"]
    for r in result:
        lo, hi = r["ember_nJ_per_bit"]
        a, b = r["ember_over_simulated"]
        lines.append(f"{r['algorithm']:<9} {r['bits_per_cell']:>9} {r['simulated_nJ_per_bit']:>10.3f} "
                     f"{r['measured_counts_nJ_per_bit']:>12.3f} {lo:>4.1f}-{hi:<4.1f} {a:>5.1f}-{b:<5.1f}x")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cimsim.writeverify.calibration", description=__doc__.split("\n")[0])
    ap.add_argument("--csv", default=None, help=f"measured statistics (default {DEFAULT_CSV})")
    ap.add_argument("--cells", type=int, default=4000, help="simulated cells per level")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fit", action="store_true", help="re-fit the presets before printing the table")
    ap.add_argument("--maxiter", type=int, default=200)
    ap.add_argument("--ember", action="store_true", help="also print the EMBER energy-per-bit cross-check")
    args = ap.parse_args(argv)
    bad = [f"--{k} must be >= {lo}, got {getattr(args, k)}" for k, lo in (("cells", 1), ("seed", 0), ("maxiter", 1))
           if getattr(args, k) < lo]
    try:
        if bad:
            raise PulseStatsError(bad[0])
        rows = load_pulse_stats(args.csv)
    except (PulseStatsError, FileNotFoundError) as e:
        print(f"{ap.prog}: error: {e}", file=sys.stderr)
        return 2
    models: dict[str, PulseModel] = {}
    if args.fit:
        for exp, preset in EXPERIMENT_PRESET.items():
            sel = [r for r in rows if r.experiment == exp]
            if not sel:
                continue
            pm, loss = calibrate(sel, pulse_preset(preset), n_cells=max(args.cells // 2, 500), seed=args.seed,
                                 maxiter=args.maxiter)
            models[exp] = pm
            fitted = {k: round(getattr(pm, k), 5) for k in FIT_PARAMS[sel[0].algorithm]}
            print(f"{exp}: loss {loss:.4f}  {fitted}")
    print(format_table(compare(rows, models, args.cells, args.seed)))
    if args.ember:
        print()
        print(format_ember(ember_crosscheck(rows, args.cells, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

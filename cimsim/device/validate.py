"""Validation of fitted device families against the measured cells themselves.

``python -m cimsim.fit CELLS --validate DIR [--validate-families quantile,auto] [--chips 200]``
writes, all together at the end (exit 2 on bad input, nothing written):

- ``heldout.csv``: each family fitted on a random half of every (read time, level)'s cells and
  compared with the other half: two-sample KS distance, its 5 % critical value
  ``1.36 sqrt(1/n_fit + 1/n_test)``, and the model's error at the 0.1/1/5/50/95/99/99.9 %
  quantiles (uS, model minus held-out cells). Family ``empirical`` here is the fit half itself
  (the floor any family can reach with that many cells).
- ``leave_one_level_out.csv``: each interior level predicted by a model fitted without it
  (interpolation between its neighbours), KS against all its cells; family ``neighbours`` is the
  model-free prediction, the two neighbours' measured quantile functions averaged (what any
  interpolation between them can reach when levels differ from each other beyond a smooth trend).
- ``network.csv``: a small MLP on scikit-learn digits, weights on differential pairs of one
  multi-level cell (no DAC/ADC), chips from each family's model and from the ``empirical``
  device (every cell a measured cell of its level and read time), per read time and level
  subset: mean, std, 5th percentile and worst chip accuracy.
- ``targets.csv``: issue #17's targets per family, measured value and pass/fail.
- ``validation.png`` and ``validate_config.json`` (the options used).

Model distributions are measured by drawing ``model_draws`` cells per (level, time) through the
model's own fast sampler, so floor, stuck cells and tails count as a network sees them.
Rationale and results: docs/design.md, "Device-model validation".
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import numbers
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from cimsim.device.fit import FIT_FAMILIES, FitOptions, LevelResult, fit_levels, model_from_levels
from cimsim.device.measured import CellTable, MeasuredDataError
from cimsim.device.model import DeviceModel
from cimsim.progress import Progress
from cimsim.seeds import chip_seed, derive

_US = 1e-6
PROBS = (0.001, 0.01, 0.05, 0.5, 0.95, 0.99, 0.999)
KS_C95 = 1.36  # two-sample KS 5 % critical coefficient
TARGETS = {  # issue #17, item 5
    "heldout_share_above_crit": 0.10, "heldout_max_ratio": 2.0, "lolo_median_ks": 0.06,
    "network_mean_diff_pts": 0.3, "network_std_ratio_lo": 0.8, "network_std_ratio_hi": 1.25,
    "network_p05_diff_pts": 1.0,
}
# seed keys of the independent streams of one validation
_SPLIT, _HELDOUT, _LOLO, _NET_INIT, _CHIPS = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class ValidateOptions:
    """Options of :func:`validate` (see ``python -m cimsim.fit --help``)."""

    families: tuple[str, ...] = ("quantile", "auto")
    chips: int = 500
    seed: int = 0
    model_draws: int = 100_000
    network_levels: tuple[int, ...] = (32, 16, 8, 4)
    hidden: int = 64
    train_steps: int = 300

    def check(self) -> None:
        """Raise :class:`MeasuredDataError` naming the option at fault."""
        def whole(v: Any, lo: int) -> bool:
            return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= lo

        bad = [f for f in self.families if f not in FIT_FAMILIES or f == "empirical"]
        if not self.families or bad:
            raise MeasuredDataError(
                f"--validate-families: {', '.join(map(repr, bad)) or 'none given'}; choose from "
                f"{', '.join(f for f in FIT_FAMILIES if f != 'empirical')} (the empirical device is the reference)")
        if not whole(self.chips, 2):
            raise MeasuredDataError(f"--chips must be an integer >= 2, got {self.chips!r}")
        if not whole(self.seed, 0):
            raise MeasuredDataError(f"--seed must be an integer >= 0, got {self.seed!r}")
        if not whole(self.model_draws, 1000):
            raise MeasuredDataError(f"model_draws must be an integer >= 1000, got {self.model_draws!r}")
        if not self.network_levels or not all(whole(n, 2) for n in self.network_levels):
            raise MeasuredDataError(f"network levels must be integers >= 2, got {self.network_levels!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# ------------------------------------------------------------------------------ data subsets
def split_halves(data: CellTable, seed: int) -> tuple[CellTable, CellTable]:
    """Each (time, level)'s cells split at random into a fit half and a test half (the fit half
    gets the smaller one when the count is odd)."""
    rng = np.random.default_rng(derive(seed, _SPLIT))
    fit, test = {}, {}
    for key in sorted(data.g_uS):
        g = data.g_uS[key]
        perm = rng.permutation(g.size)
        fit[key], test[key] = g[perm[: g.size // 2]], g[perm[g.size // 2:]]
    return (dataclasses.replace(data, g_uS=fit, first_line={}), dataclasses.replace(data, g_uS=test, first_line={}))


def without_level(data: CellTable, li: int) -> CellTable:
    """``data`` without level index ``li`` (the others re-indexed)."""
    keep = np.array([k for k in range(data.levels.size) if k != li])
    new = {int(k): j for j, k in enumerate(keep)}
    return dataclasses.replace(data, levels=data.levels[keep], target_uS=data.target_uS[keep],
                               lo_uS=data.lo_uS[keep], hi_uS=data.hi_uS[keep], first_line={},
                               g_uS={(t, new[k]): g for (t, k), g in data.g_uS.items() if k != li})


def levels_without(levels: list[LevelResult], li: int) -> list[LevelResult]:
    """Per-level fits without level index ``li``, the others re-indexed (order kept)."""
    return [dataclasses.replace(r, level=r.level - (r.level > li)) for r in levels if r.level != li]


# ------------------------------------------------------------------------------ statistics
def ks_distance(a_sorted: np.ndarray, b_sorted: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance of two sorted samples."""
    x = np.concatenate([a_sorted, b_sorted])
    fa = np.searchsorted(a_sorted, x, side="right") / a_sorted.size
    fb = np.searchsorted(b_sorted, x, side="right") / b_sorted.size
    return float(np.max(np.abs(fa - fb)))


def model_cells_uS(dm: DeviceModel, target_S: float, t_s: float, n: int, seed: int) -> np.ndarray:
    """``n`` cells (uS, sorted) programmed to ``target_S`` and read at ``t_s`` by the model's fast
    sampler (drift, stuck cells and floor included)."""
    g = dm.sample_levels(np.array([target_S]), np.zeros(n, dtype=np.int64), t_s, np.random.default_rng(seed))
    return np.sort(g) / _US


def _quantile_cols(model_uS: np.ndarray, cells_uS: np.ndarray) -> dict[str, float]:
    dq = np.quantile(model_uS, PROBS) - np.quantile(cells_uS, PROBS)
    return {f"dq{100 * p:g}_uS": float(v) for p, v in zip(PROBS, dq)}


def _time_indices(data: CellTable) -> list[int]:
    return list(range(data.times_s.size))


# ------------------------------------------------------------------------------ checks
def heldout_rows(data: CellTable, family: str, fit_options: FitOptions, options: ValidateOptions,
                 halves: tuple[CellTable, CellTable]) -> list[dict[str, Any]]:
    """Held-out check of ``family`` (``empirical``: the fit half's own cells)."""
    fit_half, test_half = halves
    times = _time_indices(data)
    fo = dataclasses.replace(fit_options, family=family)
    dm = model_from_levels(fit_half, times, fit_levels(fit_half, times, family, False), fo).model
    rows = []
    for ti, t in enumerate(data.times_s):
        for li in range(data.levels.size):
            a, b = fit_half.g_uS[(ti, li)], np.sort(test_half.g_uS[(ti, li)])
            m = model_cells_uS(dm, dm.levels_S[li], float(t), options.model_draws,
                               derive(options.seed, _HELDOUT, ti, li))
            ks, crit = ks_distance(m, b), KS_C95 * math.sqrt(1 / a.size + 1 / b.size)
            rows.append({"family": family, "time_s": float(t), "level": int(data.levels[li]),
                         "target_uS": float(data.target_uS[li]), "n_fit": a.size, "n_test": b.size, "ks": ks,
                         "ks_crit": crit, "ks_ratio": ks / crit, **_quantile_cols(m, b)})
    return rows


def lolo_rows(data: CellTable, family: str, levels: list[LevelResult], fit_options: FitOptions,
              options: ValidateOptions) -> list[dict[str, Any]]:
    """Leave-one-level-out check of ``family``: every interior level predicted from the others.
    ``levels``: the family's fits on all of ``data`` (time-major)."""
    times = _time_indices(data)
    fo = dataclasses.replace(fit_options, family=family)
    rows = []
    for li in range(1, data.levels.size - 1):
        dm = model_from_levels(without_level(data, li), times, levels_without(levels, li), fo).model
        for ti, t in enumerate(data.times_s):
            cells = np.sort(data.g_uS[(ti, li)])
            m = model_cells_uS(dm, float(data.target_uS[li]) * _US, float(t), options.model_draws,
                               derive(options.seed, _LOLO, ti, li))
            rows.append({"family": family, "time_s": float(t), "level": int(data.levels[li]),
                         "target_uS": float(data.target_uS[li]), "n": cells.size, "ks": ks_distance(m, cells),
                         **_quantile_cols(m, cells)})
    return rows


def lolo_neighbour_rows(data: CellTable, options: ValidateOptions) -> list[dict[str, Any]]:
    """Model-free leave-one-level-out (family ``neighbours``): each interior level's cells against
    the average of its two neighbours' measured error quantile functions (``model_draws`` points)."""
    p = (np.arange(options.model_draws) + 0.5) / options.model_draws
    rows = []
    for li in range(1, data.levels.size - 1):
        for ti, t in enumerate(data.times_s):
            cells = np.sort(data.g_uS[(ti, li)])
            side = [np.quantile(data.g_uS[(ti, k)] - data.target_uS[k], p) for k in (li - 1, li + 1)]
            m = np.sort(0.5 * (side[0] + side[1]) + data.target_uS[li])
            rows.append({"family": "neighbours", "time_s": float(t), "level": int(data.levels[li]),
                         "target_uS": float(data.target_uS[li]), "n": cells.size, "ks": ks_distance(m, cells),
                         **_quantile_cols(m, cells)})
    return rows


# ------------------------------------------------------------------------------ network check
@dataclass(frozen=True)
class DigitsMLP:
    """A 64-hidden-10 ReLU MLP trained on scikit-learn digits (float64): weights ``w1`` (64, H),
    ``w2`` (H, 10), digital biases, and the held-out quarter of the images it is tested on."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def accuracy(self, w1: np.ndarray, w2: np.ndarray) -> float:
        """Test accuracy (0..1) with the weights ``w1``, ``w2`` (the chip's) and the digital biases."""
        h = np.maximum(self.x_test @ w1 + self.b1, 0.0)
        return float(np.mean(np.argmax(h @ w2 + self.b2, axis=1) == self.y_test))


def train_digits_mlp(seed: int, hidden: int = 64, steps: int = 300) -> DigitsMLP:
    """Plain training, full-batch Adam (lr 0.01) on three quarters of the digits."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    rng = np.random.default_rng(derive(seed, _NET_INIT))
    perm = rng.permutation(y.size)
    test, train = perm[: y.size // 4], perm[y.size // 4:]
    xt, yt = x[train], y[train]
    onehot = np.eye(10)[yt]
    params = [rng.normal(0, math.sqrt(2 / 64), (64, hidden)), np.zeros(hidden),
              rng.normal(0, math.sqrt(1 / hidden), (hidden, 10)), np.zeros(10)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for step in range(1, steps + 1):
        w1, b1, w2, b2 = params
        pre = xt @ w1 + b1
        h = np.maximum(pre, 0.0)
        z = h @ w2 + b2
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        dz = (p - onehot) / yt.size
        dh = (dz @ w2.T) * (pre > 0)
        grads = [xt.T @ dh, dh.sum(0), h.T @ dz, dz.sum(0)]
        for i, g in enumerate(grads):
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            params[i] = params[i] - 0.01 * (m[i] / (1 - 0.9 ** step)) / (np.sqrt(v[i] / (1 - 0.999 ** step)) + 1e-8)
    return DigitsMLP(*params, x_test=x[test], y_test=y[test])


def pair_levels(w: np.ndarray, n_levels: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Level indices (G+, G-) of weights ``w`` on differential pairs of ``n_levels``-level cells:
    ``k = round(w / max|w| * (n_levels - 1))`` on one side, level 0 on the other; returns
    ``(index_pos, index_neg, max|w|)``."""
    wmax = float(np.abs(w).max())
    k = np.rint(w / wmax * (n_levels - 1)).astype(np.int64)
    return np.maximum(k, 0), np.maximum(-k, 0), wmax


def chip_accuracy(net: DigitsMLP, dm: DeviceModel, n_levels: int, t_s: float, seed: int) -> float:
    """Accuracy of one chip (seed ``seed``): both layers programmed on ``dm``'s ``n_levels`` levels,
    read at ``t_s``; weight = (G+ - G-) / (G_top - G_bottom) * max|w|."""
    lv = dm.level_conductances(n_levels)
    (p1, n1, m1), (p2, n2, m2) = pair_levels(net.w1, n_levels), pair_levels(net.w2, n_levels)
    idx = np.concatenate([a.ravel() for a in (p1, n1, p2, n2)])  # one sampler call per chip
    g = dm.sample_levels(lv, idx, t_s, np.random.default_rng(seed))
    a, b = p1.size, p2.size
    g1 = (g[:a] - g[a:2 * a]).reshape(p1.shape)
    g2 = (g[2 * a:2 * a + b] - g[2 * a + b:]).reshape(p2.shape)
    span = lv[-1] - lv[0]
    return net.accuracy(g1 / span * m1, g2 / span * m2)


def network_rows(net: DigitsMLP, models: dict[str, DeviceModel], times_s: Sequence[float],
                 options: ValidateOptions, bar: Progress | None = None) -> list[dict[str, Any]]:
    """Chip statistics per model, read time and level subset; chip ``c`` has the same seed in
    every model."""
    rows = []
    seeds = [chip_seed(derive(options.seed, _CHIPS), c) for c in range(options.chips)]
    n_dev = min(len(dm.levels_S) for dm in models.values())
    for t in times_s:
        for nl in (n for n in options.network_levels if n <= n_dev):
            for name, dm in models.items():
                acc = 100 * np.array([chip_accuracy(net, dm, nl, float(t), s) for s in seeds])
                rows.append({"family": name, "time_s": float(t), "n_levels": nl, "chips": acc.size,
                             "mean_pct": float(acc.mean()), "std_pct": float(acc.std(ddof=1)),
                             "p05_pct": float(np.percentile(acc, 5)), "worst_pct": float(acc.min())})
        if bar is not None:
            bar.update(note=f"network check at t = {t:g} s done")
    return rows


def _network_targets(rows: list[dict], ref: list[dict], fam: str, against: str) -> list[dict]:
    """Mean, std-ratio and 5th-percentile targets of network rows ``rows`` against ``ref``
    (same read times and level counts); the note gives how many cases pass and the largest mean
    difference in standard errors of the difference."""
    by = {(r["time_s"], r["n_levels"]): r for r in ref}
    pairs = [(r, by[(r["time_s"], r["n_levels"])]) for r in rows]
    dmean = [abs(a["mean_pct"] - b["mean_pct"]) for a, b in pairs]
    se = [math.sqrt(a["std_pct"] ** 2 / a["chips"] + b["std_pct"] ** 2 / b["chips"]) for a, b in pairs]
    ratio = [a["std_pct"] / b["std_pct"] if b["std_pct"] > 0 else math.inf for a, b in pairs]
    dp05 = [abs(a["p05_pct"] - b["p05_pct"]) for a, b in pairs]
    n, lim = len(pairs), TARGETS
    inside = [lim["network_std_ratio_lo"] <= x <= lim["network_std_ratio_hi"] for x in ratio]
    worst_z = max(d / s if s > 0 else math.inf for d, s in zip(dmean, se))
    row = {"family": fam, "against": against}
    return [
        {**row, "target": "network_mean_diff_pts", "value": max(dmean), "limit": lim["network_mean_diff_pts"],
         "pass": max(dmean) <= lim["network_mean_diff_pts"],
         "note": f"{sum(d <= lim['network_mean_diff_pts'] for d in dmean)}/{n} cases pass; largest difference "
                 f"{worst_z:.1f} standard errors"},
        {**row, "target": "network_std_ratio", "value": float(max(ratio, key=lambda x: abs(math.log(x)))),
         "limit": f"{lim['network_std_ratio_lo']}-{lim['network_std_ratio_hi']}", "pass": all(inside),
         "note": f"range {min(ratio):.2f}-{max(ratio):.2f}; {sum(inside)}/{n} cases pass"},
        {**row, "target": "network_p05_diff_pts", "value": max(dp05), "limit": lim["network_p05_diff_pts"],
         "pass": max(dp05) <= lim["network_p05_diff_pts"],
         "note": f"{sum(d <= lim['network_p05_diff_pts'] for d in dp05)}/{n} cases pass"},
    ]


def target_rows(heldout: list[dict], lolo: list[dict], network: list[dict], families: Sequence[str]) -> list[dict]:
    """Issue #17's targets per family: measured value, limit, pass. The network targets compare
    each family with the empirical device, and (the floor the data allow) the empirical devices
    of the two halves of the cells with each other (``cells_a`` against ``cells_b``)."""
    out = []
    for fam in (*families, "empirical", "neighbours"):
        h = [r for r in heldout if r["family"] == fam and r["time_s"] > 0]
        row = {"family": fam, "against": "held-out cells"}
        if h:
            ratio = np.array([r["ks_ratio"] for r in h])
            share = float(np.mean(ratio > 1))
            out.append({**row, "target": "heldout_share_above_crit", "value": share,
                        "limit": TARGETS["heldout_share_above_crit"],
                        "pass": share <= TARGETS["heldout_share_above_crit"], "note": f"{len(h)} (level, time) pairs, t > 0"})
            out.append({**row, "target": "heldout_max_ratio", "value": float(ratio.max()),
                        "limit": TARGETS["heldout_max_ratio"], "pass": ratio.max() <= TARGETS["heldout_max_ratio"],
                        "note": "largest KS / critical value"})
        lo = [r["ks"] for r in lolo if r["family"] == fam]
        if lo:
            med = float(np.median(lo))
            out.append({"family": fam, "against": "left-out level", "target": "lolo_median_ks", "value": med,
                        "limit": TARGETS["lolo_median_ks"], "pass": med <= TARGETS["lolo_median_ks"],
                        "note": f"{len(lo)} (interior level, time) pairs" + (
                            "; model-free: the neighbours' measured quantiles averaged" if fam == "neighbours" else "")})
    emp = [r for r in network if r["family"] == "empirical"]
    for fam in families:
        out += _network_targets([r for r in network if r["family"] == fam], emp, fam, "empirical")
    half_a = [r for r in network if r["family"] == "cells_a"]
    if half_a:
        out += _network_targets(half_a, [r for r in network if r["family"] == "cells_b"], "cells_a", "cells_b")
    for r in out:
        r["pass"] = bool(r["pass"])
    return out


# ------------------------------------------------------------------------------ the command
@dataclass
class Validation:
    """What :func:`validate` measured (rows as written to the CSVs)."""

    heldout: list[dict]
    lolo: list[dict]
    network: list[dict]
    targets: list[dict]
    clean_accuracy_pct: float
    options: ValidateOptions
    source: str


def validate(data: CellTable, fit_options: FitOptions, options: ValidateOptions = ValidateOptions(),
             progress: bool = False) -> Validation:
    """Run the three checks on per-cell ``data`` for every family of ``options``."""
    if not isinstance(data, CellTable):
        raise MeasuredDataError(f"{data.path}: --validate needs per-cell data (it holds cells out of the fit and "
                                "replays measured cells); a per-level summary cannot be validated this way")
    options.check()

    times = _time_indices(data)
    steps = 2 * len(options.families) + 2 + data.times_s.size  # held-out and LOLO per family, empirical, MLP, times
    bar = Progress(steps, "cimsim.fit --validate", quiet=not progress)

    def say(msg):
        bar.update(note=msg)

    halves = split_halves(data, options.seed)
    heldout, lolo = [], []
    models: dict[str, DeviceModel] = {}
    for fam in (*options.families, "empirical"):
        heldout += heldout_rows(data, fam, fit_options, options, halves)
        say(f"{fam}: held-out check done")
        if fam == "empirical":
            continue
        levels = fit_levels(data, times, fam, False)
        models[fam] = model_from_levels(data, times, levels, dataclasses.replace(fit_options, family=fam)).model
        lolo += lolo_rows(data, fam, levels, fit_options, options)
        say(f"{fam}: leave-one-level-out check done")
    lolo += lolo_neighbour_rows(data, options)
    emp_options = dataclasses.replace(fit_options, family="empirical")
    models["empirical"] = model_from_levels(data, times, fit_levels(data, times, "empirical", False), emp_options).model
    for name, half in zip(("cells_a", "cells_b"), halves):  # the floor: half the cells against the other half
        models[name] = model_from_levels(half, times, fit_levels(half, times, "empirical", False), emp_options).model
    net = train_digits_mlp(options.seed, options.hidden, options.train_steps)
    clean = 100 * net.accuracy(net.w1, net.w2)
    say(f"MLP trained: {clean:.1f} % on {net.y_test.size} held-out digits; {options.chips} chips per case")
    network = network_rows(net, models, [float(t) for t in data.times_s], options, bar)
    bar.close()
    return Validation(heldout, lolo, network, target_rows(heldout, lolo, network, options.families), clean, options,
                      str(data.path))


def _csv(rows: list[dict]) -> str:
    """CSV text of ``rows`` (floats to 6 significant digits, text quoted where needed)."""
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()} for r in rows)
    return buf.getvalue()


def format_targets(v: Validation) -> str:
    """The targets table as text."""
    lines = [f"validation of {v.source}: MLP clean accuracy {v.clean_accuracy_pct:.1f} %, {v.options.chips} chips",
             f"{'family':<10} {'against':<15} {'target':<26} {'value':>8} {'limit':>9}  pass  note"]
    for r in v.targets:
        val = f"{r['value']:.3f}" if isinstance(r["value"], float) else str(r["value"])
        lines.append(f"{r['family']:<10} {r['against']:<15} {r['target']:<26} {val:>8} {str(r['limit']):>9}  "
                     f"{'yes' if r['pass'] else 'NO ':<4}  {r['note']}")
    return "\n".join(lines)


def render_validation(v: Validation) -> bytes:
    """PNG: held-out KS / critical value per (level, time), leave-one-level-out KS per level, and the
    network check's mean and 5th-percentile chip accuracy against read time (32 levels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = [*v.options.families, "empirical"]
    colors = {f: plt.get_cmap("tab10")(i) for i, f in enumerate(fams)}
    fig, ax = plt.subplots(2, 2, figsize=(13, 9), layout="constrained")
    for f in fams:
        h = [r for r in v.heldout if r["family"] == f and r["time_s"] > 0]
        ax[0, 0].scatter([r["target_uS"] for r in h], [r["ks_ratio"] for r in h], s=10, color=colors[f],
                         label=f if f != "empirical" else "fit half itself")
    for f in (*fams, "neighbours"):
        lo = [r for r in v.lolo if r["family"] == f]
        if lo:
            ax[0, 1].scatter([r["target_uS"] for r in lo], [r["ks"] for r in lo], s=10, label=f,
                             color=colors.get(f, "0.5"), marker="o" if f in colors else "x")
    for y in (1, 2):
        ax[0, 0].axhline(y, color="k", lw=0.8, ls="--" if y == 1 else ":")
    ax[0, 0].set(xlabel="level target (uS)", ylabel="held-out KS / 5 % critical value",
                 title="Held-out cells (every read time after 0 s)")
    ax[0, 1].axhline(TARGETS["lolo_median_ks"], color="k", lw=0.8, ls="--")
    ax[0, 1].set(xlabel="level target (uS)", ylabel="KS of the predicted level",
                 title="Leave one level out (interpolated from its neighbours)")
    nl = max(r["n_levels"] for r in v.network)
    for f in fams:
        rows = sorted((r for r in v.network if r["family"] == f and r["n_levels"] == nl), key=lambda r: r["time_s"])
        x = np.arange(len(rows))
        ax[1, 0].errorbar(x, [r["mean_pct"] for r in rows], yerr=[r["std_pct"] for r in rows], color=colors[f],
                          marker="o", capsize=3, label=f)
        ax[1, 1].plot(x, [r["p05_pct"] for r in rows], color=colors[f], marker="o", label=f"{f} 5th pct")
        ax[1, 1].plot(x, [r["worst_pct"] for r in rows], color=colors[f], marker="x", ls=":", label=f"{f} worst")
    ticks = sorted({r["time_s"] for r in v.network})
    for a in ax[1]:
        a.set_xticks(range(len(ticks)), [f"{t:g}" for t in ticks])
        a.set_xlabel("read time (s)")
    ax[1, 0].set(ylabel="chip accuracy, mean +- std (%)",
                 title=f"Digits MLP on {nl}-level pairs, {v.options.chips} chips")
    ax[1, 1].set(ylabel="chip accuracy (%)", title="5th-percentile and worst chip")
    for a in ax.ravel():
        a.legend(fontsize=7)
    fig.suptitle(f"cimsim.fit --validate: {v.source}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def output_files(v: Validation, fit_options: FitOptions) -> dict[str, bytes]:
    """The files ``--validate DIR`` writes, by name."""
    config = {"source": v.source, "validate": v.options.to_dict(), "fit_options": fit_options.to_dict(),
              "clean_accuracy_pct": v.clean_accuracy_pct, "targets": TARGETS}
    return {"heldout.csv": _csv(v.heldout).encode(), "leave_one_level_out.csv": _csv(v.lolo).encode(),
            "network.csv": _csv(v.network).encode(), "targets.csv": _csv(v.targets).encode(),
            "validation.png": render_validation(v),
            "validate_config.json": (json.dumps(config, indent=1) + "\n").encode()}

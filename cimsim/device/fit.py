"""Fit a :class:`~cimsim.device.model.DeviceModel` to measured per-cell or per-level summary data.

Command line (``python -m cimsim.fit --help``)::

    python -m cimsim.fit data/measured/rram.csv [--time SECONDS] [--family auto|normal|student-t|quantile]
        [-o device_models/rram.json] [--plot fit.png] [--read-noise FILE] [--min-cells 20]
        [--col-level level --col-target g_target_uS --col-time t_nominal_s --col-g g_uS
         --col-lo g_lo_uS --col-hi g_hi_uS] [--units auto|uS|S]

Per nominal read time and level (conductances in uS internally, siemens in the model): the mean
shift from the target; the spread ``sigma_S`` = sample std (ddof 1), every cell kept; the family,
normal or a Student-t constrained to that std (``--family auto``: AIC and KS decide), or
(``--family quantile``) the level's quantile function at probit nodes with generalized-Pareto tails
(the lower one ending at the conductance floor); polynomials
in G (uS) for sigma and shift; read noise (``--read-noise``); stuck-at-gmin/gmax fractions from
the ``t = 0`` read (cells outside their window, near gmin/gmax); gmin/gmax from the lowest/highest
window edges.

The command (:mod:`cimsim.device.fit_command`) writes the JSON (``-o``) and the PNG (``--plot``)
all or nothing; bad input raises :class:`MeasuredDataError` naming the file and line or column.

Data: Akash Levy, github.com/akashlevy/RRAM-Relaxation-Master-Model (commit ca0cfff6, MIT).
Rules and rationale: docs/design.md, section 'Device-model fit (cimsim/device/fit.py)'.
"""
from __future__ import annotations

import dataclasses
import io
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import optimize, special

import cimsim
from cimsim.device.model import LevelFit, DeviceModel
from cimsim.progress import Progress
from cimsim.device.measured import (
    QUANTILE_COLUMNS, QUANTILES, CellTable, MeasuredDataError, SummaryTable, TidyColumns, check_neg_tol,
    miss_near_edges, read_measured, read_read_noise,
)
from cimsim.io import sha256_file

_US = 1e-6  # one microsiemens in siemens


def _to_S(x_uS: float) -> float:
    """Microsiemens to siemens by division, so that round values stay exact (40 uS -> 4e-05 S)."""
    return float(x_uS) / 1e6
#: Bounds of nu = 1 / df for the Student-t fits: df from 2.08 (std still finite) to 1000 (normal).
NU_MIN, NU_MAX = 1e-3, 0.48
#: AIC margin the Student-t must beat the normal by (Burnham & Anderson: differences < 2 are not
#: evidence for the more complex model).
AIC_MARGIN = 2.0
#: Probabilities of the empirical quantiles drawn in the QQ plot from per-cell data.
QQ_PROBS = np.linspace(0.005, 0.995, 199)
READ_NOISE_RATE_HZ = 400.0  # sampling rate of ../shared/measured/rram_techA_readnoise.tsv.gz


# =============================================================================== results
@dataclass
class LevelResult:
    """Fit of one level at one read time (conductances in uS).

    ``quantiles_uS``: the data's quantiles at :data:`~cimsim.device.measured.QUANTILES` (shape (9,));
    ``samples_uS``: the per-cell reads (shape (n,)) or ``None`` for summary input.
    """

    level: int
    label: int
    t_s: float
    target_uS: float
    n: int
    mean_uS: float
    sigma_uS: float
    robust_uS: float
    family: str
    scale_uS: float
    df: float | None
    ks: float
    ks_normal: float
    ks_t: float
    aic_normal: float
    aic_t: float
    df_t: float
    quantiles_uS: np.ndarray
    samples_uS: np.ndarray | None = None
    #: the quantile family (``family == "quantile"``): error quantiles (uS) at the model's probit
    #: nodes, and the generalized-Pareto tails ``(xi, beta_uS)`` below and above them
    error_quantiles_uS: np.ndarray | None = None
    tail_lo: tuple[float, float] | None = None
    tail_hi: tuple[float, float] | None = None

    @property
    def shift_uS(self) -> float:
        """Mean programming error, uS."""
        return self.mean_uS - self.target_uS

    def level_fit(self) -> LevelFit:
        """The :class:`LevelFit` (siemens) of this level."""
        return LevelFit(level=self.level, t_s=self.t_s, target_S=_to_S(self.target_uS), n=self.n,
                        mean_shift_S=_to_S(self.shift_uS), sigma_S=_to_S(self.sigma_uS),
                        robust_sigma_S=_to_S(self.robust_uS), family=self.family, scale_S=_to_S(self.scale_uS),
                        df=self.df, ks=self.ks,
                        **({} if self.family != "empirical" else dict(
                            quantiles_S=tuple(_to_S(v) for v in self.error_quantiles_uS))),
                        **({} if self.family != "quantile" else dict(
                            quantiles_S=tuple(_to_S(v) for v in self.error_quantiles_uS),
                            tail_lo=(self.tail_lo[0], _to_S(self.tail_lo[1])),
                            tail_hi=(self.tail_hi[0], _to_S(self.tail_hi[1])))))


@dataclass
class FitResult:
    """Everything a fit produced: the model and what the table and the figure show."""

    model: DeviceModel
    levels: list[LevelResult]
    smooth_r2: dict[str, list[float]]
    read_noise: dict[str, Any] | None
    data_kind: str
    source: Path
    fitted: list[tuple[float, np.ndarray, np.ndarray]] = field(default_factory=list)


FIT_FAMILIES = ("auto", "normal", "student-t", "quantile", "empirical")


@dataclass(frozen=True)
class FitOptions:
    """Options of :func:`fit_device` (see ``python -m cimsim.fit --help``). The default family,
    ``quantile``, is the one that passes the checks of ``--validate`` (docs/design.md,
    "Device-model validation"); ``auto`` (normal or Student-t per level) stays for comparison."""

    family: str = "quantile"
    time_s: float | None = None
    min_cells: int = 20
    poly_deg: int = 3
    read_noise_deg: int = 1
    fmt: str = "auto"
    units: str = "auto"
    columns: TidyColumns = TidyColumns()
    neg_tol_frac: float = 0.01
    name: str | None = None
    technology: str | None = None
    citation: str | None = None

    def check(self) -> None:
        """Raise :class:`MeasuredDataError` naming the option (as on the command line) at fault."""
        def whole(v: Any) -> bool:
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)

        if self.family not in FIT_FAMILIES:
            raise MeasuredDataError(f"--family: unknown family {self.family!r} (choose {', '.join(FIT_FAMILIES)})")
        if self.fmt not in ("auto", "tidy", "summary"):
            raise MeasuredDataError(f"--format: unknown format {self.fmt!r} (choose auto, tidy or summary)")
        if self.units not in ("auto", "uS", "S"):
            raise MeasuredDataError(f"--units: unknown unit {self.units!r} (choose auto, uS or S)")
        if self.time_s is not None and not (isinstance(self.time_s, numbers.Real) and math.isfinite(self.time_s)
                                            and self.time_s >= 0):
            raise MeasuredDataError(f"--time must be a finite read time >= 0 s, got {self.time_s!r}")
        if not (whole(self.min_cells) and self.min_cells >= 2):
            raise MeasuredDataError(f"--min-cells must be an integer >= 2, got {self.min_cells!r}")
        for opt, v in (("--poly-deg", self.poly_deg), ("--read-noise-deg", self.read_noise_deg)):
            if not (whole(v) and v >= 0):
                raise MeasuredDataError(f"{opt} must be an integer >= 0, got {v!r}")
        check_neg_tol(self.neg_tol_frac)
        self.columns.check()

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("family", "time_s", "min_cells", "poly_deg", "read_noise_deg", "fmt",
                                            "units", "neg_tol_frac")}
        d["columns"] = dict(vars(self.columns))
        return d


# ======================================================================= distributions
def t_logpdf_std(x: np.ndarray, mean: float, std: float, nu: np.ndarray) -> np.ndarray:
    """Log-likelihood sums of ``x`` (n,) under Student-t laws with the given mean and std.

    ``nu`` (m,) = 1 / df with 0 < nu < 0.5; the scale is ``std * sqrt(1 - 2 nu)`` so that the
    variance is ``std**2``. Returns shape (m,).
    """
    nu = np.atleast_1d(nu)[:, None]
    df = 1.0 / nu
    scale = std * np.sqrt(1.0 - 2.0 * nu)
    z2 = ((x[None, :] - mean) / scale) ** 2
    const = special.gammaln((df + 1) / 2) - special.gammaln(df / 2) - 0.5 * np.log(df * np.pi) - np.log(scale)
    return (x.size * const - (df + 1) / 2 * np.sum(np.log1p(z2 / df), axis=1, keepdims=True))[:, 0]


def normal_loglik(x: np.ndarray, mean: float, std: float) -> float:
    """Log-likelihood sum of ``x`` (n,) under N(mean, std^2)."""
    z = (x - mean) / std
    return float(-0.5 * np.sum(z * z) - x.size * (math.log(std) + 0.5 * math.log(2 * math.pi)))


def _minimize_nu(objective, grid_size: int = 40) -> float:
    """Minimise a function of nu = 1/df on [NU_MIN, NU_MAX]: a log grid, then a bounded refinement."""
    grid = np.geomspace(NU_MIN, NU_MAX, grid_size)
    vals = np.array([objective(v) for v in grid])
    i = int(np.argmin(vals))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    if hi <= lo:
        return float(grid[i])
    res = optimize.minimize_scalar(objective, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6 * hi})
    return float(res.x) if res.fun <= vals[i] else float(grid[i])


def fit_t_ml(x: np.ndarray, mean: float, std: float) -> tuple[float, float]:
    """Std-constrained Student-t by maximum likelihood: returns ``(df, log-likelihood)``."""
    nu = _minimize_nu(lambda v: -float(t_logpdf_std(x, mean, std, np.array([v]))[0]))
    return 1.0 / nu, float(t_logpdf_std(x, mean, std, np.array([nu]))[0])


def t_quantile_std(p: np.ndarray, mean: float, std: float, df: float) -> np.ndarray:
    """Quantile function of a Student-t with the given mean, std and df (> 2)."""
    return mean + std * math.sqrt((df - 2) / df) * special.stdtrit(df, p)


def half_spreads(q: np.ndarray) -> np.ndarray:
    """Half-widths ``(q_{1-p} - q_p) / 2`` of the central intervals, for the p < 0.5 of :data:`QUANTILES`.

    ``q``: quantiles at :data:`QUANTILES` (9,), returns (4,) for p = 1, 5, 10, 25 %. They measure
    the spread and tail weight of a distribution independently of its location and skew.
    """
    p = np.asarray(QUANTILES)
    lo = np.flatnonzero(p < 0.5)
    hi = np.array([int(np.argmin(np.abs(p - (1 - p[i])))) for i in lo])
    return (q[hi] - q[lo]) / 2


def _low_probs() -> np.ndarray:
    p = np.asarray(QUANTILES)
    return p[p < 0.5]


def spread_residuals(q: np.ndarray, std: float, df: float | None) -> np.ndarray:
    """Log ratios of the data's central-interval half-widths to the model's, shape (4,).

    Residuals of the least-squares quantile fit: half-widths (:func:`half_spreads`) so that a
    skewed level (relaxation drags one tail only) does not bias the tail weight through the
    location, and log ratios so that the 1 % and the 25 % quantiles count alike (the tail
    half-width is several times the central one). The model has mean 0 and standard deviation
    ``std`` (normal for ``df is None``).
    """
    model = -model_quantile(_low_probs(), 0.0, std, df)  # the lower quantiles are minus the half-widths
    data = np.maximum(half_spreads(q), 1e-12 * std)
    return np.log(data / model)


def fit_t_quantiles(q: np.ndarray, std: float) -> tuple[float, float]:
    """Std-constrained Student-t by least squares on the quantile function: ``(df, RSS)``.

    ``q``: stored quantiles (9,) at :data:`QUANTILES`; the residuals are :func:`spread_residuals`
    (dimensionless), the standard deviation is fixed to ``std``.
    """
    def rss(v: float) -> float:
        r = spread_residuals(q, std, 1.0 / v)
        return float(r @ r)

    nu = _minimize_nu(rss)
    return 1.0 / nu, rss(nu)


def grouped_loglik(q: np.ndarray, n: int, mean: float, std: float, df: float | None) -> float:
    """Log-likelihood of summary data as grouped data: the ``n`` cells fall ``n * (p_{j+1} - p_j)``
    into each interval between the stored quantiles ``q`` (9,) (and 1 % below q01, 1 % above q99);
    the model gives each interval the probability ``F(q_{j+1}) - F(q_j)``."""
    p = np.concatenate([[0.0], QUANTILES, [1.0]])
    cdf = np.concatenate([[0.0], model_cdf(np.asarray(q), mean, std, df), [1.0]])
    counts = n * np.diff(p)
    return float(counts @ np.log(np.maximum(np.diff(cdf), 1e-300)))


def ks_statistic(x_sorted: np.ndarray, cdf: np.ndarray) -> float:
    """Kolmogorov-Smirnov statistic of sorted samples (n,) against model CDF values at them (n,)."""
    n = x_sorted.size
    i = np.arange(1, n + 1)
    return float(max(np.max(i / n - cdf), np.max(cdf - (i - 1) / n)))


def model_cdf(x: np.ndarray, mean: float, std: float, df: float | None) -> np.ndarray:
    """CDF of the std-parameterised normal (``df is None``) or Student-t at ``x``."""
    if std == 0:
        return (x >= mean).astype(np.float64)
    if df is None:
        return special.ndtr((x - mean) / std)
    return special.stdtr(df, (x - mean) / (std * math.sqrt((df - 2) / df)))


def model_pdf(x: np.ndarray, mean: float, std: float, df: float | None) -> np.ndarray:
    """PDF (1/uS) of the std-parameterised normal (``df is None``) or Student-t at ``x`` (uS)."""
    if df is None:
        z = (x - mean) / std
        return np.exp(-0.5 * z * z) / (std * math.sqrt(2 * math.pi))
    scale = std * math.sqrt((df - 2) / df)
    z = (x - mean) / scale
    logc = special.gammaln((df + 1) / 2) - special.gammaln(df / 2) - 0.5 * math.log(df * math.pi)
    return np.exp(logc - (df + 1) / 2 * np.log1p(z * z / df)) / scale


def model_quantile(p: np.ndarray, mean: float, std: float, df: float | None) -> np.ndarray:
    """Quantile function of the std-parameterised normal (``df is None``) or Student-t."""
    if df is None:
        return mean + std * special.ndtri(p)
    return t_quantile_std(p, mean, std, df)


def _choose(family: str, aic_n: float, aic_t: float, ks_n: float, ks_t: float) -> str:
    """The family: forced, or (``auto``) Student-t iff it lowers AIC by > 2 and does not raise KS."""
    if family != "auto":
        return family
    return "student-t" if (aic_n - aic_t > AIC_MARGIN and ks_t <= ks_n) else "normal"


def _result(level: int, label: int, t_s: float, target: float, n: int, mean: float, std: float,
            q: np.ndarray, family: str, aic_n: float, aic_t: float, ks_n: float, ks_t: float, df_t: float,
            samples: np.ndarray | None) -> LevelResult:
    fam = _choose(family, aic_n, aic_t, ks_n, ks_t) if std > 0 else "normal"
    df = df_t if fam == "student-t" else None
    scale = std if df is None else std * math.sqrt((df - 2) / df)
    robust = float((q[QUANTILES.index(0.75)] - q[QUANTILES.index(0.25)]) / 1.349)
    return LevelResult(level=level, label=label, t_s=t_s, target_uS=target, n=n, mean_uS=mean, sigma_uS=std,
                       robust_uS=robust, family=fam, scale_uS=scale, df=df, ks=ks_t if df else ks_n, ks_normal=ks_n,
                       ks_t=ks_t, aic_normal=aic_n, aic_t=aic_t, df_t=df_t, quantiles_uS=q, samples_uS=samples)


def fit_level_samples(x_uS: np.ndarray, target_uS: float, family: str = "auto", level: int = 0, label: int = 0,
                      t_s: float = 0.0) -> LevelResult:
    """Fit one level from its per-cell reads ``x_uS`` (n,), microsiemens (see the module docstring)."""
    x = np.sort(np.asarray(x_uS, dtype=np.float64))
    mean, std = float(np.mean(x)), float(np.std(x, ddof=1))
    q = np.quantile(x, QUANTILES)
    if std == 0:
        return _result(level, label, t_s, target_uS, x.size, mean, 0.0, q, "normal", 0.0, 0.0, 0.0, 0.0,
                       1.0 / NU_MIN, x)
    df_t, ll_t = fit_t_ml(x, mean, std)
    aic_n, aic_t = 2 * 2 - 2 * normal_loglik(x, mean, std), 2 * 3 - 2 * ll_t
    ks_n = ks_statistic(x, model_cdf(x, mean, std, None))
    ks_t = ks_statistic(x, model_cdf(x, mean, std, df_t))
    return _result(level, label, t_s, target_uS, x.size, mean, std, q, family, aic_n, aic_t, ks_n, ks_t, df_t, x)


def fit_level_quantiles(q_uS: np.ndarray, mean_uS: float, std_uS: float, n: int, target_uS: float,
                        family: str = "auto", level: int = 0, label: int = 0, t_s: float = 0.0) -> LevelResult:
    """Fit one level from its summary: quantiles ``q_uS`` at :data:`QUANTILES` (9,), mean, std (uS)."""
    q = np.asarray(q_uS, dtype=np.float64)
    p = np.asarray(QUANTILES)
    if std_uS == 0:
        return _result(level, label, t_s, target_uS, n, mean_uS, 0.0, q, "normal", 0.0, 0.0, 0.0, 0.0,
                       1.0 / NU_MIN, None)
    df_t, _ = fit_t_quantiles(q, std_uS)
    aic_n = 2 * 2 - 2 * grouped_loglik(q, n, mean_uS, std_uS, None)
    aic_t = 2 * 3 - 2 * grouped_loglik(q, n, mean_uS, std_uS, df_t)
    ks_n = float(np.max(np.abs(model_cdf(q, mean_uS, std_uS, None) - p)))
    ks_t = float(np.max(np.abs(model_cdf(q, mean_uS, std_uS, df_t) - p)))
    return _result(level, label, t_s, target_uS, n, mean_uS, std_uS, q, family, aic_n, aic_t, ks_n, ks_t, df_t, None)


# ========================================================================= quantile family
#: tail probability where the generalized-Pareto tails take over from the quantile nodes
QUANTILE_TAIL_P = 0.05
#: probit nodes of a model fitted from per-cell data: uniform in z between the tail thresholds
CELL_NODES_Z = tuple(np.linspace(special.ndtri(QUANTILE_TAIL_P), -special.ndtri(QUANTILE_TAIL_P), 33))


_OUTSIDE = 1e300  # a finite "impossible" value: the optimizers' interpolation steps stay defined


def gpd_nll(y: np.ndarray, xi: float, beta: float) -> float:
    """Negative log-likelihood of exceedances ``y >= 0`` under GPD(xi, beta); huge outside its support."""
    if not beta > 0:
        return _OUTSIDE
    if abs(xi) < 1e-9:
        return y.size * math.log(beta) + float(y.sum()) / beta
    arg = 1.0 + xi * y / beta
    if np.any(arg <= 0):
        return _OUTSIDE
    return y.size * math.log(beta) + (1.0 + 1.0 / xi) * float(np.log(arg).sum())


def fit_gpd(y: np.ndarray, bound: float = math.inf, xi_range: tuple[float, float] = (-0.9, 0.9)) -> tuple[float, float]:
    """Maximum-likelihood generalized-Pareto ``(xi, beta)`` of exceedances ``y`` (>= 0, same units
    as ``beta``), with the law's endpoint ``-beta / xi`` at most ``bound`` (a physical limit such as
    the conductance floor: the tail then ends there instead of being clipped, so no probability
    mass piles up at the limit). Fewer than 5 exceedances: an exponential tail (xi = 0) with the
    mean excess, or the bounded law through it.
    """
    y = np.asarray(y, dtype=np.float64)
    bound = max(bound, float(y.max(initial=0.0)) * (1 + 1e-9) + 1e-30)
    mean = float(y.mean()) if y.size else 0.0
    if mean <= 0:
        return 0.0, 0.0
    if y.size >= 5:
        best = optimize.minimize(lambda v: gpd_nll(y, v[0], math.exp(v[1])), x0=[0.1, math.log(mean)],
                                 method="Nelder-Mead", options=dict(xatol=1e-6, fatol=1e-9, maxiter=2000))
        xi, beta = float(np.clip(best.x[0], *xi_range)), math.exp(best.x[1])
        if xi != best.x[0]:  # at the edge of the range: the best scale for that shape
            beta = math.exp(optimize.minimize_scalar(lambda lb: gpd_nll(y, xi, math.exp(lb)),
                                                     bounds=(math.log(mean) - 5, math.log(mean) + 5),
                                                     method="bounded").x)
    else:
        xi, beta = 0.0, mean
    if xi < 0 and -beta / xi <= bound:
        return xi, beta
    if not math.isfinite(bound):
        return xi, beta
    # the endpoint sits on the bound: beta = -xi * bound, one shape parameter left
    res = optimize.minimize_scalar(lambda x: gpd_nll(y, x, -x * bound), bounds=(xi_range[0], -1e-6), method="bounded")
    return float(res.x), float(-res.x * bound)


def fit_level_quantile_samples(x_uS: np.ndarray, target_uS: float, floor_uS: float | None = 0.0,
                               nodes_z: Sequence[float] = CELL_NODES_Z) -> tuple[np.ndarray, tuple, tuple]:
    """Quantile-family fit of one level from per-cell reads ``x_uS`` (n,): the error quantiles
    (uS) at ``nodes_z`` (J,), and GPD tails ``(xi, beta_uS)`` fitted to the cells beyond the end
    nodes. Each tail ends just past its furthest cell (:func:`tail_endpoint`), the lower one also
    no lower than the conductance floor ``floor_uS`` (``None``: no floor)."""
    err = np.sort(np.asarray(x_uS, dtype=np.float64)) - target_uS
    q = np.quantile(err, special.ndtr(np.asarray(nodes_z)))
    lo = q[0] - err[err < q[0]]
    hi = err[err > q[-1]] - q[-1]
    floor = math.inf if floor_uS is None else q[0] - (floor_uS - target_uS)
    return q, fit_gpd(lo, min(floor, tail_endpoint(lo))), fit_gpd(hi, tail_endpoint(hi))


def tail_endpoint(y: np.ndarray) -> float:
    """Where a fitted tail ends: the largest exceedance ``y`` times ``1 + 1/len(y)`` (the expected
    gap to the next order statistic). Unbounded maximum-likelihood tails of ~10-25 exceedances put
    cells at hundreds of uS (shape up to 0.9), and chips with a few such cells fail where the
    measured cells never do (docs/design.md, "Device-model validation"); ``inf`` without data."""
    return float(y.max()) * (1 + 1 / y.size) if y.size else math.inf


def summary_nodes() -> tuple[np.ndarray, np.ndarray]:
    """(indices into QUANTILES, probit nodes) of a summary's quantiles inside the tail thresholds."""
    p = np.asarray(QUANTILES)
    inside = np.flatnonzero((p >= QUANTILE_TAIL_P - 1e-12) & (p <= 1 - QUANTILE_TAIL_P + 1e-12))
    return inside, special.ndtri(p[inside])


def tail_through(y_end: float, log_ratio: float, bound: float) -> tuple[float, float]:
    """GPD ``(xi, beta)`` with excess ``y_end`` at exceedance ratio ``exp(log_ratio)``: exponential
    (xi = 0) when unbounded, else the bounded law ending at ``bound`` (``xi`` from
    ``y_end = bound * (1 - e^xi)``); ``bound`` is raised to ``y_end`` if the data pass it."""
    if y_end <= 0:
        return 0.0, 0.0
    if not math.isfinite(bound):
        return 0.0, y_end / log_ratio
    bound = max(bound, y_end * (1 + 1e-6))
    xi = max(math.log1p(-y_end / bound) / log_ratio, -0.9)
    return xi, -xi * bound


def fit_level_quantile_summary(q_uS: np.ndarray, target_uS: float, floor_uS: float | None = 0.0
                               ) -> tuple[np.ndarray, tuple, tuple]:
    """Quantile-family fit of one level from its summary quantiles ``q_uS`` at :data:`QUANTILES`:
    the stored quantiles inside the tail thresholds are the nodes (:func:`summary_nodes`); the
    tails are the GPD through the outermost stored quantiles (:func:`tail_through`)."""
    q = np.asarray(q_uS, dtype=np.float64) - target_uS
    p = np.asarray(QUANTILES)
    inside, _ = summary_nodes()
    i0, i1 = inside[0], inside[-1]
    lo = hi = (0.0, 0.0)
    if i0 > 0:
        bound = math.inf if floor_uS is None else q[i0] - (floor_uS - target_uS)
        lo = tail_through(q[i0] - q[0], math.log(p[i0] / p[0]), bound)
    if i1 < p.size - 1:
        hi = tail_through(q[-1] - q[i1], math.log((1 - p[i1]) / (1 - p[-1])), math.inf)
    return q[inside], lo, hi


def quantile_cdf(err_uS: np.ndarray, nodes_z, q_uS, tail_lo, tail_hi) -> np.ndarray:
    """CDF of a fitted quantile law at errors ``err_uS`` (the law's quantile function inverted on a
    fine probit grid, |z| <= 8.5)."""
    from cimsim.device.sampling import quantile_error_numpy

    z = np.linspace(-8.5, 8.5, 40001)
    n = z.size
    e = quantile_error_numpy(z, np.asarray(nodes_z), np.broadcast_to(q_uS, (n, len(q_uS))),
                             np.broadcast_to(np.array([*tail_lo, *tail_hi]), (n, 4)))
    return np.interp(err_uS, e, special.ndtr(z))


def quantile_ks(x_uS: np.ndarray, target_uS: float, nodes_z, q_uS, tail_lo, tail_hi) -> float:
    """Kolmogorov-Smirnov distance between cells ``x_uS`` and a fitted quantile law (uS)."""
    x = np.sort(np.asarray(x_uS, dtype=np.float64)) - target_uS
    return ks_statistic(x, quantile_cdf(x, nodes_z, q_uS, tail_lo, tail_hi))


def quantile_ks_summary(q_data_uS: np.ndarray, target_uS: float, nodes_z, q_uS, tail_lo, tail_hi) -> float:
    """``max |F(q_p) - p|`` of a fitted quantile law over a summary's stored quantiles."""
    f = quantile_cdf(np.asarray(q_data_uS) - target_uS, nodes_z, q_uS, tail_lo, tail_hi)
    return float(np.max(np.abs(f - np.asarray(QUANTILES))))


# ============================================================================ smooth fits
def fit_poly(g_uS: np.ndarray, y_uS: np.ndarray, deg: int) -> tuple[np.ndarray, float]:
    """Least-squares polynomial (numpy.polyval order) of ``y`` vs ``g`` (both uS, shape (L,)) and its R^2.

    The degree is lowered to ``L - 1`` when there are fewer points than coefficients. G is
    scaled inside the fit for conditioning; the coefficients returned are for G in uS.
    """
    deg = max(0, min(deg, g_uS.size - 1))
    s = float(np.max(np.abs(g_uS))) or 1.0
    c = np.polyfit(g_uS / s, y_uS, deg)
    coeffs = c / s ** np.arange(deg, -1, -1)
    res = y_uS - np.polyval(coeffs, g_uS)
    tot = float(np.sum((y_uS - y_uS.mean()) ** 2))
    r2 = 1.0 - float(res @ res) / tot if tot > 0 else (1.0 if float(res @ res) <= 1e-24 else 0.0)
    return coeffs, r2


# ============================================================================= read noise
#: Differences farther than this many robust sigmas from the median are RTN steps (see below).
RTN_CLIP = 3.0


def read_noise_sigma_S(g_S: np.ndarray, clip: float = RTN_CLIP) -> tuple[float, dict[str, float]]:
    """Short-term read noise (S) of one cell from a continuous read series ``g_S`` (n,), siemens.

    Estimator: consecutive reads 2.5 ms apart (400 Hz) share the slow components (relaxation,
    drift, the current state of a random-telegraph trap), so their difference ``d_i = g_{i+1} -
    g_i`` carries the fast read noise twice: ``var(d) = 2 sigma_read^2`` for white read noise.
    Random-telegraph switching shows up as steps in ``d`` that are rare but large (in the tech A
    cell at 85 uS, 7 % of the differences lie beyond 5 sigma). They are removed by discarding
    differences more than ``clip`` = 3 robust standard deviations (1.4826 * MAD) from the median;
    the standard deviation of the rest is divided by that of a unit normal truncated at +-3
    (0.9866) to undo the trimming of genuine read noise, and by sqrt(2). The MAD alone would do
    as well, but the reads are quantized (0.0177 uS steps) and so is the MAD (~6 % steps); the
    trimmed standard deviation is not. Returns sigma and diagnostics (uS): the plain ``std(d) /
    sqrt(2)``, the MAD estimate, the whole-series std (read noise + relaxation + RTN) and the share
    of differences discarded.
    """
    from scipy import stats

    g = np.asarray(g_S, dtype=np.float64) * 1e6  # uS
    d = np.diff(g)
    med = float(np.median(d))
    mad = 1.4826 * float(np.median(np.abs(d - med)))
    keep = np.abs(d - med) <= clip * mad if mad > 0 else np.ones(d.size, bool)
    trunc = math.sqrt(1 - 2 * clip * stats.norm.pdf(clip) / (2 * stats.norm.cdf(clip) - 1)) if mad > 0 else 1.0
    sigma_uS = float(np.std(d[keep], ddof=1)) / trunc / math.sqrt(2)
    diag = {"g_mean_uS": float(g.mean()), "sigma_read_uS": sigma_uS, "relative": sigma_uS / float(g.mean()),
            "diff_std_over_sqrt2_uS": float(np.std(d, ddof=1)) / math.sqrt(2),
            "diff_mad_over_sqrt2_uS": mad / math.sqrt(2),
            "series_std_uS": float(np.std(g, ddof=1)), "steps_discarded_frac": float(1 - keep.mean()),
            "n_samples": int(g.size)}
    return sigma_uS * _US, diag


def fit_read_noise(path: Path, deg: int) -> dict[str, Any]:
    """Read-noise polynomial (uS vs G in uS) from a read-noise file, with its provenance."""
    series = read_read_noise(path)
    rows = []
    for s in series:
        _, diag = read_noise_sigma_S(s.g_S)
        rows.append({"level": s.level, "line": s.line, **diag})
    g = np.array([r["g_mean_uS"] for r in rows])
    sig = np.array([r["sigma_read_uS"] for r in rows])
    order = np.argsort(g)
    coeffs, r2 = fit_poly(g[order], sig[order], deg)
    tech = _tech_from_name(path.name)
    return {
        "poly_uS": [float(c) for c in coeffs], "r2": r2, "degree": len(coeffs) - 1,
        "source_file": str(path), "source_name": path.name, "sha256": sha256_file(path),
        "source_technology": tech,
        "note": (f"read noise measured on {tech or 'the cells of ' + path.name}"
                 + (" (gmax 240 uS, ../shared/measured/README.md)" if tech == "tech A" else "")
                 + ", which may differ from the technology of the programming data; the polynomial is "
                   "fitted and applied at the same absolute conductance G (uS), valid over valid_G_uS"),
        "estimator": (f"std of first differences of consecutive 400 Hz reads, steps beyond {RTN_CLIP:g} robust "
                      "sigma (RTN) removed, corrected for the trimming, divided by sqrt(2)"),
        "sample_rate_Hz": READ_NOISE_RATE_HZ, "series": rows,
        "valid_G_uS": [float(g.min()), float(g.max())],
    }


def _tech_from_name(name: str) -> str:
    """``"tech A"`` from a file name such as ``rram_techA_readnoise.tsv.gz``, else ``""``."""
    m = re.search(r"tech([A-Za-z0-9])(?![a-z])", name)
    return f"tech {m.group(1)}" if m else ""


# ==================================================================================== fit
def _time_indices(data: CellTable | SummaryTable, time_s: float | None) -> list[int]:
    if time_s is None:
        return list(range(data.times_s.size))
    hit = np.flatnonzero(np.isclose(data.times_s, time_s, rtol=1e-9, atol=1e-12))
    if hit.size == 0:
        raise MeasuredDataError(f"{data.path}: no read at t = {time_s:g} s (the file has t = "
                                f"{', '.join(f'{t:g}' for t in data.times_s)} s)")
    return [int(hit[0])]


def check_cells(data: CellTable | SummaryTable, times: Sequence[int], min_cells: int) -> None:
    """Every level must have at least ``min_cells`` cells at every fitted time."""
    for ti in times:
        for li, lab in enumerate(data.levels):
            k = (ti, li)
            if isinstance(data, CellTable):
                n = 0 if k not in data.g_uS else data.g_uS[k].size
            else:
                n = 0 if k not in data.rows else int(data.rows[k]["n"])
            if n < max(min_cells, 2):
                where = (f" (first row on line {data.first_line[k]}, header on line {data.header_line})"
                         if k in data.first_line else "")
                raise MeasuredDataError(
                    f"{data.path}: level {lab} at t = {data.times_s[ti]:g} s{where} has {n} cells, "
                    f"fewer than --min-cells {min_cells}")


def fit_levels(data: CellTable | SummaryTable, times: Sequence[int], family: str, progress: bool) -> list[LevelResult]:
    """Per-(time, level) fits, time-major; progress over the read times on stderr when asked."""
    out = []
    bar = Progress(len(times), "cimsim.fit: read times", quiet=not progress)
    for j, ti in enumerate(times):
        t = float(data.times_s[ti])
        for li, lab in enumerate(data.levels):
            args = dict(family="normal" if family in ("quantile", "empirical") else family, level=li, label=int(lab),
                        t_s=t)
            target = float(data.target_uS[li])
            if isinstance(data, CellTable):
                res = fit_level_samples(data.g_uS[(ti, li)], target, **args)
            else:
                r = data.rows[(ti, li)]
                q = np.array([r[c] for c in QUANTILE_COLUMNS])
                res = fit_level_quantiles(q, r["mean_uS"], r["std_uS"], int(r["n"]), target, **args)
            if family == "quantile":
                res = as_quantile_level(res, data)
            elif family == "empirical":  # the cells themselves (fit_device checked they are per-cell data)
                res = dataclasses.replace(res, family="empirical", scale_uS=res.sigma_uS, df=None, ks=0.0,
                                          error_quantiles_uS=np.sort(res.samples_uS) - res.target_uS)
            out.append(res)
        n_t = sum(1 for r in out[-data.levels.size:] if r.family == "student-t")
        bar.update(note=f"t = {t:g} s: {data.levels.size} levels fitted, {n_t} student-t")
    bar.close()
    return out


def as_quantile_level(res: LevelResult, data: CellTable | SummaryTable, floor_uS: float = 0.0) -> LevelResult:
    """``res`` (a normal fit, for the mean, std and the smooth polynomials) turned into a
    quantile-family level: its quantile function and tails, and the KS of that law (per-cell data:
    against every cell; summary: ``max |F(q_p) - p|`` over the stored quantiles)."""
    if res.samples_uS is not None:
        q, lo, hi = fit_level_quantile_samples(res.samples_uS, res.target_uS, floor_uS)
        ks = quantile_ks(res.samples_uS, res.target_uS, CELL_NODES_Z, q, lo, hi)
    else:
        q, lo, hi = fit_level_quantile_summary(res.quantiles_uS, res.target_uS, floor_uS)
        ks = quantile_ks_summary(res.quantiles_uS, res.target_uS, summary_nodes()[1], q, lo, hi)
    return dataclasses.replace(res, family="quantile", scale_uS=res.sigma_uS, df=None, ks=ks, error_quantiles_uS=q,
                               tail_lo=lo, tail_hi=hi)


def quantile_nodes(data: CellTable | SummaryTable) -> tuple[float, ...]:
    """The probit nodes of a quantile-family model fitted from ``data``."""
    return tuple(float(z) for z in (CELL_NODES_Z if isinstance(data, CellTable) else summary_nodes()[1]))


def stuck_fractions(data: CellTable | SummaryTable) -> tuple[float, float, dict[str, Any]]:
    """Stuck-at-gmin / gmax fractions measured at the ``t = 0`` read (rule in the module docstring)."""
    rule = ("at the t = 0 read (right after write-verify): cells outside their window [lo, hi) by more than "
            "1 % of its width and within one window width of gmin (gmax) are stuck at gmin (gmax); "
            "fraction of all cells read at t = 0")
    t0 = np.flatnonzero(data.times_s == 0)
    if not data.windows_measured or t0.size == 0:
        why = "no write-verify window columns" if not data.windows_measured else "no t = 0 read"
        return 0.0, 0.0, {"measured": False, "reason": f"not measured: the data has {why}", "rule": rule}
    ti = int(t0[0])
    n_tot = lo_n = hi_n = 0
    if isinstance(data, CellTable):
        width = float(np.min(data.hi_uS - data.lo_uS))
        for li in range(data.levels.size):
            g = data.g_uS.get((ti, li))
            if g is None:
                continue
            a, b = miss_near_edges(g, data.lo_uS[li], data.hi_uS[li], data.gmin_uS, data.gmax_uS, width)
            n_tot, lo_n, hi_n = n_tot + g.size, lo_n + a, hi_n + b
    else:
        rows = [r for (t, _), r in data.rows.items() if t == ti]
        if not all("n_miss_near_gmin" in r and "n_miss_near_gmax" in r for r in rows):
            return 0.0, 0.0, {"measured": False, "rule": rule,
                              "reason": "not measured: the summary has no n_miss_near_gmin/n_miss_near_gmax columns"}
        n_tot = int(sum(r["n"] for r in rows))
        lo_n = int(sum(r["n_miss_near_gmin"] for r in rows))
        hi_n = int(sum(r["n_miss_near_gmax"] for r in rows))
    info = {"measured": True, "rule": rule, "n_cells_t0": n_tot, "n_stuck_gmin": lo_n, "n_stuck_gmax": hi_n}
    return lo_n / n_tot, hi_n / n_tot, info


def fit_device(path: str | os.PathLike, options: FitOptions = FitOptions(), read_noise: str | os.PathLike | None = None,
               progress: bool = False) -> FitResult:
    """Read ``path``, fit, and build the :class:`DeviceModel` (raises :class:`MeasuredDataError`)."""
    path = Path(path)
    options.check()
    data = read_measured(path, options.fmt, options.columns, options.units, options.neg_tol_frac)
    times = _time_indices(data, options.time_s)
    check_cells(data, times, options.min_cells)
    if options.family == "empirical" and not isinstance(data, CellTable):
        raise MeasuredDataError(f"{path}: --family empirical replays measured cells and needs per-cell data, "
                                "not a per-level summary")
    rn = fit_read_noise(Path(read_noise), options.read_noise_deg) if read_noise is not None else None
    levels = fit_levels(data, times, options.family, progress)
    return model_from_levels(data, times, levels, options, rn)


def model_from_levels(data: CellTable | SummaryTable, times: Sequence[int], levels: list[LevelResult],
                      options: FitOptions, rn: dict[str, Any] | None = None) -> FitResult:
    """The device model of per-level fits ``levels`` (time-major, as :func:`fit_levels` returns
    them for ``data`` at the time indices ``times``): smooth polynomials over the levels, stuck
    fractions, provenance."""
    path = Path(data.path)
    g = data.target_uS
    nl = data.levels.size
    sig_polys, shift_polys, r2s, r2m, fitted = [], [], [], [], []
    for j, ti in enumerate(times):
        block = levels[j * nl:(j + 1) * nl]
        cs, r2_s = fit_poly(g, np.array([r.sigma_uS for r in block]), options.poly_deg)
        cm, r2_m = fit_poly(g, np.array([r.shift_uS for r in block]), options.poly_deg)
        sig_polys.append(tuple(float(c) for c in cs))
        shift_polys.append(tuple(float(c) for c in cm))
        r2s.append(r2_s)
        r2m.append(r2_m)
        fitted.append((float(data.times_s[ti]), cs, cm))
    s_lo, s_hi, stuck_info = stuck_fractions(data)
    model = DeviceModel(
        name=options.name or path.name.split(".")[0],
        technology=options.technology if options.technology is not None else data.meta.get("technology", ""),
        citation=options.citation if options.citation is not None else data.meta.get("citation", ""),
        gmin_S=_to_S(data.gmin_uS), gmax_S=_to_S(data.gmax_uS),
        levels_S=tuple(_to_S(v) for v in g),
        times_s=tuple(float(data.times_s[ti]) for ti in times),
        sigma_poly_uS=tuple(sig_polys), shift_poly_uS=tuple(shift_polys),
        level_fits=tuple(r.level_fit() for r in levels),
        quantile_z=quantile_nodes(data) if options.family == "quantile" else None,
        read_noise_poly_uS=None if rn is None else tuple(rn["poly_uS"]),
        stuck_at_gmin=s_lo, stuck_at_gmax=s_hi, g_floor_S=0.0,
        provenance=_provenance(data, options, levels, r2s, r2m, rn, stuck_info),
    )
    return FitResult(model=model, levels=levels, smooth_r2={"sigma": r2s, "shift": r2m}, read_noise=rn,
                     data_kind=data.kind, source=path, fitted=fitted)


def _provenance(data, options: FitOptions, levels: list[LevelResult], r2s, r2m, rn, stuck_info) -> dict[str, Any]:
    ks = {}
    for r in levels:
        ks.setdefault(f"{r.t_s:g}", []).append(round(r.ks, 6))
    return {
        "source_file": str(data.path), "source_name": data.path.name, "sha256": sha256_file(data.path),
        "source_meta": dict(data.meta), "data_format": data.kind,
        "fit_options": options.to_dict(),
        "cimsim_version": cimsim.__version__,
        "fitter": "cimsim.fit",
        "method": {
            "sigma": "sample standard deviation (ddof=1); the fitted law has exactly this std",
            "shift": "sample mean minus the window centre",
            "family": ("normal vs std-constrained Student-t (df > 2); auto picks student-t iff AIC drops by "
                       f"> {AIC_MARGIN:g} and KS does not rise"),
            "shape": ("df by maximum likelihood from per-cell data" if data.kind == "tidy" else
                      "df by least squares on the quantile function (log half-widths of the central 98/90/80/50 % "
                      "intervals); AIC from the grouped-data likelihood of the cells between the stored quantiles; "
                      "KS over the stored quantiles"),
            "outliers": "none removed: cells that relaxed out of their window are part of the distribution",
            "range": "gmin = lowest window's lower edge, gmax = highest window's upper edge, levels = window centres",
        },
        "windows_measured": bool(data.windows_measured),
        "level_labels": [int(v) for v in data.levels],
        "fit_quality": {
            "ks_per_level": ks,
            "ks_max": max(r.ks for r in levels),
            "sigma_poly_r2": r2s, "shift_poly_r2": r2m,
            "n_student_t": sum(r.family == "student-t" for r in levels), "n_levels_fitted": len(levels),
        },
        "stuck": stuck_info,
        "read_noise": None if rn is None else {k: v for k, v in rn.items() if k != "poly_uS"},
    }


# ================================================================================= output
def format_table(result: FitResult) -> str:
    """The per-level table (uS) for every fitted time, with the smooth fit's R^2."""
    lines = []
    times = sorted({r.t_s for r in result.levels})
    for j, t in enumerate(times):
        lines.append(f"t = {t:g} s   (sigma(G) R^2 = {result.smooth_r2['sigma'][j]:.3f}, "
                     f"shift(G) R^2 = {result.smooth_r2['shift'][j]:.3f})")
        lines.append(f"{'level':>5} {'n':>5} {'target':>8} {'shift':>8} {'sigma':>8} {'robust':>8} "
                     f"{'KS':>6} {'family':<9} {'df':>6}   (uS)")
        for r in (r for r in result.levels if r.t_s == t):
            df = f"{r.df:6.2f}" if r.df is not None else f"{'-':>6}"
            lines.append(f"{r.label:5d} {r.n:5d} {r.target_uS:8.3f} {r.shift_uS:8.4f} {r.sigma_uS:8.4f} "
                         f"{r.robust_uS:8.4f} {r.ks:6.3f} {r.family:<9} {df}")
        lines.append("")
    m = result.model
    st = m.provenance.get("stuck", {})
    counts = (f" ({st['n_stuck_gmin']} and {st['n_stuck_gmax']} of {st['n_cells_t0']} cells at t = 0)"
              if st.get("measured") else f" ({st.get('reason', 'not measured')})")
    lines.append(f"gmin {m.gmin_S / _US:g} uS, gmax {m.gmax_S / _US:g} uS, {len(m.levels_S)} levels; stuck at gmin "
                 f"{m.stuck_at_gmin:.4g}, at gmax {m.stuck_at_gmax:.4g}{counts}")
    if result.read_noise is not None:
        rn = result.read_noise
        pts = ", ".join(f"{s['sigma_read_uS']:.3f} uS at {s['g_mean_uS']:.1f} uS" for s in rn["series"])
        lines.append(f"read noise ({rn['source_name']}): {pts}; polynomial R^2 = {rn['r2']:.3f}")
    return "\n".join(lines)


def _display_time(times: Sequence[float]) -> float:
    """The read time drawn in the per-level panels: 1 s when fitted, else the latest time."""
    return 1.0 if 1.0 in times else max(times)


def _quantile_histogram(ax, q: np.ndarray, color: str) -> None:
    """Density (1/uS) drawn from stored quantiles: mass p_{j+1} - p_j spread over [q_j, q_{j+1}]."""
    p = np.asarray(QUANTILES)
    width = np.diff(q)
    dens = np.where(width > 0, np.diff(p) / np.where(width > 0, width, 1.0), 0.0)
    ax.stairs(dens, q, fill=True, alpha=0.35, color=color, label="data (from quantiles)")


def render_figure(result: FitResult, n_levels_shown: int = 8) -> bytes:
    """PNG bytes: per-level histograms with the fitted pdf, sigma and shift vs G with the smooth fit,
    a QQ plot, and the read noise (when fitted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec

    times = sorted({r.t_s for r in result.levels})
    t_show = _display_time(times)
    block = [r for r in result.levels if r.t_s == t_show]
    idx = np.unique(np.rint(np.linspace(0, len(block) - 1, min(n_levels_shown, len(block)))).astype(int))
    fig = plt.figure(figsize=(16, 11.5), layout="constrained")
    gs = GridSpec(3, 4, figure=fig, height_ratios=[1, 1, 1.25])
    for j, i in enumerate(idx):
        _hist_panel(fig.add_subplot(gs[j // 4, j % 4]), block[i])
    cmap = plt.get_cmap("viridis")
    colors = {t: cmap(k / max(len(times) - 1, 1)) for k, t in enumerate(times)}
    _smooth_panel(fig.add_subplot(gs[2, 0]), result, colors, "sigma")
    _smooth_panel(fig.add_subplot(gs[2, 1]), result, colors, "shift")
    _qq_panel(fig.add_subplot(gs[2, 2]), [block[i] for i in idx], t_show)
    _read_noise_panel(fig.add_subplot(gs[2, 3]), result)
    src = result.model.provenance.get("source_name", result.source.name)
    fig.suptitle(f"cimsim.fit: {result.model.name} from {src} ({result.data_kind} data); "
                 f"histograms and QQ at t = {t_show:g} s")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _hist_panel(ax, r: LevelResult) -> None:
    lo = min(r.quantiles_uS[0], r.mean_uS - 4 * r.robust_uS)
    hi = max(r.quantiles_uS[-1], r.mean_uS + 4 * r.robust_uS)
    if r.samples_uS is not None:
        ax.hist(r.samples_uS, bins=np.linspace(lo, hi, 41), density=True, alpha=0.35, color="C0", label="data")
    else:
        _quantile_histogram(ax, r.quantiles_uS, "C0")
    x = np.linspace(lo, hi, 400)
    if r.sigma_uS > 0:
        ax.plot(x, model_pdf(x, r.mean_uS, r.sigma_uS, r.df), "C3",
                label=f"{r.family}" + (f" df={r.df:.2f}" if r.df else ""))
        if r.df is not None:
            ax.plot(x, model_pdf(x, r.mean_uS, r.sigma_uS, None), "k:", lw=1, label="normal")
    ax.axvline(r.target_uS, color="0.4", lw=0.8, ls="--")
    ax.set_xlim(lo, hi)
    ax.set_title(f"level {r.label}: n={r.n}, sigma={r.sigma_uS:.3f}, KS={r.ks:.3f}", fontsize=9)
    ax.set_xlabel("G (uS)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper right")


def _smooth_panel(ax, result: FitResult, colors, what: str) -> None:
    g = np.array([lf.target_S for lf in result.model.level_fits if lf.t_s == result.model.times_s[0]]) / _US
    grid = np.linspace(result.model.gmin_S / _US, result.model.gmax_S / _US, 200)
    for j, (t, cs, cm) in enumerate(result.fitted):
        vals = [r.sigma_uS if what == "sigma" else r.shift_uS for r in result.levels if r.t_s == t]
        coeffs = cs if what == "sigma" else cm
        r2 = result.smooth_r2[what][j]
        ax.plot(g, vals, "o", ms=3, color=colors[t])
        ax.plot(grid, np.polyval(coeffs, grid), "-", color=colors[t], label=f"t={t:g} s (R^2 {r2:.2f})")
    ax.set_xlabel("target G (uS)")
    ax.set_ylabel("sigma (uS)" if what == "sigma" else "mean shift (uS)")
    ax.set_title(f"{what} vs G: per level (dots), polynomial (lines)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def _qq_panel(ax, block: list[LevelResult], t_s: float) -> None:
    for k, r in enumerate(block):
        if r.sigma_uS == 0:
            continue
        if r.samples_uS is not None:
            p, emp = QQ_PROBS, np.quantile(r.samples_uS, QQ_PROBS)
        else:
            p, emp = np.asarray(QUANTILES), r.quantiles_uS
        model = model_quantile(p, r.mean_uS, r.sigma_uS, r.df)
        ax.plot((model - r.mean_uS) / r.sigma_uS, (emp - r.mean_uS) / r.sigma_uS, ".", ms=3,
                color=f"C{k % 10}", label=f"level {r.label}")
    lim = ax.get_xlim()
    ax.plot(lim, lim, "k-", lw=0.8)
    ax.set_xlabel("fitted quantile (in sigma)")
    ax.set_ylabel("data quantile (in sigma)")
    ax.set_title(f"QQ plot, t = {t_s:g} s (fitted family per level)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)


def _read_noise_panel(ax, result: FitResult) -> None:
    rn = result.read_noise
    if rn is None:
        ax.text(0.5, 0.5, "no read-noise file given", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    g = np.array([s["g_mean_uS"] for s in rn["series"]])
    s = np.array([s["sigma_read_uS"] for s in rn["series"]])
    naive = np.array([x["diff_std_over_sqrt2_uS"] for x in rn["series"]])
    grid = np.linspace(0, g.max() * 1.05, 200)
    ax.plot(g, s, "o", label="sigma_read (RTN steps trimmed)")
    ax.plot(g, naive, "x", color="0.5", label="std(diff)/sqrt(2)")
    ax.plot(grid, np.polyval(rn["poly_uS"], grid), "C3-", label=f"polynomial (R^2 {rn['r2']:.2f})")
    ax.axvspan(result.model.gmin_S / _US, result.model.gmax_S / _US, color="C2", alpha=0.1, label="model's G range")
    ax.set_xlabel("G (uS)")
    ax.set_ylabel("read noise (uS)")
    ax.set_title(f"read noise from {rn['source_name']}", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0)


# =================================================================================== CLI

"""Device models: how a memory cell lands when programmed, and how it reads.

A :class:`DeviceModel` describes one non-volatile memory technology:

* the conductance range ``[gmin_S, gmax_S]`` (siemens) and the programmable levels
  (``levels_S``; ``None`` for an analog, continuously programmable cell);
* the programming error ``G - target`` as a function of target conductance and of the
  time since programming (relaxation): per level and read time a :class:`LevelFit` (mean
  shift, spread, distribution family: normal or heavy-tailed Student-t), and a smooth
  polynomial ``sigma(G, t)`` / ``shift(G, t)`` between levels;
* read noise (``sigma_read(G)``), stuck-at-Gmin / stuck-at-Gmax fractions, and an optional
  power-law conductance drift ``G(t) = G0 (t / t0)^-nu`` (PCM);
* provenance (source file, fit options, fit quality) and a citation.

Units: conductances in siemens (``_S``), times in seconds (``_s``). The polynomials are
stored in microsiemens because that is how the literature quotes them: ``value_uS =
numpy.polyval(coeffs, G_uS)`` (highest power first).

Time dependence: models are given at read times ``times_s``; between two of them every
quantity is interpolated linearly in ``log10(t + 1 ms)``; outside the range it is held at
the nearest end (no extrapolation). Drift, when present, is applied on top.

Every random draw takes an explicit :class:`numpy.random.Generator`: a chip is a seed.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from cimsim.io import atomic_write_text

SCHEMA_VERSION = 1
UNITS = {
    "conductance": "S (siemens)",
    "time": "s (seconds)",
    "polynomials": "numpy.polyval order (highest power first); argument G in uS, value in uS",
}
FAMILIES = ("normal", "student-t", "quantile", "empirical")
_T_EPS_S = 1e-3  # time offset of the log-time interpolation axis, seconds
_UNIT_S = 1e-6  # one microsiemens in siemens


class DeviceModelError(ValueError):
    """A device model that is inconsistent or a JSON file that is not a device model."""


@dataclass(frozen=True)
class LevelFit:
    """Programming error of one conductance level at one read time.

    ``G - target_S`` follows ``mean_shift_S + scale_S * X`` with ``X`` standard normal
    (``family == "normal"``, ``df is None``) or standard Student-t with ``df`` degrees of
    freedom (``family == "student-t"``); or (``family == "quantile"``) its quantile function:
    ``quantiles_S`` at the model's probit nodes ``DeviceModel.quantile_z`` (linear in z between
    them) and generalized-Pareto tails beyond the end nodes, ``tail_lo`` / ``tail_hi`` =
    ``(xi, beta_S)`` (:func:`cimsim.device.sampling.quantile_error_numpy`). ``sigma_S`` is the
    standard deviation of the fitted distribution, ``robust_sigma_S`` the data's IQR / 1.349
    (equal to ``sigma_S`` for a normal), ``ks`` the Kolmogorov-Smirnov statistic of the chosen
    family against the data. ``family == "empirical"`` replays measured cells: ``quantiles_S``
    holds every measured cell's error, sorted, and a programmed cell is one of them drawn at
    random (no tails, no interpolation in time; the device answers only at its ``times_s``).
    """

    level: int
    t_s: float
    target_S: float
    n: int
    mean_shift_S: float
    sigma_S: float
    robust_sigma_S: float
    family: str = "normal"
    scale_S: float = float("nan")
    df: float | None = None
    ks: float = float("nan")
    quantiles_S: tuple[float, ...] | None = None
    tail_lo: tuple[float, float] | None = None
    tail_hi: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise DeviceModelError(f"level {self.level}: unknown family {self.family!r} (choose from {FAMILIES})")
        if self.family == "student-t" and (self.df is None or not self.df > 0):
            raise DeviceModelError(f"level {self.level}: a student-t level needs df > 0")
        if self.family == "quantile":
            q, tails = self.quantiles_S, (self.tail_lo, self.tail_hi)
            if q is None or len(q) < 2 or any(t is None or len(t) != 2 for t in tails):
                raise DeviceModelError(f"level {self.level}: a quantile level needs quantiles_S (>= 2) and "
                                       "tail_lo, tail_hi = (xi, beta_S)")
            object.__setattr__(self, "quantiles_S", tuple(float(v) for v in q))
            object.__setattr__(self, "tail_lo", tuple(float(v) for v in self.tail_lo))
            object.__setattr__(self, "tail_hi", tuple(float(v) for v in self.tail_hi))
            qs = self.quantiles_S
            if not all(math.isfinite(v) for v in qs) or any(b < a for a, b in zip(qs, qs[1:])):
                raise DeviceModelError(f"level {self.level} at t = {self.t_s} s: quantiles_S must be finite and "
                                       "non-decreasing")
            for name, (xi, beta) in (("tail_lo", self.tail_lo), ("tail_hi", self.tail_hi)):
                if not (math.isfinite(xi) and math.isfinite(beta) and beta >= 0 and xi < 1):
                    raise DeviceModelError(f"level {self.level} at t = {self.t_s} s: {name} needs a finite "
                                           f"xi < 1 and beta_S >= 0, got {(xi, beta)}")
        elif self.family == "empirical":
            q = self.quantiles_S
            if q is None or len(q) < 1 or self.tail_lo is not None or self.tail_hi is not None:
                raise DeviceModelError(f"level {self.level}: an empirical level needs quantiles_S (the sorted "
                                       "errors of its measured cells) and no tails")
            object.__setattr__(self, "quantiles_S", tuple(float(v) for v in q))
            qs = self.quantiles_S
            if not all(math.isfinite(v) for v in qs) or any(b < a for a, b in zip(qs, qs[1:])):
                raise DeviceModelError(f"level {self.level} at t = {self.t_s} s: quantiles_S must be finite and "
                                       "sorted")
        elif self.quantiles_S is not None or self.tail_lo is not None or self.tail_hi is not None:
            raise DeviceModelError(f"level {self.level}: quantiles_S and tails belong to the quantile family only")
        if self.family in ("normal", "quantile", "empirical") and math.isnan(self.scale_S):
            object.__setattr__(self, "scale_S", float(self.sigma_S))
        if not self.sigma_S >= 0 or not self.scale_S >= 0:
            raise DeviceModelError(f"level {self.level}: spread must be >= 0")

    def _key(self) -> tuple:
        """Field values with NaN as None, so that an unknown ``ks``/``scale_S`` compares equal to itself."""
        vals = (getattr(self, f.name) for f in dataclasses.fields(self))
        return tuple(None if isinstance(v, float) and math.isnan(v) else v for v in vals)

    def __eq__(self, other: object) -> bool:
        # Explicit so that a JSON round trip (NaN -> null -> NaN) gives an equal LevelFit.
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def to_dict(self) -> dict[str, Any]:
        d = {k: _json_float(v) for k, v in dataclasses.asdict(self).items()}
        for k in ("quantiles_S", "tail_lo", "tail_hi"):
            d[k] = None if d[k] is None else list(d[k])
            if d[k] is None:
                del d[k]  # the parametric families' JSON stays as it was
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "", key: str = "level_fit") -> "LevelFit":
        """From :meth:`to_dict`'s form; ``source`` (file) and ``key`` (e.g. ``level_fits[3]``) name
        the object in error messages."""
        f = _Fields(d, source, key, {fl.name for fl in dataclasses.fields(cls)})
        kw = dict(level=f.get("level", "int"), t_s=f.get("t_s", "num"), target_S=f.get("target_S", "num"),
                  n=f.get("n", "int"), mean_shift_S=f.get("mean_shift_S", "num"), sigma_S=f.get("sigma_S", "num"),
                  robust_sigma_S=f.get("robust_sigma_S", "num"), family=f.get("family", "str", "normal"),
                  scale_S=f.get("scale_S", "num?", None), df=f.get("df", "num?", None), ks=f.get("ks", "num?", None),
                  quantiles_S=f.get("quantiles_S", "nums?", None), tail_lo=f.get("tail_lo", "nums?", None),
                  tail_hi=f.get("tail_hi", "nums?", None))
        for k in ("scale_S", "ks"):
            if kw[k] is None:
                kw[k] = float("nan")
        try:
            return cls(**kw)
        except DeviceModelError as e:
            raise DeviceModelError(f"{f.where}{key}: {e}") from None


@dataclass(frozen=True)
class ClippedLogLinear:
    """``clip(a * ln(g) + b, lo, hi)`` with ``g = G / gmax`` (the form of the PCM drift laws)."""

    a: float
    b: float
    lo: float
    hi: float

    def __call__(self, g: np.ndarray) -> np.ndarray:
        return np.clip(self.a * np.log(np.maximum(g, 1e-12)) + self.b, self.lo, self.hi)


@dataclass(frozen=True)
class PowerLawDrift:
    """``G(t) = G(t0) * (t / t0) ** -nu`` for ``t > t0``, ``nu ~ N(nu_mean(g), nu_std(g))`` per cell.

    Source of the form and the PCM coefficients: Nandakumar et al. 2019 / Joshi et al. 2020, as
    implemented in IBM aihwkit (``PCMLikeNoiseModel``); see ``../shared/reference/README.md`` s.4.
    """

    t0_s: float
    nu_mean: ClippedLogLinear
    nu_std: ClippedLogLinear

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "power_law", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "", key: str = "drift") -> "PowerLawDrift":
        """From :meth:`to_dict`'s form; ``source`` (file) and ``key`` name the object in error messages."""
        f = _Fields(d, source, key, {"kind", "t0_s", "nu_mean", "nu_std"})
        kind = f.get("kind", "str", "power_law")
        if kind != "power_law":
            raise DeviceModelError(f"{f.where}unknown drift kind {kind!r} in field '{key}.kind' (only 'power_law')")
        t0 = f.get("t0_s", "num")
        if not t0 > 0:
            raise DeviceModelError(f"{f.where}field '{key}.t0_s' must be > 0 s, got {t0!r}")
        laws = []
        for name in ("nu_mean", "nu_std"):
            g = _Fields(f.get(name, "obj"), source, f"{key}.{name}", {"a", "b", "lo", "hi"})
            laws.append(ClippedLogLinear(*(float(g.get(c, "num")) for c in ("a", "b", "lo", "hi"))))
        return cls(float(t0), *laws)


@dataclass(frozen=True)
class DeviceModel:
    """A memory technology's programming and read behaviour; see the module docstring.

    ``sigma_scale`` multiplies every programming spread (the knob a variation sweep turns);
    ``g_floor_S`` is the lowest conductance a sample may take (``None``: no floor, for the
    stylized models of the NeFT paper whose noise is symmetric by definition).
    """

    name: str
    gmin_S: float
    gmax_S: float
    times_s: tuple[float, ...]
    sigma_poly_uS: tuple[tuple[float, ...], ...]
    shift_poly_uS: tuple[tuple[float, ...], ...] = ()
    levels_S: tuple[float, ...] | None = None
    level_fits: tuple[LevelFit, ...] = ()
    read_noise_poly_uS: tuple[float, ...] | None = None
    stuck_at_gmin: float = 0.0
    stuck_at_gmax: float = 0.0
    drift: PowerLawDrift | None = None
    sigma_scale: float = 1.0
    g_floor_S: float | None = 0.0
    quantile_z: tuple[float, ...] | None = None
    technology: str = ""
    citation: str = ""
    provenance: Mapping[str, Any] = field(default_factory=dict, compare=False)

    # ------------------------------------------------------------------ checks
    def __post_init__(self) -> None:
        f = lambda name, v: object.__setattr__(self, name, v)  # noqa: E731 (frozen dataclass)
        f("times_s", tuple(float(t) for t in self.times_s))
        f("sigma_poly_uS", tuple(tuple(float(c) for c in p) for p in self.sigma_poly_uS))
        shift = self.shift_poly_uS or tuple((0.0,) for _ in self.times_s)
        f("shift_poly_uS", tuple(tuple(float(c) for c in p) for p in shift))
        if self.levels_S is not None:
            f("levels_S", tuple(float(g) for g in self.levels_S))
        if self.read_noise_poly_uS is not None:
            f("read_noise_poly_uS", tuple(float(c) for c in self.read_noise_poly_uS))
        f("level_fits", tuple(self.level_fits))
        if self.quantile_z is not None:
            f("quantile_z", tuple(float(z) for z in self.quantile_z))
        if not (0 <= self.gmin_S < self.gmax_S):
            raise DeviceModelError(f"{self.name}: need 0 <= gmin_S < gmax_S, got {self.gmin_S}, {self.gmax_S}")
        if not self.times_s or any(b <= a for a, b in zip(self.times_s, self.times_s[1:])) or self.times_s[0] < 0:
            raise DeviceModelError(f"{self.name}: times_s must be non-empty, >= 0 and strictly increasing")
        if len(self.sigma_poly_uS) != len(self.times_s) or len(self.shift_poly_uS) != len(self.times_s):
            raise DeviceModelError(f"{self.name}: need one sigma and one shift polynomial per read time")
        if self.levels_S is not None:
            if len(self.levels_S) < 2 or any(b <= a for a, b in zip(self.levels_S, self.levels_S[1:])):
                raise DeviceModelError(f"{self.name}: levels_S must hold >= 2 increasing conductances")
        for p in (self.stuck_at_gmin, self.stuck_at_gmax):
            if not 0 <= p <= 1:
                raise DeviceModelError(f"{self.name}: stuck fractions must lie in [0, 1]")
        if self.stuck_at_gmin + self.stuck_at_gmax > 1:
            raise DeviceModelError(f"{self.name}: stuck fractions add up to more than 1")
        if not self.sigma_scale >= 0:
            raise DeviceModelError(f"{self.name}: sigma_scale must be >= 0")
        if self.level_fits:
            if self.levels_S is None:
                raise DeviceModelError(f"{self.name}: per-level fits need levels_S")
            have: set[tuple[int, float]] = set()
            for lf in self.level_fits:
                if (lf.level, lf.t_s) in have:
                    raise DeviceModelError(f"{self.name}: two level fits for level {lf.level} at t = {lf.t_s} s")
                if not (0 <= lf.level < len(self.levels_S) and lf.t_s in self.times_s):
                    raise DeviceModelError(
                        f"{self.name}: a level fit for level {lf.level} at t = {lf.t_s} s, outside the model's "
                        f"levels 0..{len(self.levels_S) - 1} and times_s {list(self.times_s)}")
                have.add((lf.level, lf.t_s))
            for t in self.times_s:
                for k in range(len(self.levels_S)):
                    if (k, t) not in have:
                        raise DeviceModelError(f"{self.name}: no level fit for level {k} at t = {t} s")
            for fam in ("quantile", "empirical"):
                n_f = sum(lf.family == fam for lf in self.level_fits)
                if n_f and n_f != len(self.level_fits):
                    raise DeviceModelError(f"{self.name}: either every level fit is of the {fam} family or none is")
            n_q = sum(lf.family == "quantile" for lf in self.level_fits)
            if n_q:
                z = self.quantile_z
                if z is None or len(z) < 2 or any(b <= a for a, b in zip(z, z[1:])) or \
                        not all(math.isfinite(v) for v in z):
                    raise DeviceModelError(f"{self.name}: quantile levels need quantile_z, >= 2 increasing probit nodes")
                for lf in self.level_fits:
                    if len(lf.quantiles_S) != len(z):
                        raise DeviceModelError(f"{self.name}: level {lf.level} at t = {lf.t_s} s has "
                                               f"{len(lf.quantiles_S)} quantiles for {len(z)} quantile_z nodes")
        object.__setattr__(self, "_tables", self._build_tables())

    def _build_tables(self) -> dict[str, np.ndarray] | None:
        """Per-level parameter tables of shape (n_times, n_levels) for vectorized sampling."""
        if not self.level_fits:
            return None
        nt, nl = len(self.times_s), len(self.levels_S)
        tab = {k: np.zeros((nt, nl)) for k in ("shift", "scale", "df")}
        if self.quantile_z is not None and self.level_fits[0].family == "quantile":
            tab["q"] = np.zeros((nt, nl, len(self.quantile_z)))
            tab["tails"] = np.zeros((nt, nl, 4))
        tix = {t: i for i, t in enumerate(self.times_s)}
        for lf in self.level_fits:
            if lf.t_s not in tix or not 0 <= lf.level < nl:
                continue
            i = tix[lf.t_s]
            tab["shift"][i, lf.level] = lf.mean_shift_S
            tab["scale"][i, lf.level] = lf.scale_S
            tab["df"][i, lf.level] = np.inf if lf.df is None else lf.df
            if "q" in tab:
                tab["q"][i, lf.level] = lf.quantiles_S
                tab["tails"][i, lf.level] = (*lf.tail_lo, *lf.tail_hi)
        if self.level_fits[0].family == "empirical":
            n_max = max(len(lf.quantiles_S) for lf in self.level_fits)
            tab["cells"] = np.zeros((nt, nl, n_max))
            tab["count"] = np.zeros((nt, nl), dtype=np.int64)
            for lf in self.level_fits:
                i = tix[lf.t_s]
                tab["cells"][i, lf.level, :len(lf.quantiles_S)] = lf.quantiles_S
                tab["count"][i, lf.level] = len(lf.quantiles_S)
        return tab

    @property
    def is_empirical(self) -> bool:
        """True when programming replays measured cells (``family == "empirical"``)."""
        return self._tables is not None and "cells" in self._tables

    def empirical_params(self, levels_S: np.ndarray, t_s: float) -> tuple[np.ndarray, np.ndarray]:
        """``(cells_S, count)`` of an empirical device for cells at ``levels_S`` (L,), read at ``t_s``:
        ``cells_S`` (L, n_max) the sorted measured errors (S) of each level, zero-padded past its
        ``count`` (L,). ``sigma_scale`` scales each error's distance from the level's median error.
        Only the measured read times and levels exist: any other is a :class:`DeviceModelError`."""
        if not self.is_empirical:
            raise DeviceModelError(f"{self.name}: not an empirical device model")
        if t_s not in self.times_s:
            raise DeviceModelError(f"{self.name}: an empirical device replays cells measured at t = "
                                   f"{list(self.times_s)} s; read time {t_s} s is not one of them")
        lv = np.asarray(levels_S, dtype=np.float64).reshape(-1)
        k = self.level_index(lv)
        own = np.asarray(self.levels_S)[k]
        off = np.abs(own - lv) > 1e-6 * (self.levels_S[-1] - self.levels_S[0]) / (len(self.levels_S) - 1)
        if off.any():
            raise DeviceModelError(f"{self.name}: an empirical device has cells only at its measured levels; "
                                   f"{lv[off][0]} S is not one")
        i = self.times_s.index(t_s)
        cells, count = self._tables["cells"][i][k].copy(), self._tables["count"][i][k].copy()
        if self.sigma_scale != 1.0:
            med = np.array([np.median(c[:n]) for c, n in zip(cells, count)])[:, None]
            cells = np.where(np.arange(cells.shape[1]) < count[:, None], med + self.sigma_scale * (cells - med), 0.0)
        return cells, count

    @property
    def is_quantile(self) -> bool:
        """True when the levels follow fitted quantile functions (``family == "quantile"``)."""
        return self._tables is not None and "q" in self._tables

    def quantile_params(self, targets_S: np.ndarray, t_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Per-target error quantile function at read time ``t_s`` of a quantile model.

        Returns ``(q_S, tails)``: ``q_S`` (n, J) the error ``G - target`` (S) at the nodes
        ``quantile_z`` and ``tails`` (n, 4) = ``xi_lo, beta_lo_S, xi_hi, beta_hi_S``, for the
        flattened targets. Quantile functions are interpolated node by node: in log time between
        read times (as every quantity, see the module doc) and linearly in the target between
        adjacent levels (targets beyond the end levels take the end level's). ``sigma_scale``
        scales every error's distance from the level's median error (tails' ``beta`` with it).
        """
        if not self.is_quantile:
            raise DeviceModelError(f"{self.name}: not a quantile-family device model")
        tg = np.asarray(targets_S, dtype=np.float64).reshape(-1)
        i, j, w = self._time_weights(t_s)
        tab = self._tables
        q = (1 - w) * tab["q"][i] + w * tab["q"][j]  # (L, J)
        tails = (1 - w) * tab["tails"][i] + w * tab["tails"][j]  # (L, 4)
        lv = np.asarray(self.levels_S)
        pos = np.interp(tg, lv, np.arange(lv.size, dtype=np.float64))
        k = np.minimum(np.floor(pos).astype(np.int64), lv.size - 2)
        a = (pos - k)[:, None]
        qt = (1 - a) * q[k] + a * q[k + 1]
        tt = (1 - a) * tails[k] + a * tails[k + 1]
        if self.sigma_scale != 1.0:
            z = np.asarray(self.quantile_z)
            med = np.array([np.interp(0.0, z, row) for row in qt])[:, None]
            qt = med + self.sigma_scale * (qt - med)
            tt = tt * np.array([1.0, self.sigma_scale, 1.0, self.sigma_scale])
        return qt, tt

    # ------------------------------------------------------------- properties
    @property
    def n_levels(self) -> int | None:
        """Number of programmable levels, ``None`` for a continuous (analog) cell."""
        return None if self.levels_S is None else len(self.levels_S)

    @property
    def is_ideal(self) -> bool:
        """True when programming is exact: no spread, no shift, no stuck cells, no drift."""
        return (
            (self.sigma_scale == 0 or (not self.level_fits and all(not any(p) for p in self.sigma_poly_uS)))
            and all(not any(p) for p in self.shift_poly_uS)
            and not any(lf.mean_shift_S for lf in self.level_fits)
            and self.stuck_at_gmin == 0
            and self.stuck_at_gmax == 0
            and self.drift is None
        )

    def level_conductances(self, n_levels: int) -> np.ndarray:
        """The ``n_levels`` conductances (S) a cell of ``log2(n_levels)`` bits is programmed to.

        A device with discrete levels must offer a subset of equally spaced levels that spans
        ``[gmin, gmax]`` with exactly ``n_levels`` points (e.g. 4 of 32 levels, taking every
        ``(32-1)/(4-1)``-th one is only possible when that is an integer; otherwise the nearest
        device levels are used). A continuous device gives the evenly spaced grid.
        """
        if n_levels < 2:
            raise DeviceModelError(f"{self.name}: a cell needs at least 2 levels")
        if self.levels_S is None:
            return np.linspace(self.gmin_S, self.gmax_S, n_levels)
        lv = np.asarray(self.levels_S)
        if n_levels > lv.size:
            raise DeviceModelError(
                f"{self.name}: a cell with {n_levels} levels needs a device with at least that many; it has {lv.size}"
            )
        idx = np.rint(np.linspace(0, lv.size - 1, n_levels)).astype(np.int64)
        return lv[idx]

    # --------------------------------------------------------------- sampling
    def _time_weights(self, t_s: float) -> tuple[int, int, float]:
        """Indices (i, j) of the bracketing read times and the weight w of j (0 <= w <= 1)."""
        if not t_s >= 0:
            raise DeviceModelError(f"{self.name}: read time must be >= 0 s, got {t_s}")
        ts = self.times_s
        if t_s <= ts[0]:
            return 0, 0, 0.0
        if t_s >= ts[-1]:
            n = len(ts) - 1
            return n, n, 0.0
        j = int(np.searchsorted(ts, t_s, side="right"))
        i = j - 1
        x = math.log10(t_s + _T_EPS_S)
        xi, xj = math.log10(ts[i] + _T_EPS_S), math.log10(ts[j] + _T_EPS_S)
        return i, j, (x - xi) / (xj - xi)

    def sigma_smooth_S(self, g_S: np.ndarray, t_s: float) -> np.ndarray:
        """Smooth programming spread sigma(G, t) in siemens (before ``sigma_scale``)."""
        return self._poly_t(self.sigma_poly_uS, g_S, t_s, floor=0.0)

    def shift_smooth_S(self, g_S: np.ndarray, t_s: float) -> np.ndarray:
        """Smooth mean programming error shift(G, t) in siemens."""
        return self._poly_t(self.shift_poly_uS, g_S, t_s, floor=None)

    def _poly_t(self, polys, g_S, t_s, floor):
        i, j, w = self._time_weights(t_s)
        g_uS = np.asarray(g_S, dtype=np.float64) / _UNIT_S
        vi = np.polyval(polys[i], g_uS)
        v = vi if w == 0 else (1 - w) * vi + w * np.polyval(polys[j], g_uS)
        if floor is not None:
            v = np.maximum(v, floor)
        return v * _UNIT_S

    def level_index(self, targets_S: np.ndarray) -> np.ndarray:
        """Index of the nearest programmable level for each target (int64, same shape)."""
        if self.levels_S is None:
            raise DeviceModelError(f"{self.name}: a continuous device has no level index")
        lv = np.asarray(self.levels_S)
        mid = 0.5 * (lv[1:] + lv[:-1])
        return np.searchsorted(mid, np.asarray(targets_S, dtype=np.float64)).astype(np.int64)

    def programming_params(self, targets_S: np.ndarray, t_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-target ``(mean_shift_S, scale_S, df)`` of the programming error at read time ``t_s``.

        Targets on a level (within 1e-6 of the level spacing) take that level's fitted
        parameters; other targets, and every target of a model without per-level fits, take the
        smooth polynomials (normal family, ``df = inf``). ``scale_S`` includes ``sigma_scale``.
        """
        tg = np.asarray(targets_S, dtype=np.float64)
        shift = self.shift_smooth_S(tg, t_s)
        scale = self.sigma_smooth_S(tg, t_s)
        df = np.full(tg.shape, np.inf)
        if self._tables is not None:
            k = self.level_index(tg)
            lv = np.asarray(self.levels_S)
            tol = 1e-6 * (lv[-1] - lv[0]) / (lv.size - 1)
            on = np.abs(lv[k] - tg) <= tol
            i, j, w = self._time_weights(t_s)
            tab = self._tables
            lshift = (1 - w) * tab["shift"][i] + w * tab["shift"][j]
            lscale = (1 - w) * tab["scale"][i] + w * tab["scale"][j]
            ldf = tab["df"][i] if w < 0.5 else tab["df"][j]
            shift = np.where(on, lshift[k], shift)
            scale = np.where(on, lscale[k], scale)
            df = np.where(on, ldf[k], df)
        return shift, scale * self.sigma_scale, df

    def sample(self, targets_S: np.ndarray, t_s: float, rng: np.random.Generator, drift: bool = True) -> np.ndarray:
        """Draw programmed conductances (S) for ``targets_S`` (any shape), read at ``t_s`` seconds.

        Vectorized over the whole array; reproducible from the generator's seed. Order of
        effects: programming error (level/time dependent, heavy-tailed where fitted), then
        drift from ``t0`` to ``t_s`` (if the model drifts and ``drift``; pass ``drift=False`` and
        call :meth:`apply_drift` to keep the undrifted array too), then stuck cells, then the floor.
        The numpy reference of :mod:`cimsim.device.sampling`.
        """
        from cimsim.device.sampling import sample_targets

        return sample_targets(self, targets_S, t_s, rng, drift)

    def sample_levels(self, levels_S: np.ndarray, index: np.ndarray, t_s: float, rng: np.random.Generator,
                      drift: bool = True) -> np.ndarray:
        """Fast :meth:`sample` for cells whose targets are a few levels: ``levels_S[index]``.

        levels_S: (L,) target conductances (S); index: integer array of any shape. Same
        distribution as ``sample(levels_S[index], t_s, rng)`` (checked statistically in the
        tests), drawn by a parallel Numba kernel with a counter-based generator keyed by one
        seed taken from ``rng``: reproducible from the seed on any number of threads.
        """
        from cimsim.device.sampling import sample_levels_numba

        lv = np.asarray(levels_S, dtype=np.float64)
        idx = np.asarray(index)
        if idx.size and (idx.min() < 0 or idx.max() >= lv.size):
            raise DeviceModelError(f"{self.name}: level index out of range 0..{lv.size - 1}")
        out = sample_levels_numba(self, lv, idx, t_s, int(rng.integers(0, 2**63 - 1)))
        if drift and self.drift is not None:
            out = self.apply_drift(out, t_s, rng)
        return out

    def apply_drift(self, g_S: np.ndarray, t_s: float, rng: np.random.Generator) -> np.ndarray:
        """Power-law drift of programmed conductances from ``t0`` to ``t_s`` (one nu per cell)."""
        from cimsim.device.sampling import drift_numpy

        return drift_numpy(self, g_S, t_s, rng)

    def read_sigma_S(self, g_S: np.ndarray) -> np.ndarray:
        """Standard deviation (S) of one read of a cell at conductance ``g_S`` (zeros if no read noise)."""
        from cimsim.device.sampling import read_sigma_S

        return read_sigma_S(self.read_noise_poly_uS, g_S)

    def read(self, g_S: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One noisy read (S) of cells at ``g_S``: ``G + N(0, read_sigma(G))`` per cell."""
        g = np.asarray(g_S, dtype=np.float64)
        return g + self.read_sigma_S(g) * rng.standard_normal(g.shape)

    # ------------------------------------------------------------ variations
    def replace(self, **changes: Any) -> "DeviceModel":
        """A copy with fields changed (e.g. ``sigma_scale``, ``stuck_at_gmin``)."""
        return dataclasses.replace(self, **changes)

    def ideal(self) -> "DeviceModel":
        """The same conductance range and levels with exact programming and no read noise."""
        return dataclasses.replace(
            self,
            name=f"{self.name}-ideal",
            times_s=(0.0,),
            sigma_poly_uS=((0.0,),),
            shift_poly_uS=((0.0,),),
            level_fits=(),
            read_noise_poly_uS=None,
            stuck_at_gmin=0.0,
            stuck_at_gmax=0.0,
            drift=None,
        )

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "cimsim.DeviceModel",
            "units": dict(UNITS),
            "name": self.name,
            "technology": self.technology,
            "citation": self.citation,
            "gmin_S": self.gmin_S,
            "gmax_S": self.gmax_S,
            "levels_S": None if self.levels_S is None else list(self.levels_S),
            "times_s": list(self.times_s),
            "sigma_scale": self.sigma_scale,
            "g_floor_S": self.g_floor_S,
            **({} if self.quantile_z is None else {"quantile_z": list(self.quantile_z)}),
            "sigma_poly_uS": [list(p) for p in self.sigma_poly_uS],
            "shift_poly_uS": [list(p) for p in self.shift_poly_uS],
            "level_fits": [lf.to_dict() for lf in self.level_fits],
            "read_noise_poly_uS": None if self.read_noise_poly_uS is None else list(self.read_noise_poly_uS),
            "stuck_at_gmin": self.stuck_at_gmin,
            "stuck_at_gmax": self.stuck_at_gmax,
            "drift": None if self.drift is None else self.drift.to_dict(),
            "provenance": _jsonable(self.provenance),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "<dict>") -> "DeviceModel":
        """From :meth:`to_dict`'s form; every error is a one-line :class:`DeviceModelError` naming
        ``source`` and the field at fault."""
        if not isinstance(d, Mapping):
            raise DeviceModelError(f"{source}: not a cimsim device model (the top level is {_show(d)}, "
                                   "not a JSON object)")
        if d.get("kind") != "cimsim.DeviceModel":
            raise DeviceModelError(f"{source}: not a cimsim device model (no kind 'cimsim.DeviceModel')")
        if d.get("schema_version") != SCHEMA_VERSION:
            raise DeviceModelError(
                f"{source}: device model schema_version {d.get('schema_version')!r}, this cimsim reads {SCHEMA_VERSION}"
            )
        f = _Fields(d, source)
        raw_fits = f.get("level_fits", "list", [])
        fits = tuple(LevelFit.from_dict(x, source, f"level_fits[{i}]") for i, x in enumerate(raw_fits))
        drift = f.get("drift", "obj?", None)
        kw = dict(
            name=f.get("name", "str"),
            technology=f.get("technology", "str", ""),
            citation=f.get("citation", "str", ""),
            gmin_S=float(f.get("gmin_S", "num")),
            gmax_S=float(f.get("gmax_S", "num")),
            levels_S=f.get("levels_S", "nums?", None),
            times_s=f.get("times_s", "nums"),
            sigma_scale=float(f.get("sigma_scale", "num", 1.0)),
            g_floor_S=f.get("g_floor_S", "num?", 0.0),
            quantile_z=f.get("quantile_z", "nums?", None),
            sigma_poly_uS=f.get("sigma_poly_uS", "polys"),
            shift_poly_uS=f.get("shift_poly_uS", "polys?", None) or (),
            level_fits=fits,
            read_noise_poly_uS=f.get("read_noise_poly_uS", "poly?", None),
            stuck_at_gmin=float(f.get("stuck_at_gmin", "num", 0.0)),
            stuck_at_gmax=float(f.get("stuck_at_gmax", "num", 0.0)),
            drift=None if drift is None else PowerLawDrift.from_dict(drift, source),
            provenance=f.get("provenance", "obj", {}),
        )
        try:
            return cls(**kw)
        except DeviceModelError as e:
            raise DeviceModelError(f"{source}: {e}") from None
        except (TypeError, ValueError) as e:  # a check the field types above do not make
            raise DeviceModelError(f"{source}: malformed device model: {e}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model as JSON atomically (temporary file + rename); returns the path."""
        path = Path(path)
        atomic_write_text(path, self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DeviceModel":
        """Read a JSON device model (UTF-8, a byte-order mark allowed); raises :class:`DeviceModelError`."""
        from cimsim.io import read_table

        path = Path(path)
        if path.suffix.lower() == ".toml":
            raise DeviceModelError(f"{path}: a device model is a JSON file")
        return cls.from_dict(read_table(path, "device model", DeviceModelError, check_table=False), source=str(path))


# ---------------------------------------------------------------------- presets
PRESET_DIR = Path(__file__).resolve().parents[2] / "device_models"


#: conductance range of the ``ideal`` device (S): infinite on/off ratio, exact programming.
IDEAL_GMAX_S = 40e-6


def ideal_device() -> DeviceModel:
    """Exact programming on a continuous [0, 40 uS] range, no read noise."""
    return DeviceModel(name="ideal", gmin_S=0.0, gmax_S=IDEAL_GMAX_S, times_s=(0.0,), sigma_poly_uS=((0.0,),),
                       technology="ideal", citation="")


@functools.lru_cache(maxsize=32)
def _load_device_cached(name: str, mtime: float) -> DeviceModel:
    return load_device(name)


def load_device_cached(name_or_path: str) -> DeviceModel:
    """:func:`load_device`, or ``"ideal"``; a file is read again only when its modification time changes."""
    if name_or_path == "ideal":
        return ideal_device()
    p = Path(name_or_path)
    return _load_device_cached(name_or_path, p.stat().st_mtime if p.exists() else 0.0)


def preset_names() -> list[str]:
    """Names of the device models shipped in ``device_models/``."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_device(name_or_path: str | os.PathLike) -> DeviceModel:
    """Load a device model from a JSON path, or a preset by name (``"neurram"``, ``"rram1"``...)."""
    p = Path(name_or_path)
    if p.suffix == ".json" or p.exists():
        return DeviceModel.load(p)
    cand = PRESET_DIR / f"{str(name_or_path).lower()}.json"
    if cand.exists():
        return DeviceModel.load(cand)
    raise DeviceModelError(f"unknown device model {name_or_path!r}: not a file, and presets are {preset_names()}")


# ---------------------------------------------------------------------- helpers
def _is_num(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _is_nums(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and all(_is_num(x) for x in v)


_KINDS: dict[str, tuple[str, Any]] = {
    "str": ("a string", lambda v: isinstance(v, str)),
    "num": ("a finite number", _is_num),
    "int": ("an integer >= 0", lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0),
    "nums": ("a list of finite numbers", _is_nums),
    "poly": ("a polynomial: a non-empty list of finite numbers", lambda v: _is_nums(v) and len(v) > 0),
    "polys": ("a list of polynomials (non-empty lists of finite numbers)",
              lambda v: isinstance(v, (list, tuple)) and all(_is_nums(p) and len(p) > 0 for p in v)),
    "obj": ("a JSON object", lambda v: isinstance(v, Mapping)),
    "list": ("a list", lambda v: isinstance(v, (list, tuple))),
}
_REQUIRED = object()


def _show(v: Any) -> str:
    """A JSON value in a few words, for messages."""
    if v is None or isinstance(v, bool):
        return json.dumps(v)
    if isinstance(v, str):
        return f"the string {v[:40]!r}"
    if isinstance(v, (list, tuple)):
        return f"a list of {len(v)}"
    if isinstance(v, Mapping):
        return "a JSON object"
    return repr(v)


class _Fields:
    """Typed access to the fields of one JSON object of a device model file (messages name the file
    ``source`` and the field's path, e.g. ``level_fits[3].sigma_S``)."""

    def __init__(self, d: Any, source: str, key: str = "", known: set[str] | None = None):
        self.where = f"{source}: " if source else ""
        self.prefix = f"{key}." if key else ""
        if not isinstance(d, Mapping):
            raise DeviceModelError(f"{self.where}field {key!r} must be a JSON object, got {_show(d)}")
        if known is not None:
            extra = sorted(set(d) - known)
            if extra:
                raise DeviceModelError(f"{self.where}unknown field {self.prefix + extra[0]!r} "
                                       f"(known: {', '.join(sorted(known))})")
        self.d = d

    def get(self, key: str, kind: str, default: Any = _REQUIRED) -> Any:
        """``d[key]`` checked to be of ``kind`` (a key of :data:`_KINDS`, ``?`` allows null)."""
        name = self.prefix + key
        if key not in self.d:
            if default is _REQUIRED:
                raise DeviceModelError(f"{self.where}device model is missing the field {name!r}")
            return default
        v = self.d[key]
        nullable = kind.endswith("?")
        what, ok = _KINDS[kind.rstrip("?")]
        if not ((nullable and v is None) or ok(v)):
            raise DeviceModelError(f"{self.where}field {name!r} must be {what}{' or null' if nullable else ''}, "
                                   f"got {_show(v)}")
        return v


def _json_float(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _jsonable(o: Any) -> Any:
    if isinstance(o, Mapping):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, float):
        return _json_float(o)
    return o


def neft_stylized(name: str, s: float, gmin_S: float = 0.0, gmax_S: float = 40e-6) -> DeviceModel:
    """One of the NeFT paper's stylized 2-bit devices (RRAM1 s=1, FeFET2 s=2, RRAM4 s=4, FeFET6 s=6).

    Per level k of a 2-bit cell the programming spread is
    ``sigma_k = (gmax - gmin) * m_k / sqrt(0.4 s^2 + 0.6)`` at ``sigma_scale = 1`` (= the paper's
    sigma_d), with ``m = (1, s, s, 1)``: the two middle levels are ``s`` times more variable and
    the normalisation keeps the mean variance equal across models. With four 2-bit slices this is
    exactly the authors' weight noise ``0.77763 * max|W| * sigma_d / sqrt(0.4 s^2 + 0.6)``
    (Qin et al., arXiv 2305.14561; ``../shared/reference/README.md`` s.1). Symmetric Gaussian, no
    conductance floor, no time dependence; ``sigma_scale`` is the paper's sigma_d (default 0.1).
    """
    levels = tuple(np.linspace(gmin_S, gmax_S, 4))
    norm = math.sqrt(0.4 * s * s + 0.6)
    mult = (1.0, s, s, 1.0)
    fits = tuple(
        LevelFit(level=k, t_s=0.0, target_S=levels[k], n=0, mean_shift_S=0.0,
                 sigma_S=(gmax_S - gmin_S) * m / norm, robust_sigma_S=(gmax_S - gmin_S) * m / norm)
        for k, m in enumerate(mult)
    )
    # The smooth model (for targets between levels) uses the outer-level spread.
    return DeviceModel(
        name=name,
        technology="stylized (NeFT paper)",
        citation="Qin et al., 'Negative Feedback Training', arXiv 2305.14561 (IEEE TCAD 2025); "
        "authors' code github.com/YifanQin-ND/NeFT_CIM",
        gmin_S=gmin_S,
        gmax_S=gmax_S,
        levels_S=levels,
        times_s=(0.0,),
        sigma_poly_uS=(((gmax_S - gmin_S) / _UNIT_S / norm,),),
        level_fits=fits,
        sigma_scale=0.1,
        g_floor_S=None,
        provenance={"preset": True, "s": s, "sigma_scale_meaning": "the paper's sigma_d"},
    )

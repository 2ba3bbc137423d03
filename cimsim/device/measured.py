"""Readers of measured device data, with column and unit checks.

Two table formats are read (CSV in UTF-8, a byte-order mark allowed, optionally gzip-compressed,
optionally preceded by ``# key: value`` comment lines that carry metadata such as ``source`` or
``technology``; duplicate column names are refused):

* **tidy per-cell** (the format of ``../shared/measured/rram_tech*_cells.csv``): one row per
  (cell, read) with the level, its target conductance, optionally the write-verify window
  ``[lo, hi)``, the nominal read time (seconds) and the measured conductance;
* **per-level summary** (``data/measured/rram.csv``, written by :func:`summarize`): one row per
  (level, nominal read time) with the cell count, target, window, mean, standard deviation and
  the quantiles :data:`QUANTILES` of the measured conductance, all in microsiemens.

:func:`read_measured` tells them apart from the columns. Internally every conductance is in
microsiemens (the unit of the files; ``--units S`` converts siemens columns on reading), every time
in seconds. Any problem raises :class:`MeasuredDataError` with a one-line message that names the
file and the line (1-based line of the file, the header line included, so the first data row of a
file without comment lines is line 2) or the column at fault.

Also here: :func:`read_read_noise` for the read-noise time series of
``../shared/measured/rram_techA_readnoise.tsv.gz`` (one line per cell: level, 0, samples in S).

Data source of the shipped files: Akash Levy, ``akashlevy/RRAM-Relaxation-Master-Model``
(commit ca0cfff6, MIT license); see ``../shared/measured/README.md``.
"""
from __future__ import annotations

import csv
import difflib
import gzip
import io
import math
import numbers
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

#: Probabilities of the quantile columns of the summary format (``q01_uS`` ... ``q99_uS``).
QUANTILES: tuple[float, ...] = (0.01, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99)
#: Column names of the quantiles in the summary format, in the order of :data:`QUANTILES`.
QUANTILE_COLUMNS: tuple[str, ...] = tuple(f"q{round(100 * p):02d}_uS" for p in QUANTILES)
#: Columns every summary file has (conductances in uS, time in s).
SUMMARY_COLUMNS: tuple[str, ...] = (
    "level", "t_nominal_s", "n", "g_target_uS", "g_lo_uS", "g_hi_uS", "mean_uS", "std_uS",
) + QUANTILE_COLUMNS
#: Optional summary columns: cells of the group read outside their window (beyond
#: :data:`WINDOW_TOL_FRAC`) and within one window width of gmin / gmax (see :func:`miss_near_edges`).
SUMMARY_OPTIONAL: tuple[str, ...] = ("n_miss_near_gmin", "n_miss_near_gmax")
#: Columns only the summary format has; any of them (without the tidy conductance column) marks a summary.
SUMMARY_ONLY: tuple[str, ...] = ("mean_uS", "std_uS") + QUANTILE_COLUMNS
#: Relative tolerance (fraction of a window's width) for "inside the write-verify window": the
#: files round conductances to 1e-4 uS, and a handful of tech C cells read exactly at the upper
#: edge ``hi`` of the half-open window right after write-verify.
WINDOW_TOL_FRAC = 0.01
#: Unit names accepted for conductance columns and their factor to microsiemens.
UNIT_TO_US = {"uS": 1.0, "S": 1e6}


class MeasuredDataError(ValueError):
    """Bad measured data; the message is one line naming the file and the line or column."""


@dataclass(frozen=True)
class TidyColumns:
    """Column names of the tidy per-cell format (``lo``/``hi`` may be absent when ``None``)."""

    level: str = "level"
    target: str = "g_target_uS"
    time: str = "t_nominal_s"
    g: str = "g_uS"
    lo: str | None = "g_lo_uS"
    hi: str | None = "g_hi_uS"

    def required(self) -> dict[str, str]:
        """Role -> column name of the columns that must be present."""
        return {"level": self.level, "target": self.target, "time": self.time, "g": self.g}

    def check(self) -> None:
        """Refuse an empty name, or one column named for two roles (``--col-g g_target_uS``)."""
        roles = {**self.required(), "lo": self.lo, "hi": self.hi}
        seen: dict[str, str] = {}
        for role, name in roles.items():
            if name is None:
                continue
            if not name.strip():
                raise MeasuredDataError(f"--col-{role}: empty column name")
            if name in seen:
                raise MeasuredDataError(f"--col-{seen[name]} and --col-{role} both name the column {name!r}")
            seen[name] = role


@dataclass
class LevelGroups:
    """What both formats share: the levels, their windows and the read times.

    ``levels``: the level labels of the file, shape (L,), increasing; ``target_uS``, ``lo_uS``,
    ``hi_uS``: per level, shape (L,), microsiemens (``windows_measured`` False when the file had
    no window columns and the windows are midpoints between targets); ``times_s``: nominal read
    times, shape (T,), seconds, increasing.
    """

    path: Path
    levels: np.ndarray
    target_uS: np.ndarray
    lo_uS: np.ndarray
    hi_uS: np.ndarray
    times_s: np.ndarray
    windows_measured: bool
    meta: dict[str, str] = field(default_factory=dict)
    header_line: int = 1

    @property
    def gmin_uS(self) -> float:
        """Lower edge of the lowest window (uS): the bottom of the programmable range."""
        return float(self.lo_uS[0])

    @property
    def gmax_uS(self) -> float:
        """Upper edge of the highest window (uS): the top of the programmable range."""
        return float(self.hi_uS[-1])


@dataclass
class CellTable(LevelGroups):
    """Tidy per-cell data. ``g_uS``: dict ``(time index, level index) -> samples (uS), shape (n,)``;
    ``first_line``: the same keys -> file line of the group's first row (for messages)."""

    g_uS: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    first_line: dict[tuple[int, int], int] = field(default_factory=dict)
    units: str = "uS"
    kind: str = "tidy"


@dataclass
class SummaryTable(LevelGroups):
    """Per-level summary. ``rows``: dict ``(time index, level index) -> row`` (a mapping with the
    :data:`SUMMARY_COLUMNS`), ``first_line`` as in :class:`CellTable`."""

    rows: dict[tuple[int, int], Mapping[str, float]] = field(default_factory=dict)
    first_line: dict[tuple[int, int], int] = field(default_factory=dict)
    kind: str = "summary"


@dataclass(frozen=True)
class ReadNoiseSeries:
    """One read-noise time series: ``level`` label, samples ``g_S`` (siemens, shape (n,)), ``line``."""

    level: float
    g_S: np.ndarray
    line: int


# ----------------------------------------------------------------------------- files
def _read_text(path: Path) -> str:
    """The text of a data file: gzip-compressed or not (told from its first bytes), UTF-8 with or
    without a byte-order mark."""
    if not path.exists():
        raise MeasuredDataError(f"{path}: no such file")
    if path.is_dir():
        raise MeasuredDataError(f"{path}: is a directory, not a data file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise MeasuredDataError(f"{path}: cannot read the file ({e.strerror or e})") from None
    gz = raw[:2] == b"\x1f\x8b"
    if gz:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise MeasuredDataError(f"{path}: corrupt or truncated gzip data ({e})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        what = "decompressed file" if gz else "file"
        raise MeasuredDataError(f"{path}: not UTF-8 text (byte {e.start} of the {what})") from None


def _comment_header(text: str) -> tuple[int, dict[str, str]]:
    """Count the leading ``#`` lines of a text and parse their ``key: value`` pairs."""
    meta: dict[str, str] = {}
    n = 0
    for line in io.StringIO(text, newline=""):
        if not line.startswith("#"):
            break
        n += 1
        key, sep, value = line[1:].partition(":")
        if sep:
            meta[key.strip()] = value.strip()
    return n, meta


def _header_names(path: Path, text: str, n_comment: int) -> list[str]:
    """Column names of the header line (the first line after the comments), refusing duplicates."""
    lines = io.StringIO(text, newline="")
    for _ in range(n_comment):
        next(lines)
    first = next(lines, "")
    names = [c.strip() for c in next(csv.reader([first]), [])]
    seen: dict[str, int] = {}
    for j, name in enumerate(names):
        if not name:  # unnamed (trailing commas of a spreadsheet export): pandas names them apart
            continue
        if name in seen:
            raise MeasuredDataError(f"{path}: line {n_comment + 1} (header): column {name!r} appears twice "
                                    f"(columns {seen[name] + 1} and {j + 1}); rename or drop one")
        seen[name] = j
    return names


def _read_csv_strings(path: Path) -> tuple[pd.DataFrame, int, dict[str, str]]:
    """Read a CSV as strings; returns the frame, the file line of its first data row, and metadata."""
    text = _read_text(path)
    n_comment, meta = _comment_header(text)
    _header_names(path, text, n_comment)
    try:
        df = pd.read_csv(io.StringIO(text), skiprows=n_comment, dtype=str, keep_default_na=False,
                         skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise MeasuredDataError(f"{path}: the file is empty (no header line)") from None
    except pd.errors.ParserError as e:
        msg = " ".join(str(e).split()).replace("Error tokenizing data. C error: ", "")
        raise MeasuredDataError(f"{path}: malformed CSV: {msg} (1-based file line; header on line {n_comment + 1})") from None
    df.columns = [str(c).strip() for c in df.columns]
    if len(df) == 0:
        raise MeasuredDataError(f"{path}: no data rows after the header (line {n_comment + 1})")
    return df, n_comment + 2, meta


def _missing_column(path: Path, name: str, columns: Sequence[str], hint: str = "") -> MeasuredDataError:
    same_case = [c for c in columns if c.lower() == name.lower()]
    close = same_case or difflib.get_close_matches(name, list(columns), n=1, cutoff=0.75)
    did = f"; did you mean {close[0]!r}?" if close else ""
    return MeasuredDataError(f"{path}: missing column {name!r} (the header has {', '.join(map(repr, columns))}){did}{hint}")


def line_ref(line: int, line0: int) -> str:
    """``"line 7 (header on line 1)"``: a 1-based line of the file, and where its header is."""
    return f"line {line} (header on line {line0 - 1})"


def _numeric(path: Path, df: pd.DataFrame, col: str, line0: int) -> np.ndarray:
    """Column ``col`` as float64; the first empty, NaN or non-numeric cell raises with its line."""
    raw = df[col].str.strip()
    vals = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(vals)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        s = raw.iloc[i]
        what = "is empty" if s == "" else ("is NaN" if s.lower() in ("nan", "na", "n/a", "null") else
                                            "is infinite" if s.lower().lstrip("+-") in ("inf", "infinity") else
                                            f"has {s!r}, not a number")
        raise MeasuredDataError(f"{path}: {line_ref(line0 + i, line0)}: column {col!r} {what}")
    return vals


def _check(path: Path, ok: np.ndarray, line0: int, message: str | Callable[[int], str]) -> None:
    """Raise naming the first line where ``ok`` is False; ``message`` may be a function of the row index."""
    bad = np.flatnonzero(~ok)
    if bad.size:
        i = int(bad[0])
        text = message(i) if callable(message) else message
        raise MeasuredDataError(f"{path}: {line_ref(line0 + i, line0)}: {text}")


def _check_integer(path: Path, col: str, v: np.ndarray, line0: int, lo: int = 0) -> None:
    _check(path, (v == np.round(v)) & (v >= lo), line0, f"column {col!r} must hold integers >= {lo}")


def _check_units(path: Path, col: str, v_in_file: np.ndarray, units: str) -> None:
    """Refuse conductances whose magnitude contradicts the declared unit (siemens vs microsiemens).

    RRAM/PCM/FeFET conductances lie between ~0.01 uS and ~1 mS: a uS column whose values are all
    below 1e-3 holds siemens, an S column with values above 1e-2 (10 mS) holds microsiemens.
    """
    top = float(np.max(np.abs(v_in_file))) if v_in_file.size else 0.0
    if units == "uS" and 0 < top < 1e-3:
        raise MeasuredDataError(f"{path}: column {col!r}: all values are below 1e-3, they look like siemens; pass --units S")
    if units == "S" and top > 1e-2:
        raise MeasuredDataError(f"{path}: column {col!r}: values up to {top:g} look like microsiemens, not siemens; pass --units uS")


def units_from_name(col: str) -> str | None:
    """``"uS"`` or ``"S"`` from a column-name suffix (``g_uS``, ``g_S``), else ``None``."""
    if col.endswith("_uS") or col.endswith("_us"):
        return "uS"
    if col.endswith("_S"):
        return "S"
    return None


# ------------------------------------------------------------------- level structure
def _level_table(path: Path, level: np.ndarray, per_row: dict[str, np.ndarray], cols: Mapping[str, str],
                 line0: int) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Per-level constants (target, window) checked to agree on every row of the level.

    Returns the sorted level labels (L,), a dict of per-level values (L,) and the level index of
    every row.
    """
    levels, inv = np.unique(level, return_inverse=True)
    out: dict[str, np.ndarray] = {}
    for key, v in per_row.items():
        first = np.full(levels.size, np.nan)
        order = np.arange(v.size)[::-1]
        first[inv[order]] = v[order]  # the first row of each level wins
        _check(path, v == first[inv], line0,
               f"column {cols[key]!r} differs from the value on the first row of the same level")
        out[key] = first
    return levels, out, inv


def _windows(path: Path, target: np.ndarray, lo: np.ndarray | None, hi: np.ndarray | None,
             cols: Mapping[str, str]) -> tuple[np.ndarray, np.ndarray, bool]:
    """Check per-level targets/windows (uS); infer windows as target midpoints when absent."""
    if target.size < 2:
        raise MeasuredDataError(f"{path}: column {cols['target']!r}: need at least 2 levels, found {target.size}")
    if np.any(np.diff(target) <= 0):
        raise MeasuredDataError(f"{path}: column {cols['target']!r}: targets must increase with the level number")
    if lo is None or hi is None:
        mid = 0.5 * (target[1:] + target[:-1])
        lo = np.concatenate([[max(0.0, target[0] - (mid[0] - target[0]))], mid])
        hi = np.concatenate([mid, [target[-1] + (target[-1] - mid[-1])]])
        return lo, hi, False
    if np.any(hi <= lo):
        raise MeasuredDataError(f"{path}: columns {cols['lo']!r}/{cols['hi']!r}: every window needs lo < hi")
    if np.any((target < lo) | (target > hi)):
        raise MeasuredDataError(f"{path}: column {cols['target']!r}: a target lies outside its window [lo, hi]")
    if np.any(lo[1:] < hi[:-1] - 1e-9 * hi[-1]):
        raise MeasuredDataError(f"{path}: columns {cols['lo']!r}/{cols['hi']!r}: windows of neighbouring levels overlap")
    return lo, hi, True


# ----------------------------------------------------------------------- tidy format
def check_neg_tol(neg_tol_frac: float) -> None:
    """The tolerated read offset (fraction of gmax, option ``--neg-tol``) must be finite and >= 0."""
    if not (isinstance(neg_tol_frac, numbers.Real) and math.isfinite(neg_tol_frac) and neg_tol_frac >= 0):
        raise MeasuredDataError(f"--neg-tol must be a finite number >= 0 (a fraction of gmax), got {neg_tol_frac!r}")


def _check_negative(path: Path, col: str, v_uS: np.ndarray, gmax_uS: float, neg_tol_frac: float, line0: int,
                    shown: np.ndarray | None = None, units: str = "uS") -> None:
    """Refuse conductances below ``-neg_tol_frac * gmax`` (a small negative read is the read offset)."""
    shown = v_uS if shown is None else shown
    _check(path, v_uS >= -neg_tol_frac * gmax_uS, line0,
           lambda i: f"column {col!r}: negative conductance {shown[i]:g} {units} "
                     f"(below -{neg_tol_frac:g} * gmax, the read offset tolerated)")


def read_tidy(path: str | os.PathLike, columns: TidyColumns = TidyColumns(), units: str = "auto",
              neg_tol_frac: float = 0.01) -> CellTable:
    """Read tidy per-cell data; conductances come back in microsiemens.

    ``units``: ``"uS"``, ``"S"`` or ``"auto"`` (from the conductance column's name suffix).
    Conductance reads below ``-neg_tol_frac * gmax`` are refused as negative conductances; reads
    slightly below zero are kept as measured (the read circuit's offset: tech C has one read of
    -0.12 uS with gmax 40 uS). Targets and windows must be >= 0.
    """
    path = Path(path)
    check_neg_tol(neg_tol_frac)
    columns.check()
    df, line0, meta = _read_csv_strings(path)
    req = columns.required()
    for role, name in req.items():
        if name not in df.columns:
            raise _missing_column(path, name, df.columns, f" (name it with --col-{role})")
    has_window = columns.lo is not None and columns.hi is not None and columns.lo in df.columns and columns.hi in df.columns
    if columns.lo is not None and columns.lo != TidyColumns.lo and columns.lo not in df.columns:
        raise _missing_column(path, columns.lo, df.columns, " (given with --col-lo)")
    if columns.hi is not None and columns.hi != TidyColumns.hi and columns.hi not in df.columns:
        raise _missing_column(path, columns.hi, df.columns, " (given with --col-hi)")
    if units == "auto":
        units = units_from_name(columns.g) or ""
        if not units:
            raise MeasuredDataError(f"{path}: column {columns.g!r}: cannot tell the unit from its name; pass --units uS or --units S")
    if units not in UNIT_TO_US:
        raise MeasuredDataError(f"{path}: unknown unit {units!r} (choose uS or S)")
    f = UNIT_TO_US[units]

    level = _numeric(path, df, columns.level, line0)
    _check_integer(path, columns.level, level, line0)
    t = _numeric(path, df, columns.time, line0)
    _check(path, t >= 0, line0, f"column {columns.time!r}: read time must be >= 0 s")
    g_file = _numeric(path, df, columns.g, line0)
    target_file = _numeric(path, df, columns.target, line0)
    _check_units(path, columns.g, g_file, units)
    _check_units(path, columns.target, target_file, units)
    per_row = {"target": target_file * f}
    cols = {"target": columns.target, "lo": columns.lo or "", "hi": columns.hi or ""}
    if has_window:
        per_row["lo"] = _numeric(path, df, columns.lo, line0) * f
        per_row["hi"] = _numeric(path, df, columns.hi, line0) * f
    for key, v in per_row.items():
        _check(path, v >= 0, line0, f"column {cols[key]!r} must be >= 0")
    levels, per_level, lix = _level_table(path, level, per_row, cols, line0)
    lo, hi, measured = _windows(path, per_level["target"], per_level.get("lo"), per_level.get("hi"), cols)
    g = g_file * f
    _check_negative(path, columns.g, g, hi[-1], neg_tol_frac, line0, shown=g_file, units=units)
    times, tix = np.unique(t, return_inverse=True)
    key = tix * levels.size + lix
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    groups, first_line = {}, {}
    for idx in np.split(order, bounds):
        k = (int(tix[idx[0]]), int(lix[idx[0]]))
        groups[k] = g[idx]
        first_line[k] = line0 + int(idx[0])
    return CellTable(path=path, levels=levels.astype(np.int64), target_uS=per_level["target"], lo_uS=lo, hi_uS=hi,
                     times_s=times, windows_measured=measured, meta=meta, header_line=line0 - 1, g_uS=groups,
                     first_line=first_line, units=units)


# -------------------------------------------------------------------- summary format
def read_summary(path: str | os.PathLike, neg_tol_frac: float = 0.01) -> SummaryTable:
    """Read the per-level summary format (see :data:`SUMMARY_COLUMNS`; conductances in uS).

    A mean or quantile below ``-neg_tol_frac * gmax`` is refused as a negative conductance, as
    in :func:`read_tidy`.
    """
    path = Path(path)
    check_neg_tol(neg_tol_frac)
    df, line0, meta = _read_csv_strings(path)
    for name in SUMMARY_COLUMNS:
        if name not in df.columns:
            have = [c for c in SUMMARY_ONLY if c in df.columns]
            why = f": the file has {have[0]!r}" if have else ""
            raise _missing_column(path, name, df.columns,
                                  f" (summary format{why}; pass --format tidy for per-cell reads)")
    vals = {c: _numeric(path, df, c, line0) for c in SUMMARY_COLUMNS + tuple(c for c in SUMMARY_OPTIONAL if c in df.columns)}
    _check_integer(path, "level", vals["level"], line0)
    _check_integer(path, "n", vals["n"], line0, lo=2)
    for c in ("n_miss_near_gmin", "n_miss_near_gmax"):
        if c in vals:
            _check_integer(path, c, vals[c], line0)
            _check(path, vals[c] <= vals["n"], line0, f"column {c!r} exceeds n")
    _check(path, vals["t_nominal_s"] >= 0, line0, "column 't_nominal_s': read time must be >= 0 s")
    for c in ("g_target_uS", "g_lo_uS", "g_hi_uS"):
        _check(path, vals[c] >= 0, line0, f"column {c!r} must be >= 0")
        _check_units(path, c, vals[c], "uS")
    _check(path, vals["std_uS"] >= 0, line0, "column 'std_uS' must be >= 0")
    q = np.stack([vals[c] for c in QUANTILE_COLUMNS], axis=1)
    _check(path, np.all(np.diff(q, axis=1) >= 0, axis=1), line0, "quantile columns q01_uS..q99_uS must not decrease")
    _check(path, (vals["mean_uS"] >= q[:, 0] - 1e-9 * np.abs(q).max()) | (vals["n"] < 100), line0,
           "column 'mean_uS' lies below the 1 % quantile")
    cols = {"target": "g_target_uS", "lo": "g_lo_uS", "hi": "g_hi_uS"}
    per_row = {"target": vals["g_target_uS"], "lo": vals["g_lo_uS"], "hi": vals["g_hi_uS"]}
    levels, per_level, lix = _level_table(path, vals["level"], per_row, cols, line0)
    lo, hi, _ = _windows(path, per_level["target"], per_level["lo"], per_level["hi"], cols)
    for c in ("mean_uS",) + QUANTILE_COLUMNS:
        _check_negative(path, c, vals[c], hi[-1], neg_tol_frac, line0)
    times, tix = np.unique(vals["t_nominal_s"], return_inverse=True)
    rows, first_line = {}, {}
    for i in range(len(df)):
        k = (int(tix[i]), int(lix[i]))
        if k in rows:
            raise MeasuredDataError(f"{path}: {line_ref(line0 + i, line0)}: level {int(levels[k[1]])} at t = {times[k[0]]:g} s "
                                    f"appears twice (first on line {first_line[k]})")
        rows[k] = {c: float(v[i]) for c, v in vals.items()}
        first_line[k] = line0 + i
    return SummaryTable(path=path, levels=levels.astype(np.int64), target_uS=per_level["target"], lo_uS=lo, hi_uS=hi,
                        times_s=times, windows_measured=True, meta=meta, header_line=line0 - 1, rows=rows,
                        first_line=first_line)


def detect_format(path: str | os.PathLike, columns: TidyColumns = TidyColumns()) -> str:
    """``"summary"`` when the header has a summary-only column (:data:`SUMMARY_ONLY`, e.g.
    ``mean_uS``) and not the tidy conductance column ``columns.g``, or has them all; else ``"tidy"``.

    A summary file missing one of its columns is still told a summary (and the summary reader
    names the missing column).
    """
    path = Path(path)
    text = _read_text(path)
    n_comment, _ = _comment_header(text)
    header = set(_header_names(path, text, n_comment))
    summary = [c for c in SUMMARY_ONLY if c in header]
    if summary and (columns.g not in header or len(summary) == len(SUMMARY_ONLY)):
        return "summary"
    return "tidy"


def read_measured(path: str | os.PathLike, fmt: str = "auto", columns: TidyColumns = TidyColumns(),
                  units: str = "auto", neg_tol_frac: float = 0.01) -> CellTable | SummaryTable:
    """Read either format; ``fmt`` is ``"auto"`` (from the columns), ``"tidy"`` or ``"summary"``."""
    if fmt not in ("auto", "tidy", "summary"):
        raise MeasuredDataError(f"unknown format {fmt!r} (choose auto, tidy or summary)")
    check_neg_tol(neg_tol_frac)
    if fmt == "auto":
        fmt = detect_format(path, columns)
    if fmt == "summary":
        if units == "S" or columns != TidyColumns():
            opt = "--units S" if units == "S" else "--col-*"
            raise MeasuredDataError(f"{path}: {opt} applies to tidy per-cell data only; this is a per-level summary "
                                    "(fixed column names, conductances in uS)")
        return read_summary(path, neg_tol_frac)
    return read_tidy(path, columns, units, neg_tol_frac)


# ------------------------------------------------------------------------- summaries
def miss_near_edges(g_uS: np.ndarray, lo_uS: float, hi_uS: float, gmin_uS: float, gmax_uS: float,
                    width_uS: float) -> tuple[int, int]:
    """Cells read outside their window and at/near an end of the range: (near gmin, near gmax).

    "Outside" means below ``lo - tol`` or at/above ``hi + tol`` with ``tol = WINDOW_TOL_FRAC *
    (hi - lo)`` (the window is half-open, [lo, hi)). "Near gmin": below ``gmin + width``; "near
    gmax": at or above ``gmax - width``; ``width`` is one window width. Right after write-verify
    such cells are the ones the algorithm could not move into their window: stuck at gmin / gmax.
    """
    tol = WINDOW_TOL_FRAC * (hi_uS - lo_uS)
    out = (g_uS < lo_uS - tol) | (g_uS >= hi_uS + tol)
    return int(np.sum(out & (g_uS < gmin_uS + width_uS))), int(np.sum(out & (g_uS >= gmax_uS - width_uS)))


def summarize(cells: CellTable) -> pd.DataFrame:
    """Per-level summary of tidy data: one row per (level, nominal time), columns as the summary format.

    ``std_uS`` is the sample standard deviation (ddof = 1); quantiles use numpy's default (linear
    interpolation, Hyndman-Fan type 7).
    """
    width = float(np.min(cells.hi_uS - cells.lo_uS))
    recs = []
    for li, lev in enumerate(cells.levels):
        for ti, t in enumerate(cells.times_s):
            g = cells.g_uS.get((ti, li))
            if g is None:
                continue
            rec = {"level": int(lev), "t_nominal_s": float(t), "n": int(g.size),
                   "g_target_uS": cells.target_uS[li], "g_lo_uS": cells.lo_uS[li], "g_hi_uS": cells.hi_uS[li],
                   "mean_uS": float(np.mean(g)), "std_uS": float(np.std(g, ddof=1)) if g.size > 1 else 0.0}
            rec.update(zip(QUANTILE_COLUMNS, np.quantile(g, QUANTILES)))
            if cells.windows_measured:
                lo_n, hi_n = miss_near_edges(g, cells.lo_uS[li], cells.hi_uS[li], cells.gmin_uS, cells.gmax_uS, width)
                rec["n_miss_near_gmin"], rec["n_miss_near_gmax"] = lo_n, hi_n
            recs.append(rec)
    return pd.DataFrame.from_records(recs)


def summary_to_csv(summary: pd.DataFrame, meta: Mapping[str, str] | None = None) -> str:
    """CSV text of a summary, preceded by ``# key: value`` metadata lines; 6 significant digits
    after the decimal point in uS (finer than the 1e-4 uS rounding of the source files)."""
    lines = [f"# {k}: {v}" for k, v in (meta or {}).items()]
    body = summary.to_csv(index=False, float_format="%.6f", lineterminator="\n")
    return "\n".join(lines + [body.rstrip("\n")]) + "\n"


# -------------------------------------------------------------------------- read noise
def read_read_noise(path: str | os.PathLike, min_samples: int = 100) -> list[ReadNoiseSeries]:
    """Read-noise time series: tab-separated lines ``level, 0, g_1 ... g_n`` with samples in siemens.

    Format of ``../shared/measured/rram_techA_readnoise.tsv.gz`` (400 Hz reads of one cell per
    line). Every sample must be a finite, positive number below 10 mS (siemens, not uS).
    """
    path = Path(path)
    out = []
    for lineno, line in enumerate(io.StringIO(_read_text(path), newline=""), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        where = f"{path}: line {lineno} (1-based, no header)"
        fields = line.rstrip("\r\n").split("\t")
        try:
            vals = np.array(fields, dtype=np.float64)
        except ValueError:
            bad = next(j for j, s in enumerate(fields) if not _is_float(s))
            raise MeasuredDataError(f"{where}: field {bad + 1} has {fields[bad][:20]!r}, not a number") from None
        if vals.size < 2 + min_samples:
            raise MeasuredDataError(f"{where}: {vals.size - 2} samples, need at least {min_samples}")
        if not math.isfinite(vals[0]):
            raise MeasuredDataError(f"{where}: field 1 (the level) must be a finite number")
        g = vals[2:]
        bad = np.flatnonzero(~(np.isfinite(g) & (g > 0)))
        if bad.size:
            raise MeasuredDataError(f"{where}: field {int(bad[0]) + 3}: conductance must be finite and > 0")
        if g.max() > 1e-2:
            raise MeasuredDataError(f"{where}: samples up to {g.max():g} look like microsiemens; the format is siemens")
        out.append(ReadNoiseSeries(level=float(vals[0]), g_S=g, line=lineno))
    if not out:
        raise MeasuredDataError(f"{path}: the file is empty (no time series)")
    return out


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


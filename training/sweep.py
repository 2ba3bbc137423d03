"""Grids of runs -> one results CSV and plots: ``python -m training.sweep``.

Example::

    python -m training.sweep --model lenet --dataset fashion-mnist --methods plain,nit,ovf,irs \\
        --sigmas 0:0.4:0.05 --seeds 3 --noise paper --epochs 5 --out results/lenet_fm --workers 2

Cells are (method, sigma, seed): seeds ``0 .. seeds-1`` (or ``--seeds 0,4,7``), sigmas
``start:stop:step`` (stop included) or a comma list. Each cell is one :func:`training.train.run`
into ``<out>/runs/<method>_sigma<sigma>_seed<seed>``, run by a :mod:`training.engines` engine
(``--engine local``, the default, with ``--workers`` processes, or ``--engine ray``).

Writes in ``--out``: ``results.csv`` (the ledger: one row per cell, appended by the driver only,
validated when read; a rerun skips cells with a valid row), ``summary.csv``, ``accuracy.png``,
``ekl.png`` and ``sweep_config.json``; it holds the lock ``<out>/.lock`` while it runs.
Exit status: 0 every cell ``ok`` or ``diverged``; 1 some ``failed``; 2 bad options, a bad ``--out``
or a file it cannot read or write (one line on stderr); 130 on Ctrl-C (rerun resumes).
``CIMSIM_TEST_FAULTS`` injects faults for tests; never set it in real runs.

Ledger, resume, locks, faults and engines: docs/design.md, section 'Sweeps (training/sweep.py)'.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .threads import set_threads
from .run_config import ConfigError, RunConfig, referenced_files
from .cli import EXIT_USAGE
from cimsim.progress import Progress

from .engines import ENGINES, Engine, EngineError, InlineEngine, LocalEngine, Task, make_engine, one_line

ROW_FIELDS = [
    "method", "sigma", "seed", "status", "acc_mean", "acc_std", "acc_ci95_low", "acc_ci95_high", "acc_min",
    "acc_p05", "ekl", "confidence", "clean_test_acc", "best_val_acc_clean", "best_val_acc_noisy", "converged",
    "best_epoch", "chips", "eval_sigma", "train_time_s", "eval_time_s", "run_dir", "error",
]
FAULT_ENV = "CIMSIM_TEST_FAULTS"
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def parse_sigmas(text: str) -> list[float]:
    """``"0:0.4:0.05"`` (stop included) or ``"0.1,0.2"`` -> list of sigmas."""
    try:
        if ":" in text:
            a, b, c = (float(v) for v in text.split(":"))
            if c <= 0 or b < a:
                raise ValueError
            n = int(math.floor((b - a) / c + 1e-9)) + 1
            return [round(a + i * c, 10) for i in range(n)]
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"bad --sigmas {text!r}: use start:stop:step (e.g. 0:0.4:0.05) or a comma list") from None


def parse_seeds(text: str) -> list[int]:
    """``"3"`` -> [0, 1, 2]; ``"0,4,7"`` -> [0, 4, 7]."""
    try:
        if "," in text:
            return [int(v) for v in text.split(",") if v.strip()]
        n = int(text)
        if n < 1:
            raise ValueError
        return list(range(n))
    except ValueError:
        raise ConfigError(f"bad --seeds {text!r}: a count (3) or a comma list (0,4,7)") from None


def cell_name(method: str, sigma: float, seed: int) -> str:
    return f"{method}_sigma{sigma:.4f}_seed{seed}"


def row_from_result(method: str, sigma: float, seed: int, run_dir: Path) -> dict:
    """The CSV row of a finished run folder (from ``eval.json`` or ``diverged.json``)."""
    row = {k: "" for k in ROW_FIELDS}
    row.update(method=method, sigma=sigma, seed=seed, run_dir=str(run_dir))
    if (run_dir / "diverged.json").exists():
        row.update(status="diverged", converged=False)
        for k in ("acc_mean", "acc_std", "ekl", "confidence"):
            row[k] = float("nan")
        return row
    res = json.loads((run_dir / "eval.json").read_text())
    row["status"] = "ok"
    for k in ROW_FIELDS:
        if k in res and k not in ("method", "sigma", "seed"):
            row[k] = res[k]
    return row


def failed_row(method: str, sigma: float, seed: int, run_dir: Path | str, error: str) -> dict:
    """The CSV row of a cell that raised or whose worker died too often."""
    row = {k: "" for k in ROW_FIELDS}
    row.update(method=method, sigma=sigma, seed=seed, run_dir=str(run_dir), status="failed",
               error=" ".join(error.split()))
    return row


# ------------------------------------------------------------------------------ the cell
def parse_faults(text: str | None) -> dict[str, set[str]]:
    """``"crash_once=a,b;raise=c"`` -> ``{"crash_once": {"a", "b"}, "raise": {"c"}}`` (testing hook)."""
    faults: dict[str, set[str]] = {}
    for part in (text or "").split(";"):
        if "=" in part:
            kind, names = part.split("=", 1)
            faults.setdefault(kind.strip(), set()).update(n.strip() for n in names.split(",") if n.strip())
    return faults


def _inject_fault(faults: dict[str, set[str]], run_dir: Path) -> None:
    """Testing hook (see the module doc): crash this worker once, or raise, when the cell is named."""
    name = run_dir.name
    if name in faults.get("crash_once", ()):
        marker = run_dir.with_name(name + ".crashed-once")
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"{os.getpid()}\n")
            os._exit(70)
    if name in faults.get("raise", ()):
        raise RuntimeError(f"injected fault in cell {name} ({FAULT_ENV})")


def _checkpoints_load(work: Path) -> bool:
    """Whether every checkpoint in an unfinished run folder can be read (a killed worker may leave one cut short)."""
    import torch

    for f in sorted(work.glob("*.pt")):
        try:
            torch.load(f, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - any unreadable file means: do not resume from this folder
            return False
    return True


def run_cell(cfg_dict: dict, run_dir: str, threads: int, faults: dict | None = None) -> dict:
    """Train and evaluate one cell into ``run_dir``; returns its CSV row (never raises on cell errors).

    Idempotent: a finished folder is read back, an unfinished ``.partial`` one is resumed, so an
    engine may run it again after its worker died. An exception becomes a ``failed`` row.
    """
    from .runfolder import RunFolderError, RunLock
    from .train import Diverged, partial_dir, run

    cfg = RunConfig.from_dict(cfg_dict)
    rd = Path(run_dir)
    try:
        _inject_fault(faults or {}, rd)
        if rd.exists():
            return row_from_result(cfg.method, cfg.sigma, cfg.seed, rd)
        set_threads(threads)
        work = partial_dir(rd)
        if work.is_dir():
            try:  # a process still writing the folder (a worker of an earlier, killed sweep) keeps it
                with RunLock(work):
                    if not _checkpoints_load(work):  # killed while saving one: start the cell afresh
                        shutil.rmtree(work)
            except RunFolderError as e:
                raise RunFolderError(f"{e}; not touching it (rerun with --retry-failed once it has stopped)") from None
        try:
            run(cfg, rd, resume=work.exists(), quiet=True)
        except Diverged:
            pass
        return row_from_result(cfg.method, cfg.sigma, cfg.seed, rd)
    except Exception as e:  # noqa: BLE001 - a failing cell is recorded, the sweep goes on
        return failed_row(cfg.method, cfg.sigma, cfg.seed, rd, one_line(e))


# ---------------------------------------------------------------------------- the ledger
def _key(method: str, sigma: float, seed: int) -> tuple[str, float, int]:
    return (method, round(float(sigma), 8), int(seed))


class LedgerError(ConfigError):
    """A file that is not a ledger of the expected kind (one line naming it; the CLIs exit with code 2)."""


@dataclass(frozen=True)
class LedgerSchema:
    """What a valid row of a ledger CSV holds: its columns, each column's kind, the row key.

    Kinds: ``name`` (non-empty text), ``float``, ``int``, ``bool`` (True/False), ``status`` (one of
    ``statuses``), ``text`` (anything). Key and status fields must be non-empty; the others may be
    empty (a failed row has no numbers), except ``ok_fields``, which an ``ok`` row must have.
    """

    name: str
    fields: tuple[str, ...]
    kinds: dict = field(default_factory=dict)
    key: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ("ok", "failed")
    ok_fields: tuple[str, ...] = ()
    unit: str = "row"

    def kind(self, name: str) -> str:
        return self.kinds.get(name, "text")

    def check_row(self, row: dict) -> str | None:
        """Why ``row`` (column -> text) is not a valid row, or None when it is."""
        for f, v in row.items():
            kind = self.kind(f)
            if v == "" and (f in self.key or f == "status" or (f in self.ok_fields and row.get("status") == "ok")):
                return f"{f} is empty"
            if v == "" or kind == "text":
                continue
            if kind == "status" and v not in self.statuses:
                return f"{f} {v!r} is not one of {', '.join(self.statuses)}"
            if kind == "bool" and v not in ("True", "False", "true", "false", "1", "0"):
                return f"{f} {v!r} is not True/False"
            try:
                if kind == "float":
                    float(v)
                elif kind == "int":
                    int(v)
            except ValueError:
                return f"{f} {v!r} is not a{'n' if kind == 'int' else ''} {kind}"
        return None


_FLOATS = ("sigma", "acc_mean", "acc_std", "acc_ci95_low", "acc_ci95_high", "acc_min", "acc_p05", "ekl", "confidence",
           "clean_test_acc", "best_val_acc_clean", "best_val_acc_noisy", "eval_sigma", "train_time_s", "eval_time_s")
#: ``<out>/results.csv`` of a sweep: one row per cell
SWEEP_LEDGER = LedgerSchema(
    "sweep ledger", tuple(ROW_FIELDS),
    {"method": "name", "seed": "int", "status": "status", "converged": "bool", "best_epoch": "int", "chips": "int",
     **{f: "float" for f in _FLOATS}},
    key=("method", "sigma", "seed"), statuses=("ok", "diverged", "failed"), ok_fields=("acc_mean",), unit="cell")
#: ``<out>/<stage>/results.csv`` of an evaluate stage of :mod:`training.results`: one row per (run, variant)
EVAL_LEDGER = LedgerSchema(
    "evaluation ledger",
    ("method", "sigma", "seed", "variant", "status", "acc_mean", "acc_std", "acc_ci95_low", "acc_ci95_high", "acc_min",
     "acc_p05", "ekl", "confidence", "chips", "eval_time_s", "overrides", "run_dir", "error"),
    {"method": "name", "variant": "name", "run_dir": "name", "seed": "int", "status": "status", "chips": "int",
     **{f: "float" for f in _FLOATS}},
    key=("run_dir", "variant"), statuses=("ok", "failed"), ok_fields=("acc_mean",), unit="evaluation")


@dataclass
class LedgerScan:
    """A ledger file read line by line: its header, its valid rows and its damaged lines."""

    header: list[str] | None = None
    rows: list[tuple[int, dict, str]] = field(default_factory=list)      # (line, row, raw text)
    damaged: list[tuple[int, str, str]] = field(default_factory=list)    # (line, why, raw text)
    header_raw: str = ""
    ends_with_newline: bool = True

    @property
    def clean(self) -> bool:
        return not self.damaged and self.ends_with_newline


def _physical_lines(text: str) -> list[str]:
    return re.findall(r"[^\n]*\n|[^\n]+$", text)


def scan_ledger(path: Path, schema: LedgerSchema = SWEEP_LEDGER) -> LedgerScan:
    """Read and validate every row of ``path`` (missing file: empty); raises :class:`LedgerError`
    when the file is not a ledger of ``schema`` (a foreign header), never for damaged rows."""
    path = Path(path)
    scan = LedgerScan()
    if not path.exists():
        return scan
    if not path.is_file():
        raise LedgerError(f"{path}: is not a file (expected the {schema.name})")
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    if not text:
        return scan
    scan.ends_with_newline = text.endswith("\n")
    lines = _physical_lines(text)
    reader = csv.reader(iter(lines), strict=True)
    start = 0
    while True:
        try:
            rec, why = next(reader), None
        except StopIteration:
            break
        except csv.Error as e:
            rec, why = None, f"bad CSV quoting: {e}"
        end = reader.line_num
        raw, lineno, start = "".join(lines[start:end]), start + 1, end
        if scan.header is None:
            head = rec or []
            bad = (why is not None or not head or len(set(head)) != len(head) or not set(head) <= set(schema.fields)
                   or not set(schema.key) | {"status"} <= set(head))
            if bad:
                whole = ",".join(schema.fields)
                if lineno == 1 and end == len(lines) and not raw.endswith("\n") and whole.startswith(raw):
                    scan.header = []  # cut short while the header was written: an empty ledger
                    scan.damaged.append((1, "header cut short", raw))
                    continue
                raise LedgerError(f"{path}: not a {schema.name} (line 1 is not its header: expected columns "
                                  f"{', '.join(schema.key + ('status',))}, ... of {', '.join(schema.fields)})")
            scan.header, scan.header_raw = head, raw
            continue
        if rec == [] and why is None:
            continue  # a blank line
        if why is None and len(rec) != len(scan.header):
            why = f"{len(rec)} of {len(scan.header)} fields"
        if why is None:
            row = dict(zip(scan.header, rec))
            why = schema.check_row(row)
        if why is None:
            scan.rows.append((lineno, row, raw))
        else:
            scan.damaged.append((lineno, why, raw))
    return scan


def _row_key(row: dict, schema: LedgerSchema) -> tuple:
    if schema is SWEEP_LEDGER:
        return _key(row["method"], row["sigma"], row["seed"])
    return tuple(row[k] for k in schema.key)


def read_rows(csv_path: Path, schema: LedgerSchema = SWEEP_LEDGER) -> list[dict]:
    """The valid rows of a ledger CSV ([] when it does not exist), one per key (the last one wins).

    Damaged rows (cut short, a field that does not parse as its column says) are left out; see
    :func:`repair_ledger`. Raises :class:`LedgerError` for a file that is not such a ledger.
    """
    keep: dict = {}
    for _, row, _ in scan_ledger(csv_path, schema).rows:
        k = _row_key(row, schema)
        keep.pop(k, None)
        keep[k] = row
    return list(keep.values())


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, sync it, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _terminated(raw: str) -> str:
    return raw if raw.endswith("\n") else raw + "\r\n"


def repair_ledger(csv_path: Path, schema: LedgerSchema = SWEEP_LEDGER, log=None) -> int:
    """Move the damaged lines of a ledger to ``<name>.damaged`` and rewrite it atomically without them.

    Each damaged line is reported once, as one line (file, line, why) through ``log`` (default:
    stderr); its key is then missing from the ledger, so its cell (or evaluation) runs again. A
    ledger whose last (whole) row lacks its newline gets one. Returns how many lines were moved.
    Raises :class:`LedgerError` for a file that is not such a ledger (left untouched).
    """
    csv_path = Path(csv_path)
    scan = scan_ledger(csv_path, schema)
    if scan.clean:
        return 0
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    aside = csv_path.with_name(csv_path.name + ".damaged")
    if scan.damaged:
        with open(aside, "a", newline="", encoding="utf-8", errors="surrogateescape") as fh:
            fh.writelines(_terminated(raw) for _, _, raw in scan.damaged)
            fh.flush()
            os.fsync(fh.fileno())
    text = "" if not scan.header else _terminated(scan.header_raw) + "".join(_terminated(r) for _, _, r in scan.rows)
    _write_atomic(csv_path, text)
    for line, why, _ in scan.damaged:
        log(f"{csv_path}: line {line}: damaged {'header' if line == 1 else 'row'} ({why}); moved to {aside}"
            + (f", its {schema.unit} runs again" if line > 1 else ""))
    return len(scan.damaged)


def read_done(csv_path: Path) -> set:
    """Keys ``(method, sigma, seed)`` of the cells that have a (valid) row."""
    return {_key(r["method"], r["sigma"], r["seed"]) for r in read_rows(csv_path)}


def _header(csv_path: Path, schema: LedgerSchema = SWEEP_LEDGER) -> list[str]:
    """The header of an existing ledger (older ledgers lack later columns), else the schema's columns."""
    if csv_path.exists() and csv_path.stat().st_size > 0:
        with open(csv_path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
            first = fh.readline()
        head = next(csv.reader([first]), None) or []
        if set(head) <= set(schema.fields) and set(schema.key) | {"status"} <= set(head) and first.endswith("\n"):
            return head
        raise LedgerError(f"{csv_path}: not a {schema.name} (line 1 is not its header); not appending to it")
    return list(schema.fields)


def append_row(csv_path: Path, row: dict, schema: LedgerSchema = SWEEP_LEDGER) -> None:
    """Append one whole row (header first if the file is new) and sync it to disk.

    Never onto a line: when the file does not end in a newline (a row cut short), one is written
    first, so the damaged tail stays a line of its own (ignored by :func:`read_rows`).
    """
    csv_path = Path(csv_path)
    fields = _header(csv_path, schema)
    new = not csv_path.exists() or csv_path.stat().st_size == 0
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    if new:
        w.writeheader()
    w.writerow({k: ("" if row.get(k) is None else row.get(k, "")) for k in fields})
    data = buf.getvalue().encode("utf-8", errors="surrogateescape")
    with open(csv_path, "a+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size:
            fh.seek(size - 1)
            if fh.read(1) != b"\n":
                data = b"\r\n" + data
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def drop_failed_rows(csv_path: Path, keys: set | None = None) -> int:
    """Rewrite the CSV without its (valid) ``failed`` rows, atomically; returns how many. ``keys``:
    only the failed rows of these cells (``(method, sigma, seed)``), the cells about to run again;
    the failures of other cells stay on record.

    Every other line stays as it was (a damaged one too: :func:`repair_ledger` moves those aside).
    """
    scan = scan_ledger(csv_path)
    drop = {n for n, row, _ in scan.rows if row["status"] == "failed"
            and (keys is None or _key(row["method"], row["sigma"], row["seed"]) in keys)}
    if not drop:
        return 0
    lines = sorted([(n, raw) for n, _, raw in scan.rows if n not in drop] + [(n, raw) for n, _, raw in scan.damaged
                                                                           if n > 1])
    _write_atomic(csv_path, _terminated(scan.header_raw) + "".join(_terminated(raw) for _, raw in lines))
    return len(drop)


def count_failed(csv_path: Path, cells: list[RunConfig]) -> int:
    """How many cells of the grid have a ``failed`` row."""
    keys = {_key(c.method, c.sigma, c.seed) for c in cells}
    return sum(1 for r in read_rows(csv_path)
               if r.get("status") == "failed" and _key(r["method"], r["sigma"], r["seed"]) in keys)


def ledger_frame(csv_path: Path, schema: LedgerSchema = SWEEP_LEDGER):
    """The valid rows of a ledger as a pandas DataFrame, every column of ``schema`` present (numbers
    as numbers; a column an older ledger lacks is empty)."""
    import pandas as pd

    df = pd.DataFrame(read_rows(csv_path, schema), columns=list(schema.fields))
    for f in schema.fields:
        if schema.kind(f) in ("float", "int"):
            col = pd.to_numeric(df[f].replace("", np.nan), errors="coerce").astype(float)
            df[f] = col.astype(int) if schema.kind(f) == "int" and len(col) and col.notna().all() else col
    return df


# ----------------------------------------------------------------------------- the sweep
def grid(base: RunConfig, methods: list[str], sigmas: list[float], seeds: list[int]) -> list[RunConfig]:
    """Every (method, sigma, seed) cell as a validated config; the options are checked once per kind."""
    from .train import check_options

    cells, names = [], {}
    for m in methods:
        for s in sigmas:
            for k in seeds:
                name, key = cell_name(m, float(s), int(k)), _key(m, s, k)
                if name in names:
                    if names[name] != key:  # two cells, one run folder
                        raise ConfigError(f"--sigmas {names[name][1]:g} and {float(s):g} both name the run folder "
                                          f"{name}: give sigmas that differ within 4 decimals")
                    continue  # a repeated cell is one cell
                names[name] = key
                cells.append(base.replace(method=m, sigma=float(s), seed=int(k)))
    for cfg in {c.replace(seed=0, sigma=0.0) for c in cells}:
        check_options(cfg)
    return cells


def cell_threads(engine: Engine, threads: int | None) -> int:
    """torch threads per cell: ``threads`` if given, else the engine's CPUs per cell (local: cores // workers)."""
    if threads:
        return int(threads)
    if isinstance(engine, LocalEngine):
        return max(1, (os.cpu_count() or 1) // engine.workers)
    if isinstance(engine, InlineEngine):
        return os.cpu_count() or 1
    return max(1, round(getattr(engine, "cpus", 1) or 1))


def plan(cells: list[RunConfig], out: Path, csv_path: Path) -> list[tuple[RunConfig, Path]]:
    """Cells still to run; finished folders that lack a row get their row now."""
    done = read_done(csv_path)
    todo = []
    for cfg in cells:
        if _key(cfg.method, cfg.sigma, cfg.seed) in done:
            continue
        rd = out / "runs" / cell_name(cfg.method, cfg.sigma, cfg.seed)
        if rd.exists():  # finished before the row was written
            try:
                row = row_from_result(cfg.method, cfg.sigma, cfg.seed, rd)
            except (OSError, ValueError, TypeError, KeyError) as e:  # an unreadable result is a failed cell
                row = failed_row(cfg.method, cfg.sigma, cfg.seed, rd, one_line(e))
            append_row(csv_path, row)
            continue
        todo.append((cfg, rd))
    return todo


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


#: RunConfig fields that say where or how fast a cell runs, not what it computes: a sweep may be
#: continued with other values of these (every other field must match the sweep's ``sweep_config.json``)
RESOURCE_FIELDS = ("threads", "data_dir", "torch_device")


def _comparable(base: dict) -> dict:
    keep = {k: v for k, v in base.items() if k not in RESOURCE_FIELDS + ("method", "sigma", "seed")}
    return json.loads(json.dumps(keep))


def check_out(out: Path, base: RunConfig | None = None) -> None:
    """Raise :class:`ConfigError` (one line naming ``--out``) unless the sweep can write into ``out``
    and, when it already holds a sweep, that sweep was made with the same options as ``base``.
    Nothing is written."""
    from .runfolder import RunFolderError, check_output_dir

    out = Path(out)
    try:
        check_output_dir(out, "--out")
    except RunFolderError as e:
        raise ConfigError(str(e)) from None
    for name in ("results.csv", "sweep_config.json"):
        if (out / name).exists() and not (out / name).is_file():
            raise ConfigError(f"--out {out}: {out / name} is not a file")
    scan_ledger(out / "results.csv")  # a foreign file is refused before anything runs
    if base is not None:
        check_sweep_options(out, base)


def check_sweep_options(folder: Path, base: RunConfig, what: str = "--out", elsewhere: str = "choose another --out") -> None:
    """Raise :class:`ConfigError` (one line: ``what`` and ``folder``, then the way out) when the sweep
    recorded in ``folder/sweep_config.json`` was made with other options than ``base`` or with files
    that changed since; nothing when there is none. Reads only."""
    folder = Path(folder)
    cfg_path = folder / "sweep_config.json"
    if not cfg_path.exists():
        return
    try:
        recorded = json.loads(cfg_path.read_text())
        old = recorded["base"]
        if not isinstance(old, dict):
            raise TypeError("base is not a table")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{what} {folder}: {cfg_path} cannot be read ({one_line(e)}); not continuing that sweep") from None
    old_files = recorded.get("files") if isinstance(recorded, dict) else None
    if isinstance(old_files, dict):  # sweeps made before files were recorded are not compared
        now = referenced_files(base.to_dict())
        changed = [f for f in sorted(set(old_files) | set(now)) if old_files.get(f) != now.get(f)]
        if changed:
            named = ", ".join(f"{f} {getattr(base, f)}" for f in changed)
            raise ConfigError(f"{what} {folder} holds a sweep made with another {named} (the file changed since it "
                              f"ran); restore the file, or {elsewhere}")
    defaults = RunConfig().to_dict()  # a field the old sweep_config lacks had its default then
    new = _comparable(base.to_dict())
    old = _comparable({**defaults, **{k: v for k, v in old.items() if k in defaults}})
    diff = [f"{k} {old.get(k)!r} there, {new.get(k)!r} here" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diff:
        raise ConfigError(f"{what} {folder} holds a sweep made with other options ({'; '.join(diff[:4])}"
                          f"{'; ...' if len(diff) > 4 else ''}); continue it with its options or {elsewhere}")


def sweep(base: RunConfig, methods: list[str], sigmas: list[float], seeds: list[int], out: str | Path,
          workers: int = 1, threads: int | None = None, quiet: bool = False, engine: Engine | None = None,
          retries: int = 2, retry_failed: bool = False, summary: bool = True) -> Path:
    """Run every missing (method, sigma, seed) cell; returns the results CSV path.

    ``engine``: where cells run (default: a :class:`~training.engines.LocalEngine` of ``workers``
    processes with ``retries``, or in this process for ``workers=0``); an engine passed in is left
    open. ``threads``: torch threads per cell (default: see :func:`cell_threads`). On Ctrl-C the
    engine is stopped and ``KeyboardInterrupt`` re-raised; the CSV holds the cells that finished.

    Before anything is written, ``out`` is checked (:func:`check_out`: writable, not a file, no
    foreign ``results.csv``, no sweep made with other options); raises :class:`ConfigError`.
    While it runs the sweep holds the lock of ``out`` (``<out>/.lock``): a second sweep into the
    same folder is refused. Damaged ledger rows are moved aside first (:func:`repair_ledger`).
    """
    from .runfolder import lock_folder

    out = Path(out)
    cells = grid(base, methods, sigmas, seeds)
    check_out(out, base)
    out.mkdir(parents=True, exist_ok=True)
    lock = lock_folder(out, lambda e: ConfigError(f"--out {out}: another sweep is running into it ({e})"))
    try:
        check_out(out, base)  # again, now that no other sweep can change it
        _write_atomic(out / "sweep_config.json", json.dumps(
            {"base": base.to_dict(), "methods": methods, "sigmas": sigmas, "seeds": seeds,
             "files": referenced_files(base.to_dict())}, indent=1) + "\n")
        csv_path = out / "results.csv"
        repair_ledger(csv_path, SWEEP_LEDGER)
        if retry_failed:
            n = drop_failed_rows(csv_path, {_key(c.method, c.sigma, c.seed) for c in cells})
            _log(f"sweep: rerunning {n} failed cell(s)", quiet)
        todo = plan(cells, out, csv_path)
        own = engine is None
        engine = engine or make_engine("local", workers=workers, retries=retries)
        try:
            nthreads = base.threads or cell_threads(engine, threads)
            _log(f"sweep: {len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run on "
                 f"{engine.describe()} x {nthreads} thread(s)", quiet)
            _run_todo(engine, todo, csv_path, nthreads, quiet)
        finally:
            if own:
                engine.close()
        if summary:
            summarize(csv_path, out)
    finally:
        lock.release(remove=False)
    return csv_path


def _run_todo(engine: Engine, todo: list[tuple[RunConfig, Path]], csv_path: Path, threads: int, quiet: bool) -> None:
    """Submit the cells, append each row once as its cell finishes (this process writes the CSV)."""
    faults = parse_faults(os.environ.get(FAULT_ENV))
    tasks = [Task(_key(c.method, c.sigma, c.seed), run_cell, (c.to_dict(), str(rd), threads, faults)) for c, rd in todo]
    by_key = {t.key: (c, rd) for t, (c, rd) in zip(tasks, todo)}
    written: set = set()
    pace = Progress(len(tasks), "sweep", quiet=True)  # the time left, shown on each cell's line
    try:
        for i, res in enumerate(engine.run(tasks)):
            if res.key in written:
                continue
            cfg, rd = by_key[res.key]
            row = res.value if res.ok else failed_row(cfg.method, cfg.sigma, cfg.seed, rd, res.error)
            append_row(csv_path, row)
            written.add(res.key)
            note = f" ({res.attempts} attempts)" if res.attempts > 1 else ""
            err = f": {row['error']}" if row["status"] == "failed" else ""
            pace.update()
            left = f" ({pace.left()})" if pace.left() else ""
            _log(f"sweep: cell {i + 1}/{len(tasks)} ({100 * (i + 1) // len(tasks)} %) {rd.name} {row['status']}{note}"
                 f"{err}{left}", quiet)
    except KeyboardInterrupt:
        _log(f"sweep: interrupted; {len(written)} of {len(tasks)} cell(s) recorded in {csv_path}; "
             "rerun with --resume to continue", False)
        raise


def summarize(csv_path: Path, out: Path) -> None:
    """Write ``summary.csv``, ``accuracy.png`` and ``ekl.png`` from the valid rows of ``results.csv``.

    Failed cells are counted (``failed``) but left out of every mean and of the convergence
    probability (a failed run says nothing about convergence). Damaged rows are left out.
    """
    import pandas as pd

    df = ledger_frame(csv_path)
    if df.empty:
        return
    df["converged_flag"] = df["converged"].astype(str).str.lower().isin(["true", "1"])
    rows = []
    for (m, s), g in df.groupby(["method", "sigma"], sort=True):
        ok = g[g["status"] == "ok"]
        ran = g[g["status"] != "failed"]
        var_pooled = (ok["acc_std"] ** 2).mean() + (ok["acc_mean"].var(ddof=0) if len(ok) > 1 else 0.0)
        rows.append({
            "method": m, "sigma": s, "seeds": len(ran), "diverged": int((g["status"] == "diverged").sum()),
            "failed": int((g["status"] == "failed").sum()),
            "acc_mean": ok["acc_mean"].mean(), "acc_std_pooled": float(np.sqrt(var_pooled)) if len(ok) else float("nan"),
            "acc_mean_seed_std": ok["acc_mean"].std(ddof=1) if len(ok) > 1 else 0.0,
            "ekl": ok["ekl"].mean(), "confidence": ok["confidence"].mean(),
            "convergence_probability": ran["converged_flag"].mean() if len(ran) else float("nan"),
        })
    summ = pd.DataFrame(rows)
    _write_atomic(out / "summary.csv", summ.to_csv(index=False))
    _plot_summary(summ, out)


def _plot_summary(summ, out: Path) -> None:
    """``accuracy.png`` and ``ekl.png``: the summary's means vs sigma, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for metric, fname, ylabel in (("acc_mean", "accuracy.png", "test accuracy over chips (%)"),
                                  ("ekl", "ekl.png", "EKL (nats)")):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for m, g in summ.groupby("method"):
            g = g.sort_values("sigma")
            scale = 100 if metric == "acc_mean" else 1
            err = scale * g["acc_std_pooled"] if metric == "acc_mean" else None
            ax.errorbar(g["sigma"], scale * g[metric], yerr=err, marker="o", capsize=3, label=m)
        ax.set_xlabel("sigma")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=100)
        plt.close(fig)


# ------------------------------------------------------------------------------ benchmark
BENCH_REPEATS = 3


def bench_config() -> RunConfig:
    """A short cell (about a third of a second here): MLP on digits, one epoch, four test chips."""
    return RunConfig(model="mlp", dataset="digits", epochs=1, batch_size=64, lr=5e-3, eval_chips=4, val_chips=1,
                     sigma=0.1, threads=1, torch_device="cpu")


def _timed_sweep(engine: Engine, seeds: list[int], folder: Path, repeats: int = 1) -> float:
    """Wall seconds of a sweep of bench cells (one per seed) on ``engine``; the least of ``repeats`` fresh sweeps."""
    best = math.inf
    for r in range(repeats):
        t0 = time.perf_counter()
        sweep(bench_config(), ["plain"], [0.1], seeds, folder / f"r{r}", engine=engine, quiet=True, summary=False)
        best = min(best, time.perf_counter() - t0)
    return best


def _bench_engine(label: str, make, slots: int, cells: int, folder: Path, inline_s: float) -> dict:
    """Start-up (engine + one warm-up cell per slot), warm no-op round trip, and the timed sweep."""
    from .engines import noop, time_tasks

    t0 = time.perf_counter()
    engine = make()
    try:
        _timed_sweep(engine, list(range(1000, 1000 + slots)), folder / "warmup")
        startup = time.perf_counter() - t0
        noop_s, _ = time_tasks(engine, [Task(i, noop, (i,)) for i in range(cells)])
        wall = _timed_sweep(engine, list(range(cells)), folder / "sweep", BENCH_REPEATS)
    finally:
        engine.close()
    return {"engine": label, "slots": slots, "startup_s": startup, "noop_ms_per_task": 1e3 * noop_s / cells,
            "sweep_s": wall, "overhead_s_per_cell": (wall * slots - inline_s) / cells}


def bench_engines(cells: int = 8, ray: bool = True) -> list[dict]:
    """Per-cell overhead of each engine and the 2-worker speed-up, on ``cells`` short cells.

    The reference is the same sweep run in this process (after a warm-up cell): its time is the
    cells' own work. Each engine is first warmed up with one cell per parallel slot (``startup_s``:
    starting the pool or a local Ray, spawning workers, importing torch in them, one cell each);
    then ``noop_ms_per_task`` is a warm no-op round trip and ``sweep_s`` the wall time of the
    ``cells`` cells (the least of :data:`BENCH_REPEATS` sweeps). Overhead per cell = ``(sweep_s x slots - reference) / cells``: the extra
    worker-seconds a cell costs (transfers, scheduling, the CSV, and with 2 slots the contention of
    two cells for the machine's cores and memory bandwidth).
    """
    from .engines import RayEngine, import_ray

    rows = []
    with tempfile.TemporaryDirectory(prefix="cimsim-bench-") as tmp:
        tmp = Path(tmp)
        run_cell(bench_config().to_dict(), str(tmp / "warmup"), 1)
        inline_s = _timed_sweep(InlineEngine(), list(range(cells)), tmp / "inline", BENCH_REPEATS)
        rows.append({"engine": "inline (this process)", "slots": 1, "startup_s": 0.0, "noop_ms_per_task": 0.0,
                     "sweep_s": inline_s, "overhead_s_per_cell": 0.0})
        rows.append(_bench_engine("local, 1 worker", lambda: LocalEngine(1), 1, cells, tmp / "l1", inline_s))
        rows.append(_bench_engine("local, 2 workers", lambda: LocalEngine(2), 2, cells, tmp / "l2", inline_s))
        if ray:
            try:
                import_ray()
            except EngineError as e:
                print(f"bench: ray skipped: {e}", file=sys.stderr)
                return rows
            ray_tmp = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))
            try:
                for label, n in (("ray, local 1 CPU, 1 CPU/cell", 1), ("ray, local 2 CPUs, 1 CPU/cell", 2)):
                    rows.append(_bench_engine(label, lambda n=n: RayEngine(cpus_per_task=1, init_kwargs={
                        "num_cpus": n, "_temp_dir": str(ray_tmp), "log_to_driver": False}), n, cells,
                        tmp / f"ray{n}", inline_s))
            finally:
                shutil.rmtree(ray_tmp, ignore_errors=True)
    return rows


def print_bench(rows: list[dict], cells: int) -> None:
    """The benchmark table and the 2-worker speed-ups over the serial (1-worker) sweep."""
    print(f"engine benchmark: {cells} short cells (MLP, digits, 1 epoch, 4 chips), {os.cpu_count()} cores; "
          f"inline {rows[0]['sweep_s'] / cells:.3f} s of work per cell")
    print(f"{'engine':32s} {'startup s':>10s} {'no-op ms':>9s} {'sweep s':>8s} {'overhead s/cell':>16s}")
    for r in rows:
        print(f"{r['engine']:32s} {r['startup_s']:10.2f} {r['noop_ms_per_task']:9.2f} {r['sweep_s']:8.2f} "
              f"{r['overhead_s_per_cell']:16.3f}")
    serial = {r["engine"].split(",")[0]: r["sweep_s"] for r in rows if r["slots"] == 1 and r["startup_s"] > 0}
    for r in rows:
        kind = r["engine"].split(",")[0]
        if r["slots"] == 2 and kind in serial:
            print(f"speed-up of '{r['engine']}' over its serial (1-slot) sweep: {serial[kind] / r['sweep_s']:.2f}x")


# ---------------------------------------------------------------------------------- CLI
def _add_engine_args(p) -> None:
    """The engine options, shared by the sweep and evaluate commands."""
    p.add_argument("--engine", choices=ENGINES, default="local", help="local worker processes (default) or ray")
    p.add_argument("--workers", type=int, default=1,
                   help="local engine: worker processes (default 1; 0 runs in this process, no isolation)")
    p.add_argument("--address", default=None,
                   help="ray engine: cluster address (host:port or 'auto'); default: start a local Ray for this run")
    p.add_argument("--cpus-per-cell", type=float, default=None,
                   help="CPUs per cell (ray: task num_cpus, default 1; both: torch threads per cell)")
    p.add_argument("--gpus-per-cell", type=float, default=0.0, help="ray engine: GPUs per cell, fractions allowed (default 0)")
    p.add_argument("--retries", type=int, default=2, help="retries of a cell whose worker died (default 2)")


def engine_from_args(ns) -> Engine:
    """The engine the options ask for (raises :class:`EngineError` or :class:`ConfigError`)."""
    if ns.workers < 0:
        raise ConfigError("--workers must be >= 0")
    if ns.retries < 0:
        raise ConfigError("--retries must be >= 0")
    if (ns.cpus_per_cell is not None and ns.cpus_per_cell <= 0) or ns.gpus_per_cell < 0:
        raise ConfigError("--cpus-per-cell must be > 0 and --gpus-per-cell >= 0")
    return make_engine(ns.engine, workers=ns.workers, retries=ns.retries, address=ns.address,
                       cpus_per_task=ns.cpus_per_cell, gpus_per_task=ns.gpus_per_cell)


def main(argv: list[str] | None = None) -> int:
    from cimsim.device.model import DeviceModelError

    from .data import DataError
    from .runfolder import RunFolderError
    from .cli import Parser, UsageError, add_config_args, config_from_args
    from .variation import VariationError

    skip = ("method", "sigma", "seed")
    p = Parser(prog="python -m training.sweep", description="Grid of training runs -> results CSV and plots.")
    add_config_args(p, skip=skip)
    p.add_argument("--methods", default="plain,nit,ovf,irs", help="comma list (default plain,nit,ovf,irs)")
    p.add_argument("--sigmas", default="0:0.4:0.05", help="start:stop:step (stop included) or comma list")
    p.add_argument("--seeds", default="3", help="a count (seeds 0..n-1) or a comma list")
    p.add_argument("--out", default=None, help="results folder (created, or continued when it exists)")
    _add_engine_args(p)
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep in --out (the default behaviour; skips cells with a row)")
    p.add_argument("--retry-failed", action="store_true", help="rerun cells whose row says failed")
    p.add_argument("--bench", action="store_true", help="measure the engines' per-cell overhead instead")
    p.add_argument("--bench-cells", type=int, default=8, help="cells per benchmark sweep (default 8)")
    p.add_argument("--quiet", action="store_true")
    ns = p.parse_args(argv)
    if ns.bench:
        print_bench(bench_engines(ns.bench_cells), ns.bench_cells)
        return 0
    engine = None
    try:
        if not ns.out:
            raise ConfigError("--out is required (or --bench)")
        base = config_from_args(ns, skip=skip)
        methods = [m.strip() for m in ns.methods.split(",") if m.strip()]
        for m in methods:
            base.replace(method=m)
        sigmas, seeds = parse_sigmas(ns.sigmas), parse_seeds(ns.seeds)
        cells = grid(base, methods, sigmas, seeds)
        check_out(Path(ns.out), base)  # before an engine (a Ray cluster, worker processes) is started
        engine = engine_from_args(ns)
        threads = None if ns.cpus_per_cell is None else max(1, round(ns.cpus_per_cell))
        csv_path = sweep(base, methods, sigmas, seeds, ns.out, threads=threads, quiet=ns.quiet, engine=engine,
                         retry_failed=ns.retry_failed)
    except (UsageError, ConfigError, DataError, VariationError, DeviceModelError, EngineError, RunFolderError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # a file the sweep must read or write (disk full, permissions changed meanwhile)
        print(f"{p.prog}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        if engine is not None:
            engine.close()
    failed = count_failed(csv_path, cells)
    if failed:
        print(f"{p.prog}: {failed} of {len(cells)} cell(s) failed (status 'failed', error in {csv_path}); "
              "rerun with --retry-failed after fixing", file=sys.stderr)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())

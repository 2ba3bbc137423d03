"""The published experiments: ``python -m training.results run`` then ``python -m training.results report``.

Example::

    python -m training.results run --suite cpu --out results          # trains, evaluates (hours)
    python -m training.results report --out results --docs docs        # docs/results.md + CSV + PNG

A *suite* (a TOML file; ``--suite NAME`` reads ``training/suites/NAME.toml``) is a list of stages,
each writing into ``<out>/<stage name>/``: ``kind = "sweep"`` (:func:`training.sweep.sweep` over
``methods`` x ``sigmas`` x ``seeds``), ``"evaluate"`` (the runs of stage ``source`` under each
``[[stages.variants]]``, ``chips`` chips each) or ``"writeverify"`` (:mod:`training.writeverify_budget`
on the runs of ``source`` at ``sigma`` and ``seed``, options ``args``) or ``"cost"``
(``python -m training.cost --pareto`` on each such run of ``methods``, options ``args``: accuracy
and energy per inference over the hardware choices). Stages run in order and
resume; ``--stages a,b`` runs only those; the suite is copied to ``<out>/suite.toml``.
``--continue-from docs`` starts every stage that has no results in ``--out`` from the ledger an
earlier report kept in ``docs/results/records/<stage>/`` (a new machine continues a suite; the
run folders, not kept, stay on the old one).
``report`` writes ``<docs>/results.md``, the CSVs it cites under ``<docs>/results/`` and the PNG
figures beside them, replacing only what it wrote itself.

Exit status: 0 done; 1 some cells or evaluations failed (rerun to retry); 2 bad options, suite
file, ``--out`` or ``--docs`` (one line on stderr, nothing run or written); 130 on Ctrl-C (rerun
resumes).

Stage fields, checks before a run, and the report: docs/design.md,
section 'Experiment suites (training/results.py)'.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import shutil
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .run_config import DATASETS, METHODS, ConfigError, RunConfig, referenced_files
from .sweep import EVAL_LEDGER

SUITES_DIR = Path(__file__).with_name("suites")
KINDS = ("sweep", "evaluate", "writeverify", "cost")
EVAL_FIELDS = list(EVAL_LEDGER.fields)  # the columns of an evaluate stage's results.csv


class SuiteError(ValueError):
    """A malformed suite file (one line, meant for the user)."""


@dataclass(frozen=True)
class Stage:
    """One stage of a suite (see the module docstring for the kinds and their fields)."""

    name: str
    kind: str
    title: str = ""
    config: dict = field(default_factory=dict)
    methods: tuple[str, ...] = ()
    sigmas: tuple[float, ...] = ()
    seeds: tuple[int, ...] = ()
    source: str | None = None
    variants: tuple[dict, ...] = ()
    chips: int | None = None
    sigma: float | None = None
    seed: int = 0
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    defaults: dict
    stages: tuple[Stage, ...]
    path: Path

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise SuiteError(f"{self.path}: no stage named {name!r}")

    def base_config(self, stage: Stage) -> RunConfig:
        """The RunConfig of a sweep stage's cells (method, sigma and seed are set per cell)."""
        try:
            return RunConfig.from_dict({**self.defaults, **stage.config})
        except (ConfigError, ValueError) as e:
            raise SuiteError(f"{self.path}: stage {stage.name}: {e}") from None


def _sigmas(v: Any, where: str) -> tuple[float, ...]:
    from .sweep import parse_sigmas

    if isinstance(v, str):
        try:
            return tuple(parse_sigmas(v))
        except ValueError as e:
            raise SuiteError(f"{where}: sigmas: {e}") from None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (float(v),)
    if isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return tuple(float(x) for x in v)
    raise SuiteError(f"{where}: sigmas must be a number, a list of numbers or a text like \"0:0.4:0.05\", got {v!r}")


def _seeds(v: Any, where: str) -> tuple[int, ...]:
    """A count (``3`` or ``"3"``: seeds 0, 1, 2), a comma list (``"0,4,7"``) or a list of integers."""
    from .sweep import parse_seeds

    if isinstance(v, str):
        try:
            return tuple(parse_seeds(v))
        except ValueError:
            raise SuiteError(f"{where}: seeds must be a count, a list of integers or a text like \"0,4,7\", got {v!r}") from None
    if isinstance(v, int) and not isinstance(v, bool):
        return tuple(range(v))
    if isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return tuple(v)
    raise SuiteError(f"{where}: seeds must be a count, a list of integers or a text like \"0,4,7\", got {v!r}")


def _methods(v: Any, where: str) -> tuple[str, ...]:
    if isinstance(v, str):
        names = tuple(m.strip() for m in v.split(",") if m.strip())
    elif isinstance(v, list) and all(isinstance(m, str) for m in v):
        names = tuple(v)
    else:
        raise SuiteError(f"{where}: methods must be a text like \"plain,nit\" or a list of names, got {v!r}")
    bad = [m for m in names if m not in METHODS]
    if bad:  # refused before anything is written, not when the stage's turn comes
        raise SuiteError(f"{where}: unknown method {bad[0]!r} (choose from {', '.join(METHODS)})")
    return names


def _typed(st: dict, key: str, kinds: tuple[type, ...], what: str, where: str, default: Any = None) -> Any:
    """``st[key]`` when it is one of ``kinds`` (never a bool posing as a number), else :class:`SuiteError`."""
    v = st.get(key, default)
    if v is default:
        return v
    if isinstance(v, bool) and bool not in kinds or not isinstance(v, kinds):
        raise SuiteError(f"{where}: {key} must be {what}, got {v!r}")
    return v


def _parse_stage(st: dict, where: str, sweeps: set[str]) -> Stage:
    """One ``[[stages]]`` table as a :class:`Stage` (``sweeps``: the sweep stages before it); raises
    :class:`SuiteError` naming ``where``."""
    name, kind = st.get("name"), st.get("kind")
    unknown = set(st) - {"name", "kind", "title", "config", "methods", "sigmas", "seeds", "source", "variants",
                         "chips", "sigma", "seed", "args"}
    if unknown:
        raise SuiteError(f"{where} ({name}): unknown key(s) {', '.join(sorted(unknown))}")
    source = st.get("source")
    if (kind != "sweep" or source is not None) and source not in sweeps:
        raise SuiteError(f"{where} ({name}): source must name an earlier sweep stage, got {source!r}")
    where = f"{where} ({name})"
    config = _typed(st, "config", (dict,), "a table of RunConfig fields ([stages.config])", where, {})
    variants = _typed(st, "variants", (list,), "an array of tables ([[stages.variants]])", where, [])
    if not all(isinstance(v, dict) for v in variants):
        raise SuiteError(f"{where}: variants must be an array of tables ([[stages.variants]])")
    args = _typed(st, "args", (list,), "a list of command-line options", where, [])
    chips = _typed(st, "chips", (int,), "a whole number of chips", where)
    if chips is not None and chips < 1:
        raise SuiteError(f"{where}: chips must be >= 1, got {chips}")
    sigma = _typed(st, "sigma", (int, float), "a number", where)
    stage = Stage(name=name, kind=kind, title=str(st.get("title", "")), config=dict(config),
                  methods=_methods(st.get("methods", []), where), sigmas=_sigmas(st.get("sigmas", []), where),
                  seeds=_seeds(st.get("seeds", []), where), source=source,
                  variants=tuple(dict(v) for v in variants), chips=chips,
                  sigma=None if sigma is None else float(sigma), seed=_typed(st, "seed", (int,), "an integer", where, 0),
                  args=tuple(str(a) for a in args))
    if kind == "sweep" and not (stage.methods and stage.sigmas and stage.seeds):
        raise SuiteError(f"{where}: a sweep needs methods, sigmas and seeds")
    if kind == "evaluate":
        if not stage.variants or any(not isinstance(v.get("label"), str) or not v["label"] for v in stage.variants):
            raise SuiteError(f"{where}: an evaluate stage needs [[stages.variants]], each with a label")
        labels = [v["label"] for v in stage.variants]
        if len(set(labels)) != len(labels):  # rows are keyed by (run, label): a twin would never run
            raise SuiteError(f"{where}: duplicate variant label {next(x for x in labels if labels.count(x) > 1)!r}")
        from .evaluate import eval_config

        for v in stage.variants:
            try:
                eval_config(RunConfig(), {k: x for k, x in v.items() if k != "label"})
            except (ConfigError, ValueError, TypeError) as e:
                raise SuiteError(f"{where}: variant {v['label']!r}: {e}") from None
    if kind in ("writeverify", "cost") and stage.sigma is None:
        raise SuiteError(f"{where}: a {kind} stage needs the sigma of the runs it uses")
    return stage


def load_suite(name_or_path: str) -> Suite:
    """A suite by name (``training/suites/<name>.toml``) or path; raises :class:`SuiteError`."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SUITES_DIR / f"{name_or_path}.toml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in SUITES_DIR.glob("*.toml")))
        raise SuiteError(f"{name_or_path}: no such suite file (suites here: {known})")
    if not path.is_file():
        raise SuiteError(f"{path}: not a file")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SuiteError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise SuiteError(f"{path}: cannot be read: {e.strerror or e}") from None
    if not isinstance(raw.get("defaults", {}), dict):
        raise SuiteError(f"{path}: [defaults] must be a table of RunConfig fields")
    if not isinstance(raw.get("stages", []), list):
        raise SuiteError(f"{path}: stages must be an array of tables ([[stages]])")
    defaults = dict(raw.get("defaults", {}))
    stages, names, sweeps = [], set(), set()
    for i, st in enumerate(raw.get("stages", [])):
        where = f"{path}: stage {i + 1}"
        if not isinstance(st, dict):
            raise SuiteError(f"{where}: must be a table ([[stages]] with name, kind, ...), got {st!r}")
        name, kind = st.get("name"), st.get("kind")
        if not name or not isinstance(name, str) or kind not in KINDS:
            raise SuiteError(f"{where}: needs a name and a kind ({' | '.join(KINDS)})")
        if name in names:
            raise SuiteError(f"{where}: duplicate stage name {name!r}")
        stage = _parse_stage(st, where, sweeps)
        stages.append(stage)
        names.add(name)
        if kind == "sweep":
            sweeps.add(name)
    if not stages:
        raise SuiteError(f"{path}: no [[stages]]")
    suite = Suite(raw.get("name", path.stem), raw.get("description", ""), defaults, tuple(stages), path)
    for s in suite.stages:
        if s.kind == "sweep":
            suite.base_config(s)
    return suite


# --------------------------------------------------------------------------- running
def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def read_rows(path: Path, schema=None) -> list[dict]:
    """The valid rows of a stage ledger (a sweep's by default; damaged rows left out, see
    :func:`training.sweep.read_rows`); [] when there is none."""
    from .sweep import SWEEP_LEDGER
    from .sweep import read_rows as read_ledger

    return read_ledger(path, schema or SWEEP_LEDGER)


def _same(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


def source_runs(out: Path, stage: Stage, methods=(), sigmas=(), seeds=()) -> list[dict]:
    """Finished (``ok``) rows of sweep stage ``stage.source`` matching the filters, in CSV order.

    A row's ``run_dir`` is as the sweep wrote it (relative to the folder it ran from, or absolute);
    the run's own folder in this ``out``, ``<out>/<source>/runs/<name>``, is used wherever it exists,
    so that a recorded path which names another results tree (or nothing, once the results moved)
    is never followed."""
    rows = read_rows(out / stage.source / "results.csv")
    for r in rows:
        here = out / stage.source / "runs" / Path(r["run_dir"]).name
        if here.is_dir():
            r["run_dir"] = str(here)
    keep = []
    for r in rows:
        if r["status"] != "ok":
            continue
        if methods and r["method"] not in methods:
            continue
        if sigmas and not any(_same(r["sigma"], s) for s in sigmas):
            continue
        if seeds and int(r["seed"]) not in seeds:
            continue
        keep.append(r)
    return keep


def run_sweep(suite: Suite, stage: Stage, out: Path, workers: int) -> int:
    from .sweep import sweep

    # a rerun retries the cells that failed, as it retries failed evaluations (the module doc promises it)
    csv_path = sweep(suite.base_config(stage), list(stage.methods), list(stage.sigmas), list(stage.seeds),
                     out / stage.name, workers=workers, threads=1, retry_failed=True)
    failed = sum(r["status"] == "failed" for r in read_rows(csv_path))
    return 1 if failed else 0


def run_evaluate(stage: Stage, out: Path, workers: int) -> int:
    folder = out / stage.name
    folder.mkdir(parents=True, exist_ok=True)
    with _stage_lock(folder):
        return _run_evaluate_locked(stage, out, folder, workers)


@contextlib.contextmanager
def _stage_lock(folder: Path):
    """Hold the lock of a stage folder (``<folder>/.lock``, as a sweep does): a second runner of the
    same stage is refused with :class:`SuiteError` instead of computing, and appending, it twice."""
    from .runfolder import lock_folder

    folder.mkdir(parents=True, exist_ok=True)
    lock = lock_folder(folder, lambda e: SuiteError(f"stage {folder.name}: {e}"))
    try:
        yield
    finally:
        lock.release(remove=False)


def _run_key(run_dir: str) -> str:
    """A source run's identity in an evaluation ledger: its folder's name, unique in its source
    stage, so the same run named relative, absolute or from another folder is one run."""
    return Path(run_dir).name


def _run_evaluate_locked(stage: Stage, out: Path, folder: Path, workers: int) -> int:
    from .engines import make_engine
    from .evaluate import evaluate_run
    from .sweep import EVAL_LEDGER, repair_ledger

    from .sweep import _write_atomic

    csv_path = folder / "results.csv"
    _write_atomic(folder / VARIANT_FILES, json.dumps({**_recorded_variant_files(folder), **_variant_files(stage)},
                                                     indent=1, sort_keys=True) + "\n")
    repair_ledger(csv_path, EVAL_LEDGER)  # damaged rows moved aside (reported): their evaluations run again
    rows = read_rows(csv_path, EVAL_LEDGER)
    done = {(_run_key(r["run_dir"]), r["variant"]) for r in rows if r["status"] == "ok"}
    if any(r["status"] != "ok" for r in rows):  # failed rows are retried: drop them
        _rewrite(csv_path, [r for r in rows if r["status"] == "ok"], EVAL_FIELDS)
    runs = source_runs(out, stage, stage.methods, stage.sigmas, stage.seeds)
    todo = [(r, v) for r in runs for v in stage.variants if (_run_key(r["run_dir"]), v["label"]) not in done]
    _log(f"{stage.name}: {len(runs)} run(s) x {len(stage.variants)} variant(s), {len(todo)} evaluation(s) to do")
    engine = make_engine("local", workers=workers) if workers > 0 else None
    failed = 0
    try:
        for k, (r, v) in enumerate(todo):
            overrides = {key: x for key, x in v.items() if key != "label"}
            row = {"method": r["method"], "sigma": r["sigma"], "seed": r["seed"], "variant": v["label"],
                   "overrides": " ".join(f"{key}={x}" for key, x in overrides.items()), "run_dir": r["run_dir"]}
            t0 = time.time()
            try:
                chips = stage.chips or None
                res = evaluate_run(r["run_dir"], chips, None, engine, max(1, math.ceil((chips or 200) / max(1, workers))),
                                   threads=1, overrides=overrides)
                m = res.metrics
                row.update(status="ok", error="", **{key: m[key] for key in
                           ("acc_mean", "acc_std", "acc_ci95_low", "acc_ci95_high", "acc_min", "acc_p05", "ekl",
                            "confidence", "chips")})
            except Exception as e:  # noqa: BLE001 - one failed evaluation must not stop the others
                from .engines import one_line

                failed += 1
                row.update(status="failed", error=one_line(e))
            row["eval_time_s"] = round(time.time() - t0, 3)
            _append(csv_path, row, EVAL_FIELDS)
            acc = f"{100 * float(row['acc_mean']):.2f} %" if row["status"] == "ok" else row["error"]
            _log(f"{stage.name}: {k + 1}/{len(todo)} {r['method']} sigma {r['sigma']} seed {r['seed']} "
                 f"[{v['label']}]: {acc} ({row['eval_time_s']:.0f} s)")
    finally:
        if engine is not None:
            engine.close()
    return 1 if failed else 0


def run_writeverify(stage: Stage, out: Path) -> int:
    from . import writeverify_budget

    folder = out / stage.name
    if (folder / "budget.csv").exists():
        _log(f"{stage.name}: done already ({folder / 'budget.csv'})")
        return 0
    runs = source_runs(out, stage, stage.methods, (stage.sigma,), (stage.seed,))
    if not runs:
        _log(f"{stage.name}: no finished runs of {stage.source} at sigma {stage.sigma} seed {stage.seed}")
        return 1
    argv = [a for r in runs for a in ("--run", r["run_dir"])] + list(stage.args) + ["--out", str(folder)]
    _log(f"{stage.name}: python -m training.writeverify_budget {' '.join(argv)}")
    with _stage_lock(folder):
        return writeverify_budget.main(argv)


def run_cost_stage(stage: Stage, out: Path) -> int:
    """``python -m training.cost --pareto`` on every run of ``source`` at ``sigma``/``seed`` (of
    ``methods``), each into ``<out>/<stage>/<method>/``; a run already done is kept."""
    if stage.methods and all((out / stage.name / m / "pareto.json").exists() for m in stage.methods):
        _log(f"{stage.name}: done already ({', '.join(str(out / stage.name / m / 'pareto.json') for m in stage.methods)})")
        return 0  # (its source runs may be on another machine: see --continue-from)
    runs = source_runs(out, stage, stage.methods, (stage.sigma,), (stage.seed,))
    if not runs:
        _log(f"{stage.name}: no finished runs of {stage.source} at sigma {stage.sigma} seed {stage.seed}")
        return 1
    rc = 0
    with _stage_lock(out / stage.name):
        for r in runs:
            rc = max(rc, _run_cost_one(stage, out / stage.name / r["method"], r["run_dir"]))
    return rc


def _run_cost_one(stage: Stage, dest: Path, run_dir: str) -> int:
    from . import cost

    if (dest / "pareto.json").exists():
        _log(f"{stage.name}: done already ({dest / 'pareto.json'})")
        return 0
    argv = ["--run", run_dir, "--pareto", *stage.args, "--out", str(dest)]
    _log(f"{stage.name}: python -m training.cost {' '.join(argv)}")
    return cost.main(argv)


def _append(path: Path, row: dict, fields: list[str]) -> None:
    """Append one whole row to an evaluation ledger, synced (never onto a line cut short)."""
    from .sweep import EVAL_LEDGER, append_row

    append_row(path, row, EVAL_LEDGER)


def _rewrite(path: Path, rows: list[dict], fields: list[str]) -> None:
    """Replace a ledger by ``rows`` atomically (temporary file, synced, renamed)."""
    import io

    from .sweep import _write_atomic

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    _write_atomic(path, buf.getvalue())


def _stage_with_data(stage: Stage, suite: Suite, data_dirs: dict[str, str]) -> Stage | None:
    """A sweep stage with its data folder from ``--data-dir``; None when it must be skipped (MNIST, no folder)."""
    base = suite.base_config(stage)
    if base.dataset in data_dirs:
        return Stage(**{**stage.__dict__, "config": {**stage.config, "data_dir": data_dirs[base.dataset]}})
    if base.dataset == "mnist" and base.data_dir is None:
        return None
    return stage


def check_suite_run(suite: Suite, out: Path, only: list[str] | None = None,
                    data_dirs: dict[str, str] | None = None) -> None:
    """Everything that can be checked before a stage runs; raises :class:`SuiteError` (one line).

    ``--out`` can be written; each sweep stage's options work here (data, noise backend, device)
    and match the sweep already in its folder, if any; no stage ledger is a foreign file; and an
    evaluate or write-verify stage whose results are in ``out`` was not changed since (compared
    with ``<out>/suite.toml``): its rows would otherwise be kept as if made by the new definition.
    """
    from .run_config import ConfigError
    from .runfolder import RunFolderError, check_output_dir
    from .sweep import EVAL_LEDGER, check_out, scan_ledger
    from .cli import UsageError
    from .train import check_options

    data_dirs = data_dirs or {}
    try:
        check_output_dir(out, "--out")
    except RunFolderError as e:
        raise SuiteError(str(e)) from None
    if (out / "suite.toml").exists() and not (out / "suite.toml").is_file():
        raise SuiteError(f"--out {out}: {out / 'suite.toml'} is not a file")
    old = _recorded_suite(out)
    for stage in suite.stages:
        if only and stage.name not in only:
            continue
        where = f"{suite.path}: stage {stage.name}"
        try:
            if stage.kind == "sweep":
                st = _stage_with_data(stage, suite, data_dirs)
                if st is not None:
                    base = suite.base_config(st)
                    check_options(base)
                    check_out(out / stage.name, base)
            elif stage.kind == "evaluate":
                scan_ledger(out / stage.name / "results.csv", EVAL_LEDGER)
        except (UsageError, ConfigError) as e:
            raise SuiteError(f"{where}: {e}") from None
        if stage.kind == "evaluate":
            _check_variant_files(out / stage.name, stage)
        before = old.get(stage.name)
        if before is None or stage.kind == "sweep" or not (out / stage.name).exists():
            continue  # a sweep's cells are checked against its sweep_config.json above
        why = _stage_change(before, stage)
        if why:
            raise SuiteError(f"--out {out}: stage {stage.name!r} changed since its results there were made "
                             f"({why}; see {out / 'suite.toml'}); restore it, or give the new one another name or --out")


#: an evaluate stage's record of the files its variants named, as they were when its rows were made
VARIANT_FILES = "variant_files.json"


def _variant_files(stage: Stage) -> dict[str, dict[str, str]]:
    """Variant label -> SHA-256 of each file it names (:func:`training.run_config.referenced_files`)."""
    return {v["label"]: referenced_files(v) for v in stage.variants}


def _recorded_variant_files(folder: Path) -> dict:
    path = folder / VARIANT_FILES
    if not path.is_file():
        return {}
    try:
        rec = json.loads(path.read_text())
        if not isinstance(rec, dict):
            raise TypeError("not a JSON object")
    except (OSError, ValueError, TypeError) as e:
        raise SuiteError(f"{path} cannot be read ({e}); move it aside to run the stage again") from None
    return rec


def _check_variant_files(folder: Path, stage: Stage) -> None:
    """Refuse (:class:`SuiteError`) an evaluate stage whose variant names a file that changed since
    that variant's rows were made: they would be kept as if made with the new file."""
    old = _recorded_variant_files(folder)
    made = {r["variant"] for r in read_rows(folder / "results.csv", EVAL_LEDGER) if r["status"] == "ok"}
    for label, files in _variant_files(stage).items():
        if label in made and label in old and old[label] != files:
            changed = sorted(f for f in set(old[label]) | set(files) if old[label].get(f) != files.get(f))
            raise SuiteError(f"stage {stage.name!r}, variant {label!r}: {', '.join(changed)} changed since its rows in "
                             f"{folder} were made; restore the file, or give the variant another label")


def _stage_blocks(text: str) -> tuple[str, dict[str, str]]:
    """A suite file's text before its first ``[[stages]]`` table, and each stage's text by name."""
    parts = re.split(r"(?m)^(?=\[\[stages\]\][ \t]*(?:#.*)?$)", text)
    return parts[0], {tomllib.loads(b)["stages"][0]["name"]: b for b in parts[1:]}


def _suite_record(out: Path, suite: Suite, only: list[str] | None) -> str:
    """The text of ``<out>/suite.toml`` after running ``only`` (None: every stage) of ``suite``: the
    suite as it is now, except that a stage not run now whose results are in ``out`` keeps the
    definition it was recorded with, so that the check of a changed stage still sees what its rows
    were made by."""
    new = suite.path.read_text()
    path = out / "suite.toml"
    if only is None or not path.is_file():
        return new
    try:
        _, old_blocks = _stage_blocks(path.read_text())
    except (tomllib.TOMLDecodeError, KeyError, IndexError, TypeError):
        return new  # unreadable record: as before, the sweeps' own sweep_config.json are still checked
    head, blocks = _stage_blocks(new)
    keep = {n for n in blocks if n not in only and n in old_blocks and (out / n).exists()}
    text = head + "".join(old_blocks[n] if n in keep else b for n, b in blocks.items())
    tomllib.loads(text)  # a record that does not parse is a bug here, not the user's
    return text


def _recorded_suite(out: Path) -> dict[str, Stage]:
    """The stages of the suite that ``out``'s results were made with (``<out>/suite.toml``), by name."""
    path = out / "suite.toml"
    if not path.is_file():
        return {}
    try:
        return {s.name: s for s in load_suite(str(path)).stages}
    except SuiteError:  # unreadable record: the sweeps' own sweep_config.json are still checked
        return {}


def _stage_change(old: Stage, new: Stage) -> str | None:
    """What changed in an evaluate or write-verify stage that makes its recorded rows wrong, or None."""
    if old.kind != new.kind:
        return f"kind {old.kind} -> {new.kind}"
    if new.kind == "evaluate":
        if old.source != new.source or old.chips != new.chips:
            return f"source/chips {old.source}/{old.chips} -> {new.source}/{new.chips}"
        before = {v["label"]: v for v in old.variants}
        for v in new.variants:  # new labels are fine (they run); a label's setting must not change
            if v["label"] in before and before[v["label"]] != v:
                return f"variant {v['label']!r}: {before[v['label']]} -> {v}"
        return None
    fields = ("source", "methods", "sigma", "seed", "args")
    diff = [f for f in fields if getattr(old, f) != getattr(new, f)]
    return f"{', '.join(diff)} differ" if diff else None


def run_suite(suite: Suite, out: Path, only: list[str] | None = None, workers: int = 2,
              data_dirs: dict[str, str] | None = None, continue_from: Path | None = None) -> int:
    """Run the suite's stages (or ``only`` those) into ``out``; returns the exit status.

    ``data_dirs``: data set name -> folder, given to every sweep stage of that data set. A sweep
    stage on ``mnist`` (which has no default folder) without one is skipped, with a message.
    ``continue_from``: a docs folder; stages with no results in ``out`` start from the records its
    report kept (:func:`records_to_continue`), e.g. to continue on a new machine.
    """
    data_dirs = data_dirs or {}
    check_suite_run(suite, out, only, data_dirs)
    todo = records_to_continue(suite, out, continue_from, only) if continue_from is not None else []
    out.mkdir(parents=True, exist_ok=True)
    continue_from_records(todo, out)
    from .sweep import _write_atomic

    _write_atomic(out / "suite.toml", _suite_record(out, suite, only))
    status = 0
    for stage in suite.stages:
        if only and stage.name not in only:
            continue
        t0 = time.time()
        _log(f"== stage {stage.name} ({stage.kind}) {stage.title}")
        if stage.kind == "sweep":
            st = _stage_with_data(stage, suite, data_dirs)
            if st is None:
                _log(f"== stage {stage.name}: skipped (MNIST has no default folder: pass --data-dir mnist=DIR)")
                continue
            rc = run_sweep(suite, st, out, workers)
        elif stage.kind == "evaluate":
            rc = run_evaluate(stage, out, workers)
        elif stage.kind == "cost":
            rc = run_cost_stage(stage, out)
        else:
            rc = run_writeverify(stage, out)
        _log(f"== stage {stage.name}: exit {rc} after {time.time() - t0:.0f} s")
        status = max(status, rc)
    return status



# --------------------------------------------------------------------------- continuing from records
def records_to_continue(suite: Suite, out: Path, docs: Path, only: list[str] | None = None) -> list[tuple[Stage, Path]]:
    """The stages (``only`` those) to continue from the records an earlier report kept in
    ``<docs>/results/records/<stage>/`` (:func:`training.report.save_record`: each stage's ledger and
    configuration, no run folders): each stage with no results in ``out`` whose record has some and
    can be checked. Reads only; says per stage (stderr, once all are checked) whether it is
    continued and why not.

    A sweep's record is checked by its ``sweep_config.json`` against the stage's options now; any
    other stage's by its recorded definition (:func:`_stage_change`), and it is continued only with
    the runs its rows were made on: its source sweep continued in the same call, or in ``out`` with
    the recorded rows of the source's record. A record made by other options or another definition
    raises :class:`SuiteError` (one line naming it); one that cannot be checked is not continued.
    """
    from .report import RECORDS, stage_has_results

    root = docs / "results" / RECORDS
    if not root.is_dir():
        raise SuiteError(f"--continue-from {docs}: no {root} (the records `python -m training.results report "
                         f"--docs {docs}` keeps)")
    sweeps = {s.name for s in suite.stages if s.kind == "sweep"}
    todo: list[tuple[Stage, Path]] = []
    notes = []  # said once every record is checked: a refusal stays the only line
    for stage in suite.stages:
        if only and stage.name not in only:
            continue
        rec = root / stage.name
        if stage_has_results(out / stage.name):
            why = f"it has results in {out / stage.name}"
        elif not stage_has_results(rec):
            why = f"{rec} holds no results"
        else:
            why = _continue_check(suite, stage, rec, out, docs, sweeps, {s.name for s, _ in todo})
        if why:
            notes.append(f"--continue-from: stage {stage.name}: not continued ({why})")
        else:
            notes.append(f"--continue-from: stage {stage.name}: continued from {rec}")
            todo.append((stage, rec))
    for note in notes:
        _log(note)
    return todo


def _continue_check(suite: Suite, stage: Stage, rec: Path, out: Path, docs: Path, sweeps: set[str],
                    continued: set[str]) -> str | None:
    """Why ``stage`` cannot be continued from ``rec`` (None: it can); raises :class:`SuiteError` when
    the record was made by other options or another definition of the stage."""
    from .sweep import EVAL_LEDGER, SWEEP_LEDGER, LedgerError, check_sweep_options, scan_ledger

    where = f"--continue-from {docs}: record {rec}"
    try:
        if stage.kind == "sweep":
            if not (rec / "sweep_config.json").is_file():
                return "its record has no sweep_config.json to check its options against"
            scan_ledger(rec / "results.csv", SWEEP_LEDGER)
            check_sweep_options(rec, suite.base_config(stage), "--continue-from: record",
                                "leave the stage out of --stages")
            return None
        try:
            definition = json.loads((rec / "RECORD.json").read_text()).get("definition")
        except (OSError, ValueError, AttributeError) as e:
            from .engines import one_line

            raise SuiteError(f"{where}: RECORD.json cannot be read ({one_line(e)})") from None
        if definition is None:
            return "its record predates recorded definitions, so what made its rows cannot be checked"
        if not isinstance(definition, dict):
            raise SuiteError(f"{where}: RECORD.json's definition is not a table")
        old = _parse_stage(definition, where, sweeps)
        why = f"kind {old.kind} -> {stage.kind}" if old.kind != stage.kind else _stage_change(old, stage)
        if why:
            raise SuiteError(f"{where}: stage {stage.name!r} changed since its rows were made ({why}); "
                             "restore it, or leave it out of --stages")
        if stage.kind == "evaluate":
            scan_ledger(rec / "results.csv", EVAL_LEDGER)
            _check_variant_files(rec, stage)
    except (ConfigError, LedgerError) as e:
        raise SuiteError(f"{where}: {e}" if str(rec) not in str(e) else str(e)) from None
    if stage.source in continued:
        return None
    src_rec = rec.parent / stage.source
    if not _same_ok_rows(src_rec / "results.csv", out / stage.source / "results.csv"):
        return (f"its source stage {stage.source} is not continued now, and its runs in {out / stage.source} are not "
                f"those of {src_rec}")
    return None


def _same_ok_rows(recorded: Path, here: Path) -> bool:
    """Whether every ``ok`` row of the sweep ledger ``recorded`` is in ``here`` as it was (same cell,
    run folder name and accuracy): ``here`` holds the runs the record's rows were made on."""
    from .sweep import LedgerError

    try:
        rows_here = {(r["method"], r["sigma"], r["seed"]): r for r in read_rows(here)} if here.is_file() else {}
        rows_rec = read_rows(recorded) if recorded.is_file() else []
    except LedgerError:
        return False
    for r in rows_rec:
        if r["status"] != "ok":
            continue
        h = rows_here.get((r["method"], r["sigma"], r["seed"]))
        if (h is None or h["status"] != "ok" or Path(h["run_dir"]).name != Path(r["run_dir"]).name
                or h["acc_mean"] != r["acc_mean"]):
            return False
    return True


def continue_from_records(todo: list[tuple[Stage, Path]], out: Path) -> None:
    """Copy each record of :func:`records_to_continue` into ``<out>/<stage>/`` (``RECORD.json`` left
    out), holding the stage folder's lock, every file through a temporary name and the files that
    say a stage has results (``results.csv``, ``budget.csv``, ``*/pareto.json``) last, so that an
    interrupted copy leaves a stage that runs as if new, or is continued again. Its cells and
    evaluations count as done; their run folders are not here."""
    from .report import stage_has_results

    def last(f: Path) -> bool:
        return f.name in ("results.csv", "budget.csv", "pareto.json")

    for stage, rec in todo:
        dst = out / stage.name
        with _stage_lock(dst):
            if stage_has_results(dst):  # made meanwhile by another runner
                _log(f"--continue-from: stage {stage.name}: not continued (it has results in {dst} now)")
                continue
            files = [f for f in sorted(rec.rglob("*")) if f.is_file() and f.name != "RECORD.json"]
            for f in sorted(files, key=last):
                target = dst / f.relative_to(rec)
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.continuing")
                shutil.copyfile(f, tmp)
                os.replace(tmp, target)


# --------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    from .engines import EngineError
    from .runfolder import RunFolderError
    from .cli import Parser, UsageError

    p = Parser(prog="python -m training.results", description="Run the published experiment suite, or write its report.")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train and evaluate every stage of a suite (resumes)")
    r.add_argument("--suite", default="cpu", help="suite name (training/suites/NAME.toml) or TOML path (default cpu)")
    r.add_argument("--out", default="results", help="results folder (default results)")
    r.add_argument("--stages", default=None, help="comma list of stage names to run (default all)")
    r.add_argument("--workers", type=int, default=2, help="worker processes, one torch thread each (default 2)")
    r.add_argument("--data-dir", action="append", default=[], metavar="DATASET=DIR",
                   help="folder of a data set's files for every stage using it, e.g. mnist=/data/mnist (repeatable)")
    r.add_argument("--continue-from", default=None, metavar="DOCS",
                   help="start every stage with no results in --out from the records a report kept in "
                        "DOCS/results/records (its ledger: finished cells and evaluations are not run again)")
    g = sub.add_parser("report", help="write docs/results.md, its CSVs and figures from a results folder")
    g.add_argument("--out", default="results", help="results folder written by run (default results)")
    g.add_argument("--docs", default="docs", help="where results.md and results/ go (default docs)")
    g.add_argument("--paper", default=None, help="the authors' accuracy CSV (default ../shared/reference/neft_paper_accuracy.csv)")
    ns = p.parse_args(argv)
    try:
        if ns.cmd == "run":
            suite = load_suite(ns.suite)
            only = [s.strip() for s in ns.stages.split(",")] if ns.stages else None
            for s in only or []:
                suite.stage(s)
            if ns.workers < 0:
                raise SuiteError("--workers must be >= 0")
            data_dirs = {}
            for item in ns.data_dir:
                name, sep, folder = item.partition("=")
                if not sep or name not in DATASETS or not Path(folder).is_dir():
                    raise SuiteError(f"--data-dir {item!r}: expected DATASET=DIR with DATASET one of "
                                     f"{', '.join(DATASETS)} and DIR an existing folder")
                data_dirs[name] = folder
            return run_suite(suite, Path(ns.out), only, ns.workers, data_dirs,
                             Path(ns.continue_from) if ns.continue_from else None)
        from .report import write_report

        return write_report(Path(ns.out), Path(ns.docs), ns.paper)
    except (SuiteError, ConfigError, UsageError, RunFolderError, EngineError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file a stage must read or write (disk full, permissions changed meanwhile)
        from .engines import one_line

        print(f"{p.prog}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{p.prog}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``python -m cimsim.fit``: fit a device model to measured cells (:mod:`cimsim.device.fit`), or
validate fitted families against the cells (``--validate DIR``, :mod:`cimsim.device.validate`).

Bad input: one line on stderr naming the file, line, column or option, exit status 2, nothing
written.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from cimsim.device.fit import FIT_FAMILIES, FitOptions, fit_device, format_table, render_figure
from cimsim.device.measured import MeasuredDataError, TidyColumns, read_measured
from cimsim.device.model import DeviceModelError
from cimsim.device.validate import ValidateOptions, format_targets, output_files, validate
from cimsim.io import OutputError, check_output_folder, check_outputs, write_outputs

class _UsageError(Exception):
    """A command-line usage error (reported as one line, exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m cimsim.fit",
        description="Fit a cimsim device model (JSON) to measured conductances: per-cell (tidy) data or a "
                    "per-level summary (auto-detected from the columns).")
    p.add_argument("data", help="CSV (optionally .gz): tidy per-cell reads or the per-level summary format")
    p.add_argument("--time", type=float, default=None, help="fit only this nominal read time (seconds)")
    p.add_argument("--family", choices=FIT_FAMILIES, default=None,
                   help="distribution of the programming error: quantile (default: the measured quantile function "
                        "with generalized-Pareto tails, bounded below by the conductance floor; the family that "
                        "passes --validate), auto (normal or Student-t per level, by AIC + KS), normal, student-t, "
                        "or empirical (per-cell data only: every programmed cell replays a measured cell of its "
                        "level at a measured read time)")
    p.add_argument("-o", "--output", default=None, help="device model JSON to write (default: print only)")
    p.add_argument("--plot", default=None, help="PNG figure to write")
    p.add_argument("--read-noise", default=None, help="read-noise time series (TSV, level, 0, samples in S)")
    p.add_argument("--min-cells", type=int, default=20, help="fewest cells a level may have (default 20)")
    p.add_argument("--poly-deg", type=int, default=3, help="degree of sigma(G) and shift(G) per time (default 3)")
    p.add_argument("--read-noise-deg", type=int, default=1, help="degree of sigma_read(G) (default 1)")
    p.add_argument("--format", dest="fmt", choices=("auto", "tidy", "summary"), default="auto")
    p.add_argument("--units", choices=("auto", "uS", "S"), default="auto",
                   help="unit of the tidy conductance columns (auto: from the _uS / _S suffix)")
    d = TidyColumns()
    for role in ("level", "target", "time", "g", "lo", "hi"):
        p.add_argument(f"--col-{role}", default=getattr(d, role), help=f"tidy column for {role} (default {getattr(d, role)})")
    p.add_argument("--neg-tol", type=float, default=0.01,
                   help="reads down to -NEG_TOL * gmax are kept (read offset); lower ones are errors (default 0.01)")
    p.add_argument("--name", default=None, help="model name (default: the input file's stem)")
    p.add_argument("--technology", default=None, help="technology text (default: '# technology:' line of the file)")
    p.add_argument("--citation", default=None, help="citation text (default: '# citation:' line of the file)")
    v = p.add_argument_group("validation (per-cell data; writes heldout.csv, leave_one_level_out.csv, network.csv, "
                             "targets.csv, validation.png, validate_config.json)")
    v.add_argument("--validate", default=None, metavar="DIR",
                   help="instead of fitting one model: check fitted families against the cells - held-out halves, "
                        "leave one level out, and a digits MLP on chips from each model vs the empirical device")
    v.add_argument("--validate-families", default="quantile,auto",
                   help="comma list of families to validate (default quantile,auto)")
    v.add_argument("--chips", type=int, default=500, help="chips per network-check case (default 500)")
    v.add_argument("--seed", type=int, default=0, help="seed of the halves, model draws, MLP and chips (default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no table, no progress")
    return p


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: the same file on disk when both exist, else the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_paths(inputs: Sequence[tuple[str, Any]], outputs: Sequence[tuple[str, Any]]) -> None:
    """Refuse an output that is an input or another output, or that cannot be written
    (:func:`cimsim.io.check_outputs`); raises before any work is done.

    ``inputs``, ``outputs``: (option, path) pairs, the option naming the path in messages; a
    ``None`` path was not given.
    """
    given = [(opt, p) for opt, p in outputs if p is not None]
    for i, (opt, p) in enumerate(given):
        if not str(p).strip():
            raise _UsageError(f"{opt}: empty path")
        for what, q in [*((w, q) for w, q in inputs if q), *given[:i]]:
            if same_file(p, q):
                raise _UsageError(f"{opt} {p}: the same file as {what} {q}; an output must not overwrite "
                                  "an input or another output")
    check_outputs(p for _, p in given)


def _options(a: argparse.Namespace) -> FitOptions:
    cols = TidyColumns(level=a.col_level, target=a.col_target, time=a.col_time, g=a.col_g, lo=a.col_lo, hi=a.col_hi)
    return FitOptions(family=FitOptions.family if a.family is None else a.family, time_s=a.time, min_cells=a.min_cells, poly_deg=a.poly_deg,
                      read_noise_deg=a.read_noise_deg, fmt=a.fmt, units=a.units, columns=cols, neg_tol_frac=a.neg_tol,
                      name=a.name, technology=a.technology, citation=a.citation)


_INPUT_ERRORS = (MeasuredDataError, DeviceModelError, OutputError, _UsageError)


def _error_exit(e: Exception) -> int:
    """One line on stderr naming what is wrong (the file of an OS error); exit status 2."""
    if isinstance(e, OSError) and not isinstance(e, _INPUT_ERRORS):
        print(f"cimsim.fit: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
    else:
        print(f"cimsim.fit: error: {e}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry; returns 0 on success, 2 on bad input (one line on stderr)."""
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as e:
        print(f"cimsim.fit: error: {e} (see python -m cimsim.fit --help)", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    if args.validate is not None:
        return _validate_main(args)
    try:
        options = _options(args)
        options.check()
        check_paths([("the input data file", args.data), ("--read-noise", args.read_noise)],
                    [("-o", args.output), ("--plot", args.plot)])
        result = fit_device(args.data, options, args.read_noise, progress=not args.quiet)
        files: dict[Path, bytes] = {}
        if args.output is not None:
            files[Path(args.output)] = (result.model.to_json() + "\n").encode()
        if args.plot is not None:
            files[Path(args.plot)] = render_figure(result)
        write_outputs(files)
    except (*_INPUT_ERRORS, OSError) as e:
        return _error_exit(e)
    if not args.quiet:
        print(format_table(result))
        for path in files:
            print(f"wrote {path}")
    return 0



def _validate_main(args: argparse.Namespace) -> int:
    """``--validate DIR``: the checks of :mod:`cimsim.device.validate`, files written together."""
    try:
        if args.output is not None or args.plot is not None:
            raise _UsageError("--validate writes its own files into DIR; fit with -o/--plot in a separate call")
        if args.time is not None or args.read_noise is not None or args.family is not None:
            raise _UsageError("--validate checks every read time and the families of --validate-families; "
                              "--time, --read-noise and --family are options of a fit")
        fams = tuple(f.strip() for f in args.validate_families.split(",") if f.strip())
        vopts = ValidateOptions(families=fams, chips=args.chips, seed=args.seed)
        vopts.check()
        options = _options(args)
        options.check()
        if not str(args.validate).strip():
            raise _UsageError("--validate: empty folder name")
        folder = Path(args.validate)
        check_output_folder(folder)
        targets = [folder / name for name in ("heldout.csv", "leave_one_level_out.csv", "network.csv",
                                             "targets.csv", "validation.png", "validate_config.json")]
        check_paths([("the input data file", args.data)], [("--validate", t) for t in targets])
        data = read_measured(Path(args.data), options.fmt, options.columns, options.units, options.neg_tol_frac)
        result = validate(data, options, vopts, progress=not args.quiet)
        write_outputs({folder / name: blob for name, blob in output_files(result, options).items()})
    except (*_INPUT_ERRORS, OSError) as e:
        return _error_exit(e)
    if not args.quiet:
        print(format_targets(result))
        print(f"wrote {len(targets)} files into {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Regenerate ``data/measured/rram.csv``: the per-level summary of the measured tech C RRAM cells.

Run from the repository root (the measured data lives beside the repository, in ``../shared``)::

    python tools/summarize_measured.py [--cells ../shared/measured/rram_techC_cells.csv] [-o data/measured/rram.csv]

For each level (0..31) and nominal read time (0, 0.01, 0.1, 1, 4, 1e5 s): the number of cells,
the target (window centre), the write-verify window, the mean, the standard deviation (ddof = 1)
and the 1/5/10/25/50/75/90/95/99 % quantiles of the measured conductance (uS), and the cells
read outside their window near gmin / gmax (see ``cimsim.device.measured.miss_near_edges``). Columns
are documented in ``data/measured/README.md``.

Source: Akash Levy, github.com/akashlevy/RRAM-Relaxation-Master-Model, commit ca0cfff6, MIT
license (copyright 2021 Akash Levy); see ``../shared/measured/README.md``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cimsim.io import atomic_write_text
from cimsim.device.measured import MeasuredDataError, read_tidy, summarize, summary_to_csv
from cimsim.io import sha256_file

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CELLS = ROOT.parent / "shared" / "measured" / "rram_techC_cells.csv"
DEFAULT_OUT = ROOT / "data" / "measured" / "rram.csv"


def metadata(cells_path: Path) -> dict[str, str]:
    """The ``# key: value`` header of the summary file (read back by ``cimsim.device.fit``)."""
    return {
        "technology": "RRAM 1T1R, 'tech C' of the source (gmax 40 uS, 32 levels, write-verify windows 1.25 uS)",
        "citation": "Akash Levy, RRAM-Relaxation-Master-Model, github.com/akashlevy/RRAM-Relaxation-Master-Model "
                    "(commit ca0cfff6, MIT license, copyright 2021 Akash Levy)",
        "source": f"{cells_path.name} (sha256 {sha256_file(cells_path)})",
        "regenerate": "python tools/summarize_measured.py",
        "units": "conductances in uS, times in s; std with ddof=1; quantiles numpy linear (type 7)",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=Path, default=DEFAULT_CELLS, help="tidy per-cell CSV (tech C)")
    ap.add_argument("-o", "--output", type=Path, default=DEFAULT_OUT)
    a = ap.parse_args(argv)
    try:
        cells = read_tidy(a.cells)
    except MeasuredDataError as e:
        print(f"summarize_measured: error: {e}", file=sys.stderr)
        return 2
    table = summarize(cells).sort_values(["level", "t_nominal_s"], kind="stable")
    atomic_write_text(a.output, summary_to_csv(table, metadata(a.cells)))
    print(f"wrote {a.output}: {len(table)} rows ({cells.levels.size} levels x {cells.times_s.size} read times)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

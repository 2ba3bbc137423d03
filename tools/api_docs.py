"""Build the API reference from the docstrings: ``python tools/api_docs.py [--out docs/api]``.

pdoc (``pip install -e .[docs]``) renders every module of ``cimsim`` and ``training`` to HTML in
``--out`` (open ``index.html``). Any warning pdoc raises (an annotation it cannot resolve, a
docstring it cannot parse) is printed and the command exits 1, so the reference stays whole.
Exit 2: pdoc missing or ``--out`` unusable.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build(out: Path) -> list[str]:
    """Render the reference into ``out``; returns pdoc's warnings (empty: a clean build)."""
    import pkgutil

    import pdoc

    sys.path.insert(0, str(REPO))
    # the two packages bring their submodules, except those a package's __all__ leaves out
    # (cimsim.nn re-exports its classes): name those too
    names = ["cimsim", "training"]
    for pkg in names[:]:
        for m in pkgutil.walk_packages([str(REPO / pkg)], prefix=f"{pkg}."):
            parent, _, leaf = m.name.rpartition(".")
            public = getattr(importlib.import_module(parent), "__all__", None)
            if public is not None and leaf not in public and not leaf.startswith("_"):
                names.append(m.name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*names, output_directory=out)
    return [f"{w.category.__name__}: {w.message}" for w in caught]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python tools/api_docs.py", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "api"), help="output folder (default docs/api)")
    a = ap.parse_args(argv)
    try:
        import pdoc  # noqa: F401
    except ImportError:
        print("api_docs: error: pdoc is not installed (pip install -e .[docs])", file=sys.stderr)
        return 2
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        print(f"api_docs: error: --out {out}: is a file, not a folder", file=sys.stderr)
        return 2
    problems = build(out)
    for p in problems:
        print(f"api_docs: {p}", file=sys.stderr)
    print(f"api_docs: wrote {out / 'index.html'}" + (f" with {len(problems)} warning(s)" if problems else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())

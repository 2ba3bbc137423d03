"""Writing result files all-or-nothing: a temporary file in the same folder, then a rename.

A command that fails half-way leaves no partial output behind; a reader never sees a
half-written file.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping


def write_outputs(files: Mapping[Path, bytes | str]) -> None:
    """Write all files or none: each to a temporary file in its folder, then rename them all."""
    temps: list[tuple[str, Path]] = []
    umask = os.umask(0)
    os.umask(umask)
    try:
        for path, data in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data.encode() if isinstance(data, str) else data)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the outputs private
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`write_outputs`)."""
    write_outputs({Path(path): text})

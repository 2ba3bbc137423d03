"""Writing result files all-or-nothing: temporary files in the target folders, then renames.

A command that fails half-way leaves no partial output behind; a reader never sees a
half-written file. :func:`check_outputs` tells before any work whether the targets can be
written; :func:`write_outputs` writes them all or none: when one cannot be written the others
keep (or get back) their previous contents, and folders it created are removed again. Errors
are :class:`OutputError`, whose message is one line naming the target (not a temporary file).
"""
from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Mapping


class OutputError(OSError):
    """An output that cannot be written; ``str()`` is one line naming the target path."""

    def __str__(self) -> str:
        return f"{self.filename}: cannot write: {self.strerror}"


def _error(e: OSError, path: Path) -> OutputError:
    """``e`` re-aimed at the target ``path`` (an OS error names the temporary file or the folder)."""
    if isinstance(e, OutputError):
        return e
    return OutputError(e.errno or errno.EIO, e.strerror or str(e), str(path))


def check_outputs(paths: Iterable[str | os.PathLike]) -> None:
    """Raise :class:`OutputError` unless every path can be written as a file.

    Refused: a path that is a directory, a path given twice, a path whose nearest existing
    ancestor folder is not a directory or not writable.
    """
    seen: dict[str, Path] = {}
    for p in map(Path, paths):
        key = os.path.realpath(p)
        if key in seen:
            raise OutputError(errno.EINVAL, f"the same file as the output {seen[key]}", str(p))
        seen[key] = p
        if p.is_dir():
            raise OutputError(errno.EISDIR, "is a directory", str(p))
        _check_creatable(p.parent, p)


def check_output_folder(path: str | os.PathLike) -> None:
    """Raise :class:`OutputError` unless a folder is (or can be made) at ``path``: no file in the
    way, the nearest existing ancestor a writable folder."""
    p = Path(path)
    if os.path.lexists(p) and not p.is_dir():
        raise OutputError(errno.ENOTDIR, "is a file, not a folder", str(p))
    _check_creatable(p, p)


def _check_creatable(folder: Path, target: Path) -> None:
    """``folder`` exists as a writable folder or can be made in one (``target`` named in errors)."""
    anc = folder
    while not os.path.lexists(anc) and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise OutputError(errno.ENOTDIR, f"{anc} is not a directory", str(target))
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputError(errno.EACCES, f"folder {anc} is not writable", str(target))
    try:  # os.access says yes to root everywhere: try it (read-only mounts, /proc)
        os.rmdir(tempfile.mkdtemp(prefix=".cimsim-probe-", dir=anc))
    except OSError as e:
        raise OutputError(e.errno or errno.EACCES, f"cannot write in {anc} ({e.strerror})", str(target)) from None


def _make_parents(folder: Path, created: list[Path]) -> None:
    """Create ``folder`` and its missing ancestors, appending each one made to ``created``."""
    missing = []
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for d in reversed(missing):
        d.mkdir()
        created.append(d)


def _backup(path: Path) -> Path | None:
    """A second name (hard link, else a copy) for the existing file ``path``; ``None`` if none exists."""
    if not os.path.lexists(path):
        return None
    while True:
        bak = path.with_name(f".{path.name}.{secrets.token_hex(4)}.bak")
        try:
            os.link(path, bak, follow_symlinks=False)
            return bak
        except FileExistsError:
            continue
        except OSError:  # no hard links on this file system
            shutil.copy2(path, bak, follow_symlinks=False)
            return bak


def write_outputs(files: Mapping[str | os.PathLike, bytes | str]) -> None:
    """Write all files or none: each to a temporary file in its folder, then rename them all.

    Raises :class:`OutputError` naming the target at fault; then no target has changed and no
    folder created here is left behind.
    """
    items = [(Path(p), data.encode() if isinstance(data, str) else bytes(data)) for p, data in files.items()]
    check_outputs(p for p, _ in items)
    umask = os.umask(0)
    os.umask(umask)
    created: list[Path] = []  # folders made here, outermost first
    temps: list[tuple[str, Path]] = []  # (temporary file, target)
    backups: list[Path] = []
    placed: list[tuple[Path, Path | None]] = []  # (target renamed into place, backup of its old file)
    ok = False
    try:
        for path, data in items:
            try:
                _make_parents(path.parent, created)
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
                temps.append((tmp, path))
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the outputs private
            except OSError as e:
                raise _error(e, path) from None
        for tmp, path in temps:
            try:
                if path.is_dir():  # appeared since the check
                    raise OutputError(errno.EISDIR, "is a directory", str(path))
                bak = _backup(path)
                if bak is not None:
                    backups.append(bak)
                os.replace(tmp, path)
                placed.append((path, bak))
            except OSError as e:
                raise _error(e, path) from None
        ok = True
    finally:
        if not ok:  # put back what was there before
            for path, bak in reversed(placed):
                try:
                    if bak is None:
                        path.unlink()
                    else:
                        os.replace(bak, path)
                except OSError:
                    pass
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        for bak in backups:
            bak.unlink(missing_ok=True)
        if not ok:
            for d in reversed(created):
                try:
                    d.rmdir()
                except OSError:
                    pass


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`write_outputs`)."""
    write_outputs({Path(path): text})


def parse_json_object(text: str, what: str, error: type[Exception]) -> dict:
    """``text`` parsed as one JSON object (a config of fields); ``error`` naming ``what`` otherwise."""
    import json

    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"cannot parse the {what} JSON: {e}") from None
    if not isinstance(d, dict):
        raise error(f"a {what} is a JSON object of fields, got {type(d).__name__}")
    return d


class _DuplicateKey(Exception):
    """A JSON object with the same key twice (``json.loads`` would keep the last silently)."""


def _unique_keys(pairs: list) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def read_table(path: str | os.PathLike, what: str, error: type[Exception], check_table: bool = True) -> dict:
    """The fields of a config file: TOML for a ``.toml`` suffix, JSON otherwise (UTF-8, a byte-order
    mark allowed; a JSON key twice in one object is refused, as TOML refuses it). Anything else
    raises ``error`` with one line naming the file and ``what`` it should have been
    (``check_table=False``: any JSON value is returned, for a caller with its own message)."""
    import json
    import tomllib

    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise error(f"{path}: cannot read the {what} file: it is a directory") from None
    except OSError as e:
        raise error(f"{path}: cannot read the {what} file ({e.strerror or e})") from None
    bad = f"{path}: cannot parse the {what}"
    try:
        text = raw.decode("utf-8-sig")
        d = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text, object_pairs_hook=_unique_keys)
    except UnicodeDecodeError as e:
        raise error(f"{bad}: not a text file (not UTF-8 at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise error(f"{bad}: {e}") from None
    except json.JSONDecodeError as e:
        raise error(f"{bad}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except _DuplicateKey as e:
        raise error(f"{bad}: the key {e.args[0]!r} appears twice in one JSON object") from None
    except RecursionError:
        raise error(f"{bad}: nested too deeply") from None
    if check_table and not isinstance(d, dict):
        raise error(f"{path}: a {what} is a table of fields, got {type(d).__name__}")
    return d

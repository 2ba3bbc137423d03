"""A run folder on disk: its marker, its lock, and what may be replaced or written.

* Marker: every run folder :func:`training.train.run` makes holds ``.cimsim-run`` (JSON: what
  wrote it). ``--overwrite`` replaces only a folder with that marker and nothing but the files a
  run writes (:data:`RUN_FILES`); anything else is refused, never deleted.
* Lock: a process writing a run holds an exclusive ``flock`` on ``<folder>/.lock`` (which names
  its pid); a second writer (``--resume`` of a folder another process is training into, a rerun
  of a sweep racing a surviving worker) gets :class:`RunFolderError` instead of a corrupt folder.
  The kernel drops the lock when the holder dies, even by ``kill -9``.
* Output paths: :func:`check_output_file` / :func:`check_output_dir` say before any work whether a
  command can write where it was told to.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path

from cimsim.io import OutputError, check_output_folder, check_outputs

MARKER = ".cimsim-run"
LOCK = ".lock"
#: names a finished (or diverged) training run writes into its folder
RUN_FILES = frozenset({MARKER, "config.json", "config.toml", "metrics.csv", "best.pt", "last.pt", "eval.json",
                       "chips.csv", "acc_hist.png", "diverged.json"})


class RunFolderError(ValueError):
    """A run folder or output path that cannot be used as asked (one line; CLIs exit with code 2)."""


def write_marker(folder: Path) -> None:
    (Path(folder) / MARKER).write_text(json.dumps({"written_by": "training.train", "version": 1}) + "\n")


def is_run_folder(folder: Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def check_replaceable(folder: Path) -> None:
    """Raise unless ``folder`` is a run folder holding only what a run writes (safe to replace)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunFolderError(f"{folder} exists and is not a folder; not overwriting it")
    if not is_run_folder(folder):
        raise RunFolderError(f"{folder} is not a run folder written by training.train (no {MARKER}); not overwriting it")
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in RUN_FILES)
    if foreign:
        raise RunFolderError(f"{folder} holds {foreign[0]!r}, which a training run does not write; "
                             "move it out or choose another --out (not overwriting it)")


class RunLock:
    """Exclusive lock of a folder being written (``with RunLock(folder): ...`` or acquire/release)."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise _busy(self.path.parent) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self, remove: bool = True) -> None:
        """Drop the lock (and, with ``remove``, its file: a finished folder keeps no ``.lock``)."""
        if self.fd is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_folder(folder: Path, error) -> RunLock:
    """``folder``'s lock, acquired; ``error(e)`` is raised instead when another process holds it.
    Release it with ``remove=False``: unlinking the file could let two later writers lock two files."""
    try:
        return RunLock(folder).acquire()
    except RunFolderError as e:
        raise error(e) from None


def _busy(folder: Path) -> RunFolderError:
    try:
        pid = (folder / LOCK).read_text().strip()
    except OSError:
        pid = ""
    note = f" (pid {pid})" if pid.isdigit() else ""
    return RunFolderError(f"{folder} is being written by another process{note}; wait for it to finish or stop it")


def check_not_locked(folder: Path) -> None:
    """Raise :class:`RunFolderError` (naming the holder's pid) when another process writes ``folder``."""
    if locked_by_other(folder):
        raise _busy(Path(folder))


def locked_by_other(folder: Path) -> bool:
    """Whether another live process holds ``folder``'s lock (a folder nobody writes may be cleaned up)."""
    path = Path(folder) / LOCK
    if not path.exists():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's lock
    return False


def check_output_dir(path: Path, option: str = "--out") -> None:
    """:func:`cimsim.io.check_output_folder` with the option named (:class:`RunFolderError`)."""
    try:
        check_output_folder(path)
    except OutputError as e:
        raise RunFolderError(f"{option} {e}") from None


def check_output_file(path: Path, option: str = "--out") -> None:
    """:func:`cimsim.io.check_outputs` of one file with the option named (:class:`RunFolderError`)."""
    try:
        check_outputs([path])
    except OutputError as e:
        raise RunFolderError(f"{option} {e}") from None

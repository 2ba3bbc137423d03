"""What every ``python -m training.*`` command shares: the one-line usage error (exit 2), the
argparse front end, one ``--field`` option per :class:`training.run_config.RunConfig` field, and the
torch device a ``torch_device`` setting names."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing

import torch

from .run_config import FIELD_HELP, RunConfig

EXIT_USAGE = 2


class UsageError(RuntimeError):
    """Bad option or missing file (one line; the CLI exits with code 2)."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line and exits with code 2."""

    def error(self, message: str) -> typing.NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def field_type(f: dataclasses.Field):
    """The option parser of a :class:`RunConfig` field: its type, a comma list for tuples, a bool word."""
    hint = typing.get_type_hints(RunConfig)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if isinstance(hint, types.UnionType) and args else hint
    if typing.get_origin(base) is tuple:
        return lambda s: tuple(float(v) for v in s.split(",") if v.strip())
    if base is bool:
        return parse_bool
    return base


def parse_bool(s: str) -> bool:
    """``true/false``, ``yes/no``, ``on/off``, ``1/0`` (any case) as a bool option value."""
    v = s.strip().lower()
    if v in ("true", "yes", "on", "1"):
        return True
    if v in ("false", "no", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def add_config_args(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One ``--field-name`` option per :class:`RunConfig` field (default: the config's)."""
    p.add_argument("--config", help="JSON or TOML config file; options given here override it")
    for f in dataclasses.fields(RunConfig):
        if f.name in skip:
            continue
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=field_type(f), default=None,
                       help=f"{FIELD_HELP.get(f.name, 'see training.run_config.RunConfig')} (default {f.default!r})")


def config_from_args(ns: argparse.Namespace, skip: tuple[str, ...] = ()) -> RunConfig:
    """The config file given by ``--config`` (or the defaults) with the options given applied."""
    base = RunConfig.load(ns.config) if ns.config else RunConfig()
    changes = {f.name: getattr(ns, f.name) for f in dataclasses.fields(RunConfig)
               if f.name not in skip and getattr(ns, f.name, None) is not None}
    return base.replace(**changes)


def resolve_torch_device(name: str) -> torch.device:
    """The torch device of a ``torch_device`` setting (``auto``: CUDA when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("torch_device 'cuda' asked for but no CUDA device is available")
    return torch.device(name)

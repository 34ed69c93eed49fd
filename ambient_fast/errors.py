"""Errors the user can act on, and the checks of the command line's outputs (ambient_fast.cli.main has the rule).

UserError is raised by the command line layer, and by the library where it reads or validates what the user gave
(a dataset path, an annotation file, data that leaves no usable noise level...). It is a ValueError, so code that
catches ValueError from those functions keeps working.
"""
from __future__ import annotations

import contextlib
import os
import zipfile
from pathlib import Path


class UserError(ValueError):
    """A problem with what the user gave (a path, a value, a file's content, a refused resume) that the user can fix:
    `ambient-fast` prints it as one "error: ..." line on stderr and exits with status 2, without a traceback. The
    message names the problem and what to do about it."""


@contextlib.contextmanager
def user_input(what: str = "", *errors: type[BaseException], hint: str = ""):
    """Within: `errors` (default: ValueError) raised while reading or validating what the user gave become a
    UserError "<what>: <message>[; <hint>]". `what` is the option and its value ("--scores s.npy"); the value is
    left out when the message names it already. An empty or truncated .npy / .npz (numpy: EOFError, BadZipFile) is
    named as such, and a RuntimeError (torch's loaders) keeps its first sentence. Wrap only the call that reads or
    checks the input, never the work done with it: a ValueError from that work is a bug and keeps its traceback."""
    try:
        yield
    except UserError:
        raise
    except (errors or (ValueError,)) as error:
        message = str(error).strip() or type(error).__name__
        if isinstance(error, (EOFError, zipfile.BadZipFile)):
            message = f"the file is empty or truncated ({message})"
        if isinstance(error, RuntimeError):
            message = message.splitlines()[0].split(". ")[0]
        option, _, value = what.partition(" ")
        prefix = option if value and value in message else what
        raise UserError((f"{prefix}: " if prefix else "") + message + (f"; {hint}" if hint else "")) from error


def check_writable(path: str | Path, what: str, *, folder: bool = False) -> Path:
    """`path` as an output of a command, checked before any work and without creating anything: refused when it is
    a folder but a file is expected (or the reverse), when a folder on its way is a file, or when the nearest
    existing folder cannot be written. Returns it as a Path."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind = "a file" if folder else "a folder"
        raise UserError(f"{what} {path} is {kind}; give a {'folder' if folder else 'file'} path")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{what} {path}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: {parent} cannot be written (permission denied or read-only file system); "
                        "choose another path")
    return path


def device_arg(text: str) -> str:
    """argparse type of --device: a torch device this machine has (checked before any work), kept as text."""
    import argparse

    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected a torch device such as cpu, cuda or cuda:1, got {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def positive_int(text: str) -> int:
    """argparse type of a count that must be >= 1."""
    return _int_at_least(text, 1, "a positive integer")


def nonnegative_int(text: str) -> int:
    """argparse type of a count that may be 0 (e.g. threads: 0 = unchanged)."""
    return _int_at_least(text, 0, "an integer >= 0")


def _int_at_least(text: str, low: int, what: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_floats(text: str) -> list[float]:
    """argparse type of comma-separated finite values > 0 (noise levels)."""
    import argparse
    import math

    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated finite values > 0, got {text!r}")
    return values

"""`ambient-fast` command line: one subcommand per step of the pipeline.

Each area of the package contributes its subcommands through a `register(subparsers)` function listed in
SUBCOMMAND_MODULES, so that this file stays a dispatcher and the areas stay independent. Errors the user can act on
end in one "error: ..." line and exit status 2 (see `main`); `--debug` shows their traceback as well.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import errno
import importlib
import os
import sys
import traceback
import warnings
from pathlib import Path

from .errors import UserError

# Modules that define register(subparsers); each subcommand sets `func` (args -> int exit code).
SUBCOMMAND_MODULES = ("ambient_fast.info", "ambient_fast.train.cli", "ambient_fast.experiments.cli", "ambient_fast.annotate.cli")
USER_ERROR_STATUS = 2

# What to do about an OSError, by errno (the message already names the path and the problem).
_OS_HINTS = {
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a folder in the path is a file: choose another path",
    errno.EISDIR: "expected a file, found a folder",
    errno.EEXIST: "choose another path or remove it",
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "the file system is read-only: choose another path",
    errno.ENOSPC: "free some space or choose another disk, then rerun",
    errno.EDQUOT: "free some space or choose another disk, then rerun",
}


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with "(default: ...)", unless its help already says what the default is (it
    contains "default"), it is a flag, or it has no default (None, [], suppressed): the help then says what happens
    without it."""

    def _format_action(self, action):
        text = _default_text(action)
        if text is not None and "default" not in (action.help or "").lower() and action.help != argparse.SUPPRESS:
            action = copy.copy(action)
            action.help = f"{action.help or ''} (default: {text.replace('%', '%%')})".lstrip()
        return super()._format_action(action)


def _default_text(action) -> str | None:
    default = action.default
    if action.nargs == 0 or default is None or default is argparse.SUPPRESS or isinstance(default, bool):
        return None  # flags (store_true, --help) and options without a default
    if isinstance(default, (list, tuple)):
        return ",".join(str(v) for v in default) if default else None
    return str(default)


class Parser(argparse.ArgumentParser):
    """The parser of `ambient-fast` and (through add_subparsers, which reuses the parent's class) of every
    subcommand: defaults shown in --help, `--debug` accepted anywhere, and a usage error raised as a UserError (one
    line, status 2) instead of argparse's usage block."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help="on an error, show its traceback (default: one line naming the problem)")

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ambient-fast", description="Ambient Diffusion Omni: annotate, train, sample and evaluate.")
    parser.set_defaults(debug=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types main() reports as one line: see main."""
    from .annotations import AnnotationMismatchError
    from .data.dataset import CorruptSampleError, UnsafeNameError
    from .train.checkpoint import CorruptCheckpointError
    from .train.config import ConfigError

    return (UserError, OSError, AnnotationMismatchError, ConfigError, CorruptCheckpointError, CorruptSampleError,
            UnsafeNameError)


def error_line(error: BaseException) -> str:
    """The one line printed for a user error: "error: <problem>; <what to do>"."""
    if isinstance(error, OSError) and error.strerror and (error.filename or error.filename2):
        paths = " -> ".join(str(p) for p in (error.filename, error.filename2) if p)
        hint = _OS_HINTS.get(error.errno)
        message = f"{paths}: {error.strerror}" + (f" ({hint})" if hint else "")
    else:
        message = str(error) or type(error).__name__
    return "error: " + " ".join(message.split())  # one line, whatever the message holds


@contextlib.contextmanager
def _no_empty_folders_left(args: argparse.Namespace):
    """On an error, remove the folders that the command created on the way to a path it was given (any string
    argument that named no existing path: --out, --run-dir, ...) when they hold no file: only empty folders made
    by this command go, never a file or a folder that was there before."""
    values = [v for value in vars(args).values() for v in (value if isinstance(value, list) else [value])]
    new_tops = set()
    for value in values:
        if not isinstance(value, str) or not value or "\0" in value:
            continue
        path, top = Path(os.path.abspath(value)), None
        while not path.exists() and path != path.parent:
            top, path = path, path.parent
        if top is not None:
            new_tops.add(top)
    try:
        yield
    except BaseException:
        for top in new_tops:
            if top.is_dir() and not top.is_symlink() and not any(p.is_file() or p.is_symlink() for p in top.rglob("*")):
                with contextlib.suppress(OSError):
                    for folder in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                        folder.rmdir()
                    top.rmdir()
        raise


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit status: 0 done, 2 user error (below); --help returns 0. It never raises
    SystemExit, so tests call it directly: `assert cli.main([...]) == 2` and read the line from stderr.

    The rule for errors: an exception is a *user error* when the user can fix it without changing the code:
      - UserError (ambient_fast.errors): raised by the command line layer (a bad value or combination of options,
        a refused overwrite, an input that does not fit another) and by the library where it reads or validates
        what the user gave (a path that is no dataset, an unreadable annotation file, annotations that leave a
        noise level without data, a run directory trained with other annotations); the command line turns the
        ValueErrors of a loader into UserError around that call only (ambient_fast.errors.user_input). argparse's
        usage errors are UserErrors too (Parser.error);
      - OSError: a missing or unreadable path, a path under a file, no permission, a full disk;
      - the library's documented input errors: AnnotationMismatchError (annotations that do not describe the
        dataset), ConfigError (a config field of the wrong type, or a refused resume with another config),
        CorruptCheckpointError (unreadable checkpoints), CorruptSampleError (an undecodable dataset file),
        UnsafeNameError (a zip member outside the dataset).
    A user error prints one line "error: <the problem; what to do>" on stderr (a message is folded onto one line)
    and returns 2; with --debug its traceback comes first. Anything else (a bare ValueError, TypeError,
    RuntimeError, KeyError...) is a bug, or an input problem not yet caught where the input is read: it propagates
    with its traceback (exit status 1 from the interpreter), so that it is never hidden.

    Whatever the error, the folders the command created and left without a file are removed (_no_empty_folders_left):
    a failed command leaves no empty output folder behind. Warnings are one "warning: ..." line each on stderr;
    progress goes to stdout or stderr, never on a line starting with "error:".
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    with warnings.catch_warnings():  # restores the process's warning display on return
        warnings.showwarning = _one_line_warning
        return _run(argv)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning during a command: one "warning: ..." line on stderr (no source line), beside the progress."""
    print("warning: " + " ".join(str(message).split()), file=sys.stderr, flush=True)


def _run(argv: list[str]) -> int:
    args = None
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit_:  # --help: argparse printed it
            return int(exit_.code or 0)
        if not getattr(args, "func", None):
            parser.print_help()
            return USER_ERROR_STATUS
        with _no_empty_folders_left(args):
            return int(args.func(args) or 0)
    except user_errors() as error:
        if getattr(args, "debug", False) or (args is None and "--debug" in argv):
            traceback.print_exc()
        print(error_line(error), file=sys.stderr, flush=True)
        return USER_ERROR_STATUS


if __name__ == "__main__":
    sys.exit(main())

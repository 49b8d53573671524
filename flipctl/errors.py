"""User errors become one line and exit code 2; anything else is a bug and keeps its traceback.

A user error is a `flip.errors.FlipError` (bad settings, data or checkpoints), or an `OSError`
about a file the user named (a directory given for a file, a file for a directory). A training run
stopped by a fault (`flip.train.faults.TrainingStopped`: a non-finite loss, a failed write, too
much bad data) is one line too, with its own exit code. Any other exception, a plain
`ValueError` included, propagates: Typer (pretty exceptions off) prints its traceback and
exits with code 1.

A `ConfigError` with a `key` is named as the user gave the setting: `--mask-ratio` by
default, or `mask_ratio (in run.toml)` inside `settings_from_file(...)` for the keys that
a TOML file set.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path
from typing import Collection, Iterator

import click
import typer

from flip.errors import ConfigError, FlipError
from flip.train.faults import TrainingStopped


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def flag(key: str) -> str:
    """The command-line flag of a setting: `mask_ratio` -> `--mask-ratio`."""
    return "--" + key.replace("_", "-")


def setting_name(key: str, file_keys: Collection[str] = (), file: str | Path | None = None) -> str:
    """A setting as the user gave it: its TOML key (and file) if the file set it, else its flag."""
    if key in file_keys:
        return f"{key} (in {file})" if file is not None else key
    return flag(key)


@contextlib.contextmanager
def settings_from_file(file: str | Path | None, file_keys: Collection[str]) -> Iterator[None]:
    """Inside, a `ConfigError` about one of `file_keys` names it as a key of `file`, not as a flag."""
    try:
        yield
    except ConfigError as exc:
        if exc.key is not None and exc.setting is None:
            exc.setting = setting_name(exc.key, file_keys, file)
        if exc.other is not None and exc.other_setting is None:
            exc.other_setting = setting_name(exc.other, file_keys, file)
        raise


def error_line(exc: FlipError) -> str:
    """The one line shown for a user error."""
    if isinstance(exc, ConfigError) and exc.key is not None:
        return exc.text(exc.setting or flag(exc.key), exc.other_setting or (exc.other and flag(exc.other)))
    return _user_error_line(str(exc)) or str(exc).strip() or type(exc).__name__


def _user_error_line(text: str) -> str | None:
    """The message of a user error, also when `text` is a DataLoader worker's report of one.

    A worker's exception reaches the main process re-raised with the worker's traceback as
    its message, whose last line is `flip.errors.DataError: message`. None if the last
    line names another exception type.
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    head, sep, tail = lines[-1].partition(": ")
    if sep and " " not in head and "." in head:  # `module.Type: message`
        return tail if head.rsplit(".", 1)[-1] in _user_error_names() else None
    return lines[-1] if len(lines) == 1 else None


def _user_error_names() -> set[str]:
    pending, names = [FlipError], set()
    while pending:
        cls = pending.pop()
        names.add(cls.__name__)
        pending.extend(cls.__subclasses__())
    return names


def user_errors(fn):
    """Run a command; a user error becomes `error: ...` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FlipError as exc:
            fail(error_line(exc))
        except TrainingStopped as exc:  # a fault stopped a run; its message names the checkpoint it kept
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except RuntimeError as exc:  # a worker's user error that could not be re-raised as its own type
            text = _user_error_line(str(exc)) if "DataLoader worker" in str(exc) else None
            if text is None:
                raise
            fail(text)
        except OSError as exc:  # a file the user named: missing, a directory, unwritable, a full disk
            if exc.filename is None:
                raise
            fail(f"{exc.filename}: {exc.strerror or exc}")
        except KeyboardInterrupt:  # a second Ctrl-C (the first is a polite stop where a command has one)
            ctx = click.get_current_context(silent=True)
            again = " (`flipctl train --resume --out RUN` continues a run from its last checkpoint)" \
                if ctx is not None and ctx.info_name in ("train", "tune-unmasked") else ""
            typer.echo(f"interrupted{again}", err=True)
            sys.exit(130)

    return wrapper

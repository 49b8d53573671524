"""Turning library errors into one-line messages and exit code 2."""

from __future__ import annotations

import functools
import sys

import typer

from flip.data.shards import DataError
from flip.train.checkpoint import CheckpointError
from flip.train.config import ConfigError

USER_ERRORS = (ConfigError, DataError, CheckpointError, FileNotFoundError, ValueError)


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _one_line(exc: BaseException) -> str:
    # Errors raised in DataLoader workers arrive with the worker's traceback in the message:
    # its last line holds the original error.
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    line = lines[-1] if lines else type(exc).__name__
    head, sep, tail = line.partition(": ")
    return tail if sep and "." in head and " " not in head else line


def user_errors(fn):
    """Run a command; a bad-input error becomes `error: ...` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            fail(_one_line(exc))
        except RuntimeError as exc:  # data-worker failures surface as RuntimeError with the cause inside
            if "DataLoader worker" in str(exc) or "DataError" in str(exc):
                fail(_one_line(exc))
            raise
        except KeyboardInterrupt:
            typer.echo("interrupted: rerun with --resume to continue from the last checkpoint", err=True)
            sys.exit(130)

    return wrapper

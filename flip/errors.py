"""The errors a user can fix: bad settings, unusable data, unreadable checkpoints.

Each is a `FlipError`, whose message is written for the user; the command line prints
it as one line and exits with code 2. Anything else that escapes is a bug and keeps its
traceback. Each also subclasses `ValueError`, so code written as `except ValueError`
keeps working.
"""

from __future__ import annotations


class FlipError(Exception):
    """A problem with what the user asked for; the message says what and how to fix it."""


class ConfigError(FlipError, ValueError):
    """A setting is invalid.

    With `key` (the setting's field name, e.g. `mask_ratio`) the message is what follows
    the setting's name: `ConfigError("must be in [0, 1), got 1.0", key="mask_ratio")`
    reads `mask_ratio must be in [0, 1), got 1.0`, and the command line names the
    setting as the user gave it instead (`--mask-ratio`, or `mask_ratio (in run.toml)`).
    """

    def __init__(self, message: str, key: str | None = None):
        self.detail, self.key = message, key
        self.setting: str | None = None  # the key as the user wrote it, when a front end knows
        super().__init__(f"{key} {message}" if key else message)

    def __reduce__(self):  # pickling (e.g. across processes) keeps the key
        return type(self), (self.detail, self.key)


class DataError(FlipError, ValueError):
    """The data a user pointed at cannot be used; the message says why and what to do."""


class CheckpointError(FlipError, ValueError):
    """A checkpoint cannot be read or does not fit the model asked for."""

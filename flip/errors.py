"""The errors a user can fix: bad settings, unusable data, unreadable checkpoints.

Each is a `FlipError`, whose message is written for the user; the command line prints
it as one line and exits with code 2. Anything else that escapes is a bug and keeps its
traceback. Each also subclasses `ValueError`, so code written as `except ValueError`
keeps working.

`WriteError` is not the user's input but the machine's: a write that failed. It is an `OSError`, as
a failed write is wherever the writer lets one through, so one `except OSError` catches every
failed write.
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

    With `other` (a second setting's field name), `{other}` in the message stands for it, so a
    rule between two settings names both as the user gave them:
    `ConfigError("drops nothing at {other} 0", key="text_mask", other="text_mask_ratio")`.
    """

    def __init__(self, message: str, key: str | None = None, other: str | None = None):
        self.detail, self.key, self.other = message, key, other
        self.setting: str | None = None  # the key as the user wrote it, when a front end knows
        self.other_setting: str | None = None  # the same for `other`
        super().__init__(self.text(key, other))

    def text(self, name: str | None, other_name: str | None) -> str:
        """The message with the settings named `name` and `other_name`."""
        detail = self.detail.replace("{other}", other_name) if self.other else self.detail
        return f"{name} {detail}" if name else detail

    def __reduce__(self):  # pickling (e.g. across processes) keeps the keys
        return type(self), (self.detail, self.key, self.other)


class DataError(FlipError, ValueError):
    """The data a user pointed at cannot be used; the message says why and what to do."""


class CheckpointError(FlipError, ValueError):
    """A checkpoint cannot be read or does not fit the model asked for."""


class WriteError(OSError):
    """A file could not be written (a full disk, a quota, a vanished mount), reported by a writer that
    says so in an exception of its own (safetensors' `SafetensorError`): raised where the write fails,
    from that exception, so callers recognise a failed write by its type. The reason is its `strerror`.

    Writers that report a failed write as an `OSError` raise that; catch `OSError` to catch both.
    """

    @classmethod
    def from_error(cls, exc: BaseException) -> "WriteError":
        lines = str(exc).strip().splitlines()
        return cls(None, lines[-1] if lines else type(exc).__name__)

    def __str__(self) -> str:
        return self.strerror

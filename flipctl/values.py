"""List values on the command line: one syntax for every command, comma-separated (`--mask-ratios 0,0.5`)."""

from __future__ import annotations

from flip.errors import ConfigError


def parse_floats(text: str, key: str) -> tuple[float, ...]:
    """`"0,0.5,0.75"` -> (0.0, 0.5, 0.75); anything else is a ConfigError naming the setting `key`."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"must be numbers separated by commas, e.g. 0,0.5,0.75; got {text!r}", key=key) from None

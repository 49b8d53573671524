"""The rich console a command prints its tables and messages with.

On a terminal rich fits its output to the window. Anywhere else - a file, a pipe, a log under
SLURM, CI or nohup - it would squeeze tables to 80 columns and cut their numbers (`128.…`), so
there a line may be as long as its content needs: tables print whole, at their natural width
(rich pads nothing to the console's width), and a script can read every number.
"""

from __future__ import annotations

from rich.console import Console

OFF_TERMINAL_WIDTH = 100_000  # "unbounded": wider than any table; nothing is padded to it


def make_console(*, stderr: bool = False) -> Console:
    console = Console(stderr=stderr)
    if console.is_terminal:
        return console
    return Console(stderr=stderr, width=OFF_TERMINAL_WIDTH)

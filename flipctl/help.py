"""How `--help` is laid out, for every command: the same on a terminal, in a pipe and in a log.

Typer's own layout gives each option six columns (flag, short flag, `--no-` flag, short `--no-`
flag, type, help); at 80 columns the help column of `flipctl train` was 18 characters wide and flag
names were cut (`--activation-che…`). Here an option is two columns: its names, each whole on its
own line (`--compile` over `--no-compile`) with what goes there (`--data SHARDS`), and its help,
ending in its default said one way (`Default: X.`). When even that leaves the help too narrow, the
help goes under the names. Options are grouped in the panels their declarations name
(`rich_help_panel`; for `flipctl train`, each knob's `panel`).

Width: the terminal's (at most 120 columns, for reading); off a terminal, `COLUMNS` when set, else
100, so that a pipe or a log gets the whole help, never cut to a terminal it does not have.
"""

from __future__ import annotations

import enum
import inspect
import os
import typing
from pathlib import PurePath

import typer.core
from rich import box
from rich.console import Console, Group
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

OFF_TERMINAL_WIDTH = 100
MAX_TERMINAL_WIDTH = 120
NARROWEST_HELP = 30  # below this, an option's help goes under its names
OPTIONS_PANEL = "Options"


def help_console() -> Console:
    probe = Console()
    if probe.is_terminal:
        return Console(width=min(probe.width, MAX_TERMINAL_WIDTH), highlight=False)
    columns = os.environ.get("COLUMNS", "")
    width = int(columns) if columns.isdigit() and int(columns) > 0 else OFF_TERMINAL_WIDTH
    return Console(width=width, highlight=False, color_system=None)


# -- one parameter --------------------------------------------------------------------------------------
def _annotation(param) -> typing.Any:
    descriptor = getattr(param, "type_descriptor", None)  # typer >= 0.17 keeps the annotation
    if descriptor is not None:
        hint = descriptor.annotation
        return typing.get_args(hint)[0] if typing.get_origin(hint) in (list, tuple) else hint
    return {"integer": int, "float": float, "path": PurePath, "boolean": bool}.get(
        getattr(getattr(param, "type", None), "name", ""), str)


def _choices(param) -> list[str] | None:
    descriptor = getattr(param, "type_descriptor", None)
    choices = getattr(descriptor, "choices", None) or getattr(getattr(param, "type", None), "choices", None)
    if not choices:
        hint = _annotation(param)
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            choices = list(hint)
    return [c.value if isinstance(c, enum.Enum) else str(c) for c in choices] if choices else None


def is_switch(param) -> bool:
    """A flag that takes no value (`--dry-run`, `--compile/--no-compile`)."""
    return bool(getattr(param, "is_flag", False)) or getattr(param, "count", False)


def metavar(param) -> str:
    """What goes after the flag: the declared metavar, else the choices, else a name for the kind of value."""
    if param.metavar:
        return param.metavar
    if is_switch(param):
        return ""
    choices = _choices(param)
    if choices:
        return "|".join(choices)
    hint = _annotation(param)
    name = {int: "N", float: "X"}.get(hint) or ("PATH" if isinstance(hint, type) and issubclass(hint, PurePath)
                                                else "TEXT")
    return f"{name},..." if getattr(param, "multiple", False) else name


def default_text(param) -> str | None:
    """The default as help shows it, or None when there is none to show (a switch that is off, "not given")."""
    if isinstance(param.show_default, str):
        return param.show_default
    if param.show_default is False or callable(param.default):
        return None
    value = param.default
    if value is None or value == () or value == [] or (is_switch(param) and not param.secondary_opts
                                                       and not value):
        return None
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def option_help(param) -> str:
    """An option's help with its default, said one way: `... Default: X.` (unless the help says it)."""
    text = " ".join((param.help or "").split())
    if text and text[-1] not in ".!?":
        text += "."
    default = default_text(param)
    if default is not None and "Default:" not in text:
        text = f"{text} Default: {default}." if text else f"Default: {default}."
    if param.required and param.param_type_name == "option":
        text = f"{text} Required." if text else "Required."
    return text


def name_lines(param) -> list[tuple[str, str]]:
    """The option's names and metavar as (text, kind) lines: each flag name whole on its own line."""
    if param.param_type_name == "argument":
        return [(_argument_name(param), "argument")]
    opts = sorted(param.opts, key=lambda o: (o.startswith("--"), o))  # -h before --help
    lines = [(", ".join(opts), "flag")]
    meta = metavar(param)
    if meta:
        lines.append((meta, "metavar"))
    lines += [(name, "negative") for name in param.secondary_opts]
    return lines


def _argument_name(param) -> str:
    return param.metavar or param.name.upper()


# -- a whole command ------------------------------------------------------------------------------------
def usage_pieces(command) -> list[str]:
    """What follows the command in its usage line: no hidden argument, no placeholder."""
    pieces = ["[OPTIONS]"]
    for param in command.params:
        if param.param_type_name == "argument" and not getattr(param, "hidden", False):
            name = _argument_name(param)
            pieces.append(name if param.required else f"[{name}]")
    if isinstance(command, typer.core.TyperGroup):
        pieces.append("COMMAND [ARGS]...")
    return pieces


def usage(command, ctx) -> str:
    return f"Usage: {ctx.command_path} {' '.join(usage_pieces(command))}"


def summary(text: str | None) -> str:
    """A command's one-line summary: its help's first paragraph, on one line."""
    return " ".join((text or "").strip().split("\n\n")[0].split())


def _paragraphs(text: str | None) -> list[str]:
    return [" ".join(p.split()) for p in inspect.cleandoc(text or "").split("\n\n") if p.strip()]


def _panels(command, ctx) -> dict[str, list]:
    params = [p for p in command.get_params(ctx) if not getattr(p, "hidden", False)]
    panels: dict[str, list] = {"Arguments": [p for p in params if p.param_type_name == "argument"],
                               OPTIONS_PANEL: []}
    for p in params:
        if p.param_type_name == "option":
            panels.setdefault(getattr(p, "rich_help_panel", None) or OPTIONS_PANEL, []).append(p)
    return {name: ps for name, ps in panels.items() if ps}


def _names_cell(lines: list[tuple[str, str]], width: int) -> Text:
    styles = {"flag": "bold cyan", "negative": "bold magenta", "metavar": "yellow", "argument": "bold yellow"}
    text = Text(no_wrap=True, overflow="fold")
    joined: list[tuple[str, str]] = []
    for line, kind in lines:  # a metavar joins its flag's line when both fit
        if kind == "metavar" and joined and joined[-1][1] == "flag" and len(joined[-1][0]) + 1 + len(line) <= width:
            joined[-1] = (joined[-1][0], "flag+" + line)
        else:
            joined.append((line, kind))
    for i, (line, kind) in enumerate(joined):
        if i:
            text.append("\n")
        if kind.startswith("flag+"):
            text.append(line, styles["flag"]).append(" " + kind[5:], styles["metavar"])
        else:
            text.append(("  " if kind == "metavar" and i else "") + line, styles[kind])
    return text


def _options_table(params: list, width: int) -> Table | Group:
    rows = [(name_lines(p), option_help(p)) for p in params]
    longest_name = max(len(line) + (2 if kind == "metavar" else 0) for lines, _ in rows for line, kind in lines)
    combined = max(len(lines[0][0]) + 1 + len(lines[1][0]) if len(lines) > 1 and lines[1][1] == "metavar"
                   else len(lines[0][0]) for lines, _ in rows)
    names_width = max(longest_name, min(combined, max(24, width // 3)))
    help_width = width - 4 - names_width - 2  # the panel's borders and padding, the gap
    if help_width < NARROWEST_HELP:  # too narrow for two columns: the help goes under the names
        items = []
        for lines, help_text in rows:
            items.append(_names_cell(lines, width - 4))
            if help_text:
                items.append(Padding(Text(help_text), (0, 0, 0, 4)))
        return Group(*items)
    table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 2, 0, 0), expand=True)
    table.add_column(width=names_width, no_wrap=True)
    table.add_column(ratio=1)
    for lines, help_text in rows:
        table.add_row(_names_cell(lines, names_width), Text(help_text))
    return table


def _commands_table(command, ctx) -> Table:
    table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 2, 0, 0), expand=True)
    subcommands = [(name, command.commands[name]) for name in command.list_commands(ctx)
                   if not command.commands[name].hidden]
    table.add_column(no_wrap=True, style="bold cyan", width=max(len(name) for name, _ in subcommands))
    table.add_column(ratio=1)
    for name, sub in subcommands:
        table.add_row(name, Text(summary(sub.short_help or sub.help)))
    return table


def render_help(command, ctx) -> str:
    console = help_console()
    width = console.width
    with console.capture() as captured:
        console.print(Text(usage(command, ctx), style="bold"), soft_wrap=False)
        for i, paragraph in enumerate(_paragraphs(command.help)):
            console.print()
            console.print(Text(paragraph, style="" if i == 0 else "dim"))
        console.print()
        for name, params in _panels(command, ctx).items():
            console.print(Panel(_options_table(params, width), title=name, title_align="left",
                                border_style="dim", box=box.ROUNDED))
        if isinstance(command, typer.core.TyperGroup) and command.commands:
            console.print(Panel(_commands_table(command, ctx), title="Commands", title_align="left",
                                border_style="dim", box=box.ROUNDED))
    return "\n".join(line.rstrip() for line in captured.get().splitlines()) + "\n"


class HelpCommand(typer.core.TyperCommand):
    """A command whose --help is laid out by `render_help`."""

    def format_help(self, ctx, formatter) -> None:
        formatter.write(render_help(self, ctx))

    def collect_usage_pieces(self, ctx) -> list[str]:  # usage errors: no hidden argument either
        return usage_pieces(self)


class HelpGroup(typer.core.TyperGroup):
    """A group (`flipctl`, `flipctl eval`, `flipctl data`) whose --help is laid out by `render_help`."""

    def format_help(self, ctx, formatter) -> None:
        formatter.write(render_help(self, ctx))

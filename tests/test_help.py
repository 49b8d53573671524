"""Every command's --help reads whole, at 80 columns on a terminal and off a terminal (a pipe, a log):
each flag name whole, each default said one way, no hidden argument or placeholder in the usage line,
every train and tune flag in a panel; and output a user copies or reads prints whole when piped."""

from __future__ import annotations

import dataclasses
import re

import pytest
import typer.main
from typer.testing import CliRunner

from flip.train.config import PANELS, TrainConfig
from flipctl.help import default_text
from flipctl.main import app

ANSI = re.compile(r"\x1b\[[0-9;]*m")
BORDER = "│"


def _commands(group, path=()):
    for name, command in group.commands.items():
        yield (*path, name), command
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))


COMMANDS = [((), typer.main.get_command(app)), *_commands(typer.main.get_command(app))]


def _help(args, terminal: bool, monkeypatch) -> str:
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    if terminal:  # rich takes a forced terminal's width from COLUMNS
        monkeypatch.setenv("FORCE_COLOR", "1")
        monkeypatch.setenv("COLUMNS", "80")
    result = CliRunner().invoke(app, [*args, "--help"], prog_name="flipctl")
    assert result.exit_code == 0, result.output
    return ANSI.sub("", result.output)


def _option_blocks(text: str, primary: set[str]) -> dict[str, str]:
    """The text shown for each option, by its first name: its rows in the panel, joined."""
    blocks, current = {}, None
    for line in text.splitlines():
        if not line.startswith(BORDER):
            current = None
            continue
        content = line.strip(BORDER).strip()
        first = content.split(" ", 1)[0].rstrip(",") if content else ""
        if line.startswith(BORDER + " -") and first in primary:  # names start a row; wrapped help is indented
            current = first
            blocks[current] = ""
        if current is not None:
            blocks[current] += " " + content
    return {name: " ".join(block.split()) for name, block in blocks.items()}


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal-80-columns", "piped"])
@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) or "flipctl" for p, _ in COMMANDS])
def test_help_shows_every_flag_whole_and_each_default_one_way(path, command, terminal, monkeypatch):
    text = _help(path, terminal, monkeypatch)
    width = 80 if terminal else 100
    assert max(len(line) for line in text.splitlines()) <= width
    usage = text.splitlines()[0]
    assert usage.startswith(f"Usage: {' '.join(('flipctl', *path))} [OPTIONS]")
    assert "{" not in usage and "[[" not in usage and "<bool>" not in text and "[default" not in text.lower()
    params = [p for p in command.params if not getattr(p, "hidden", False)]
    for hidden in (p for p in command.params if getattr(p, "hidden", False)):
        assert (hidden.metavar or hidden.name.upper()) not in usage
    options = [p for p in params if p.param_type_name == "option"]
    for name in (n for p in options for n in (*p.opts, *p.secondary_opts)):
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), f"{name} is not shown whole"
    primary = {sorted(p.opts, key=lambda o: (o.startswith("--"), o))[0] for p in options}
    blocks = _option_blocks(text, primary)
    for param in options:
        block = blocks[sorted(param.opts, key=lambda o: (o.startswith("--"), o))[0]]
        assert block.count("Default:") <= 1, block
        if default_text(param) is not None:
            assert f"Default: {default_text(param)}." in block, block


def test_train_and_tune_flags_sit_in_their_panels(monkeypatch):
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata["panel"] in PANELS, f"{f.name}: knob(..., panel=...) must name one of {PANELS}"
    for args, panels in ((["train"], [*PANELS, "Launch"]),
                         (["tune-unmasked"], ["Checkpoints and faults", "Optimisation", "Runtime", "Launch"])):
        text = _help(args, False, monkeypatch)
        titles = re.findall(r"╭─ (.+?) ─", text)
        assert titles == ["Options", *panels], titles
    train = _help(["train"], False, monkeypatch)
    assert re.search(r"╭─ Data ─.*--data SHARDS.*╭─ Model and masking ─.*--mask-ratio X.*╭─ Optimisation", train,
                     re.S)
    assert "--resume [auto]" in train and "--activation-checkpointing" in train


def test_eval_shorthands_are_the_eval_commands(monkeypatch):
    top = _help([], False, monkeypatch)
    assert "eval-zeroshot" in top and "eval-retrieval" in top  # named once, under eval
    assert not re.search(r"^│ eval-zeroshot", top, re.M)
    group = typer.main.get_command(app)
    for short, long in (("eval-zeroshot", "zeroshot"), ("eval-retrieval", "retrieval")):
        assert group.commands[short].help == group.commands["eval"].commands[long].help
        assert ({p.name for p in group.commands[short].params}
                == {p.name for p in group.commands["eval"].commands[long].params})
        assert f"Usage: flipctl {short} [OPTIONS]" in _help([short], False, monkeypatch)
        outcomes = [CliRunner().invoke(app, [*cmd, "--ckpt", "/nonexistent/run"]) for cmd in ([short], ["eval", long])]
        assert outcomes[0].exit_code == outcomes[1].exit_code == 2
        assert outcomes[0].output == outcomes[1].output and outcomes[0].output.strip().startswith("error: ")


def test_version_and_short_help():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("flipctl ")
    assert CliRunner().invoke(app, ["-h"], prog_name="flipctl").output.startswith("Usage: flipctl [OPTIONS]")


def test_piped_table_prints_whole(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    result = CliRunner().invoke(app, ["data", "mask-coverage", "--samples", "20", "--mask-ratios", "0.5,0.75"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("mixed scenes: 20 drawn" in line and "mean patches per object:" in line for line in lines), lines
    assert any("P(small object hidden)" in line and "scenes with an object hidden" in line for line in lines), lines

"""`flipctl --help` is the first command a user types: the CLI loads none of the heavy libraries to show
help or list the sweeps (torch alone takes seconds to import); each command imports them when it runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "timm", "open_clip", "pandas", "matplotlib", "scipy", "submitit", "webdataset")


def _loaded_after(code: str) -> list[str]:
    script = f"import sys, json\n{code}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.integration  # a python process
def test_importing_the_cli_loads_no_heavy_library():
    assert _loaded_after("import flipctl.main") == []


@pytest.mark.integration  # python processes
def test_every_help_and_the_sweep_list_load_no_heavy_library():
    code = """
import typer.main
from typer.testing import CliRunner
from flipctl.main import app

def commands(group, path):
    for name, cmd in group.commands.items():
        yield [*path, name]
        if hasattr(cmd, "commands"):
            yield from commands(cmd, [*path, name])

runner = CliRunner()
for args in [[], *commands(typer.main.get_command(app), [])]:
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, (args, result.output)
result = runner.invoke(app, ["sweep", "--list"])
assert result.exit_code == 0 and "mask-ratio" in result.output, result.output
"""
    assert _loaded_after(code) == []

"""The `flipctl` command line.

Every command module imports only typer, rich and the light parts of `flip` at the top; torch,
timm, pandas and matplotlib load inside the commands that use them, so `flipctl --help` and
`flipctl sweep --list` start in a fraction of a second (tests/test_startup.py).
"""

from __future__ import annotations

import typer

from flipctl import data_cmd, eval_cmd
from flipctl.bench_cmd import bench_command
from flipctl.export_cmd import export_command
from flipctl.help import HelpCommand, HelpGroup
from flipctl.models_cmd import models_command
from flipctl.plan_cmd import plan_command
from flipctl.sweep_cmd import report_command, sweep_command
from flipctl.train_cmd import train_command, tune_unmasked_command

app = typer.Typer(
    cls=HelpGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # subcommands inherit it
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"flipctl {version('flipctl')}")
        except PackageNotFoundError:  # a checkout on PYTHONPATH, never installed
            typer.echo("flipctl (not installed: no package metadata)")
        raise typer.Exit()


@app.callback()
def main(_version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="print the installed version and exit.")) -> None:
    """FLIP: masked CLIP pre-training, evaluation and the paper's studies."""


app.command("train", cls=HelpCommand)(train_command)
app.command("tune-unmasked", cls=HelpCommand)(tune_unmasked_command)
app.command("models", cls=HelpCommand)(models_command)
app.command("bench", cls=HelpCommand)(bench_command)
app.command("plan", cls=HelpCommand)(plan_command)
app.add_typer(data_cmd.app, name="data")
app.add_typer(eval_cmd.app, name="eval")
# The names the design card and other tools use: the same commands as `eval zeroshot|retrieval`,
# listed once in `flipctl --help` (under eval, which mentions them).
app.command("eval-zeroshot", cls=HelpCommand, hidden=True)(eval_cmd.zeroshot)
app.command("eval-retrieval", cls=HelpCommand, hidden=True)(eval_cmd.retrieval)
app.command("export", cls=HelpCommand)(export_command)
app.command("sweep", cls=HelpCommand)(sweep_command)
app.command("report", cls=HelpCommand)(report_command)

if __name__ == "__main__":
    app()

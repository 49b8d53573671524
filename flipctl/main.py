"""The `flipctl` command line."""

from __future__ import annotations

import typer

from flipctl import data_cmd, eval_cmd
from flipctl.bench_cmd import bench_command
from flipctl.export_cmd import export_command
from flipctl.models_cmd import models_command
from flipctl.plan_cmd import plan_command
from flipctl.sweep_cmd import report_command, sweep_command
from flipctl.train_cmd import train_command, tune_unmasked_command

app = typer.Typer(
    help="FLIP: masked CLIP pre-training, evaluation and the paper's studies.",
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
                                       help="Print the installed version and exit.")) -> None:
    """FLIP: masked CLIP pre-training, evaluation and the paper's studies."""
app.command("train")(train_command)
app.command("tune-unmasked")(tune_unmasked_command)
app.command("models")(models_command)
app.command("bench")(bench_command)
app.command("plan")(plan_command)
app.add_typer(data_cmd.app, name="data")
app.add_typer(eval_cmd.app, name="eval")
app.command("export")(export_command)
app.command("sweep")(sweep_command)
app.command("report")(report_command)

if __name__ == "__main__":
    app()

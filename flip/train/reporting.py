"""How a training run talks to a person: a rich progress bar, or nothing (library use)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


class Reporter:
    """Silent by default; subclass to show progress."""

    def start(self, total_steps: int, done_steps: int, title: str) -> None: ...

    def step(self, step: int, metrics: dict | None = None) -> None: ...

    def message(self, text: str) -> None: ...

    def close(self) -> None: ...


class RichReporter(Reporter):
    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=self.console, transient=False,
        )
        self.task = None

    def start(self, total_steps: int, done_steps: int, title: str) -> None:
        self.progress.start()
        self.task = self.progress.add_task(title, total=total_steps, completed=done_steps, info="")

    def step(self, step: int, metrics: dict | None = None) -> None:
        info = None
        if metrics:
            info = (f"loss {metrics['loss']:.3f}  lr {metrics['lr']:.2e}  T {metrics['temperature']:.4f}  "
                    f"{metrics['samples_per_s']:.0f} samples/s")
        self.progress.update(self.task, completed=step, **({"info": info} if info else {}))

    def message(self, text: str) -> None:
        self.progress.console.print(text)

    def close(self) -> None:
        self.progress.stop()

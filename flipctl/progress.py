"""A training run's live progress bar on a terminal: `flip.train.reporting.Reporter`'s calls drawn
with rich (the library itself prints nothing but plain progress lines)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from flip.train.reporting import PlainReporter, Reporter


class RichReporter(Reporter):
    """A live progress bar on a terminal; when the console is not one, a `PlainReporter`'s lines."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.plain = None if self.console.is_terminal else PlainReporter(self.console.file)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=self.console, transient=False,
        )
        self.task = None

    def start(self, total_steps: int, done_steps: int, title: str) -> None:
        if self.plain:
            return self.plain.start(total_steps, done_steps, title)
        self.progress.start()
        self.task = self.progress.add_task(title, total=total_steps, completed=done_steps, info="")

    def step(self, step: int, metrics: dict | None = None) -> None:
        if self.plain:
            return self.plain.step(step, metrics)
        info = None
        if metrics:
            info = (f"loss {metrics['loss']:.3f}  lr {metrics['lr']:.2e}  T {metrics['temperature']:.4f}  "
                    f"{metrics['samples_per_s']:.0f} samples/s")
        self.progress.update(self.task, completed=step, **({"info": info} if info else {}))

    def message(self, text: str) -> None:
        if self.plain:
            return self.plain.message(text)
        self.progress.console.print(text)

    def close(self) -> None:
        if not self.plain:
            self.progress.stop()

"""How a training run talks to a person: plain progress lines in a log (a file, a pipe, SLURM, CI,
nohup) or nothing (library use). The progress bar on a terminal is the CLI's
(`flipctl.progress.RichReporter`): it implements the same `Reporter` calls."""

from __future__ import annotations

import datetime
import sys
import time
from typing import TextIO


class Reporter:
    """Silent by default; subclass to show progress.

    `step` is called after every step, with the interval's metrics (step, samples, loss, lr,
    temperature, samples_per_s, ...) every `log_every` steps and at the end, else None.
    """

    def start(self, total_steps: int, done_steps: int, title: str) -> None: ...

    def step(self, step: int, metrics: dict | None = None) -> None: ...

    def message(self, text: str) -> None: ...

    def close(self) -> None: ...


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


class PlainReporter(Reporter):
    """One self-contained line per logged step, as OpenCLIP's logs have them, for a log a person
    or a script reads (a progress bar there is nothing until the end, then one squeezed line):

        step 20/100 (20%)  samples 5120  loss 1.2345  lr 1.00e-03  T 0.0700  312.4 samples/s  elapsed 0:00:16  ETA 0:01:05
    """  # noqa: E501

    def __init__(self, file: TextIO | None = None):
        self._file = file  # None: sys.stderr at the time of writing
        self.total, self.done_at_start, self.started = 0, 0, 0.0

    def _print(self, line: str) -> None:
        print(line, file=self._file or sys.stderr, flush=True)

    def start(self, total_steps: int, done_steps: int, title: str) -> None:
        self.total, self.done_at_start = total_steps, done_steps
        self.started = time.perf_counter()
        self._print(f"{title}: {total_steps} steps" + (f", resuming at step {done_steps}" if done_steps else ""))

    def step(self, step: int, metrics: dict | None = None) -> None:
        if not metrics:
            return
        elapsed = time.perf_counter() - self.started
        done = step - self.done_at_start  # steps this process ran: their pace predicts the rest
        eta = _duration(elapsed / done * (self.total - step)) if done > 0 else "-"
        parts = [f"step {step}/{self.total} ({100 * step / max(1, self.total):.0f}%)",
                 f"samples {metrics['samples']}", f"loss {metrics['loss']:.4f}"]
        if "recon" in metrics:  # the loss's two parts
            parts += [f"contrastive {metrics['contrastive']:.4f}", f"recon {metrics['recon']:.4f}"]
        parts += [f"lr {metrics['lr']:.2e}", f"T {metrics['temperature']:.4f}",
                  f"{metrics['samples_per_s']:.1f} samples/s", f"elapsed {_duration(elapsed)}", f"ETA {eta}"]
        self._print("  ".join(parts))

    def message(self, text: str) -> None:
        self._print(text)

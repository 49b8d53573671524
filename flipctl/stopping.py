"""Polite stops: SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 make a training run finish the step in
flight, write a checkpoint and exit, so that a preempted, timed-out or interrupted job loses
nothing. SLURM sends SIGTERM before it kills a job (or the signal `--signal` names, ahead of
time); submitit and most schedulers do the same.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopOnSignals:
    """Inside `with StopOnSignals() as stopper:`, the first stop signal sets `stopper.event` (pass it
    as `train(stop=...)`) and records `stopper.signum`; a second one acts as the signal does
    without us (SIGINT raises KeyboardInterrupt, SIGTERM and SIGUSR1 end the process), for a
    user who will not wait.

    Python lets only the main thread install handlers; elsewhere this installs none, and the
    event is never set by a signal.
    """

    def __init__(self):
        self.event = threading.Event()
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopOnSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Nothing is printed here: a handler runs between two bytecodes of the main thread, which
        # may be in the middle of writing to the same stream.
        if self.event.is_set():
            self._restore()
            signal.raise_signal(signum)
            return
        self.signum = signum
        self.event.set()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process that the signal ended."""
        return 128 + (self.signum or 0)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "stop"

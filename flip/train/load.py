"""How busy the machine was while a run trained: is its wall-clock time a clean measurement?

`LoadMonitor` compares the CPU time this process and its data-loader workers used with the CPU
time the whole machine used (`/proc/stat`) over the run: the difference is what *other* processes
used. A run shared its cores when they used at least `SHARED_FRACTION` of the machine's cores on
average. It also samples the 1-minute load average every `SAMPLE_EVERY_S` (a clock check per step,
nothing more on the step's path). The record accumulates over a resumed run's attempts (it rides
in the checkpoint's progress); the summary keeps the raw figures (`load` in summary.json) and
reports judge them with `shared`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

SHARED_FRACTION = 0.1  # others used >= 10% of the cores on average (0.2 of a core on a 2-core machine)
SAMPLE_EVERY_S = 10.0


def shared(others_cores, cores) -> bool | None:
    """True when other processes used at least SHARED_FRACTION of the cores; None when not recorded."""
    try:
        others, cores = float(others_cores), float(cores)
    except (TypeError, ValueError):
        return None
    if others != others or cores != cores or cores <= 0:  # NaN: not recorded
        return None
    return others >= SHARED_FRACTION * cores


def threshold_words() -> str:
    return f"other processes used at least {SHARED_FRACTION:.0%} of the machine's cores on average while it trained"


def _machine_busy_s() -> float | None:
    """CPU seconds all cores of the machine have spent busy since boot (None where /proc/stat is missing)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal (guest is in user)
    idle = sum(ticks[3:5])
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def _process_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _own_cpu_s() -> float:
    """This process (all its threads), its finished children and its live ones (data-loader workers)."""
    t = os.times()
    live = 0.0
    try:
        for task in Path(f"/proc/{os.getpid()}/task").iterdir():
            live += sum(_process_cpu_s(int(pid)) for pid in (task / "children").read_text().split())
    except (OSError, ValueError):
        pass
    return t.user + t.system + t.children_user + t.children_system + live


class LoadMonitor:
    """Call `tick()` every step; `record()` gives the cumulative figures (for a checkpoint), `summary()`
    the figures with their averages and the verdict. `before`: an earlier attempt's `record()`."""

    def __init__(self, before: dict | None = None, every_s: float = SAMPLE_EVERY_S):
        self.before = dict(before or {})
        self.every_s = every_s
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.t0 = self.last = time.monotonic()
        self.own0, self.busy0 = _own_cpu_s(), _machine_busy_s()
        self.loads: list[float] = []

    def tick(self) -> None:
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            if hasattr(os, "getloadavg"):
                self.loads.append(os.getloadavg()[0])

    def record(self) -> dict:
        b = self.before
        wall = time.monotonic() - self.t0 + b.get("wall_s", 0.0)
        own = _own_cpu_s() - self.own0 + b.get("own_cpu_s", 0.0)
        busy = _machine_busy_s()
        others = None
        if busy is not None and self.busy0 is not None and ("others_cpu_s" not in b or b["others_cpu_s"] is not None):
            # the machine's busy time includes ours; what is left is the others'
            others = max(0.0, busy - self.busy0 - (own - b.get("own_cpu_s", 0.0))) + b.get("others_cpu_s", 0.0)
        return {"cores": self.cores, "wall_s": wall, "own_cpu_s": own, "others_cpu_s": others,
                "loadavg_1m_sum": b.get("loadavg_1m_sum", 0.0) + sum(self.loads),
                "loadavg_1m_n": b.get("loadavg_1m_n", 0) + len(self.loads),
                "loadavg_1m_max": max([x for x in (b.get("loadavg_1m_max"), *self.loads) if x is not None],
                                      default=None)}

    def summary(self) -> dict:
        r = self.record()
        wall = max(r["wall_s"], 1e-9)
        others = None if r["others_cpu_s"] is None else r["others_cpu_s"] / wall
        total, n = r.pop("loadavg_1m_sum"), r["loadavg_1m_n"]
        return {**r, "own_cores": r["own_cpu_s"] / wall, "others_cores": others,
                "loadavg_1m_mean": total / n if n else None,
                "shared": shared(others, r["cores"]), "shared_fraction": SHARED_FRACTION}

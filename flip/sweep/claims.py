"""Claims: which sweep trains a run, so that sweeps sharing a store never train one run twice.

A sweep claims a run before it starts the run's worker, by creating the run's `sweep/lock.json`
with O_CREAT | O_EXCL, which exactly one process can do. The file names the owner (pid, host, the
process's start time, so a reused pid is not mistaken for it), when the claim was taken and, once
started, the worker; the owner removes it when the worker has exited. Owner and worker touch it
every few seconds (a heartbeat).

A claim is stale when its owner and its worker are both dead on this host; a claim from another
host (or with a worker on another host, a SLURM job) is stale once its heartbeat has stopped for
`REMOTE_STALE_S`. A stale claim is broken under a second exclusive file and judged again there, so
that two sweeps finding the same stale claim cannot remove each other's new one.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flip.run_dir import SweepFiles

HEARTBEAT_S = 5.0
REMOTE_STALE_S = 300.0  # no heartbeat for this long: the claim's processes elsewhere are gone
WRITING_GRACE_S = 30.0  # an empty or unreadable claim younger than this is being written
HOST = socket.gethostname()


def process_start(pid: int) -> int | None:
    """The process's start time (clock ticks since boot, from /proc), or None where /proc has none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: Any, start: Any = None) -> bool:
    """Whether the process `pid` (started at `start`, when known) runs on this host."""
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        if fields[0] == "Z":  # exited, not yet reaped
            return False
        return start is None or int(fields[19]) == start  # else the pid was reused
    except (OSError, ValueError, IndexError):
        return True  # no /proc: the pid exists


def me(pid: int | None = None) -> dict[str, Any]:
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "host": HOST, "start": process_start(pid)}


def is_stale(claim: dict | None, age_s: float) -> bool:
    """Whether a claim (None: unreadable or empty) last touched `age_s` ago holds nothing any more."""
    if not isinstance(claim, dict):
        return age_s > WRITING_GRACE_S
    if claim.get("host") != HOST:
        return age_s > REMOTE_STALE_S
    if _alive(claim.get("pid"), claim.get("start")):
        return False
    worker = claim.get("worker") or {}
    if worker.get("host") == HOST:
        return not _alive(worker.get("pid"), worker.get("start"))
    return not worker or age_s > REMOTE_STALE_S  # a worker elsewhere lives while it beats


def _read(path: Path) -> tuple[dict | None, float] | None:
    """The claim and its age in seconds; None when there is no claim."""
    try:
        text, mtime = path.read_text(), path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        claim = json.loads(text)
    except json.JSONDecodeError:
        claim = None
    return claim, time.time() - mtime


def holder(sweep_dir: Path) -> dict | None:
    """The live claim on a run, or None when it is free (no claim, or a stale one)."""
    found = _read(SweepFiles(sweep_dir).lock)
    if found is None or is_stale(*found):
        return None
    return found[0] or {}


@dataclass
class Claim:
    """A claim this process holds; `release()` it when the run's worker has exited."""

    path: Path
    record: dict[str, Any]
    last_beat: float = field(default_factory=time.monotonic)

    def set_worker(self, worker: dict[str, Any]) -> None:
        """Name the worker (`me(pid)` for a process here, `{"job": id}` for a SLURM job)."""
        self.record = {**self.record, "worker": worker}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.record) + "\n")
        os.replace(tmp, self.path)  # ours: replacing it keeps it whole for readers

    def heartbeat(self) -> None:
        if time.monotonic() - self.last_beat >= HEARTBEAT_S:
            self.last_beat = time.monotonic()
            touch(self.path)

    def release(self) -> None:
        found = _read(self.path)
        if found is not None and isinstance(found[0], dict) and found[0].get("claimed") == self.record["claimed"] \
                and found[0].get("pid") == self.record["pid"]:
            self.path.unlink(missing_ok=True)


def touch(path: Path) -> None:
    try:
        os.utime(path)
    except FileNotFoundError:
        pass


def try_claim(sweep_dir: Path) -> Claim | None:
    """Claim the run whose sweep files are in `sweep_dir`; None when a live process holds it."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = SweepFiles(sweep_dir).lock
    for _ in range(2):  # a second try after breaking a stale claim
        record = {**me(), "claimed": time.time()}
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            found = _read(path)
            if found is not None and not is_stale(*found):
                return None
            _break(path)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record) + "\n")
        return Claim(path, record)
    return None


def _break(path: Path) -> None:
    """Remove the claim at `path` if it is still stale, judged again under an exclusive guard file."""
    guard = path.with_name(path.name + ".break")
    try:
        fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        found = _read(guard)
        if found is not None and found[1] > WRITING_GRACE_S:  # a breaker died holding it (it holds it for µs)
            guard.unlink(missing_ok=True)
        return
    try:
        found = _read(path)
        if found is not None and is_stale(*found):
            path.unlink(missing_ok=True)
    finally:
        os.close(fd)
        guard.unlink(missing_ok=True)

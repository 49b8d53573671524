"""File modes: files flipctl writes are as readable as any other file the user creates.

Writers that go through a private temporary file (safetensors' own atomic write, `mkstemp`) leave
mode 0600 behind; `chmod_as_umask` gives such a file the mode a plain `open()` would have
(0644 under the usual umask 022), so teammates on a shared filesystem can read the weights.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_lock = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def chmod_as_umask(path: str | Path) -> None:
    """Give `path` the mode a newly created regular file gets: 0666 less the umask."""
    os.chmod(path, 0o666 & ~current_umask())


import os

import pytest
import torch

# Tests must never touch a user's cache or each other's: every session gets its own.
os.environ.setdefault("FLIP_CACHE", os.path.join(os.environ.get("TMPDIR", "/tmp"), f"flip-test-cache-{os.getpid()}"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_cfg():
    from flip.models import get_preset

    return get_preset("tiny")

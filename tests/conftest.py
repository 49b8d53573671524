import os
import shutil

import pytest
import torch

# Tests must never touch a user's cache or each other's: every session gets its own.
_OWN_CACHE = not os.environ.get("FLIP_CACHE")
os.environ.setdefault("FLIP_CACHE", os.path.join(os.environ.get("TMPDIR", "/tmp"), f"flip-test-cache-{os.getpid()}"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Test tiers (README, "Tests"): a test is quick unless it is marked integration or slow, so every test
# has a tier and the default run (all but slow) never depends on a quick marker being remembered.
TIERS = ("quick", "integration", "slow")
# A quick test that takes longer than this belongs in the integration tier: the limit keeps the tier
# inside its 3 minutes as tests are added (its longest test takes about 10 s on 2 loaded cores).
QUICK_TIMEOUT_S = 60


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in TIERS[1:]):
            item.add_marker(pytest.mark.quick)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(QUICK_TIMEOUT_S))


@pytest.fixture(scope="session", autouse=True)
def _remove_the_sessions_cache():
    """The session's own cache (the built-in data, 281 MB) goes with it: no later session can reuse it."""
    yield
    if _OWN_CACHE:
        shutil.rmtree(os.environ["FLIP_CACHE"], ignore_errors=True)


@pytest.fixture
def tiny_cfg():
    from flip.models import get_preset

    return get_preset("tiny")


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """A small built-in-style dataset: 4 train shards, 20 retrieval images, 1 image per zero-shot class."""
    from flip.data.synth import SynthConfig, write_builtin_dataset

    root = tmp_path_factory.mktemp("synth")
    cfg = SynthConfig(seed=7, train_samples=400, shard_size=100, zeroshot_per_class=1, retrieval_images=20,
                      captions_per_image=3, workers=1)
    write_builtin_dataset(root, cfg)
    return root


@pytest.fixture(scope="session")
def trained_run(small_dataset, tmp_path_factory):
    """One finished training run, shared by the tests that only read a trained run (tune it, start another
    run from it): 4 steps of 16, one checkpoint (its last), no periodic evaluation. It trains with masking
    and a text mask (padding, 0.5), so unmasked tuning has ablation knobs to reset. Read it, never write into
    it: a test that changes a run copies it to its own tmp_path first."""
    from flip.train.config import TrainConfig
    from flip.train.trainer import train

    run = tmp_path_factory.mktemp("trained") / "run"
    train(TrainConfig(data=str(small_dataset / "train"), model="tiny", mask_ratio=0.5, text_mask="padding",
                      text_mask_ratio=0.5, batch_size=16, samples=16 * 4, workers=0, seed=3, shuffle_buffer=50,
                      periodic_eval=False, out=str(run)))
    return run


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    """A checkpoint of a randomly initialised tiny model (weights only; the eval commands' input), written
    once a session: read it, never write into it (a test that damages a checkpoint damages a copy)."""
    from flip.models import FLIP, get_preset
    from flip.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = FLIP(get_preset("tiny"))
    run = tmp_path_factory.mktemp("run")
    save_checkpoint(run, 5, model, {"model": model.cfg.to_dict(), "train": {"mask_ratio": 0.5}}, None)
    return run

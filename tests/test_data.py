import io
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from flip.data.augment import AugmentConfig
from flip.data.pipeline import SlotPosition, StreamConfig, make_loader
from flip.data.shards import count_samples, expand_urls
from flip.errors import DataError


def _stream(urls, batch=8, seed=0, **kw):
    return StreamConfig(urls=tuple(urls), batch_size=batch, augment=AugmentConfig(64, (0.5, 1.0), True),
                        shuffle_buffer=50, seed=seed, **kw)


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_expand_urls_brace_dir_and_sources(small_dataset):
    train = small_dataset / "train"
    assert len(expand_urls(str(train / "shard-{00000..00003}.tar"))) == 4
    assert len(expand_urls(str(train))) == 4
    both = expand_urls(f"{train}/shard-0000{{0..1}}.tar::{train}/shard-00003.tar")
    assert [Path(u).name for u in both] == ["shard-00000.tar", "shard-00001.tar", "shard-00003.tar"]
    with pytest.raises(DataError):
        expand_urls("")
    with pytest.raises(DataError):
        expand_urls(str(train / "missing-{0..1}.tar"))
    assert count_samples(expand_urls(str(train))) == 400


def test_batches_are_deterministic_and_resume_exactly(small_dataset):
    urls = expand_urls(str(small_dataset / "train"))
    cfg = _stream(urls, seed=1)
    full = _take(make_loader(cfg, workers=2), 7)
    again = _take(make_loader(cfg, workers=2), 7)
    for a, b in zip(full, again):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # resume after 3 batches from the positions the batches carried
    positions = [SlotPosition(), SlotPosition()]
    for _, _, meta in full[:3]:
        positions[meta["slot"]] = SlotPosition(meta["epoch"], meta["offset"])
    resumed = _take(make_loader(cfg, workers=2, positions=positions, next_slot=full[3][2]["slot"]), 4)
    for a, b in zip(full[3:], resumed):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_workers_split_shards_without_duplicates(small_dataset):
    urls = expand_urls(str(small_dataset / "train"))
    # one epoch is 400 samples = 50 batches of 8 over 2 workers; images identify samples
    batches = _take(make_loader(_stream(urls, batch=8), workers=2), 50)
    epochs = {m["epoch"] for _, _, m in batches}
    assert epochs == {0}
    keys = [k for _, _, m in batches for k in m["keys"]]
    assert len(keys) == 400 and len(set(keys)) == 400


def test_fewer_shards_than_workers_still_splits_samples(small_dataset):
    url = str(small_dataset / "train" / "shard-00000.tar")
    batches = _take(make_loader(_stream([url], batch=10), workers=2), 10)  # 100 samples, one epoch
    assert {m["epoch"] for _, _, m in batches} == {0}
    keys = [k for _, _, m in batches for k in m["keys"]]
    assert len(set(keys)) == 100


def _png(color=(255, 0, 0)):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return buf.getvalue()


def _write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_corrupt_samples_and_unreadable_shards_are_skipped_and_counted(tmp_path):
    good = []
    for i in range(12):
        good += [(f"{i:04d}.png", _png()), (f"{i:04d}.txt", f"caption {i}".encode())]
    bad = [("bad1.png", b"not a png"), ("bad1.txt", b"caption"), ("bad2.txt", b"no image"),
           ("bad3.jpg", _png()[:20]), ("bad3.txt", b"truncated")]
    _write_tar(tmp_path / "a.tar", good + bad)
    (tmp_path / "b.tar").write_bytes(b"\x00garbage" * 100)  # unreadable shard
    urls = [str(tmp_path / "a.tar"), str(tmp_path / "b.tar")]
    batches = _take(make_loader(_stream(urls, batch=4, resampled=False), workers=0), 6)
    assert all(b[0].shape == (4, 3, 64, 64) for b in batches)
    skipped = batches[-1][2]["skipped"]  # by kind, over a.tar's epochs so far
    assert skipped["undecodable_image"] >= 2 and skipped["no_image"] >= 1 and skipped["unreadable_shard"] >= 1


def test_a_shard_set_with_nothing_readable_is_an_error(tmp_path):
    (tmp_path / "b.tar").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(DataError, match="no readable samples"):
        _take(make_loader(_stream([str(tmp_path / "b.tar")], batch=4), workers=0), 1)

"""The training data stream: webdataset shards -> shuffled, decoded, augmented, tokenised batches.

Every DataLoader worker (on every rank) owns one *stream slot*. A slot's stream is an
endless sequence of epochs; in epoch e it reads its share of the shards (a permutation
of all shards seeded by e, dealt out slot by slot, so no sample is read twice in an
epoch), passes the raw bytes through a seeded shuffle buffer, then decodes and
augments. Batches are assembled inside the worker.

Everything is a function of (seed, epoch, slot), and augmentation is seeded per sample,
so a stream can be resumed exactly: each batch carries its slot's position (epoch,
raw samples consumed in that epoch), the trainer stores the latest position of every
slot in its checkpoint, and on resume each slot fast-forwards through raw bytes
(nothing is decoded) to where it stopped. DataLoader visits workers round-robin, so
the trainer also knows which slot supplies the next batch and rotates the
worker -> slot assignment to match.

What a worker hands over depends on `StreamConfig.decode` (see `flip.data.decode`): uint8 images
(`worker`, the default; the step's input stage converts and normalises them on the device), the
JPEG bytes for the input stage to decode (`device`, an `EncodedBatch` as a dict of tensors), or
normalised float32 images (`legacy`, the original PIL path). Captions are tokenised once per batch, and
for syntax text masking their words tagged there too (`meta["word_classes"]`).

Bad data does not stop the stream: an unreadable shard (missing, truncated, not a tar) or a
sample that cannot be used is skipped and counted by kind (`SKIP_KINDS`); the counts travel
with the batches, and the trainer decides when there is too much of it. Workers ignore the
signals a job receives (SIGINT, SIGTERM, SIGUSR1), which the main process handles: it stops
the run politely, and the workers exit with the loader.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

import torch
import webdataset as wds
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision import transforms as T

from flip.choices import DECODE_MODES
from flip.data.augment import AugmentConfig, crop_box
from flip.data.decode import Undecodable, decode_crop, jpeg_header, legacy_decode, legacy_transform, stack_channels_last
from flip.data.device_decode import EncodedBatch
from flip.data.tokenizer import Tokenizer
from flip.errors import DataError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTENSIONS = ("txt",)


@dataclass(frozen=True)
class StreamConfig:
    urls: tuple[str, ...]
    batch_size: int
    context_length: int = 32
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    shuffle_buffer: int = 2000
    resampled: bool = False  # draw shards with replacement (infinite corpora, OpenCLIP's --dataset-resampled)
    seed: int = 0
    decode: str = "worker"  # one of flip.choices.DECODE_MODES
    # Tag each caption's words for syntax text masking: meta["word_classes"] [B, T] beside the tokens
    word_classes: bool = False

    def __post_init__(self):
        if self.decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}, got {self.decode!r}")


@dataclass
class SlotPosition:
    epoch: int = 0
    offset: int = 0  # raw samples of this epoch already consumed


def _seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


def eval_transform(image_size: int) -> T.Compose:
    """Resize the short side, centre-crop, normalise: CLIP's evaluation preprocessing."""
    return T.Compose([
        T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(image_size),
        T.ToTensor(),
        T.Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD),
    ])


def train_transform(cfg: AugmentConfig) -> T.Compose:
    """The legacy path's per-sample transform (PIL, bicubic, float32 out)."""
    return legacy_transform(cfg)


@dataclass(frozen=True)
class EncodedJpeg:
    """A sample the `device` path leaves encoded: its bytes and augmentation seed."""

    data: bytes
    seed: int


# What can be wrong with a shard or a sample, as counted in `skipped_by_kind`. A shard is counted
# once per reading (each epoch), however many samples it lost.
SKIP_KINDS = ("truncated_shard", "unreadable_shard", "no_image", "empty_image", "undecodable_image",
              "no_caption", "empty_caption", "non_utf8_caption")


class SkipCounter(Counter):
    """Skipped shards and samples by kind. As a webdataset error handler it counts a failed shard
    read (missing, not a tar, cut inside a member) and goes on, unless the shard was already
    counted as truncated."""

    def __init__(self):
        super().__init__()
        self.truncated: set[str] = set()

    def __call__(self, exc: Exception) -> bool:
        # webdataset appends the url to the exception's args
        if not self.truncated.intersection(a for a in exc.args if isinstance(a, str)):
            self["unreadable_shard"] += 1
        return True


def tar_is_truncated(url: str) -> bool:
    """Whether a local .tar starts as a tar but does not end as tar writes one (a multiple of 512
    bytes ending in the zero blocks of the end-of-archive marker). Python's tarfile reads a tar cut
    at a header as if it ended there: without this, a truncated shard would lose its tail silently.
    Other urls, and files that are no tar at all (their read fails and is counted), are not judged."""
    if not url.endswith(".tar") or not os.path.isfile(url):
        return False
    size = os.path.getsize(url)
    with open(url, "rb") as f:
        if f.read(512)[257:262] != b"ustar":  # POSIX / GNU / pax headers all carry this magic
            return False
        if size < 1536 or size % 512:
            return True
        f.seek(size - 1024)
        return any(f.read(1024))


class ShardStream(IterableDataset):
    """Endless batches from one stream slot per worker; see the module docstring."""

    def __init__(self, cfg: StreamConfig, rank: int = 0, world_size: int = 1,
                 positions: list[SlotPosition] | None = None, slot_rotation: int = 0):
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.positions = positions
        self.slot_rotation = slot_rotation

    # -- which raw samples a slot reads ---------------------------------------------------
    def _epoch_shards(self, epoch: int, slot: int, num_slots: int) -> tuple[list[str], int | None]:
        """Shards for (epoch, slot), plus a sample stride when there are fewer shards than slots."""
        urls = list(self.cfg.urls)
        if self.cfg.resampled:
            rng = random.Random(_seed(self.cfg.seed, "resample", epoch, slot))
            return rng.choices(urls, k=max(1, len(urls) // num_slots)), None
        random.Random(_seed(self.cfg.seed, "shards", epoch)).shuffle(urls)
        if len(urls) >= num_slots:
            return urls[slot::num_slots], None
        return urls, slot  # every slot reads all shards and keeps every num_slots-th sample

    def _raw_samples(self, epoch: int, slot: int, num_slots: int, errors: SkipCounter) -> Iterator[dict]:
        shards, stride_slot = self._epoch_shards(epoch, slot, num_slots)
        wanted = set(IMAGE_EXTENSIONS + TEXT_EXTENSIONS)

        def sources():
            for url in shards:
                if tar_is_truncated(url):
                    errors["truncated_shard"] += 1  # its complete samples are still read
                    errors.truncated.add(url)
                yield {"url": url}

        samples = wds.tariterators.tarfile_samples(
            sources(), handler=errors,
            # Skip the .json metadata (and anything else) without reading it.
            select_files=lambda name: name.rsplit(".", 1)[-1].lower() in wanted,
        )
        for i, sample in enumerate(samples):
            if stride_slot is None or i % num_slots == stride_slot:
                yield sample

    # -- decoding ---------------------------------------------------------------------------
    def _decode(self, sample: dict, epoch: int, transform: T.Compose | None = None
                ) -> tuple[torch.Tensor | EncodedJpeg, str] | str:
        """(pixels, caption), or the kind of problem (one of `SKIP_KINDS`) that makes it unusable.

        The pixels are what the stream's decode mode hands over: with a `transform`, the legacy
        path's float image; else a uint8 (3, S, S) image, or under `device` an `EncodedJpeg`."""
        image_bytes = next((sample[e] for e in IMAGE_EXTENSIONS if e in sample), None)
        text = sample.get("txt")
        if image_bytes is None:
            return "no_image"
        if text is None:
            return "no_caption"
        if not image_bytes:
            return "empty_image"
        try:
            caption = text.decode("utf-8").strip()
        except UnicodeDecodeError:
            return "non_utf8_caption"
        if not caption:
            return "empty_caption"
        # Per-sample augmentation seed: identical crops after a resume, whatever the batch layout.
        seed = _seed(self.cfg.seed, epoch, sample["__key__"], sample.get("__url__"))
        try:
            if transform is not None:
                return legacy_decode(image_bytes, seed, transform), caption
            if self.cfg.decode == "device" and jpeg_header(image_bytes) is not None:
                return EncodedJpeg(image_bytes, seed), caption  # decoded on the device
            augment = self.cfg.augment
            return decode_crop(image_bytes, lambda h, w: crop_box(seed, h, w, augment), augment.image_size), caption
        except Undecodable:
            return "undecodable_image"

    def _batch_images(self, pixels: list) -> torch.Tensor | dict[str, torch.Tensor]:
        if self.cfg.decode == "legacy":
            return torch.stack(pixels)
        if self.cfg.decode == "worker":
            return stack_channels_last(pixels)
        jpegs = [(i, p.data, p.seed) for i, p in enumerate(pixels) if isinstance(p, EncodedJpeg)]
        decoded = [(i, p) for i, p in enumerate(pixels) if not isinstance(p, EncodedJpeg)]
        return EncodedBatch.build(jpegs, decoded, self.cfg.augment.image_size).to_dict()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        local_slot = (worker + self.slot_rotation) % num_workers
        slot, num_slots = self.rank * num_workers + local_slot, self.world_size * num_workers
        position = (self.positions or [SlotPosition() for _ in range(num_workers)])[local_slot]
        epoch, offset = position.epoch, position.offset

        torch.set_num_threads(1)  # workers decode; the trainer owns the cores' BLAS threads
        transform = train_transform(self.cfg.augment) if self.cfg.decode == "legacy" else None
        tokenizer = Tokenizer(self.cfg.context_length)
        errors = SkipCounter()
        images: list[torch.Tensor] = []
        captions: list[str] = []
        keys: list[str] = []
        while True:
            read = 0
            raw = self._raw_samples(epoch, slot, num_slots, errors)
            rng = random.Random(_seed(self.cfg.seed, "shuffle", epoch, slot))
            shuffled = wds.shuffle(self.cfg.shuffle_buffer, self.cfg.shuffle_buffer, rng=rng)(raw)
            for read, sample in enumerate(shuffled, start=1):
                if read <= offset:
                    continue  # fast-forward after a resume: raw bytes only, nothing decoded
                decoded = self._decode(sample, epoch, transform)
                if isinstance(decoded, str):
                    errors[decoded] += 1
                    continue
                images.append(decoded[0])
                captions.append(decoded[1])
                keys.append(sample["__key__"])
                if len(images) == self.cfg.batch_size:
                    # before `meta`, which counts this batch's cut captions
                    tokens, classes = (tokenizer.with_word_classes(captions) if self.cfg.word_classes
                                       else (tokenizer(captions), None))
                    meta = {"slot": local_slot, "epoch": epoch, "offset": read, "skipped": dict(errors),
                            "keys": keys, "truncated_captions": tokenizer.truncated}
                    if classes is not None:
                        meta["word_classes"] = classes
                    yield self._batch_images(images), tokens, meta
                    images, captions, keys = [], [], []
            if read == 0 and offset == 0:
                shards = self._epoch_shards(epoch, slot, num_slots)[0]
                named = ", ".join(shards[:3]) + (f" and {len(shards) - 3} more" if len(shards) > 3 else "")
                raise DataError(f"no readable samples in {named} (the shards of data slot {slot}, "
                                f"{errors.total()} errors); check the --data shards")
            epoch, offset = epoch + 1, 0


def make_loader(cfg: StreamConfig, workers: int, rank: int = 0, world_size: int = 1,
                positions: list[SlotPosition] | None = None, next_slot: int = 0,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader over `ShardStream` whose first batch comes from slot `next_slot`."""
    dataset = ShardStream(cfg, rank, world_size, positions, slot_rotation=next_slot)
    # Its own generator: starting the loader must not consume the global RNG that masking uses,
    # or a resumed run would draw different masks.
    return DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=False, prefetch_factor=4 if workers > 0 else None,
                      generator=torch.Generator().manual_seed(cfg.seed), worker_init_fn=_leave_signals_to_main)


def _leave_signals_to_main(worker_id: int) -> None:
    """A job's stop signals reach every process (a terminal's Ctrl-C, SLURM's SIGTERM): a worker
    that died of one would fail the main process's next batch, or raise in it mid-checkpoint
    (DataLoader's SIGCHLD handler). The main process stops the run; the loader then ends its
    workers, or they notice that it died. SIGTERM still ends a worker when its parent sends it:
    that is how DataLoader and multiprocessing shut workers down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if hasattr(signal, "sigwaitinfo"):  # Linux: who sent a signal is known
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        threading.Thread(target=_exit_on_sigterm_from, args=(os.getppid(),), daemon=True).start()


def _exit_on_sigterm_from(parent: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)

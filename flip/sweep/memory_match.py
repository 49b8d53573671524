"""Memory-matched batches (paper Table 1a): the batch at each mask ratio whose training step peaks at
the same memory as the reference row's step, measured on this device with `flipctl bench --max-batch`'s
machinery (one steady-state step per probe), not assumed from the mask ratio."""

from __future__ import annotations

import torch

from flip.bench.peak_memory import find_max_batch, step_peak_memory
from flip.models import get_preset
from flip.models.decoder import DecoderConfig
from flip.sweep.estimate import flops_per_sample
from flip.sweep.spec import SweepSpec
from flip.sweep.store import RunStore
from flip.train.config import TrainConfig


def decoder_of(cfg: TrainConfig) -> DecoderConfig | None:
    """The MAE decoder a run trains with (a reconstruction loss), else None."""
    return DecoderConfig(cfg.decoder_depth, cfg.decoder_width, cfg.decoder_heads) if cfg.recon_weight > 0 else None


def _probe_key(model: str, mask_ratio: float, batch: int, precision: str, device: torch.device,
               decoder: DecoderConfig | None = None) -> str:
    key = f"peak:{model}:m{mask_ratio:g}:b{batch}:{precision}:{device.type}"
    return key if decoder is None else f"{key}:dec{decoder.depth}x{decoder.width}x{decoder.heads}"


def step_peak(store: RunStore, model: str, mask_ratio: float, batch: int, precision: str,
              device: torch.device, decoder: DecoderConfig | None = None) -> int | None:
    key = _probe_key(model, mask_ratio, batch, precision, device, decoder)
    cached = store.probe(key)
    if cached is None:
        cached = step_peak_memory(get_preset(model), mask_ratio, batch, device, precision, decoder)
        store.save_probe(key, cached)
    return cached


def matched_batches(spec: SweepSpec, store: RunStore, device: torch.device,
                    log=lambda text: None) -> dict[str, tuple[int, int | None]]:
    """Row label -> (batch, measured peak bytes) for every row of a memory-matched spec.

    A row at the reference's mask ratio keeps the reference batch; each other row gets the largest multiple of `multiple_of`
    whose step fits the reference's peak. Results are cached in the store: the same spec gives the
    same batches (and so the same run ids) every time it is planned.
    """  # noqa: E501
    if spec.memory_match is None:
        return {}
    mm = spec.memory_match
    if isinstance(mm.reference, dict):
        ref = TrainConfig.from_dict({**spec.base, **mm.reference})
        name = ", ".join(f"{k}={v}" for k, v in mm.reference.items())
    else:
        ref, name = spec.config(spec.row(mm.reference), 0), mm.reference
    limit = step_peak(store, ref.model, ref.mask_ratio, ref.batch_size, ref.precision, device, decoder_of(ref))
    if limit is None:
        raise MemoryError(f"the memory reference {name!r} (batch {ref.batch_size}) does not fit in memory")
    out = {}
    for row in spec.rows:
        if "batch_size" in row.fields:
            continue
        cfg = spec.config(row, 0)
        decoder = decoder_of(cfg)  # the step that will run: with the decoder when there is a recon loss
        if cfg.model == ref.model and cfg.mask_ratio == ref.mask_ratio and decoder == decoder_of(ref):
            out[row.label] = (ref.batch_size, limit)
            continue
        key = f"match:{_probe_key(cfg.model, cfg.mask_ratio, ref.batch_size, cfg.precision, device, decoder)}" \
              f":ref{ref.mask_ratio:g}:x{mm.multiple_of}"
        cached = store.probe(key)
        if cached is None:
            what = f"mask {cfg.mask_ratio:g}" + (" with the reconstruction decoder" if decoder else "")
            log(f"probing the batch at {what} that fits the memory of {name!r}")

            def peak(b: int) -> int | None:
                return step_peak(store, cfg.model, cfg.mask_ratio, b, cfg.precision, device, decoder)

            found = find_max_batch(peak, limit, start=ref.batch_size)
            batch = max(mm.multiple_of, found.batch // mm.multiple_of * mm.multiple_of)
            cached = [batch, peak(batch)]
            store.save_probe(key, cached)
        out[row.label] = (cached[0], cached[1])
    return out


def device_memory(device: torch.device) -> int:
    """What a run on `device` can use at most: the GPU's memory, or this machine's RAM."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    import os
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_warnings(configs, store: RunStore, device: torch.device, max_gflops: float = 5.0) -> list[str]:
    """One line per distinct run step that would not fit this device's memory (measured by a probe step);
    models too large to probe here (on a CPU) are reported as unchecked rather than guessed."""

    limit, warnings, seen = device_memory(device), [], set()
    for cfg in configs:
        key = (cfg.model, cfg.mask_ratio, cfg.batch_size, cfg.precision, decoder_of(cfg))
        if key in seen:
            continue
        seen.add(key)
        if device.type != "cuda" and flops_per_sample(cfg) / 1e9 > max_gflops:
            warnings.append(f"{cfg.model} at batch {cfg.batch_size}: memory not probed on this CPU (model too "
                            f"large); run the dry run on the training machine")
            continue
        peak = step_peak(store, cfg.model, cfg.mask_ratio, cfg.batch_size, cfg.precision, device, key[-1])
        if peak is None or peak > limit:
            warnings.append(f"{cfg.model} mask {cfg.mask_ratio:g} batch {cfg.batch_size} does not fit: peak "
                            f"{'out of memory' if peak is None else f'{peak / 2**30:.1f} GiB'} > "
                            f"{limit / 2**30:.1f} GiB on {device.type}")
    return warnings


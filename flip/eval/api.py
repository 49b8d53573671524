"""One call from a checkpoint to a full evaluation record, for the command line and sweeps alike.

`evaluate_checkpoint` loads the checkpoint, resolves the data (the built-in sets by default)
and the prompt templates, runs one task and returns everything that identifies the result:
the checkpoint, the model and its training mask ratio, the settings, the data, the metrics
and the speed. `flipctl eval ... --json` writes exactly this record.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from flip.compile import compile_methods
from flip.data import builtin
from flip.data.synth import SynthConfig, is_complete, total_items
from flip.data.tokenizer import Tokenizer
from flip.distributed import resolve_device
from flip.errors import ConfigError
from flip.eval.datasets import load_classification, load_probe_splits, load_retrieval, with_classnames
from flip.eval.features import IMAGES, Masking, Meter, Progress, Runtime
from flip.eval.linear_probe import ProbeConfig, evaluate_linear_probe
from flip.eval.retrieval import evaluate_retrieval
from flip.eval.templates import as_text, resolve_classnames, resolve_templates
from flip.eval.zeroshot import evaluate_zeroshot
from flip.precision import precision_warning
from flip.saved_model import load_model, resolve_checkpoint

TASKS = ("zeroshot", "retrieval", "linear-probe")


def evaluate_checkpoint(ckpt: str | Path, task: str, *, data: str | Path | None = None,
                        masking: Masking = Masking(), runtime: Runtime = Runtime(),
                        templates: str | None = None, classnames: str | None = None, split: str = "test",
                        images_root: str | Path | None = None, probe: ProbeConfig | None = None,
                        val_fraction: float = 0.2, test_fraction: float = 0.3, probe_seed: int = 0,
                        progress: Progress | None = None, log: Callable[[str], None] | None = None,
                        compile: bool = False) -> dict:
    """Evaluate the checkpoint at `ckpt` (a run directory, a checkpoint directory or its weights file).

    task: `zeroshot` (data: a class-folder set or CLIP_benchmark webdataset folder, default the
    built-in set; `templates`, `classnames`, `split`), `retrieval` (data: Karpathy JSON, CSV/TSV
    or webdataset shards, default the built-in set; `images_root`, `split`) or `linear-probe`
    (data required; `probe`, `val_fraction`, `test_fraction`, `probe_seed`).
    `masking` applies to zeroshot and retrieval; `runtime.device` may be `auto`.
    `progress` sees each phase (encoding images, texts, ...); `log` gets a one-line
    description of the data and settings before the work starts. `compile`: torch.compile the
    encoders (inductor where it can build kernels here, else a fallback that `log` names).
    Returns the record: task, checkpoint, model, train_mask_ratio, train_samples, settings,
    data, metrics, speed.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown evaluation task {task!r}; choose one of {', '.join(TASKS)}")
    if task == "linear-probe":
        if data is None:
            raise ConfigError("linear-probe needs data: a class-folder set with train/ and test/ split folders, "
                              "or one class-folder set to split")
        if masking.mode != "full":
            raise ConfigError("masked inference (mask ratio, views) applies to zeroshot and retrieval, "
                              "not the linear probe")
    runtime = replace(runtime, device=resolve_device(str(runtime.device)))
    ckpt_dir = resolve_checkpoint(ckpt)
    model, config = load_model(ckpt_dir, runtime.device)
    num_patches = model.cfg.vision.num_patches
    if masking.views > num_patches:
        raise ConfigError(f"{masking.views}: the model has only {num_patches} patches", key="views")
    log = log or (lambda line: None)
    meter = Meter(progress)
    backend = compile_methods(model, ("encode_image", "encode_text"), runtime.device, log=log) if compile else None
    slow_precision = precision_warning(runtime.device, runtime.precision)
    if slow_precision:
        log(slow_precision)
    tokenizer = Tokenizer(model.cfg.text.context_length)  # to count the texts cut to the context

    train = config.get("train", {})
    record: dict[str, Any] = {
        "task": task, "checkpoint": str(ckpt_dir.resolve()), "model": model.cfg.name,
        "train_mask_ratio": train.get("mask_ratio"), "train_samples": train.get("samples"),
        "settings": {"device": str(runtime.device), "batch_size": runtime.batch_size,
                     "precision": runtime.precision, "workers": runtime.workers,
                     "compile": backend.name if backend else None}}
    if task != "linear-probe":
        record["settings"]["masking"] = masking.to_dict(num_patches)

    if task == "zeroshot":
        # A templates or class-names file fails before the built-in data is generated (a minute).
        if templates not in (None, "dataset"):
            resolve_templates(templates, None)
        names = resolve_classnames(classnames) if classnames is not None else None
        if data is None:
            data = builtin.zeroshot_dir(_builtin_root(progress, train))
        dataset = load_classification(data, split)
        if names is not None:
            dataset = with_classnames(dataset, names, f"--classnames {classnames}")
        template_name, template_fns = resolve_templates(templates, dataset.templates)
        truncated = tokenizer.count_truncated(t(name) for name in dataset.classnames for t in template_fns)
        log(f"zero-shot: {len(dataset.images)} images, {len(dataset.classnames)} classes from {dataset.source}; "
            f"{len(template_fns)} templates ({template_name}){_truncated_note(truncated, 'prompts', tokenizer)}; "
            f"{_masking_note(masking)}")
        metrics = evaluate_zeroshot(model, dataset, template_fns, masking, runtime, meter)
        record["data"] = {"path": str(data), "source": dataset.source, "format": dataset.format,
                          "images": len(dataset.images), "classes": len(dataset.classnames),
                          "classnames": dataset.classnames}
        record["settings"]["templates"] = {"name": template_name, "count": len(template_fns),
                                           "templates": as_text(template_fns), "truncated_prompts": truncated}
    elif task == "retrieval":
        if data is None:
            data = builtin.retrieval_csv(_builtin_root(progress, train))
        dataset = load_retrieval(str(data), images_root, split)
        truncated = tokenizer.count_truncated(dataset.captions)
        log(f"retrieval: {len(dataset.images)} images, {len(dataset.captions)} captions from "
            f"{dataset.source}{_truncated_note(truncated, 'captions', tokenizer)}; {_masking_note(masking)}")
        metrics = evaluate_retrieval(model, dataset, masking=masking, runtime=runtime, progress=meter)
        record["data"] = {"path": str(data), "format": dataset.format, "images": len(dataset.images),
                          "captions": len(dataset.captions), "truncated_captions": truncated,
                          "images_root": str(images_root) if images_root else None,
                          "split": split if dataset.format == "karpathy-json" else None}
    else:
        probe = probe or ProbeConfig()
        train_set, val_set, test_set = load_probe_splits(data, val_fraction, test_fraction, probe_seed)
        log(f"linear probe: {len(train_set.classnames)} classes; train {len(train_set.images)}, "
            f"val {len(val_set.images)}, test {len(test_set.images)} images")
        metrics = evaluate_linear_probe(model, train_set, val_set, test_set, runtime=runtime, progress=meter,
                                        config=probe)
        record["data"] = {"path": str(data), "classes": len(train_set.classnames),
                          "train_images": len(train_set.images), "val_images": len(val_set.images),
                          "test_images": len(test_set.images), "val_fraction": val_fraction,
                          "test_fraction": test_fraction, "seed": probe_seed}
        record["settings"]["probe"] = {"max_iter": probe.max_iter, "l2_grid": list(probe.l2_grid)}

    record["metrics"] = metrics
    record["speed"] = {"images_per_s": meter.rate(IMAGES), "images": meter.items.get(IMAGES, 0),
                       "seconds": meter.seconds.get(IMAGES, 0.0)}
    return record


def _builtin_root(progress: Progress | None, train: dict) -> Path:
    """The built-in sets of the scenes the checkpoint trained on, generated first (a minute, once) as a phase
    `progress` shows when they are missing: after the settings and the checkpoint were checked."""
    cfg = SynthConfig(scenes=train.get("builtin_scenes", "mixed"))
    if progress is None or is_complete(builtin.builtin_dir(cfg), cfg):
        return builtin.ensure_builtin(cfg)
    progress.start("generating built-in dataset", total_items(cfg))
    return builtin.ensure_builtin(cfg, progress=progress.advance)


def _truncated_note(count: int, what: str, tokenizer: Tokenizer) -> str:
    return f" ({count} {what} cut to {tokenizer.context_length} tokens)" if count else ""


def _masking_note(masking: Masking) -> str:
    return masking.describe() + (f", seed {masking.seed}" if masking.mode != "full" else "")

"""The training loop: masked contrastive pre-training, checkpoints, resume, logs.

`train(cfg)` runs a whole job and returns its summary; it is what `flipctl train` and
`flipctl tune-unmasked` call. The step itself does only device work: masking noise is
drawn on the device, the loss stays a tensor between log intervals (no `.item()`), and
AdamW is the fused kernel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from flip.compile import compile_module
from flip.data import builtin
from flip.data.augment import AugmentConfig
from flip.data.pipeline import SlotPosition, StreamConfig, make_loader
from flip.data.shards import check_shards, count_samples
from flip.data.synth import SynthConfig
from flip.distributed import (
    DistInfo,
    full_model_state,
    full_optimizer_state,
    init_distributed,
    load_optimizer_state,
    resolve_device,
    shard_model,
)
from flip.errors import CheckpointError, ConfigError
from flip.flops import train_step_flops
from flip.models import FLIP, ModelConfig, get_preset
from flip.models.decoder import DecoderConfig, MAEDecoder
from flip.models.pretrainer import Pretrainer
from flip.precision import precision_warning
from flip.run_dir import DECODER, RunDir, module_weights
from flip.saved_model import load_weights, read_config, resolve_checkpoint, write_atomic
from flip.train.checkpoint import checkpoint_bytes, drop_resume_state, load_state, save_checkpoint
from flip.train.config import (
    BASE_LR_RULE,
    BUDGET_RULE,
    CROP_SCALE_RULE,
    HFLIP_RULE,
    TUNE_BUDGET_RULE,
    TUNE_LR_RULE,
    TUNE_WARMUP_RULE,
    WARMUP_RULE,
    TrainConfig,
)
from flip.train.curves import CurveLogs, open_curve_logs
from flip.train.faults import (
    NonFiniteSteps,
    NonFiniteStop,
    StopRequested,
    TooMuchBadData,
    WriteFailed,
    describe_checkpoint,
)
from flip.train.input_stage import InputStage
from flip.train.load import LoadMonitor
from flip.train.optim import lr_at, make_optimizer
from flip.train.periodic_eval import PeriodicEval, headline
from flip.train.reporting import Reporter
from flip.train.step import TrainStep, time_text_tower

# The bad-data fraction is judged once this many samples have been read: a few bad samples at the
# start of a good corpus must not stop a run (at a true rate of 3%, exceeding 5% in 1000 samples
# is a 3.7-sigma event).
BAD_FRACTION_MIN_SAMPLES = 1000


@dataclass
class Progress:
    """Everything besides weights and optimizer moments that a resume needs."""

    step: int = 0
    samples_seen: int = 0
    positions: list[SlotPosition] = field(default_factory=list)
    next_slot: int = 0
    skipped_before: dict[str, int] = field(default_factory=dict)  # bad samples by kind, counted by data
    #                                                                 workers of earlier (stopped) processes
    nonfinite_steps: int = 0  # steps whose update was skipped for a NaN or infinite loss or gradient
    truncated_before: int = 0  # captions cut to the context length by earlier processes' data workers
    elapsed_s: float = 0.0
    eval_time_s: float = 0.0  # part of elapsed_s spent in periodic evaluation, not training
    load: dict = field(default_factory=dict)  # the machine's load over earlier attempts (flip.train.load)


def model_config(cfg: TrainConfig) -> ModelConfig:
    """The model a run trains: its preset at the run's context length and loss."""
    return get_preset(cfg.model).with_context_length(cfg.context_length).with_loss(cfg.loss)


def init_checkpoint(path: str, model_cfg: ModelConfig) -> Path:
    """The checkpoint `--init-from` names, if it holds `model_cfg`'s model (the CLI checks it before it
    generates any data; the weights themselves are read when the run loads them)."""
    source = resolve_checkpoint(path)
    saved_model = read_config(source).get("model")
    if saved_model != model_cfg.to_dict():
        name = (saved_model or {}).get("name", "unknown")
        biased = model_cfg.init_logit_bias is not None
        if saved_model and ("init_logit_bias" in saved_model) != biased:
            raise CheckpointError(f"checkpoint {source} was trained with the "
                                  f"{'sigmoid' if 'init_logit_bias' in saved_model else 'contrastive'} loss: "
                                  f"continue it with the same --loss")
        raise CheckpointError(f"checkpoint {source} is for another model ({name}, with other dimensions) "
                              f"than {model_cfg.name}")
    return source


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill every None with its concrete value, so the saved config says exactly what ran."""
    cfg.validate()
    cfg = dataclasses.replace(cfg)
    scenes_root = builtin.builtin_dir(SynthConfig(scenes=cfg.builtin_scenes))
    other_data = cfg.data is not None and Path(cfg.data) != Path(builtin.train_spec(scenes_root))
    if other_data and cfg.builtin_scenes != "mixed":
        raise ConfigError("applies to the built-in dataset only, not to --data", key="builtin_scenes")
    builtin_data = cfg.data is None
    if cfg.samples is None:
        cfg.samples = BUDGET_RULE(cfg)  # before data is filled in: the rule reads whether it was given
    if builtin_data:
        root = scenes_root
        cfg.data = builtin.train_spec(root)
        # The built-in held-out sets say something only about a model trained on the built-in data:
        # with the user's --data, only the eval sets the user names run.
        if cfg.eval_data is None:
            cfg.eval_data = str(builtin.retrieval_csv(root))
        if cfg.eval_zeroshot is None:
            cfg.eval_zeroshot = str(builtin.zeroshot_dir(root))
    if cfg.crop_scale_min is None:
        cfg.crop_scale_min = CROP_SCALE_RULE(cfg, builtin_data)
    if cfg.hflip is None:
        cfg.hflip = HFLIP_RULE(cfg, builtin_data)
    if cfg.base_lr is None and cfg.lr is None:
        cfg.base_lr = BASE_LR_RULE(cfg)
    if cfg.out is None:
        model = get_preset(cfg.model).name.replace("/", "-")
        cfg.out = f"runs/{model}-mask{cfg.mask_ratio:g}-{time.strftime('%Y%m%d-%H%M%S')}"
    return cfg


def _budget_samples(cfg: TrainConfig, urls: list[str]) -> int:
    if cfg.samples is not None:
        return cfg.samples
    if cfg.epochs is None:
        raise ConfigError("give a budget with --samples or --epochs when training on your own --data")
    return max(cfg.batch_size, math.ceil(cfg.epochs * count_samples(urls)))


class ResumeConflict(ConfigError):
    """Settings given to a resume differ from the run's saved ones: `conflicts` holds (key, given, saved)."""

    def __init__(self, run_dir: str | Path, conflicts: list[tuple[str, Any, Any]]):
        self.run_dir, self.conflicts = run_dir, conflicts
        super().__init__(self.describe())

    def describe(self, name=lambda key: key) -> str:
        """The message, each setting named by `name(key)` (the command line names flags)."""
        listed = ", ".join(f"{name(key)} {given} (saved: {saved})" for key, given, saved in self.conflicts)
        return (f"{self.run_dir} was started with other settings: {listed}; a resumed run keeps its settings, "
                f"so drop these or start a new run in another directory")

    def __reduce__(self):
        return type(self), (self.run_dir, self.conflicts)


def resumed_config(run_dir: str | Path, saved: dict[str, Any], settings: dict[str, Any]) -> TrainConfig:
    """The saved config of the run being resumed, with `settings` (what a requeued command line gives)
    checked against it: equal values are accepted, the settings that may change on resume (knobs with
    resume=True: logging, checkpointing, fault policy) are applied, any other difference is refused."""
    # Runs saved before --decode existed were cropped by the PIL path: they resume on it, as they began.
    saved = {"decode": "legacy", **saved}
    saved_cfg = TrainConfig.from_dict(saved)
    given = TrainConfig.from_dict({**saved, **settings})  # normalised as a fresh run's settings are
    changeable = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata["resume"]}
    conflicts = [(key, getattr(given, key), getattr(saved_cfg, key)) for key in settings
                 if key != "out" and key not in changeable and getattr(given, key) != getattr(saved_cfg, key)]
    if conflicts:
        raise ResumeConflict(run_dir, conflicts)
    given.out = saved_cfg.out
    given.validate()
    return given


def fsdp_blocks(pretrainer: Pretrainer) -> list[torch.nn.Module]:
    """The modules FSDP gathers one at a time: every transformer block but the text tower's last, whose
    weights `_block_at_first_token` uses without calling the block (FSDP's hooks would not fire); that
    one stays with the rest of the weights, in the root group."""
    model, decoder = pretrainer.model, pretrainer.decoder
    blocks = [*model.visual.blocks, *model.text.blocks[:-1]]
    return blocks + ([*decoder.blocks] if decoder is not None else [])


class Trainer:
    """One training run. `stop` (anything with `is_set()`, e.g. a threading.Event), when set, makes
    `run()` finish the step in flight, write a checkpoint and raise `StopRequested`.

    Built in the order a run needs its parts: the run directory (resuming: the saved settings), the
    processes and device, the model, the data and budget, the weights to start from, the optimizer
    and the resume state, then the step. `run()` is the loop; what it does besides stepping (log,
    checkpoint, stop, evaluate) is a method each, and every write the main process makes goes
    through `_writing`, which turns a failed one into `WriteFailed` in every process.
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False, reporter: Reporter | None = None,
                 stop=None, settings: dict[str, Any] | None = None):
        self.reporter = reporter or Reporter()
        self.stop = stop
        self.files = RunDir(cfg.out)
        self.run_dir = self.files.path
        self.resumed, self.created_dir = bool(resume), not self.run_dir.exists()
        self.resume_from = self._check_run_dir(resume)
        self.last_checkpoint: Path | None = self.resume_from
        if resume:
            cfg = resumed_config(self.run_dir, read_config(self.resume_from)["train"], settings or {})
        self.cfg = cfg
        self.dist, self.device, self.local_batch = self._place()

        torch.manual_seed(cfg.seed + self.dist.rank)
        random.seed(cfg.seed)
        self.model_cfg, self.model, self.decoder = self._build_model()
        self.pretrainer = Pretrainer(self.model, self.decoder)
        self._load_weights(resume)  # before the data: an unusable checkpoint stops the run before it is made
        self.urls = self._build_data()
        self.total_samples, self.total_steps, self.warmup_steps = self._budget()
        # Loaded before the first step: unusable eval data stops the run before it trains.
        self.periodic_eval = PeriodicEval.load(cfg, self.model_cfg.vision.image_size) \
            if self.dist.is_main and cfg.periodic_eval else PeriodicEval()
        self._eval_sets = cfg.periodic_eval and (cfg.eval_data is not None or cfg.eval_zeroshot is not None)

        self.fsdp = self._shard()  # after loading whole weights, before the optimizer takes the parameters
        self._evaluates = self._eval_sets and (self.dist.is_main or self.fsdp)  # this process takes part
        self._whole: FLIP | None = None  # under FSDP, the main process's whole copy for evaluation
        self.optimizer = make_optimizer(self.pretrainer, cfg.peak_lr, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                                        cfg.eps, self.device)
        self.progress = self._restore() if resume else Progress()
        forward_model = self._forward_model()
        self._warn_precision()
        self.input_stage = InputStage(self.device, self._augment())
        self.step_fn = TrainStep(self.model, self.optimizer, cfg.step_config(), forward_model=forward_model,
                                 guard_nonfinite=True)

        # What the loop keeps: data-stream slots, counts, the last batch (the text tower is timed on it) ...
        self._slots = max(1, cfg.workers)
        if not self.progress.positions:
            self.progress.positions = [SlotPosition() for _ in range(self._slots)]
        self._skipped_by_slot: list[dict[str, int]] = [{} for _ in range(self._slots)]
        self._truncated_by_slot = [0] * self._slots
        self.nonfinite = NonFiniteSteps(self.device)
        self._nonfinite_before = self.progress.nonfinite_steps
        self._last_tokens: torch.Tensor | None = None
        self._last_word_classes: torch.Tensor | None = None
        # ... what it has logged and evaluated ...
        self.interval = _LogInterval()
        self.last_metrics: dict[str, Any] = {}
        self.eval_metrics: dict[str, float] = {}
        self.eval_step: int | None = None
        self.eval_errors: list[dict[str, Any]] = []
        # ... and what `run()` opens and starts (the logs on the main process only).
        self.metrics_log = None
        self.curves: CurveLogs | None = None
        self.start_time = 0.0  # perf_counter() at step 0, earlier attempts included
        self.load_monitor: LoadMonitor | None = None

    # -- construction ----------------------------------------------------------------------------------
    def _check_run_dir(self, resume: bool) -> Path | None:
        """The checkpoint a resumed run continues from (None for a fresh run, which must not start where
        a run was trained)."""
        if resume:
            if not self.files.has_checkpoint():
                raise CheckpointError(f"nothing to resume in {self.run_dir}: no checkpoint there yet")
            return resolve_checkpoint(self.run_dir)
        if self.files.holds_run():
            raise ConfigError(f"run directory {self.run_dir} already holds a run; pass --resume to continue it "
                              f"or choose another --out")
        return None

    def _place(self) -> tuple[DistInfo, torch.device, int]:
        """The processes, this one's device, and its share of the batch."""
        cfg = self.cfg
        device_type = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
        dist = init_distributed(device_type)
        device = resolve_device(cfg.device, dist)
        if cfg.batch_size % dist.world_size:
            raise ConfigError(f"({cfg.batch_size}) must divide by the {dist.world_size} processes", key="batch_size")
        local_batch = cfg.batch_size // dist.world_size
        if local_batch % cfg.accum_steps:
            raise ConfigError(f"({cfg.accum_steps}) must divide each process's share of the batch "
                              f"({local_batch} = {cfg.batch_size} / {dist.world_size} processes)", key="accum_steps")
        return dist, device, local_batch

    def _build_model(self) -> tuple[ModelConfig, FLIP, MAEDecoder | None]:
        cfg = self.cfg
        model_cfg = model_config(cfg)
        model = FLIP(model_cfg).to(self.device)
        model.set_grad_checkpointing(cfg.activation_checkpointing)
        decoder = None
        if cfg.recon_weight > 0:
            decoder_cfg = DecoderConfig(cfg.decoder_depth, cfg.decoder_width, cfg.decoder_heads)
            # At the training size: its (fixed, unsaved) position embeddings cover the patches the step sees.
            decoder = MAEDecoder(model_cfg.vision.at_image_size(cfg.image_size), decoder_cfg).to(self.device)
        return model_cfg, model, decoder

    def _build_data(self) -> list[str]:
        """The shards to train on (the built-in data generated first if the run trains on it)."""
        _ensure_builtin_data(self.cfg)
        urls = check_shards(self.cfg.data)
        if self.cfg.data_fraction < 1:  # a smaller dataset, in whole shards: the first ceil(f * n) of them
            urls = urls[:max(1, math.ceil(self.cfg.data_fraction * len(urls)))]
        return urls

    def _budget(self) -> tuple[int, int, int]:
        """Samples and steps to train, and the steps of the lr warm-up."""
        cfg = self.cfg
        samples = _budget_samples(cfg, self.urls)
        warmup = cfg.warmup if cfg.warmup is not None else WARMUP_RULE(cfg, samples)
        return samples, max(1, samples // cfg.batch_size), max(1, warmup // cfg.batch_size)

    def _load_weights(self, resume: bool) -> None:
        """The weights a run starts from: the resumed run's, or `--init-from`'s (else the random init)."""
        if resume:
            load_weights(self.model, self.resume_from)
            if self.decoder is not None:
                load_weights(self.decoder, self.resume_from, module_weights(DECODER))
        elif self.cfg.init_from:
            self._load_init_weights(self.cfg.init_from)

    def _load_init_weights(self, path: str) -> None:
        load_weights(self.model, init_checkpoint(path, self.model_cfg))

    def _shard(self) -> bool:
        """Whether the model is sharded over the processes (FSDP replaces its parameters with shards)."""
        fsdp = self.cfg.fsdp and self.dist.world_size > 1
        if self.cfg.fsdp and not fsdp:
            self.reporter.message("note: --fsdp shards the model over processes; with one process it stays whole")
        if fsdp:
            shard_model(self.pretrainer, fsdp_blocks(self.pretrainer), self.device)
        return fsdp

    def _restore(self) -> Progress:
        """The resumed run's optimizer state, RNG states and progress (data positions, counts, time)."""
        state = load_state(self.resume_from)
        load_optimizer_state(self.pretrainer, self.optimizer, state["optimizer"])
        ranks = state["ranks"]
        if len(ranks) != self.dist.world_size:
            raise CheckpointError(f"{self.resume_from} was written by {len(ranks)} processes; resume it "
                                       f"with the same number (now {self.dist.world_size})")
        own = ranks[self.dist.rank]
        saved = dict(own["progress"])
        if isinstance(saved.get("skipped_before"), int):  # checkpoints written before counts had kinds
            saved["skipped_before"] = {"unknown": saved["skipped_before"]} if saved["skipped_before"] else {}
        torch.set_rng_state(own["rng"]["torch"])
        if self.device.type == "cuda" and own["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(own["rng"]["cuda"], self.device)
        random.setstate(own["rng"]["python"])
        return Progress(**{**saved, "positions": [SlotPosition(**p) for p in saved["positions"]]})

    def _forward_model(self) -> torch.nn.Module:
        """What the step calls forward on: the pretrainer, wrapped by DDP over processes, compiled if asked."""
        forward_model = self.pretrainer
        if self.dist.world_size > 1 and not self.fsdp:
            forward_model = DistributedDataParallel(
                forward_model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.cfg.compile:  # inductor where it can build kernels here, else a stated fallback
            forward_model, _ = compile_module(forward_model, self.device, log=self._main_message)
        return forward_model

    def _warn_precision(self) -> None:
        """E.g. bf16 on a CPU without native bf16: many times slower, said once."""
        warning = precision_warning(self.device, self.cfg.precision) if self.dist.is_main else None
        if warning:
            self.reporter.message(warning)

    def _main_message(self, text: str) -> None:
        if self.dist.is_main:
            self.reporter.message(text)

    def discard_failed_start(self) -> None:
        """A fresh run that failed before its first step leaves nothing behind: no config, no empty log, no
        run directory it made itself."""
        if self.resumed or self.progress.step > 0 or not self.dist.is_main or self.files.has_checkpoint():
            return
        for path in (self.files.config, self.files.metrics):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.files.tensorboard, ignore_errors=True)
        if self.created_dir:
            with contextlib.suppress(OSError):  # anything else in it is not ours to remove
                self.run_dir.rmdir()

    def _rank_state(self) -> dict[str, Any]:
        """What differs between ranks: data-stream positions and RNG states."""
        progress = dataclasses.asdict(self.progress)
        progress["skipped_before"] = self._skipped()
        progress["truncated_before"] = self._truncated()
        rng = {"torch": torch.get_rng_state(), "python": random.getstate(),
               "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}
        return {"progress": progress, "rng": rng}

    def _saved_config(self) -> dict[str, Any]:
        return {"model": self.model_cfg.to_dict(), "train": self.cfg.to_dict()}

    # -- the loop --------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train to the end of the budget (a resumed run from its checkpoint's step); return the summary."""
        self._open_logs()
        title = f"train {self.model_cfg.name} mask {self.cfg.mask_ratio:g}"
        self.reporter.start(self.total_steps, self.progress.step, title)
        try:
            self._loop(iter(self._loader()))
        finally:
            self._close_logs()
        summary = self._summary(time.perf_counter() - self.start_time)
        if self.dist.is_main and not self.cfg.keep_resume_state:
            drop_resume_state(self.run_dir)  # finished: only the weights are read from here on
        return summary

    def _loop(self, loader) -> None:
        cfg, p = self.cfg, self.progress
        self.start_time = time.perf_counter() - p.elapsed_s
        self.load_monitor = LoadMonitor(p.load)
        self.interval = _LogInterval()
        while p.step < self.total_steps:
            lr = self._step(loader)
            done = p.step == self.total_steps
            at_log = p.step % cfg.log_every == 0 or done
            if at_log:
                self._log_interval(lr)
            stopping = not done and self._stop_wanted(at_log)
            # The checkpoint first: whatever happens in the evaluation, the step's work is kept.
            if p.step % cfg.ckpt_every == 0 or done or stopping:
                self._checkpoint()
            if stopping:
                raise StopRequested(f"stopped at step {p.step} of {self.total_steps} after writing "
                                    f"{self.last_checkpoint}", self.run_dir, p.step, self.last_checkpoint)
            if self._eval_sets and (p.step % cfg.eval_every == 0 or done):
                self._evaluate()
            self.reporter.step(p.step, self.last_metrics if at_log else None)

    def _step(self, loader) -> float:
        """One optimizer step on the next batch; returns its learning rate."""
        p = self.progress
        wait_start = time.perf_counter()
        images, tokens, meta = next(loader)
        self.interval.wait += time.perf_counter() - wait_start
        self._last_tokens = tokens
        lr = lr_at(p.step, self.total_steps, self.warmup_steps, self.cfg.peak_lr, self.cfg.min_lr_ratio)
        images = self.input_stage(images)  # uint8 / encoded / float -> normalised float on the device
        tokens = tokens.to(self.device, non_blocking=True)
        word_classes = meta.get("word_classes")  # syntax text masking: the workers tagged the captions
        if word_classes is not None:
            self._last_word_classes = word_classes
            word_classes = word_classes.to(self.device, non_blocking=True)
        out = self.step_fn(images, tokens, lr, word_classes)
        nonfinite = out.pop("nonfinite")
        self.nonfinite.add(p.step + 1, nonfinite)
        self.interval.add(out, nonfinite)
        p.step += 1
        p.samples_seen += self.cfg.batch_size
        self._advance_stream(meta)
        self.load_monitor.tick()
        return lr

    def _advance_stream(self, meta: dict[str, Any]) -> None:
        """Where the batch's data-loader slot now is in its stream, and what its worker skipped and cut."""
        slot = meta["slot"]
        self.progress.positions[slot] = SlotPosition(meta["epoch"], meta["offset"])
        self.progress.next_slot = (slot + 1) % self._slots
        self._skipped_by_slot[slot] = meta["skipped"]
        self._truncated_by_slot[slot] = meta.get("truncated_captions", 0)

    def _log_interval(self, lr: float) -> None:
        """At a log step: stop on non-finite steps (policy "stop") or too much bad data, log the interval's
        means and rates, and start the next interval."""
        p, interval = self.progress, self.interval
        self._check_nonfinite()
        elapsed = time.perf_counter() - interval.start
        self.last_metrics = {
            "step": p.step, "samples": p.samples_seen, **interval.mean_losses(),
            "lr": lr, "temperature": 1.0 / self.model.logit_scale.exp().item(),
            **({"logit_bias": self.model.logit_bias.item()} if self.model.logit_bias is not None else {}),
            "samples_per_s": interval.steps * self.cfg.batch_size / elapsed,
            "data_wait_fraction": interval.wait / elapsed,
            "skipped_samples": sum(self._skipped().values()), "nonfinite_steps": p.nonfinite_steps,
        }
        self._record(self.last_metrics)
        if self.curves:
            self.curves.log("train", p.step, p.samples_seen,
                            {k: v for k, v in self.last_metrics.items() if k not in ("step", "samples")})
        self.interval = _LogInterval()
        self._check_bad_data()

    # -- logs ------------------------------------------------------------------------------------------
    def _open_logs(self) -> None:
        """Write the run's config and open its logs (the main process's)."""
        main, p = self.dist.is_main, self.progress
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        with self._writing(str(self.files.config)):
            if main:
                self.files.config.write_text(json.dumps(self._saved_config(), indent=2))
        with self._writing(f"the metrics log {self.files.metrics}"):
            if main:
                self.metrics_log = self._open_metrics()
        if main:
            self.curves = open_curve_logs(self.cfg, self.run_dir, p.step, p.samples_seen, say=self.reporter.message)

    def _open_metrics(self):
        """The metrics log, opened to append. A fresh run starts it empty (what a process killed before
        the first checkpoint logged belongs to no run); a resumed run drops the records after its
        checkpoint's step, which it is about to log again."""
        path, step = self.files.metrics, self.progress.step
        if step == 0 or not path.exists():
            return path.open("w")
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line + "\n")
            except json.JSONDecodeError:
                pass  # a line cut short by a kill
        write_atomic(path, "".join(kept))
        return path.open("a")

    def _record(self, record: dict[str, Any] | None) -> None:
        """Append `record` to the metrics log, which the main process alone has open; every process
        passes here at the same steps (see `_writing`)."""
        with self._writing(f"the metrics log {self.files.metrics}"):
            if self.metrics_log and record is not None:
                self._log(record)

    def _log(self, record: dict[str, Any]) -> None:
        """One line, flushed: a run killed later keeps what it logged."""
        self.metrics_log.write(json.dumps(record) + "\n")
        self.metrics_log.flush()

    def _close_logs(self) -> None:
        self.reporter.close()
        if self.metrics_log:
            self.metrics_log.close()
        if self.curves:
            self.curves.close()

    # -- FSDP ---------------------------------------------------------------------------------------
    def _whole_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        """The model's (and decoder's) weights, whole, as an unwrapped module's state dicts, by checkpoint
        file name. Under FSDP a collective (every process calls it) whose result is on the main process."""
        weights = full_model_state(self.pretrainer)

        def part(module: str) -> dict[str, torch.Tensor]:  # by the pretrainer's attribute name
            return {key.removeprefix(f"{module}."): value for key, value in weights.items()
                    if key.startswith(f"{module}.")}

        return {"model": part("model"), DECODER: part("decoder")}

    def _whole_model(self) -> FLIP | None:
        """The model with all its weights, for what runs outside the training step (evaluation, timing):
        the model itself, or under FSDP a copy on the main process loaded with the gathered weights (a
        collective: every process calls it; the others get None)."""
        if not self.fsdp:
            return self.model
        weights = self._whole_weights()["model"]
        if not self.dist.is_main:
            return None
        if self._whole is None:  # one inference copy (4 bytes a parameter), not the training state's 16
            self._whole = FLIP(self.model_cfg).to(self.device)
            self._whole.set_grad_checkpointing(self.cfg.activation_checkpointing)
        self._whole.load_state_dict(weights)
        return self._whole

    # -- data ---------------------------------------------------------------------------------------
    @property
    def _syntax_masking(self) -> bool:
        """Whether the step needs the captions' word classes (which the data loader's workers compute)."""
        return self.cfg.text_mask == "syntax" and self.cfg.text_mask_ratio > 0

    def _augment(self) -> AugmentConfig:
        size = self.model_cfg.vision.at_image_size(self.cfg.image_size).image_size  # --image-size: crops at it
        return AugmentConfig(size, (self.cfg.crop_scale_min, 1.0), self.cfg.hflip)

    def _loader(self):
        cfg = self.cfg
        stream = StreamConfig(
            urls=tuple(self.urls), batch_size=self.local_batch, context_length=cfg.context_length,
            augment=self._augment(), shuffle_buffer=cfg.shuffle_buffer, resampled=cfg.resampled, seed=cfg.seed,
            decode=cfg.decode, word_classes=self._syntax_masking)
        return make_loader(stream, cfg.workers, self.dist.rank, self.dist.world_size,
                           self.progress.positions, self.progress.next_slot,
                           pin_memory=self.device.type == "cuda")

    # -- evaluation and checkpoints --------------------------------------------------------------
    def evaluate(self, model: FLIP | None = None) -> dict[str, float]:
        """The periodic evaluation's metrics for the model as it is now, or for `model` (main process)."""
        return self.periodic_eval.run(model if model is not None else self.model, self.device, self.cfg.precision)

    def _evaluate(self) -> None:
        """The periodic evaluation, logged; its time is not training time. The main process evaluates
        (under FSDP every process helps gather the weights); every process passes the record's write."""
        record, start = None, time.perf_counter()
        if self._evaluates:
            # The evaluation (its data loaders, the whole copy's initialisation) must not draw from the
            # training RNG, saved before it: a resumed run would draw other masks than this one.
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                model = self._whole_model()  # under FSDP every process takes part in gathering it
                if self.dist.is_main:
                    record = self._periodic_eval(model)
        self._record(record)
        if self._evaluates:
            self.progress.eval_time_s += time.perf_counter() - start

    def _periodic_eval(self, model: FLIP | None = None) -> dict[str, Any]:
        """Evaluate, and return the metrics log's record; a failure is a warning and training goes on."""
        p = self.progress
        try:
            metrics = self.evaluate(model)
        except Exception as exc:  # noqa: BLE001 - an evaluation problem must never cost the training run
            error = f"{type(exc).__name__}: {exc}"
            self.eval_errors.append({"step": p.step, "error": error})
            self.reporter.message(f"warning: step {p.step}: periodic evaluation failed ({error}); training goes on")
            return {"step": p.step, "samples": p.samples_seen, "eval_error": error}
        self.eval_metrics, self.eval_step = metrics, p.step
        self.reporter.message(f"step {p.step}: {headline(metrics)}")
        if self.curves:
            self.curves.log("eval", p.step, p.samples_seen, metrics)
            self.curves.flush()
        return {"step": p.step, "samples": p.samples_seen, "eval": metrics}

    def _eval_summary(self) -> dict[str, Any]:
        """The summary's evaluation entries besides `eval` (the last successful metrics)."""
        if not self.cfg.periodic_eval:
            return {"eval_note": "periodic evaluation off"}
        if self.cfg.eval_data is None and self.cfg.eval_zeroshot is None:
            return {"eval_note": "no eval data given"}
        return {"eval_step": self.eval_step, **({"eval_errors": self.eval_errors} if self.eval_errors else {})}

    def _checkpoint(self) -> None:
        """Every process's progress and RNG states, with the weights and optimizer state (gathered whole
        under FSDP), saved by the main process; `last_checkpoint` names it."""
        p = self.progress
        p.elapsed_s = time.perf_counter() - self.start_time
        p.load = self.load_monitor.record()
        self._check_nonfinite()  # a checkpoint holds only good steps: the check comes first
        ranks = [self._rank_state()]
        if self.dist.world_size > 1:
            ranks = [None] * self.dist.world_size
            torch.distributed.all_gather_object(ranks, self._rank_state())
        # Under FSDP, gathering the whole weights and optimizer state is a collective: every process joins.
        states = self._whole_weights() if self.fsdp else None
        optimizer_state = full_optimizer_state(self.pretrainer, self.optimizer)
        with self._writing(f"checkpoint {self.files.checkpoint(p.step)}", needed=self._checkpoint_size):
            if self.dist.is_main:
                extra = {DECODER: self.decoder} if self.decoder is not None else None
                state = {"optimizer": optimizer_state, "ranks": ranks}
                self.last_checkpoint = save_checkpoint(self.run_dir, p.step, self.model, self._saved_config(), state,
                                                       keep_last=self.cfg.keep_checkpoints, extra_modules=extra,
                                                       states=states)

    # -- faults ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _writing(self, what: str, needed: Callable[[], int] | None = None):
        """Around each write of the main process (config, metrics log, checkpoints, summary), which every
        process passes at the same point: a failed write (an OSError) stops the run with a `WriteFailed`
        naming `what` (and, with `needed`, the bytes a checkpoint takes), and stops every process here
        with it. A process that went on would wait in its next collective for one that has stopped: under
        NCCL until the timeout (gloo reports the closed connection as a traceback). Costs one all-reduce
        per write in a run of several processes."""
        failure: WriteFailed | None = None
        try:
            yield
        except OSError as exc:
            failure = self._write_failed(what, exc, needed() if needed else None)
            failure.__cause__ = exc
        if self.dist.world_size == 1:
            if failure is not None:
                raise failure
            return
        if not self._global_sum(float(failure is not None))[0]:
            return
        reports = [None] * self.dist.world_size
        report = None if failure is None else (str(failure), failure.step, failure.checkpoint)
        torch.distributed.all_gather_object(reports, report)
        message, step, checkpoint = next(r for r in reports if r is not None)
        raise WriteFailed(message, self.run_dir, step, checkpoint) from failure

    def _write_failed(self, what: str, exc: OSError, needed: int | None = None) -> WriteFailed:
        reason = exc.strerror or (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        file = f" ({exc.filename})" if exc.filename and str(exc.filename) not in what else ""
        space = f"{_size(shutil.disk_usage(self.run_dir).free)} free there"
        if needed:
            space += f", a checkpoint needs about {_size(needed)}"
        return WriteFailed(f"cannot write {what}{file}: {reason} ({space}); training stopped. "
                           f"{describe_checkpoint(self.last_checkpoint).capitalize()}: make room, then resume "
                           f"with --resume", self.run_dir, self.progress.step, self.last_checkpoint)

    def _checkpoint_size(self) -> int:
        """Bytes a checkpoint takes: the last one's size, else the weights and two AdamW moments."""
        if self.last_checkpoint is not None and self.last_checkpoint.is_dir():
            return checkpoint_bytes(self.last_checkpoint)
        return 3 * sum(p.numel() * p.element_size() for p in self.pretrainer.parameters())

    def _check_nonfinite(self) -> None:
        """Host-side look at the device's count of non-finite steps (a sync: log intervals and checkpoints)."""
        count, first = self.nonfinite.read()
        if not count:
            return
        if self.cfg.on_nonfinite == "stop":
            raise NonFiniteStop(
                f"step {first}: the loss or a gradient is NaN or infinite; its update was not applied and "
                f"training stopped. {describe_checkpoint(self.last_checkpoint).capitalize()}: resume with "
                f"--on-nonfinite skip to skip such steps, or start again with a lower --lr or a --grad-clip",
                self.run_dir, first, self.last_checkpoint)
        self.progress.nonfinite_steps = self._nonfinite_before + count

    def _skipped(self) -> dict[str, int]:
        """Bad samples by kind: earlier processes' and this one's workers'."""
        total = dict(self.progress.skipped_before)
        for counts in self._skipped_by_slot:
            for kind, n in counts.items():
                total[kind] = total.get(kind, 0) + n
        return total

    def _truncated(self) -> int:
        """Captions longer than the context length, cut to it: earlier processes' and this one's workers'."""
        return self.progress.truncated_before + sum(self._truncated_by_slot)

    def _global_sum(self, *values: float) -> list[float]:
        """`values` summed over the processes (a collective: all call it at the same steps)."""
        if self.dist.world_size == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def _check_bad_data(self) -> None:
        """Stop when too much of what was read is unusable (at log intervals)."""
        skipped = self._skipped()
        # An unreadable shard is counted once, whatever it held: it is in the breakdown, not the fraction.
        bad = self._global_sum(sum(n for kind, n in skipped.items() if kind != "unreadable_shard"))[0]
        read = bad + self.progress.samples_seen
        if read < BAD_FRACTION_MIN_SAMPLES or bad <= self.cfg.max_bad_fraction * read:
            return
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(skipped.items(), key=lambda kv: -kv[1]) if n)
        raise TooMuchBadData(
            f"{int(bad)} of the {int(read)} samples read so far are unusable ({bad / read:.1%}, above "
            f"--max-bad-fraction {self.cfg.max_bad_fraction:g}; {kinds}): training stopped. "
            f"{describe_checkpoint(self.last_checkpoint).capitalize()}: check the --data shards, or resume "
            f"with a higher --max-bad-fraction", self.run_dir, self.progress.step, self.last_checkpoint)

    def _stop_wanted(self, at_log: bool) -> bool:
        wanted = self.stop is not None and self.stop.is_set()
        if self.dist.world_size == 1:
            return wanted
        # Every process must stop at the same step: they agree at log intervals (one collective).
        return at_log and self._global_sum(float(wanted))[0] > 0

    # -- the end -----------------------------------------------------------------------------------------
    def _summary(self, wall_s: float) -> dict[str, Any]:
        # The step as it runs (kept patches and text tokens, the decoder, the loss), at the global batch:
        # every process's share together.
        step_flops = train_step_flops(self.model_cfg, self.cfg, self.cfg.batch_size)["total"]
        flops = step_flops / self.cfg.batch_size
        last = self.last_metrics
        summary = {
            "run_dir": str(self.run_dir), "model": self.model_cfg.name, "mask_ratio": self.cfg.mask_ratio,
            "wall_time_s": wall_s, "train_time_s": wall_s - self.progress.eval_time_s,
            "eval_time_s": self.progress.eval_time_s,
            "steps": self.progress.step, "samples_seen": self.progress.samples_seen,
            "train_flops_per_step": step_flops, "train_flops_per_sample": flops,
            "train_flops_total": step_flops * self.progress.step,
            "final_loss": last.get("loss"), "final_temperature": last.get("temperature"),
            "samples_per_s": self.progress.samples_seen / wall_s if wall_s else None,
            "skipped_samples": sum(self._skipped().values()), "skipped_by_kind": self._skipped(),
            "nonfinite_steps": self.progress.nonfinite_steps, "truncated_captions": self._truncated(),
            "eval": self.eval_metrics, "parent": self.cfg.parent,
            # the batch as it ran: each device's forward chunk x accumulation steps x processes
            "world_size": self.dist.world_size, "fsdp": self.fsdp,
            "per_device_batch": self.local_batch // self.cfg.accum_steps,
            "accum_steps": self.cfg.accum_steps, "global_batch": self.cfg.batch_size,
            "final_losses": {k: last[k] for k in ("contrastive", "recon") if k in last},
            "load": self.load_monitor.summary(),  # was the machine shared? (time figures are clean or not)
        }
        summary.update(self._eval_summary())
        if self.cfg.text_mask != "none" and self._last_tokens is not None:
            model = self._whole_model()  # a collective under FSDP; the main process times it
            if model is not None:
                classes = self._last_word_classes
                summary["text_masking"] = time_text_tower(
                    model, self._last_tokens.to(self.device), self.cfg.text_mask, self.cfg.text_mask_ratio,
                    word_classes=classes.to(self.device) if classes is not None else None)
        with self._writing(str(self.files.summary)):
            if self.dist.is_main:
                self.files.summary.write_text(json.dumps(summary, indent=2))
        return summary


class _LogInterval:
    """What the loop gathers over a log interval: each loss summed on the device (leaving out the steps
    skipped as non-finite), the steps, and the seconds spent waiting for data since `start`."""

    def __init__(self):
        self.start = time.perf_counter()
        self.wait = 0.0
        self.steps = 0
        self.sums: dict[str, torch.Tensor] = {}
        self.good: torch.Tensor | None = None

    def add(self, losses: dict[str, torch.Tensor], nonfinite: torch.Tensor) -> None:
        kept = nonfinite == 0
        for name, value in losses.items():
            value = torch.where(kept, value, 0.0)
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.good = 1 - nonfinite if self.good is None else self.good + (1 - nonfinite)
        self.steps += 1

    def mean_losses(self) -> dict[str, float]:
        """The interval's mean losses (NaN if every step was skipped)."""
        good = self.good.item() if self.good is not None else 0
        return {name: (total / good).item() if good else math.nan for name, total in self.sums.items()}


def _size(n: float) -> str:
    units = ["B", "KB", "MB", "GB", "TB"]
    while n >= 1024 and len(units) > 1:
        n, units = n / 1024, units[1:]
    return f"{n:.0f} B" if units[0] == "B" else f"{n:.1f} {units[0]}"


def train(cfg: TrainConfig, resume: bool | str = False, reporter: Reporter | None = None, stop=None,
          settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (or resume) a run and return its summary.

    resume=True continues the run in `cfg.out` from its last checkpoint with its saved settings
    (`cfg`'s other fields are not read); `settings`, e.g. the flags of a requeued command line, are
    checked against the saved ones (`resumed_config`). resume="auto" resumes when `cfg.out` holds a
    checkpoint and starts `cfg` afresh otherwise. A finished run is not trained again: resuming it
    returns its summary. `stop`: see `Trainer`. A run that stops early raises a
    `flip.train.faults.TrainingStopped` naming the checkpoint it kept.
    """
    if resume not in (True, False, "auto"):
        raise ValueError(f"resume must be True, False or 'auto', got {resume!r}")
    if resume == "auto":
        resume = cfg.out is not None and RunDir(cfg.out).has_checkpoint()
    if not resume:
        return _run_fresh(Trainer(resolve(cfg), reporter=reporter, stop=stop))
    files = RunDir(cfg.out)
    if files.summary.exists() and files.has_checkpoint():
        resumed_config(cfg.out, read_config(resolve_checkpoint(cfg.out))["train"], settings or {})
        return json.loads(files.summary.read_text())
    return Trainer(cfg, resume=True, reporter=reporter, stop=stop, settings=settings).run()


def tune_unmasked(ckpt_path: str, samples: int | None = None, epochs: float | None = None,
                  lr: float | None = None, warmup: int | None = None, out: str | None = None,
                  reporter: Reporter | None = None, stop=None, **overrides) -> dict[str, Any]:
    """Continue a run with mask ratio 0 at a low lr (the paper: 0.32 epoch at lr 4e-8 x batch/256).

    Starts from the checkpoint's weights with a fresh optimizer and its own warm-up, in a new run
    directory that records its parent. The ablation knobs go back to their defaults, the image size
    included: a run trained at a reduced `--image-size` is tuned at the model's own (CLIPA's last
    stage) unless `image_size` is among the overrides.
    """
    cfg = unmasked_tuning_config(ckpt_path, samples, epochs, lr, warmup, out, **overrides)
    return _run_fresh(Trainer(cfg, resume=False, reporter=reporter, stop=stop))


def _run_fresh(trainer: Trainer) -> dict[str, Any]:
    try:
        return trainer.run()
    except BaseException:
        trainer.discard_failed_start()
        raise


def unmasked_tuning_config(ckpt_path: str, samples: int | None = None, epochs: float | None = None,
                           lr: float | None = None, warmup: int | None = None, out: str | None = None,
                           **overrides) -> TrainConfig:
    """The run `tune_unmasked` trains (a run on other processes trains it with `train`)."""
    ckpt_dir = resolve_checkpoint(ckpt_path)
    parent = TrainConfig.from_dict(read_config(ckpt_dir)["train"])
    if samples is None and epochs is None:
        samples, epochs = TUNE_BUDGET_RULE(parent)
    tuned_lr = lr if lr is not None else TUNE_LR_RULE(parent)
    settings = {
        **TrainConfig.ablation_defaults(),  # text masking, the decoder, ...: back to plain CLIP
        "mask_ratio": 0.0, "samples": samples, "epochs": epochs, "lr": tuned_lr, "base_lr": None,
        "warmup": warmup,  # a --warmup in samples replaces the fraction
        "warmup_fraction": TUNE_WARMUP_RULE(parent) if warmup is None else TrainConfig.warmup_fraction,
        "init_from": str(ckpt_dir), "parent": str(ckpt_dir), "out": out or f"{parent.out}-unmasked",
        **overrides}
    cfg = dataclasses.replace(parent, **settings)
    cfg.validate()
    return cfg


def _ensure_builtin_data(cfg: TrainConfig) -> None:
    """(Re)generate the built-in dataset when the run trains on it and the cache lacks it."""
    synth = SynthConfig(scenes=cfg.builtin_scenes)
    if cfg.data is None or Path(cfg.data) == Path(builtin.train_spec(builtin.builtin_dir(synth))):
        builtin.ensure_builtin(synth)

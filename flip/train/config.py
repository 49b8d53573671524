"""Training configuration: one plain dataclass, the one place a setting is declared.

Each field is a `knob`: its default, help text, allowed values and range live in the field's
metadata, and everything else follows from it - the `flipctl train` flags and their help
(`flipctl/train_cmd.py` builds them from the fields), validation, the TOML keys, the saved
config, the training step's settings (`StepConfig`) and what unmasked tuning resets.

Fields left as None are filled in by `resolve()` (flip.train.trainer) from the model and data
(the lr from the batch size, the built-in dataset's paths, the budget's warm-up; a knob's
`DefaultRule` computes its value and says it in its help), and the resolved config is what the run
directory records and what `--resume` reads back.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import tomllib

# Light imports only: the CLI builds its flags from this module without loading torch.
from flip.choices import DECODE_MODES, LOSSES, MASK_STRATEGIES, TEXT_MASKS, check_device_name, grid_strides
from flip.data.synth import SCENE_KINDS
from flip.errors import ConfigError
from flip.models.config import get_preset

PAPER_PRESETS = ("B/16", "L/16", "L/14", "H/14")
PRECISIONS = ("fp32", "bf16")
NONFINITE_POLICIES = ("stop", "skip")
REPORTERS = ("jsonl", "tensorboard", "wandb")  # where training curves go; metrics.jsonl is always written
# The panels `flipctl train --help` groups the flags in, in this order (a knob names its own).
DATA, MODEL, OPTIM, EVAL, CKPT, RUNTIME = PANELS = (
    "Data", "Model and masking", "Optimisation", "Evaluation", "Checkpoints and faults", "Runtime")


@dataclass(frozen=True)
class DefaultRule:
    """How a knob left at None gets its value (in `resolve()` or the trainer) and the words its help
    says that in, made from the same numbers, so `--help` cannot describe another default than the
    one computed. `text` names each of `values` as {name}; the value is `compute(cfg, *context,
    **values)`, `context` being what the config alone does not say (the budget, whose data it is)."""

    text: str
    compute: Callable[..., Any]
    values: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, cfg: "TrainConfig", *context: Any) -> Any:
        return self.compute(cfg, *context, **self.values)

    def describe(self) -> str:
        return self.text.format(**{name: _said(value) for name, value in self.values.items()})


def _said(value: Any) -> str:
    """A rule's value as its help says it: 60000 -> 60k, 0.001 -> 1e-3, True -> on."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int) and value >= 1000 and value % 1000 == 0:
        return f"{value // 1000}k"
    if isinstance(value, (tuple, list)):
        return ", ".join(map(str, value))
    if isinstance(value, float) and 0 < abs(value) < 0.01:  # lrs, as papers write them
        mantissa, exponent = f"{value:.12e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _builtin_budget(cfg: "TrainConfig", tiny: int, other: int) -> int | None:
    if cfg.data is not None or cfg.epochs is not None:
        return None  # no default budget on the user's data: the trainer asks for one
    return tiny if get_preset(cfg.model).name == "tiny" else other


def _paper_or_builtin(cfg: "TrainConfig", builtin_data: bool, paper: Any, builtin: Any) -> Any:
    return builtin if builtin_data else paper


# The defaults resolve() and the trainer compute, each declared with the words its knob's help says it in.
BUDGET_RULE = DefaultRule(
    "{tiny} for tiny, {other} for the other presets, on the built-in data; with --data, give it or --epochs",
    _builtin_budget, {"tiny": 60_000, "other": 40_000})
BASE_LR_RULE = DefaultRule(
    "{paper} for the paper's presets ({presets}), {other} for the others",
    lambda cfg, paper, other, presets: paper if get_preset(cfg.model).name in presets else other,
    {"paper": 4e-6, "other": 1e-3, "presets": PAPER_PRESETS})
LR_BATCH = 256  # the batch the base lr is the lr of (the paper's scaling rule)
LR_RULE = DefaultRule(
    "base lr x batch/{per}",
    lambda cfg, per: (cfg.base_lr or BASE_LR_RULE(cfg)) * cfg.batch_size / per, {"per": LR_BATCH})
WARMUP_RULE = DefaultRule(
    "--warmup-fraction of the budget", lambda cfg, budget: int(cfg.warmup_fraction * budget))
CROP_SCALE_RULE = DefaultRule("{paper} (paper); {builtin} on the built-in data",
                              _paper_or_builtin, {"paper": 0.5, "builtin": 0.9})
HFLIP_RULE = DefaultRule("{paper} (paper); {builtin} on the built-in data, whose captions say left/right",
                         _paper_or_builtin, {"paper": True, "builtin": False})

# Unmasked tuning (`tune_unmasked`): its defaults are computed from the parent run's config.
TUNE_BUDGET_RULE = DefaultRule(
    "{percent}% of the parent's budget (at least one batch; {epochs} epoch, the paper's, when the parent's "
    "budget is in epochs)",
    lambda parent, percent, epochs: (max(parent.batch_size, parent.samples * percent // 100), None)
    if parent.samples else (None, epochs), {"percent": 10, "epochs": 0.32})
# the paper tunes at 4e-8 per 256 after pre-training at 4e-6
TUNE_LR_RULE = DefaultRule("the parent's peak lr / {divisor} (paper: 4e-8 vs 4e-6 per 256)",
                           lambda parent, divisor: parent.peak_lr / divisor, {"divisor": 100})
# the paper warms up 25.6M of its 128M tuning samples
TUNE_WARMUP_RULE = DefaultRule("{percent}% of the tuning budget", lambda parent, percent: percent / 100,
                               {"percent": 20})


def knob(default: Any = None, help: str = "", *, identity: bool, choices: Sequence[Any] | None = None,
         ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
         flag: bool = True, step: bool = False, ablation: bool = False, resume: bool = False,
         panel: str = "", metavar: str | None = None, default_rule: DefaultRule | None = None) -> Any:
    """A TrainConfig field with what the CLI, validation and tools need to know about it.

    `choices` and the bounds `ge`/`gt`/`le`/`lt` are checked by `TrainConfig.validate`.
    flag=False: a setting for config files (and Python) only, with no command-line flag.
    step=True: the training step reads it (a field of `StepConfig`).
    ablation=True: one of the paper's ablation knobs; unmasked tuning resets it to its default.
    resume=True: may differ when a run is resumed (it does not change what is trained: logging,
    checkpointing, fault policy); any other setting given to a resume must equal the saved one.
    panel: the group of `flipctl train --help` the flag is listed in (one of PANELS).
    metavar: what the flag's value is, in its help (`--data SHARDS`); by default its choices or its type.
    default_rule: how a None default is filled in (a `DefaultRule`); the help's "Default: ..." is its text.
    identity (no default: every knob says it): True when the setting changes what is learned, so the
    run store gives a run that changes it an id of its own (flip.sweep.store.identity); False when it
    changes only how a run is laid out, watched or written (compile, FSDP, logging, checkpoints,
    device, the periodic evaluation), so asking for it again finds the run already trained.
    """
    metadata = {"help": help, "choices": tuple(choices) if choices else None,
                "ge": ge, "gt": gt, "le": le, "lt": lt, "flag": flag, "step": step, "ablation": ablation,
                "resume": resume, "panel": panel, "metavar": metavar, "identity": identity,
                "default_rule": default_rule}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    # what to train on
    data: str | None = knob(None, "webdataset shards: brace pattern, dir or glob; several joined by '::'. "
                                  "Default: the built-in dataset.", panel=DATA, metavar="SHARDS", identity=True)
    data_fraction: float = knob(1.0, "train on only this leading fraction of the shards (the scaling study's "
                                     "data axis: fewer distinct samples, the same samples seen).", gt=0, le=1,
                                panel=DATA, identity=True)
    builtin_scenes: str = knob("mixed", "the built-in dataset's scenes: mixed (small and large objects; a 75% mask "
                                        "often hides every patch of a small one the caption names) or large "
                                        "(only large objects, as photos' captions name what fills the frame).",
                               choices=tuple(SCENE_KINDS), panel=DATA, identity=True)
    model: str = knob("tiny", "model preset (see `flipctl models`).", panel=MODEL, metavar="PRESET", identity=True)
    context_length: int = knob(32, "text tokens per caption.", ge=3, panel=MODEL, identity=True)
    image_size: int | None = knob(None, "train at this image resolution instead of the model's own (CLIPA: fewer "
                                        "image tokens by resizing; 32 px on tiny is 16 of its 64 patches). The data "
                                        "is cropped and resized to it and the position embeddings are resampled "
                                        "(bicubic) from the model's grid; combines with --mask-ratio. Checkpoints keep "
                                        "the model's shape: evaluation runs at its own size, and tune-unmasked goes "
                                        "back to it. A multiple of the patch size. Default: the model's.",
                                  ge=1, step=True, ablation=True, panel=MODEL, metavar="PX", identity=True)
    # masking (image), and the paper's ablation knobs (Table 1c, 1f)
    mask_ratio: float = knob(0.5, "fraction of image patches dropped.",
                             ge=0, lt=1, step=True, panel=MODEL, identity=True)
    mask_strategy: str = knob("random", "which patches are dropped: random (paper), block (BEiT-style "
                                        "rectangles) or grid (a regular sub-grid, random offset); block and grid "
                                        "need --mask-ratio > 0.",
                              choices=MASK_STRATEGIES, step=True, ablation=True, panel=MODEL, identity=True)
    text_mask: str = knob("none", "text token dropping: none, random, or padding (padding first, then "
                                  "random real tokens); CLIPA's truncate (the first positions), block (one random "
                                  "contiguous run, inside the caption) or syntax (nouns, then adjectives, verbs, "
                                  "the rest, then padding; words tagged in the data loader by TextBlob's offline "
                                  "tagger, as NLTK's and spaCy's models download at run time).",
                          choices=TEXT_MASKS, step=True, ablation=True, panel=MODEL, identity=True)
    text_mask_ratio: float = knob(0.0, "fraction of text positions dropped (32 -> 16 tokens at 0.5) by "
                                       "--text-mask (give both); the SOT token is always kept.",
                                  ge=0, lt=1, step=True, ablation=True, panel=MODEL, identity=True)
    recon_weight: float = knob(0.0, "weight of an MAE pixel-reconstruction loss on the masked patches "
                                    "(0 = off, the paper's default).",
                               ge=0, step=True, ablation=True, panel=MODEL, identity=True)
    decoder_depth: int = knob(2, "reconstruction decoder blocks (with --recon-weight > 0).",
                              ge=1, ablation=True, panel=MODEL, identity=True)
    decoder_width: int = knob(128, "reconstruction decoder width (a multiple of --decoder-heads; with "
                                                 "--recon-weight > 0).", ge=1,
                              ablation=True, panel=MODEL, identity=True)
    decoder_heads: int = knob(4, "reconstruction decoder attention heads (with --recon-weight > 0).",
                              ge=1, ablation=True, panel=MODEL, identity=True)
    # the image-text loss (SigLIP's sigmoid beside FLIP's softmax): a setting of the model, kept by unmasked tuning
    loss: str = knob("contrastive", "image-text loss: contrastive (softmax InfoNCE over the global batch, as CLIP "
                                    "and FLIP) or sigmoid (SigLIP's pairwise sigmoid loss; the model gets a "
                                    "learnable logit bias, and starts at scale 10, bias -10, as SigLIP).",
                     choices=LOSSES, step=True, panel=MODEL, identity=True)
    loss_chunk: int = knob(0, "sigmoid loss: score each process's images against this many texts at a time, in "
                              "forward and again in backward, so a device holds local batch x chunk logits at a "
                              "time instead of local batch x global batch; the same loss and gradients. "
                              "0: all texts at once (with --loss sigmoid).",
                           ge=0, step=True, panel=MODEL, identity=True)
    # budget: samples, or epochs of the training data
    samples: int | None = knob(None, "training budget in samples.", ge=1, panel=OPTIM, identity=True,
                               default_rule=BUDGET_RULE)
    epochs: float | None = knob(None, "training budget in epochs of --data (instead of --samples).",
                                gt=0, panel=OPTIM, identity=True)
    batch_size: int = knob(256, "global batch size (a contrastive batch needs at least 2).",
                           ge=2, panel=OPTIM, identity=True)
    accum_steps: int = knob(1, "process each process's share of the batch in this many chunks per optimizer "
                               "step, with the loss still over the whole global batch (features of all chunks "
                               "first, then each chunk's backward: GradCache, OpenCLIP's --accum-freq); a large "
                               "batch on few devices, exactly.", ge=1, step=True, panel=OPTIM, identity=True)
    # optimisation (the paper's recipe, lr scaled per 256)
    lr: float | None = knob(None, "peak learning rate.", gt=0, panel=OPTIM, identity=True, default_rule=LR_RULE)
    base_lr: float | None = knob(None, f"lr per {LR_BATCH} samples (not with --lr).", gt=0, panel=OPTIM,
                                 identity=True, default_rule=BASE_LR_RULE)
    warmup: int | None = knob(None, "linear warm-up, in samples.", ge=0, panel=OPTIM, identity=True,
                              default_rule=WARMUP_RULE)
    warmup_fraction: float = knob(0.05, "warm-up as a fraction of the budget (not with --warmup).",
                                  ge=0, le=1, panel=OPTIM, identity=True)
    min_lr_ratio: float = knob(0.0, "the cosine schedule ends at this fraction of the peak lr.",
                               ge=0, le=1, panel=OPTIM, identity=True)
    weight_decay: float = knob(0.2, "AdamW weight decay (not on biases, norms, position embeddings, CLS "
                                    "and temperature).", ge=0, panel=OPTIM, identity=True)
    beta1: float = knob(0.9, "AdamW beta1.", ge=0, lt=1, panel=OPTIM, identity=True)
    beta2: float = knob(0.95, "AdamW beta2.", ge=0, lt=1, panel=OPTIM, identity=True)
    eps: float = knob(1e-8, "AdamW epsilon.", gt=0, panel=OPTIM, identity=True)
    grad_clip: float | None = knob(None, "clip the gradient norm to this value. Default: no clipping.", gt=0,
                                   step=True, panel=OPTIM, identity=True)
    precision: str = knob("fp32", "fp32 (as the paper) or bf16 autocast.",
                          choices=PRECISIONS, step=True, panel=RUNTIME, identity=True)
    compile: bool = knob(False, "torch.compile the model's forward: inductor where it can build kernels here, "
                                "else aot_eager (a note says why). The same training, faster once compiled "
                                "(the first steps compile); a resume may switch it.",
                         resume=True, panel=RUNTIME, identity=False)
    activation_checkpointing: bool = knob(False, "recompute each transformer block in backward instead of keeping "
                                                 "its activations: much less memory, one more forward of the "
                                                 "blocks per step, the same gradients.",
                                          resume=True, panel=RUNTIME, identity=False)
    fsdp: bool = knob(False, "shard the weights, gradients and optimizer state over the processes (FSDP2, per "
                             "transformer block) instead of replicating them (DDP): for presets that do not fit "
                             "replicated (see `flipctl plan`); the same gradients. Checkpoints are written whole, "
                             "so they load whatever wrapping trained them. No effect with one process.", resume=True,
                     panel=RUNTIME, identity=False)
    seed: int = knob(0, "random seed; the same seed repeats a run exactly.", panel=OPTIM, identity=True)
    # data pipeline
    workers: int = knob(2, "data loader worker processes.", ge=0, panel=DATA, identity=True)
    shuffle_buffer: int = knob(2000, "samples in the streaming shuffle buffer.", ge=1, panel=DATA, identity=True)
    resampled: bool = knob(False, "draw shards with replacement (endless corpora).", panel=DATA, identity=True)
    crop_scale_min: float | None = knob(None, "smallest random-resized-crop area fraction.", gt=0, le=1, panel=DATA,
                                        identity=True, default_rule=CROP_SCALE_RULE)
    hflip: bool | None = knob(None, "random horizontal flips.", panel=DATA, identity=True, default_rule=HFLIP_RULE)
    decode: str = knob("worker", "where images are decoded: worker (data-loader workers decode and crop in uint8; "
                                 "the device converts and normalises), device (workers only read bytes; the step's "
                                 "input stage decodes JPEGs on the device, nvJPEG on CUDA) or legacy (the original "
                                 "PIL path, float32 from the workers; for comparison).", choices=DECODE_MODES,
                       panel=DATA, identity=True)
    # periodic evaluation, every eval_every steps and at the end
    eval_data: str | None = knob(None, "retrieval set for the periodic evaluation: a CSV of filepath,caption, "
                                       "a Karpathy JSON or webdataset shards. Default: the built-in retrieval "
                                       "split on the built-in data; none with --data.", panel=EVAL, metavar="PATH",
                                 identity=False)
    eval_zeroshot: str | None = knob(None, "zero-shot classification set for the periodic evaluation (class "
                                           "folders or CLIP_benchmark webdataset), as OpenCLIP's ImageNet "
                                           "zero-shot. Default: the built-in zero-shot set on the built-in data; "
                                           "none with --data.", panel=EVAL, metavar="DIR", identity=False)
    eval_templates: str | None = knob(None, "prompt templates of the periodic zero-shot: dataset, simple, openai, "
                                            "builtin or a file of {c} lines. Default: the data's own, else simple.",
                                      panel=EVAL, metavar="NAME|FILE", identity=False)
    periodic_eval: bool = knob(True, "evaluate during training (--no-periodic-eval: never; a sweep evaluates "
                                     "the finished checkpoint itself).", panel=EVAL, identity=False)
    eval_every: int = knob(100, "steps between periodic evaluations (not with --no-periodic-eval).",
                           ge=1, panel=EVAL, identity=False)
    eval_images: int = knob(1000, "retrieval images per periodic evaluation (the first ones; not with "
                                             "--no-periodic-eval).", ge=1, panel=EVAL, identity=False)
    eval_zeroshot_images: int = knob(1000, "zero-shot images per periodic evaluation (spread evenly over the "
                                           "classes; not with --no-periodic-eval).", ge=1, panel=EVAL, identity=False)
    # bookkeeping
    out: str | None = knob(None, "run directory. Default: runs/<model>-mask<r>-<time>.", panel=CKPT, metavar="DIR",
                           identity=False)
    log_every: int = knob(10, "steps between metric log lines.", ge=1, resume=True, panel=RUNTIME, identity=False)
    ckpt_every: int = knob(100, "steps between checkpoints.", ge=1, resume=True, panel=CKPT, identity=False)
    keep_checkpoints: int = knob(2, "checkpoints kept on disk: the newest N (the final one is the newest); an "
                                    "older one is deleted once a newer one is complete.",
                                 ge=1, resume=True, panel=CKPT, identity=False)
    keep_resume_state: bool = knob(False, "keep each checkpoint's state.pt (optimizer, RNG, data positions) once "
                                          "the run has finished; without it the state is dropped then, as a "
                                          "finished run is only evaluated, tuned and exported, which read the "
                                          "weights.", resume=True,
                                   panel=CKPT, identity=False)
    # faults: what stops a run (its last checkpoint kept) and what is skipped and counted; on_nonfinite is
    # identity (skip trains on past a step that stop ends the run at), max_bad_fraction only stops a run
    on_nonfinite: str = knob("stop", "a NaN or infinite loss or gradient: stop (keep the last good checkpoint) "
                                     "or skip (drop that step's update and count it). The update of such a step "
                                     "is never applied.",
                             choices=NONFINITE_POLICIES, resume=True, panel=CKPT, identity=True)
    max_bad_fraction: float = knob(0.05, "stop when more than this fraction of the samples read is unusable "
                                         "(corrupt, empty or missing image or caption), checked once 1000 "
                                         "samples have been read.", ge=0, le=1, resume=True, panel=CKPT, identity=False)
    report_to: list[str] = knob(["jsonl"], "where training curves go besides metrics.jsonl (always written), "
                                           "comma-separated: tensorboard writes event files to <out>/tensorboard; "
                                           "wandb logs to Weights & Biases (pip install 'flipctl[wandb]'), offline "
                                           "in <out>/wandb unless WANDB_MODE or a W&B login says otherwise.",
                                choices=REPORTERS, panel=RUNTIME,
                                metavar="NAME,...", identity=False)
    device: str = knob("auto", "auto, cpu, cuda or cuda:N.", panel=RUNTIME, metavar="auto|cpu|cuda[:N]", identity=False)
    # lineage: weights to start from (unmasked tuning), and the run they came from. Not identity: a
    # tuned run's id is made from its parent's id (flip.sweep.store.tuned_run_id), not from a path.
    init_from: str | None = knob(None, "checkpoint or run directory whose weights the model starts from "
                                       "(fresh optimizer and schedule).", panel=CKPT, metavar="RUN|CKPT",
                                 identity=False)
    parent: str | None = knob(None, "the checkpoint this run continues (set by unmasked tuning).", flag=False,
                              panel=CKPT, identity=False)

    def __post_init__(self):
        if isinstance(self.report_to, str):  # `report_to = "tensorboard"` in TOML, `--report-to a,b`
            self.report_to = [self.report_to]
        if isinstance(self.report_to, list):
            self.report_to = [name.strip() for item in self.report_to for name in str(item).split(",")
                              if name.strip()]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        if not d.get("extra", True):  # runs saved before the unused `extra` field was removed
            d = {k: v for k, v in d.items() if k != "extra"}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}")
        return cls(**d)

    def validate(self) -> None:
        """Check every field against its declared type, choices and range, then the cross-field rules."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            _check_knob(f, hints[f.name], getattr(self, f.name))
        check_device_name(self.device)
        try:
            preset = get_preset(self.model)
        except KeyError as exc:
            raise ConfigError(exc.args[0]) from None
        patch = preset.vision.patch_size
        if self.image_size is not None and self.image_size % patch:
            raise ConfigError(f"must be a multiple of {preset.name}'s patch size ({patch}), got {self.image_size}",
                              key="image_size")
        if self.mask_strategy == "grid" and self.mask_ratio > 0:
            try:
                grid_strides(preset.vision.at_image_size(self.image_size).grid_size, self.mask_ratio)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if self.recon_weight > 0 and self.mask_ratio == 0:
            raise ConfigError("needs masked patches to reconstruct: use a mask ratio > 0", key="recon_weight")
        if self.decoder_width % self.decoder_heads:
            raise ConfigError(f"must be a multiple of the decoder heads ({self.decoder_heads}), got "
                              f"{self.decoder_width}", key="decoder_width")
        if self.samples is not None and self.samples < self.batch_size:
            raise ConfigError(f"({self.samples}) must be at least one batch ({self.batch_size})", key="samples")
        if self.batch_size % self.accum_steps:
            raise ConfigError(f"({self.accum_steps}) must divide the batch size ({self.batch_size})", key="accum_steps")
        if self.samples is not None and self.epochs is not None:
            raise ConfigError("and samples both set a budget: give one of them", key="epochs")
        self._check_no_ops()

    def _check_no_ops(self) -> None:
        """A setting that changes nothing unless another one is set too is an error naming both: a run
        that silently ignores what it was asked for would report an ablation that never happened."""
        given = {f.name for f in dataclasses.fields(self) if getattr(self, f.name) != _default(f)}
        if self.text_mask != "none" and self.text_mask_ratio == 0:
            raise ConfigError(f"{self.text_mask} drops no text tokens at {{other}} 0: give {{other}} > 0 too "
                              f"(e.g. 0.5)", key="text_mask", other="text_mask_ratio")
        if self.text_mask_ratio > 0 and self.text_mask == "none":
            raise ConfigError(f"{self.text_mask_ratio:g} does nothing with {{other}} none: give {{other}} random "
                              f"or padding too", key="text_mask_ratio", other="text_mask")
        if self.loss_chunk > 0 and self.loss != "sigmoid":
            raise ConfigError("chunks only the sigmoid loss: give {other} sigmoid too, or leave it out",
                              key="loss_chunk", other="loss")
        if self.mask_strategy != "random" and self.mask_ratio == 0:
            raise ConfigError(f"{self.mask_strategy} drops no patches at {{other}} 0: give {{other}} > 0 too, "
                              f"or leave it out", key="mask_strategy", other="mask_ratio")
        for key, other, when, why in _NO_OP_RULES:
            if key in given and when(self):
                raise ConfigError(f"{_shown(getattr(self, key))} does nothing {why}", key=key, other=other)

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else LR_RULE(self)

    def step_config(self) -> "StepConfig":
        """The settings the training step reads (the `step=True` knobs)."""
        return StepConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(StepConfig)})

    @classmethod
    def ablation_defaults(cls) -> dict[str, Any]:
        """The paper's ablation knobs at their defaults (what unmasked tuning resets them to)."""
        return {f.name: f.default for f in dataclasses.fields(cls) if f.metadata["ablation"]}


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _without_periodic_eval(key: str) -> tuple:
    return (key, None, lambda c: not c.periodic_eval, "with --no-periodic-eval (no evaluation during training): "
                                                      "leave one of them out")


# (setting, the other setting, when the first does nothing, why): checked for settings given (not at
# their default). The first of a rule whose setting is given and whose condition holds is the error.
_NO_OP_RULES = (
    *[(key, "recon_weight", lambda c: c.recon_weight == 0, "at {other} 0 (no reconstruction decoder): give "
       "{other} > 0 too, or leave it out") for key in ("decoder_depth", "decoder_width", "decoder_heads")],
    ("warmup_fraction", "warmup", lambda c: c.warmup is not None,
     "with {other} (the warm-up in samples): give one of them"),
    ("base_lr", "lr", lambda c: c.lr is not None, "with {other} (the peak lr itself): give one of them"),
    *[_without_periodic_eval(key) for key in ("eval_every", "eval_images", "eval_zeroshot_images", "eval_templates")],
    # With --data only the evaluation sets named run; the built-in data has both.
    ("eval_images", "eval_data", lambda c: c.data is not None and c.eval_data is None,
     "without {other}: with --data, no retrieval set is evaluated unless you name one"),
    *[(key, "eval_zeroshot", lambda c: c.data is not None and c.eval_zeroshot is None,
       "without {other}: with --data, no zero-shot set is evaluated unless you name one")
      for key in ("eval_zeroshot_images", "eval_templates")],
)


# The settings one training step reads (flip.train.step.TrainStep, and `flipctl bench`), with
# TrainConfig's defaults: declared once above (`step=True`), never copied by hand.
StepConfig = dataclasses.make_dataclass(
    "StepConfig",
    [(f.name, f.type, field(default=f.default)) for f in dataclasses.fields(TrainConfig) if f.metadata["step"]],
    frozen=True)
StepConfig.__module__ = __name__  # make_dataclass's `module=` needs Python 3.12


# -- what a knob's metadata says ------------------------------------------------------------------------
def knob_help(f: dataclasses.Field, *, choices: bool = True) -> str:
    """The user-facing description of a knob: its help, allowed values (unless not `choices`: a flag's
    metavar shows them) and default."""
    meta, parts = f.metadata, [f.metadata["help"]]
    default = _default(f)
    if meta["choices"] and choices:
        parts.append(f"{'Any' if isinstance(default, list) else 'One'} of: {', '.join(map(str, meta['choices']))}.")
    if range_text(meta):
        parts.append(f"Must be {range_text(meta)}.")
    if default is not None:
        shown = ",".join(default) if isinstance(default, list) else str(default).lower() if isinstance(
            default, bool) else default
        parts.append(f"Default: {shown}.")
    elif meta["default_rule"]:
        parts.append(f"Default: {meta['default_rule'].describe()}.")
    return " ".join(parts)


def _number(x: float) -> str:
    return f"{x:g}"


def range_text(meta: Any) -> str | None:
    """'in [0, 1)', '>= 1', ... from a knob's bounds; None when it has none."""
    low = f"[{_number(meta['ge'])}" if meta["ge"] is not None else (
        f"({_number(meta['gt'])}" if meta["gt"] is not None else None)
    high = f"{_number(meta['le'])}]" if meta["le"] is not None else (
        f"{_number(meta['lt'])})" if meta["lt"] is not None else None)
    if low and high:
        return f"in {low}, {high}"
    if low:
        return f"{'>=' if meta['ge'] is not None else '>'} {low[1:]}"
    if high:
        return f"{'<=' if meta['le'] is not None else '<'} {high[:-1]}"
    return None


def _in_range(value: float, meta: Any) -> bool:
    return ((meta["ge"] is None or value >= meta["ge"]) and (meta["gt"] is None or value > meta["gt"])
            and (meta["le"] is None or value <= meta["le"]) and (meta["lt"] is None or value < meta["lt"]))


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _type_ok(value: Any, hint: Any) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) is list:
        return isinstance(value, list) and all(_type_ok(v, typing.get_args(hint)[0]) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is list:
        return f"a list of {_type_name(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if args:
        return _type_name(args[0])
    return _TYPE_NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def _check_knob(f: dataclasses.Field, hint: Any, value: Any) -> None:
    meta = f.metadata
    if not _type_ok(value, hint):
        raise ConfigError(f"must be {_type_name(hint)}, got {value!r}", key=f.name)
    if value is None:
        return
    if meta["choices"]:
        for item in value if isinstance(value, list) else [value]:
            if item not in meta["choices"]:
                raise ConfigError(f"must be one of {', '.join(map(str, meta['choices']))}, got {item!r}", key=f.name)
    bounds = range_text(meta)
    if bounds and not _in_range(value, meta):
        raise ConfigError(f"must be {bounds}, got {value}", key=f.name)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into a flat dict of TrainConfig fields (`-` and `_` both accepted)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    flat = {}
    for key, value in raw.items():
        if isinstance(value, dict) and key in ("train", "data", "model", "optim"):
            flat.update({k.replace("-", "_"): v for k, v in value.items()})
        else:
            flat[key.replace("-", "_")] = value
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(flat) - names)
    if unknown:
        raise ConfigError(f"{path}: unknown config key(s): {', '.join(unknown)}")
    return flat

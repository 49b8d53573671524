"""From a spec to the list of jobs a sweep runs: training runs, their unmasked tuning, their evaluations.

Each row x seed is one training job; with tuning enabled, each also gets a tuning job that
depends on it. A job lists the evaluations to run on its checkpoint (task x inference mode). The
plan is computed without training; memory-matched batches are measured here (cached in the
store, so every sweep that asks for the same run gets the same batch, hence the same run id).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from flip.sweep import store as run_store
from flip.sweep.spec import EvalMode, Row, SweepSpec
from flip.train.config import TrainConfig


@dataclass(frozen=True)
class EvalJob:
    key: str
    task: str  # zeroshot | retrieval | linear-probe
    mode: str  # the metric column's suffix: full | masked (at the run's own ratio) | masked0.3 | views2 ...
    data: str | None  # None: the built-in set
    mask_ratio: float = 0.0
    views: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Job:
    run_id: str
    kind: str  # train | tune
    row: str
    seed: int
    variant: str  # base | tuned
    config: TrainConfig  # for a tune job: the parent's config (what it continues)
    steps: int
    samples: int
    evals: list[EvalJob] = field(default_factory=list)
    parent: str | None = None  # run id this job starts from
    tune_samples: int | None = None
    tune_lr: float | None = None
    peak_memory: int | None = None  # measured by the memory-match probe, when there was one
    eval_batch: int = 256

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["config"] = self.config.to_dict()
        return d


def _budget(cfg: TrainConfig) -> int | None:
    """Training samples, when known without reading the data (None: an epoch budget of user data)."""
    if cfg.samples is not None:
        return cfg.samples
    if cfg.data is None and cfg.epochs is None:
        from flip.train.trainer import resolve  # fills the built-in data's default budget; no I/O
        return resolve(cfg).samples
    return None


def eval_jobs(spec: SweepSpec, cfg: TrainConfig, modes: tuple[EvalMode, ...]) -> list[EvalJob]:
    tasks = []
    if spec.evals.zeroshot:
        tasks.append(("zeroshot", getattr(cfg, "eval_zeroshot", None)))
    if spec.evals.retrieval:
        tasks.append(("retrieval", cfg.eval_data))
    jobs = []
    if spec.evals.linear_probe:  # on the zero-shot set, split per class; full images only
        data = getattr(cfg, "eval_zeroshot", None)
        jobs.append(EvalJob(run_store.eval_key("probe", "full", data), "linear-probe", "full", data))
    for task, data in tasks:
        for mode in modes:
            ratio = cfg.mask_ratio if mode.mask_ratio is None else mode.mask_ratio
            if mode.name == "masked" and ratio == 0:
                continue  # masked inference of an unmasked run is the full image
            # "masked" at the run's own ratio keeps one column name across rows; the key holds the ratio.
            label = mode.name if mode.mask_ratio is None or mode.name != "masked" else f"masked{ratio:g}"
            key_mode = f"masked{ratio:g}" if mode.name == "masked" else mode.name
            jobs.append(EvalJob(run_store.eval_key(task, key_mode, data), task, label, data,
                                ratio if mode.name == "masked" else 0.0, mode.views))
    return jobs


def build_plan(spec: SweepSpec, store: run_store.RunStore, batches: dict[str, tuple[int, int | None]]) -> list[Job]:
    """Jobs in run order (each tuning job after its parent). `batches` maps row label to (batch, peak
    memory) for memory-matched rows (see `flip.sweep.memory_match`)."""
    jobs: list[Job] = []
    for row in spec.rows:
        for seed in range(spec.seeds):
            batch, peak = batches.get(row.label, (None, None))
            cfg = spec.config(row, seed, {"batch_size": batch} if batch else None)
            cfg.validate()
            samples = _budget(cfg)
            rid = run_store.run_id(cfg)
            train = Job(rid, "train", row.label, seed, "base", cfg, (samples or 0) // cfg.batch_size,
                        samples or 0, eval_jobs(spec, cfg, spec.evals.modes), peak_memory=peak,
                        eval_batch=spec.evals.batch_size)
            jobs.append(train)
            if spec.tuning.enabled:
                tune_samples = max(cfg.batch_size, int(spec.tuning.samples_fraction * (samples or 0)))
                tune_lr = cfg.peak_lr * spec.tuning.lr_factor
                jobs.append(Job(run_store.tuned_run_id(rid, tune_samples, tune_lr), "tune", row.label, seed,
                                "tuned", cfg, tune_samples // cfg.batch_size, tune_samples,
                                eval_jobs(spec, cfg, (EvalMode("full"),)), parent=rid,
                                tune_samples=tune_samples, tune_lr=tune_lr, peak_memory=peak,
                                eval_batch=spec.evals.batch_size))
    return jobs


def row_of(spec: SweepSpec, label: str) -> Row:
    return spec.row(label)

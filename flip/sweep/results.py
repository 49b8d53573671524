"""Collecting a sweep's results from the run store into one tidy table: a row per run (row x seed x variant).

Columns: `row`, `seed`, `variant` (base | tuned), `run_id`, `run_dir`, `status`, `error`, the axis
fields, `batch_size`, `steps`, `samples_seen`, `train_time_s` and `train_flops` (a tuned run's
include its parent's: that is what the tuned model cost), `peak_memory`, and one column per
metric: `zeroshot`, `zeroshot_top5`, `retrieval_i2t`, `retrieval_t2i`, each with `@MODE` for
masked inference modes (`zeroshot@views2`), plus `eval_s@MODE`; the machine's load while the run
trained: `load_cores` (cores it could use), `load_others` (cores other processes used, on average) and
`load_avg` (mean 1-minute load average), empty for runs from before flipctl recorded it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from flip.sweep import names
from flip.sweep.execute import is_complete
from flip.sweep.jobs import Job
from flip.sweep.spec import SweepSpec
from flip.sweep.store import RunStore

METRICS = {key: m.record for key, m in names.METRICS.items()}  # column -> (task, key in the evaluation record)


def _train_time(summary: dict) -> float | None:
    """Training seconds, without the time of any evaluation the trainer ran on the way."""
    if summary.get("train_time_s") is not None:
        return summary["train_time_s"]
    wall = summary.get("wall_time_s")
    return None if wall is None else wall - summary.get("eval_time_s", 0.0)


def _load(summary: dict) -> dict:
    load = summary.get("load") or {}
    return {"load_cores": load.get("cores"), "load_others": load.get("others_cores"),
            "load_avg": load.get("loadavg_1m_mean")}


def shown_fields(spec: SweepSpec) -> list[str]:
    """The config fields the report shows: the axes, and any other the columns or plots name."""
    from flip.sweep.names import config_fields

    named = [*spec.columns, *(p.x for p in spec.plots), *(p.series for p in spec.plots if p.series),
             *(key for p in spec.plots for key in p.where or {})]
    fields = set(config_fields())
    return list(dict.fromkeys([*spec.axis_fields(), *(n for n in named if n in fields)]))


def collect(spec: SweepSpec, jobs: list[Job], store: RunStore, out_dir: Path | None = None) -> pd.DataFrame:
    """One record per job from the store; `run_dir` relative to `out_dir` (the sweep folder) when given."""
    axes = shown_fields(spec)
    records, by_id = [], {}
    for job in jobs:
        status = store.status(job.run_id) or {}
        summary = store.summary(job.run_id) or {}
        state = "done" if is_complete(job, store) else "failed" if status.get("state") in ("failed", "skipped") \
            else "pending"
        run_dir = store.run_dir(job.run_id)
        rec = {"row": job.row, "seed": job.seed, "variant": job.variant, "run_id": job.run_id,
               "run_dir": os.path.relpath(run_dir, out_dir) if out_dir is not None else str(run_dir), "status": state,
               "error": status.get("error") if state == "failed" else None}
        for axis in axes:
            rec[axis] = getattr(job.config, axis)
        rec.update(batch_size=job.config.batch_size, steps=summary.get("steps", job.steps),
                   samples_seen=summary.get("samples_seen"), train_time_s=_train_time(summary),
                   train_flops=summary.get("train_flops_total"), peak_memory=job.peak_memory, **_load(summary))
        for ev in job.evals:
            record = store.eval_record(job.run_id, ev.key)
            if record is None:
                continue
            suffix = "" if ev.mode == "full" else f"@{ev.mode}"
            for column, (task, key) in METRICS.items():
                if task == ev.task and key in record.get("metrics", {}):
                    rec[column + suffix] = record["metrics"][key]
            if ev.task == "zeroshot":
                rec[f"eval_s@{ev.mode}"] = record.get("speed", {}).get("seconds")
        if job.variant == "tuned" and job.parent in by_id:
            parent = by_id[job.parent]
            rec["tune_time_s"], rec["tune_flops"] = rec["train_time_s"], rec["train_flops"]
            for key in ("train_time_s", "train_flops"):
                if rec[key] is not None and parent.get(key) is not None:
                    rec[key] = rec[key] + parent[key]
        by_id[job.run_id] = rec
        records.append(rec)
    return pd.DataFrame.from_records(records)

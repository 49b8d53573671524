"""`flipctl bench`: training-step throughput, FLOPs, memory and data-loader rate, side by side with OpenCLIP.

- `runner`: `BenchConfig` and `run_bench`, which ties the measurements below into one JSON-able dict.
- `timing`: interleaved step timing (medians) and the image / text / loss / optimizer split.
- `peak_memory`: allocator-level peak memory of a step, and the largest batch that fits a limit.
- `peaks`: the dense peak TFLOP/s of known accelerators, for MFU.
- `openclip_ref`: open_clip's `CLIP` with the same dimensions and `patch_dropout`, and its step.
- `data`: `DataBenchConfig` and `run_data_bench`: the data loader's decode paths side by side.
- `summary`, `data_summary`: what the CLI shows of either report, as tables and lines of plain data.
- `defaults`: the figures `flipctl bench --data` and `flipctl plan` assume (no torch).

(FLOPs are counted by `flip.flops`, on a meta-device model.)
"""

from flip._lazy import lazy_exports

__all__ = ["BenchConfig", "DataBenchConfig", "data_paths_summary", "find_max_batch", "run_bench", "run_data_bench",
           "step_peak_memory", "step_summary"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "runner": ("BenchConfig", "run_bench"),
    "data": ("DataBenchConfig", "run_data_bench"),
    "peak_memory": ("find_max_batch", "step_peak_memory"),
    "summary": ("step_summary",),
    "data_summary": ("data_paths_summary",),
})

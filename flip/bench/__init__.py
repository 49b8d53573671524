"""`flipctl bench`: training-step throughput, FLOPs, memory and data-loader rate, side by side with OpenCLIP.

- `flops`: FLOPs of one training step (forward + backward) per part, counted with
  `torch.utils.flop_counter` on a meta-device model.
- `timing`: interleaved step timing (medians) and the image / text / loss / optimizer split.
- `openclip_ref`: open_clip's `CLIP` with the same dimensions and `patch_dropout`, and its step.
- `memory`: allocator-level peak memory of a step, and the largest batch that fits a limit.
- `data`: throughput of the webdataset loader alone.
- `runner`: `BenchConfig` and `run_bench`, which ties them together into one JSON-able dict.
- `report`: the rich tables.
"""

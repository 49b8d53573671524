"""The figures `flipctl bench --data` and `flipctl plan` assume unless told otherwise: one place for
both, importable without torch (the commands show them as defaults in their help)."""

DEFAULT_PEAK_TFLOPS = 989.0  # H100/H200 SXM, dense bf16 (NVIDIA's datasheets)
DEFAULT_MFU = 0.45  # a good large-scale ViT run's model FLOPs utilisation
DEFAULT_HOST_CORES = 16  # CPU cores per GPU on a typical 8-GPU node (2 x 64 cores)

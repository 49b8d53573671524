"""Files the code reads at run time that are not Python: the shipped sweep specs and the committed
bench figures `flipctl plan` defaults to.

In the repository they sit at the top, where a reader looks for them (`sweeps/`, `results/bench/`);
pyproject's `package-dir` maps them into the packages `flip.sweep.specs` and `flip.bench.results`,
so a wheel or sdist installs them inside `flip/` and an editable install finds them through the
same mapping. Either way they are read through `importlib.resources`, never by a path relative to
this file. A checkout imported without being installed (`PYTHONPATH=.`) has no such packages: its
top-level folders are read directly.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

SWEEP_SPECS = ("flip.sweep.specs", "sweeps")
BENCH_RESULTS = ("flip.bench.results", "results/bench")


def sweep_specs() -> "Traversable":
    """The folder of shipped sweep specs (`*.toml`, and plain train configs in `configs/`)."""
    return _folder(*SWEEP_SPECS)


def bench_results() -> "Traversable":
    """The folder of committed `flipctl bench` reports that other commands read figures from."""
    return _folder(*BENCH_RESULTS)


def _folder(package: str, checkout_folder: str) -> "Traversable":
    try:
        return resources.files(package)
    except ModuleNotFoundError:  # an uninstalled checkout: the mapping exists only once installed
        return Path(__file__).resolve().parent.parent / checkout_folder

"""A package's public names, loaded from their modules on first use (PEP 562 `__getattr__`).

Each package's `__init__.py` declares its `__all__` and where each name lives, and imports none of
it: importing a package costs nothing, so `flipctl --help` stays free of torch and no package's
import starts an import cycle. `from flip.models import FLIP` imports `flip.models.flip_model` then.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_exports(package: str, homes: dict[str, tuple[str, ...]]) -> tuple[Callable[[str], Any], Callable[[], list]]:
    """`__getattr__, __dir__ = lazy_exports(__name__, {"module": ("Name", ...), ...})` in a package's
    `__init__.py`: each name is imported from `package.module` when first asked for."""
    where = {name: f"{package}.{module}" for module, names in homes.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        setattr(sys.modules[package], name, value)  # found directly next time
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    __getattr__.names = frozenset(where)  # what it serves (tests/test_imports.py: all of it in __all__)
    return __getattr__, __dir__

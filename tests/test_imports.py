"""Every module of the library and the CLI imports (the quick tier's guarantee; the wheel test checks
that each one is also packaged)."""

import importlib
import pkgutil

import pytest

import flip
import flipctl

MODULES = sorted(info.name for package in (flip, flipctl)
                 for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."))


def test_the_packages_are_walked():
    assert {"flip.train.trainer", "flip.sweep.worker", "flipctl.main"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    assert importlib.import_module(name).__name__ == name

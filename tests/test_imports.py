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


# Printing belongs to the CLI: the library returns data (rows, records, strings) and reports progress
# through callbacks (a training run's `Reporter`); flipctl draws it with rich.
def test_the_library_does_not_import_rich():
    import ast
    from pathlib import Path

    root = Path(flip.__file__).parent
    found = set()
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name == "rich" or name.startswith("rich.") for name in names):
                found.add(path.relative_to(root.parent).as_posix())
    assert not found, f"rich imported under flip/: {sorted(found)}"


PACKAGES = ["flip", "flip.bench", "flip.data", "flip.eval", "flip.export", "flip.models", "flip.sweep", "flip.train"]


@pytest.mark.parametrize("name", PACKAGES)
def test_each_package_states_its_public_names(name):
    """A docstring saying what the package is for, and an `__all__` whose every name resolves."""
    package = importlib.import_module(name)
    assert package.__doc__ and package.__all__
    assert sorted(package.__all__) == sorted(set(package.__all__))
    assert package.__getattr__.names <= set(package.__all__)
    for attr in package.__all__:
        assert getattr(package, attr) is not None and attr in dir(package)


# The layers of README's "Layout", top to bottom: a module imports only from layers below its own.
LAYERS = [
    {"flipctl"},
    {"flip.sweep"},
    {"flip.launch", "flip.capacity"},
    {"flip.bench"},
    {"flip.train"},
    {"flip.eval", "flip.export"},
    {"flip.saved_model", "flip.flops"},
    {"flip.models", "flip.data"},
    {"flip.masking", "flip.loss", "flip.distributed", "flip.precision", "flip.compile"},
    {"flip.choices", "flip.resources", "flip.files", "flip.run_dir"},
    {"flip.errors", "flip._lazy"},
]
# flip.launch's SLURM sweep jobs run a sweep's worker: imported inside the functions that do.
UPWARD = {("flip/launch.py", "flip.sweep")}


def _layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[0] if parts[0] == "flipctl" else ".".join(parts[:2])


def test_imports_go_down_the_layers():
    import ast
    from pathlib import Path

    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    root = Path(flip.__file__).parent.parent
    wrong = []
    for path in sorted([*(root / "flip").rglob("*.py"), *(root / "flipctl").rglob("*.py")]):
        where = path.relative_to(root).as_posix()
        if where == "flip/__init__.py":
            continue
        mine = _layer_of(where[:-3].replace("/", "."))
        assert mine in layer, f"{where}: add its layer to LAYERS (and README's Layout)"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = ([f"flip.{alias.name}" for alias in node.names] if node.module == "flip"
                           else [node.module])
            else:
                continue
            for target in targets:
                theirs = _layer_of(target)
                if target.split(".")[0] not in ("flip", "flipctl") or theirs == mine:
                    continue
                if layer.get(theirs, -1) <= layer[mine] and (where, theirs) not in UPWARD:
                    wrong.append(f"{where} imports {target}")
    assert not wrong, "imports up or across the layers of README's Layout:\n" + "\n".join(wrong)

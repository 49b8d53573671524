"""An installed flipctl works without its source tree: the sdist and the wheel built from it ship the sweep
specs and the bench figures the commands read, and the CLI runs from any directory.

The sdist is built from a copy of the checkout, the wheel from the unpacked sdist (what `python -m build`
does), and the wheel is installed into a fresh virtual environment that sees this environment's
dependencies (torch & co., nothing downloaded) through a `.pth` path line - which, unlike a site
directory, does not run this environment's own `.pth` files, so an editable install of the checkout
stays invisible there. The commands run from a temporary directory, without PYTHONPATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__",
                                     ".pytest_cache", ".hypothesis")


def _run(cmd, cwd, env=None, timeout=300) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (f"{' '.join(map(str, cmd))} exited {result.returncode}:\n"
                                    f"{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "checkout"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCES)
    dist = tmp / "dist"
    # The project's own build backend, from this environment (no build isolation: nothing is downloaded).
    _run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(dist)!r})"], cwd=src)
    sdist = next(dist.glob("*.tar.gz"))
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "sdist", filter="data")
    unpacked = next((tmp / "sdist").iterdir())
    build = _run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_wheel({str(dist)!r})"],
                 cwd=unpacked)
    assert "absent from the `packages` configuration" not in build.stdout + build.stderr, build.stderr
    wheel = next(dist.glob("*.whl"))

    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp)
                .stdout.strip())
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "_flipctl_test_dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index",
          str(wheel)], cwd=tmp)

    work = tmp / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PYTHONNOUSERSITE="1", FLIP_CACHE=str(tmp / "cache"), COLUMNS="200",
               PATH=f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return {"wheel": wheel, "sdist": sdist, "venv": env_dir, "python": python, "cwd": work, "env": env,
            "flipctl": str(env_dir / "bin" / "flipctl")}


def _flipctl(built: dict, *args: str) -> str:
    return _run([built["flipctl"], *args], cwd=built["cwd"], env=built["env"]).stdout


def _shipped_files() -> dict[str, str]:
    """Files the commands read, by their path in the checkout -> their path in the installed package."""
    files = {}
    for path in sorted((ROOT / "sweeps").rglob("*.toml")):
        files[str(path.relative_to(ROOT))] = "flip/sweep/specs/" + str(path.relative_to(ROOT / "sweeps"))
    for path in sorted((ROOT / "results" / "bench").glob("data-paths-*.json")):
        files[str(path.relative_to(ROOT))] = "flip/bench/results/" + path.name
    return files


@pytest.mark.integration  # builds the wheel
@pytest.mark.timeout(900)  # the first to run builds the sdist, the wheel and a venv
def test_the_wheel_holds_every_module_spec_and_bench_figure(built):
    names = set(zipfile.ZipFile(built["wheel"]).namelist())
    modules = {str(p.relative_to(ROOT)) for top in ("flip", "flipctl") for p in (ROOT / top).rglob("*.py")}
    missing = sorted(modules - names)
    assert not missing, f"modules left out of the wheel (add their package to pyproject's packages): {missing}"
    shipped = _shipped_files()
    assert any(name.startswith("sweeps/configs/") for name in shipped) and any("data-paths-" in n for n in shipped)
    assert not sorted(set(shipped.values()) - names)
    sdist_names = {name.split("/", 1)[1] for name in tarfile.open(built["sdist"]).getnames() if "/" in name}
    assert not sorted(set(shipped) - sdist_names), "the sdist must carry the top-level sweeps/ and results/bench/"


@pytest.mark.integration  # builds the wheel
@pytest.mark.timeout(900)  # the first to run builds the sdist, the wheel and a venv
def test_the_installed_package_is_not_the_checkout(built):
    out = _run([str(built["python"]), "-c", "import flip, flipctl; print(flip.__file__); print(flipctl.__file__)"],
               cwd=built["cwd"], env=built["env"]).stdout.split()
    assert all(Path(p).is_relative_to(built["venv"]) for p in out), out


@pytest.mark.integration  # builds the wheel
@pytest.mark.timeout(900)  # the first to run builds the sdist, the wheel and a venv
def test_installed_cli_lists_and_plans_every_shipped_sweep(built):
    from flip.sweep.spec import shipped_specs  # the checkout's, to compare with

    names = list(shipped_specs())
    assert len(names) >= 10
    listed = _flipctl(built, "sweep", "--list")
    assert all(name in listed for name in names), listed
    dry = _flipctl(built, "sweep", "mask-ratio", "--preset", "smoke", "--dry-run")
    assert "plan: 3 runs" in dry and "estimated training time left" in dry, dry


@pytest.mark.integration  # builds the wheel
@pytest.mark.timeout(900)  # the first to run builds the sdist, the wheel and a venv
def test_installed_plan_reads_the_shipped_bench_figure(built):
    out = _flipctl(built, "plan", "--model", "L/16", "--batch-size", "32768", "--gpus", "256")
    assert "fits with" in out
    assert "measured: data-paths-" in out, out  # not the fallback figure: the committed bench result was found


@pytest.mark.integration  # builds the wheel
@pytest.mark.timeout(900)  # the first to run builds the sdist, the wheel and a venv
def test_installed_version_and_short_help(built):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert _flipctl(built, "--version").strip() == f"flipctl {version}"
    assert "Usage: flipctl" in _flipctl(built, "-h")
    assert "Usage: flipctl sweep" in _flipctl(built, "sweep", "-h")


def test_dependency_pins_admit_cpu_only_torch_builds():
    from packaging.requirements import Requirement

    pins = {Requirement(d).name: Requirement(d).specifier
            for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    for version in ("2.4.0+cpu", "2.13.0+cpu", "2.14.1+cpu"):  # torch's CPU-only wheels carry a local label
        assert pins["torch"].contains(version), version
    assert pins["torchvision"].contains("0.29.1+cpu")

"""The test tiers (README, "Tests"): every test is in exactly one of quick, integration and slow, quick
tests have a short time limit, and the default run, the one CI runs, is every tier but slow."""

from pathlib import Path

import tomllib

ROOT = Path(__file__).parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PYTEST = PYPROJECT["tool"]["pytest"]["ini_options"]


def _tier(item) -> str:
    if item.get_closest_marker("slow"):
        return "slow"
    return "integration" if item.get_closest_marker("integration") else "quick"


def test_each_collected_test_is_in_exactly_one_tier(request):
    items = request.session.items
    assert request.node in items
    for item in items:
        # a test marked quick by hand besides integration or slow would run in two tiers
        assert bool(item.get_closest_marker("quick")) == (_tier(item) == "quick"), item.nodeid
        if _tier(item) == "quick":
            assert item.get_closest_marker("timeout").args[0] <= 60, item.nodeid


def test_the_default_run_is_every_tier_but_slow_and_ci_runs_it():
    assert PYTEST["addopts"] == ["-m", "not slow", "--strict-markers"]
    assert sorted(marker.split(":")[0] for marker in PYTEST["markers"]) == ["integration", "quick", "slow"]
    assert PYTEST["timeout"] >= 60 and PYTEST["required_plugins"] == ["pytest-timeout>=2.3"]
    assert "pytest-timeout>=2.3" in PYPROJECT["project"]["optional-dependencies"]["dev"]
    assert (ROOT / ".ci" / "run").read_text().rstrip().splitlines()[-1] == "pytest -q"

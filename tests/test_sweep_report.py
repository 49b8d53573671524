"""Sweep plots (flip.sweep.plots) and the HTML report (flip.sweep.html), checked in a real browser."""

import base64
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flip.sweep.fit import fit_frontier
from flip.sweep.html import write_report
from flip.sweep.plots import plot_curves, plot_metric_vs_axis
from flip.sweep.stats import by_inference_mode, summarise

ROOT = Path(__file__).resolve().parents[1]
PAPER_1A = [{"x": 0.0, "y": 68.6}, {"x": 0.5, "y": 69.6}, {"x": 0.75, "y": 68.2}]


@pytest.fixture
def results(tmp_path):
    return make_results(tmp_path)


def make_results(tmp_path):
    """Hand-made results: 3 mask ratios x 2 lengths x 3 seeds, base and tuned, one failed run."""
    rng = np.random.default_rng(0)
    rows = []
    for mask, batch, rel in [(0.0, 64, 1.0), (0.5, 128, 0.52), (0.75, 256, 0.28)]:
        for length in (1, 3):
            for seed in range(3):
                row = f"{mask:.0%} x{length}"
                run_dir = tmp_path / "store" / f"{row.replace('%', '').replace(' ', '-')}-s{seed}"
                run_dir.mkdir(parents=True)
                (run_dir / "config.json").write_text("{}")
                (run_dir / "summary.json").write_text("{}")
                flops = 1e14 * length * rel
                acc = 70 - 50 * (flops / 1e13) ** -0.35 + rng.normal(0, 0.3)
                common = dict(row=row, seed=seed, mask_ratio=mask, batch_size=batch, status="done",
                              error=None, run_dir=str(run_dir), steps=100 * length)
                rows.append(dict(common, variant="base", run_id=f"b{len(rows)}", train_time_s=200.0 * length * rel,
                                 train_flops=flops, zeroshot=acc, retrieval_i2t=acc - 10))
                rows.append(dict(common, variant="tuned", run_id=f"t{len(rows)}",
                                 train_time_s=220.0 * length * rel, train_flops=1.1 * flops,
                                 zeroshot=acc + 1.0, retrieval_i2t=acc - 9))
    rows.append(dict(row="75% x3", seed=3, variant="base", run_id="broken", status="failed",
                     error="RuntimeError: out of memory <batch 256>\nTraceback ...", mask_ratio=0.75,
                     batch_size=256, run_dir=str(tmp_path / "store" / "broken")))
    return pd.DataFrame(rows)


def assert_plot_files(paths, stem):
    png, pdf = Path(f"{stem}.png"), Path(f"{stem}.pdf")
    assert [Path(p) for p in paths] == [png, pdf]
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 400 and im.height > 300
        # Not a blank canvas: a drawn plot has many distinct colours.
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000


def test_summarise_means_std_count(results):
    s = summarise(results, ["mask_ratio", "variant"], "zeroshot")
    base0 = results[(results.mask_ratio == 0.0) & (results.variant == "base")]["zeroshot"]
    row = s[(s.mask_ratio == 0.0) & (s.variant == "base")].iloc[0]
    assert row["mean"] == pytest.approx(base0.mean()) and row["std"] == pytest.approx(base0.std())
    assert row["count"] == 6
    # Rows without the metric (the failed run) are not counted; group order is first appearance.
    assert s[(s.mask_ratio == 0.75) & (s.variant == "base")]["count"].item() == 6
    assert s["mask_ratio"].tolist()[:2] == [0.0, 0.0]
    with pytest.raises(KeyError, match="nope"):
        summarise(results, "nope", "zeroshot")


def test_inference_modes_as_an_axis(results, tmp_path):
    """Table 1d: zeroshot and zeroshot@MODE columns become an `inference` axis to plot against."""
    df = results.assign(**{"zeroshot@masked": results["zeroshot"] - 5, "zeroshot@views2": results["zeroshot"] - 2})
    long = by_inference_mode(df, "zeroshot")
    assert len(long) == 3 * len(df)
    assert list(dict.fromkeys(long["inference"])) == ["full", "masked", "views2"]
    masked = long[(long["inference"] == "masked") & (long["run_id"] == "b0")]["zeroshot"].item()
    assert masked == pytest.approx(df.loc[df["run_id"] == "b0", "zeroshot"].item() - 5)
    stem = tmp_path / "inference"
    assert_plot_files(plot_metric_vs_axis(long, "inference", "zeroshot", stem, series="mask_ratio",
                                          paper=[{"x": "masked", "y": 60.9, "series": 0.75},
                                                 {"x": "full", "y": 68.2, "series": 0.75}]), stem)
    with pytest.raises(KeyError):
        by_inference_mode(df, "linear_probe")


def test_metric_vs_axis_plots(results, tmp_path):
    stem = tmp_path / "plots" / "zeroshot_vs_mask"
    paths = plot_metric_vs_axis(results, "mask_ratio", "zeroshot", stem, series="variant", paper=PAPER_1A,
                                title="Table 1a")
    assert_plot_files(paths, stem)
    # Paper numbers on another x scale (batches of 16k-64k) go to a second panel; log x.
    paper_b = [{"x": 16384, "y": 68.5, "series": 0.5}, {"x": 65536, "y": 70.4, "series": 0.5}]
    stem = tmp_path / "plots" / "batch"
    assert_plot_files(plot_metric_vs_axis(results, "batch_size", "zeroshot", stem, series="mask_ratio",
                                          paper=paper_b, logx=True), stem)
    # A categorical axis, no series, no paper.
    cat = results.assign(text_mask=results["mask_ratio"].map({0.0: "none", 0.5: "random", 0.75: "padding"}))
    stem = tmp_path / "plots" / "text"
    assert_plot_files(plot_metric_vs_axis(cat, "text_mask", "zeroshot", stem), stem)


def test_plot_with_no_finished_runs_still_writes_files(results, tmp_path):
    failed = results.assign(status="failed")
    stem = tmp_path / "empty"
    assert_plot_files(plot_metric_vs_axis(failed, "mask_ratio", "zeroshot", stem), stem)


def test_curve_plots_with_frontier_and_fit(results, tmp_path):
    for cost in ("train_flops", "train_time_s"):
        front, fit = fit_frontier(results, cost, "zeroshot", bootstrap=30)
        assert fit is not None
        stem = tmp_path / f"curve_{cost}"
        paths = plot_curves(results, cost, "zeroshot", stem, series="mask_ratio", frontier=front, fit=fit,
                            paper=[{"x": 1.0, "y": 68.6, "series": 0.0}, {"x": 0.5, "y": 69.6, "series": 0.5}])
        assert_plot_files(paths, stem)
    stem = tmp_path / "curve_plain"
    assert_plot_files(plot_curves(results, "train_time_s", "retrieval_i2t", stem, series="mask_ratio"), stem)


@pytest.mark.integration  # a python process
def test_only_plots_module_imports_matplotlib():
    pattern = re.compile(r"^\s*(import|from)\s+matplotlib\b", re.M)
    importers = sorted(str(p.relative_to(ROOT)) for d in ("flip", "flipctl") for p in (ROOT / d).rglob("*.py")
                       if pattern.search(p.read_text(encoding="utf-8")))
    assert importers == [os.path.join("flip", "sweep", "plots.py")]


def make_report(results, tmp_path):
    plots_dir = tmp_path / "out" / "plots"
    mask_png = plot_metric_vs_axis(results, "mask_ratio", "zeroshot", plots_dir / "zeroshot_vs_mask",
                                   series="variant", paper=PAPER_1A)[0]
    front, fit = fit_frontier(results, "train_flops", "zeroshot", bootstrap=20)
    curve_png = plot_curves(results, "train_flops", "zeroshot", plots_dir / "zeroshot_vs_flops",
                            series="mask_ratio", frontier=front, fit=fit)[0]
    table = pd.DataFrame({"mask": ["0%", "50%", "75%"], "batch": ["64", "128", "256"],
                          "zero-shot": ["47.7 ± 0.1", "40.8 ± 0.2", "33.3 ± 0.4"],
                          "paper": ["68.6", "69.6", "68.2"]})
    runs = results[["run_id", "row", "seed", "variant", "status", "error", "train_time_s", "run_dir"]]
    path = write_report(tmp_path / "out", title="mask-ratio sweep <tiny>",
                        description="Mirrors FLIP Table 1a (masking ratio at equal memory).",
                        tables=[("Table 1a: masking ratio", table), ("steps", pd.DataFrame({"steps": [100, 300]}))],
                        plots=[("zero-shot vs mask ratio", mask_png), curve_png],
                        commands=["flipctl sweep mask-ratio --preset tiny --out results/sweeps/mask-ratio"],
                        runs=runs, notes=["50% vs 0%: difference within noise (1 std)"],
                        extra_json={"fit": fit.to_dict(), "tricky": "</script>"})
    return path


def test_report_is_self_contained(results, tmp_path):
    path = make_report(results, tmp_path)
    assert path == tmp_path / "out" / "report.html"
    page = path.read_text(encoding="utf-8")
    assert page.count("<table") == 3  # two result tables and the run list
    assert "<title>mask-ratio sweep &lt;tiny&gt;</title>" in page  # escaped, not markup
    assert "47.7 ± 0.1" in page and "Table 1a: masking ratio" in page
    assert "flipctl sweep mask-ratio --preset tiny" in page
    assert "within noise" in page
    # No external resources: every src is inline, every link relative.
    assert not re.search(r'(src|href)="(https?:)?//', page)
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2 and all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in images)
    assert 'href="plots/zeroshot_vs_mask.pdf"' in page
    # The run list: the failed run is marked with its error's first line; files that exist are linked.
    assert '<tr class="failed">' in page and "RuntimeError: out of memory &lt;batch 256&gt;" in page
    assert "37 runs: 36 done, 1 failed" in page
    first = Path(results["run_dir"].iloc[0])
    assert f'href="../store/{first.name}/config.json"' in page
    assert f'href="../store/{first.name}/metrics.jsonl"' not in page  # not written, so not linked
    # The embedded data parses back, even with "</script>" inside it.
    blob = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S).group(1)
    data = json.loads(blob)
    assert data["tricky"] == "</script>" and "b" in data["fit"]


def _browser_paths():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return chromium, driver


@pytest.mark.integration  # a browser process
def test_report_in_headless_chromium(results, tmp_path, monkeypatch):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
    except ImportError:
        pytest.skip("selenium not installed: pip install selenium")
    chromium, driver_path = _browser_paths()
    if not (chromium and driver_path):
        pytest.skip("no chromium/chromedriver installed: apt-get install chromium chromium-driver")
    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager download a driver
    path = make_report(results, tmp_path)

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.get(path.as_uri())
        assert driver.title == "mask-ratio sweep <tiny>"
        tables = driver.find_elements(By.TAG_NAME, "table")
        assert len(tables) == 3
        assert "47.7 ± 0.1" in tables[0].text and "Table 1a: masking ratio" in tables[0].text
        runs_text = tables[-1].text
        assert "failed" in runs_text and "RuntimeError: out of memory <batch 256>" in runs_text
        images = driver.find_elements(By.TAG_NAME, "img")
        assert len(images) == 2
        for img in images:
            loaded = driver.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth > 0 && arguments[0].naturalHeight > 0;",
                img)
            assert loaded, f"broken image: {img.get_attribute('alt')}"
            assert img.size["width"] > 100  # laid out, not collapsed
    finally:
        driver.quit()

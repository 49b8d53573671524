"""What `flipctl bench` shows of its reports: the library gives tables and lines as plain data
(`flip.bench.summary`, `flip.bench.data_summary`), the CLI draws them with rich. Checked on the
committed reports under results/bench/."""

import io
import json
from pathlib import Path

from rich.console import Console

from flip.bench.data_summary import data_paths_summary
from flip.bench.summary import Column, Line, Mark, Table, step_summary
from flipctl.bench_cmd import print_blocks

RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench"


def _shown(blocks) -> str:
    out = io.StringIO()
    print_blocks(blocks, Console(file=out, width=100_000))
    return out.getvalue()


def _plain(blocks) -> bool:
    cells = [cell for b in blocks for cell in ([c for row in b.rows for c in row] if isinstance(b, Table) else b.parts)]
    return all(isinstance(c, (str, Mark)) for c in cells) and all(isinstance(b, (Table, Line)) for b in blocks)


def test_a_step_report_is_tables_and_lines_the_cli_draws():
    report = json.loads((RESULTS / "tiny-cpu.json").read_text())
    blocks = step_summary(report)
    assert _plain(blocks)
    titles = [b.title for b in blocks if isinstance(b, Table)]
    assert titles[0].startswith("training step: tiny, batch 256") and titles[-1] == "targets"
    checks = blocks[-2]
    assert [row[-1] for row in checks.rows] == [Mark(c["pass"]) for c in report["checks"]]
    assert blocks[-1].footnote and blocks[-1].parts[0].startswith("torch ")
    shown = _shown(blocks)
    assert "speed-up over mask 0, and against open_clip" in shown and "largest batch whose step fits" in shown
    assert " pass " in shown and "[green]" not in shown


def test_a_data_paths_report_is_tables_and_lines_the_cli_draws():
    report = json.loads((RESULTS / "data-paths-b16-384px.json").read_text())
    blocks = data_paths_summary(report)
    assert _plain(blocks)
    assert blocks[0].title.startswith("data paths: synthetic 384 px JPEG q90")
    targets = [b for b in blocks if isinstance(b, Line) and b.parts[0].startswith("target: ")]
    assert [b.parts[-1] for b in targets] == [Mark(c["pass"]) for c in report["checks"]]
    shown = _shown(blocks)
    assert "what one accelerator's step consumes (NVIDIA H200 SXM" in shown and "worker: libjpeg-turbo" in shown


def test_the_librarys_text_is_shown_as_it_is_not_read_as_rich_markup():
    blocks = [Table("batch [256]", [Column("[bold]name")], [["[red]cpu[/red]", Mark(True)]]),
              Line(["torch [2.x] ", Mark(False)], footnote=True)]
    shown = _shown(blocks)
    assert "batch [256]" in shown and "[bold]name" in shown and "[red]cpu[/red]" in shown
    assert "torch [2.x] MISS" in shown

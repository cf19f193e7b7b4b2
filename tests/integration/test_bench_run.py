"""bench/run.py: the one entry point runs the benchmarks it is given, one after another, and
prints one table; a benchmark that fails is shown as failed and makes the exit code 1."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from harness import Procs, wait_for

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "bench" / "run.py"


def test_run_smoke_prints_one_table_and_writes_markdown_and_json(
    procs: Procs, tmp_path: Path
) -> None:
    md, js = tmp_path / "table.md", tmp_path / "last.json"
    begin, end = "<!-- bench/run.py: table -->", "<!-- bench/run.py: end of table -->"
    md.write_text(f"# Doc\n\nBefore.\n\n{begin}\nold table\n{end}\n\nAfter.\n")
    argv = [sys.executable, str(RUN), "--smoke", "--only", "exposition,shards",
            "--markdown", str(md), "--json", str(js)]  # fmt: skip
    bench = procs.start("bench-run", argv)
    wait_for("bench/run.py to finish", lambda: not bench.running(), timeout=180)
    out = bench.output()
    assert bench.popen is not None and bench.popen.returncode == 0, out
    assert "exposition: done" in out and "shards: done" in out
    assert "/metrics render" in out and "two shards on one broker" in out
    record = json.loads(js.read_text())
    assert record["smoke"] is True and set(record["benchmarks"]) == {"exposition", "shards"}
    assert record["machine"]["python"].startswith("3.")
    rows = [r for b in record["benchmarks"].values() for r in b["rows"]]
    assert len(rows) == 3  # render and alert read (exposition), total rate (shards)
    for r in rows:
        assert r["figure"] > 0 and r["anchor"] > 0
        assert abs(r["ratio"] - r["figure"] / r["anchor"]) <= 0.01 * r["ratio"]
    table = md.read_text()
    assert "| benchmark | what | figure | anchor | ratio | target | met |" in table
    assert table.count("\n| exposition |") == 2 and table.count("\n| shards |") == 1
    assert "smoke sizes" in table
    assert table.startswith("# Doc\n\nBefore.\n\n" + begin + "\n")
    assert table.endswith(end + "\n\nAfter.\n") and "old table" not in table


def test_an_unknown_benchmark_is_a_usage_error(procs: Procs) -> None:
    bench = procs.start("bench-run-bad", [sys.executable, str(RUN), "--only", "nosuch"])
    wait_for("bench/run.py to refuse", lambda: not bench.running(), timeout=30)
    assert bench.popen is not None and bench.popen.returncode == 2
    assert "no benchmark named nosuch" in bench.output()

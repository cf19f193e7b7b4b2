"""bench/agent.py --smoke --json: the footprint benchmark runs end to end (a real mosquitto,
collector and agent, and prometheus-node-exporter as the anchor) and prints rows whose figures
agree with each other. Speed and size are not asserted: the machine may be shared."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from harness import Procs, wait_for

ROOT = Path(__file__).resolve().parents[2]
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")


def test_agent_bench_smoke_measures_the_agent_against_node_exporter(procs: Procs) -> None:
    if os.environ.get("CI") == "true":
        assert NODE_EXPORTER, "CI installs prometheus-node-exporter (scripts/install --test)"
    bench = procs.start(
        "bench-agent", [sys.executable, str(ROOT / "bench" / "agent.py"), "--smoke", "--json"]
    )
    wait_for("the agent bench to finish", lambda: not bench.running(), timeout=120)
    out = bench.output()
    assert bench.popen is not None and bench.popen.returncode == 0, out
    result: dict[str, Any] = json.loads(out[out.index("{") :])
    rows = {r["what"]: r for r in result["rows"]}
    assert list(rows) == ["agent RSS (steady state)", "agent CPU per cycle"]
    rss, cpu = rows["agent RSS (steady state)"], rows["agent CPU per cycle"]
    assert rss["unit"] == "MB" and cpu["unit"] == "ms"
    assert rss["target"] == "≤ node-exporter"
    assert cpu["target"] == "< 2 ms and < ¼ of node-exporter"
    for r in (rss, cpu):
        assert r["figure"] > 0 and r["met"] is None  # a smoke run does not judge
    agent = result["agent"]
    assert agent["cycles"] == 12 and agent["rss_readings"] == 13
    assert 0 < agent["rss_mb"] <= agent["rss_peak_mb"]
    assert rss["figure"] == agent["rss_mb"] and cpu["figure"] == agent["cpu_ms_per_cycle"]
    assert "agent_at_default_interval" not in result  # no 15 s cycles in a smoke run
    anchors = result["python_anchors_rss_mb"]
    assert 0 < anchors["python_alone"] < anchors["floor_python_psutil_paho_msgspec_yaml_sqlite3"]
    if NODE_EXPORTER is None:
        assert result["node_exporter"] is None and "not installed" in result["node_exporter_note"]
        assert rss["anchor"] is None and cpu["anchor"] is None and rss["ratio"] is None
        return
    ne = result["node_exporter"]
    assert ne["cycles"] == 12 and ne["scrape_bytes"] > 1000 and ne["rss_mb"] > 0
    assert rss["anchor"] == ne["rss_mb"] and cpu["anchor"] == ne["cpu_ms_per_cycle"]
    assert "node-exporter" in rss["anchor_name"]
    for r in (rss, cpu):
        assert abs(r["ratio"] - r["figure"] / r["anchor"]) <= 0.001 * r["ratio"] + 1e-3

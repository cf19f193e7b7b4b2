"""bench/ingest.py --smoke: the ingest benchmark runs end to end (a real mosquitto, the raw paho
anchor and a real collector) and prints its table with figures that agree with each other.
Speed is not asserted: the machine may be shared."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from harness import Procs, wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_ingest_bench_smoke_prints_its_table(procs: Procs) -> None:
    bench = procs.start(
        "bench-ingest", [sys.executable, str(ROOT / "bench" / "ingest.py"), "--smoke"]
    )
    wait_for("the ingest bench to finish", lambda: not bench.running(), timeout=120)
    out = bench.output()
    assert bench.popen is not None and bench.popen.returncode == 0, out
    assert "600 agent batches" in out and "from 20 agents, QoS 1" in out
    assert "collector sender rate limit off" in out
    rows = re.findall(r"^\s+1\s+(\d+)\s+(\d+)\s+(\d+\.\d{3})\s+(\d+\.\d)$", out, re.M)
    assert len(rows) == 1, out
    anchor, collector, ratio, _rss = rows[0]
    assert int(anchor) > 0 and int(collector) > 0
    assert abs(float(ratio) - int(collector) / int(anchor)) < 0.01
    assert re.search(r"^median ratio collector/anchor: \d+\.\d{3}$", out, re.M), out

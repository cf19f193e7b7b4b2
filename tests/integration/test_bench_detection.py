"""bench/detection.py --smoke --json: the detection benchmark runs end to end (a real mosquitto,
collector and agents, one partitioned through a proxy and one killed; Prometheus and
Alertmanager as the anchor, shortened) and prints rows whose figures agree with each other.

Speed is not asserted beyond the one comparison the benchmark exists for: Outpost's alert
reaches the webhook before the anchor's (whose `for` alone is 10 s in the smoke run).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from harness import Procs, wait_for
from prometheus import PROMETHEUS

ROOT = Path(__file__).resolve().parents[2]
ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
NAMES = [
    "silent partition of an agent → alert at the webhook",
    "kill -9 of an agent → alert at the webhook",
]


def json_document(out: str) -> dict[str, Any]:
    """The JSON the benchmark printed (the log also holds whatever it wrote to stderr)."""
    start = out.index("{\n")
    doc, _ = json.JSONDecoder().raw_decode(out[start:])
    assert isinstance(doc, dict)
    return doc


def test_detection_bench_smoke_json(procs: Procs) -> None:
    if not (os.access(PROMETHEUS, os.X_OK) and os.access(ALERTMANAGER, os.X_OK)):
        pytest.skip("prometheus or prometheus-alertmanager is missing (scripts/install --test)")
    argv = [sys.executable, str(ROOT / "bench" / "detection.py"), "--smoke", "--json"]
    bench = procs.start("bench-detection", argv)
    wait_for("the detection bench to finish", lambda: not bench.running(), timeout=180)
    out = bench.output()
    assert bench.popen is not None and bench.popen.returncode == 0, out
    result = json_document(out)

    assert result["smoke"] is True and result["anchor_shortened"] is True
    assert result["settings"]["keepalive"] == 2
    assert result["outpost_settings"]["dispatch.group_wait_seconds"] == 1
    rows = result["rows"]
    assert [r["what"] for r in rows] == NAMES
    partition, kill = rows
    assert partition["target"] == "≤ 2 × keepalive + 2 s = 6 s"
    assert kill["target"] == "≤ 3 s"
    for r in rows:
        assert r["unit"] == "s"
        assert r["figure"] > 0 and r["anchor"] > 0
        assert abs(r["ratio"] - r["figure"] / r["anchor"]) <= 0.01 * r["ratio"]
        assert r["figure"] < r["anchor"], r  # the whole point of the comparison
        assert isinstance(r["met"], bool)
        assert "shortened" in r["anchor_name"]

    # One round: its figures are the rows', and each step of the split comes in order.
    (rnd,) = result["rounds"]
    for case, r in (("partition", partition), ("kill", kill)):
        got = rnd[case]
        assert abs(got["seconds"] - r["figure"]) <= 0.01 * r["figure"]
        # The collector's evaluation stamps its own clock; the bench's subscriber may hear the
        # Last Will a little after the collector did.
        assert got["last_will"] is not None and 0 <= got["last_will"] <= got["seen"] + 0.5
        assert got["seen"] <= got["seconds"]
    # A silent agent is only declared lost by the broker after 1.5 x keepalive of silence.
    assert rnd["partition"]["last_will"] >= 1.5 * 2 - 1  # its last packet may precede the cut
    for case in ("partition", "kill"):
        anchor = result["anchor"][case]
        assert 0 < anchor["scrape_failed"] < anchor["fired"] < anchor["seconds"]
        # The anchor's rule waits `for: 10s` after the failed scrape; the webhook gets it after
        # Alertmanager's group_wait (5 s).
        assert anchor["fired"] - anchor["scrape_failed"] >= 10 - 0.5
        assert anchor["seconds"] - anchor["fired"] >= 5 - 0.5

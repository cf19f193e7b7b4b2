"""bench/peer.py --smoke: the collector and mqtt-exporter (from build/peer-venv, which
``scripts/install --test`` creates) both take every message of the same stream through a real
mosquitto, and the bench's row agrees with its runs. Speed is not asserted: the machine may be
shared."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from harness import Procs, wait_for

ROOT = Path(__file__).resolve().parents[2]
PEER_PYTHON = ROOT / "build" / "peer-venv" / "bin" / "python"
INSTALL = (ROOT / "scripts" / "install").read_text()
PIN = re.findall(r"^peer=mqtt-exporter==(\S+)$", INSTALL, re.M)[0]  # the version it installs


def peer_installed() -> bool:
    return PEER_PYTHON.exists() and any(
        PEER_PYTHON.parent.parent.glob("lib/python*/site-packages/mqtt_exporter/main.py")
    )


def test_peer_bench_smoke_both_consumers_take_every_message(procs: Procs) -> None:
    if not peer_installed():
        why = "mqtt-exporter is not installed in build/peer-venv (scripts/install --test does it)"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(why)
        pytest.skip(why)
    bench = procs.start(
        "bench-peer", [sys.executable, str(ROOT / "bench" / "peer.py"), "--smoke", "--json"]
    )
    wait_for("the peer bench to finish", lambda: not bench.running(), timeout=120)
    out = bench.output()
    assert bench.popen is not None and bench.popen.returncode == 0, out
    start = re.search(r"^\{$", out, re.M)  # stderr (a progress bar) shares the log
    assert start is not None, out
    result = json.loads(out[start.start() :])
    assert result["messages"] == 600 and result["agents"] == 20
    assert result["sender_rate_limit"] == "off (limits: {sender_rate_per_second: 0})"
    assert len(result["runs"]) == 1
    run = result["runs"][0]
    assert run["collector_took"] == 600
    assert run["mqtt_exporter_took"] == 600
    assert run["collector_msgs_per_s"] > 0 and run["mqtt_exporter_msgs_per_s"] > 0
    peer = result["mqtt_exporter"]
    assert peer["mqtt-exporter"] == PIN
    # 20 agents, each a topic; 28 numbers per batch, each a gauge named by its JSON path.
    assert (peer["series_made"], peer["metric_names_made"]) == (20 * 28, 28)
    assert peer["error_lines_logged"] == 0
    (r,) = result["rows"]
    assert r["what"] == "collector vs mqtt-exporter, same stream and broker"
    assert r["unit"] == "msg/s" and r["target"] == "report both" and r["met"] is None
    assert r["anchor_name"].startswith(f"mqtt-exporter {PIN} ")
    assert r["figure"] == pytest.approx(run["collector_msgs_per_s"], rel=1e-3, abs=1)
    assert r["anchor"] == pytest.approx(run["mqtt_exporter_msgs_per_s"], rel=1e-3, abs=1)
    assert r["ratio"] == pytest.approx(r["figure"] / r["anchor"], rel=1e-3)

"""bench/backlog.py --smoke --json: a real agent drains a half-hour outbox built by its own
cycle code (a real mosquitto, a real collector with its default limits, the real agent
process), and the bench's figures agree with each other: every backlog batch acknowledged,
exactly as many as were built plus what the agent collected before it connected, nothing lost,
every current batch acknowledged. Speed is not asserted: the machine may be shared."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from harness import Procs, wait_for
from reliability import record

ROOT = Path(__file__).resolve().parents[2]


def _result(out: str) -> dict[str, Any]:
    """The JSON the bench prints last (its progress display may come before it)."""
    start = out.index('{\n  "rows"')
    data, _ = json.JSONDecoder().raw_decode(out[start:])
    assert isinstance(data, dict)
    return data


def test_backlog_bench_smoke_drains_every_batch(procs: Procs) -> None:
    bench = procs.start(
        "bench-backlog", [sys.executable, str(ROOT / "bench" / "backlog.py"), "--smoke", "--json"]
    )
    wait_for("the backlog bench to finish", lambda: not bench.running(), timeout=150, interval=0.2)
    out = bench.output()
    assert bench.popen is not None and bench.popen.returncode == 0, out
    result = _result(out)

    assert (result["hours"], result["interval"], result["smoke"]) == (0.5, 2.0, True)
    built, backlog = result["built"], result["backlog"]
    # 0.5 h at 2 s: exactly 900 agent cycles, one metrics batch each (plus any events batches
    # the security source made), every one kept.
    assert built["cycles"] == 900
    assert built["by_kind"]["metrics"]["messages"] == 900
    assert (
        built["messages"]
        == built["last_seq"]
        == sum(k["messages"] for k in built["by_kind"].values())
    )
    assert built["dropped"] == 0
    assert built["sources"] == ["system", "probes", "snmp", "security"]
    # The backlog is what was built plus what the agent collected on start before it connected
    # (its first cycle, as a rule), and every seq of it was acknowledged by the collector.
    assert backlog["built"] == built["messages"]
    assert backlog["collected_before_link"] >= 0
    assert backlog["messages"] == built["messages"] + backlog["collected_before_link"]
    assert backlog["arrived"] == backlog["messages"]
    assert backlog["copies_sent"] >= backlog["messages"]

    # Current data: the link-back report and at least one real cycle, all acknowledged.
    current = result["current"]
    assert current["not_acknowledged"] == []
    kinds = [b["kind"] for b in current["batches"]]
    assert kinds[0] == "events" and "metrics" in kinds, current
    assert [b["seq"] for b in current["batches"]] == list(
        range(backlog["messages"] + 1, backlog["messages"] + 1 + len(kinds))
    )
    assert all(b["lag_s"] is not None and b["lag_s"] >= 0 for b in current["batches"])
    assert current["max_lag_s"] == max(b["lag_s"] for b in current["batches"])

    collector = result["collector"]
    assert (collector["lost"], collector["dropped"]) == (0, 0)
    assert collector["messages"].get("invalid", 0) == 0
    # The collector ran with its default per-sender limits.
    assert result["limits"]["collector_sender_rate_per_second"] == 50.0
    assert result["limits"]["collector_sender_burst"] == 2000
    assert backlog["messages"] < 2000 and "within the collector's burst" in result["bound"]

    rows = result["rows"]
    assert [r["what"] for r in rows] == [
        "backlog drain (0.5 h at 2 s)",
        "current batch lag during drain",
    ]
    drain, lag = rows
    assert drain["unit"] == "batches/s" and lag["unit"] == "s"
    assert drain["anchor"] == float(f"{built['messages'] / 1800:.4g}")
    assert lag["anchor"] == 2.0
    assert drain["figure"] == float(f"{result['drain']['rate_per_s']:.4g}")
    # The drain rate is the backlog over the drain's seconds (rounded to the ms in the JSON).
    assert abs(drain["figure"] * result["drain"]["seconds"] / backlog["messages"] - 1) < 5e-3
    assert lag["figure"] == float(f"{current['max_lag_s']:.4g}")
    for r in rows:
        assert r["figure"] > 0 and r["anchor"] > 0
        assert abs(r["ratio"] / (r["figure"] / r["anchor"]) - 1) < 2e-3, r
        assert r["met"] is None  # a smoke run cannot tell
    assert drain["target"] == "≥ 50 × production" and lag["target"] == "≤ one interval"

    record(
        "backlog-drain-smoke",
        sent=backlog["messages"] + len(kinds),
        arrived=backlog["arrived"] + len(kinds),
        duplicates=collector["messages"].get("duplicate", 0),
        lost=collector["lost"],
        dropped=collector["dropped"],
        note="30 min outbox (900 cycles at 2 s) built by the agent's cycle code, drained by "
        "the real agent through mosquitto to a collector with default limits",
    )

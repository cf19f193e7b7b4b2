"""Outage classification and site coverage, from fleet state."""

from __future__ import annotations

import pytest

from collector.coverage import site_coverage
from collector.inventory import Inventory, Site
from collector.outages import classify, from_event
from collector.state import FleetState
from outpost import wire


@pytest.mark.parametrize(
    ("attrs", "kind"),
    [
        ({"rebooted": "true", "gateway": "silent"}, "power"),
        ({"rebooted": "false", "agent_down": "true"}, "agent"),
        ({"gateway": "silent", "uplink": "silent"}, "local_network"),
        ({"gateway": "answered", "uplink": "silent"}, "uplink"),
        ({"gateway": "answered", "uplink": "answered"}, "unknown"),
        ({"gateway": "unprobed", "uplink": "unprobed"}, "unknown"),
        ({}, "unknown"),
    ],
)
def test_classify(attrs: dict[str, str], kind: str) -> None:
    assert classify(attrs) == kind


def test_from_event_tolerates_garbage_numbers() -> None:
    ev = wire.Event(
        kind="outage", attrs={"started_ms": "x", "ended_ms": "-5", "duration_seconds": "nan"}
    )
    o = from_event("s", "h", ev)
    assert o.duration == 0.0 and o.started == 0.0


def batch(site: str, host: str, seq: int, samples=(), events=(), device: str = "") -> wire.Batch:  # type: ignore[no-untyped-def]
    return wire.Batch(v=1, site=site, host=host, agent_id=f"{site}-{host}", boot_id="b",
                      seq=seq, ts=seq, outbox_low=seq, interval=10.0, device=device,
                      samples=list(samples), events=list(events))  # fmt: skip


def online(state: FleetState, site: str, host: str, now: float) -> None:
    state.apply_status(wire.Status(v=1, status="online"), site, host, now)


def probe(role: str, ok: bool, rtt: float, loss: float) -> list[wire.Sample]:
    labels = {"target": f"{role}-1", "kind": "icmp", "role": role}
    return [
        wire.Sample("outpost_probe_success", 1.0 if ok else 0.0, labels),
        wire.Sample("outpost_probe_rtt_avg_seconds", rtt, labels),
        wire.Sample("outpost_probe_loss_ratio", loss, labels),
    ]


def coverage(state: FleetState, now: float) -> dict[str, tuple]:  # type: ignore[type-arg]
    views = state.views(now)
    pairs = [(v, v.host_state.samples if v.host_state else []) for v in views]
    return {c.site: c for c in site_coverage(pairs, [s.id for s in state.sites()])}


def test_site_coverage_states_and_uplink_figures() -> None:
    inv = Inventory(sites=[Site(id="a"), Site(id="b"), Site(id="c"), Site(id="d", hosts=["x"])])
    state = FleetState(60.0, inv)
    now = 1000.0
    online(state, "a", "h1", now)
    state.apply_batch(batch("a", "h1", 1, probe("uplink", True, 0.020, 0.0)), now)
    online(state, "b", "h1", now)
    state.apply_batch(batch("b", "h1", 1, probe("uplink", True, 0.100, 0.25)
                            + probe("gateway", True, 0.001, 0.0)), now)  # fmt: skip
    state.apply_batch(batch("c", "h1", 1), now)
    state.apply_status(wire.Status(v=1, status="offline", reason="lost"), "c", "h1", now)
    cov = coverage(state, now + 1)
    assert cov["a"].state == "reachable" and cov["a"].uplink_latency == pytest.approx(0.020)
    assert cov["b"].state == "degraded" and cov["b"].uplink_loss == pytest.approx(0.25)
    assert cov["b"].uplink_probes == 1  # the gateway probe is not an uplink
    assert cov["c"].state == "unreachable"
    assert cov["d"].state == "unknown" and cov["d"].hosts == 1


def test_a_device_alone_does_not_make_a_site_reachable() -> None:
    state = FleetState(60.0)
    up = wire.Sample(wire.DEVICE_UP, 1.0)
    state.apply_batch(batch("a", "h1", 1, [up], device="switch1"), 1000.0)
    view = {v.host: v for v in state.views(1000.0)}["switch1"]
    assert view.up and view.host_state is not None and view.host_state.proxy == "h1"
    assert coverage(state, 1000.0)["a"].state == "unknown"


def test_a_device_that_stops_answering_is_unreachable() -> None:
    state = FleetState(60.0)
    state.apply_batch(batch("a", "h1", 1, [wire.Sample(wire.DEVICE_UP, 1.0)], device="sw"), 1.0)
    state.apply_batch(batch("a", "h1", 2, [wire.Sample(wire.DEVICE_UP, 0.0)], device="sw"), 2.0)
    view = {v.host: v for v in state.views(3.0)}["sw"]
    assert view.state == "unreachable" and not view.up and view.track is None


def test_outage_events_are_counted_per_site_and_kind() -> None:
    state = FleetState(60.0)
    ev = wire.Event(kind="outage", attrs={"rebooted": "true", "duration_seconds": "120"})
    applied = state.apply_batch(batch("a", "h1", 1, events=[ev]), 1000.0)
    assert [o.kind for o in applied.outages] == ["power"]
    again = state.apply_batch(batch("a", "h1", 1, events=[ev]), 1001.0)  # a duplicate
    assert not again.new and state.outages["a"].count["power"] == 1
    assert state.outages["a"].seconds["power"] == 120.0

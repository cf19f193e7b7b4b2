"""Tests for collector.exporter.FleetCollector: series read back from a fresh registry, and a
golden exposition (tests/fixtures/exposition.txt) for a fixed fleet at a fixed time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from collector.exporter import HOST_STATES, FleetCollector
from collector.ingest import Ingest
from collector.inventory import Inventory, Site
from collector.state import FleetState
from outpost import __version__, wire

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "exposition.txt"
NOW = 1_700_000_100.0


def payload(seq: int, site: str = "s1", host: str = "h1", **fields: Any) -> bytes:
    body: dict[str, Any] = {
        "v": 1,
        "site": site,
        "host": host,
        "agent_id": f"agent-{site}-{host}",
        "boot_id": "boot-1",
        "seq": seq,
        "ts": 1_700_000_000_000 + seq,
        "interval": 15.0,
    }
    body.update(fields)
    return json.dumps(body).encode()


def metrics(site: str, host: str) -> str:
    return f"outpost/v1/{site}/{host}/metrics"


def make(
    inventory: Inventory | None = None, extra: dict[str, float] | None = None
) -> tuple[Ingest, CollectorRegistry]:
    ingest = Ingest(FleetState(stale_after=60, inventory=inventory), wire.Limits())
    registry = CollectorRegistry()
    registry.register(
        FleetCollector(ingest, extra=(lambda: dict(extra)) if extra else None, clock=lambda: NOW)
    )
    return ingest, registry


def lines_of(text: str, name: str) -> list[str]:
    """The sample lines of one series name in an exposition."""
    return [line for line in text.splitlines() if line.split("{")[0].split(" ")[0] == name]


def hl(site: str = "s1", host: str = "h1", **more: str) -> dict[str, str]:
    return {"site": site, "host": host, **more}


NET = [
    {
        "name": "outpost_network_receive_bytes_total",
        "value": 123456,
        "labels": {"interface": "eth0"},
    },
    {"name": "outpost_network_receive_bytes_total", "value": 99, "labels": {"interface": "wlan0"}},
    {"name": "outpost_load1", "value": 0.5},
]


def test_host_series() -> None:
    ingest, registry = make()
    assert ingest.handle(metrics("s1", "h1"), payload(1, samples=NET), NOW - 10) == "accepted"
    get = registry.get_sample_value
    assert get("outpost_host_up", hl()) == 1.0
    assert get("outpost_host_expected", hl()) == 0.0
    assert get("outpost_host_state", hl(state="online")) == 1.0
    assert get("outpost_host_state", hl(state="stale")) == 0.0
    assert get("outpost_host_last_seen_timestamp_seconds", hl()) == NOW - 10
    assert get("outpost_host_info", hl(agent_id="agent-s1-h1", boot_id="boot-1")) == 1.0
    assert get("outpost_agent_last_seq", hl()) == 1.0
    assert get("outpost_agent_lost_messages_total", hl()) == 0.0
    assert get("outpost_network_receive_bytes_total", hl(interface="eth0")) == 123456.0
    assert get("outpost_network_receive_bytes_total", hl(interface="wlan0")) == 99.0
    assert get("outpost_load1", hl()) == 0.5


def test_collector_series() -> None:
    ingest, registry = make(extra={"outpost_collector_broker_connected": 1.0})
    ingest.handle(metrics("s1", "h1"), payload(1), NOW)
    ingest.handle(metrics("s1", "h1"), payload(1), NOW)
    ingest.handle(metrics("s1", "h1"), payload(5, outbox_low=5, dropped=[[2, 3]]), NOW)
    ingest.handle(metrics("s1", "h1"), b"{", NOW)
    get = registry.get_sample_value
    assert get("outpost_collector_messages_total", {"result": "accepted"}) == 2.0
    assert get("outpost_collector_messages_total", {"result": "duplicate"}) == 1.0
    assert get("outpost_collector_messages_total", {"result": "invalid"}) == 1.0
    assert get("outpost_collector_invalid_messages_total", {"reason": "malformed"}) == 1.0
    assert get("outpost_collector_lost_messages_total") == 1.0  # seq 4
    assert get("outpost_collector_dropped_messages_total") == 2.0
    assert get("outpost_agent_lost_messages_total", hl()) == 1.0
    assert get("outpost_agent_dropped_messages_total", hl()) == 2.0
    assert get("outpost_agent_duplicate_messages_total", hl()) == 1.0
    assert get("outpost_agent_last_seq", hl()) == 5.0
    assert get("outpost_collector_hosts") == 1.0
    assert get("outpost_collector_broker_connected") == 1.0
    assert get("outpost_collector_build_info", {"version": __version__}) == 1.0


def test_never_reported_expected_host() -> None:
    inventory = Inventory(sites=[Site(id="s1", name="城关镇", hosts=["h1", "h2"])])
    ingest, registry = make(inventory)
    ingest.handle(metrics("s1", "h1"), payload(1), NOW)
    get = registry.get_sample_value
    assert get("outpost_host_up", hl(host="h2")) == 0.0
    assert get("outpost_host_expected", hl(host="h2")) == 1.0
    assert get("outpost_host_state", hl(host="h2", state="never_reported")) == 1.0
    for state in HOST_STATES:
        if state != "never_reported":
            assert get("outpost_host_state", hl(host="h2", state=state)) == 0.0
    assert get("outpost_host_last_seen_timestamp_seconds", hl(host="h2")) is None
    assert get("outpost_host_expected", hl()) == 1.0
    assert get("outpost_collector_hosts") == 2.0
    site = {
        "site": "s1",
        "name": "城关镇",
        "county": "",
        "township": "",
        "latitude": "",
        "longitude": "",
    }
    assert get("outpost_site_info", site) == 1.0


@pytest.mark.parametrize(
    ("status", "state"),
    [
        (b'{"v":1,"status":"offline","reason":"lost"}', "lost"),
        (b'{"v":1,"status":"offline","reason":"shutdown"}', "shutdown"),
    ],
)
def test_samples_of_a_host_that_is_not_up_are_not_exported(status: bytes, state: str) -> None:
    ingest, registry = make()
    ingest.handle(metrics("s1", "h1"), payload(1, samples=NET), NOW)
    ingest.handle("outpost/v1/s1/h1/status", status, NOW)
    get = registry.get_sample_value
    assert get("outpost_host_up", hl()) == 0.0
    assert get("outpost_host_state", hl(state=state)) == 1.0
    assert get("outpost_network_receive_bytes_total", hl(interface="eth0")) is None
    assert get("outpost_load1", hl()) is None


def test_samples_of_a_stale_host_are_not_exported() -> None:
    ingest, registry = make()
    ingest.handle(metrics("s1", "h1"), payload(1, samples=NET), NOW - 3600)
    assert registry.get_sample_value("outpost_host_state", hl(state="stale")) == 1.0
    assert registry.get_sample_value("outpost_load1", hl()) is None


def test_an_agent_sample_named_like_a_collector_family_is_not_exported_twice() -> None:
    ingest, registry = make()
    samples = [
        {"name": "outpost_host_up", "value": 5},
        {"name": "outpost_host_events_total", "value": 7},
        {"name": "outpost_host_events", "value": 8},
        {"name": "outpost_collector_hosts", "value": 9},
        {"name": "outpost_load1", "value": 0.5},
    ]
    ingest.handle(metrics("s1", "h1"), payload(1, samples=samples), NOW)
    text = generate_latest(registry).decode()
    assert registry.get_sample_value("outpost_host_up", hl()) == 1.0
    assert lines_of(text, "outpost_host_up") == ['outpost_host_up{host="h1",site="s1"} 1.0']
    assert text.count("# TYPE outpost_host_up ") == 1
    assert lines_of(text, "outpost_host_events_total") == []  # the host sent no events
    assert lines_of(text, "outpost_host_events") == []
    assert lines_of(text, "outpost_collector_hosts") == ["outpost_collector_hosts 1.0"]
    assert registry.get_sample_value("outpost_collector_hosts") == 1.0
    assert registry.get_sample_value("outpost_load1", hl()) == 0.5


def test_a_series_reported_twice_and_a_type_clash_are_exported_once() -> None:
    ingest, registry = make()
    samples = [
        {"name": "outpost_load1", "value": 0.5},
        {"name": "outpost_load1", "value": 0.7},
        {"name": "custom_total", "value": 1},
        {"name": "custom", "value": 2},  # same family, but a gauge: skipped
    ]
    ingest.handle(metrics("s1", "h1"), payload(1, samples=samples), NOW)
    text = generate_latest(registry).decode()
    assert lines_of(text, "outpost_load1") == ['outpost_load1{host="h1",site="s1"} 0.5']
    assert lines_of(text, "custom") == []
    assert registry.get_sample_value("outpost_load1", hl()) == 0.5
    assert registry.get_sample_value("custom_total", hl()) == 1.0
    assert "Reported by agents; not in the catalogue." in text


def test_events_are_exported_by_kind_and_severity() -> None:
    ingest, registry = make()
    events = [{"kind": "login_failed", "severity": "warning"}] * 2 + [{"kind": "port_opened"}]
    ingest.handle("outpost/v1/s1/h1/events", payload(1, events=events), NOW)
    get = registry.get_sample_value
    assert get("outpost_host_events_total", hl(kind="login_failed", severity="warning")) == 2.0
    assert get("outpost_host_events_total", hl(kind="port_opened", severity="info")) == 1.0


def test_generate_latest_works_with_an_empty_fleet() -> None:
    _, registry = make()
    text = generate_latest(registry).decode()
    assert "# TYPE outpost_host_up gauge" in text
    assert 'outpost_collector_messages_total{result="accepted"} 0.0' in text


# --- golden exposition --------------------------------------------------------------------------


def golden_fleet() -> CollectorRegistry:
    """A fixed fleet: one host online with samples and events, one that lost power, one shut
    down, one expected that never reported, one nobody expected, and some bad messages."""
    inventory = Inventory(
        sites=[
            Site(
                id="chengguan",
                name="城关镇便民服务中心",
                county="某某县",
                township="城关镇",
                latitude=30.5,
                longitude=114.25,
                hosts=["srv01", "srv02", "gw"],
            ),
            Site(id="village-7", name="七村村委会", hosts=["pc1"]),
        ]
    )
    ingest = Ingest(FleetState(stale_after=60, inventory=inventory), wire.Limits())
    samples = [
        {
            "name": "outpost_network_receive_bytes_total",
            "value": 1e9,
            "labels": {"interface": "eth0"},
        },
        {
            "name": "outpost_network_transmit_bytes_total",
            "value": 2e8,
            "labels": {"interface": "eth0"},
        },
        {"name": "outpost_load1", "value": 0.25},
        {"name": "outpost_agent_source_success", "value": 1, "labels": {"source": "system"}},
        {"name": "vendor_widget_temperature", "value": 41.5, "labels": {"sensor": 'a "b"\\c'}},
    ]
    events = [
        {"kind": "login_failed", "severity": "warning"},
        {"kind": "login_failed", "severity": "warning"},
        {"kind": "port_opened", "severity": "critical"},
    ]
    t = NOW - 30
    srv01 = metrics("chengguan", "srv01")
    ingest.handle(srv01, payload(1, "chengguan", "srv01", samples=samples[:2]), t)
    ingest.handle(srv01, payload(4, "chengguan", "srv01", outbox_low=4, dropped=[[2, 2]]), t)
    ingest.handle(srv01, payload(5, "chengguan", "srv01", samples=samples), t + 1)
    ingest.handle(srv01, payload(5, "chengguan", "srv01", samples=samples), t + 2)
    ingest.handle(
        "outpost/v1/chengguan/srv01/events", payload(6, "chengguan", "srv01", events=events), t + 3
    )
    ingest.handle(metrics("chengguan", "srv02"), payload(1, "chengguan", "srv02"), t)
    ingest.handle(
        "outpost/v1/chengguan/srv02/status", b'{"v":1,"status":"offline","reason":"lost"}', t + 5
    )
    ingest.handle(metrics("village-7", "pc1"), payload(1, "village-7", "pc1"), t)
    ingest.handle(
        "outpost/v1/village-7/pc1/status", b'{"v":1,"status":"offline","reason":"shutdown"}', t
    )
    ingest.handle(metrics("lab", "test"), payload(1, "lab", "test", samples=samples[2:3]), t)
    ingest.handle(metrics("chengguan", "srv01"), b"{", t)
    ingest.handle(metrics("chengguan", "srv01"), payload(9, "chengguan", "other"), t)
    ingest.handle("outpost/v1/x/y/ack", b"{}", t)
    registry = CollectorRegistry()
    registry.register(FleetCollector(ingest, clock=lambda: NOW))
    return registry


def test_golden_exposition() -> None:
    text = generate_latest(golden_fleet()).decode()
    text = text.replace(f'version="{__version__}"', 'version="VERSION"')
    assert text == FIXTURE.read_text(encoding="utf-8")
    families = {f.name: f for f in text_string_to_metric_families(text)}  # it parses back
    assert families["outpost_network_receive_bytes"].type == "counter"

"""Tests for collector.exporter.FleetCollector: series read back from a fresh registry, a
golden exposition (tests/fixtures/exposition.txt) for a fixed fleet at a fixed time, and the
renderer behind /metrics: the same page as the reference path, valid with hostile labels
(``promtool check metrics``), a cache that follows label changes, gzip, and the benchmark's
smoke run."""

from __future__ import annotations

import gzip
import json
import logging
import math
import random
import shutil
import struct
import subprocess
import sys
import threading
import urllib.request
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from collector.catalogue import CATALOGUE
from collector.exporter import (
    HOST_STATES,
    FleetCollector,
    accepts_gzip,
    go_float,
    metrics_body,
)
from collector.ingest import Ingest
from collector.inventory import Inventory, Site
from collector.state import FleetState
from outpost import __version__, wire

ROOT = Path(__file__).resolve().parents[3]
FIXTURE = ROOT / "tests" / "fixtures" / "exposition.txt"
NOW = 1_700_000_100.0
PROMTOOL = shutil.which("promtool")


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


def _as_set(items: Any) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {(name, tuple(sorted(labels.items())), value) for name, labels, value in items}


@pytest.mark.parametrize(
    "names",
    [
        None,
        {"outpost_load1", "custom"},  # custom: its family is a counter, so never given
        {"outpost_host_up", "custom_total", "outpost_site_hosts", "process_cpu_seconds_total"},
        set(),
    ],
)
def test_series_are_the_collected_samples_of_the_names_asked_for(names: set[str] | None) -> None:
    ingest = Ingest(FleetState(stale_after=60), wire.Limits())
    fleet = FleetCollector(ingest, clock=lambda: NOW)
    h1 = [
        {"name": "outpost_load1", "value": 0.5},
        {"name": "outpost_load1", "value": 0.7},
        {"name": "custom_total", "value": 1},
        {"name": "process_cpu_seconds_total", "value": 3},  # reserved: never exported
    ]
    h2 = [{"name": "custom", "value": 2}, {"name": "outpost_load1", "value": 0.25}]
    ingest.handle(metrics("s1", "h1"), payload(1, samples=h1), NOW)
    ingest.handle(metrics("s1", "h2"), payload(1, host="h2", samples=h2), NOW)
    collected = [(s.name, s.labels, s.value) for f in fleet.collect() for s in f.samples]
    wanted = [c for c in collected if names is None or c[0] in names]
    got = list(fleet.series(names))
    assert len(got) == len(wanted)
    assert _as_set(got) == _as_set(wanted)
    if names is not None and "outpost_load1" in names:
        assert _as_set(got) == {
            ("outpost_load1", (("host", "h1"), ("site", "s1")), 0.5),
            ("outpost_load1", (("host", "h2"), ("site", "s1")), 0.25),
        }


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


def golden_ingest() -> Ingest:
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
    return ingest


def golden_fleet() -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(FleetCollector(golden_ingest(), clock=lambda: NOW))
    return registry


def test_golden_exposition() -> None:
    text = generate_latest(golden_fleet()).decode()
    text = text.replace(f'version="{__version__}"', 'version="VERSION"')
    assert text == FIXTURE.read_text(encoding="utf-8")
    families = {f.name: f for f in text_string_to_metric_families(text)}  # it parses back
    assert families["outpost_network_receive_bytes"].type == "counter"


def test_the_renderer_writes_the_golden_exposition() -> None:
    fleet = FleetCollector(golden_ingest(), clock=lambda: NOW)
    for _ in range(2):  # the second time from the cache
        text = fleet.render().decode().replace(f'version="{__version__}"', 'version="VERSION"')
        assert text == FIXTURE.read_text(encoding="utf-8")


# --- the renderer against the reference path ------------------------------------------------

HOSTILE_VALUES = [
    'a "quoted" value',
    "back\\slash\\",
    "new\nline",
    "城关镇",
    "tab\tcr\r",
    "}{=,",
    "😀",
]
NAMES = [
    ("outpost_load1", {}),
    ("outpost_network_receive_bytes_total", {"interface": "eth0"}),
    ("outpost_network_receive_bytes_total", {"interface": "eth1"}),
    ("outpost_cpu_seconds_total", {"mode": "user"}),
    ("outpost_filesystem_free_bytes", {"mountpoint": "/"}),
    ("outpost_filesystem_size_bytes", {"mountpoint": "/"}),
    ("outpost_filesystem_free_bytes", {"mountpoint": "/var"}),  # a family in two places
    ("custom_total", {}),
    ("custom", {}),  # the same family as a gauge: skipped after the counter
    ("outpost_host_up", {}),  # a collector family: never exported from an agent
    ("process_cpu_seconds_total", {}),  # prometheus-client's own
    ("outpost_alerts", {}),  # the alert engine's
    ("outpost_probe_success", {"role": "uplink", "target": "gw"}),
    ("outpost_probe_rtt_avg_seconds", {"role": "uplink", "target": "gw"}),
    ("outpost_probe_loss_ratio", {"role": "uplink", "target": "gw"}),
    ("vendor_thing", {"label": "x"}),
]
VALUES = [0.0, 1.0, 0.25, 1e6, 1234567.5, 1e9, 2.5e16, 1e-7, 42.0, 123456.789, 1e300]


def random_samples(rng: random.Random) -> list[dict[str, Any]]:
    picked = rng.sample(NAMES, rng.randint(1, len(NAMES)))
    if rng.random() < 0.3:
        picked.append(picked[0])  # a series reported twice
    out = []
    for name, labels in picked:
        labels = dict(labels)
        if rng.random() < 0.2:
            labels["extra"] = rng.choice(HOSTILE_VALUES)
        out.append({"name": name, "value": rng.choice(VALUES), "labels": labels})
    return out


def random_fleet(seed: int, hosts: int = 40) -> tuple[Ingest, FleetCollector, CollectorRegistry]:
    """Hosts of several shapes in mixed order, some stale, lost or shut down, devices, events,
    outages, refused samples and rate-limited senders; an inventory with hostile names."""
    rng = random.Random(seed)
    inventory = Inventory(
        sites=[
            Site(id="s1", name=HOSTILE_VALUES[0], county=HOSTILE_VALUES[1], hosts=["h0", "gone"]),
            Site(id="s2", name=HOSTILE_VALUES[2], township="城关镇", latitude=1.5, longitude=-2.0),
        ]
    )
    limits = wire.Limits(sender_rate_per_second=1.0, sender_burst=8)
    ingest = Ingest(FleetState(stale_after=60, inventory=inventory), limits)
    for i in range(hosts):
        site, host = f"s{1 + i % 3}", f"h{i}"
        at = NOW - (600 if rng.random() < 0.1 else 5)
        events = [
            {"kind": rng.choice(["login_failed", "port_opened", "outage", "agent_started"]),
             "severity": rng.choice(["info", "warning", "critical"]),
             "attrs": {"gateway": "answered", "uplink": "silent", "duration_seconds": "30"}}
            for _ in range(rng.randint(0, 3))
        ]  # fmt: skip
        samples = random_samples(rng)
        if rng.random() < 0.1:
            samples.append({"name": "outpost_cpu_seconds_total", "value": -1.0})  # refused
        body = payload(1, site, host, samples=samples)
        assert ingest.handle(metrics(site, host), body, at) == "accepted"
        if events:
            body = payload(2, site, host, events=events)
            assert ingest.handle(f"outpost/v1/{site}/{host}/events", body, at) == "accepted"
        if rng.random() < 0.1:
            reason = rng.choice(["lost", "shutdown"])
            status = json.dumps({"v": 1, "status": "offline", "reason": reason}).encode()
            ingest.handle(f"outpost/v1/{site}/{host}/status", status, at)
        if i % 7 == 0:  # an agent polling a device of its site
            dev = payload(3, site, host, device=f"d{i}", samples=random_samples(rng))
            assert ingest.handle(metrics(site, host), dev, at) == "accepted"
    for n in range(12):  # past the sender's burst: rate limited
        ingest.handle(metrics("s1", "h0"), payload(10 + n, "s1", "h0"), NOW)
    assert ingest.rate_limited
    fleet = FleetCollector(
        ingest, extra=lambda: {"outpost_collector_broker_connected": 1.0}, clock=lambda: NOW
    )
    registry = CollectorRegistry()
    registry.register(fleet)
    return ingest, fleet, registry


def samples_of(text: str) -> list[tuple[str, str, tuple[tuple[str, str], ...], float]]:
    return [
        (family.name, s.name, tuple(sorted(s.labels.items())), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


@pytest.mark.parametrize("seed", range(6))
def test_the_renderer_writes_the_page_of_the_reference_path(seed: int) -> None:
    """Byte for byte, and parsed back to the same samples: once with a cold cache, then after
    every host has sent a new batch with other values and some with other label sets."""
    ingest, fleet, registry = random_fleet(seed)
    rng = random.Random(seed + 100)
    for round_ in range(3):
        rendered = fleet.render()
        reference = generate_latest(registry)
        assert rendered == reference
        parsed = samples_of(rendered.decode())
        assert parsed == samples_of(reference.decode())
        assert len(parsed) > 100
        for i in range(40):
            site, host = f"s{1 + i % 3}", f"h{i}"
            samples = random_samples(rng)
            ingest.handle(
                metrics(site, host), payload(20 + round_, site, host, samples=samples), NOW
            )


def test_the_render_cache_follows_label_changes_and_forgets_gone_hosts() -> None:
    ingest, _ = make()
    fleet = FleetCollector(ingest, clock=lambda: NOW)
    eth0 = [{"name": "outpost_network_up", "value": 1, "labels": {"interface": "eth0"}}]
    eth1 = [{"name": "outpost_network_up", "value": 0, "labels": {"interface": "eth1"}}]
    ingest.handle(metrics("s1", "h1"), payload(1, samples=eth0), NOW)
    ingest.handle(metrics("s1", "h2"), payload(1, host="h2", samples=eth0), NOW)
    assert 'outpost_network_up{host="h1",interface="eth0",site="s1"} 1.0' in fleet.render().decode()
    assert fleet.cache_entries() == (2, 2)
    ingest.handle(metrics("s1", "h1"), payload(2, samples=eth1, boot_id="boot-2"), NOW)
    text = fleet.render().decode()
    assert 'outpost_network_up{host="h1",interface="eth1",site="s1"} 0.0' in text
    assert 'host="h1",interface="eth0"' not in text
    assert 'boot_id="boot-2",host="h1"' in text and 'boot_id="boot-1",host="h1"' not in text
    del ingest.state.hosts[("s1", "h2")]
    assert 'host="h2"' not in fleet.render().decode()
    assert fleet.cache_entries() == (1, 1)


def test_go_float_is_prometheus_clients_float_format() -> None:
    rng = random.Random(7)
    special = [0.0, -0.0, 1.0, 1e6, 999999.9999, 1e16, 9999999999999998.0, 1e15 + 0.5, 5e-324]
    special += [math.inf, -math.inf, math.nan, 1e300, -1e300, -1234567.0, 1700000073.0]
    values = special + [struct.unpack("d", rng.randbytes(8))[0] for _ in range(20000)]
    values += [rng.uniform(0, 1e17) for _ in range(20000)]
    values += [float(rng.randrange(10**18)) for _ in range(20000)]
    assert [go_float(v) for v in values] == [floatToGoString(v) for v in values]


def hostile_fleet() -> tuple[Ingest, FleetCollector]:
    """Every family of the page with hostile text wherever an agent or the inventory puts
    text, and two lone surrogates (refused at ingest) slipped into the state directly."""
    inventory = Inventory(
        sites=[
            Site(id="s1", name='城关 "x"\\\n', county="\\", township="\n", latitude=30.5,
                 longitude=114.25, hosts=["h1", "h9"]),
        ]
    )  # fmt: skip
    ingest = Ingest(FleetState(stale_after=60, inventory=inventory), wire.Limits())
    labels = {f"l{i}": v for i, v in enumerate(HOSTILE_VALUES)}
    samples = [
        {"name": "outpost_load1", "value": 0.5, "labels": labels},
        {"name": "vendor_widget_total", "value": 3, "labels": {"sensor": 'a "b"\\c\n'}},
        {"name": "outpost_probe_success", "value": 0, "labels": {"role": "uplink", "t": "\\"}},
        {"name": "outpost_probe_rtt_avg_seconds", "value": 0.02, "labels": {"role": "uplink"}},
        {"name": "outpost_probe_loss_ratio", "value": 0.5, "labels": {"role": "uplink"}},
        {"name": "outpost_cpu_seconds_total", "value": -1},  # refused: negative counter
    ]
    events = [
        {"kind": "login_failed", "severity": "warning", "message": '"\\\n'},
        {"kind": "outage", "attrs": {"gateway": "answered", "uplink": "silent",
                                     "duration_seconds": "12.5"}},
    ]  # fmt: skip
    agent_id = 'agent "1"\\\n城'
    body = payload(1, samples=samples, agent_id=agent_id, boot_id="b\\\n")
    assert ingest.handle(metrics("s1", "h1"), body, NOW - 1) == "accepted"
    body = payload(2, events=events, agent_id=agent_id, boot_id="b\\\n")
    assert ingest.handle("outpost/v1/s1/h1/events", body, NOW - 1) == "accepted"
    for n in range(3, 5000):  # past the sender's burst: rate limited
        body = payload(n, agent_id=agent_id, boot_id="b\\\n")
        if ingest.handle(metrics("s1", "h1"), body, NOW) != "accepted":
            break
    ingest.handle(metrics("s1", "h1"), b"{", NOW)
    state = ingest.state.hosts[("s1", "h1")]
    state.samples.append(wire.Sample("outpost_load5", 1.0, {"bad": "x\udc80y"}))
    state.samples.append(wire.Sample("outpost_load15", 1.0, {"bad\udc81": "z"}))
    return ingest, FleetCollector(ingest, clock=lambda: NOW)


def promtool_check(page: bytes) -> None:
    """Exit 1 (a parse error) fails; exit 3 (its naming lint) only for catalogue names."""
    assert PROMTOOL is not None
    run = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=page, capture_output=True, timeout=60
    )
    out = (run.stdout + run.stderr).decode()
    if run.returncode == 3:
        named = {line.split(" ", 1)[0] for line in out.splitlines() if line.strip()}
        assert named <= set(CATALOGUE), out
    else:
        assert run.returncode == 0, out


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (scripts/install --test)")
def test_a_page_with_hostile_labels_and_every_family_passes_promtool() -> None:
    _ingest, fleet = hostile_fleet()
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    page, headers = metrics_body(fleet, registry)
    assert headers == {"Content-Type": CONTENT_TYPE_LATEST}
    promtool_check(page)
    assert fleet.render() in page  # again, from the cache (the host's samples planned again)
    text = page.decode()
    families = {f.name for f in text_string_to_metric_families(text)}
    assert {"outpost_host_events", "outpost_security_events", "outpost_site_outages",
            "outpost_agent_rate_limited_messages", "outpost_host_samples_refused",
            "outpost_site_uplink_latency_seconds", "outpost_site_uplink_loss_ratio",
            "outpost_host_clock_skew_seconds", "vendor_widget", "process_cpu_seconds",
            "outpost_load5", "outpost_load15"} <= families  # fmt: skip
    assert 'bad="x\\\\udc80y"' in text  # the lone surrogate, spelt out
    assert "bad_" in text  # a label name it made unusable, as prometheus-client escapes it
    parsed = {
        (s.name, tuple(sorted(s.labels.items())))
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    labels = {"site": "s1", "host": "h1"} | {f"l{i}": v for i, v in enumerate(HOSTILE_VALUES)}
    assert ("outpost_load1", tuple(sorted(labels.items()))) in parsed
    info = {"site": "s1", "host": "h1", "agent_id": 'agent "1"\\\n城', "boot_id": "b\\\n"}
    assert ("outpost_host_info", tuple(sorted(info.items()))) in parsed


def test_a_host_that_cannot_be_rendered_loses_only_its_own_series(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ingest, _ = make()
    ingest.handle(metrics("s1", "h1"), payload(1, samples=NET), NOW)
    ingest.handle(metrics("s1", "h2"), payload(1, host="h2", samples=NET), NOW)
    bad = SimpleNamespace(name="outpost_load5", value="not a number", labels={})
    ingest.state.hosts[("s1", "h2")].samples.append(bad)  # type: ignore[arg-type]
    fleet = FleetCollector(ingest, clock=lambda: NOW)
    with caplog.at_level(logging.ERROR, logger="collector.exporter"):
        text = fleet.render().decode()
        fleet.render()
    assert lines_of(text, "outpost_load1") == ['outpost_load1{host="h1",site="s1"} 0.5']
    assert lines_of(text, "outpost_host_up") == [
        'outpost_host_up{host="h1",site="s1"} 1.0',
        'outpost_host_up{host="h2",site="s1"} 1.0',
    ]
    assert [r.getMessage() for r in caplog.records] == ["could not render the series of s1/h2"]
    assert samples_of(text)  # the rest of the page parses


# --- /metrics over HTTP -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, False),
        ("", False),
        ("gzip", True),
        ("deflate, gzip;q=1.0, *;q=0.5", True),
        ("GZIP", True),
        ("gzip;q=0", False),
        ("gzip; q=0.000", False),
        ("identity", False),
        ("*", True),
        ("br, x-gzip", True),
        ("gzip;q=bogus", False),
    ],
)
def test_accepts_gzip(header: str | None, expected: bool) -> None:
    assert accepts_gzip(header) is expected


def test_metrics_endpoint_serves_the_fleet_then_the_registry_gzipped_on_request() -> None:
    from collector.service import _handler

    ingest = golden_ingest()
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    service = SimpleNamespace(fleet=FleetCollector(ingest, clock=lambda: NOW), registry=registry)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(service))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    try:
        plain = urllib.request.urlopen(url, timeout=30)
        body = plain.read()
        assert plain.headers["Content-Encoding"] is None
        assert plain.headers["Content-Type"] == CONTENT_TYPE_LATEST
        request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
        zipped = urllib.request.urlopen(request, timeout=30)
        raw = zipped.read()
        assert zipped.headers["Content-Encoding"] == "gzip"
        assert int(zipped.headers["Content-Length"]) == len(raw) < len(body)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(30)
    fleet_part = FIXTURE.read_text(encoding="utf-8").replace("VERSION", __version__).encode()
    for page in (body, gzip.decompress(raw)):
        assert page.startswith(fleet_part)
        assert b"\n# TYPE process_cpu_seconds_total counter\n" in page[len(fleet_part) :]
        names = [f.name for f in text_string_to_metric_families(page.decode())]
        assert len(names) == len(set(names))


# --- the benchmark ------------------------------------------------------------------------------


def test_the_exposition_benchmark_runs_small() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "exposition.py"), "--hosts", "50", "--runs", "2",
         "--old", "--json"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    figures = json.loads(run.stdout)
    assert figures["hosts"] == 50
    assert figures["series"] == 51 * 50 + 9 * 3 + 8  # hosts, 3 sites, the collector's
    assert figures["anchor_lines"] == 51 * 50
    assert figures["old_equals_render"] is True
    for key in ("fleet_render_s", "anchor_join_s", "ratio_render_to_anchor", "cache_kib"):
        assert figures[key] > 0
    # What an evaluation reads: 17 of a host's 51 series here, fewer than every series.
    assert 0 < figures["alert_read_series"] < figures["series"]
    assert [r["what"].split(",")[0] for r in figures["rows"]] == [
        "/metrics render",
        "alert evaluation read",
    ]

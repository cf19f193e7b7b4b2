"""Tests for the probes source (agent/sources/probes.py) and the runner it uses: config
validation with key paths, samples from results, bounded concurrent runs with timeouts.

No network here: the runner runs fake jobs, and the one source test that runs a cycle has only
ICMP targets whose socket the "kernel" refuses. The probes' packet parsing is tested in
test_probes_icmp.py, test_probes_dns.py and test_probes_http.py; real probes on loopback in
tests/integration/test_probes.py.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import socket
import time
from typing import Any

import pytest

from agent.config import AgentConfig
from agent.probes.common import Job, ProbeError, ProbeResult, run_bounded, short_error
from agent.probes.icmp import IcmpSocket, echo_result
from agent.sources.probes import (
    ProbesConfig,
    ProbesSource,
    Target,
    cycle_samples,
    probe_samples,
)
from outpost.config import ConfigError, Problem, validate
from outpost.wire import Sample

# --- the runner -----------------------------------------------------------------------------


def test_run_bounded_keeps_order_bounds_each_job_and_concurrency() -> None:
    running = peak = 0

    async def work(seconds: float, fail: bool = False) -> ProbeResult:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(seconds)
            if fail:
                raise RuntimeError("bug")
            return ProbeResult(success=True, rtt_avg=seconds)
        finally:
            running -= 1

    jobs = [Job(lambda: work(0.02), 1.0) for _ in range(6)]
    jobs.insert(2, Job(lambda: work(30), 0.2))
    jobs.append(Job(lambda: work(0, fail=True), 1.0))
    started = time.perf_counter()
    results = asyncio.run(run_bounded(jobs, concurrency=3))
    assert time.perf_counter() - started < 2
    assert [r.success for r in results] == [True, True, False, True, True, True, True, False]
    assert results[2].error == "timeout" and 0.15 < results[2].duration < 1
    assert "bug" in results[-1].error
    assert peak == 3


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "x"), "refused"),
        (TimeoutError(), "timeout"),
        (OSError(errno.EHOSTUNREACH, "x"), "host unreachable"),
        (socket.gaierror(-2, "Name or service not known"), "name not resolved"),
        (ProbeError("nxdomain"), "nxdomain"),
    ],
)
def test_short_error(exc: BaseException, text: str) -> None:
    assert short_error(exc) == text


# --- samples --------------------------------------------------------------------------------


def _target(**fields: Any) -> Target:
    return Target(**{"name": "t1", "kind": "icmp", "address": "10.0.0.1", **fields})


def _by_name(samples: list[Sample]) -> dict[str, float]:
    return {s.name: s.value for s in samples}


def test_icmp_samples_and_labels() -> None:
    result = echo_result([0.01, 0.02], sent=3)
    result.duration = 0.5
    samples = probe_samples(_target(role="gateway"), result)
    assert all(s.labels == {"target": "t1", "kind": "icmp", "role": "gateway"} for s in samples)
    got = _by_name(samples)
    assert got == {
        "outpost_probe_success": 1.0,
        "outpost_probe_duration_seconds": 0.5,
        "outpost_probe_rtt_min_seconds": 0.01,
        "outpost_probe_rtt_avg_seconds": pytest.approx(0.015),
        "outpost_probe_rtt_max_seconds": 0.02,
        "outpost_probe_jitter_seconds": pytest.approx(0.01),
        "outpost_probe_loss_ratio": pytest.approx(1 / 3),
    }


def test_missing_and_non_finite_values_are_left_out() -> None:
    result = ProbeResult(success=False, duration=2.0, rtt_avg=math.nan, ttfb=math.inf)
    samples = probe_samples(_target(), result)
    assert _by_name(samples) == {
        "outpost_probe_success": 0.0,
        "outpost_probe_duration_seconds": 2.0,
    }
    assert samples[0].labels["role"] == "none"


def test_tcp_loss_is_zero_or_one() -> None:
    tcp = _target(kind="tcp", port=22, count=None)
    ok = _by_name(probe_samples(tcp, ProbeResult(success=True, rtt_avg=0.003, loss=0.0)))
    assert ok["outpost_probe_loss_ratio"] == 0.0 and ok["outpost_probe_rtt_avg_seconds"] == 0.003
    failed = _by_name(probe_samples(tcp, ProbeResult(success=False, error="refused")))
    assert failed["outpost_probe_loss_ratio"] == 1.0
    assert "outpost_probe_rtt_avg_seconds" not in failed


def test_http_and_dns_samples() -> None:
    http = _target(kind="http", address="", url="https://x.test/")
    got = _by_name(
        probe_samples(
            http, ProbeResult(success=True, http_status=200, ttfb=0.1, cert_days_left=30.5)
        )
    )
    assert got["outpost_probe_http_status_code"] == 200.0
    assert got["outpost_probe_http_ttfb_seconds"] == 0.1
    assert got["outpost_probe_tls_cert_days_left"] == 30.5
    dns = _target(kind="dns", address="", server="10.0.0.53", query="x.test")
    got = _by_name(probe_samples(dns, ProbeResult(success=False, dns_answers=0)))
    assert got["outpost_probe_dns_answers"] == 0.0


def test_cycle_samples_count_targets_and_failures() -> None:
    targets = [_target(name=f"t{i}") for i in range(3)]
    results = [ProbeResult(success=i != 1) for i in range(3)]
    got = cycle_samples(targets, results)
    assert got[-2:] == [Sample("outpost_probes_targets", 3.0), Sample("outpost_probes_failed", 1.0)]
    assert sum(s.name == "outpost_probe_success" for s in got) == 3


# --- the source -----------------------------------------------------------------------------


def test_no_targets_no_loop() -> None:
    samples = ProbesSource(ProbesConfig()).collect(time.time()).samples
    assert _by_name(samples) == {"outpost_probes_targets": 0.0, "outpost_probes_failed": 0.0}


def test_icmp_refused_fails_its_targets_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    def refuse(*args: Any) -> socket.socket:
        raise PermissionError(errno.EACCES, "Permission denied")

    config = ProbesConfig(targets=[_target(name="a"), _target(name="b")])
    source = ProbesSource(config, open_icmp=lambda: IcmpSocket.open(factory=refuse))
    with caplog.at_level(logging.DEBUG, logger="agent.sources.probes"):
        for _ in range(3):
            samples = source.collect(time.time()).samples
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "net.ipv4.ping_group_range" in warnings[0].getMessage()
    assert _by_name(samples)["outpost_probes_failed"] == 2.0
    assert [s.value for s in samples if s.name == "outpost_probe_success"] == [0.0, 0.0]


# --- config ---------------------------------------------------------------------------------


def _problems(probes: dict[str, Any]) -> list[Problem]:
    data = {"site": "s1", "host": "h1", "sources": {"probes": probes}}
    with pytest.raises(ConfigError) as info:
        validate(data, AgentConfig, "agent.yaml")
    return info.value.problems


def _one(probes: dict[str, Any]) -> Problem:
    problems = _problems(probes)
    assert len(problems) == 1, problems
    return problems[0]


def test_every_kind_validates() -> None:
    data = {
        "site": "s1",
        "host": "h1",
        "sources": {
            "probes": {
                "targets": [
                    {"name": "gw", "kind": "icmp", "address": "192.168.1.1", "count": 5},
                    {"name": "ssh", "kind": "tcp", "address": "srv1", "port": 22},
                    {"name": "dns", "kind": "dns", "server": "10.0.0.53", "query": "gov.cn"},
                    {"name": "web", "kind": "http", "url": "https://x.test", "verify_tls": False},
                ]
            }
        },
    }
    config = validate(data, AgentConfig, "agent.yaml")
    assert [t.kind for t in config.sources.probes.targets] == ["icmp", "tcp", "dns", "http"]


def test_tcp_needs_a_port() -> None:
    problem = _one({"targets": [{"name": "ssh", "kind": "tcp", "address": "10.0.0.1"}]})
    assert problem.path == "sources.probes.targets[0]"
    assert "tcp target 'ssh' needs port" in problem.expected


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({"kind": "icmp"}, "needs address"),
        ({"kind": "dns", "server": "10.0.0.53"}, "needs query"),
        ({"kind": "http"}, "needs url"),
        ({"kind": "http", "url": "ftp://x/"}, "http:// or https://"),
        ({"kind": "dns", "server": "a", "query": "a..b"}, "bad domain name"),
        ({"kind": "icmp", "address": "fe80::1"}, "IPv4 only"),
        ({"kind": "icmp", "address": "a b"}, "not a host name"),
        ({"kind": "icmp", "address": "10.0.0.1", "port": 80}, "port does not apply to icmp"),
        ({"kind": "tcp", "address": "h", "port": 1, "url": "http://h/"}, "url does not apply"),
    ],
)
def test_kind_requirements(target: dict[str, Any], message: str) -> None:
    problem = _one({"targets": [{"name": "t", **target}]})
    assert problem.path == "sources.probes.targets[0]"
    assert message in problem.expected


def test_duplicate_names() -> None:
    target = {"name": "gw", "kind": "icmp", "address": "10.0.0.1"}
    problem = _one({"targets": [target, {**target, "name": "gw2"}, target]})
    assert problem.path == "sources.probes"
    assert "targets[2]: name 'gw' is already used by targets[0]" in problem.expected


def test_bad_kind_and_values_are_all_reported_with_paths() -> None:
    problems = _problems(
        {
            "concurrency": 0,
            "icmp_count": 21,
            "targets": [
                {"name": "Bad Name", "kind": "ftp"},
                {"name": "ok", "kind": "tcp", "address": "h", "port": 70000, "colour": "red"},
            ],
        }
    )
    by_path = {p.path: p for p in problems}
    assert set(by_path) == {
        "sources.probes.concurrency",
        "sources.probes.icmp_count",
        "sources.probes.targets[0].name",
        "sources.probes.targets[0].kind",
        "sources.probes.targets[1].port",
        "sources.probes.targets[1].colour",
    }
    assert "'dns', 'http', 'icmp', 'tcp'" in by_path["sources.probes.targets[0].kind"].expected
    assert by_path["sources.probes.targets[1].colour"].found == "unknown key"

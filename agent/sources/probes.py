"""The ``probes`` source: network coverage seen from this host, by ICMP, TCP, DNS and HTTP.

Every target of a cycle runs concurrently on one event loop (at most ``concurrency`` at once),
each bounded by its own timeout, so a dead target costs its timeout and never delays the
others. The probes themselves live in agent/probes/; this module holds the config, turns each
target into a probe, and turns results into samples (``probe_samples``, pure). A failing
target is logged at debug only; ICMP without permission is logged once, at warning.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

import msgspec

from agent.probes.common import Job, ProbeError, ProbeResult, resolve, run_bounded, run_loop
from agent.probes.dns import dns_probe, encode_name
from agent.probes.http import http_probe, parse_url, tls_context
from agent.probes.icmp import IcmpSocket
from agent.probes.tcp import tcp_probe
from agent.sources.base import Collected
from outpost.wire import Sample

__all__ = ["ProbesConfig", "ProbesSource", "Target", "cycle_samples", "probe_samples"]

logger = logging.getLogger(__name__)

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}\Z"
ROLE_PATTERN = r"^(?:[a-z0-9][a-z0-9_.-]{0,62})?\Z"
Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
Role = Annotated[str, msgspec.Meta(pattern=ROLE_PATTERN)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Timeout = Annotated[float, msgspec.Meta(gt=0, le=300)]
Count = Annotated[int, msgspec.Meta(ge=1, le=20)]
Status = Annotated[int, msgspec.Meta(ge=100, le=599)]
Kind = Literal["icmp", "tcp", "dns", "http"]

ICMP_GRACE_SECONDS = 0.5  # the ping bounds itself; the outer timeout is only a safety net

# The keys each kind takes (beyond name, kind, role, timeout_seconds), and those it needs.
KIND_KEYS: dict[str, tuple[str, ...]] = {
    "icmp": ("address", "count"),
    "tcp": ("address", "port"),
    "dns": ("server", "server_port", "query", "record"),
    "http": ("url", "verify_tls", "expect_status"),
}
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "icmp": ("address",),
    "tcp": ("address", "port"),
    "dns": ("server", "query"),
    "http": ("url",),
}


class Target(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One probe target. Which keys apply depends on ``kind`` (see ``KIND_KEYS``)."""

    name: Name
    kind: Kind
    role: Role = ""
    address: str = ""
    port: Port | None = None
    server: str = ""
    server_port: Port = 53
    query: str = ""
    record: Literal["A", "AAAA"] = "A"
    url: str = ""
    timeout_seconds: Timeout | None = None
    count: Count | None = None
    verify_tls: bool = True
    expect_status: list[Status] = []

    def __post_init__(self) -> None:
        what = f"{self.kind} target {self.name!r}"
        missing = [key for key in REQUIRED_KEYS[self.kind] if getattr(self, key) in ("", None)]
        if missing:
            raise ValueError(f"{what} needs {' and '.join(missing)}")
        own = KIND_KEYS[self.kind]
        for field in msgspec.structs.fields(self):
            other = any(field.name in keys for keys in KIND_KEYS.values())
            if other and field.name not in own and not _is_default(field, self):
                raise ValueError(f"{what}: {field.name} does not apply to {self.kind} targets")
        if self.kind in ("icmp", "tcp") and any(ch.isspace() for ch in self.address):
            raise ValueError(f"{what}: address {self.address!r} is not a host name or address")
        if self.kind == "icmp" and ":" in self.address:
            try:
                ipaddress.IPv6Address(self.address)
            except ValueError:
                pass
            else:
                raise ValueError(f"{what}: ICMP probes are IPv4 only")
        try:
            if self.kind == "dns":
                encode_name(self.query)
            if self.kind == "http":
                parse_url(self.url)
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None


def _is_default(field: msgspec.structs.FieldInfo, target: Target) -> bool:
    value = getattr(target, field.name)
    if field.default is not msgspec.NODEFAULT:
        return bool(value == field.default)
    if field.default_factory is not msgspec.NODEFAULT:
        return bool(value == field.default_factory())
    return False


class ProbesConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The ``probes`` block. ``timeout_seconds`` and ``icmp_count`` may be set per target."""

    enabled: bool = True
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 256
    timeout_seconds: Timeout = 2.0
    icmp_count: Count = 3
    icmp_interval_seconds: Annotated[float, msgspec.Meta(ge=0, le=10)] = 0.2
    targets: list[Target] = []

    def __post_init__(self) -> None:
        seen: dict[str, int] = {}
        for index, target in enumerate(self.targets):
            if target.name in seen:
                raise ValueError(
                    f"targets[{index}]: name {target.name!r} is already used by "
                    f"targets[{seen[target.name]}]; target names must be unique"
                )
            seen[target.name] = index


# --- samples (pure) -------------------------------------------------------------------------


def probe_samples(target: Target, result: ProbeResult) -> list[Sample]:
    """The samples of one target's result; a value that is missing or not finite is left out.
    For TCP, ``loss`` is 0 when the connection was made and 1 when not."""
    loss = result.loss
    if target.kind == "tcp":
        loss = 0.0 if result.success else 1.0
    values: tuple[tuple[str, float | None], ...] = (
        ("outpost_probe_success", 1.0 if result.success else 0.0),
        ("outpost_probe_duration_seconds", result.duration),
        ("outpost_probe_rtt_min_seconds", result.rtt_min),
        ("outpost_probe_rtt_avg_seconds", result.rtt_avg),
        ("outpost_probe_rtt_max_seconds", result.rtt_max),
        ("outpost_probe_jitter_seconds", result.jitter),
        ("outpost_probe_loss_ratio", loss),
        ("outpost_probe_http_status_code", result.http_status),
        ("outpost_probe_http_ttfb_seconds", result.ttfb),
        ("outpost_probe_tls_cert_days_left", result.cert_days_left),
        ("outpost_probe_dns_answers", result.dns_answers),
    )
    labels = {"target": target.name, "kind": target.kind, "role": target.role or "none"}
    return [
        Sample(name, float(value), dict(labels))
        for name, value in values
        if value is not None and math.isfinite(value)
    ]


def cycle_samples(targets: list[Target], results: list[ProbeResult]) -> list[Sample]:
    """Every target's samples, then how many targets there are and how many failed."""
    samples: list[Sample] = []
    for target, result in zip(targets, results, strict=True):
        samples.extend(probe_samples(target, result))
    failed = sum(not result.success for result in results)
    samples.append(Sample("outpost_probes_targets", float(len(targets))))
    samples.append(Sample("outpost_probes_failed", float(failed)))
    return samples


# --- running a cycle ------------------------------------------------------------------------


async def _icmp(
    icmp: IcmpSocket | None, why_not: str, host: str, count: int, interval: float, timeout: float
) -> ProbeResult:
    if icmp is None:
        raise ProbeError(why_not)
    _, sockaddr = await resolve(host, 0, socket.AF_INET)
    return await icmp.ping(sockaddr[0], count, interval, timeout)


class ProbesSource:
    """Probes every configured target once per ``collect``. No I/O until then."""

    name = "probes"

    def __init__(
        self, config: ProbesConfig, open_icmp: Callable[[], IcmpSocket] = IcmpSocket.open
    ) -> None:
        self.config = config
        self.open_icmp = open_icmp  # tests pass one that fails, as a kernel that forbids ICMP
        self._icmp_warned = False  # the "ICMP not permitted" warning is logged once

    def collect(self, now: float) -> Collected:
        targets = self.config.targets
        results: list[ProbeResult] = []
        if targets:
            results = run_loop(self._run(now), threads=min(self.config.concurrency, 32))
        for target, result in zip(targets, results, strict=True):
            if not result.success:
                logger.debug(
                    "probe %s (%s) failed after %.3f s: %s",
                    target.name, target.kind, result.duration, result.error,
                )  # fmt: skip
        return Collected(samples=cycle_samples(targets, results))

    def _open_icmp(self) -> tuple[IcmpSocket | None, str]:
        try:
            icmp = self.open_icmp()
        except ProbeError as exc:
            if not self._icmp_warned:
                logger.warning("probes: %s", exc)
                self._icmp_warned = True
            return None, str(exc)
        self._icmp_warned = False
        return icmp, ""

    async def _run(self, now: float) -> list[ProbeResult]:
        targets = self.config.targets
        icmp, why_not = None, ""
        if any(target.kind == "icmp" for target in targets):
            icmp, why_not = self._open_icmp()
        try:
            if icmp is not None:
                icmp.start()
            contexts: dict[bool, ssl.SSLContext] = {}
            jobs = [self._job(target, now, icmp, why_not, contexts) for target in targets]
            return await run_bounded(jobs, self.config.concurrency)
        finally:
            if icmp is not None:
                icmp.close()

    def _job(
        self,
        target: Target,
        now: float,
        icmp: IcmpSocket | None,
        why_not: str,
        contexts: dict[bool, ssl.SSLContext],
    ) -> Job:
        cfg = self.config
        timeout = target.timeout_seconds or cfg.timeout_seconds
        run: Callable[[], Awaitable[ProbeResult]]
        if target.kind == "icmp":
            count = target.count or cfg.icmp_count
            interval = cfg.icmp_interval_seconds
            run = functools.partial(_icmp, icmp, why_not, target.address, count, interval, timeout)
            return Job(run, timeout + (count - 1) * interval + ICMP_GRACE_SECONDS)
        if target.kind == "tcp":
            assert target.port is not None  # checked in Target.__post_init__
            run = functools.partial(tcp_probe, target.address, target.port)
        elif target.kind == "dns":
            run = functools.partial(
                dns_probe, target.server, target.server_port, target.query, target.record
            )
        else:
            url = parse_url(target.url)
            context = None
            if url.scheme == "https":
                if target.verify_tls not in contexts:
                    contexts[target.verify_tls] = tls_context(target.verify_tls)
                context = contexts[target.verify_tls]
            run = functools.partial(http_probe, url, target.expect_status, context, now)
        return Job(run, timeout)

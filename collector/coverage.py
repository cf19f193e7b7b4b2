"""Site coverage: is a site reachable, and how is its uplink, derived from fleet state.

A site is ``reachable`` when at least one of its agents is online and every uplink probe they
report succeeds without loss; ``degraded`` when an agent is online but an uplink probe fails or
loses packets, or a host the inventory expects is not online; ``unreachable`` when none of its
agents is online; ``unknown`` when no agent of the site ever reported. Uplink latency and loss
are the means over the site's uplink probes. Pure: computed at scrape time from a snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from collector.state import HostView
from outpost.wire import Sample

__all__ = ["STATES", "SiteCoverage", "site_coverage"]

STATES = ("reachable", "degraded", "unreachable", "unknown")
UPLINK = "uplink"


class SiteCoverage(NamedTuple):
    site: str
    state: str
    hosts: int
    hosts_up: int
    uplink_probes: int
    uplink_probes_ok: int
    uplink_latency: float | None
    uplink_loss: float | None


class _Acc:
    def __init__(self) -> None:
        self.hosts = self.up = self.agents = self.agents_up = 0
        self.expected_down = 0
        self.probes = self.ok = 0
        self.rtts: list[float] = []
        self.losses: list[float] = []


def site_coverage(
    hosts: Iterable[tuple[HostView, list[Sample]]], sites: Iterable[str] = ()
) -> list[SiteCoverage]:
    """One entry per site that has hosts or is named in ``sites`` (the inventory)."""
    acc: dict[str, _Acc] = {site: _Acc() for site in sites}
    for view, samples in hosts:
        a = acc.setdefault(view.site, _Acc())
        a.hosts += 1
        a.up += view.up
        if view.expected and not view.up:
            a.expected_down += 1
        is_agent = view.host_state is not None and not view.host_state.proxy
        if not is_agent:
            continue
        a.agents += 1
        if not view.up:
            continue
        a.agents_up += 1
        for s in samples:
            if not s.name.startswith("outpost_probe_") or s.labels.get("role") != UPLINK:
                continue
            if s.name == "outpost_probe_success":
                a.probes += 1
                a.ok += s.value == 1.0
            elif s.name == "outpost_probe_rtt_avg_seconds":
                a.rtts.append(s.value)
            elif s.name == "outpost_probe_loss_ratio":
                a.losses.append(s.value)
    out = []
    for site, a in sorted(acc.items()):
        loss = sum(a.losses) / len(a.losses) if a.losses else None
        if a.agents == 0:
            state = "unknown"
        elif a.agents_up == 0:
            state = "unreachable"
        elif a.ok < a.probes or (loss or 0.0) > 0 or a.expected_down:
            state = "degraded"
        else:
            state = "reachable"
        latency = sum(a.rtts) / len(a.rtts) if a.rtts else None
        out.append(SiteCoverage(site, state, a.hosts, a.up, a.probes, a.ok, latency, loss))
    return out

"""What kind of outage was it: the collector's side.

An agent's ``outage`` event says when its link went and came back, whether its gateway and
uplink probes answered meanwhile, and whether the host rebooted or only the agent was down.
``classify`` turns that into one kind:

- ``power``: the host rebooted without being asked to (most often a power cut);
- ``agent``: the host stayed up but the agent was not running (crashed, killed, hung);
- ``local_network``: the gateway did not answer (the site's LAN, its router or its switch);
- ``uplink``: the gateway answered but the uplink did not (the line out of the site);
- ``unknown``: the probes that would tell were not configured, or everything answered (the
  trouble was beyond the uplink: the county network, the broker).

Pure: the ingest layer hands each applied ``outage`` event in and counts what comes out.
"""

from __future__ import annotations

from typing import NamedTuple

from outpost.wire import Event

__all__ = ["KINDS", "Outage", "classify", "from_event"]

KINDS = ("power", "agent", "local_network", "uplink", "unknown")


class Outage(NamedTuple):
    site: str
    host: str
    kind: str
    started: float
    ended: float
    duration: float
    gateway: str
    uplink: str


def classify(attrs: dict[str, str]) -> str:
    if attrs.get("rebooted") == "true":
        return "power"
    if attrs.get("agent_down") == "true":
        return "agent"
    if attrs.get("gateway") == "silent":
        return "local_network"
    if attrs.get("uplink") == "silent":
        return "uplink"
    return "unknown"


def _number(text: str | None) -> float:
    try:
        value = float(text or 0)
    except ValueError:
        return 0.0
    return value if 0 <= value < 1e13 else 0.0


def from_event(site: str, host: str, event: Event) -> Outage:
    a = event.attrs
    started = _number(a.get("started_ms")) / 1000
    ended = _number(a.get("ended_ms")) / 1000
    duration = _number(a.get("duration_seconds")) or max(0.0, ended - started)
    return Outage(
        site, host, classify(a), started, ended, duration,
        a.get("gateway", "unprobed"), a.get("uplink", "unprobed"),
    )  # fmt: skip

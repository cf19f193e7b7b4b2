"""/metrics: a custom prometheus-client collector that renders fleet state at scrape time.

It keeps no copy of the data: at each scrape it takes a snapshot of the state under the ingest
lock and yields fresh metric families from it. The MQTT thread never touches prometheus-client
objects. Names and meanings are catalogued in docs/metrics.md (and collector/catalogue.py).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from collector.catalogue import ALERTING_FAMILIES, CATALOGUE, COLLECTOR_FAMILIES
from collector.coverage import STATES as COVERAGE_STATES
from collector.coverage import site_coverage
from collector.events import is_security
from collector.ingest import ALL_RESULTS, Ingest
from collector.state import OUTAGE_KINDS, SKEW_FRESH_SECONDS, HostView, SiteOutages
from outpost import __version__

__all__ = ["FleetCollector"]

HOST_STATES = ("online", "lost", "shutdown", "stale", "unreachable", "never_reported")
# Agent samples never take a name another collector of the registry exports (a second family
# of the same name makes the whole exposition invalid): the alert engine's, and
# prometheus-client's process_* (and python_*) series.
RESERVED_PREFIXES = ("process_", "python_")


def _family(name: str, kind: str) -> Metric:
    """A family for a sample name; counters are named without ``_total``."""
    base = name[:-6] if kind == "counter" and name.endswith("_total") else name
    return Metric(base, CATALOGUE.get(name, "Reported by agents; not in the catalogue."), kind)


class FleetCollector(Collector):
    def __init__(
        self,
        ingest: Ingest,
        extra: Callable[[], dict[str, float]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ingest = ingest
        self.extra = extra or (dict)
        self.clock = clock

    def _snapshot(self, now: float) -> tuple[list[HostView], dict[str, Any]]:
        with self.ingest.lock:
            state = self.ingest.state
            views = state.views(now)
            # HostState objects are updated in place by ingest: copy what may change.
            copied = []
            skews: dict[tuple[str, str], float] = {}
            for v in views:
                hs = v.host_state
                events = dict(hs.events) if hs is not None else {}
                copied.append((v, hs.samples if hs else [], events, hs.last_seen if hs else 0.0))
                if hs is not None and hs.batch_ts and now - hs.last_seen <= SKEW_FRESH_SECONDS:
                    skews[(v.site, v.host)] = hs.clock_skew
            meta = {
                "messages": dict(self.ingest.messages),
                "invalid": dict(self.ingest.invalid),
                "rate_limited": dict(self.ingest.rate_limited),
                "refused": dict(state.refused),
                "lost": state.lost_total,
                "dropped": state.dropped_total,
                "tracks": {
                    key: (t.highest, t.lost, t.dropped, t.duplicates)
                    for key, t in state.tracks.items()
                },
                "sites": state.sites(),
                "outages": {
                    site: SiteOutages(Counter(o.count), dict(o.seconds))
                    for site, o in state.outages.items()
                },
                "hosts": copied,
                "skews": skews,
            }
        return views, meta

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        _views, meta = self._snapshot(now)
        hosts: list[tuple[HostView, list[Any], dict[tuple[str, str], int], float]] = meta["hosts"]
        fam: dict[str, Metric] = {
            name: Metric(name if kind != "counter" else name[:-6], CATALOGUE[name], kind)
            for name, kind in COLLECTOR_FAMILIES.items()
        }

        def add(name: str, labels: dict[str, str], value: float) -> None:
            fam[name].add_sample(name, labels, value)

        for view, _samples, events, last_seen in hosts:
            hl = {"site": view.site, "host": view.host}
            add("outpost_host_up", hl, 1.0 if view.up else 0.0)
            add("outpost_host_expected", hl, 1.0 if view.expected else 0.0)
            for st in HOST_STATES:
                add("outpost_host_state", {**hl, "state": st}, 1.0 if st == view.state else 0.0)
            if view.host_state is None:
                continue
            add("outpost_host_last_seen_timestamp_seconds", hl, last_seen)
            skew = meta["skews"].get((view.site, view.host))
            if skew is not None:
                add("outpost_host_clock_skew_seconds", hl, skew)
            add(
                "outpost_host_info",
                {**hl, "agent_id": view.host_state.agent_id, "boot_id": view.host_state.boot_id},
                1.0,
            )
            track = meta["tracks"].get((view.site, view.host, view.host_state.agent_id))
            if track is not None:
                highest, lost, dropped, duplicates = track
                add("outpost_agent_last_seq", hl, float(highest))
                add("outpost_agent_lost_messages_total", hl, float(lost))
                add("outpost_agent_dropped_messages_total", hl, float(dropped))
                add("outpost_agent_duplicate_messages_total", hl, float(duplicates))
            for (kind, severity), count in sorted(events.items()):
                el = {**hl, "kind": kind, "severity": severity}
                add("outpost_host_events_total", el, count)
                if is_security(kind):
                    add("outpost_security_events_total", el, count)

        for cov in site_coverage(
            ((view, samples) for view, samples, _e, _l in hosts),
            (site.id for site in meta["sites"]),
        ):
            sl = {"site": cov.site}
            add(
                "outpost_site_reachable", sl, 1.0 if cov.state in ("reachable", "degraded") else 0.0
            )
            for st in COVERAGE_STATES:
                add("outpost_site_coverage", {**sl, "state": st}, 1.0 if st == cov.state else 0.0)
            add("outpost_site_hosts", sl, float(cov.hosts))
            add("outpost_site_hosts_up", sl, float(cov.hosts_up))
            add("outpost_site_uplink_probes", sl, float(cov.uplink_probes))
            add("outpost_site_uplink_probes_ok", sl, float(cov.uplink_probes_ok))
            if cov.uplink_latency is not None:
                add("outpost_site_uplink_latency_seconds", sl, cov.uplink_latency)
            if cov.uplink_loss is not None:
                add("outpost_site_uplink_loss_ratio", sl, cov.uplink_loss)
        for site_id, per_site in sorted(meta["outages"].items()):
            for kind in OUTAGE_KINDS:
                ol = {"site": site_id, "kind": kind}
                add("outpost_site_outages_total", ol, float(per_site.count.get(kind, 0)))
                add("outpost_site_outage_seconds_total", ol, per_site.seconds.get(kind, 0.0))

        for site in meta["sites"]:
            add(
                "outpost_site_info",
                {
                    "site": site.id,
                    "name": site.name,
                    "county": site.county,
                    "township": site.township,
                    "latitude": "" if site.latitude is None else str(site.latitude),
                    "longitude": "" if site.longitude is None else str(site.longitude),
                },
                1.0,
            )

        for (site, host), count in sorted(meta["rate_limited"].items()):
            add(
                "outpost_agent_rate_limited_messages_total",
                {"site": site, "host": host},
                float(count),
            )
        for (site, host, reason), count in sorted(meta["refused"].items()):
            add(
                "outpost_host_samples_refused_total",
                {"site": site, "host": host, "reason": reason},
                float(count),
            )
        messages = {**dict.fromkeys(ALL_RESULTS, 0), **meta["messages"]}
        for result, count in sorted(messages.items()):
            add("outpost_collector_messages_total", {"result": result}, float(count))
        for reason, count in sorted(meta["invalid"].items()):
            add("outpost_collector_invalid_messages_total", {"reason": reason}, float(count))
        add("outpost_collector_lost_messages_total", {}, float(meta["lost"]))
        add("outpost_collector_dropped_messages_total", {}, float(meta["dropped"]))
        add("outpost_collector_hosts", {}, float(len(hosts)))
        add("outpost_collector_build_info", {"version": __version__}, 1.0)
        for name, value in self.extra().items():
            add(name, {}, value)
        yield from fam.values()
        yield from self._agent_samples(hosts, set(fam))

    def _agent_samples(
        self, hosts: list[tuple[HostView, list[Any], Any, float]], taken: set[str]
    ) -> Iterator[Metric]:
        """Every online host's latest samples, with site and host added. A name that collides
        with a collector family (ours, the alert engine's, process_* or python_*), or a series
        reported twice, is skipped."""
        families: dict[str, Metric] = {}
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        taken = taken | set(ALERTING_FAMILIES)
        blocked = {m[:-6] if m.endswith("_total") else m for m in taken} | taken
        for view, samples, _events, _last in hosts:
            if not view.up:
                continue
            for s in samples:
                name = s.name
                kind = "counter" if name.endswith("_total") else "gauge"
                base = name[:-6] if kind == "counter" else name
                if base in blocked or name in blocked or name.startswith(RESERVED_PREFIXES):
                    continue
                metric = families.get(base)
                if metric is None:
                    metric = families[base] = _family(name, kind)
                elif metric.type != kind:
                    continue
                labels = {"site": view.site, "host": view.host, **s.labels}
                key = (name, tuple(sorted(labels.items())))
                if key in seen:
                    continue
                seen.add(key)
                metric.add_sample(name, labels, s.value)
        yield from families.values()

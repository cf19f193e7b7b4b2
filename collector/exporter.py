"""/metrics: fleet state rendered at scrape time, as exposition text or as metric families.

It keeps no copy of the data: at each scrape it takes a snapshot of the state under the ingest
lock and renders from it. The MQTT thread never touches prometheus-client objects. Names and
meanings are catalogued in docs/metrics.md (and collector/catalogue.py).

Two paths give the same series. :meth:`FleetCollector.render` writes the exposition text
straight to bytes: that is what /metrics serves (:func:`metrics_body` appends the registry of
the collector's own metrics, process_*, python_* and the alert engine's). ``collect()`` yields
prometheus-client families, for tests that read values back; it is the reference the renderer
is tested against. ``series(names)`` gives the same samples as plain tuples, only those of the
names asked for: what the alert rules read at each evaluation (a few of a host's series, not
all of them).

The renderer keeps a cache per host (:class:`_HostCache`, about 180 bytes a series): the
escaped text of each of its series up to the value, checked at every scrape against a key of
the host's current sample names and label sets (:func:`series_key`; no label dict and no value
is kept). Hosts whose samples fall into the same families alike are rendered together
(:class:`_Segment`): a host whose series do not change costs its key, and per series a float
format and two list slots. Whatever one host's data holds, it can lose only its own series,
never the page (a lone surrogate in a label, refused at ingest, is spelt out).
"""

from __future__ import annotations

import gc
import gzip
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from operator import attrgetter
from typing import Any, NamedTuple

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import (
    UNDERSCORES,
    escape_label_name,
    escape_metric_name,
)
from prometheus_client.registry import Collector

from collector.catalogue import ALERTING_FAMILIES, CATALOGUE, COLLECTOR_FAMILIES
from collector.coverage import STATES as COVERAGE_STATES
from collector.coverage import site_coverage
from collector.events import is_security
from collector.ingest import ALL_RESULTS, Ingest
from collector.state import OUTAGE_KINDS, SKEW_FRESH_SECONDS, HostView, SiteOutages
from outpost import __version__

__all__ = [
    "HOST_STATES",
    "FleetCollector",
    "accepts_gzip",
    "go_float",
    "label_text",
    "metrics_body",
    "sample_prefix",
]

log = logging.getLogger(__name__)

HOST_STATES = ("online", "lost", "shutdown", "stale", "unreachable", "never_reported")
# Agent samples never take a name another collector of the registry exports (a second family
# of the same name makes the whole exposition invalid): the alert engine's, and
# prometheus-client's process_* (and python_*) series.
RESERVED_PREFIXES = ("process_", "python_")
GENERIC_HELP = "Reported by agents; not in the catalogue."
# The seq bookkeeping of a host's agent, in the order of the snapshot's track tuples.
TRACK = (
    "outpost_agent_last_seq",
    "outpost_agent_lost_messages_total",
    "outpost_agent_dropped_messages_total",
    "outpost_agent_duplicate_messages_total",
)
PROBE_PREFIX = "outpost_probe_"  # the samples site coverage reads (collector/coverage.py)
# Agent sample names never exported: the collector's families and the alert engine's, with
# and without ``_total``.
_TAKEN = set(COLLECTOR_FAMILIES) | set(ALERTING_FAMILIES)
BLOCKED = frozenset({m[:-6] if m.endswith("_total") else m for m in _TAKEN} | _TAKEN)
ExportedSample = tuple[str, dict[str, str], float]  # (name, labels, value) of one exported sample


def _family(name: str, kind: str) -> Metric:
    """A family for a sample name; counters are named without ``_total``."""
    base = name[:-6] if kind == "counter" and name.endswith("_total") else name
    return Metric(base, CATALOGUE.get(name, GENERIC_HELP), kind)


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
        self._cache: dict[tuple[str, str], _HostCache] = {}
        self._render_lock = threading.Lock()
        self._failed: set[tuple[str, str]] = set()
        # One object per distinct shape, so that hosts alike are seen to be by identity.
        self._shapes: dict[_Shape, _Shape] = {}
        self._shapes_limit = 64

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
        fam: dict[str, Metric] = {
            name: Metric(name if kind != "counter" else name[:-6], CATALOGUE[name], kind)
            for name, kind in COLLECTOR_FAMILIES.items()
        }
        for name, labels, value in self._collector_series(meta):
            fam[name].add_sample(name, labels, value)
        yield from fam.values()
        agent: dict[str, Metric] = {}
        for name, labels, value, base, kind in self._agent_series(meta["hosts"], None):
            metric = agent.get(base)
            if metric is None:
                metric = agent[base] = _family(name, kind)
            metric.add_sample(name, labels, value)
        yield from agent.values()

    def series(self, names: Collection[str] | None = None) -> Iterator[ExportedSample]:
        """``(name, labels, value)`` of every series ``collect()`` gives (those named in
        ``names`` only, when given), without building families: what the alert rules read.
        Filtering here spares the work for the bulk of a county's agent samples, which no
        rule reads."""
        now = self.clock()
        _views, meta = self._snapshot(now)
        yield from self._collector_series(meta, names)
        for name, labels, value, _base, _kind in self._agent_series(meta["hosts"], names):
            yield name, labels, value

    def _collector_series(
        self, meta: dict[str, Any], names: Collection[str] | None = None
    ) -> Iterator[ExportedSample]:
        """The collector's own families' samples, family by family as in the catalogue (of
        the families in ``names`` only, when given)."""
        hosts: list[tuple[HostView, list[Any], dict[tuple[str, str], int], float]] = meta["hosts"]
        out: dict[str, list[ExportedSample]] = {name: [] for name in COLLECTOR_FAMILIES}
        unread: list[ExportedSample] = []  # where the samples of families not in names go
        if names is not None:
            out = {name: (found if name in names else unread) for name, found in out.items()}

        def add(name: str, labels: dict[str, str], value: float) -> None:
            out[name].append((name, labels, value))

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
        for items in out.values():
            if items is not unread:
                yield from items

    # --- exposition text ----------------------------------------------------------------------

    def render(self) -> bytes:
        """The fleet's families as exposition text: the same series, help texts and order as
        ``generate_latest`` of a registry holding only this collector."""
        now = self.clock()
        _views, meta = self._snapshot(now)
        with self._render_lock:
            # The render makes no reference cycles, and a collection of the whole heap (some
            # 0.1 s for a county's samples) that ingest's allocations have made due would
            # otherwise land here: it is left to the next allocation after the render.
            enabled = gc.isenabled()
            gc.disable()
            try:
                return self._render(meta)
            finally:
                if enabled:
                    gc.enable()

    def cache_entries(self) -> tuple[int, int]:
        """Hosts and series the render cache holds escaped label text for."""
        with self._render_lock:
            return len(self._cache), sum(len(c.prefixes) for c in self._cache.values())

    def _render(self, meta: dict[str, Any]) -> bytes:
        hosts: list[tuple[HostView, list[Any], dict[tuple[str, str], int], float]] = meta["hosts"]
        out = {
            name: _Out(header(name, kind, CATALOGUE[name]), kind)
            for name, kind in COLLECTOR_FAMILIES.items()
        }
        agent: dict[str, _Out] = {}
        cache = self._cache
        fresh: dict[tuple[str, str], _HostCache] = {}
        shapes = self._shapes
        seg = _Segment(agent)
        # What site coverage reads of each host: only outpost_probe_* samples matter to it.
        covered: list[tuple[HostView, list[Any]]] = []
        for view, samples, events, last_seen in hosts:
            key = (view.site, view.host)
            c = cache.get(key)
            if c is None:
                c = _HostCache(view.site, view.host)
            fresh[key] = c
            covered.append((view, samples))
            try:
                _render_host(c, view, samples, events, last_seen, meta, out)
                if not view.up or not samples:
                    continue
                if not c.matches(samples):
                    c.plan(view.site, view.host, samples, shapes)
                values = list(map(float, map(_VALUE, samples)))
            except Exception:
                # One host's bad data never takes the page down: it loses its series.
                fresh.pop(key, None)
                if key not in self._failed and len(self._failed) < 1000:
                    self._failed.add(key)
                    log.exception("could not render the series of %s/%s", *key)
                continue
            seg.add(c, values)
            if not c.probes:
                covered[-1] = (view, [])
        seg.flush()
        self._cache = fresh
        if len(shapes) > self._shapes_limit:  # forget the shapes no host has any more
            self._shapes = {c.shape: c.shape for c in fresh.values()}
            self._shapes_limit = 2 * len(self._shapes) + 64
        site_lines(covered, meta, out)

        def put(name: str, labels: dict[str, str], value: float) -> None:
            out[name].lines.append(sample_prefix(name, labels) + go_float(float(value)))

        for (site, host), count in sorted(meta["rate_limited"].items()):
            labels = {"site": site, "host": host}
            put("outpost_agent_rate_limited_messages_total", labels, count)
        for (site, host, reason), count in sorted(meta["refused"].items()):
            labels = {"site": site, "host": host, "reason": reason}
            put("outpost_host_samples_refused_total", labels, count)
        messages = {**dict.fromkeys(ALL_RESULTS, 0), **meta["messages"]}
        for result, count in sorted(messages.items()):
            put("outpost_collector_messages_total", {"result": result}, count)
        for reason, count in sorted(meta["invalid"].items()):
            put("outpost_collector_invalid_messages_total", {"reason": reason}, count)
        put("outpost_collector_lost_messages_total", {}, meta["lost"])
        put("outpost_collector_dropped_messages_total", {}, meta["dropped"])
        put("outpost_collector_hosts", {}, len(hosts))
        put("outpost_collector_build_info", {"version": __version__}, 1.0)
        for name, value in self.extra().items():
            put(name, {}, value)
        # Encoded family by family: one non-ASCII label widens one family's text, not the page.
        return b"".join(
            o.text().encode("utf-8", "replace") for o in (*out.values(), *agent.values())
        )

    def _agent_series(
        self, hosts: list[tuple[HostView, list[Any], Any, float]], names: Collection[str] | None
    ) -> Iterator[tuple[str, dict[str, str], float, str, str]]:
        """Every online host's latest samples, with site and host added, as ``(name, labels,
        value, family base name, type)``. A name that collides with a collector family (ours,
        the alert engine's, process_* or python_*), a sample whose family (by base name) is of
        another type, or a series reported twice, is skipped. With ``names``, only those names
        are given, and they are skipped exactly as without it."""
        kinds: dict[str, str] = {}  # a family's type: its first sample's
        # Per name: (base, type, given), or None for a name never exported or (with names)
        # of a family none of the names belongs to, which need not be looked at again.
        verdicts: dict[str, tuple[str, str, bool] | None] = {}
        bases = None if names is None else {_base(n) for n in names}
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        for view, samples, _events, _last in hosts:
            if not view.up:
                continue
            site, host = view.site, view.host
            for s in samples:
                name = s.name
                verdict = verdicts.get(name, _UNSEEN)
                if verdict is _UNSEEN:
                    verdict = verdicts[name] = _agent_family(name, names, bases)
                if verdict is None:
                    continue
                base, kind, given = verdict
                if kinds.setdefault(base, kind) != kind or not given:
                    continue
                labels = {"site": site, "host": host, **s.labels}
                key = (name, tuple(sorted(labels.items())))
                if key in seen:
                    continue
                seen.add(key)
                yield name, labels, s.value, base, kind


_UNSEEN: Any = object()


def _base(name: str) -> str:
    return name[:-6] if name.endswith("_total") else name


def _agent_family(
    name: str, names: Collection[str] | None, bases: set[str] | None
) -> tuple[str, str, bool] | None:
    """(family base name, type, whether the name is given) of an agent sample's name; None
    for a name never exported, or one whose family no given name belongs to."""
    base = _base(name)
    if base in BLOCKED or name in BLOCKED or name.startswith(RESERVED_PREFIXES):
        return None
    if bases is not None and base not in bases:
        return None
    return base, "counter" if name.endswith("_total") else "gauge", names is None or name in names


# --- the exposition renderer ------------------------------------------------------------------

_INF = float("inf")
_NAME = attrgetter("name")
_LABELS = attrgetter("labels")
_VALUE = attrgetter("value")
_encode = msgspec.json.Encoder().encode


def go_float(d: float) -> str:
    """A sample value as prometheus-client writes it (``floatToGoString``): ``NaN``, ``+Inf``,
    ``-Inf``, Python's repr otherwise, with Go's exponent form from 1e6 up."""
    if -_INF < d < 1e6:
        return repr(d)
    if 1e6 <= d < 1e16:  # repr is positional here; from 1e16 up it has the exponent form
        whole, _, frac = repr(d).partition(".")
        digits = (whole + frac).rstrip("0")
        exp = _EXP[len(whole)]
        return f"{digits[0]}.{digits[1:]}{exp}" if len(digits) > 1 else digits + exp
    if d == _INF:
        return "+Inf"
    if d == -_INF:
        return "-Inf"
    if d != d:
        return "NaN"
    return repr(d)


_EXP = {n: f"e+{n - 1:02d}" for n in range(7, 18)}


def escape_value(value: str) -> str:
    """A label value for the text format. A lone surrogate (which UTF-8 cannot carry) becomes
    its ``\\udcXX`` spelling, so one bad value never makes the page unencodable."""
    if not value.isascii():
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def label_text(labels: dict[str, str]) -> str:
    """``{k="v",...}`` with the names sorted, as prometheus-client writes them ("" for none)."""
    if not labels:
        return ""
    inner = ",".join(
        f'{escape_label_name(k, UNDERSCORES)}="{escape_value(v)}"'
        for k, v in sorted(labels.items())
    )
    return "{" + inner + "}"


def sample_prefix(name: str, labels: dict[str, str]) -> str:
    """A sample line up to and with the space before its value."""
    return f"{escape_metric_name(name, UNDERSCORES)}{label_text(labels)} "


def header(name: str, kind: str, help_text: str) -> str:
    """The HELP and TYPE lines of a family (``name`` as its samples are named)."""
    shown = escape_metric_name(name, UNDERSCORES)
    doc = help_text.replace("\\", "\\\\").replace("\n", "\\n")
    return f"# HELP {shown} {doc}\n# TYPE {shown} {kind}\n"


class _Run(NamedTuple):
    """The kept samples of one host that belong to one family (by base name and type)."""

    base: str
    kind: str
    name: str  # the first sample's name: its family's HELP and TYPE name
    at: tuple[int, ...]  # where they are in the host's samples


class _Shape(NamedTuple):
    """How a host's samples fall into families: their count and the runs."""

    length: int
    runs: tuple[_Run, ...]


class _Segment:
    """Consecutive hosts of one shape, rendered together: their values formatted in one go,
    and each run's lines taken for all of them by one strided slice, in host order."""

    def __init__(self, agent: dict[str, _Out]) -> None:
        self.agent = agent
        self.shape: _Shape | None = None
        self.hosts = 0
        self.prefixes: list[str] = []
        self.values: list[float] = []

    def add(self, c: _HostCache, values: list[float]) -> None:
        if c.shape is not self.shape:
            self.flush()
            self.shape = c.shape
        self.prefixes += c.prefixes
        self.values += values
        self.hosts += 1

    def flush(self) -> None:
        shape, m = self.shape, self.hosts
        if shape is None or not m:
            return
        prefixes, values = self.prefixes, list(map(go_float, self.values))
        self.prefixes, self.values, self.hosts = [], [], 0
        step = shape.length
        for run in shape.runs:
            fam = self.agent.get(run.base)
            if fam is None:
                head = header(run.name, run.kind, CATALOGUE.get(run.name, GENERIC_HELP))
                fam = self.agent[run.base] = _Out(head, run.kind)
            elif fam.kind != run.kind:
                continue  # the family is another type: skipped, as collect() does
            # Prefixes and values interleaved, host after host: no line is built on its own.
            k = len(run.at)
            taken = [""] * (2 * m * k)
            for j, i in enumerate(run.at):
                taken[2 * j :: 2 * k] = prefixes[i::step]
                taken[2 * j + 1 :: 2 * k] = values[i::step]
            fam.parts += taken


class _HostCache:
    """What the renderer keeps for one host between scrapes: escaped label text, never values."""

    __slots__ = (
        "events",
        "hl",
        "info",
        "key",
        "length",
        "prefixes",
        "probes",
        "shape",
        "states",
        "track",
    )

    def __init__(self, site: str, host: str) -> None:
        self.hl = label_text({"site": site, "host": host})
        self.states: dict[tuple[str, bool, bool], tuple[str, str, str]] = {}
        self.track: tuple[Any, list[str]] = ((), [])
        self.info: tuple[str, str, str] = ("", "", "")
        self.events: dict[tuple[str, str], tuple[str, str]] = {}
        self.key = b""
        self.length = -1
        self.prefixes: list[str] = []
        self.shape = _Shape(0, ())
        self.probes = True

    def plan(self, site: str, host: str, samples: list[Any], shapes: dict[_Shape, _Shape]) -> None:
        """Escape every series of ``samples`` once, and note the families they fall in. A name
        that collides with a collector family, a label naming site or host (refused at
        ingest), or a series the host reports twice is left out."""
        self.key = series_key(samples)
        self.length = len(samples)
        self.prefixes = []
        runs: dict[tuple[str, str], _Run] = {}  # in the order the families first appear
        seen: set[str] = set()
        for i, s in enumerate(samples):
            name = s.name
            kind = "counter" if name.endswith("_total") else "gauge"
            base = name[:-6] if kind == "counter" else name
            prefix = ""
            if not (
                base in BLOCKED
                or name in BLOCKED
                or name.startswith(RESERVED_PREFIXES)
                or "site" in s.labels
                or "host" in s.labels
            ):
                prefix = "\n" + sample_prefix(name, {"site": site, "host": host, **s.labels})
                if prefix in seen:
                    prefix = ""
                seen.add(prefix)
            self.prefixes.append(prefix)
            if not prefix:
                continue
            run = runs.get((base, kind))
            runs[(base, kind)] = (
                run._replace(at=(*run.at, i)) if run else _Run(base, kind, name, (i,))
            )
        self.probes = any(s.name.startswith(PROBE_PREFIX) for s in samples)
        shape = _Shape(len(samples), tuple(runs.values()))
        self.shape = shapes.setdefault(shape, shape)  # hosts alike share one: see _Segment

    def matches(self, samples: list[Any]) -> bool:
        """True when ``samples`` are the series planned, in the same order."""
        return len(samples) == self.length and bool(self.key) and series_key(samples) == self.key


def series_key(samples: list[Any]) -> bytes:
    """The names and label sets of ``samples``, in order, as one string of bytes: equal keys
    are equal series (JSON of strings is unambiguous), and comparing two costs one memcmp.
    Kept instead of the label dicts themselves, which would keep an older batch's alive."""
    try:
        return _encode((list(map(_NAME, samples)), list(map(_LABELS, samples))))
    except Exception:
        return b""  # never a key of a plan: such a host is planned at every scrape


class _Out:
    """One family of the page being rendered."""

    __slots__ = ("head", "kind", "lines", "parts")

    def __init__(self, head: str, kind: str) -> None:
        self.head = head
        self.kind = kind
        self.lines: list[str] = []  # whole lines
        self.parts: list[str] = []  # "\n" + a line up to its value, the value, and again

    def text(self) -> str:
        if self.parts:
            return self.head[:-1] + "".join(self.parts) + "\n"
        if self.lines:
            return self.head + "\n".join(self.lines) + "\n"
        return self.head


def _render_host(
    c: _HostCache,
    view: HostView,
    samples: list[Any],
    events: dict[tuple[str, str], int],
    last_seen: float,
    meta: dict[str, Any],
    out: dict[str, _Out],
) -> None:
    """The series the collector derives for one host, into the families of ``out``."""
    hl = c.hl
    lines = c.states.get((view.state, view.up, view.expected))
    if lines is None:
        labels = {"site": view.site, "host": view.host}
        lines = c.states[(view.state, view.up, view.expected)] = (
            "outpost_host_up" + hl + (" 1.0" if view.up else " 0.0"),
            "outpost_host_expected" + hl + (" 1.0" if view.expected else " 0.0"),
            "\n".join(
                sample_prefix("outpost_host_state", {**labels, "state": st})
                + ("1.0" if st == view.state else "0.0")
                for st in HOST_STATES
            ),
        )
    out["outpost_host_up"].lines.append(lines[0])
    out["outpost_host_expected"].lines.append(lines[1])
    out["outpost_host_state"].lines.append(lines[2])
    hs = view.host_state
    if hs is None:
        return
    out["outpost_host_last_seen_timestamp_seconds"].lines.append(
        "outpost_host_last_seen_timestamp_seconds" + hl + " " + go_float(last_seen)
    )
    skew = meta["skews"].get((view.site, view.host))
    if skew is not None:
        out["outpost_host_clock_skew_seconds"].lines.append(
            "outpost_host_clock_skew_seconds" + hl + " " + go_float(skew)
        )
    agent_id, boot_id, info = c.info
    if not info or agent_id != hs.agent_id or boot_id != hs.boot_id:
        labels = {"site": view.site, "host": view.host, "agent_id": hs.agent_id}
        labels["boot_id"] = hs.boot_id
        info = sample_prefix("outpost_host_info", labels) + "1.0"
        c.info = (hs.agent_id, hs.boot_id, info)
    out["outpost_host_info"].lines.append(info)
    track = meta["tracks"].get((view.site, view.host, hs.agent_id))
    if track is not None:
        if c.track[0] != track:
            pairs = zip(TRACK, track, strict=True)
            c.track = (track, [n + hl + " " + go_float(float(v)) for n, v in pairs])
        for name, line in zip(TRACK, c.track[1], strict=True):
            out[name].lines.append(line)
    for ks, count in sorted(events.items()):
        prefixes = c.events.get(ks)
        if prefixes is None:
            labels = {"site": view.site, "host": view.host, "kind": ks[0], "severity": ks[1]}
            prefixes = c.events[ks] = (
                sample_prefix("outpost_host_events_total", labels),
                sample_prefix("outpost_security_events_total", labels)
                if is_security(ks[0])
                else "",
            )
        value = go_float(float(count))
        out["outpost_host_events_total"].lines.append(prefixes[0] + value)
        if prefixes[1]:
            out["outpost_security_events_total"].lines.append(prefixes[1] + value)


def site_lines(
    hosts: list[tuple[HostView, list[Any]]], meta: dict[str, Any], out: dict[str, _Out]
) -> None:
    """The per-site families: coverage, outages and the inventory's site info."""

    def put(name: str, labels: dict[str, str], value: float) -> None:
        out[name].lines.append(sample_prefix(name, labels) + go_float(float(value)))

    for cov in site_coverage(hosts, (site.id for site in meta["sites"])):
        sl = {"site": cov.site}
        put("outpost_site_reachable", sl, 1.0 if cov.state in ("reachable", "degraded") else 0.0)
        for st in COVERAGE_STATES:
            put("outpost_site_coverage", {**sl, "state": st}, 1.0 if st == cov.state else 0.0)
        put("outpost_site_hosts", sl, cov.hosts)
        put("outpost_site_hosts_up", sl, cov.hosts_up)
        put("outpost_site_uplink_probes", sl, cov.uplink_probes)
        put("outpost_site_uplink_probes_ok", sl, cov.uplink_probes_ok)
        if cov.uplink_latency is not None:
            put("outpost_site_uplink_latency_seconds", sl, cov.uplink_latency)
        if cov.uplink_loss is not None:
            put("outpost_site_uplink_loss_ratio", sl, cov.uplink_loss)
    for site_id, per_site in sorted(meta["outages"].items()):
        for kind in OUTAGE_KINDS:
            ol = {"site": site_id, "kind": kind}
            put("outpost_site_outages_total", ol, per_site.count.get(kind, 0))
            put("outpost_site_outage_seconds_total", ol, per_site.seconds.get(kind, 0.0))
    for site in meta["sites"]:
        labels = {
            "site": site.id,
            "name": site.name,
            "county": site.county,
            "township": site.township,
            "latitude": "" if site.latitude is None else str(site.latitude),
            "longitude": "" if site.longitude is None else str(site.longitude),
        }
        put("outpost_site_info", labels, 1.0)


# Smaller pages are not worth compressing; level 1 costs a fraction of the render and still
# shrinks the text about tenfold (it repeats label text on every line).
GZIP_MIN_BYTES = 1024
GZIP_LEVEL = 1


def accepts_gzip(accept_encoding: str | None) -> bool:
    """True when an ``Accept-Encoding`` header lists gzip (or ``*``) without ``q=0``."""
    for part in (accept_encoding or "").split(","):
        coding, *params = (p.strip() for p in part.split(";"))
        if coding.lower() not in ("gzip", "x-gzip", "*"):
            continue
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


def metrics_body(
    fleet: FleetCollector, registry: Collector, accept_encoding: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """What /metrics answers: the fleet's families, then the registry's (the collector's own
    metrics), gzipped when the client asks for it; with the headers to send."""
    body = fleet.render() + generate_latest(registry)
    headers = {"Content-Type": CONTENT_TYPE_LATEST}
    if len(body) >= GZIP_MIN_BYTES and accepts_gzip(accept_encoding):
        body = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
        headers["Content-Encoding"] = "gzip"
        headers["Vary"] = "Accept-Encoding"
    return body, headers

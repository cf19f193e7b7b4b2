"""Rendering /metrics for a county-sized fleet: the collector's renderer against a plain join.

Builds a fleet of ``--hosts`` online hosts (default 10,000), each reporting 36 samples through
the real ingest path, so that with the 15 series the collector derives for every host (up,
expected, six states, last seen, clock skew, info, four seq counters) the page has 51 series
per host. Then, ``--runs`` times: every host sends a new batch (new values, new label dicts:
what happens between two scrapes), and the render is timed. Figures are medians.

    fleet_render   FleetCollector.render(): snapshot under the ingest lock, per-host cache
                   checked, values formatted, families grouped, bytes out
    anchor_join    the same series lines built from the same snapshot by one f-string each
                   (labels sorted, values by repr, nothing escaped, no cache, no grouping, no
                   HELP/TYPE), then "".join(...).encode(): what any renderer must at least do
    gzip_level1    compressing the page as /metrics does for ``Accept-Encoding: gzip``
    cache_kib      what the render cache holds (sys.getsizeof over its strings, keys, lists
                   and records)

Also timed, per run: what one alert evaluation reads (``alert_read``: the series the rules
name, through FleetCollector.series, indexed as the rules index them), against reading every
series through FleetCollector.collect() as evaluations once did (``alert_read_all``, with
``--old`` only: seconds at the default size).

``--old`` also times prometheus-client's generate_latest over FleetCollector.collect()
(one run: it takes seconds at the default size).

    python bench/exposition.py                # 10,000 hosts, 500,000 series
    python bench/exposition.py --hosts 2000   # 100,000 series
    python bench/exposition.py --smoke        # 200 hosts, 2 runs: a quick check
    python bench/exposition.py --json         # figures and table rows as JSON
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry, generate_latest

from bench.common import row, rss_mb
from collector.alerting.rules import Series, series_read
from collector.exporter import FleetCollector
from collector.ingest import Ingest
from collector.state import FleetState
from outpost import wire

NOW = 1_700_000_000.0
MODES = ("user", "system", "idle", "iowait", "irq", "softirq", "steal", "nice")
TRACK_NAMES = (
    "outpost_agent_last_seq",
    "outpost_agent_lost_messages_total",
    "outpost_agent_dropped_messages_total",
    "outpost_agent_duplicate_messages_total",
)


def host_samples(i: int, cycle: int) -> list[wire.Sample]:
    """36 samples of a typical host; values move with ``cycle``, bytes counters are large."""
    S = wire.Sample
    c = cycle * 15.0
    out = [S("outpost_cpu_seconds_total", 1000.5 * (k + 1) + c + i, {"mode": m})
           for k, m in enumerate(MODES)]  # fmt: skip
    out += [S(f"outpost_load{n}", 0.01 * ((i + cycle + n) % 400)) for n in (1, 5, 15)]
    out += [
        S("outpost_memory_total_bytes", 8_589_934_592.0),
        S("outpost_memory_available_bytes", 4e9 + i * 4096 + c),
        S("outpost_memory_used_bytes", 3e9 + i * 8192 + c),
    ]
    for mount in ("/", "/var"):
        fs = {"mountpoint": mount, "fstype": "ext4"}
        out += [
            S("outpost_filesystem_size_bytes", 5e11, dict(fs)),
            S("outpost_filesystem_free_bytes", 2e11 + i, dict(fs)),
            S("outpost_filesystem_avail_bytes", 1.9e11 + i, dict(fs)),
        ]
    for iface in ("eth0", "wlan0"):
        for what in ("receive", "transmit"):
            out.append(S(f"outpost_network_{what}_bytes_total", 1e9 + i * 1000 + c * 7,
                         {"interface": iface}))  # fmt: skip
            out.append(S(f"outpost_network_{what}_packets_total", 1e6 + i + c,
                         {"interface": iface}))  # fmt: skip
        out.append(S("outpost_network_up", 1.0, {"interface": iface}))
    out.append(S("outpost_disk_read_bytes_total", 3e10 + i + c, {"device": "sda"}))
    out.append(S("outpost_disk_written_bytes_total", 5e10 + i + c, {"device": "sda"}))
    for source in ("system", "probes"):
        out.append(S("outpost_agent_source_success", 1.0, {"source": source}))
        out.append(S("outpost_agent_source_duration_seconds", 0.0123 + i * 1e-6,
                     {"source": source}))  # fmt: skip
    return out


def site_host(i: int) -> tuple[str, str]:
    return f"site-{i // 20:04d}", f"host-{i:05d}"


def feed(ingest: Ingest, hosts: int, cycle: int) -> None:
    """One batch from every host, through Ingest.handle as from MQTT."""
    for i in range(hosts):
        site, host = site_host(i)
        batch = wire.Batch(v=1, site=site, host=host, agent_id=f"agent-{i:05d}", boot_id="boot",
                           seq=cycle + 1, ts=int((NOW + cycle) * 1000), interval=15.0,
                           samples=host_samples(i, cycle))  # fmt: skip
        topic = f"outpost/v1/{site}/{host}/metrics"
        result = ingest.handle(topic, wire.encode(batch), NOW + cycle)
        if result != "accepted":
            raise SystemExit(f"{site}/{host}: batch {cycle} was {result}")


def anchor(fleet: FleetCollector, now: float) -> bytes:
    """The same series lines, each one f-string from the snapshot, joined."""
    _views, meta = fleet._snapshot(now)
    lines = []
    for view, samples, _events, last_seen in meta["hosts"]:
        hs = view.host_state
        site, host = view.site, view.host
        hl = f'host="{host}",site="{site}"'
        lines.append(f"outpost_host_up{{{hl}}} {float(view.up)!r}\n")
        lines.append(f"outpost_host_expected{{{hl}}} {float(view.expected)!r}\n")
        for st in ("online", "lost", "shutdown", "stale", "unreachable", "never_reported"):
            lines.append(f'outpost_host_state{{{hl},state="{st}"}} {float(st == view.state)!r}\n')
        if hs is None:
            continue
        lines.append(f"outpost_host_last_seen_timestamp_seconds{{{hl}}} {last_seen!r}\n")
        lines.append(f"outpost_host_clock_skew_seconds{{{hl}}} {hs.clock_skew!r}\n")
        lines.append(f'outpost_host_info{{agent_id="{hs.agent_id}",boot_id="{hs.boot_id}",{hl}}}'
                     " 1.0\n")  # fmt: skip
        track = meta["tracks"].get((site, host, hs.agent_id))
        if track is not None:
            for name, value in zip(TRACK_NAMES, track, strict=True):
                lines.append(f"{name}{{{hl}}} {float(value)!r}\n")
        if not view.up:
            continue
        for s in samples:
            pairs = sorted({**s.labels, "host": host, "site": site}.items())
            labels = ",".join(f'{k}="{v}"' for k, v in pairs)
            lines.append(f"{s.name}{{{labels}}} {s.value!r}\n")
    return "".join(lines).encode()


def deep(obj: Any) -> int:
    """getsizeof of a container and of the strings and tuples right inside it."""
    items = obj.values() if isinstance(obj, dict) else obj
    return sys.getsizeof(obj) + sum(sys.getsizeof(x) for x in items)


def cache_bytes(fleet: FleetCollector) -> int:
    """sys.getsizeof over what the render cache holds."""
    size = sys.getsizeof(fleet._cache)
    shapes = {id(c.shape): c.shape for c in fleet._cache.values()}  # shared by hosts alike
    for shape in shapes.values():
        size += sys.getsizeof(shape) + sys.getsizeof(shape.runs)
        size += sum(sys.getsizeof(r) for r in shape.runs)
    for key, c in fleet._cache.items():
        size += sys.getsizeof(key) + sys.getsizeof(c) + sys.getsizeof(c.hl)
        size += sys.getsizeof(c.key) + sys.getsizeof(c.prefixes)
        size += sum(sys.getsizeof(p) for p in c.prefixes)
        size += sys.getsizeof(c.states) + sum(deep(v) for v in c.states.values())
        size += sys.getsizeof(c.info) + sys.getsizeof(c.info[2])
        size += deep(c.track) + deep(c.track[1]) + deep(c.events)
    return size


def timed(fn: Any) -> tuple[float, Any]:
    """Seconds ``fn`` takes, with the garbage collector off (the render turns it off too)."""
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        result = fn()
        return time.perf_counter() - t0, result
    finally:
        gc.enable()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--hosts", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--old", action="store_true", help="also time generate_latest (one run)")
    ap.add_argument("--smoke", action="store_true", help="200 hosts, 2 runs")
    ap.add_argument("--json", action="store_true", help="print the figures and rows as JSON")
    args = ap.parse_args()
    if args.smoke:
        args.hosts, args.runs = 200, 2
    wanted = series_read([])
    limits = wire.Limits(sender_rate_per_second=0)
    ingest = Ingest(FleetState(stale_after=3600), limits)
    clock = [NOW]
    fleet = FleetCollector(ingest, clock=lambda: clock[0])
    feed(ingest, args.hosts, 0)
    rss_before = rss_mb_self()
    cold, page = timed(fleet.render)
    rss_after = rss_mb_self()
    ours, anchors, zips, reads = [], [], [], []
    for cycle in range(1, args.runs + 1):
        feed(ingest, args.hosts, cycle)  # new values and label dicts, as between two scrapes
        clock[0] = NOW + cycle
        t, page = timed(fleet.render)
        ours.append(t)
        t, plain = timed(lambda: anchor(fleet, clock[0]))
        anchors.append(t)
        t, _z = timed(lambda: gzip.compress(page, compresslevel=1, mtime=0))  # noqa: B023
        zips.append(t)
        # Only its size is kept: the index would weigh on the runs after it.
        t, read = timed(lambda: len(Series(fleet.series(wanted))))
        reads.append(t)
    series = sum(1 for line in page.split(b"\n") if line and not line.startswith(b"#"))
    figures: dict[str, Any] = {
        "hosts": args.hosts,
        "series": series,
        "page_bytes": len(page),
        "anchor_lines": plain.count(b"\n"),
        "runs": args.runs,
        "fleet_render_cold_s": round(cold, 4),
        "fleet_render_s": round(statistics.median(ours), 4),
        "anchor_join_s": round(statistics.median(anchors), 4),
        "ratio_render_to_anchor": round(statistics.median(ours) / statistics.median(anchors), 3),
        "gzip_level1_s": round(statistics.median(zips), 4),
        "cache_kib": round(cache_bytes(fleet) / 1024, 1),
        "alert_read_s": round(statistics.median(reads), 4),
        "alert_read_series": read,
        "rss_growth_first_render_mib": round(rss_after - rss_before, 1),
    }
    if args.old:
        registry = CollectorRegistry()
        registry.register(fleet)
        t, old = timed(lambda: generate_latest(registry))
        figures["old_generate_latest_s"] = round(t, 4)
        figures["old_equals_render"] = old == fleet.render()
        t, _all = timed(lambda: Series((s.name, s.labels, s.value) for f in fleet.collect()
                                       for s in f.samples))  # fmt: skip
        figures["alert_read_all_s"] = round(t, 4)
    render, join = statistics.median(ours), statistics.median(anchors)
    full = args.hosts >= 10_000
    met = (render < 0.5 and render <= 1.5 * join) if full else None
    figures["rows"] = [
        row(
            f"/metrics render, {series:,} series",
            render,
            "s",
            anchor_name="plain string join",
            anchor=join,
            target="< 0.5 s and ≤ 1.5 × join",
            met=met,
        )
    ]
    if args.old:
        figures["rows"].append(
            row(
                f"alert evaluation read, {read:,} of {series:,} series",
                statistics.median(reads),
                "s",
                anchor_name="every series via collect()",
                anchor=figures["alert_read_all_s"],
                target="report",
                met=None,
            )
        )
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for key, value in figures.items():
        if key != "rows":
            print(f"{key:<32} {value}")


def rss_mb_self() -> float:
    gc.collect()
    return rss_mb(os.getpid())


if __name__ == "__main__":
    main()

"""Two collectors on one broker, each owning half of the sites: every agent is settled by the
collector of its site and is unknown to the other; no state is shared."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import Agent, Collector, Mosquitto, Procs, wait_for

pytestmark = pytest.mark.integration

SHARDS = {"county-a": ["town-a", "town-b"], "county-b": ["town-c"]}


def _settled(collector: Collector, key: tuple[str, str], at_least: int) -> dict | None:
    h = collector.hosts().get(key)
    if not h or h["last_seq"] is None or h["last_seq"] < at_least:
        return None
    return h if h["settled_upto"] == h["last_seq"] else None


def test_two_shards_split_the_fleet(procs: Procs, broker: Mosquitto, tmp_path: Path) -> None:
    collectors = {}
    for name, sites in SHARDS.items():
        root = tmp_path / name
        root.mkdir()
        sites_yaml = root / "sites.yaml"
        sites_yaml.write_text(
            "sites:\n" + "".join(f"  - id: {s}\n    hosts: [srv1]\n" for s in sites)
        )
        conf = root / "collector.yaml"
        conf.write_text(
            f"sites_file: {sites_yaml}\nshard:\n  name: {name}\n  sites: [{', '.join(sites)}]\n"
        )
        collectors[name] = Collector(procs, broker, root, "--config", str(conf)).start()
    for sites in SHARDS.values():
        for site in sites:
            Agent(procs, broker, tmp_path, site, "srv1", 0.2).start()
    for name, sites in SHARDS.items():
        c = collectors[name]
        for site in sites:
            h = wait_for(
                f"{site} settled by {name}", lambda c=c, s=site: _settled(c, (s, "srv1"), 5), 30
            )
            assert h["lost"] == 0 and h["dropped"] == 0, h
        # Only its own sites: nothing of the other shard reported, or expected.
        assert {site for site, _ in c.hosts()} == set(sites)
        assert c.value("outpost_collector_lost_messages_total") == 0.0
    # Each shard has its own broker session: neither took the other's over (a shared client id
    # would make the broker drop one connection each time the other connects).
    for c in collectors.values():
        assert c.value("outpost_collector_broker_connects_total") == 1.0

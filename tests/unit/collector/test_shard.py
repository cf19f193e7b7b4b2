"""Sharding: a collector that owns some sites subscribes to, expects and alerts on those only."""

from __future__ import annotations

import msgspec
import pytest

from collector.config import CollectorConfig, ShardConfig
from collector.inventory import Inventory, Site
from collector.mqtt import Subscriber
from outpost.connection import BrokerConfig


def test_a_shard_subscribes_to_its_sites_only_with_a_session_of_its_own() -> None:
    every = Subscriber(BrokerConfig(client_id="outpost-collector"), lambda t, p: None)
    assert every.filters == [
        "outpost/v1/+/+/status", "outpost/v1/+/+/metrics", "outpost/v1/+/+/events",
    ]  # fmt: skip
    assert every.client_id == "outpost-collector"
    shard = ShardConfig(sites=["town-a", "town-b"])
    one = Subscriber(
        BrokerConfig(client_id="outpost-collector"), lambda t, p: None, shard.sites, shard.label
    )
    assert one.filters[:3] == [
        "outpost/v1/town-a/+/status", "outpost/v1/town-a/+/metrics", "outpost/v1/town-a/+/events",
    ]  # fmt: skip
    assert len(one.filters) == 6
    # Two shards never share a session; a client id set by hand is kept.
    other = ShardConfig(sites=["town-c"])
    assert shard.label != other.label and one.client_id == f"outpost-collector-{shard.label}"
    named = ShardConfig(name="county-b", sites=["town-c"])
    assert named.label == "county-b"
    own = Subscriber(BrokerConfig(client_id="mine"), lambda t, p: None, ["town-c"], "county-b")
    assert own.client_id == "mine"


def test_the_inventory_of_a_shard_is_its_sites() -> None:
    inv = Inventory([Site("town-a", hosts=["srv1"]), Site("town-b", hosts=["srv1"])])
    assert inv.only([]) is inv
    assert inv.only(["town-b"]).expected_hosts() == {("town-b", "srv1")}


@pytest.mark.parametrize(
    ("shard", "message"),
    [
        ({"name": "county-a"}, "owns no sites"),
        ({"sites": ["town-a", "town-a"]}, "listed twice"),
        ({"sites": ["Town A"]}, "shard.sites"),
    ],
)
def test_a_broken_shard_is_refused(shard: dict[str, object], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert({"shard": shard}, CollectorConfig)

"""The example configs in config/ load into their types, set every key, and keep the defaults,
so they cannot drift from the code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest

from agent.config import AgentConfig
from collector.config import CollectorConfig
from collector.inventory import Inventory
from outpost.config import load, load_yaml

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"

EXAMPLES: dict[str, type[msgspec.Struct]] = {
    "agent.yaml": AgentConfig,
    "collector.yaml": CollectorConfig,
    "sites.yaml": Inventory,
}


def _type_paths(t: mi.Type, prefix: str = "") -> set[str]:
    """Every field of a Struct type as a dotted path, nested Structs included (``[]`` for the
    items of a list)."""
    if isinstance(t, mi.UnionType):
        return set().union(*(_type_paths(member, prefix) for member in t.types))
    if isinstance(t, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
        return _type_paths(t.item_type, f"{prefix}[]")
    if isinstance(t, mi.DictType):
        return _type_paths(t.value_type, f"{prefix}[*]")
    if isinstance(t, mi.StructType):
        paths: set[str] = set()
        for field in t.fields:
            path = f"{prefix}.{field.encode_name}" if prefix else field.encode_name
            paths.add(path)
            paths |= _type_paths(field.type, path)
        return paths
    return set()


def _data_paths(value: Any, prefix: str = "") -> set[str]:
    """The keys present in loaded YAML, as the same dotted paths."""
    if isinstance(value, dict):
        paths: set[str] = set()
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            paths.add(path)
            paths |= _data_paths(item, path)
        return paths
    if isinstance(value, list):
        return set().union(*(_data_paths(item, f"{prefix}[]") for item in value))
    return set()


def test_every_example_has_a_type() -> None:
    assert sorted(p.name for p in CONFIG_DIR.glob("*.yaml")) == sorted(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_validates(name: str) -> None:
    loaded = load(CONFIG_DIR / name, EXAMPLES[name])
    assert isinstance(loaded, EXAMPLES[name])


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_sets_every_key(name: str) -> None:
    wanted = _type_paths(mi.type_info(EXAMPLES[name]))
    present = _data_paths(load_yaml(CONFIG_DIR / name))
    assert not wanted - present, f"config/{name} lacks {sorted(wanted - present)}"


def test_agent_example_shows_the_defaults() -> None:
    loaded = load(CONFIG_DIR / "agent.yaml", AgentConfig)
    assert loaded == AgentConfig(site=loaded.site, host=loaded.host)
    assert (loaded.site, loaded.host) == ("chengguan-town", "srv1")


def test_collector_example_shows_the_defaults() -> None:
    loaded = load(CONFIG_DIR / "collector.yaml", CollectorConfig)
    assert loaded.sites_file == "/etc/outpost/sites.yaml"
    assert loaded == CollectorConfig(sites_file=loaded.sites_file)


def test_sites_example_lists_sites_with_hosts() -> None:
    inventory = load(CONFIG_DIR / "sites.yaml", Inventory)
    assert len(inventory.sites) >= 2
    assert all(site.name and site.hosts for site in inventory.sites)
    assert len({site.id for site in inventory.sites}) == len(inventory.sites)

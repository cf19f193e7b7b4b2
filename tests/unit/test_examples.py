"""The example configs in config/ load into their types, set every key, and keep the defaults,
so they cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
import yaml

from agent.config import AgentConfig
from collector.config import CollectorConfig
from collector.inventory import Inventory
from outpost.config import load, load_yaml, validate

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"

EXAMPLES: dict[str, type[msgspec.Struct]] = {
    "agent.yaml": AgentConfig,
    "collector.yaml": CollectorConfig,
    "sites.yaml": Inventory,
}


# Lists that are empty by default, shown as a commented-out block right after their live
# ``key: []`` line: uncommented, the block must validate and counts for "sets every key".
COMMENTED_EXAMPLES: dict[str, list[str]] = {
    "agent.yaml": ["sources.probes.targets", "sources.snmp.devices"],
    "collector.yaml": [
        "shard.sites",
        "remote_write",
        "alerting.user_rules",
        "alerting.notifiers",
        "alerting.routing.routes",
        "alerting.routing.rotations",
        "alerting.routing.people",
        "alerting.maintenance",
    ],
    "sites.yaml": ["sites.2.contact.notify"],
}


def _with_commented_examples(name: str) -> dict[str, Any]:
    """The example's data with each commented-out block in place of its empty default."""
    data = load_yaml(CONFIG_DIR / name)
    lines = (CONFIG_DIR / name).read_text(encoding="utf-8").splitlines()
    for path in COMMENTED_EXAMPLES.get(name, []):
        key = path.rsplit(".", 1)[-1]
        start = next(i for i, line in enumerate(lines) if re.fullmatch(rf" *# {key}:", line))
        prefix = lines[start][: lines[start].index("#") + 1]
        block = []
        for line in lines[start:]:
            if not line.startswith(prefix):
                break
            block.append(line[len(prefix) + 1 :])
        _set(data, path, yaml.safe_load("\n".join(block))[key])
    return data


def _set(data: Any, dotted: str, value: Any) -> None:
    """``set_path`` that also walks list indexes (``sites.2.contact.notify``)."""
    *keys, last = dotted.split(".")
    for key in keys:
        data = data[int(key)] if isinstance(data, list) else data.setdefault(key, {})
    data[last] = value


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
    present = _data_paths(_with_commented_examples(name))
    assert not wanted - present, f"config/{name} lacks {sorted(wanted - present)}"


@pytest.mark.parametrize("name", sorted(COMMENTED_EXAMPLES))
def test_commented_examples_validate(name: str) -> None:
    loaded = validate(_with_commented_examples(name), EXAMPLES[name], name)
    for path in COMMENTED_EXAMPLES[name]:
        value: Any = loaded
        for key in path.split("."):
            value = value[int(key)] if key.isdigit() else getattr(value, key)
        assert value, f"config/{name}: the commented example of {path} is empty"


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


def test_alerting_examples_fit_together() -> None:
    """Uncommented, the routes, rotations, people and notifiers of collector.yaml and the
    site contacts of sites.yaml name only each other: the router accepts them."""
    from collector.alerting.routing import Router, SiteInfo
    from collector.alerting.schedule import Calendar

    cfg = validate(_with_commented_examples("collector.yaml"), CollectorConfig, "collector.yaml")
    inventory = load(CONFIG_DIR / "sites.yaml", Inventory)
    sites = {
        s.id: SiteInfo(s.id, s.county, s.timezone, s.staffing, s.contact) for s in inventory.sites
    }
    names = {n.name for n in cfg.alerting.notifiers}
    router = Router(cfg.alerting.routing, sites, Calendar(), names)
    assert router.routes_for("hongqi-village", "critical", {"host_down"}, 1_800_000_000.0)

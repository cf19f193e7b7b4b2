"""docs/metrics.md and the metric catalogue name the same series."""

from __future__ import annotations

import re
from pathlib import Path

from collector.catalogue import (
    AGENT_SAMPLES,
    ALERTING_FAMILIES,
    CATALOGUE,
    COLLECTOR_FAMILIES,
    REMOTE_WRITE_FAMILIES,
)

METRICS_MD = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
NAME = re.compile(r"outpost_[a-z0-9_]+")


def _mentioned() -> set[str]:
    return set(NAME.findall(METRICS_MD.read_text(encoding="utf-8")))


def test_catalogue_covers_every_family() -> None:
    families = set(COLLECTOR_FAMILIES) | set(ALERTING_FAMILIES) | set(REMOTE_WRITE_FAMILIES)
    assert set(CATALOGUE) == families | set(AGENT_SAMPLES)


def test_every_catalogued_series_is_documented() -> None:
    missing = set(CATALOGUE) - _mentioned()
    assert not missing, f"docs/metrics.md does not mention {sorted(missing)}"


def test_every_documented_series_is_catalogued() -> None:
    unknown = _mentioned() - set(CATALOGUE)
    assert not unknown, f"docs/metrics.md names series not in the catalogue: {sorted(unknown)}"


ALERTING_MD = METRICS_MD.parent / "alerting.md"


def _yaml_block_after(text: str, heading: str) -> str:
    start = text.index(heading)
    opening = text.index("```yaml\n", start) + len("```yaml\n")
    return text[opening : text.index("```", opening)]


def test_the_worked_alerting_example_loads_and_routes() -> None:
    """docs/alerting.md's county example is a config the collector accepts."""
    import yaml

    from collector.alerting.routing import Router, SiteInfo
    from collector.alerting.schedule import Calendar
    from collector.config import CollectorConfig
    from collector.inventory import Inventory
    from outpost.config import validate

    text = ALERTING_MD.read_text(encoding="utf-8")
    cfg = validate(yaml.safe_load(_yaml_block_after(text, "### collector.yaml")),
                   CollectorConfig, "alerting.md")  # fmt: skip
    inventory = validate(yaml.safe_load(_yaml_block_after(text, "### sites.yaml")), Inventory,
                         "alerting.md")  # fmt: skip
    sites = {s.id: SiteInfo(s.id, s.county, s.timezone, s.staffing, s.contact)
             for s in inventory.sites}  # fmt: skip
    notifiers = {n.name for n in cfg.alerting.notifiers}
    Router(cfg.alerting.routing, sites, Calendar(), notifiers)
    assert len(cfg.alerting.routing.routes) >= 2 and len(inventory.sites) >= 3

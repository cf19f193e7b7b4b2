"""docs/metrics.md and the metric catalogue name the same series."""

from __future__ import annotations

import re
from pathlib import Path

from collector.catalogue import AGENT_SAMPLES, ALERTING_FAMILIES, CATALOGUE, COLLECTOR_FAMILIES

METRICS_MD = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
NAME = re.compile(r"outpost_[a-z0-9_]+")


def _mentioned() -> set[str]:
    return set(NAME.findall(METRICS_MD.read_text(encoding="utf-8")))


def test_catalogue_covers_every_family() -> None:
    assert set(CATALOGUE) == set(COLLECTOR_FAMILIES) | set(ALERTING_FAMILIES) | set(AGENT_SAMPLES)


def test_every_catalogued_series_is_documented() -> None:
    missing = set(CATALOGUE) - _mentioned()
    assert not missing, f"docs/metrics.md does not mention {sorted(missing)}"


def test_every_documented_series_is_catalogued() -> None:
    unknown = _mentioned() - set(CATALOGUE)
    assert not unknown, f"docs/metrics.md names series not in the catalogue: {sorted(unknown)}"

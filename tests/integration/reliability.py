"""The figures of the fault, load and hostile-input campaign, kept for docs/reliability.md.

Each case writes one JSON file under ``build/reliability/`` (or ``$OUTPOST_RELIABILITY_DIR``):
what was sent, what arrived, how many duplicates the collector dropped and how many were lost,
so the table in docs/reliability.md is made from the last run (``scripts/reliability-table``).
A case is recorded only after its assertions passed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

__all__ = ["Counts", "record", "results_dir"]

REPO = Path(__file__).resolve().parents[2]


def results_dir() -> Path:
    return Path(os.environ.get("OUTPOST_RELIABILITY_DIR") or REPO / "build" / "reliability")


class Counts(dict[str, object]):
    """One case's figures (a dict, so it is stored as it is)."""


def record(
    case: str,
    *,
    sent: int,
    arrived: int,
    duplicates: int,
    lost: int,
    dropped: int = 0,
    note: str = "",
) -> Counts:
    """Store the figures of ``case`` (a short slug, e.g. ``link-outage-blackhole``)."""
    counts = Counts(
        case=case,
        sent=sent,
        arrived=arrived,
        duplicates=duplicates,
        lost=lost,
        dropped=dropped,
        note=note,
        at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{case}.json.tmp"
    tmp.write_text(json.dumps(counts, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    tmp.replace(out / f"{case}.json")
    return counts

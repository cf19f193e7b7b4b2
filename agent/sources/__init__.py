"""The source registry: config key -> factory, filled by explicit imports.

Adding a source is one module, one line here, its config block in agent/config.py and
config/agent.yaml, and its tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.sources.base import Collected, Source, SourceError
from agent.sources.probes import ProbesSource
from agent.sources.security import SecuritySource
from agent.sources.snmp import SnmpSource
from agent.sources.system import SystemSource

__all__ = ["REGISTRY", "Collected", "Source", "SourceError", "build_sources"]

REGISTRY: dict[str, Callable[[Any], Source]] = {
    "system": SystemSource,
    "probes": ProbesSource,
    "snmp": SnmpSource,
    "security": SecuritySource,
}


def build_sources(sources_config: Any) -> list[Source]:
    """Every registered source whose config block says ``enabled``."""
    built: list[Source] = []
    for key, factory in REGISTRY.items():
        block = getattr(sources_config, key)
        if getattr(block, "enabled", True):
            built.append(factory(block))
    return built

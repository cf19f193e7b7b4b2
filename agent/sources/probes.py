"""Network coverage probes (ICMP, TCP, DNS, HTTP) against many targets per cycle."""

from __future__ import annotations

import msgspec

from agent.sources.base import Collected

__all__ = ["ProbesConfig", "ProbesSource"]


class ProbesConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    enabled: bool = True


class ProbesSource:
    name = "probes"

    def __init__(self, config: ProbesConfig) -> None:
        self.config = config

    def collect(self, now: float) -> Collected:
        return Collected()

"""Network gear over SNMP, each device reported as its own host."""

from __future__ import annotations

import msgspec

from agent.sources.base import Collected

__all__ = ["SnmpConfig", "SnmpSource"]


class SnmpConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    enabled: bool = True


class SnmpSource:
    name = "snmp"

    def __init__(self, config: SnmpConfig) -> None:
        self.config = config

    def collect(self, now: float) -> Collected:
        return Collected()

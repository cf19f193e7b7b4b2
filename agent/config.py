"""The agent's configuration: one typed structure, checked before anything connects.

config/agent.yaml is the commented example of every key here.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from agent.sources.probes import ProbesConfig
from agent.sources.security import SecurityConfig
from agent.sources.snmp import SnmpConfig
from agent.sources.system import SystemConfig
from outpost.connection import BrokerConfig
from outpost.wire import SLUG_RE

__all__ = ["AgentConfig", "LogConfig", "OutboxConfig", "SourcesConfig"]

Slug = Annotated[str, msgspec.Meta(pattern=SLUG_RE.pattern)]


class OutboxConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    max_bytes: Annotated[int, msgspec.Meta(ge=65536)] = 64 * 1024 * 1024
    max_inflight: Annotated[int, msgspec.Meta(ge=1, le=10000)] = 500
    resend_after_seconds: Annotated[float, msgspec.Meta(ge=1)] = 60.0


class SourcesConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    system: SystemConfig = msgspec.field(default_factory=SystemConfig)
    probes: ProbesConfig = msgspec.field(default_factory=ProbesConfig)
    snmp: SnmpConfig = msgspec.field(default_factory=SnmpConfig)
    security: SecurityConfig = msgspec.field(default_factory=SecurityConfig)


class LogConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    level: Literal["debug", "info", "warning", "error"] = "warning"
    format: Literal["text", "json"] = "text"


class AgentConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    site: Slug
    host: Slug
    interval_seconds: Annotated[float, msgspec.Meta(ge=0.1, le=86400)] = 15.0
    state_dir: str = "/var/lib/outpost-agent"
    outage_report_min_seconds: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    broker: BrokerConfig = msgspec.field(default_factory=BrokerConfig)
    outbox: OutboxConfig = msgspec.field(default_factory=OutboxConfig)
    sources: SourcesConfig = msgspec.field(default_factory=SourcesConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        for device in self.sources.snmp.devices:
            if device.name == self.host:
                raise ValueError(
                    f"SNMP device {device.name!r} has the agent's own host name: devices are "
                    "reported as hosts of the site, so give it a name of its own"
                )

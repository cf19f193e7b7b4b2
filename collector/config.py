"""The collector's configuration: one typed structure, checked before anything connects.

config/collector.yaml is the commented example of every key here.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

import msgspec

from collector.alerting.config import AlertingConfig
from collector.remote_write import RemoteWriteConfig
from outpost.connection import BrokerConfig
from outpost.wire import SLUG_RE

__all__ = ["CollectorConfig", "EventsConfig", "LimitsConfig", "LogConfig", "ShardConfig"]

LISTEN_PATTERN = r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$"


def _collector_broker() -> BrokerConfig:
    return BrokerConfig(client_id="outpost-collector")


class LimitsConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    max_payload_bytes: Annotated[int, msgspec.Meta(ge=1024, le=16 * 1024 * 1024)] = 256 * 1024
    max_samples: Annotated[int, msgspec.Meta(ge=1)] = 5000
    max_events: Annotated[int, msgspec.Meta(ge=1)] = 500
    max_labels: Annotated[int, msgspec.Meta(ge=1, le=64)] = 16
    # Per sender (the site/host of the topic); docs/protocol.md, "Limits per sender".
    sender_rate_per_second: Annotated[float, msgspec.Meta(ge=0, le=1_000_000)] = 50.0
    sender_burst: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 2000
    max_devices_per_agent: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 256
    max_series_per_host: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 10_000
    max_seq_jump: Annotated[int, msgspec.Meta(ge=1000, le=2**62)] = 10_000_000


class ShardConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One collector of several on one broker: it owns these sites (their topics, hosts,
    alerts) and nothing else. Empty: every site."""

    name: Annotated[str, msgspec.Meta(pattern=SLUG_RE.pattern)] | None = None
    sites: list[Annotated[str, msgspec.Meta(pattern=SLUG_RE.pattern)]] = msgspec.field(
        default_factory=list
    )

    @property
    def label(self) -> str | None:
        """What tells this shard's MQTT session from the others': its name, else a digest of
        its sites (None: not a shard)."""
        if not self.sites:
            return None
        if self.name:
            return self.name
        return hashlib.sha256(",".join(sorted(self.sites)).encode()).hexdigest()[:10]

    def __post_init__(self) -> None:
        if self.name and not self.sites:
            raise ValueError(f"shard {self.name!r} owns no sites: list them in shard.sites")
        seen = set()
        for i, site in enumerate(self.sites):
            if site in seen:
                raise ValueError(f"sites[{i}]: {site!r} is listed twice")
            seen.add(site)


class EventsConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    keep_per_host: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 200


class LogConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    level: Literal["debug", "info", "warning", "error"] = "warning"
    format: Literal["text", "json"] = "text"


class CollectorConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    listen: Annotated[str, msgspec.Meta(pattern=LISTEN_PATTERN)] = "127.0.0.1:9468"
    state_dir: str = "/var/lib/outpost-collector"
    sites_file: str | None = None
    stale_after_seconds: Annotated[float, msgspec.Meta(ge=5)] = 60.0
    ack_interval_seconds: Annotated[float, msgspec.Meta(gt=0, le=10)] = 0.2
    broker: BrokerConfig = msgspec.field(default_factory=_collector_broker)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    shard: ShardConfig = msgspec.field(default_factory=ShardConfig)
    remote_write: RemoteWriteConfig | None = None
    events: EventsConfig = msgspec.field(default_factory=EventsConfig)
    alerting: AlertingConfig = msgspec.field(default_factory=AlertingConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)

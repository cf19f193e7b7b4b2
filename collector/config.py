"""The collector's configuration: one typed structure, checked before anything connects.

config/collector.yaml is the commented example of every key here.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from collector.alerting.config import AlertingConfig
from outpost.connection import BrokerConfig

__all__ = ["CollectorConfig", "EventsConfig", "LimitsConfig", "LogConfig"]

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
    events: EventsConfig = msgspec.field(default_factory=EventsConfig)
    alerting: AlertingConfig = msgspec.field(default_factory=AlertingConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)

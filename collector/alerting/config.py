"""The ``alerting`` block of collector.yaml: one typed structure, checked before anything runs.

config/collector.yaml shows every key; docs/alerting.md explains them with a worked example.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from collector.alerting.delivery import DeliveryConfig
from collector.alerting.dispatch import DispatchConfig
from collector.alerting.engine import EngineConfig, Maintenance
from collector.alerting.notifiers import NotifierConfig
from collector.alerting.routing import RoutingConfig
from collector.alerting.rules import RulesConfig, UserRule, check_user_rules

__all__ = ["AlertingConfig"]


class AlertingConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    enabled: bool = True
    engine: EngineConfig = msgspec.field(default_factory=EngineConfig)
    dispatch: DispatchConfig = msgspec.field(default_factory=DispatchConfig)
    delivery: DeliveryConfig = msgspec.field(default_factory=DeliveryConfig)
    rules: RulesConfig = msgspec.field(default_factory=RulesConfig)
    user_rules: list[UserRule] = msgspec.field(default_factory=list)
    notifiers: list[NotifierConfig] = msgspec.field(default_factory=list)
    routing: RoutingConfig = msgspec.field(default_factory=RoutingConfig)
    maintenance: list[Maintenance] = msgspec.field(default_factory=list)
    # The bearer token that write requests (ack, silence, test) must carry: its first line.
    # None: the write endpoints answer 403 (reading stays open on the listen address).
    api_token_file: str | None = None
    # The key that signs acknowledge links, and where they point (the collector's address
    # as the on-call person's phone reaches it). Both needed for links in messages.
    link_secret_file: str | None = None
    public_url: Annotated[str, msgspec.Meta(pattern=r"^(https?://[^\s?#]+)?$")] = ""
    link_valid_seconds: Annotated[float, msgspec.Meta(ge=60, le=30 * 86400)] = 86400.0
    # A directory of templates that replace the built-in ones (docs/alerting.md).
    templates_dir: str | None = None

    def __post_init__(self) -> None:
        check_user_rules(self.user_rules)
        names = [n.name for n in self.notifiers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"notifiers: the name {dupes[0]!r} is used more than once")

"""What alerting passes around: conditions from rules, alerts kept by the engine, and the
notifications the router makes of them. Plain data, no behaviour beyond naming keys."""

from __future__ import annotations

import hashlib
from typing import Literal, NamedTuple

import msgspec

__all__ = [
    "SEVERITIES",
    "Alert",
    "AlertState",
    "Condition",
    "Notification",
    "Severity",
    "alert_key",
]

Severity = Literal["info", "warning", "critical"]
SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")
AlertState = Literal["pending", "firing", "resolved"]


def alert_key(rule: str, labels: dict[str, str]) -> str:
    """A stable id for (rule, labels): 16 hex digits."""
    text = rule + "\0" + "\0".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


class Condition(NamedTuple):
    """What a rule says is wrong now. ``labels`` identify it (always ``site``, which may be
    empty for collector-wide rules; often ``host``); ``args`` feed the message templates.
    An ``instant`` condition comes from an event: it fires at once and resolves after a hold."""

    rule: str
    labels: dict[str, str]
    severity: str
    value: float | None = None
    args: dict[str, str] = {}  # noqa: RUF012  (never mutated)
    instant: bool = False


class Alert(msgspec.Struct, omit_defaults=True):
    """One alert as the engine keeps it (and stores it)."""

    key: str
    rule: str
    labels: dict[str, str]
    severity: str
    state: AlertState
    started: float  # first seen active (pending from then)
    last_active: float  # last evaluation that saw the condition
    fired_at: float | None = None
    resolved_at: float | None = None
    value: float | None = None
    args: dict[str, str] = {}
    instant: bool = False
    acked_by: str = ""
    acked_at: float | None = None
    ack_note: str = ""
    # Escalation: the routes that matched when it was first sent, the level last notified,
    # and when the next is due (None: no more levels).
    routes: list[str] = []
    level: int = -1
    next_level_at: float | None = None
    last_notified_at: float | None = None
    # Flapping: when it fired within the flap window; a flapping alert resolves only after
    # staying quiet for the whole window.
    fires: list[float] = []
    notified_firing: bool = False
    notified_resolved: bool = False
    suppressed_by: str = ""  # key of the alert that inhibits it, "" when none
    silenced_by: str = ""  # id of the silence that covers it, "" when none

    @property
    def site(self) -> str:
        return self.labels.get("site", "")

    @property
    def host(self) -> str:
        return self.labels.get("host", "")


class Notification(NamedTuple):
    """One message to one recipient about one group of alerts (same site and severity)."""

    notifier: str
    to: str
    locale: str  # "zh-CN" | "en"
    audience: str  # "it" | "contact"
    alerts: list[Alert]
    status: str  # "firing" | "resolved" | "test"
    ack_url: str
    route: str
    level: int

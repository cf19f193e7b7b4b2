"""Authentication records -> events: logins, sudo, su, account changes and SSH brute force.

``AuthEvents.feed`` takes the records parsed from one cycle's new log lines and returns their
events. Failed SSH logins are summed per source address per call into one ``ssh_login_failed``
(timed at the last of them); a source that fails ``threshold`` times within a fixed window of
``window_seconds`` raises one ``ssh_bruteforce`` instead (timed at the failure that reached the
threshold), and stays quiet until that window ends. Windows follow the times in the records
(``now`` for a record without one), so reading an old log late gives the same events as
reading it live. An "Invalid user" line and the "Failed password for invalid user" line after
it are two failures, as the spec counts them; sshd's "Failed none" probe is not one.

The state is the open windows (at most 10,000 sources; the oldest window is dropped first),
the newest record time seen and ``failures_total``. Everything here is pure: no clock, no I/O.
Parsing lines is ``authlog.py``; the event messages are written by the source.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from agent.security.authlog import AuthRecord
from outpost.wire import Event

__all__ = ["FAILURE_KINDS", "MAX_SOURCES", "AuthEvents", "BruteForceConfig"]

logger = logging.getLogger(__name__)

FAILURE_KINDS = frozenset({"failed_password", "failed_publickey", "failed_other", "invalid_user"})
MAX_SOURCES = 10_000
MAX_USERS_SHOWN = 5
MAX_NAME = 64  # a user name in a ``users`` list is cut to this
MAX_ATTR = 256
STATE_VERSION = 1

Severity = Literal["info", "warning", "critical"]


class BruteForceConfig(msgspec.Struct, forbid_unknown_fields=True):
    """``threshold`` failed logins from one source within ``window_seconds`` is brute force."""

    threshold: int = 10  # failures from one source ...
    window_seconds: float = 300  # ... within this window

    def __post_init__(self) -> None:
        self.window_seconds = float(self.window_seconds)  # 300 from YAML or code is an int
        if self.threshold < 1:
            raise ValueError(f"bruteforce.threshold must be at least 1, not {self.threshold}")
        if not 0 < self.window_seconds < math.inf:
            raise ValueError(
                f"bruteforce.window_seconds must be a positive number, not {self.window_seconds}"
            )


class _Window(msgspec.Struct, array_like=True):
    """One source's fixed window: opened at its first failure, ``window_seconds`` long.
    ``users`` holds the first few distinct names; ``more`` counts further distinct names (exact
    within one ``feed`` call, an upper bound across calls)."""

    source: str
    start: float
    count: int = 0
    fired: bool = False
    users: list[str] = []
    more: int = 0


class _State(msgspec.Struct):
    version: int
    failures_total: int
    clock: float | None
    windows: list[_Window]


@dataclass
class _Pending:
    """The failures of one window within one ``feed`` call."""

    window: _Window
    count: int = 0
    invalid: int = 0
    last_ts: float = 0.0
    users: dict[str, None] = field(default_factory=dict)


# record kind -> event kind, severity, attrs (``user`` and ``source`` from the record, the rest
# from its detail). ``accepted`` and ``console_root_login`` are handled in ``_event``.
_PLAIN: dict[str, tuple[str, Severity, tuple[str, ...]]] = {
    "sudo": ("sudo", "info", ("user", "run_as", "command", "tty")),
    "sudo_failed": ("sudo_failed", "warning", ("user", "reason", "run_as", "command", "attempts")),
    "su": ("su", "info", ("user", "target_user", "tty")),
    "su_failed": ("su_failed", "warning", ("user", "target_user", "tty")),
    "user_added": ("user_added", "warning", ("user", "uid", "gid", "home", "shell")),
    "user_deleted": ("user_deleted", "warning", ("user",)),
    "group_added": ("group_added", "info", ("group", "gid")),
    "group_deleted": ("group_deleted", "info", ("group",)),
    "group_member_added": ("group_member_added", "warning", ("user", "group")),
    "password_changed": ("password_changed", "warning", ("user", "via")),
}


def _ms(t: float) -> int:
    return round(t * 1000)


def _attrs(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Attrs without empty values, each cut to MAX_ATTR characters."""
    return {key: value[:MAX_ATTR] for key, value in pairs if value}


def _users(names: list[str], more: int = 0) -> str:
    """At most five names, comma-joined, then " +N more" for the rest."""
    shown = ",".join(name[:MAX_NAME] for name in names[:MAX_USERS_SHOWN])
    extra = max(0, len(names) - MAX_USERS_SHOWN) + more
    return f"{shown} +{extra} more" if extra else shown


def _event(record: AuthRecord, t: float) -> Event | None:
    """The event of a record that is not a failed login (None for an unknown kind)."""
    detail = record.detail
    extra = [("count", str(record.count))] if record.count > 1 else []
    if record.kind == "accepted":
        method, port = detail.get("method", ""), detail.get("port", "")
        if record.user == "root":
            pairs = [("via", "ssh"), ("source", record.source), ("method", method), ("port", port)]
            return Event("root_login", "warning", _ms(t), attrs=_attrs(pairs + extra))
        pairs = [("user", record.user), ("source", record.source), ("method", method)]
        pairs.append(("port", port))
        return Event("ssh_login", "info", _ms(t), attrs=_attrs(pairs + extra))
    if record.kind == "console_root_login":
        pairs = [("via", "console"), ("source", record.source), ("tty", detail.get("tty", ""))]
        return Event("root_login", "warning", _ms(t), attrs=_attrs(pairs + extra))
    plain = _PLAIN.get(record.kind)
    if plain is None:
        return None
    kind, severity, keys = plain
    own = {"user": record.user, "source": record.source}
    pairs = [(key, own[key] if key in own else detail.get(key, "")) for key in keys]
    return Event(kind, severity, _ms(t), attrs=_attrs(pairs + extra))


class AuthEvents:
    """Records -> events with brute-force windows; see the module docstring."""

    def __init__(self, bruteforce: BruteForceConfig, *, max_sources: int = MAX_SOURCES) -> None:
        self.config = bruteforce
        self.max_sources = max(1, max_sources)
        self.failures_total = 0
        self._clock: float | None = None  # the newest record time seen
        self._windows: dict[str, _Window] = {}  # in the order they were opened

    def feed(self, records: Iterable[AuthRecord], now: float) -> list[Event]:
        """The events of ``records`` (in log order). A record without a time is at ``now``."""
        events: list[Event] = []
        pending: dict[int, _Pending] = {}  # id(window) -> its failures in this call
        fired: list[tuple[_Window, float]] = []
        for record in records:
            ts = record.ts
            t = ts if ts is not None and math.isfinite(ts) else now
            if self._clock is None or t > self._clock:
                self._clock = t
            if record.kind in FAILURE_KINDS:
                self._failure(record, t, pending, fired)
                continue
            event = _event(record, t)
            if event is not None:
                events.append(event)
        span = self.config.window_seconds
        for window, t in fired:
            attrs = {
                "source": window.source,
                "count": str(window.count),  # the window so far, all of this call included
                "users": _users(window.users, window.more),
                "window_seconds": str(int(span)) if span.is_integer() else str(span),
                "threshold": str(self.config.threshold),
            }
            events.append(Event("ssh_bruteforce", "critical", _ms(t), attrs=_attrs(attrs.items())))
            # A fired window only counts from now on: its names are no longer needed.
            window.users = []
            window.more = 0
        events.extend(self._failed_events(pending))
        self._prune(now)
        return events

    def _failure(
        self,
        record: AuthRecord,
        t: float,
        pending: dict[int, _Pending],
        fired: list[tuple[_Window, float]],
    ) -> None:
        span = self.config.window_seconds
        source = record.source
        window = self._windows.get(source)
        # A time well before the window (the clock went back) opens a new one too.
        if window is None or not window.start - span <= t < window.start + span:
            if window is not None:
                del self._windows[source]
            while len(self._windows) >= self.max_sources:
                del self._windows[next(iter(self._windows))]
            window = _Window(source, t)
            self._windows[source] = window
        n = max(1, record.count)
        window.count += n
        self.failures_total += n
        part = pending.get(id(window))
        if part is None:
            part = pending[id(window)] = _Pending(window)
        part.count += n
        if record.kind == "invalid_user":
            part.invalid += n
        part.last_ts = t
        user = record.user
        if user and user not in part.users:
            if user not in window.users:
                if len(window.users) < MAX_USERS_SHOWN:
                    window.users.append(user[:MAX_NAME])
                else:
                    window.more += 1
            part.users[user] = None
        if not window.fired and window.count >= self.config.threshold:
            window.fired = True
            fired.append((window, t))

    def _failed_events(self, pending: dict[int, _Pending]) -> list[Event]:
        """One ssh_login_failed per source for the failures of windows that did not fire."""
        by_source: dict[str, _Pending] = {}
        for part in pending.values():
            if part.window.fired:
                continue
            total = by_source.get(part.window.source)
            if total is None:
                by_source[part.window.source] = _Pending(
                    part.window, part.count, part.invalid, part.last_ts, dict(part.users)
                )
                continue
            total.count += part.count
            total.invalid += part.invalid
            total.last_ts = max(total.last_ts, part.last_ts)
            total.users.update(part.users)
        events = []
        for source, total in by_source.items():
            attrs = {
                "source": source,
                "count": str(total.count),
                "users": _users(list(total.users)),
                "invalid_users": str(total.invalid),
            }
            events.append(
                Event(
                    "ssh_login_failed", "warning", _ms(total.last_ts), attrs=_attrs(attrs.items())
                )
            )
        return events

    def _prune(self, now: float) -> None:
        """Forget windows that ended before both the newest record and ``now``."""
        if self._clock is None:
            return
        horizon = min(self._clock, now)
        span = self.config.window_seconds
        for source in [s for s, w in self._windows.items() if w.start + span <= horizon]:
            del self._windows[source]

    # --- state --------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """JSON-serialisable; at most ``max_sources`` windows."""
        return {
            "version": STATE_VERSION,
            "failures_total": self.failures_total,
            "clock": self._clock,
            "windows": msgspec.to_builtins(list(self._windows.values())),
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Go back to a saved ``state()``. Empty data starts fresh; bad data is logged at
        warning and also starts fresh."""
        self.failures_total = 0
        self._clock = None
        self._windows = {}
        if not data:
            return
        try:
            state = msgspec.convert(data, _State)
            _check(state)
        except (msgspec.ValidationError, ValueError, TypeError) as exc:
            logger.warning("auth events: saved state ignored, starting afresh: %s", exc)
            return
        self.failures_total = state.failures_total
        self._clock = state.clock
        for window in state.windows[-self.max_sources :]:
            self._windows.pop(window.source, None)
            window.users = [u[:MAX_NAME] for u in window.users[:MAX_USERS_SHOWN]]
            self._windows[window.source] = window


def _check(state: _State) -> None:
    if state.version != STATE_VERSION:
        raise ValueError(f"state version {state.version}, expected {STATE_VERSION}")
    if state.failures_total < 0:
        raise ValueError("negative failures_total")
    if state.clock is not None and not math.isfinite(state.clock):
        raise ValueError("clock is not finite")
    for window in state.windows:
        if not math.isfinite(window.start) or window.count < 0 or window.more < 0:
            raise ValueError(f"bad window for {window.source!r}")

"""Alert rules: what is wrong now, read from the exported series and the new events.

Each built-in rule is a small pure function over a ``Series`` index (the series of
docs/metrics.md at one moment, by name) and the ``HostEvent``s applied since the last
evaluation; ``evaluate`` runs every enabled one plus the user's threshold rules and returns
``Condition``s. Every condition carries the ``args`` the message templates need, as strings
(human figures such as ``used_pct`` "93.4" or ``free_gb`` "1.2", and the identifying labels).

The trend rule (``disk_full_predicted``) and the counter rule (``collector_losing``) look back
through a ``History``, which the caller feeds once per evaluation (``History.add``, before or
after ``evaluate``: both work) and keeps across restarts (``state`` / ``restore``).

Not here: ``for`` timing, firing and resolving (the engine's), who hears what (routing),
the wording of messages (templates). ``for_seconds`` only tells the engine a rule's ``for``.
Nothing here reads a clock, logs or does I/O.
"""

from __future__ import annotations

import math
import operator
import re
import string
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Annotated, Any, ClassVar, NamedTuple

import msgspec

from collector.alerting.model import SEVERITIES, Condition
from collector.events import HostEvent

__all__ = [
    "BUILTIN_RULES",
    "BUILTIN_SERIES",
    "COUNTER_SERIES",
    "FOR_SECONDS",
    "OPS",
    "TREND_SERIES",
    "BuiltinRule",
    "History",
    "RuleContext",
    "RulesConfig",
    "Sample",
    "Series",
    "UserRule",
    "check_user_rules",
    "evaluate",
    "for_seconds",
    "series_read",
]

Labels = dict[str, str]
_Key = tuple[tuple[str, str], ...]
Sample = tuple[str, dict[str, str], float]  # name, labels, value
_Points = deque[tuple[float, float]]

# Series the History keeps: trends (a point every TREND_STEP, for TREND_KEEP) and counters
# (the last two values, to tell an increase since the previous evaluation).
TREND_SERIES: tuple[str, ...] = ("outpost_filesystem_avail_bytes",)
COUNTER_SERIES: tuple[str, ...] = ("outpost_collector_lost_messages_total",)
# Every series a built-in rule reads by name (a unit test checks this against the rules'
# code): the evaluation asks the exporter for these, the History's and the user rules' only.
BUILTIN_SERIES: frozenset[str] = frozenset(
    {
        "outpost_agent_outbox_bytes",
        "outpost_agent_outbox_rows",
        "outpost_battery_percent",
        "outpost_battery_power_plugged",
        "outpost_battery_seconds_left",
        "outpost_collector_broker_connected",
        "outpost_collector_lost_messages_total",
        "outpost_filesystem_avail_bytes",
        "outpost_filesystem_size_bytes",
        "outpost_host_clock_skew_seconds",
        "outpost_host_expected",
        "outpost_host_last_seen_timestamp_seconds",
        "outpost_host_state",
        "outpost_memory_available_bytes",
        "outpost_memory_total_bytes",
        "outpost_network_admin_up",
        "outpost_network_up",
        "outpost_site_coverage",
        "outpost_site_hosts",
        "outpost_site_uplink_latency_seconds",
        "outpost_site_uplink_loss_ratio",
    }
)
TREND_STEP = 300.0
TREND_KEEP = 6 * 3600.0
TREND_MIN_SPAN = 1800.0

_GIB = float(1 << 30)
_MIB = float(1 << 20)


def _key(labels: Mapping[str, str]) -> _Key:
    return tuple(sorted(labels.items()))


# --- the series at one moment ---------------------------------------------------------------


class Series:
    """The exported samples at one moment, indexed by name. One value per (name, labels).

    ``samples(name)`` gives the samples as handed in, ``(name, labels, value)``, without a
    copy (the rules use it: no object per sample, so a big fleet stays cheap); ``get(name)``
    gives ``(labels, value)`` pairs, made once per name. Read them, do not change them."""

    __slots__ = ("_by_name", "_pairs")

    def __init__(self, samples: Iterable[Sample]) -> None:
        by_name: dict[str, list[Sample]] = {}
        for sample in samples:
            found = by_name.get(sample[0])
            if found is None:
                found = by_name[sample[0]] = []
            found.append(sample)
        self._by_name = by_name
        self._pairs: dict[str, list[tuple[dict[str, str], float]]] = {}

    def samples(self, name: str) -> list[Sample]:
        return self._by_name.get(name) or []

    def get(self, name: str) -> list[tuple[dict[str, str], float]]:
        pairs = self._pairs.get(name)
        if pairs is None:
            pairs = self._pairs[name] = [(labels, value) for _, labels, value in self.samples(name)]
        return pairs

    def names(self) -> list[str]:
        return list(self._by_name)

    def __len__(self) -> int:
        return sum(len(found) for found in self._by_name.values())


# --- what trend and counter rules look back on ---------------------------------------------


class _HistoryState(msgspec.Struct):
    version: int
    swept: dict[str, float] = {}
    trends: dict[str, list[tuple[dict[str, str], list[tuple[float, float]]]]] = {}
    counters: dict[str, list[tuple[dict[str, str], list[tuple[float, float]]]]] = {}


class History:
    """Bounded per-series history, pure (time passed in).

    Trend series get a point per label set every ``step`` seconds (5 min) for ``keep``
    seconds (6 h): at most ``keep / step + 2`` points each; a label set not seen for ``keep``
    is forgotten. Counter series keep their last two values (one per ``add``)."""

    def __init__(
        self,
        trends: Iterable[str] = TREND_SERIES,
        counters: Iterable[str] = COUNTER_SERIES,
        *,
        step: float = TREND_STEP,
        keep: float = TREND_KEEP,
        min_span: float = TREND_MIN_SPAN,
    ) -> None:
        self.step, self.keep, self.min_span = step, keep, min_span
        self._maxlen = int(keep // step) + 2
        self._trends: dict[str, dict[_Key, _Points]] = {name: {} for name in trends}
        self._counters: dict[str, dict[_Key, _Points]] = {name: {} for name in counters}
        self._swept: dict[str, float] = {}  # when each trend series last got its points

    def add(self, now: float, series: Series) -> None:
        """Record what the rules will look back on; call once per evaluation."""
        for name, keyed in self._trends.items():
            last = self._swept.get(name)
            if last is not None:
                if now < last:  # the clock went back: these points no longer line up
                    keyed.clear()
                elif now - last < self.step:
                    continue
            self._swept[name] = now
            for _, labels, value in series.samples(name):
                if math.isfinite(value):
                    self._points(keyed, _key(labels), self._maxlen).append((now, value))
            self._prune(keyed, now)
        for name, keyed in self._counters.items():
            for _, labels, value in series.samples(name):
                if not math.isfinite(value):
                    continue
                points = self._points(keyed, _key(labels), 2)
                while points and points[-1][0] >= now:  # same evaluation again, or clock back
                    points.pop()
                points.append((now, value))
            self._prune(keyed, now)

    @staticmethod
    def _points(keyed: dict[_Key, _Points], key: _Key, maxlen: int) -> _Points:
        points = keyed.get(key)
        if points is None:
            points = keyed[key] = deque(maxlen=maxlen)
        return points

    def _prune(self, keyed: dict[_Key, _Points], now: float) -> None:
        cutoff = now - self.keep
        for key in [k for k, points in keyed.items() if points[-1][0] < cutoff]:
            del keyed[key]
        for points in keyed.values():
            while points[0][0] < cutoff:
                points.popleft()

    def trend(self, name: str, labels: Mapping[str, str], now: float) -> tuple[float, float] | None:
        """(slope per second, fitted value at ``now``) of a least-squares line through the
        points of the last ``keep`` seconds; None with fewer than 2 points or when they span
        less than ``min_span``."""
        points = self._trends.get(name, {}).get(_key(labels))
        if not points:
            return None
        cutoff = now - self.keep
        pts = [(t, v) for t, v in points if cutoff <= t <= now]
        if len(pts) < 2 or pts[-1][0] - pts[0][0] < self.min_span:
            return None
        mean_t = sum(t for t, _ in pts) / len(pts)
        mean_v = sum(v for _, v in pts) / len(pts)
        sxx = sum((t - mean_t) ** 2 for t, _ in pts)
        if sxx <= 0:
            return None
        slope = sum((t - mean_t) * (v - mean_v) for t, v in pts) / sxx
        return slope, mean_v + slope * (now - mean_t)

    def predict(
        self, name: str, labels: dict[str, str], horizon: float, now: float
    ) -> float | None:
        """The linear prediction of the series ``horizon`` seconds after ``now``."""
        fit = self.trend(name, labels, now)
        if fit is None:
            return None
        slope, level = fit
        return level + slope * horizon

    def previous(self, name: str, labels: Mapping[str, str], now: float) -> float | None:
        """A counter's newest value recorded before ``now`` (None when there is none)."""
        points = self._counters.get(name, {}).get(_key(labels))
        for t, value in reversed(points or ()):
            if t < now:
                return value
        return None

    def state(self) -> dict[str, Any]:
        """JSON-ready (for the alert store)."""

        def dump(tracked: dict[str, dict[_Key, _Points]]) -> dict[str, Any]:
            return {
                name: [[dict(key), [[t, v] for t, v in points]] for key, points in keyed.items()]
                for name, keyed in tracked.items()
            }

        return {
            "version": 1,
            "swept": dict(self._swept),
            "trends": dump(self._trends),
            "counters": dump(self._counters),
        }

    def restore(self, data: Any) -> None:
        """Put back a ``state()`` (replacing what this History holds). Data that cannot be
        read (None, another version, garbage) is ignored: the History stays as it was (empty,
        on a start), and the trends build up again. Series this History does not track are
        left out; each keeps its bounds."""
        try:
            saved = msgspec.convert(data, _HistoryState)
        except (msgspec.ValidationError, TypeError):
            return
        if saved.version != 1:
            return
        for tracked, stored, maxlen in (
            (self._trends, saved.trends, self._maxlen),
            (self._counters, saved.counters, 2),
        ):
            for name, keyed in tracked.items():
                keyed.clear()
                for labels, pts in stored.get(name, []):
                    good = sorted((t, v) for t, v in pts if math.isfinite(t) and math.isfinite(v))
                    if good:
                        keyed[_key(labels)] = deque(good, maxlen=maxlen)
        self._swept = {
            name: when
            for name, when in saved.swept.items()
            if name in self._trends and math.isfinite(when)
        }


class RuleContext(NamedTuple):
    now: float
    series: Series
    events: list[HostEvent]  # applied since the last evaluation
    history: History


# --- configuration of the built-in rules ---------------------------------------------------


class BuiltinRule(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """A built-in rule's settings. Each rule has its own subclass with its own defaults, so a
    config may give only what it changes (``disk_full: {threshold: 0.95}``)."""

    enabled: bool = True
    for_seconds: float
    severity: str
    threshold: float | None = None
    # Allowed thresholds (inclusive), per rule.
    bounds: ClassVar[tuple[float, float]] = (0.0, math.inf)

    def __post_init__(self) -> None:
        if not self.for_seconds >= 0 or math.isinf(self.for_seconds):
            raise ValueError(f"for_seconds: must be 0 or more seconds, got {self.for_seconds}")
        if self.severity not in SEVERITIES:
            raise ValueError(
                f"severity: must be one of {', '.join(SEVERITIES)}, got {self.severity!r}"
            )
        if self.threshold is not None:
            low, high = self.bounds
            if not low <= self.threshold <= high:
                raise ValueError(
                    f"threshold: must be between {low:g} and {high:g}, got {self.threshold}"
                )


_RATIO = (0.0, 1.0)


class HostDownRule(BuiltinRule, frozen=True, kw_only=True):
    """A host is lost, stale or (a polled device) unreachable."""

    for_seconds: float = 120.0
    severity: str = "critical"
    threshold: None = None


class HostShutdownRule(BuiltinRule, frozen=True, kw_only=True):
    """An expected host was shut down cleanly and stays down."""

    for_seconds: float = 1800.0
    severity: str = "warning"
    threshold: None = None


class HostNeverReportedRule(BuiltinRule, frozen=True, kw_only=True):
    """A host sites.yaml lists has never reported."""

    for_seconds: float = 600.0
    severity: str = "warning"
    threshold: None = None


class SiteUnreachableRule(BuiltinRule, frozen=True, kw_only=True):
    """No agent of the site is online."""

    for_seconds: float = 120.0
    severity: str = "critical"
    threshold: None = None


class DiskFullRule(BuiltinRule, frozen=True, kw_only=True):
    """threshold: the used share of a file system (1 - avail / size) that is too much."""

    for_seconds: float = 300.0
    severity: str = "warning"
    threshold: float = 0.90
    bounds: ClassVar[tuple[float, float]] = _RATIO


class DiskFullPredictedRule(BuiltinRule, frozen=True, kw_only=True):
    """threshold: how far ahead (seconds) the trend of the free space must stay above 0."""

    for_seconds: float = 1800.0
    severity: str = "warning"
    threshold: float = 86400.0
    bounds: ClassVar[tuple[float, float]] = (60.0, 30 * 86400.0)


class MemoryPressureRule(BuiltinRule, frozen=True, kw_only=True):
    """threshold: the available share of memory that is too little."""

    for_seconds: float = 600.0
    severity: str = "warning"
    threshold: float = 0.05
    bounds: ClassVar[tuple[float, float]] = _RATIO


class UplinkLossRule(BuiltinRule, frozen=True, kw_only=True):
    """threshold: the uplink probes' mean packet loss (0 to 1) that is too much."""

    for_seconds: float = 300.0
    severity: str = "warning"
    threshold: float = 0.2
    bounds: ClassVar[tuple[float, float]] = _RATIO


class UplinkLatencyRule(BuiltinRule, frozen=True, kw_only=True):
    """threshold: the uplink probes' mean round trip (seconds) that is too slow."""

    for_seconds: float = 300.0
    severity: str = "warning"
    threshold: float = 0.5


class GearInterfaceDownRule(BuiltinRule, frozen=True, kw_only=True):
    """An interface of network gear is administratively up but operationally down."""

    for_seconds: float = 120.0
    severity: str = "warning"
    threshold: None = None


class GearRebootedRule(BuiltinRule, frozen=True, kw_only=True):
    """Event ``device_rebooted``."""

    for_seconds: float = 0.0
    severity: str = "warning"
    threshold: None = None


class SshBruteforceRule(BuiltinRule, frozen=True, kw_only=True):
    """Event ``ssh_bruteforce``."""

    for_seconds: float = 0.0
    severity: str = "critical"
    threshold: None = None


class NewListeningPortRule(BuiltinRule, frozen=True, kw_only=True):
    """Event ``listen_port_opened``."""

    for_seconds: float = 0.0
    severity: str = "warning"
    threshold: None = None


class FileChangedRule(BuiltinRule, frozen=True, kw_only=True):
    """Event ``file_changed``."""

    for_seconds: float = 0.0
    severity: str = "warning"
    threshold: None = None


class UpsOnBatteryRule(BuiltinRule, frozen=True, kw_only=True):
    """A host runs on battery (``outpost_battery_power_plugged`` 0)."""

    for_seconds: float = 60.0
    severity: str = "warning"
    threshold: None = None


class UpsLowBatteryRule(BuiltinRule, frozen=True, kw_only=True):
    """threshold: the charge (percent) at or under which a host on battery is in danger."""

    for_seconds: float = 0.0
    severity: str = "critical"
    threshold: float = 20.0
    bounds: ClassVar[tuple[float, float]] = (0.0, 100.0)


class ClockSkewRule(BuiltinRule, frozen=True, kw_only=True):
    """threshold: the clock skew (seconds, either way) that is too much; also event
    ``clock_jump`` (instant)."""

    for_seconds: float = 300.0
    severity: str = "warning"
    threshold: float = 120.0


class OutboxBacklogRule(BuiltinRule, frozen=True, kw_only=True):
    """threshold: messages waiting in an agent's outbox that mean its link is failing."""

    for_seconds: float = 600.0
    severity: str = "warning"
    threshold: float = 100.0


class CollectorLosingRule(BuiltinRule, frozen=True, kw_only=True):
    """threshold: the increase of the fleet's lost messages since the previous evaluation
    that fires (instant)."""

    for_seconds: float = 0.0
    severity: str = "critical"
    threshold: float = 1.0


class CollectorBrokerDownRule(BuiltinRule, frozen=True, kw_only=True):
    """The collector is not connected to the broker."""

    for_seconds: float = 60.0
    severity: str = "critical"
    threshold: None = None


class RulesConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """The built-in rules, each with its own defaults (see the classes above)."""

    host_down: HostDownRule = HostDownRule()
    host_shutdown: HostShutdownRule = HostShutdownRule()
    host_never_reported: HostNeverReportedRule = HostNeverReportedRule()
    site_unreachable: SiteUnreachableRule = SiteUnreachableRule()
    disk_full: DiskFullRule = DiskFullRule()
    disk_full_predicted: DiskFullPredictedRule = DiskFullPredictedRule()
    memory_pressure: MemoryPressureRule = MemoryPressureRule()
    uplink_loss: UplinkLossRule = UplinkLossRule()
    uplink_latency: UplinkLatencyRule = UplinkLatencyRule()
    gear_interface_down: GearInterfaceDownRule = GearInterfaceDownRule()
    gear_rebooted: GearRebootedRule = GearRebootedRule()
    ssh_bruteforce: SshBruteforceRule = SshBruteforceRule()
    new_listening_port: NewListeningPortRule = NewListeningPortRule()
    file_changed: FileChangedRule = FileChangedRule()
    ups_on_battery: UpsOnBatteryRule = UpsOnBatteryRule()
    ups_low_battery: UpsLowBatteryRule = UpsLowBatteryRule()
    clock_skew: ClockSkewRule = ClockSkewRule()
    outbox_backlog: OutboxBacklogRule = OutboxBacklogRule()
    collector_losing: CollectorLosingRule = CollectorLosingRule()
    collector_broker_down: CollectorBrokerDownRule = CollectorBrokerDownRule()

    def rule(self, name: str) -> BuiltinRule:
        if name not in _BUILTIN_SET:
            raise KeyError(f"no built-in rule {name!r}")
        rule: BuiltinRule = getattr(self, name)
        return rule


BUILTIN_RULES: tuple[str, ...] = RulesConfig.__struct_fields__
_BUILTIN_SET = frozenset(BUILTIN_RULES)
# The default `for` of each built-in rule (a config may change it: see ``for_seconds``).
FOR_SECONDS: dict[str, float] = {
    name: RulesConfig().rule(name).for_seconds for name in BUILTIN_RULES
}


# --- user rules ---------------------------------------------------------------------------

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_METRIC = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_NAME_PATTERN = "^" + _NAME.pattern + "$"


class _Figure(float):
    """A value in a summary: ``{value}`` is a human figure, ``{value:.2f}`` as asked."""

    def __format__(self, spec: str) -> str:
        return _fig(self) if not spec else float(self).__format__(spec)


class _Blank(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return ""


def _check_summary(summary: str) -> None:
    try:
        fields = list(string.Formatter().parse(summary))
    except ValueError as exc:
        raise ValueError(f"summary: {exc}") from None
    for _, field, _, _ in fields:
        if field is not None and not _LABEL.fullmatch(field):
            raise ValueError(
                f"summary: {{{field}}} is not a label name or {{value}} (no indexes or "
                "attributes; write {{ and }} for braces)"
            )
    try:
        _render(summary, {}, 1.0, strict=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"summary: {exc}") from None


def _render(summary: str, labels: Mapping[str, str], value: float, strict: bool = False) -> str:
    values = _Blank(labels)
    values["value"] = _Figure(value)
    try:
        return summary.format_map(values)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        if strict:
            raise
        return summary


class UserRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A threshold on one series: ``metric`` samples whose labels pass ``matchers`` and whose
    value passes ``op threshold``. A matcher is an exact value (``""`` also matches a label
    the sample lacks), ``"~regex"`` (the whole value must match) or ``"!value"`` (anything
    but). ``summary`` may name ``{value}`` and any label (``{host}``); missing labels are
    empty. Samples whose value is NaN never match."""

    name: Annotated[str, msgspec.Meta(pattern=_NAME_PATTERN)]
    metric: str
    op: str
    threshold: float
    matchers: dict[str, str] = {}
    for_seconds: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    severity: str = "warning"
    summary: str = ""
    runbook: str = ""

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(
                f"name: {self.name!r} must be lower-case letters, digits and _, starting "
                "with a letter, at most 64 characters"
            )
        if self.name in _BUILTIN_SET:
            raise ValueError(f"name: {self.name!r} is a built-in rule; choose another name")
        if not _METRIC.fullmatch(self.metric):
            raise ValueError(f"metric: {self.metric!r} is not a metric name")
        if self.op not in OPS:
            raise ValueError(f"op: {self.op!r} must be one of {' '.join(OPS)}")
        if not math.isfinite(self.threshold):
            raise ValueError(f"threshold: must be a finite number, got {self.threshold}")
        if not self.for_seconds >= 0 or math.isinf(self.for_seconds):
            raise ValueError(f"for_seconds: must be 0 or more seconds, got {self.for_seconds}")
        if self.severity not in SEVERITIES:
            raise ValueError(
                f"severity: must be one of {', '.join(SEVERITIES)}, got {self.severity!r}"
            )
        for label, want in self.matchers.items():
            if not _LABEL.fullmatch(label):
                raise ValueError(f"matchers: {label!r} is not a label name")
            if want.startswith("~"):
                try:
                    re.compile(want[1:])
                except re.error as exc:
                    raise ValueError(
                        f"matchers.{label}: bad regular expression {want[1:]!r}: {exc}"
                    ) from None
        _check_summary(self.summary)


def check_user_rules(rules: Sequence[UserRule]) -> None:
    """What each ``UserRule`` cannot check alone: names must be unique."""
    seen: set[str] = set()
    for i, rule in enumerate(rules):
        if rule.name in seen:
            raise ValueError(f"user rules[{i}]: name {rule.name!r} is used twice")
        seen.add(rule.name)


def for_seconds(config: RulesConfig, user_rules: Sequence[UserRule], rule: str) -> float:
    """The effective ``for`` of a rule, built-in or user. KeyError for an unknown name."""
    if rule in _BUILTIN_SET:
        return config.rule(rule).for_seconds
    for user in user_rules:
        if user.name == rule:
            return user.for_seconds
    raise KeyError(f"no rule {rule!r}")


# --- figures for the messages ---------------------------------------------------------------


def _fig(x: float) -> str:
    """A human figure: whole numbers plain, else 1 decimal (3 significant digits under 1)."""
    if not math.isfinite(x):
        return str(x)
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    if abs(x) >= 1:
        return f"{x:.1f}"
    return f"{x:.3g}"


def _pct(ratio: float) -> str:
    return f"{ratio * 100:.1f}"


def _gib(nbytes: float) -> str:
    """GiB (as df -h counts), 1 decimal; 2 under 1 GiB."""
    gib = nbytes / _GIB
    return f"{gib:.1f}" if abs(gib) >= 1 else f"{gib:.2f}"


def _host(labels: Mapping[str, str]) -> Labels:
    return {"site": labels.get("site", ""), "host": labels.get("host", "")}


def _by_host(samples: Iterable[Sample]) -> dict[tuple[str, str], float]:
    return {(lb.get("site", ""), lb.get("host", "")): v for _, lb, v in samples}


# --- the built-in rules ---------------------------------------------------------------------
# Each takes the rules' config and the context and yields its conditions.

_HOST_DOWN_STATES = frozenset({"lost", "stale", "unreachable"})


def _host_state(ctx: RuleContext, states: frozenset[str]) -> Iterator[tuple[Labels, str]]:
    for _, labels, value in ctx.series.samples("outpost_host_state"):
        state = labels.get("state", "")
        if value == 1 and state in states:
            yield _host(labels), state


def _host_down(config: RulesConfig, ctx: RuleContext) -> Iterator[Condition]:
    rule = config.host_down
    last_seen = _by_host(ctx.series.samples("outpost_host_last_seen_timestamp_seconds"))
    for labels, state in _host_state(ctx, _HOST_DOWN_STATES):
        args = {**labels, "state": state}
        seen = last_seen.get((labels["site"], labels["host"]))
        if seen is not None and seen > 0:
            args["last_seen"] = str(int(seen))
            args["silent_minutes"] = str(max(0, int((ctx.now - seen) // 60)))
        yield Condition("host_down", labels, rule.severity, None, args)


def _host_shutdown(config: RulesConfig, ctx: RuleContext) -> Iterator[Condition]:
    rule = config.host_shutdown
    expected = _by_host(ctx.series.samples("outpost_host_expected"))
    for labels, state in _host_state(ctx, frozenset({"shutdown"})):
        if expected.get((labels["site"], labels["host"])) == 1:
            yield Condition(
                "host_shutdown", labels, rule.severity, None, {**labels, "state": state}
            )


def _host_never_reported(config: RulesConfig, ctx: RuleContext) -> Iterator[Condition]:
    rule = config.host_never_reported
    for labels, state in _host_state(ctx, frozenset({"never_reported"})):
        yield Condition(
            "host_never_reported", labels, rule.severity, None, {**labels, "state": state}
        )


def _site_unreachable(config: RulesConfig, ctx: RuleContext) -> Iterator[Condition]:
    rule = config.site_unreachable
    hosts = {lb.get("site", ""): v for _, lb, v in ctx.series.samples("outpost_site_hosts")}
    for _, labels, value in ctx.series.samples("outpost_site_coverage"):
        if value == 1 and labels.get("state") == "unreachable":
            site = labels.get("site", "")
            args = {"site": site}
            if site in hosts:
                args["hosts"] = _fig(hosts[site])
            yield Condition("site_unreachable", {"site": site}, rule.severity, None, args)


class _Filesystem(NamedTuple):
    labels: dict[str, str]  # as exported: site, host, mountpoint, device, fstype
    size: float
    avail: float

    @property
    def used(self) -> float:
        return 1.0 - self.avail / self.size

    def condition_labels(self) -> Labels:
        return {**_host(self.labels), "mountpoint": self.labels.get("mountpoint", "")}

    def args(self) -> Labels:
        lb = self.labels
        mount = lb.get("mountpoint", "")
        return {
            **_host(lb),
            "mount": mount,
            "mountpoint": mount,
            "device": lb.get("device", ""),
            "fstype": lb.get("fstype", ""),
            "used_pct": _pct(self.used),
            "free_pct": _pct(1.0 - self.used),
            "free_bytes": str(int(self.avail)),
            "free_gb": _gib(self.avail),
            "size_gb": _gib(self.size),
        }


def _filesystems(series: Series) -> Iterator[_Filesystem]:
    sizes = {_key(lb): v for _, lb, v in series.samples("outpost_filesystem_size_bytes")}
    for _, labels, avail in series.samples("outpost_filesystem_avail_bytes"):
        size = sizes.get(_key(labels))
        if size is not None and size > 0 and math.isfinite(size) and math.isfinite(avail):
            yield _Filesystem(labels, size, avail)


def _disk_full(config: RulesConfig, ctx: RuleContext) -> Iterator[Condition]:
    rule = config.disk_full
    for fs in _filesystems(ctx.series):
        used = fs.used
        if used >= rule.threshold:
            yield Condition("disk_full", fs.condition_labels(), rule.severity, used, fs.args())


def _disk_full_predicted(config: RulesConfig, ctx: RuleContext) -> Iterator[Condition]:
    rule = config.disk_full_predicted
    full = config.disk_full
    for fs in _filesystems(ctx.series):
        if full.enabled and fs.used >= full.threshold:
            continue  # disk_full says it already
        fit = ctx.history.trend("outpost_filesystem_avail_bytes", fs.labels, ctx.now)
        if fit is None:
            continue
        slope, level = fit
        if slope >= 0 or level + slope * rule.threshold > 0:
            continue
        hours = max(0.0, -level / slope / 3600.0)
        args = {**fs.args(), "hours_left": _fig(round(hours, 1)), "days_left": f"{hours / 24:.1f}"}
        yield Condition("disk_full_predicted", fs.condition_labels(), rule.severity, hours, args)


def _memory_pressure(config: RulesConfig, ctx: RuleContext) -> Iterator[Condition]:
    rule = config.memory_pressure
    totals = _by_host(ctx.series.samples("outpost_memory_total_bytes"))
    for _, labels, avail in ctx.series.samples("outpost_memory_available_bytes"):
        cond_labels = _host(labels)
        total = totals.get((cond_labels["site"], cond_labels["host"]))
        if total is None or not total > 0:
            continue
        ratio = avail / total
        if ratio <= rule.threshold:
            args = {
                **cond_labels,
                "available_pct": _pct(ratio),
                "used_pct": _pct(1.0 - ratio),
                "available_mb": str(int(avail / _MIB)),
                "total_gb": _gib(total),
            }
            yield Condition("memory_pressure", cond_labels, rule.severity, ratio, args)


def _uplink_loss(config: RulesConfig, ctx: RuleContext) -> Iterator[Condition]:
    rule = config.uplink_loss
    for _, labels, loss in ctx.series.samples("outpost_site_uplink_loss_ratio"):
        if loss >= rule.threshold:
            site = {"site": labels.get("site", "")}
            args = {**site, "loss_pct": _pct(loss), "value": _fig(loss)}
            yield Condition("uplink_loss", site, rule.severity, loss, args)


def _uplink_latency(config: RulesConfig, ctx: RuleContext) -> Iterator[Condition]:
    rule = config.uplink_latency
    for _, labels, latency in ctx.series.samples("outpost_site_uplink_latency_seconds"):
        if latency >= rule.threshold:
            site = {"site": labels.get("site", "")}
            args = {**site, "latency_ms": str(round(latency * 1000)), "value": _fig(latency)}
            yield Condition("uplink_latency", site, rule.severity, latency, args)


def _gear_interface_down(config: RulesConfig, ctx: RuleContext) -> Iterator[Condition]:
    rule = config.gear_interface_down
    admin = {_key(lb): v for _, lb, v in ctx.series.samples("outpost_network_admin_up")}
    if not admin:
        return
    for _, labels, up in ctx.series.samples("outpost_network_up"):
        if up == 0 and admin.get(_key(labels)) == 1:
            cond_labels = {**_host(labels), "interface": labels.get("interface", "")}
            yield Condition(
                "gear_interface_down", cond_labels, rule.severity, None, dict(cond_labels)
            )


def _event_args(event: HostEvent) -> Labels:
    return {
        **event.attrs,
        "site": event.site,
        "host": event.host,
        "kind": event.kind,
        "message": event.message,
        "time": str(event.ts // 1000),
    }


def _number(text: str | None) -> float | None:
    try:
        value = float(text or "")
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _event_conditions(
    name: str,
    rule: BuiltinRule,
    events: Iterable[HostEvent],
    kind: str,
    extra: Sequence[str],
    value_attr: str = "",
    tag: Labels | None = None,
) -> Iterator[Condition]:
    """One instant condition per (site, host, the ``extra`` attrs): the newest event's args
    plus ``events``, how many came since the last evaluation."""
    newest: dict[_Key, HostEvent] = {}
    counts: dict[_Key, int] = {}
    labels_of: dict[_Key, Labels] = {}
    for event in events:
        if event.kind != kind:
            continue
        labels = {"site": event.site, "host": event.host}
        labels.update((a, event.attrs.get(a, "")) for a in extra)
        if tag:
            labels.update(tag)
        key = _key(labels)
        counts[key] = counts.get(key, 0) + 1
        if key not in newest or event.id > newest[key].id:
            newest[key], labels_of[key] = event, labels
    for key, event in newest.items():
        args = _event_args(event)
        args["events"] = str(counts[key])
        value = _number(event.attrs.get(value_attr)) if value_attr else None
        yield Condition(name, labels_of[key], rule.severity, value, args, instant=True)


def _gear_rebooted(config: RulesConfig, ctx: RuleContext) -> Iterator[Condition]:
    return _event_conditions(
        "gear_rebooted", config.gear_rebooted, ctx.events, "device_rebooted", ()
    )


def _ssh_bruteforce(config: RulesConfig, ctx: RuleContext) -> Iterator[Condition]:
    return _event_conditions(
        "ssh_bruteforce", config.ssh_bruteforce, ctx.events, "ssh_bruteforce", ("source",), "count"
    )


def _new_listening_port(config: RulesConfig, ctx: RuleContext) -> Iterator[Condition]:
    return _event_conditions(
        "new_listening_port",
        config.new_listening_port,
        ctx.events,
        "listen_port_opened",
        ("proto", "port"),
        "port",
    )


def _file_changed(config: RulesConfig, ctx: RuleContext) -> Iterator[Condition]:
    return _event_conditions(
        "file_changed", config.file_changed, ctx.events, "file_changed", ("path",)
    )


def _battery(ctx: RuleContext) -> Iterator[tuple[Labels, float | None, float | None]]:
    """Hosts on battery: (labels, percent, seconds left)."""
    percent = _by_host(ctx.series.samples("outpost_battery_percent"))
    left = _by_host(ctx.series.samples("outpost_battery_seconds_left"))
    for _, labels, plugged in ctx.series.samples("outpost_battery_power_plugged"):
        if plugged == 0:
            cond_labels = _host(labels)
            where = (cond_labels["site"], cond_labels["host"])
            yield cond_labels, percent.get(where), left.get(where)


def _battery_args(labels: Labels, percent: float | None, left: float | None) -> Labels:
    args = dict(labels)
    if percent is not None:
        args["battery_pct"] = _fig(round(percent, 1))
    if left is not None:
        args["minutes_left"] = str(max(0, int(left // 60)))
    return args


def _ups_on_battery(config: RulesConfig, ctx: RuleContext) -> Iterator[Condition]:
    rule = config.ups_on_battery
    for labels, percent, left in _battery(ctx):
        yield Condition(
            "ups_on_battery", labels, rule.severity, percent, _battery_args(labels, percent, left)
        )


def _ups_low_battery(config: RulesConfig, ctx: RuleContext) -> Iterator[Condition]:
    rule = config.ups_low_battery
    for labels, percent, left in _battery(ctx):
        if percent is not None and percent <= rule.threshold:
            yield Condition(
                "ups_low_battery",
                labels,
                rule.severity,
                percent,
                _battery_args(labels, percent, left),
            )


def _clock_skew(config: RulesConfig, ctx: RuleContext) -> Iterator[Condition]:
    rule = config.clock_skew
    for _, labels, skew in ctx.series.samples("outpost_host_clock_skew_seconds"):
        if abs(skew) >= rule.threshold:
            cond_labels = _host(labels)
            args = {
                **cond_labels,
                "skew_seconds": str(round(skew)),
                "direction": "behind" if skew > 0 else "ahead",
                "value": _fig(round(skew, 1)),
            }
            yield Condition("clock_skew", cond_labels, rule.severity, skew, args)
    # A jump is its own alert (label event=clock_jump): instant, beside any skew alert.
    yield from _event_conditions(
        "clock_skew", rule, ctx.events, "clock_jump", (), "jump_seconds", {"event": "clock_jump"}
    )


def _outbox_backlog(config: RulesConfig, ctx: RuleContext) -> Iterator[Condition]:
    rule = config.outbox_backlog
    sizes = _by_host(ctx.series.samples("outpost_agent_outbox_bytes"))
    for _, labels, rows in ctx.series.samples("outpost_agent_outbox_rows"):
        if rows >= rule.threshold:
            cond_labels = _host(labels)
            args = {**cond_labels, "rows": _fig(rows), "value": _fig(rows)}
            size = sizes.get((cond_labels["site"], cond_labels["host"]))
            if size is not None:
                args["outbox_mb"] = _fig(round(size / _MIB, 1))
            yield Condition("outbox_backlog", cond_labels, rule.severity, rows, args)


def _collector_losing(config: RulesConfig, ctx: RuleContext) -> Iterator[Condition]:
    rule = config.collector_losing
    name = "outpost_collector_lost_messages_total"
    for _, labels, total in ctx.series.samples(name):
        before = ctx.history.previous(name, labels, ctx.now)
        if before is None or total < before:  # nothing to compare with, or a reset
            continue
        increase = total - before
        if increase >= rule.threshold and increase > 0:
            args = {"site": "", "count": _fig(increase), "total": _fig(total)}
            yield Condition(
                "collector_losing", {"site": ""}, rule.severity, increase, args, instant=True
            )


def _collector_broker_down(config: RulesConfig, ctx: RuleContext) -> Iterator[Condition]:
    rule = config.collector_broker_down
    for _, _, connected in ctx.series.samples("outpost_collector_broker_connected"):
        if connected == 0:
            yield Condition(
                "collector_broker_down", {"site": ""}, rule.severity, None, {"site": ""}
            )


_Check = Callable[[RulesConfig, RuleContext], Iterable[Condition]]
_CHECKS: dict[str, _Check] = {
    "host_down": _host_down,
    "host_shutdown": _host_shutdown,
    "host_never_reported": _host_never_reported,
    "site_unreachable": _site_unreachable,
    "disk_full": _disk_full,
    "disk_full_predicted": _disk_full_predicted,
    "memory_pressure": _memory_pressure,
    "uplink_loss": _uplink_loss,
    "uplink_latency": _uplink_latency,
    "gear_interface_down": _gear_interface_down,
    "gear_rebooted": _gear_rebooted,
    "ssh_bruteforce": _ssh_bruteforce,
    "new_listening_port": _new_listening_port,
    "file_changed": _file_changed,
    "ups_on_battery": _ups_on_battery,
    "ups_low_battery": _ups_low_battery,
    "clock_skew": _clock_skew,
    "outbox_backlog": _outbox_backlog,
    "collector_losing": _collector_losing,
    "collector_broker_down": _collector_broker_down,
}


# --- user rules -----------------------------------------------------------------------------

_Matcher = Callable[[str], bool]


def _matcher(want: str) -> _Matcher:
    if want.startswith("~"):
        pattern = re.compile(want[1:])
        return lambda value: pattern.fullmatch(value) is not None
    if want.startswith("!"):
        other = want[1:]
        return lambda value: value != other
    return lambda value: value == want


def _user_conditions(rule: UserRule, series: Series) -> Iterator[Condition]:
    test = OPS[rule.op]
    threshold = rule.threshold
    matchers = [(label, _matcher(want)) for label, want in rule.matchers.items()]
    for _, labels, value in series.samples(rule.metric):
        if value != value or not test(value, threshold):  # NaN never matches
            continue
        if not all(match(labels.get(label, "")) for label, match in matchers):
            continue
        cond_labels = dict(labels)
        cond_labels.setdefault("site", "")
        summary = rule.summary or f"{rule.metric} {rule.op} {_fig(threshold)}: {{value}}"
        args = {
            **cond_labels,
            "value": _fig(value),
            "threshold": _fig(threshold),
            "op": rule.op,
            "metric": rule.metric,
            "summary": _render(summary, cond_labels, value),
            "runbook": rule.runbook,
        }
        yield Condition(rule.name, cond_labels, rule.severity, value, args)


# --- evaluation -----------------------------------------------------------------------------


def evaluate(
    config: RulesConfig, user_rules: Sequence[UserRule], ctx: RuleContext
) -> list[Condition]:
    """What every enabled built-in rule and every user rule says is wrong now."""
    out: list[Condition] = []
    for name, check in _CHECKS.items():
        if config.rule(name).enabled:
            out.extend(check(config, ctx))
    for user in user_rules:
        out.extend(_user_conditions(user, ctx.series))
    return out


def series_read(user_rules: Iterable[UserRule]) -> frozenset[str]:
    """The names of every series one evaluation reads: the built-in rules', the History's and
    the user rules' metrics."""
    return BUILTIN_SERIES.union(TREND_SERIES, COUNTER_SERIES, (u.metric for u in user_rules))

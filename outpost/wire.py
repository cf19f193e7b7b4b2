"""The wire contract: topics, identities, message types, limits, encode and decode.

docs/protocol.md is the normative description; this module is its executable copy. Both the
agent and the collector import it, and nothing else crosses between them. Everything here is
pure: no sockets, no clocks (times are passed in).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "ACK",
    "DEVICE_UP",
    "EVENTS",
    "EVENT_KIND_RE",
    "MAX_SEQ",
    "METRICS",
    "SCHEMA_VERSION",
    "SLUG_RE",
    "STATUS",
    "Ack",
    "Batch",
    "DecodeFailure",
    "Event",
    "Limits",
    "Sample",
    "Status",
    "TopicParts",
    "decode_ack",
    "decode_batch",
    "decode_status",
    "encode",
    "encode_ranges",
    "encode_status",
    "is_slug",
    "merge_ranges",
    "parse_topic",
    "topic",
]

SCHEMA_VERSION = 1
PROTOCOL_SEGMENT = "v1"

# The sample an agent adds to a device's batch: 1 when the device answered this cycle.
DEVICE_UP = "outpost_device_up"

STATUS = "status"
METRICS = "metrics"
EVENTS = "events"
ACK = "ack"
KINDS = (STATUS, METRICS, EVENTS, ACK)

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")  # \Z: "$" also matches before a final "\n"
METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*\Z")
# Event kinds become a label value and an alerting rule's key: lower-case words, bounded.
EVENT_KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")
RESERVED_LABELS = frozenset({"site", "host"})


def is_slug(value: str) -> bool:
    """True when ``value`` may be used as a site or host identity (and in a topic)."""
    return bool(SLUG_RE.match(value))


# --- topics -------------------------------------------------------------------------------


def topic(prefix: str, site: str, host: str, kind: str) -> str:
    """The topic for one agent's ``kind`` of message: ``<prefix>/v1/<site>/<host>/<kind>``."""
    return f"{prefix}/{PROTOCOL_SEGMENT}/{site}/{host}/{kind}"


class TopicParts(msgspec.Struct, frozen=True):
    site: str
    host: str
    kind: str


def parse_topic(prefix: str, name: str) -> TopicParts | None:
    """Split a topic into site, host and kind; None when it is not one of ours or not slugs."""
    head = f"{prefix}/{PROTOCOL_SEGMENT}/"
    if not name.startswith(head):
        return None
    parts = name[len(head) :].split("/")
    if len(parts) != 3:
        return None
    site, host, kind = parts
    if kind not in KINDS or not is_slug(site) or not is_slug(host):
        return None
    return TopicParts(site, host, kind)


# --- messages -----------------------------------------------------------------------------


# Lengths and finiteness are checked by the decoder itself (in C). Name patterns are checked
# after decoding against a memo of names already found good: a fleet uses a few hundred
# names, and a regex per sample would cost more than the whole decode.
_FLOAT_MAX = 1.7976931348623157e308
MAX_LABEL_VALUE_LEN = 256
MetricName = Annotated[str, msgspec.Meta(max_length=128)]
LabelName = Annotated[str, msgspec.Meta(max_length=128)]
LabelValue = Annotated[str, msgspec.Meta(max_length=MAX_LABEL_VALUE_LEN)]
Finite = Annotated[float, msgspec.Meta(ge=-_FLOAT_MAX, le=_FLOAT_MAX)]


class Sample(msgspec.Struct, omit_defaults=True):
    """One value: a catalogue name, its labels (site and host are added by the collector)."""

    name: MetricName
    value: Finite
    labels: dict[LabelName, LabelValue] = {}
    ts: int | None = None


class Event(msgspec.Struct, omit_defaults=True):
    """A security or operational event. ``attrs`` carries kind-specific detail."""

    kind: str
    severity: Literal["info", "warning", "critical"] = "info"
    ts: int = 0
    message: str = ""
    attrs: dict[str, str] = {}


class Batch(msgspec.Struct, omit_defaults=True):
    """What an agent publishes on ``metrics`` (samples) and ``events`` (events).

    ``seq`` is per agent, shared by both kinds, and never repeats. ``outbox_low`` is the lowest
    seq the agent still holds; ``dropped`` lists the seq ranges it dropped under pressure and
    has not yet seen acknowledged. ``interval`` is the collection interval in seconds, so the
    collector can tell an agent that went quiet. ``device``, when set, names a device of the
    same site that this agent polls on its behalf (SNMP gear): the samples and events belong
    to host ``device``, while the envelope, topic and seq stay the agent's own.
    """

    v: int
    site: str
    host: str
    agent_id: str
    boot_id: str
    seq: int
    ts: int
    outbox_low: int = 0
    dropped: list[tuple[int, int]] = []
    interval: float = 0.0
    device: str = ""
    samples: list[Sample] = []
    events: list[Event] = []


class Status(msgspec.Struct, omit_defaults=True):
    """Retained presence: ``online`` birth, ``offline`` with reason ``lost`` (Last Will) or
    ``shutdown`` (clean stop)."""

    v: int
    status: Literal["online", "offline"]
    site: str = ""
    host: str = ""
    agent_id: str = ""
    boot_id: str = ""
    reason: str = ""
    ts: int = 0


def encode_status(
    status: Literal["online", "offline"],
    reason: str,
    *,
    site: str,
    host: str,
    agent_id: str,
    boot_id: str,
    ts_ms: int,
) -> bytes:
    """The retained status payload an agent publishes (and leaves as its Last Will)."""
    return encode(
        Status(
            v=SCHEMA_VERSION,
            status=status,
            site=site,
            host=host,
            agent_id=agent_id,
            boot_id=boot_id,
            reason=reason,
            ts=ts_ms,
        )
    )


class Ack(msgspec.Struct, omit_defaults=True):
    """Collector -> agent: every seq <= ``upto`` is settled; ``ranges`` were applied above it."""

    v: int
    agent_id: str
    upto: int
    ranges: list[tuple[int, int]] = []


# --- limits and validation ----------------------------------------------------------------


# Seqs are 64-bit signed integers (SQLite's INTEGER): a larger one is refused, not wrapped.
MAX_SEQ = 2**63 - 1


class Limits(msgspec.Struct, frozen=True):
    """What the collector accepts. The agent keeps under the same limits.

    The first seven bound one message. The rest bound what one sender can make the collector
    do or keep (docs/protocol.md, "Limits per sender"): messages per second on its metrics
    and events topics (a token bucket of ``sender_burst`` tokens refilled at
    ``sender_rate_per_second``; 0 turns it off), devices one agent may report for, series
    kept per host, and how far above the seqs already settled for an agent a new seq may be.
    """

    max_payload_bytes: int = 256 * 1024
    max_samples: int = 5000
    max_events: int = 500
    max_labels: int = 16
    max_name_len: int = 128
    max_text_len: int = 2048
    max_ranges: int = 1000
    sender_rate_per_second: float = 50.0
    sender_burst: int = 2000
    max_devices_per_agent: int = 256
    max_series_per_host: int = 10_000
    max_seq_jump: int = 10_000_000


class DecodeFailure(Exception):
    """A message that breaks the contract. ``reason`` is a short counter label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


_batch_decoder = msgspec.json.Decoder(Batch)
_status_decoder = msgspec.json.Decoder(Status)
_ack_decoder = msgspec.json.Decoder(Ack)
_encoder = msgspec.json.Encoder()


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def encode_ranges(ranges: list[tuple[int, int]]) -> bytes:
    return _encoder.encode(ranges)


def _decode(decoder: msgspec.json.Decoder[Any], payload: bytes, limits: Limits) -> Any:
    if len(payload) > limits.max_payload_bytes:
        raise DecodeFailure("oversized", f"{len(payload)} bytes, limit {limits.max_payload_bytes}")
    try:
        return decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise DecodeFailure(_reason(str(exc)), str(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # invalid UTF-8 in a string
        raise DecodeFailure("malformed", str(exc)) from None
    except RecursionError:
        raise DecodeFailure("malformed", "nested too deeply") from None


def _reason(message: str) -> str:
    """A counter label for a decoder error, from the path it names."""
    _, _, path = message.rpartition(" - at `")
    if ".labels" in path:
        return "limits" if "length" in message else "label"
    if path.endswith(".name`"):
        return "name"
    if path.endswith(".value`"):
        return "value"
    return "schema"


def _check_identity(kind: str, site: str, host: str, expect: TopicParts | None) -> None:
    if not is_slug(site) or not is_slug(host):
        raise DecodeFailure("identity", f"site/host in {kind} payload are not slugs")
    if expect is not None and (site, host) != (expect.site, expect.host):
        raise DecodeFailure(
            "topic_mismatch",
            f"payload says {site}/{host}, topic says {expect.site}/{expect.host}",
        )


def _check_text(value: str, limit: int, what: str) -> None:
    if len(value) > limit:
        raise DecodeFailure("limits", f"{what} longer than {limit} characters")


def _check_ranges(ranges: Iterable[tuple[int, int]], limits: Limits, what: str) -> None:
    count = 0
    for lo, hi in ranges:
        count += 1
        if lo < 1 or hi < lo or hi > MAX_SEQ:
            raise DecodeFailure("schema", f"{what}: bad range [{lo}, {hi}]")
    if count > limits.max_ranges:
        raise DecodeFailure("limits", f"{what}: more than {limits.max_ranges} ranges")


_MEMO_LIMIT = 100_000
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
MAX_INTERVAL_SECONDS = 86_400.0  # the agent's own bound on interval_seconds
_GOOD_NAMES: set[str] = set()
_GOOD_LABELS: set[str] = set()
_GOOD_KINDS: set[str] = set()


def _check_metric_name(name: str) -> None:
    if not METRIC_NAME_RE.match(name):
        raise DecodeFailure("name", f"metric name {name[:40]!r} is not valid")
    if len(_GOOD_NAMES) < _MEMO_LIMIT:
        _GOOD_NAMES.add(name)


def _check_event_kind(kind: str) -> None:
    if not EVENT_KIND_RE.match(kind):
        raise DecodeFailure(
            "name", f"event kind {kind[:40]!r} is not valid (lower-case letters, digits, _)"
        )
    if len(_GOOD_KINDS) < _MEMO_LIMIT:
        _GOOD_KINDS.add(kind)


def _check_label_name(key: str, where: str) -> None:
    if not LABEL_NAME_RE.match(key) or key.startswith("__") or key in RESERVED_LABELS:
        raise DecodeFailure("label", f"{where}: label name {key[:40]!r} is not allowed")
    if len(_GOOD_LABELS) < _MEMO_LIMIT:
        _GOOD_LABELS.add(key)


def decode_batch(payload: bytes, expect: TopicParts | None, limits: Limits) -> Batch:
    """Decode and validate a metrics or events message; raise DecodeFailure when it is bad."""
    batch: Batch = _decode(_batch_decoder, payload, limits)
    if batch.v != SCHEMA_VERSION:
        raise DecodeFailure("version", f"schema version {batch.v}, expected {SCHEMA_VERSION}")
    _check_identity("batch", batch.site, batch.host, expect)
    if batch.device and not is_slug(batch.device):
        raise DecodeFailure("identity", "device is not a slug")
    if not batch.agent_id or len(batch.agent_id) > 64:
        raise DecodeFailure("schema", "agent_id must be 1 to 64 characters")
    _check_text(batch.boot_id, 64, "boot_id")
    if not 1 <= batch.seq <= MAX_SEQ:
        raise DecodeFailure("schema", f"seq must be 1 to {MAX_SEQ}, got {batch.seq}")
    if batch.outbox_low < 0 or batch.outbox_low > batch.seq:
        raise DecodeFailure("schema", f"outbox_low {batch.outbox_low} outside 0..seq")
    if not 0 <= batch.ts <= MAX_TS_MS:
        raise DecodeFailure("value", f"ts {batch.ts} out of range 0..{MAX_TS_MS}")
    if not math.isfinite(batch.interval) or not 0 <= batch.interval <= MAX_INTERVAL_SECONDS:
        raise DecodeFailure("value", f"interval must be a number from 0 to {MAX_INTERVAL_SECONDS}")
    _check_ranges(batch.dropped, limits, "dropped")
    if len(batch.samples) > limits.max_samples:
        raise DecodeFailure("limits", f"{len(batch.samples)} samples, limit {limits.max_samples}")
    if len(batch.events) > limits.max_events:
        raise DecodeFailure("limits", f"{len(batch.events)} events, limit {limits.max_events}")
    max_labels = limits.max_labels
    for sample in batch.samples:
        if sample.name not in _GOOD_NAMES:
            _check_metric_name(sample.name)
        if sample.ts is not None and not 0 <= sample.ts <= MAX_TS_MS:
            raise DecodeFailure("value", f"{sample.name}: ts {sample.ts} out of range")
        if sample.labels:
            if len(sample.labels) > max_labels:
                raise DecodeFailure(
                    "limits", f"{sample.name}: {len(sample.labels)} labels, limit {max_labels}"
                )
            for key in sample.labels:
                if key not in _GOOD_LABELS:
                    _check_label_name(key, sample.name)
    for event in batch.events:
        if event.kind not in _GOOD_KINDS:
            _check_event_kind(event.kind)
        if not 0 <= event.ts <= MAX_TS_MS:
            raise DecodeFailure("value", f"event {event.kind}: ts {event.ts} out of range")
        _check_text(event.message, limits.max_text_len, "event message")
        if len(event.attrs) > limits.max_labels * 2:
            raise DecodeFailure("limits", f"event {event.kind}: too many attrs")
        for key, value in event.attrs.items():
            _check_text(key, limits.max_name_len, "event attr name")
            _check_text(value, limits.max_text_len, "event attr value")
    return batch


def decode_status(payload: bytes, expect: TopicParts | None, limits: Limits) -> Status:
    status: Status = _decode(_status_decoder, payload, limits)
    if status.v != SCHEMA_VERSION:
        raise DecodeFailure("version", f"schema version {status.v}, expected {SCHEMA_VERSION}")
    if status.site or status.host:
        _check_identity("status", status.site, status.host, expect)
    _check_text(status.agent_id, 64, "agent_id")
    _check_text(status.boot_id, 64, "boot_id")
    _check_text(status.reason, 64, "reason")
    return status


def decode_ack(payload: bytes, limits: Limits) -> Ack:
    ack: Ack = _decode(_ack_decoder, payload, limits)
    if ack.v != SCHEMA_VERSION:
        raise DecodeFailure("version", f"schema version {ack.v}, expected {SCHEMA_VERSION}")
    if not 0 <= ack.upto <= MAX_SEQ:
        raise DecodeFailure("schema", f"upto must be 0 to {MAX_SEQ}")
    _check_ranges(ack.ranges, limits, "ranges")
    return ack


# --- seq ranges ---------------------------------------------------------------------------


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort and merge inclusive integer ranges, joining adjacent ones."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out

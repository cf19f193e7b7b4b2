"""Properties of the wire decoders and of the collector's ingest and fleet state, over generated
input: arbitrary bytes, arbitrary JSON (deep nesting, huge integers, NaN and infinities, lone
surrogates) and batches that are valid but for one field.

- The decoders raise nothing but ``DecodeFailure``, with a reason docs/metrics.md lists, and
  whatever they return keeps the contract of docs/protocol.md.
- ``Ingest.handle`` never raises; what it accepts keeps the contract, and /metrics renders it.
- The seq bookkeeping does not depend on the order batches arrive in: any permutation of a set
  of batches, with duplicates and declared drops, gives the same ack; ``lost`` stays 0 while
  ``outbox_low`` never passes a seq the collector has not settled, and counts exactly the
  seqs it passes; duplicates are counted exactly.
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from collector.exporter import FleetCollector
from collector.ingest import RESULTS, Ingest
from collector.state import FleetState
from outpost import wire

T0 = 1_700_000_000.0
PREFIX = "outpost"
DEFAULT = wire.Limits()
# Small limits, so that short generated messages cross them.
SMALL = wire.Limits(
    max_payload_bytes=16 * 1024,
    max_samples=4,
    max_events=3,
    max_labels=3,
    max_text_len=40,
    max_ranges=3,
)
INT64_MAX = 2**63 - 1  # seqs are stored and exported as 64-bit integers
METRICS_MD = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"

FAST = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


def _documented_reasons() -> set[str]:
    """The refusal reasons docs/metrics.md lists for outpost_collector_invalid_messages_total."""
    for line in METRICS_MD.read_text(encoding="utf-8").splitlines():
        if line.startswith("| `outpost_collector_invalid_messages_total`"):
            meaning = line.split("|")[4]
            return set(re.findall(r"`([a-z_]+)`", meaning))
    raise AssertionError("docs/metrics.md lacks outpost_collector_invalid_messages_total")


REASONS = _documented_reasons()


# --- strategies ----------------------------------------------------------------------------

# Any character, lone surrogates included (hypothesis leaves those out by default).
chars = st.characters() | st.characters(categories=["Cs"])
texts = st.text(chars, max_size=12)
huge_ints = st.sampled_from(
    [2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 2**64 + 1, -(2**63) - 1, 10**30, 10**400]
)
floats = st.floats(allow_nan=True, allow_infinity=True)
scalars = st.none() | st.booleans() | st.integers() | huge_ints | floats | texts
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=16,
)

good_slugs = st.sampled_from(["s1", "h1", "site-a", "srv1", "0", "a" * 63, "x-y-z"])
bad_slugs = st.sampled_from(
    ["", "S1", "-a", "a/b", "a+b", "#", "a" * 64, "a\n", "站点", "a b", "a.b", "a_b"]
)
slugs = good_slugs | bad_slugs | texts
kinds = st.sampled_from([wire.METRICS, wire.EVENTS, wire.STATUS, wire.ACK, "other", ""])


@st.composite
def topics(draw: st.DrawFn) -> str:
    prefix = draw(st.sampled_from([PREFIX, PREFIX, "other", ""]))
    segment = draw(st.sampled_from(["v1", "v1", "v2"]))
    parts = [prefix, segment, draw(slugs), draw(slugs), draw(kinds)]
    if draw(st.booleans()):
        parts.append(draw(texts))
    return "/".join(parts) if draw(st.integers(0, 9)) else draw(texts)


def _maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the valid value, sometimes anything at all."""
    return st.one_of(valid, valid, valid, json_values)


# A float JSON can write but no double holds: put in place of this marker by encode_json.
OVERFLOW = "\x00overflow\x00"

metric_names = st.sampled_from(
    ["outpost_load1", "outpost_cpu_seconds_total", "a:b_c", "_x", "1bad", "bad-name", "", "a" * 129]
)
label_names = st.sampled_from(
    ["mode", "interface", "_l", "site", "host", "__name__", "1x", "a-b", "", "l" * 128, "l" * 129]
)
label_values = st.sampled_from(["", "v", "值", "x" * 256, "x" * 257]) | texts
sample_values = st.one_of(floats, st.integers(), huge_ints, st.booleans(), st.none(), texts)
good_metric_names = st.sampled_from(["outpost_load1", "outpost_cpu_seconds_total", "a:b_c", "_x"])
good_label_names = st.sampled_from(["mode", "interface", "_l", "dev0", "L" * 128])
good_label_values = st.sampled_from(["", "v", "值", "x" * 256]) | st.text(max_size=8)
good_texts = st.text(max_size=8)
finite = st.floats(allow_nan=False, allow_infinity=False)
good_ranges = st.lists(
    st.tuples(st.integers(1, 40), st.integers(0, 5)).map(lambda r: (r[0], r[0] + r[1])),
    max_size=4,
)
good_samples = st.fixed_dictionaries(
    {"name": good_metric_names, "value": finite | st.integers(-(2**53), 2**53)},
    optional={
        "labels": st.dictionaries(good_label_names, good_label_values, max_size=4),
        "ts": st.integers(0, wire.MAX_TS_MS),
    },
)
good_events = st.fixed_dictionaries(
    {"kind": st.sampled_from(["ssh_bruteforce", "outage", "k" * 64])},
    optional={
        "severity": st.sampled_from(["info", "warning", "critical"]),
        "ts": st.integers(0, wire.MAX_TS_MS),
        "message": st.sampled_from(["", "m" * 40]) | good_texts,
        "attrs": st.dictionaries(good_texts, good_texts, max_size=7),
    },
)
# Values just past what is allowed somewhere, and things of the wrong kind.
near_misses = st.sampled_from(
    [None, True, 0, -1, 2**63, 2**64, 10**400, OVERFLOW, "-" + OVERFLOW, 1e308, "", "x" * 257,
     "k" * 65, "m" * 41, "\ud800", "a\udfff", "NaN", [], {}, [[0, 1]], [[3, 2]], [[1, 2**64]],
     "site", "host", "__name__", "1bad", "bad-name", "a" * 129, "S1", "a/b", "+", "#",
     {"site": "x"}, {"l" * 129: "v"}, {f"l{i}": "v" for i in range(17)}]
)  # fmt: skip
bad_values = near_misses | bad_slugs | json_values
ranges = st.lists(st.tuples(st.integers(-2, 50), st.integers(-2, 50)), max_size=5)
bad_keys = st.sampled_from(["site", "host", "__name__", "1x", "a-b", "", "l" * 129, "a.b"]) | texts


@st.composite
def batch_docs(draw: st.DrawFn, site: str | None = None, host: str | None = None) -> Any:
    """A batch as JSON data: valid, then with up to two values (at any depth) replaced by a
    near miss or by anything at all, or a key removed or renamed."""
    seq = draw(st.integers(1, 50))
    doc: dict[str, Any] = {
        "v": 1,
        "site": site or draw(good_slugs),
        "host": host or draw(good_slugs),
        "agent_id": draw(st.sampled_from(["agent-1", "agent-2", "a" * 64])),
        "boot_id": draw(st.sampled_from(["b", "", "b" * 64])),
        "seq": seq,
        "ts": draw(st.integers(0, wire.MAX_TS_MS)),
    }
    optional = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "outbox_low": st.integers(0, seq),
                "dropped": good_ranges,
                "interval": st.floats(0, 86_400),
                "device": good_slugs,
                "samples": st.lists(good_samples, max_size=5),
                "events": st.lists(good_events, max_size=4),
            },
        )
    )
    doc.update(optional)
    for _ in range(draw(st.integers(0, 2))):
        slots = list(_slots(doc))
        container, key = draw(st.sampled_from(slots))
        how = draw(st.integers(0, 9))
        if how == 0 and isinstance(container, dict):
            del container[key]
        elif how < 4 and isinstance(container, dict):
            container[draw(bad_keys)] = container.pop(key)
        else:
            container[key] = copy.deepcopy(draw(bad_values))  # never share a mutable
    if draw(st.integers(0, 29)) == 0:
        return draw(json_values)  # not even an object
    return doc


def _slots(value: Any) -> Any:
    """Every (container, key) in a JSON value, depth first."""
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in list(items):
        yield value, key
        if isinstance(item, dict | list):
            yield from _slots(item)


def encode_json(value: Any, ascii_only: bool) -> bytes:
    """JSON as an agent might send it: lone surrogates escaped, or as (invalid) UTF-8 bytes;
    NaN and infinities as the bare words Python writes, and 1e999 for OVERFLOW."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    text = text.replace(json.dumps(OVERFLOW), "1e999")
    return text.encode("utf-8", "surrogatepass")


@st.composite
def payloads(draw: st.DrawFn, docs: st.SearchStrategy[Any]) -> bytes:
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(st.binary(max_size=200))
    data = encode_json(draw(docs), ascii_only=draw(st.booleans()))
    if choice == 1 and data:  # cut short, or with a byte changed
        cut = draw(st.integers(0, len(data) - 1))
        return data[:cut] + draw(st.binary(max_size=3))
    return data


status_docs = st.fixed_dictionaries(
    {"v": _maybe(st.just(1)), "status": _maybe(st.sampled_from(["online", "offline", "up"]))},
    optional={
        "site": _maybe(slugs),
        "host": _maybe(slugs),
        "agent_id": _maybe(st.sampled_from(["a", "a" * 65])),
        "boot_id": _maybe(st.sampled_from(["b", "b" * 65])),
        "reason": _maybe(st.sampled_from(["lost", "shutdown", "r" * 65])),
        "ts": _maybe(st.integers()),
    },
)
ack_docs = st.fixed_dictionaries(
    {
        "v": _maybe(st.just(1)),
        "agent_id": _maybe(st.just("agent-1")),
        "upto": _maybe(st.integers() | huge_ints),
    },
    optional={"ranges": _maybe(ranges)},
)

DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_LABELS = (
    b'{"v":1,"site":"s1","host":"h1","agent_id":"a","boot_id":"b","seq":1,"ts":0,'
    b'"samples":[{"name":"x","value":1,"labels":' + b'{"a":' * 5000 + b'"v"' + b"}" * 5000 + b"}]}"
)
SURROGATE = (
    b'{"v":1,"site":"s1","host":"h1","agent_id":"a","boot_id":"b","seq":1,"ts":0,'
    b'"samples":[{"name":"x","value":1,"labels":{"l":"\\ud800"}}]}'
)
HUGE_VALUE = (
    b'{"v":1,"site":"s1","host":"h1","agent_id":"a","boot_id":"b","seq":1,"ts":0,'
    b'"samples":[{"name":"x","value":1e999}]}'
)


# --- the contract ---------------------------------------------------------------------------


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _ranges_ok(found: list[tuple[int, int]], limits: wire.Limits) -> None:
    assert len(found) <= limits.max_ranges
    for lo, hi in found:
        assert 1 <= lo <= hi <= INT64_MAX


def check_batch(batch: wire.Batch, expect: wire.TopicParts | None, limits: wire.Limits) -> None:
    """Everything docs/protocol.md promises about a batch the collector accepted."""
    assert batch.v == wire.SCHEMA_VERSION
    assert wire.is_slug(batch.site) and wire.is_slug(batch.host)
    if expect is not None:
        assert (batch.site, batch.host) == (expect.site, expect.host)
    assert batch.device == "" or wire.is_slug(batch.device)
    assert 1 <= len(batch.agent_id) <= 64 and len(batch.boot_id) <= 64
    assert 1 <= batch.seq <= INT64_MAX and 0 <= batch.outbox_low <= batch.seq
    assert 0 <= batch.ts <= wire.MAX_TS_MS
    assert math.isfinite(batch.interval) and batch.interval >= 0
    _ranges_ok(batch.dropped, limits)
    assert len(batch.samples) <= limits.max_samples
    for sample in batch.samples:
        assert wire.METRIC_NAME_RE.match(sample.name) and len(sample.name) <= 128
        assert isinstance(sample.value, float) and math.isfinite(sample.value)
        assert sample.ts is None or 0 <= sample.ts <= wire.MAX_TS_MS
        assert len(sample.labels) <= limits.max_labels
        for key, value in sample.labels.items():
            assert wire.LABEL_NAME_RE.match(key) and not key.startswith("__")
            assert key not in wire.RESERVED_LABELS
            assert isinstance(value, str) and len(value) <= wire.MAX_LABEL_VALUE_LEN
            assert _utf8(value)
    assert len(batch.events) <= limits.max_events
    for event in batch.events:
        assert wire.EVENT_KIND_RE.match(event.kind)
        assert event.severity in ("info", "warning", "critical")
        assert 0 <= event.ts <= wire.MAX_TS_MS
        assert len(event.message) <= limits.max_text_len and _utf8(event.message)
        assert len(event.attrs) <= 2 * limits.max_labels
        for key, value in event.attrs.items():
            assert len(key) <= limits.max_name_len and len(value) <= limits.max_text_len
            assert _utf8(key) and _utf8(value)


def check_status(status: wire.Status, expect: wire.TopicParts | None) -> None:
    assert status.v == wire.SCHEMA_VERSION and status.status in ("online", "offline")
    if status.site or status.host:
        assert wire.is_slug(status.site) and wire.is_slug(status.host)
        if expect is not None:
            assert (status.site, status.host) == (expect.site, expect.host)
    for text in (status.agent_id, status.boot_id, status.reason):
        assert len(text) <= 64 and _utf8(text)


def refused(exc: wire.DecodeFailure) -> None:
    assert exc.reason in REASONS, f"reason {exc.reason!r} is not in docs/metrics.md"
    assert isinstance(exc.detail, str)


# --- the decoders ---------------------------------------------------------------------------


@FAST
@given(prefix=st.sampled_from([PREFIX, "p", ""]), name=topics() | texts)
@example(prefix=PREFIX, name="outpost/v1/s1/h1/metrics")
@example(prefix=PREFIX, name="outpost/v1/s1/h1\n/metrics")
def test_parse_topic_finds_only_slug_identities(prefix: str, name: str) -> None:
    parts = wire.parse_topic(prefix, name)
    if parts is not None:
        assert wire.is_slug(parts.site) and wire.is_slug(parts.host)
        assert parts.kind in (wire.STATUS, wire.METRICS, wire.EVENTS, wire.ACK)
        assert wire.topic(prefix, parts.site, parts.host, parts.kind) == name


@st.composite
def batch_messages(draw: st.DrawFn) -> tuple[str, bytes]:
    """A batch and its topic: mostly the topic the batch names, sometimes another."""
    site, host = draw(good_slugs), draw(good_slugs)
    kind = draw(st.sampled_from([wire.METRICS, wire.EVENTS]))
    topic = wire.topic(PREFIX, site, host, kind) if draw(st.integers(0, 4)) else draw(topics())
    return topic, draw(payloads(batch_docs(site, host)))


@FAST
@given(message=batch_messages(), limits=st.sampled_from([DEFAULT, SMALL]))
def test_decode_batch_raises_only_decode_failure(
    message: tuple[str, bytes], limits: wire.Limits
) -> None:
    decode_batch_checked(*message, limits)


@FAST
@given(topic=topics(), payload=payloads(batch_docs()), limits=st.sampled_from([DEFAULT, SMALL]))
@example(topic="outpost/v1/s1/h1/metrics", payload=DEEP, limits=DEFAULT)
@example(topic="outpost/v1/s1/h1/metrics", payload=DEEP_LABELS, limits=DEFAULT)
@example(topic="outpost/v1/s1/h1/metrics", payload=SURROGATE, limits=DEFAULT)
@example(topic="outpost/v1/s1/h1/metrics", payload=HUGE_VALUE, limits=DEFAULT)
def test_decode_batch_on_any_topic_raises_only_decode_failure(
    topic: str, payload: bytes, limits: wire.Limits
) -> None:
    decode_batch_checked(topic, payload, limits)


def decode_batch_checked(topic: str, payload: bytes, limits: wire.Limits) -> None:
    expect = wire.parse_topic(PREFIX, topic)
    try:
        batch = wire.decode_batch(payload, expect, limits)
    except wire.DecodeFailure as exc:
        refused(exc)
        return
    assert len(payload) <= limits.max_payload_bytes
    check_batch(batch, expect, limits)


def _json_form(text: str) -> str:
    """A string as a JSON decoder reads it back (escaped surrogate pairs join up)."""
    return str(json.loads(json.dumps(text)))


def _finite(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _label_ok(key: Any, value: Any) -> bool:
    key, value = _json_form(key), _json_form(value)
    return (
        bool(wire.LABEL_NAME_RE.match(key))
        and len(key) <= 128
        and not key.startswith("__")
        and key not in ("site", "host")
        and len(value) <= 256
        and _utf8(key)
        and _utf8(value)
    )


@FAST
@given(
    name=metric_names | texts,
    value=sample_values,
    labels=st.dictionaries(label_names | texts, label_values, max_size=5),
    limits=st.sampled_from([DEFAULT, SMALL]),
)
@example(name="x", value=1.0, labels={"l": "\ud800"}, limits=DEFAULT)
@example(name="x", value=1.0, labels={"l": "\ud83d\ude00"}, limits=DEFAULT)
@example(name="x", value=10**309, labels={}, limits=DEFAULT)
@example(name="x" * 128, value=-(10**308), labels={"site": "a"}, limits=DEFAULT)
def test_a_sample_is_accepted_exactly_when_the_protocol_allows_it(
    name: str, value: Any, labels: dict[str, str], limits: wire.Limits
) -> None:
    """docs/protocol.md's rules for one sample, as an oracle: accepted if and only if kept."""
    doc = {
        "v": 1, "site": "s1", "host": "h1", "agent_id": "a", "boot_id": "b", "seq": 1, "ts": 0,
        "samples": [{"name": name, "value": value, "labels": labels}],
    }  # fmt: skip
    payload = json.dumps(doc).encode()  # lone surrogates escaped: valid JSON, invalid text
    name_ok = bool(wire.METRIC_NAME_RE.match(_json_form(name))) and len(_json_form(name)) <= 128
    allowed = (
        name_ok
        and _utf8(_json_form(name))
        and _finite(value)
        and len(labels) <= limits.max_labels
        and all(_label_ok(k, v) for k, v in labels.items())
    )
    try:
        batch = wire.decode_batch(payload, None, limits)
    except wire.DecodeFailure as exc:
        refused(exc)
        assert not allowed, f"refused ({exc}) what the protocol allows"
        return
    assert allowed, "accepted what the protocol refuses"
    check_batch(batch, None, limits)


@FAST
@given(topic=topics(), payload=payloads(status_docs), limits=st.sampled_from([DEFAULT, SMALL]))
@example(topic="outpost/v1/s1/h1/status", payload=DEEP, limits=DEFAULT)
def test_decode_status_raises_only_decode_failure(
    topic: str, payload: bytes, limits: wire.Limits
) -> None:
    expect = wire.parse_topic(PREFIX, topic)
    try:
        status = wire.decode_status(payload, expect, limits)
    except wire.DecodeFailure as exc:
        refused(exc)
        return
    check_status(status, expect)


@FAST
@given(payload=payloads(ack_docs), limits=st.sampled_from([DEFAULT, SMALL]))
@example(payload=DEEP, limits=DEFAULT)
def test_decode_ack_raises_only_decode_failure(payload: bytes, limits: wire.Limits) -> None:
    try:
        ack = wire.decode_ack(payload, limits)
    except wire.DecodeFailure as exc:
        refused(exc)
        return
    assert ack.v == wire.SCHEMA_VERSION and 0 <= ack.upto <= INT64_MAX
    _ranges_ok(ack.ranges, limits)


# --- ingest -------------------------------------------------------------------------------


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, bytes]:
    """A message as the collector's subscription may see one: mostly on a topic of ours,
    often with a payload that matches it."""
    site, host = draw(good_slugs), draw(good_slugs)
    kind = draw(kinds)
    topic = wire.topic(PREFIX, site, host, kind) if draw(st.integers(0, 5)) else draw(topics())
    if kind == wire.STATUS:
        return topic, draw(payloads(status_docs) | st.just(b""))
    return topic, draw(payloads(batch_docs(site, host)))


def render(ingest: Ingest, now: float) -> str:
    registry = CollectorRegistry()
    registry.register(FleetCollector(ingest, clock=lambda: now))
    return generate_latest(registry).decode()


@settings(FAST, max_examples=60)
@given(
    batch=st.lists(messages(), min_size=1, max_size=12), limits=st.sampled_from([DEFAULT, SMALL])
)
def test_ingest_never_raises_and_accepts_only_the_contract(
    batch: list[tuple[str, bytes]], limits: wire.Limits
) -> None:
    ingest = Ingest(FleetState(stale_after=60), limits, PREFIX)
    now = T0
    for n, (topic, payload) in enumerate(batch, 1):
        now = T0 + 10 * n  # well apart: no sender is too fast
        result = ingest.handle(topic, payload, now)
        assert result in RESULTS
        assert sum(ingest.messages.values()) == n
        if result == "invalid":
            continue
        parts = wire.parse_topic(PREFIX, topic)
        assert parts is not None and parts.kind != wire.ACK
        if parts.kind == wire.STATUS:
            if payload:
                check_status(wire.decode_status(payload, parts, limits), parts)
            continue
        # The collector accepted exactly what the decoder accepts.
        accepted = wire.decode_batch(payload, parts, limits)
        check_batch(accepted, parts, limits)
        if parts.kind == wire.METRICS:
            assert not accepted.events
        else:
            assert not accepted.samples
    assert set(ingest.invalid) <= REASONS
    assert sum(ingest.invalid.values()) == ingest.messages["invalid"]
    for (site, host), state in ingest.state.hosts.items():
        assert wire.is_slug(site) and wire.is_slug(host)
        for sample in state.samples:
            assert math.isfinite(sample.value) and len(sample.labels) <= limits.max_labels
    # Whatever was accepted renders on /metrics, and the acks owed encode.
    text = render(ingest, now)
    assert "outpost_collector_messages_total" in text
    for _site, _host, ack, data in ingest.take_acks():
        assert wire.decode_ack(wire.encode(ack), DEFAULT) == ack and data


# --- seq bookkeeping ----------------------------------------------------------------------

SITE, HOST, AGENT = "site-a", "srv1", "agent-1"
TOPIC = wire.topic(PREFIX, SITE, HOST, wire.METRICS)


def batch_payload(seq: int, outbox_low: int, dropped: list[tuple[int, int]]) -> bytes:
    return wire.encode(
        wire.Batch(
            v=wire.SCHEMA_VERSION,
            site=SITE,
            host=HOST,
            agent_id=AGENT,
            boot_id="boot",
            seq=seq,
            ts=seq * 1000,
            outbox_low=outbox_low,
            dropped=dropped,
            interval=1.0,
            samples=[wire.Sample("outpost_load1", float(seq))],
        )
    )


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[set[int], set[int], list[int]]:
    """Seqs sent (1 always among them), seqs declared dropped (never sent, below the highest
    sent), and the order the copies arrive in (every sent seq once or more). The other seqs
    below the highest sent are held back in the agent's outbox."""
    top = draw(st.integers(1, 30))
    sent = {1} | draw(st.sets(st.integers(1, top), max_size=top))
    unsent = sorted(set(range(2, max(sent))) - sent)
    dropped = draw(st.sets(st.sampled_from(unsent), max_size=len(unsent))) if unsent else set()
    copies = sorted(sent) + draw(st.lists(st.sampled_from(sorted(sent)), max_size=10))
    return sent, dropped, draw(st.permutations(copies))


def held_back(sent: set[int], dropped: set[int]) -> set[int]:
    """Seqs below the highest sent that were neither sent nor dropped: still in the outbox."""
    return set(range(1, max(sent))) - sent - dropped


def deliver(order: list[int], sent: set[int], dropped: set[int]) -> Ingest:
    """Send the copies in ``order`` as an agent would: ``outbox_low`` is the lowest seq it
    still holds (sent and not yet applied, or held back; never above the batch's own seq),
    and each batch declares the dropped seqs below its own."""
    ingest = Ingest(FleetState(stale_after=60), DEFAULT, PREFIX)
    applied: set[int] = set()
    held = held_back(sent, dropped)
    for n, seq in enumerate(order):
        low = min([s for s in sent if s not in applied] + [*held, seq])
        declared = wire.merge_ranges((d, d) for d in dropped if d < seq)
        result = ingest.handle(TOPIC, batch_payload(seq, low, declared), T0 + 10 * n)
        assert result == ("duplicate" if seq in applied else "accepted"), (seq, result)
        applied.add(seq)
    return ingest


def expected_ack(settled: set[int]) -> tuple[int, list[tuple[int, int]]]:
    merged = wire.merge_ranges((s, s) for s in settled)
    if merged and merged[0][0] == 1:
        return merged[0][1], merged[1:]
    return 0, merged


def ack_of(ingest: Ingest) -> tuple[int, list[tuple[int, int]]]:
    (ack,) = [a for _s, _h, a, _d in ingest.take_acks() if a.agent_id == AGENT]
    return ack.upto, [tuple(r) for r in ack.ranges]  # type: ignore[misc]


@settings(FAST, max_examples=300)
@given(deliveries())
def test_any_order_gives_the_same_track_and_nothing_lost(
    case: tuple[set[int], set[int], list[int]],
) -> None:
    sent, dropped, order = case
    shuffled = deliver(order, sent, dropped)
    in_order = deliver(sorted(order), sent, dropped)
    want = expected_ack(sent | dropped)
    assert ack_of(shuffled) == ack_of(in_order) == want
    for ingest in (shuffled, in_order):
        track = ingest.state.track(AGENT)
        assert track.lost == 0 and ingest.state.lost_total == 0
        assert track.dropped == len(dropped) == ingest.state.dropped_total
        assert track.duplicates == len(order) - len(sent) == ingest.messages["duplicate"]
        assert ingest.messages["accepted"] == len(sent) and ingest.messages["invalid"] == 0
        # The newest batch's samples are shown, whatever the order.
        (sample,) = ingest.state.hosts[SITE, HOST].samples
        assert sample.value == max(sent)


@settings(FAST, max_examples=200)
@given(deliveries(), st.integers(1, 5))
def test_lost_counts_exactly_the_seqs_outbox_low_passes(
    case: tuple[set[int], set[int], list[int]], beyond: int
) -> None:
    """A batch whose ``outbox_low`` passes seqs never applied nor declared dropped (the ones
    held back, and those between the highest sent and it): those, and only those, are lost."""
    sent, dropped, order = case
    ingest = deliver(order, sent, dropped)
    last = max(sent) + beyond
    declared = wire.merge_ranges((d, d) for d in dropped)
    assert ingest.handle(TOPIC, batch_payload(last, last, declared), T0 + 10**6) == "accepted"
    track = ingest.state.track(AGENT)
    passed = len(held_back(sent, dropped)) + beyond - 1
    assert track.lost == passed == ingest.state.lost_total
    assert track.dropped == len(dropped)
    assert ack_of(ingest) == (last, [])


# --- known gaps ---------------------------------------------------------------------------


def _doc(**fields: Any) -> bytes:
    body: dict[str, Any] = {
        "v": 1,
        "site": SITE,
        "host": HOST,
        "agent_id": AGENT,
        "boot_id": "boot",
        "seq": 1,
        "ts": 1_700_000_000_000,
        "samples": [{"name": "outpost_load1", "value": 1.0}],
    }
    body.update(fields)
    return json.dumps(body).encode()


def test_a_batch_on_another_hosts_topic_cannot_settle_this_agents_seqs() -> None:
    """Seq tracks are bound to their topic: a client allowed on another host's topic that
    claims this agent's id makes a track of its own, and this agent's seqs stay its own."""
    ingest = Ingest(FleetState(stale_after=60), DEFAULT, PREFIX)
    assert ingest.handle(TOPIC, _doc(seq=1), T0) == "accepted"
    other = wire.topic(PREFIX, "site-b", "srv2", wire.METRICS)
    ingest.handle(other, _doc(site="site-b", host="srv2", seq=10**6, outbox_low=10**6), T0 + 10)
    assert ingest.handle(TOPIC, _doc(seq=2), T0 + 20) == "accepted"
    assert ingest.state.hosts[SITE, HOST].batch_seq == 2
    assert ingest.state.tracks[(SITE, HOST, AGENT)].upto == 2
    assert ingest.state.lost_total == 0

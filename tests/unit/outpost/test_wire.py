"""Tests for outpost.wire: topics, batch/status/ack decoding and every refusal reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

from outpost import wire
from outpost.wire import DecodeFailure, Limits, TopicParts

LIMITS = Limits()
TOPIC = TopicParts("s1", "h1", wire.METRICS)


def envelope(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "v": 1,
        "site": "s1",
        "host": "h1",
        "agent_id": "agent-1",
        "boot_id": "boot-1",
        "seq": 5,
        "ts": 1_700_000_000_000,
    }
    base.update(fields)
    return base


def payload(**fields: Any) -> bytes:
    return json.dumps(envelope(**fields)).encode()


def sample(name: str = "outpost_load1", value: Any = 0.5, **labels: str) -> dict[str, Any]:
    return {"name": name, "value": value, "labels": labels}


def refused(data: bytes, expect: TopicParts | None = TOPIC, limits: Limits = LIMITS) -> str:
    with pytest.raises(DecodeFailure) as info:
        wire.decode_batch(data, expect, limits)
    return info.value.reason


# --- topics ---------------------------------------------------------------------------------


def test_topic_is_built_and_parsed_back() -> None:
    name = wire.topic("outpost", "county-3", "srv01", wire.METRICS)
    assert name == "outpost/v1/county-3/srv01/metrics"
    assert wire.parse_topic("outpost", name) == TopicParts("county-3", "srv01", "metrics")


@pytest.mark.parametrize("kind", [wire.STATUS, wire.METRICS, wire.EVENTS, wire.ACK])
def test_every_kind_parses(kind: str) -> None:
    assert wire.parse_topic("pfx", f"pfx/v1/s1/h1/{kind}") == TopicParts("s1", "h1", kind)


@pytest.mark.parametrize(
    "name",
    [
        "other/v1/s1/h1/metrics",  # wrong prefix
        "outpostx/v1/s1/h1/metrics",
        "outpost/v2/s1/h1/metrics",  # wrong version segment
        "outpost/v1/s1/h1/metrics/extra",  # extra segment
        "outpost/v1/s1/metrics",  # missing segment
        "outpost/v1/s1/h1/logs",  # unknown kind
        "outpost/v1/S1/h1/metrics",  # not a slug: upper case
        "outpost/v1/s1/-h1/metrics",  # not a slug: leading dash
        "outpost/v1/s_1/h1/metrics",  # not a slug: underscore
        "outpost/v1/乡镇/h1/metrics",  # not a slug: human name
        "outpost/v1/s1/" + "h" * 64 + "/metrics",  # too long
        "outpost/v1//h1/metrics",  # empty identity
        "outpost/v1/+/h1/metrics",  # wildcards as identities
        "outpost/v1/s1/#/metrics",
        "outpost/v1/s+1/h1/metrics",
        "outpost/v1/s1/h#1/metrics",
        "outpost/v1/s1/a/b/metrics",  # a '/' in an identity adds a level
        "outpost/v1/s1\n/h1/metrics",  # '$' would match before a final newline
    ],
)
def test_parse_topic_refuses(name: str) -> None:
    assert wire.parse_topic("outpost", name) is None


@pytest.mark.parametrize("value", ["a", "0", "site-1", "a" * 63])
def test_slugs(value: str) -> None:
    assert wire.is_slug(value)


@pytest.mark.parametrize("value", ["", "A", "-a", "a/b", "a+b", "a#b", "a b", "a" * 64, "a\n"])
def test_not_slugs(value: str) -> None:
    assert not wire.is_slug(value)


# --- decode_batch: accepted -----------------------------------------------------------------


def test_decode_batch_happy_path() -> None:
    data = payload(
        outbox_low=3,
        dropped=[[1, 2]],
        interval=15.0,
        samples=[
            sample("outpost_network_receive_bytes_total", 1234, interface="eth0"),
            {"name": "outpost_load1", "value": 0.25, "ts": 1_700_000_000_500},
        ],
    )
    batch = wire.decode_batch(data, TOPIC, LIMITS)
    assert (batch.site, batch.host, batch.agent_id, batch.boot_id) == (
        "s1",
        "h1",
        "agent-1",
        "boot-1",
    )
    assert (batch.seq, batch.outbox_low, batch.dropped, batch.interval) == (5, 3, [(1, 2)], 15.0)
    assert batch.samples == [
        wire.Sample("outpost_network_receive_bytes_total", 1234.0, {"interface": "eth0"}),
        wire.Sample("outpost_load1", 0.25, {}, 1_700_000_000_500),
    ]
    assert batch.events == []


def test_decode_batch_events_and_unknown_fields() -> None:
    data = payload(
        future_field={"nested": [1, 2, 3]},
        events=[
            {"kind": "login_failed", "severity": "warning", "ts": 1, "attrs": {"user": "root"}},
            {"kind": "port_opened"},
        ],
    )
    batch = wire.decode_batch(data, None, LIMITS)
    assert batch.events == [
        wire.Event("login_failed", "warning", 1, "", {"user": "root"}),
        wire.Event("port_opened"),
    ]


def test_encode_round_trips() -> None:
    batch = wire.Batch(
        v=1,
        site="s1",
        host="h1",
        agent_id="a",
        boot_id="",
        seq=1,
        ts=2,
        samples=[wire.Sample("x", 1.5, {"k": "中文"})],
    )
    assert wire.decode_batch(wire.encode(batch), TOPIC, LIMITS) == batch


def test_label_values_may_be_any_unicode() -> None:
    data = json.dumps(envelope(samples=[sample(k="村委会 😀")]), ensure_ascii=True).encode()
    assert wire.decode_batch(data, TOPIC, LIMITS).samples[0].labels == {"k": "村委会 😀"}


# --- decode_batch: refused, one reason at a time --------------------------------------------


def test_oversized() -> None:
    data = payload(samples=[sample()] * 10)
    assert refused(data, limits=Limits(max_payload_bytes=len(data) - 1)) == "oversized"
    wire.decode_batch(data, TOPIC, Limits(max_payload_bytes=len(data)))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{not json",
        b'{"v": 1,',
        b"NaN",
        payload(samples=[sample(value=1)]).replace(b'"value": 1', b'"value": NaN'),
        payload(samples=[sample(value=1)]).replace(b'"value": 1', b'"value": Infinity'),
        payload() + b"garbage",
    ],
)
def test_malformed(data: bytes) -> None:
    assert refused(data) == "malformed"


@pytest.mark.parametrize(
    "data",
    [
        payload(seq="5"),  # wrong type
        payload(ts=1.5),
        payload(seq=0),
        payload(seq=-1),
        payload(seq=5, outbox_low=6),  # outbox_low above seq
        payload(outbox_low=-1),
        payload(dropped=[[3, 2]]),
        payload(dropped=[[0, 2]]),
        payload(samples=[{"value": 1}]),  # missing field
        payload(events=[{"kind": "x", "severity": "fatal"}]),
        b"[]",
        json.dumps({k: v for k, v in envelope().items() if k != "agent_id"}).encode(),
        payload(agent_id=""),
        payload(agent_id="a" * 65),
    ],
)
def test_schema(data: bytes) -> None:
    assert refused(data) == "schema"


def test_version() -> None:
    assert refused(payload(v=2)) == "version"


@pytest.mark.parametrize("field", ["site", "host"])
@pytest.mark.parametrize("value", ["S1", "a/b", "+", "#", "", "s1\n"])
def test_identity(field: str, value: str) -> None:
    assert refused(payload(**{field: value})) == "identity"
    assert refused(payload(**{field: value}), expect=None) == "identity"


def test_topic_mismatch() -> None:
    assert refused(payload(site="s2")) == "topic_mismatch"
    assert refused(payload(host="h2")) == "topic_mismatch"
    assert wire.decode_batch(payload(site="s2"), None, LIMITS).site == "s2"


@pytest.mark.parametrize("name", ["1abc", "a-b", "a b", "", "x" * 129, "x\n", "a\nb"])
def test_name(name: str) -> None:
    assert refused(payload(samples=[sample(name)])) == "name"


def test_event_kind_is_a_name() -> None:
    assert refused(payload(events=[{"kind": ""}])) == "name"
    assert refused(payload(events=[{"kind": "k" * 65}])) == "name"
    for bad in ("Login", "ssh-login", "1st", "a b", "kind\n", 'x"y', "日志"):
        assert refused(payload(events=[{"kind": bad}])) == "name", bad
    wire.decode_batch(payload(events=[{"kind": "k" * 64}]), TOPIC, LIMITS)


@pytest.mark.parametrize("number", [b"1e999", b"-1e999"])
def test_value_out_of_range(number: bytes) -> None:
    data = payload(samples=[sample(value=12345)]).replace(b"12345", number)
    assert refused(data) == "value"


def test_value_must_be_a_number() -> None:
    assert refused(payload(samples=[sample(value="1")])) == "value"


def test_interval_must_be_finite_and_not_negative() -> None:
    # The decoder refuses an infinite float itself, and only ``.value`` paths map to "value".
    assert refused(payload(interval=1).replace(b'"interval": 1', b'"interval": 1e999')) == "schema"
    assert refused(payload(interval=-1)) == "value"


@pytest.mark.parametrize(
    "label", ["site", "host", "__x", "__name__", "1a", "a-b", "", "a\n", "site\n", "a\n=b"]
)
def test_label(label: str) -> None:
    assert refused(payload(samples=[sample(**{label: "v"})])) == "label"


def test_label_names_that_only_contain_reserved_words_are_fine() -> None:
    data = payload(samples=[sample(site_name="v", hostname="v", _x="v")])
    assert wire.decode_batch(data, TOPIC, LIMITS).samples[0].labels["site_name"] == "v"


def test_limits_samples() -> None:
    limits = Limits(max_samples=3)
    wire.decode_batch(payload(samples=[sample()] * 3), TOPIC, limits)
    assert refused(payload(samples=[sample()] * 4), limits=limits) == "limits"


def test_limits_events() -> None:
    limits = Limits(max_events=2)
    assert refused(payload(events=[{"kind": "k"}] * 3), limits=limits) == "limits"


def test_limits_labels() -> None:
    labels = {f"l{i}": "v" for i in range(LIMITS.max_labels)}
    wire.decode_batch(payload(samples=[sample(**labels)]), TOPIC, LIMITS)
    labels["one_more"] = "v"
    assert refused(payload(samples=[sample(**labels)])) == "limits"


def test_limits_label_value_length() -> None:
    wire.decode_batch(payload(samples=[sample(k="x" * 256)]), TOPIC, LIMITS)
    assert refused(payload(samples=[sample(k="x" * 257)])) == "limits"


def test_limits_text() -> None:
    assert refused(payload(boot_id="b" * 65)) == "limits"
    assert refused(payload(events=[{"kind": "k", "message": "m" * 2049}])) == "limits"
    assert refused(payload(events=[{"kind": "k", "attrs": {"a": "v" * 2049}}])) == "limits"
    attrs = {f"a{i}": "v" for i in range(2 * LIMITS.max_labels + 1)}
    assert refused(payload(events=[{"kind": "k", "attrs": attrs}])) == "limits"


def test_limits_ranges() -> None:
    limits = Limits(max_ranges=2)
    assert refused(payload(seq=99, dropped=[[1, 1], [3, 3], [5, 5]]), limits=limits) == "limits"


def test_lone_surrogate_in_a_label_value_is_refused() -> None:
    data = payload(samples=[sample(k="PLACEHOLDER")]).replace(b"PLACEHOLDER", rb"\ud800")
    assert refused(data) == "malformed"


def test_invalid_utf8_is_refused_as_malformed() -> None:
    data = payload(samples=[sample(k="PLACEHOLDER")]).replace(b"PLACEHOLDER", b"\xff\xfe")
    assert refused(data) == "malformed"
    assert refused(payload(agent_id="PLACEHOLDER").replace(b"PLACEHOLDER", b"\xed\xa0\x80")) == (
        "malformed"
    )


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 100_000,
        b'{"v": 1, "samples": ' + b"[" * 100_000,
        b'{"unknown": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"unknown": ' + b'{"a":' * 40_000,
    ],
    ids=["arrays", "in-a-field", "in-an-unknown-field", "objects-in-an-unknown-field"],
)
def test_deep_nesting_is_refused_without_recursion_error(data: bytes) -> None:
    assert refused(data) in ("malformed", "schema")


# --- status and ack ---------------------------------------------------------------------------


STATUS_TOPIC = TopicParts("s1", "h1", wire.STATUS)


def test_decode_status() -> None:
    online = wire.decode_status(b'{"v":1,"status":"online"}', STATUS_TOPIC, LIMITS)
    assert online == wire.Status(v=1, status="online")
    data = json.dumps(
        {"v": 1, "status": "offline", "site": "s1", "host": "h1", "reason": "lost", "ts": 0}
    ).encode()
    offline = wire.decode_status(data, STATUS_TOPIC, LIMITS)
    assert (offline.status, offline.reason) == ("offline", "lost")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"v":2,"status":"online"}', "version"),
        (b'{"v":1,"status":"away"}', "schema"),
        (b'{"v":1}', "schema"),
        (b"online", "malformed"),
        (b'{"v":1,"status":"online","site":"s2","host":"h1"}', "topic_mismatch"),
        (b'{"v":1,"status":"online","site":"s1"}', "identity"),
        (b'{"v":1,"status":"online","site":"s1","host":"H1"}', "identity"),
        (b'{"v":1,"status":"offline","reason":"' + b"r" * 65 + b'"}', "limits"),
    ],
)
def test_decode_status_refuses(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeFailure) as info:
        wire.decode_status(data, STATUS_TOPIC, LIMITS)
    assert info.value.reason == reason


def test_decode_ack() -> None:
    ack = wire.Ack(v=1, agent_id="a", upto=7, ranges=[(9, 10), (12, 12)])
    assert wire.decode_ack(wire.encode(ack), LIMITS) == ack
    assert wire.decode_ack(b'{"v":1,"agent_id":"a","upto":0}', LIMITS).ranges == []


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"v":2,"agent_id":"a","upto":1}', "version"),
        (b'{"v":1,"agent_id":"a","upto":-1}', "schema"),
        (b'{"v":1,"agent_id":"a","upto":1,"ranges":[[5,4]]}', "schema"),
        (b'{"v":1,"agent_id":"a"}', "schema"),
        (b'{"v":1,"agent_id":"a","upto":1,"ranges":[[3,3],[5,5]]}', "limits"),
        (b"{", "malformed"),
    ],
)
def test_decode_ack_refuses(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeFailure) as info:
        wire.decode_ack(data, Limits(max_ranges=1))
    assert info.value.reason == reason


def test_decode_failure_message() -> None:
    exc = DecodeFailure("schema", "seq must be >= 1")
    assert (exc.reason, exc.detail, str(exc)) == (
        "schema",
        "seq must be >= 1",
        "schema: seq must be >= 1",
    )


# --- ranges -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ranges", "merged"),
    [
        ([], []),
        ([(5, 5)], [(5, 5)]),
        ([(5, 6), (1, 2)], [(1, 2), (5, 6)]),
        ([(1, 2), (3, 4)], [(1, 4)]),  # adjacent
        ([(1, 5), (3, 7)], [(1, 7)]),  # overlapping
        ([(1, 10), (3, 4)], [(1, 10)]),  # contained
        ([(3, 3), (1, 1), (2, 2), (9, 9)], [(1, 3), (9, 9)]),
        ([(1, 1), (1, 1)], [(1, 1)]),
    ],
)
def test_merge_ranges(ranges: list[tuple[int, int]], merged: list[tuple[int, int]]) -> None:
    assert wire.merge_ranges(ranges) == merged
    assert wire.merge_ranges(iter(ranges)) == merged


def test_encode_ranges() -> None:
    assert wire.encode_ranges([(1, 2), (4, 4)]) == b"[[1,2],[4,4]]"

"""collector/remote_write.py: the hand-made protobuf and snappy encoders against byte vectors
derived by hand from the formats' descriptions, and the forwarder's queue, batching, retries and
counters against a fake endpoint."""

from __future__ import annotations

import random
import struct
import threading
from collections.abc import Callable

import msgspec
import pytest

from collector import remote_write as rw
from collector.remote_write import LateSampleForwarder, RemoteWriteConfig
from outpost.wire import Sample

# --- reference decoders (straight from the format descriptions) ----------------------------


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def snappy_decompress(data: bytes) -> bytes:
    length, pos = _read_varint(data, 0)
    out = bytearray()
    while pos < len(data):
        tag = data[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:
            n = tag >> 2
            if n >= 60:
                size = n - 59
                n = int.from_bytes(data[pos : pos + size], "little")
                pos += size
            n += 1
            out += data[pos : pos + n]
            pos += n
            continue
        if kind == 1:
            n = 4 + ((tag >> 2) & 7)
            offset = (tag >> 5) << 8 | data[pos]
            pos += 1
        elif kind == 2:
            n = (tag >> 2) + 1
            offset = int.from_bytes(data[pos : pos + 2], "little")
            pos += 2
        else:
            n = (tag >> 2) + 1
            offset = int.from_bytes(data[pos : pos + 4], "little")
            pos += 4
        assert 0 < offset <= len(out), (offset, len(out))
        for _ in range(n):
            out.append(out[-offset])
    assert len(out) == length
    return bytes(out)


def _fields(data: bytes) -> list[tuple[int, int, bytes | int]]:
    """(field, wire type, value) of one protobuf message."""
    out: list[tuple[int, int, bytes | int]] = []
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            out.append((field, wire, value))
        elif wire == 1:
            out.append((field, wire, data[pos : pos + 8]))
            pos += 8
        else:
            assert wire == 2
            n, pos = _read_varint(data, pos)
            out.append((field, wire, data[pos : pos + n]))
            pos += n
    return out


def decode_write_request(body: bytes) -> dict[tuple[tuple[str, str], ...], list[tuple[int, float]]]:
    series: dict[tuple[tuple[str, str], ...], list[tuple[int, float]]] = {}
    for field, _, ts in _fields(body):
        assert field == 1 and isinstance(ts, bytes)
        labels: list[tuple[str, str]] = []
        points: list[tuple[int, float]] = []
        for f, _, v in _fields(ts):
            assert isinstance(v, bytes)
            inner = {k: x for k, _, x in _fields(v)}
            if f == 1:
                name, value = inner[1], inner[2]
                assert isinstance(name, bytes) and isinstance(value, bytes)
                labels.append((name.decode(), value.decode()))
            else:
                t, val = inner[2], inner[1]
                assert isinstance(t, int) and isinstance(val, bytes)
                if t >= 1 << 63:
                    t -= 1 << 64
                points.append((t, struct.unpack("<d", val)[0]))
        assert labels == sorted(labels)
        series[tuple(labels)] = points
    return series


# --- byte vectors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (1_700_000_000_000, b"\x80\xd0\x95\xff\xbc\x31"),
        (-1, b"\xff" * 9 + b"\x01"),
    ],
)
def test_varint(n: int, expected: bytes) -> None:
    assert rw._varint(n) == expected


def test_write_request_bytes() -> None:
    body = rw.encode_write_request([((("__name__", "up"), ("a", "b")), [(1000, 1.0)])])
    name = b"\x0a\x08__name__\x12\x02up"  # Label{name=1, value=2}
    label_a = b"\x0a\x01a\x12\x01b"
    sample = b"\x09" + b"\x00\x00\x00\x00\x00\x00\xf0\x3f" + b"\x10\xe8\x07"  # 1.0, ts 1000
    series = b"\x0a\x0e" + name + b"\x0a\x06" + label_a + b"\x12\x0c" + sample
    assert body == b"\x0a\x26" + series
    assert decode_write_request(body) == {(("__name__", "up"), ("a", "b")): [(1000, 1.0)]}


def test_write_request_negative_timestamp_and_several_series() -> None:
    req = [((("__name__", "x"),), [(-5, -2.5), (0, 0.0)]), ((("__name__", "y"),), [(7, 1e300)])]
    body = rw.encode_write_request(req)
    assert decode_write_request(body) == {k: v for k, v in req}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", b"\x00"),
        (b"abc", b"\x03\x08abc"),  # literal tag (3-1)<<2
        (b"aaaaaaaa", b"\x08\x00a\x0d\x01"),  # literal "a", copy len 7 offset 1: 1|3<<2
        (b"abcdabcdabcd", b"\x0c\x0cabcd\x11\x04"),  # copy len 8 offset 4: 1|4<<2
    ],
)
def test_snappy_vectors(data: bytes, expected: bytes) -> None:
    assert rw.snappy_compress(data) == expected
    assert snappy_decompress(expected) == data


def test_snappy_long_literal_headers() -> None:
    out = bytearray()
    rw._literal(out, bytes(60))
    assert out[:1] == b"\xec"  # 59 << 2
    out = bytearray()
    rw._literal(out, bytes(61))
    assert out[:2] == b"\xf0\x3c"  # 60 << 2, then 60 in one byte
    out = bytearray()
    rw._literal(out, bytes(1000))
    assert out[:3] == b"\xf4\xe7\x03"  # 61 << 2, then 999 in two bytes


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [
        (3000, 20, b"\x4e\xb8\x0b"),  # 2-byte offset form: 2 | 19 << 2
        (5, 70, b"\xfe\x05\x00\x09\x05"),  # 64 then 6 (short form: 1 | 2 << 2)
        (5, 66, b"\xf6\x05\x00\x01\x05"),  # 62 then 4: never a tail under 4
        (4000, 65, b"\xf2\xa0\x0f\x0e\xa0\x0f"),  # 61 then 4, both 2-byte offset
    ],
)
def test_snappy_copy_elements(offset: int, length: int, expected: bytes) -> None:
    out = bytearray()
    rw._copy(out, offset, length)
    assert bytes(out) == expected


def test_snappy_round_trip() -> None:
    rnd = random.Random(7)
    cases = [bytes(rnd.getrandbits(8) for _ in range(70_000)), b"x" * 200_000]
    for _ in range(100):
        alphabet = bytes(rnd.sample(range(256), rnd.randint(1, 5)))
        cases.append(bytes(rnd.choice(alphabet) for _ in range(rnd.randint(0, 3000))))
    body = rw.encode_write_request(
        [((("__name__", f"m{i}"), ("host", "h")), [(i, float(i))]) for i in range(500)]
    )
    cases.append(body)
    for data in cases:
        assert snappy_decompress(rw.snappy_compress(data)) == data
    assert len(rw.snappy_compress(body)) < len(body) // 2


# --- config ---------------------------------------------------------------------------------


def test_config_defaults_and_checks() -> None:
    cfg = msgspec.convert({"url": "http://127.0.0.1:9090/api/v1/write"}, RemoteWriteConfig)
    assert cfg.labels == {"job": "outpost"} and cfg.late_after_seconds is None
    for bad in (
        {"url": "ftp://x"},
        {"url": "http://x", "max_samples_per_request": 0},
        {"url": "http://x", "nope": 1},
        {"url": "http://x", "labels": {"site": "a"}},
        {"url": "http://x", "retry_min_seconds": 5, "retry_max_seconds": 1},
        {
            "url": "http://x",
            "bearer_token_file": "/t",
            "basic_auth": {"username": "u", "password_file": "/p"},
        },
    ):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(bad, RemoteWriteConfig)


def test_missing_credentials_file_is_a_clear_error() -> None:
    cfg = RemoteWriteConfig(url="http://127.0.0.1:1/w", bearer_token_file="/nonexistent/token")
    with pytest.raises(rw.RemoteWriteError, match="bearer_token_file /nonexistent/token"):
        LateSampleForwarder(cfg).start()


# --- the forwarder --------------------------------------------------------------------------

NOW = 1_800_000_000.0
HOUR_AGO_MS = int((NOW - 3600) * 1000)


class FakeEndpoint:
    """Answers from a script of statuses (an int, or an OSError to raise), then 200."""

    def __init__(self, script: list[int | OSError] | None = None) -> None:
        self.script = list(script or [])
        self.bodies: list[bytes] = []
        self.calls = 0
        self.gate: threading.Event | None = None
        self.lock = threading.Lock()

    def __call__(self, body: bytes) -> int:
        if self.gate is not None:
            self.gate.wait(30)
        with self.lock:
            self.calls += 1
            step = self.script.pop(0) if self.script else 200
            if isinstance(step, OSError):
                raise step
            if 200 <= step < 300:
                self.bodies.append(body)
            return step

    def series(self) -> dict[tuple[tuple[str, str], ...], list[tuple[int, float]]]:
        out: dict[tuple[tuple[str, str], ...], list[tuple[int, float]]] = {}
        for body in self.bodies:
            for k, v in decode_write_request(snappy_decompress(body)).items():
                out.setdefault(k, []).extend(v)
        return out


def _cfg(**kw: object) -> RemoteWriteConfig:
    base: dict[str, object] = {
        "url": "http://127.0.0.1:1/api/v1/write",
        "retry_min_seconds": 0.01,
        "retry_max_seconds": 0.05,
    }
    return msgspec.convert({**base, **kw}, RemoteWriteConfig)


def _wait(what: str, cond: Callable[[], bool], timeout: float = 20) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if cond():
            return
        done.wait(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _samples(n: int, name: str = "node_load1") -> list[Sample]:
    return [Sample(name=name, value=float(i), labels={"cpu": str(i)}) for i in range(n)]


def test_is_late() -> None:
    fwd = LateSampleForwarder(_cfg(), FakeEndpoint())
    ts = int(NOW * 1000)
    assert not fwd.is_late(ts - 20_000, NOW, interval=15)
    assert fwd.is_late(ts - 31_000, NOW, interval=15)  # more than 2 x interval
    assert not fwd.is_late(ts - 100_000, NOW)  # no interval: default 120 s
    assert fwd.is_late(ts - 121_000, NOW)
    fixed = LateSampleForwarder(_cfg(late_after_seconds=5), FakeEndpoint())
    assert fixed.is_late(ts - 6000, NOW, interval=60)
    assert not fixed.is_late(ts + 60_000, NOW)  # a clock ahead is not late


def test_late_samples_sent_with_their_timestamps_and_labels() -> None:
    ep = FakeEndpoint()
    fwd = LateSampleForwarder(_cfg(labels={"job": "outpost", "instance": "c:9468"}), ep)
    assert fwd.offer("s1", "h1", int(NOW * 1000), _samples(3), NOW, interval=15) == 0
    own = Sample(name="x_total", value=9.0, ts=HOUR_AGO_MS - 500)
    assert fwd.offer("s1", "h1", HOUR_AGO_MS, [*_samples(2), own], NOW, interval=15) == 3
    fwd.start()
    try:
        _wait("3 samples sent", lambda: fwd.stats().sent == 3)
    finally:
        fwd.stop()
    common = (("host", "h1"), ("instance", "c:9468"), ("job", "outpost"), ("site", "s1"))
    assert ep.series() == {
        (("__name__", "node_load1"), ("cpu", "0"), *common): [(HOUR_AGO_MS, 0.0)],
        (("__name__", "node_load1"), ("cpu", "1"), *common): [(HOUR_AGO_MS, 1.0)],
        (("__name__", "x_total"), *common): [(HOUR_AGO_MS - 500, 9.0)],
    }
    assert fwd.stats() == rw.ForwarderStats(sent=3)


def test_requests_hold_at_most_max_samples_and_series_are_grouped() -> None:
    ep = FakeEndpoint()
    fwd = LateSampleForwarder(_cfg(max_samples_per_request=4), ep)
    for minute in range(5):  # 5 batches x 2 samples of the same 2 series
        fwd.offer("s", "h", HOUR_AGO_MS + minute * 60_000, _samples(2), NOW)
    fwd.start()
    try:
        _wait("10 sent", lambda: fwd.stats().sent == 10)
    finally:
        fwd.stop()
    per_request = [
        sum(len(v) for v in decode_write_request(snappy_decompress(b)).values()) for b in ep.bodies
    ]
    assert per_request == [4, 4, 2]
    series = ep.series()
    assert len(series) == 2
    for points in series.values():
        assert [t for t, _ in points] == [HOUR_AGO_MS + m * 60_000 for m in range(5)]


def test_reserved_labels_and_queue_overflow_are_dropped_and_counted() -> None:
    ep = FakeEndpoint()
    fwd = LateSampleForwarder(_cfg(queue_samples=5), ep)  # not started: nothing drains
    bad = Sample(name="m", value=1.0, labels={"host": "other"})
    assert fwd.offer("s", "h", HOUR_AGO_MS, [bad, *_samples(3)], NOW) == 3
    assert fwd.offer("s", "h", HOUR_AGO_MS, _samples(4), NOW) == 2
    assert fwd.stats() == rw.ForwarderStats(dropped=1 + 2, queued=5)
    fwd.stop()  # never started: what was queued is dropped
    assert fwd.stats() == rw.ForwarderStats(dropped=8)
    assert ep.calls == 0


def test_connection_refused_and_5xx_are_retried_then_sent() -> None:
    ep = FakeEndpoint([ConnectionRefusedError(111, "refused"), 503, 500, 429])
    fwd = LateSampleForwarder(_cfg(), ep).start()
    try:
        fwd.offer("s", "h", HOUR_AGO_MS, _samples(3), NOW)
        _wait("sent after retries", lambda: fwd.stats().sent == 3)
    finally:
        fwd.stop()
    assert ep.calls == 5
    assert fwd.stats() == rw.ForwarderStats(sent=3, retries=4)


def test_400_drops_the_request_without_retrying() -> None:
    ep = FakeEndpoint([400])
    fwd = LateSampleForwarder(_cfg(max_samples_per_request=2), ep).start()
    try:
        fwd.offer("s", "h", HOUR_AGO_MS, _samples(3), NOW)
        _wait("both requests settled", lambda: fwd.stats().failed + fwd.stats().sent == 3)
    finally:
        fwd.stop()
    assert ep.calls == 2
    assert fwd.stats() == rw.ForwarderStats(sent=1, failed=2)


def test_offer_never_waits_for_a_stuck_endpoint_and_stop_is_clean() -> None:
    ep = FakeEndpoint()
    ep.gate = threading.Event()  # the first POST hangs until released
    fwd = LateSampleForwarder(_cfg(queue_samples=10, max_samples_per_request=3), ep).start()
    fwd.offer("s", "h", HOUR_AGO_MS, _samples(3), NOW)
    _wait("the worker took the first request", lambda: fwd.stats().queued == 0)
    for _ in range(5):  # 15 more samples; the queue holds 10
        fwd.offer("s", "h", HOUR_AGO_MS, _samples(3), NOW)
    assert fwd.stats() == rw.ForwarderStats(dropped=5, queued=10)
    ep.gate.set()
    fwd.stop()
    stats = fwd.stats()
    # The request in flight ends; the rest is sent or, at stop, counted as dropped.
    assert stats.sent + stats.dropped == 18 and stats.queued == 0 and stats.sent >= 3
    assert all(t.name != "remote-write" for t in threading.enumerate())


def test_stop_during_retries_gives_up_and_counts() -> None:
    ep = FakeEndpoint([503] * 10_000)
    fwd = LateSampleForwarder(_cfg(), ep).start()
    fwd.offer("s", "h", HOUR_AGO_MS, _samples(4), NOW)
    _wait("a few retries", lambda: fwd.stats().retries >= 3)
    fwd.stop()
    stats = fwd.stats()
    assert (stats.sent, stats.failed, stats.dropped, stats.queued) == (0, 0, 4, 0)
    assert all(t.name != "remote-write" for t in threading.enumerate())

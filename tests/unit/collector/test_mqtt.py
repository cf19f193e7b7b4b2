"""Tests for collector.mqtt's bulk reading client, with a socket double (no broker): every
packet read ahead is handled, PUBACKs go out together after the messages were delivered,
and what the fast path does not cover still takes paho's own path."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from collector.mqtt import READ_SIZE, BufferedSocket, BulkClient

PUBLISH_QOS1 = 0x32
PUBACK = 0x40


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = n >> 7, n & 0x7F
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(topic: bytes, mid: int, payload: bytes, props: bytes = b"\x00", qos: int = 1) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += mid.to_bytes(2, "big")
    body += props + payload
    return bytes([0x30 | (qos << 1)]) + varint(len(body)) + body


class FakeSocket:
    """Hands out ``data`` in the chunks asked for by the reader (at most ``chunk`` bytes a
    call), then raises BlockingIOError; records every send."""

    def __init__(self, data: bytes, chunk: int = 1 << 20) -> None:
        self.data = data
        self.chunk = chunk
        self.reads: list[int] = []
        self.sent: list[bytes] = []

    def recv(self, size: int) -> bytes:
        if not self.data:
            raise BlockingIOError
        n = min(size, self.chunk)
        self.reads.append(size)
        out, self.data = self.data[:n], self.data[n:]
        return out

    def send(self, data: bytes) -> int:
        self.sent.append(bytes(data))
        return len(data)

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


def test_buffered_socket_serves_small_reads_from_one_block() -> None:
    fake = FakeSocket(b"abcdefgh")
    sock = BufferedSocket(fake)
    assert sock.recv(1) == b"a"
    assert fake.reads == [READ_SIZE]  # one read ahead for the whole block
    assert sock.pending() == sock.buffered() == 7
    assert sock.recv(3) == b"bcd"
    assert sock.recv(10) == b"efgh"  # what is left, short: the caller reads again
    assert sock.buffered() == 0
    with pytest.raises(BlockingIOError):
        sock.recv(1)
    assert sock.fileno() == -1  # everything else is the socket's


def test_buffered_socket_passes_end_of_stream_through() -> None:
    fake = FakeSocket(b"")
    fake.recv = lambda size: b""  # type: ignore[method-assign]
    assert BufferedSocket(fake).recv(1) == b""


def client(delivered: list[tuple[str, bytes]], data: bytes, **kw: Any) -> tuple[BulkClient, Any]:
    c = BulkClient(CallbackAPIVersion.VERSION2, client_id="t", protocol=MQTTProtocolVersion.MQTTv5)
    c.deliver = lambda topic, payload: delivered.append((topic, payload))
    fake = FakeSocket(data, **kw)
    c._sock = BufferedSocket(fake)
    c._thread = threading.current_thread()  # as on paho's loop thread
    return c, fake


def test_every_packet_read_ahead_is_delivered_and_acked_in_one_write() -> None:
    packets = [publish(f"outpost/v1/s1/h{i}/metrics".encode(), i + 1, b"{}" * i) for i in range(50)]
    delivered: list[tuple[str, bytes]] = []
    c, fake = client(delivered, b"".join(packets))
    assert c.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert delivered == [(f"outpost/v1/s1/h{i}/metrics", b"{}" * i) for i in range(50)]
    assert len(fake.sent) == 1  # the 50 PUBACKs in one write, after the messages
    acks = fake.sent[0]
    assert len(acks) == 50 * 4
    mids = [int.from_bytes(acks[i + 2 : i + 4], "big") for i in range(0, len(acks), 4)]
    assert mids == list(range(1, 51)) and all(acks[i] == PUBACK for i in range(0, 200, 4))


def test_a_packet_split_across_reads_is_delivered_whole() -> None:
    packets = [publish(b"outpost/v1/s1/h1/metrics", i, b"x" * 3000) for i in (1, 2, 3)]
    delivered: list[tuple[str, bytes]] = []
    c, fake = client(delivered, b"".join(packets), chunk=1000)
    for _ in range(20):
        c.loop_read()
    assert delivered == [("outpost/v1/s1/h1/metrics", b"x" * 3000)] * 3
    assert b"".join(fake.sent) == b"".join(bytes([PUBACK, 2, 0, i]) for i in (1, 2, 3))


def test_other_publishes_take_paho_path_to_on_message() -> None:
    delivered: list[tuple[str, bytes]] = []
    seen: list[tuple[str, bytes, int]] = []
    props = varint(2) + bytes([0x0B]) + varint(7)  # a subscription identifier
    data = (
        publish(b"a/b", 1, b"with props", props=props)
        + publish(b"a/\xff", 2, b"not utf-8")
        + publish(b"a/q0", 0, b"qos 0", qos=0)
        + publish(b"a/fast", 3, b"fast")
    )
    c, fake = client(delivered, data)

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = "(not UTF-8)"
        seen.append((topic, bytes(message.payload), message.qos))

    c.on_message = on_message
    c.loop_read()
    assert seen == [
        ("a/b", b"with props", 1),
        ("(not UTF-8)", b"not utf-8", 1),
        ("a/q0", b"qos 0", 0),
    ]
    assert delivered == [("a/fast", b"fast")]
    mids = [bytes([PUBACK, 2, 0, m]) for m in (1, 2, 3)]
    assert b"".join(fake.sent) == b"".join(mids)  # QoS 0 is not acknowledged


def test_a_failing_deliver_is_logged_and_the_message_still_acked_as_paho_does() -> None:
    c, fake = client([], publish(b"a/b", 9, b"x"))

    def boom(topic: str, payload: bytes) -> None:
        raise RuntimeError("boom")

    c.deliver = boom
    c.suppress_exceptions = True
    assert c.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert fake.sent == [bytes([PUBACK, 2, 0, 9])]


def test_pubacks_queued_from_another_thread_wake_the_loop() -> None:
    c = BulkClient(CallbackAPIVersion.VERSION2, client_id="t", protocol=MQTTProtocolVersion.MQTTv5)
    c._thread = threading.Thread(target=lambda: None)  # the loop runs elsewhere
    woken: list[bytes] = []

    class Pair:
        def send(self, data: bytes) -> int:
            woken.append(data)
            return len(data)

        def close(self) -> None:
            pass

    c._sockpairW = Pair()  # type: ignore[assignment]
    c._send_puback(5)
    assert woken and len(c._out_packet) == 1


def test_a_length_of_five_bytes_is_refused_as_paho_refuses_it() -> None:
    delivered: list[tuple[str, bytes]] = []
    c, _fake = client(delivered, b"\x32\xff\xff\xff\xff\x01" + b"x" * 64)
    assert c.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS
    assert delivered == []


def test_a_publish_read_whole_leaves_paho_ready_for_the_next_packet() -> None:
    delivered: list[tuple[str, bytes]] = []
    c, _fake = client(delivered, publish(b"a/b", 1, b"one"))
    c.loop_read()
    assert delivered == [("a/b", b"one")]
    assert c._in_packet["command"] == 0 and c._in_packet["packet"] == bytearray()
    assert c._in_packet["have_remaining"] == 0 and c._in_packet["to_process"] == 0

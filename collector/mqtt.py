"""The collector's MQTT session: the only collector module that imports paho.

A persistent session (MQTT 5: clean start false on every connect and a non-zero session
expiry; 3.1.1: clean session false), so what agents publish while the collector is down waits
for it at the broker. Messages are handed to a callback as (topic, payload) on paho's thread.

paho reads a packet with three or four ``recv`` calls (one byte of type, the length a byte at
a time, then the rest), goes back to ``select`` after each packet, wakes its own loop through
a socket pair for every PUBACK it queues on its own thread and sends each PUBACK on its own.
At a few tens of thousands of messages a second those system calls cost more than the
collector's own work, so the collector's client (``BulkClient``) reads the socket in 64 KiB
blocks, handles every packet already read before it selects again, queues its PUBACKs
without the wake-up and sends the PUBACKs queued together in one write. The protocol, the
callbacks and what is acknowledged when are paho's own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.client import MQTT_LOG_DEBUG, MQTT_LOG_ERR, PUBACK, PUBLISH, MQTTv5
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket

from outpost import wire
from outpost.connection import BrokerConfig
from outpost.session import connect_async, make_client

__all__ = ["BufferedSocket", "BulkClient", "Subscriber"]

log = logging.getLogger(__name__)

READ_SIZE = 65536
# Packets handled from one read before the loop goes round (writes, keepalive) again.
MAX_PACKETS_PER_READ = 1000


class BufferedSocket:
    """A socket (plain or TLS) whose reads come from a block read ahead. ``pending`` counts
    the bytes read ahead (and a TLS socket's own), so paho's loop does not wait in select
    while a whole packet sits here. Everything but ``recv`` and ``pending`` is the socket's."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, size: int) -> bytes:
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            data: bytes = self._sock.recv(max(size, READ_SIZE))
            if len(data) <= size:
                return data  # b"" at the end of the stream
            self._buf, buf, pos = data, data, 0
        end = pos + size
        self._pos = min(end, len(buf))
        return buf[pos:end]

    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def take_publish(self) -> tuple[int, bytes] | None:
        """The next packet when it is a PUBLISH read ahead whole: its first byte and what
        follows its length. None (and nothing taken) otherwise."""
        buf, pos = self._buf, self._pos
        size = len(buf)
        if size - pos < 2 or (buf[pos] & 0xF0) != PUBLISH:
            return None
        length = shift = 0
        i = pos + 1
        for _ in range(4):
            if i >= size:
                return None
            byte = buf[i]
            i += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        else:
            return None  # a fifth length byte: paho's own read refuses the packet
        end = i + length
        if end > size:
            return None
        self._pos = end
        return buf[pos], buf[i:end]

    def pending(self) -> int:
        own = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return self.buffered() + int(own)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _in_packet(command: int, body: bytes) -> Any:
    """paho's record of the packet being read, for a packet read whole (or none)."""
    return {
        "command": command,
        "have_remaining": 1 if command else 0,
        "remaining_count": [],
        "remaining_mult": 1,
        "remaining_length": len(body),
        "packet": body if command else bytearray(),
        "to_process": 0,
        "pos": 0,
    }


class BulkClient(mqtt.Client):
    """paho's client with the reads and PUBACK writes done in bulk (see the module doc).

    With ``deliver`` set, a QoS 1 PUBLISH without MQTT 5 properties (what an agent's batch
    is) goes to ``deliver(topic, payload)`` straight from the packet, without paho's message
    object and property parsing; its PUBACK is queued after ``deliver`` returns, as paho
    does. Any other PUBLISH (QoS 0 or 2, properties, a topic that is not UTF-8) takes paho's
    own path to ``on_message``."""

    deliver: Callable[[str, bytes], None] | None = None

    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        if self._transport == "websockets":
            return sock
        return BufferedSocket(sock)

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        handled = 0
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and handled < MAX_PACKETS_PER_READ:
            sock = self._sock
            if not isinstance(sock, BufferedSocket) or not sock.buffered():
                break
            rc = self._packet_read()
            handled += 1
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                rc = MQTTErrorCode.MQTT_ERR_SUCCESS
                break
            if rc > 0:
                return self._loop_rc_handle(rc)
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None and self.want_write():
            return self.loop_write()  # the PUBACKs just queued, before the next select
        return rc

    def _packet_read(self) -> MQTTErrorCode:
        sock = self._sock
        if not isinstance(sock, BufferedSocket) or self._in_packet["command"]:
            return super()._packet_read()
        whole = sock.take_publish()
        if whole is None:
            return super()._packet_read()  # paho reads it (and anything but a PUBLISH)
        command, body = whole
        self._in_packet = _in_packet(command, body)
        try:
            rc = self._packet_handle()
        except MalformedPacket as exc:
            self._easy_log(MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._in_packet = _in_packet(0, b"")
        with self._msgtime_mutex:
            self._last_bytes_received = time.monotonic()
        return rc

    def _handle_publish(self) -> MQTTErrorCode:
        deliver = self.deliver
        header = self._in_packet["command"]
        if deliver is None or (header & 0x06) != 0x02 or self._manual_ack:
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        size = len(packet)
        if size < 2:
            return super()._handle_publish()
        end = 2 + ((packet[0] << 8) | packet[1])
        pos = end + 2  # the packet id
        if self._protocol == MQTTv5:
            if pos >= size or packet[pos]:
                return super()._handle_publish()  # properties (or too short): paho's path
            pos += 1
        elif end == 2 or pos > size:
            return super()._handle_publish()
        try:
            topic = packet[2:end].decode()
        except UnicodeDecodeError:
            return super()._handle_publish()
        mid = (packet[end] << 8) | packet[end + 1]
        with self._in_callback_mutex:
            try:
                deliver(topic, bytes(packet[pos:]))
            except Exception as err:
                self._easy_log(MQTT_LOG_ERR, "Caught exception in deliver: %s", err)
                if not self.suppress_exceptions:
                    raise
        return self._send_puback(mid)

    def _packet_queue(
        self,
        command: int,
        packet: bytes | bytearray,
        mid: int,
        qos: int,
        info: mqtt.MQTTMessageInfo | None = None,
    ) -> MQTTErrorCode:
        if self._thread is None or threading.current_thread() is not self._thread:
            return super()._packet_queue(command, packet, mid, qos, info)
        # On the loop thread itself the wake-up is not needed: loop_read writes what it
        # queued, and the next select waits for the socket to be writable when anything is
        # left.
        self._out_packet.append(
            {
                "command": command,
                "mid": mid,
                "qos": qos,
                "pos": 0,
                "to_process": len(packet),
                "packet": packet,
                "info": info,
            }
        )
        self._call_socket_register_write()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _packet_write(self) -> MQTTErrorCode:
        self._join_pubacks()
        return super()._packet_write()

    def _join_pubacks(self) -> None:
        """Make the PUBACKs at the head of the queue one packet (one send). Only this thread
        takes from the left of the queue; other threads append on the right."""
        out = self._out_packet
        if len(out) < 2 or (out[0]["command"] & 0xF0) != PUBACK or out[0]["pos"]:
            return
        acks = []
        while out and (out[0]["command"] & 0xF0) == PUBACK and not out[0]["pos"]:
            acks.append(out.popleft())
        first = acks[0]
        if len(acks) > 1:
            data = b"".join(bytes(a["packet"]) for a in acks)
            first = {**first, "packet": data, "to_process": len(data)}
        out.appendleft(first)


class Subscriber:
    def __init__(
        self,
        config: BrokerConfig,
        on_message: Callable[[str, bytes], None],
        sites: list[str] | None = None,
        shard: str | None = None,
    ) -> None:
        """Subscribe to every site's agent topics, or to ``sites`` only (a shard). A shard's
        default client id carries its name, so shards on one broker keep their own sessions."""
        self.config = config
        self._deliver = on_message
        self.connected = threading.Event()
        self.connects = 0
        prefix = config.topic_prefix
        kinds = (wire.STATUS, wire.METRICS, wire.EVENTS)
        self.filters = [
            f"{prefix}/v1/{site}/+/{kind}" for site in (sites or ["+"]) for kind in kinds
        ]
        client_id = config.client_id or "outpost-collector"
        if shard and client_id == "outpost-collector":
            client_id = f"outpost-collector-{shard}"
        self.client_id = client_id
        self._client = make_client(config, client_id, 1000, BulkClient)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        if isinstance(self._client, BulkClient):
            self._client.deliver = on_message

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            log.warning(
                "the broker at %s refused the connection: %s. Check the user name, password "
                "and ACL for this client",
                self.config.url,
                reason,
            )
            return
        self.connects += 1
        client.subscribe([(f, 1) for f in self.filters])
        self.connected.set()
        log.info("connected to %s (session present: %s)", self.config.url, flags.session_present)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if self.connected.is_set():
            log.warning("disconnected from the broker: %s", reason)
        self.connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: Any) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = "(not UTF-8)"
        self._deliver(topic, bytes(message.payload))

    def start(self) -> None:
        connect_async(self._client, self.config)

    def publish(self, topic: str, payload: bytes) -> bool:
        if not self.connected.is_set():
            return False
        return bool(self._client.publish(topic, payload, qos=1).rc == mqtt.MQTT_ERR_SUCCESS)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

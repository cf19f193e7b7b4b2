"""The agent's MQTT session: the only agent module that imports paho (the client itself is
built by outpost/session.py, shared with the collector).

It owns the connection (TLS, credentials, keepalive, Last Will, retained birth message,
reconnect with capped backoff and jitter, a graceful ``offline``/``shutdown`` on stop) and
turns paho's callbacks, which run on paho's thread, into plain events on a queue that the
agent's main thread reads. It never touches the outbox.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from typing import Any, Literal, NamedTuple

import paho.mqtt.client as mqtt

from outpost import wire
from outpost.connection import BrokerConfig
from outpost.session import connect_async, make_client

__all__ = ["Publisher", "SessionEvent"]

log = logging.getLogger(__name__)


class SessionEvent(NamedTuple):
    """``connected`` / ``disconnected`` / ``ack`` (payload) / ``published`` (mid); the main
    loop also puts ``wake`` (nothing to handle, a turn of the loop)."""

    kind: str
    payload: bytes = b""
    mid: int = 0


class Publisher:
    def __init__(
        self,
        config: BrokerConfig,
        site: str,
        host: str,
        agent_id: str,
        boot_id: str,
        events: queue.SimpleQueue[SessionEvent],
    ) -> None:
        self.config = config
        self.site = site
        self.host = host
        self.agent_id = agent_id
        self.boot_id = boot_id
        self._events = events
        self._connected = threading.Event()
        self._prefix = config.topic_prefix
        self._client = self._make_client()

    # --- construction -----------------------------------------------------------------------

    def topic(self, kind: str) -> str:
        return wire.topic(self._prefix, self.site, self.host, kind)

    def _status(self, status: Literal["online", "offline"], reason: str, now_ms: int) -> bytes:
        return wire.encode_status(
            status, reason, site=self.site, host=self.host, agent_id=self.agent_id,
            boot_id=self.boot_id, ts_ms=now_ms,
        )  # fmt: skip

    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        client_id = cfg.client_id or f"outpost-agent-{self.site}-{self.host}"
        client = make_client(cfg, client_id, max_inflight=100)
        client.will_set(self.topic(wire.STATUS), self._status("offline", "lost", 0), 1, True)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    # --- paho callbacks (paho's thread) -----------------------------------------------------

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
        self._connected.set()
        client.subscribe(self.topic(wire.ACK), qos=1)
        client.publish(self.topic(wire.STATUS), self._status("online", "", _now_ms()), 1, True)
        log.info("connected to %s", self.config.url)
        self._events.put(SessionEvent("connected"))

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        _forget_unacknowledged(client)
        # Jitter the next reconnect so a county's agents do not return in lockstep.
        base = self.config.reconnect_min_seconds
        client.reconnect_delay_set(
            min_delay=max(1, round(base * random.uniform(1.0, 2.0))),
            max_delay=max(1, round(self.config.reconnect_max_seconds * random.uniform(0.8, 1.0))),
        )
        if was:
            log.warning("disconnected from the broker: %s", reason)
            self._events.put(SessionEvent("disconnected"))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: Any) -> None:
        self._events.put(SessionEvent("ack", bytes(message.payload)))

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        self._events.put(SessionEvent("published", mid=mid))

    # --- used by the main thread ------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        connect_async(self._client, self.config)

    def publish(self, kind: str, payload: bytes) -> int | None:
        """Publish at QoS 1; the message id, or None when it could not be handed to the
        broker (not connected, or paho refused)."""
        if not self._connected.is_set():
            return None
        info = self._client.publish(self.topic(kind), payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        return int(info.mid)

    def stop(self, timeout: float = 3.0) -> bool:
        """Say ``offline``/``shutdown`` (retained) and disconnect cleanly, so the Last Will
        does not fire. Returns whether the broker acknowledged the shutdown status."""
        said = False
        if self._connected.is_set():
            info = self._client.publish(
                self.topic(wire.STATUS), self._status("offline", "shutdown", _now_ms()), 1, True
            )
            deadline = time.monotonic() + timeout
            while self._connected.is_set() and time.monotonic() < deadline:
                if info.is_published():
                    said = True
                    break
                time.sleep(0.01)
            self._client.disconnect()
        self._client.loop_stop()
        return said


def _forget_unacknowledged(client: mqtt.Client) -> None:
    """Drop the publishes paho still holds for want of a PUBACK. paho would send them again
    right after the next CONNACK, ahead of everything else: the backlog before current data,
    and each of them twice, since the agent re-sends from its outbox anyway (newest first,
    then the backlog in order; see agent/runner.py). paho has no public call for this; a test
    checks that these attributes are there."""
    with client._out_message_mutex:
        client._out_messages.clear()
        client._inflight_messages = 0


def _now_ms() -> int:
    return int(time.time() * 1000)

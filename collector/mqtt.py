"""The collector's MQTT session: the only collector module that imports paho.

A persistent session (MQTT 5: clean start false on every connect and a non-zero session
expiry; 3.1.1: clean session false), so what agents publish while the collector is down waits
for it at the broker. Messages are handed to a callback as (topic, payload) on paho's thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from outpost import wire
from outpost.connection import BrokerConfig
from outpost.session import connect_async, make_client

__all__ = ["Subscriber"]

log = logging.getLogger(__name__)


class Subscriber:
    def __init__(self, config: BrokerConfig, on_message: Callable[[str, bytes], None]) -> None:
        self.config = config
        self._deliver = on_message
        self.connected = threading.Event()
        self.connects = 0
        prefix = config.topic_prefix
        self.filters = [
            f"{prefix}/v1/+/+/{kind}" for kind in (wire.STATUS, wire.METRICS, wire.EVENTS)
        ]
        self._client = make_client(config, config.client_id or "outpost-collector", 1000)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

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

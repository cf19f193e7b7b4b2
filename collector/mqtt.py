"""The collector's MQTT session: the only collector module that imports paho.

A persistent session (MQTT 5: clean start false on every connect and a non-zero session
expiry; 3.1.1: clean session false), so what agents publish while the collector is down waits
for it at the broker. Messages are handed to a callback as (topic, payload) on paho's thread.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from outpost import wire
from outpost.connection import BrokerConfig, parse_broker_url, read_password

__all__ = ["Subscriber"]

log = logging.getLogger(__name__)


class Subscriber:
    def __init__(self, config: BrokerConfig, on_message: Callable[[str, bytes], None]) -> None:
        self.config = config
        self._deliver = on_message
        self._v5 = config.protocol == "5"
        self.connected = threading.Event()
        self.connects = 0
        prefix = config.topic_prefix
        self.filters = [
            f"{prefix}/v1/+/+/{kind}" for kind in (wire.STATUS, wire.METRICS, wire.EVENTS)
        ]
        client_id = config.client_id or "outpost-collector"
        if self._v5:
            self._client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=MQTTProtocolVersion.MQTTv5,
            )
        else:
            self._client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                clean_session=False,
                protocol=MQTTProtocolVersion.MQTTv311,
            )
        if config.username:
            self._client.username_pw_set(config.username, read_password(config))
        address = parse_broker_url(config.url)
        if address.tls or config.tls.ca_file:
            self._client.tls_set(
                ca_certs=config.tls.ca_file,
                certfile=config.tls.cert_file,
                keyfile=config.tls.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        self._client.max_inflight_messages_set(1000)
        self._client.reconnect_delay_set(
            min_delay=max(1, round(config.reconnect_min_seconds)),
            max_delay=max(1, round(config.reconnect_max_seconds)),
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("broker refused the connection: %s", reason)
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
        address = parse_broker_url(self.config.url)
        props = None
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self.config.session_expiry_seconds
        self._client.connect_async(
            address.host,
            address.port,
            keepalive=self.config.keepalive_seconds,
            clean_start=False if self._v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        self._client.loop_start()

    def publish(self, topic: str, payload: bytes) -> bool:
        if not self.connected.is_set():
            return False
        return bool(self._client.publish(topic, payload, qos=1).rc == mqtt.MQTT_ERR_SUCCESS)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

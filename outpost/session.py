"""The MQTT session settings both sides share: one paho client built the same way everywhere.

MQTT 5 gets clean start false on every connect and a non-zero session expiry (paho's default,
clean start on the first connect only, would lose the queue across a restart); 3.1.1 gets
clean session false. Each side's own paho module (agent/publisher.py, collector/mqtt.py)
builds its client here and adds its callbacks.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from outpost.connection import BrokerConfig, parse_broker_url, read_password

__all__ = ["connect_async", "make_client"]

log = logging.getLogger(__name__)


def make_client(
    config: BrokerConfig,
    client_id: str,
    max_inflight: int,
    client_class: type[mqtt.Client] = mqtt.Client,
) -> mqtt.Client:
    """A client with credentials, TLS and capped reconnect backoff; not yet connected.
    ``client_class`` may be a subclass of paho's client (the collector's reads in bulk)."""
    if config.protocol == "5":
        client = client_class(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
    else:
        client = client_class(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
    if config.username:
        client.username_pw_set(config.username, read_password(config))
    address = parse_broker_url(config.url)
    if address.tls or config.tls.ca_file or config.tls.cert_file:
        client.tls_set(
            ca_certs=config.tls.ca_file,
            certfile=config.tls.cert_file,
            keyfile=config.tls.key_file,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    failing = [False]

    def on_connect_fail(client: mqtt.Client, userdata: Any) -> None:
        # Said once per streak of failures, then at debug: the link may be down for days.
        level = logging.DEBUG if failing[0] else logging.WARNING
        failing[0] = True
        log.log(
            level,
            "cannot connect to %s; retrying with backoff. Check that the broker runs and "
            "is reachable, and the TLS CA file if the URL is mqtts://",
            config.url,
        )

    client.on_connect_fail = on_connect_fail
    client.max_inflight_messages_set(max_inflight)
    client.reconnect_delay_set(
        min_delay=max(1, round(config.reconnect_min_seconds)),
        max_delay=max(1, round(config.reconnect_max_seconds)),
    )
    return client


def connect_async(client: mqtt.Client, config: BrokerConfig) -> None:
    """Start connecting (and reconnecting) in paho's own thread."""
    address = parse_broker_url(config.url)
    props = None
    if config.protocol == "5":
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = config.session_expiry_seconds
    client.connect_async(
        address.host,
        address.port,
        keepalive=config.keepalive_seconds,
        clean_start=False if config.protocol == "5" else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
        properties=props,
    )
    client.loop_start()

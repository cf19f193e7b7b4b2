"""The network side of ``outpost simulate``: thousands of MQTT connections in one thread.

Each connection is a paho client (built by outpost/session.py, so credentials, TLS and the
persistent session are those of a real agent) driven by paho's external-loop API: its socket
is registered with one :mod:`selectors` selector (epoll on Linux, no ``FD_SETSIZE`` limit)
through paho's ``on_socket_open`` / ``on_socket_close`` / ``on_socket_register_write`` /
``on_socket_unregister_write`` callbacks, and the loop calls ``loop_read`` / ``loop_write``
when a socket is ready and ``loop_misc`` (keepalive) every second. No thread per connection.

Reconnects are our own (paho reconnects by itself only in its threaded loops): after a loss,
each connection waits :func:`outpost.simulate.reconnect_delay`. ``connect()`` is a blocking
TCP connect (at most ``CONNECT_TIMEOUT`` seconds), so while the broker cannot be reached the
whole fleet waits behind one attempt at a time instead of 2,000, and at most
``MAX_HANDSHAKES`` connections wait for their CONNACK at once.

An abrupt disconnect shuts the socket down without a DISCONNECT packet, so the broker
publishes the connection's Last Will.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import random
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from outpost import wire
from outpost.connection import BrokerConfig, parse_broker_url
from outpost.session import make_client
from outpost.simulate import Tally, VirtualAgent, next_disconnect_in, reconnect_delay

__all__ = ["Fleet", "Progress"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 3.0
MAX_HANDSHAKES = 100
"""Connections waiting for their CONNACK at once: the rest wait their turn."""
HANDSHAKE_TIMEOUT = 15.0
TICK = 1.0
STOP_TIMEOUT = 10.0


def _shut(sock: object) -> bool:
    """Shut a socket down without a word (SSLSocket's own shutdown would say goodbye); the
    broker then sees the connection end without DISCONNECT. False when there is none."""
    if not isinstance(sock, socket.socket):
        return False
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    return True


class Progress:
    """What the progress display shows; read by the caller's ``tick`` once a second."""

    def __init__(self, tally: Tally, connections: int) -> None:
        self.tally = tally
        self.connections = connections
        self.up = 0
        self.phase = "connecting"
        self.elapsed = 0.0


class _Conn:
    __slots__ = (
        "agents", "attempt_at", "by_topic", "client", "failures", "index", "injected",
        "next_attempt", "state", "stop_infos",
    )  # fmt: skip

    def __init__(self, index: int, client: mqtt.Client, agents: list[VirtualAgent]) -> None:
        self.index = index
        self.client = client
        self.agents = agents
        self.by_topic: dict[str, VirtualAgent] = {}
        self.state = "down"  # down -> connecting -> up -> down
        self.failures = 0
        self.attempt_at = 0.0
        self.next_attempt = 0.0
        self.injected = False
        self.stop_infos: list[Any] = []


class Fleet:
    """Virtual agents over MQTT connections; :meth:`run` drives them all from this thread."""

    def __init__(
        self,
        config: BrokerConfig,
        agents: list[VirtualAgent],
        groups: list[list[int]],
        tally: Tally,
        *,
        rng: random.Random,
        resend_after: float = 60.0,
        disconnect_rate: float = 0.0,
        client_ids: list[str] | None = None,
    ) -> None:
        self.config = config
        self.agents = agents
        self.tally = tally
        self.rng = rng
        self.resend_after = resend_after
        self.disconnect_rate = disconnect_rate
        self.prefix = config.topic_prefix
        self.address = parse_broker_url(config.url)
        self.sel = selectors.DefaultSelector()
        self.progress = Progress(tally, len(groups))
        self.ever_connected = False
        self._gate_until = 0.0
        self._gate_failures = 0
        self._warned = False
        self._handshakes = 0
        self._generating = True
        self._stopping = False
        self._reconnects: list[tuple[float, int]] = []
        self.conns: list[_Conn] = []
        for index, members in enumerate(groups):
            members_agents = [agents[i] for i in members]
            first = members_agents[0]
            if client_ids is not None:
                client_id = client_ids[index]
            else:
                client_id = f"outpost-agent-{first.site}-{first.host}"
            inflight = min(1000, 100 * len(members_agents))
            client = make_client(config, client_id, max_inflight=inflight)
            client.connect_timeout = CONNECT_TIMEOUT
            conn = _Conn(index, client, members_agents)
            for agent in members_agents:
                conn.by_topic[agent.topic(self.prefix, wire.ACK)] = agent
            self._configure(conn, first)
            self.conns.append(conn)
        self._agent_conn: dict[int, _Conn] = {
            id(agent): conn for conn in self.conns for agent in conn.agents
        }

    # --- paho wiring ------------------------------------------------------------------------

    def _configure(self, conn: _Conn, will_agent: VirtualAgent) -> None:
        client = conn.client
        client.user_data_set(conn)
        client.will_set(
            will_agent.topic(self.prefix, wire.STATUS),
            will_agent.status("offline", "lost", 0),
            1,
            True,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        props = None
        if self.config.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self.config.session_expiry_seconds
        # Stores the parameters only; the connects are ours (see _attempt).
        client.connect_async(
            self.address.host,
            self.address.port,
            keepalive=self.config.keepalive_seconds,
            clean_start=False if self.config.protocol == "5" else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )

    def _on_socket_open(self, client: mqtt.Client, conn: _Conn, sock: Any) -> None:
        self.sel.register(sock, selectors.EVENT_READ, conn)

    def _on_socket_close(self, client: mqtt.Client, conn: _Conn, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(sock)

    def _on_register_write(self, client: mqtt.Client, conn: _Conn, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)

    def _on_unregister_write(self, client: mqtt.Client, conn: _Conn, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.modify(sock, selectors.EVENT_READ, conn)

    def _on_connect(
        self, client: mqtt.Client, conn: _Conn, flags: Any, reason: Any, props: Any
    ) -> None:
        if conn.state == "connecting":
            self._handshakes -= 1
        if reason.is_failure:
            conn.state = "refused"
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            first = conn.agents[0]
            log.log(
                level,
                "the broker at %s refused the connection of %s/%s: %s. Check the user name, "
                "password and ACL (a shared connection publishes for all its agents)",
                self.config.url,
                first.site,
                first.host,
                reason,
            )
            return
        conn.state = "up"
        conn.failures = 0
        self._gate_failures = 0
        self._warned = False
        self.ever_connected = True
        self.tally.connects += 1
        self.progress.up += 1
        now_ms = int(time.time() * 1000)
        client.subscribe([(topic, 1) for topic in conn.by_topic])
        now = time.monotonic()
        for agent in conn.agents:
            client.publish(
                agent.topic(self.prefix, wire.STATUS), agent.status("online", "", now_ms), 1, True
            )
            agent.connected()
            self._drain(conn, agent, now)

    def _on_disconnect(
        self, client: mqtt.Client, conn: _Conn, flags: Any, reason: Any, props: Any
    ) -> None:
        was = conn.state
        if was == "connecting":
            self._handshakes -= 1
        conn.state = "down"
        for agent in conn.agents:
            agent.disconnected()
        if was == "up":
            self.progress.up -= 1
            if conn.injected:
                self.tally.disconnects += 1
                conn.failures = 0
            elif not self._stopping:
                self.tally.connection_losses += 1
                log.info("connection %d lost: %s", conn.index, reason)
        elif not self._stopping:
            self.tally.connect_failures += 1
            conn.failures += 1
        conn.injected = False
        delay = reconnect_delay(
            self.rng,
            self.config.reconnect_min_seconds,
            self.config.reconnect_max_seconds,
            conn.failures,
        )
        conn.next_attempt = time.monotonic() + delay
        if not self._stopping:
            heapq.heappush(self._reconnects, (conn.next_attempt, conn.index))

    def _on_message(self, client: mqtt.Client, conn: _Conn, message: Any) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            return
        agent = conn.by_topic.get(topic)
        if agent is None:
            return
        if agent.on_ack(bytes(message.payload)):
            self._drain(conn, agent, time.monotonic())

    # --- delivery ---------------------------------------------------------------------------

    def _drain(self, conn: _Conn, agent: VirtualAgent, now: float) -> None:
        if conn.state != "up":
            return
        for seq, payload in agent.due(now, self.resend_after):
            info = conn.client.publish(agent.topic(self.prefix, wire.METRICS), payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self.tally.publish_failures += 1
                return
            agent.sent(seq, now)

    # --- connecting -------------------------------------------------------------------------

    def _attempt(self, conn: _Conn, now: float) -> None:
        """One blocking TCP connect and a CONNECT packet; the CONNACK comes through the loop."""
        conn.attempt_at = now
        conn.state = "connecting"
        self._handshakes += 1
        try:
            conn.client.reconnect()
        except (OSError, ssl.SSLError, ValueError) as exc:
            conn.state = "down"
            self._handshakes -= 1
            conn.failures += 1
            self.tally.connect_failures += 1
            self._gate_failures += 1
            wait = reconnect_delay(
                self.rng,
                self.config.reconnect_min_seconds,
                self.config.reconnect_max_seconds,
                self._gate_failures - 1,
            )
            self._gate_until = now + wait
            conn.next_attempt = self._gate_until
            heapq.heappush(self._reconnects, (conn.next_attempt, conn.index))
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            log.log(
                level,
                "cannot connect to %s (%s); retrying with backoff. Check that the broker "
                "runs and is reachable, and the TLS CA file if the URL is mqtts://",
                self.config.url,
                exc,
            )

    def _connect_due(self, now: float) -> None:
        while self._reconnects and self._reconnects[0][0] <= now:
            if now < self._gate_until or self._handshakes >= MAX_HANDSHAKES:
                return
            _, index = heapq.heappop(self._reconnects)
            conn = self.conns[index]
            if conn.state != "down" or conn.next_attempt > now:
                continue
            self._attempt(conn, now)
            now = time.monotonic()

    # --- the loop ---------------------------------------------------------------------------

    def _abort(self, conn: _Conn) -> None:
        """Close the connection without DISCONNECT: the broker publishes its Last Will."""
        if conn.state != "up" or not _shut(conn.client.socket()):
            return
        conn.injected = True
        # paho reads the end of the stream now, or (data still buffered) the selector says
        # so on the next turn; either way on_disconnect counts it as ours.
        conn.client.loop_read()

    def _service(self, timeout: float) -> None:
        for key, mask in self.sel.select(timeout):
            conn: _Conn = key.data
            client = conn.client
            if mask & selectors.EVENT_READ:
                client.loop_read()
                sock = client.socket()
                while isinstance(sock, ssl.SSLSocket) and sock.pending():
                    client.loop_read()
                    sock = client.socket()
            if mask & selectors.EVENT_WRITE and client.socket() is not None:
                client.loop_write()

    def _housekeeping(self, now: float) -> None:
        """Once a second: keepalive, handshakes that never finished, batches due again."""
        for conn in self.conns:
            if conn.state == "up":
                conn.client.loop_misc()
                for agent in conn.agents:
                    self._drain(conn, agent, now)
            elif conn.state in ("connecting", "refused") and (
                conn.state == "refused" or now - conn.attempt_at > HANDSHAKE_TIMEOUT
            ):
                if conn.state == "connecting":
                    log.info("connection %d: no CONNACK in time; trying again", conn.index)
                if _shut(conn.client.socket()):
                    conn.client.loop_read()
                if conn.state != "down":  # no socket left to notice it
                    self._on_disconnect(conn.client, conn, None, "handshake", None)

    def run(
        self,
        stop: threading.Event,
        duration: float | None,
        drain: float,
        interval: float,
        tick: Callable[[Progress], None] | None = None,
    ) -> None:
        """Run the fleet: connect, a batch per agent every ``interval`` seconds, random
        disconnects, until ``duration`` has passed or ``stop`` is set; then stop making
        batches and wait up to ``drain`` seconds for the acks of what is held and for every
        connection to be up again (so that every agent can say goodbye); then say
        ``offline``/``shutdown`` and disconnect cleanly."""
        start = time.monotonic()
        wall0 = time.time()
        self._reconnects = [(start, c.index) for c in self.conns]
        heapq.heapify(self._reconnects)
        # Each agent's first cycle at a random point of the first interval: an even load.
        cycles = [(start + self.rng.uniform(0, interval), i) for i in range(len(self.agents))]
        heapq.heapify(cycles)
        next_drop = start + next_disconnect_in(self.rng, self.disconnect_rate, len(self.conns))
        next_tick = start
        end = start + duration if duration is not None else None
        drain_until: float | None = None
        self.progress.phase = "running"
        while True:
            now = time.monotonic()
            if drain_until is None and (stop.is_set() or (end is not None and now >= end)):
                drain_until = now + drain
                self._generating = False
                self.progress.phase = "draining"
            if drain_until is not None and (
                now >= drain_until
                or (self.tally.unacked == 0 and self.progress.up == len(self.conns))
            ):
                break
            self._connect_due(now)
            while self._generating and cycles and cycles[0][0] <= now:
                due, index = heapq.heappop(cycles)
                agent = self.agents[index]
                agent.cycle(wall0 + (due - start))
                self._drain(self._agent_conn[id(agent)], agent, now)
                nxt = due + interval
                heapq.heappush(cycles, (nxt if nxt > now else now + interval, index))
            if self._generating and now >= next_drop:
                up = [c for c in self.conns if c.state == "up"]
                if up:
                    self._abort(self.rng.choice(up))
                next_drop = now + next_disconnect_in(
                    self.rng, self.disconnect_rate, len(self.conns)
                )
            if now >= next_tick:
                self._housekeeping(now)
                self.progress.elapsed = now - start
                if tick is not None:
                    tick(self.progress)
                next_tick = now + TICK
            waits = [next_tick, next_drop]
            if self._generating and cycles:
                waits.append(cycles[0][0])
            if self._reconnects and self._handshakes < MAX_HANDSHAKES:
                waits.append(max(self._reconnects[0][0], self._gate_until))
            if drain_until is not None:
                waits.append(drain_until)
            self._service(max(0.0, min(waits) - time.monotonic()))
        self.progress.phase = "stopping"
        if tick is not None:
            tick(self.progress)
        self.shutdown()

    def shutdown(self) -> None:
        """Say ``offline``/``shutdown`` (retained) for every agent on a live connection, wait
        for the broker to take them, then disconnect cleanly (no Last Will)."""
        self._stopping = True
        now_ms = int(time.time() * 1000)
        pending: dict[int, _Conn] = {}
        for conn in self.conns:
            if conn.state != "up":
                continue
            pending[conn.index] = conn
            conn.stop_infos = [
                conn.client.publish(
                    agent.topic(self.prefix, wire.STATUS),
                    agent.status("offline", "shutdown", now_ms),
                    1,
                    True,
                )
                for agent in conn.agents
            ]
        deadline = time.monotonic() + STOP_TIMEOUT
        while pending and time.monotonic() < deadline:
            for index, conn in list(pending.items()):
                if conn.state != "up":
                    del pending[index]
                elif all(info.is_published() for info in conn.stop_infos):
                    conn.client.disconnect()
                    del pending[index]
            if pending:
                self._service(0.1)
        for conn in pending.values():
            if conn.state == "up":
                conn.client.disconnect()
        while self.sel.get_map() and time.monotonic() < deadline + 2:
            self._service(0.1)
        for conn in self.conns:
            sock = conn.client.socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        self.sel.close()

"""Network and broker faults, end to end, each ending in exact counts of what the agent sent
against what the collector applied.

agent -> netproxy (the link, see netproxy.py) -> mosquitto <- collector, with a test MQTT client
(:class:`Observer`) on the broker that sees the agent's batches in the order the broker routed
them. The faults:

- the link cut (``drop``: connections reset, new ones refused) and silently partitioned
  (``blackhole``: only keepalives can tell; the broker's Last Will marks the host lost);
- mosquitto restarted (persistence on) and killed with ``kill -9`` after acknowledging batches;
- a slow link (a few KB/s, 300 ms one way) carrying a backlog;
- mosquitto with small queues dropping past them while the collector is away.

Every case ends with ``sent`` (the agent's last seq, read from its outbox), ``arrived`` (seqs
the collector applied), ``duplicates`` (the collector's count), ``lost`` and ``dropped``, kept
with :func:`reliability.record`. ``OUTPOST_FAULT_SECONDS`` makes the link outages longer
(default 20 s at a 0.2 s interval, so the backlog is over 100 batches).
"""

from __future__ import annotations

import json
import os
import select
import socket
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from harness import Agent, Collector, Mosquitto, Procs, wait_for
from netproxy import BLACKHOLE, DROP, PASS, THROTTLE, NetProxy
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from reliability import record

pytestmark = pytest.mark.integration

FAULT_SECONDS = float(os.environ.get("OUTPOST_FAULT_SECONDS") or 20)
INTERVAL = 0.2
KEEPALIVE = 2
# mosquitto 2.0 looks at keepalives every 5-6 s, so its Last Will comes 1.5 x keepalive and
# up to 6 s after the last packet.
WILL_DEADLINE = KEEPALIVE * 1.5 + 6 + 10


class NotCurrentFirst(AssertionError):
    """Batches of the backlog reached the broker before the current one after a reconnect."""


class ResentWhileInFlight(AssertionError):
    """A batch crossed the link more than once while the session stayed up."""


# --- helpers ---------------------------------------------------------------------------------


def agent_config(path: Path, site: str, host: str, resend_after: float = 60.0) -> Path:
    """A short keepalive and a short reconnect backoff, so faults are seen and healed in CI."""
    path.write_text(
        f"site: {site}\nhost: {host}\n"
        f"broker:\n  keepalive_seconds: {KEEPALIVE}\n  reconnect_min_seconds: 1\n"
        "  reconnect_max_seconds: 2\n"
        f"outbox:\n  resend_after_seconds: {resend_after}\n"
    )
    return path


def outbox_seq(agent: Agent) -> int:
    """The highest seq the agent has written (read from its outbox, without locking it)."""
    db = sqlite3.connect(f"file:{agent.state / 'outbox.sqlite'}?mode=ro", uri=True, timeout=5)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
        return int(row[0]) - 1
    finally:
        db.close()


def host_of(collector: Collector, key: tuple[str, str]) -> dict[str, Any]:
    return collector.hosts().get(key) or {}


def settled_to(collector: Collector, key: tuple[str, str], seq: int) -> dict[str, Any] | None:
    """The host's record once every seq up to ``seq`` is settled and nothing is settled
    above a gap (no ranges above ``settled_upto``)."""
    h = host_of(collector, key)
    if h.get("last_seq") is None or h["settled_upto"] < seq:
        return None
    return h if h["settled_upto"] == h["last_seq"] else None


def collector_stats(collector: Collector) -> dict[str, Any]:
    status, body = collector.get("/api/v1/collector")
    assert status == 200
    data: dict[str, Any] = json.loads(body)
    return data


def final_counts(collector: Collector, key: tuple[str, str], agent: Agent,
                 deadline: float = 60) -> dict[str, int]:  # fmt: skip
    """Wait until the collector has settled every seq the agent has written, then count.

    ``arrived`` is the seqs in 1..sent the collector applied: all settled, less those it
    counted dropped, lost or refused."""
    sent = outbox_seq(agent)
    h = wait_for(f"every seq up to {sent} settled at the collector",
                 lambda: settled_to(collector, key, sent), deadline)  # fmt: skip
    invalid = int(collector_stats(collector)["messages"]["invalid"])
    counts = {
        "sent": sent,
        "arrived": sent - h["lost"] - h["dropped"] - invalid,
        "duplicates": int(h["duplicates"]),
        "lost": int(h["lost"]),
        "dropped": int(h["dropped"]),
        "invalid": invalid,
    }
    assert counts["lost"] == 0 and counts["dropped"] == 0 and invalid == 0, (counts, h)
    assert counts["arrived"] == sent, counts
    assert collector.value("outpost_collector_lost_messages_total") == 0.0
    return counts


def save(case: str, counts: dict[str, int], note: str) -> None:
    record(case, sent=counts["sent"], arrived=counts["arrived"],
           duplicates=counts["duplicates"], lost=counts["lost"], dropped=counts["dropped"],
           note=note)  # fmt: skip
    print(f"{case}: {counts} ({note})")


class Observer:
    """A test MQTT client on the broker: the agent's batches (seqs) and status messages in the
    order the broker routed them. ``persistent`` keeps its session (and what the broker
    queues for it) while it is disconnected."""

    def __init__(self, port: int, site: str, host: str, client_id: str,
                 persistent: bool = False) -> None:  # fmt: skip
        self.port = port
        self.base = f"outpost/v1/{site}/{host}"
        self.marker = f"test/{client_id}/marker"
        self.lock = threading.Lock()
        self.seqs: list[int] = []
        self.sizes: list[int] = []
        self.statuses: list[dict[str, Any]] = []
        self.markers: list[bytes] = []
        self.session_present: bool | None = None
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent,
            protocol=MQTTProtocolVersion.MQTTv311,
        )  # fmt: skip
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    props: Any) -> None:  # fmt: skip
        self.session_present = bool(flags.session_present)
        topics = [f"{self.base}/metrics", f"{self.base}/events", f"{self.base}/status"]
        client.subscribe([(t, 1) for t in [*topics, self.marker]])

    def _on_subscribe(self, *args: Any) -> None:
        self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: Any) -> None:
        with self.lock:
            if message.topic == self.marker:
                self.markers.append(bytes(message.payload))
                return
            data = json.loads(message.payload)
            if message.topic.endswith("/status"):
                self.statuses.append(data)
            else:
                self.seqs.append(int(data["seq"]))
                self.sizes.append(len(message.payload))

    def start(self) -> Observer:
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        wait_for("the observer subscribed", self.subscribed.is_set, 10)
        return self

    def stop(self) -> None:
        if self.client.is_connected():
            self.client.disconnect()
        self.client.loop_stop()

    def batch_bytes(self) -> float:
        """The mean size of the agent's batches so far."""
        with self.lock:
            return sum(self.sizes) / max(1, len(self.sizes))

    def count(self) -> int:
        with self.lock:
            return len(self.seqs)

    def since(self, index: int) -> list[int]:
        with self.lock:
            return self.seqs[index:]

    def flush(self, timeout: float = 20) -> int:
        """Publish a marker to itself and wait for it: what the broker routed to this client
        before the marker has been delivered. Returns the count of seqs seen by then."""
        token = f"{time.monotonic_ns()}".encode()
        self.client.publish(self.marker, token, qos=1)
        wait_for("the observer's marker", lambda: token in self.markers, timeout)
        return self.count()


@pytest.fixture
def proxies() -> Iterator[list[NetProxy]]:
    made: list[NetProxy] = []
    yield made
    for proxy in made:
        proxy.stop()


@pytest.fixture
def observers() -> Iterator[list[Observer]]:
    made: list[Observer] = []
    yield made
    for obs in made:
        obs.stop()


def link_to(broker: Mosquitto, proxies: list[NetProxy]) -> NetProxy:
    proxy = NetProxy(broker.port).start()
    proxies.append(proxy)
    return proxy


def observe(broker: Mosquitto, key: tuple[str, str], observers: list[Observer],
            client_id: str = "observer", persistent: bool = False) -> Observer:  # fmt: skip
    obs = Observer(broker.port, *key, client_id, persistent)
    observers.append(obs)
    return obs.start()


def start_agent(procs: Procs, link: Any, tmp_path: Path, key: tuple[str, str],
                interval: float = INTERVAL, resend_after: float = 60.0) -> Agent:  # fmt: skip
    conf = agent_config(tmp_path / f"agent-{key[1]}.yaml", *key, resend_after=resend_after)
    return Agent(procs, link, tmp_path, *key, interval, "--config", str(conf)).start()


def once_each(seqs: list[int]) -> list[tuple[int, int]]:
    """The seqs that appear more than once, with how often."""
    return sorted((s, n) for s, n in Counter(seqs).items() if n > 1)


def until_current(after: list[int], newest: int) -> int:
    """Index of the first seq at or above ``newest`` (the current batch)."""
    for i, seq in enumerate(after):
        if seq >= newest:
            return i
    raise AssertionError(f"no current batch (seq >= {newest}) reached the broker: {after[:50]}")


# --- the proxy itself ------------------------------------------------------------------------


class EchoServer:
    """Echoes every byte back, one thread per connection."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(4096):
                    conn.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


def _echoes(sock: socket.socket, data: bytes, within: float) -> bool:
    """Whether ``data`` comes back whole within ``within`` seconds."""
    sock.sendall(data)
    got = b""
    deadline = time.monotonic() + within
    while len(got) < len(data) and time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            chunk = sock.recv(65536)
            if not chunk:
                return False
            got += chunk
    return got == data


def _is_reset(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_netproxy_modes(proxies: list[NetProxy]) -> None:
    echo = EchoServer()
    proxy = NetProxy(echo.port).start()
    proxies.append(proxy)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port)) as a:
            assert _echoes(a, b"ping", 5)
            assert wait_for("the counts", lambda: (proxy.bytes_up, proxy.bytes_down) == (4, 4), 5)

            # throttle: 2 KB at 4 KB/s and 300 ms each way cannot come back in under 1.1 s
            proxy.set_mode(THROTTLE, rate=4096, latency=0.3)
            started = time.monotonic()
            assert _echoes(a, b"x" * 2048, 20)
            assert time.monotonic() - started >= 1.0

            # blackhole: held, not closed; a new connection is accepted and held too
            proxy.set_mode(BLACKHOLE)
            assert not _echoes(a, b"lost", 0.5)
            b = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            assert not _echoes(b, b"held", 0.5)
            assert proxy.open_connections() == 2
            # healed: what lived through the partition is reset, new connections work
            proxy.set_mode(PASS)
            assert _is_reset(a) and _is_reset(b)
            b.close()
        with socket.create_connection(("127.0.0.1", proxy.port)) as c:
            assert _echoes(c, b"back", 5)
            # drop: reset, and refused until the link returns, on the same port
            proxy.set_mode(DROP)
            assert _is_reset(c)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        proxy.set_mode(PASS)
        with socket.create_connection(("127.0.0.1", proxy.port)) as d:
            assert _echoes(d, b"again", 5)
        assert proxy.resets >= 3
    finally:
        echo.close()


# --- link outages ----------------------------------------------------------------------------


@pytest.mark.timeout(FAULT_SECONDS * 2 + 240)
@pytest.mark.parametrize(
    "mode",
    [DROP, BLACKHOLE],
)
def test_link_outage_loses_nothing_and_sends_current_data_first(
    mode: str, procs: Procs, broker: Mosquitto, collector: Collector, tmp_path: Path,
    proxies: list[NetProxy], observers: list[Observer],
) -> None:  # fmt: skip
    """The link goes for FAULT_SECONDS while the agent goes on collecting. The broker's Last
    Will marks the host lost; when the link returns every seq arrives, the newest batch first
    and then the backlog in seq order."""
    key = ("site-link", f"srv-{mode}")
    proxy = link_to(broker, proxies)
    obs = observe(broker, key, observers)
    agent = start_agent(procs, proxy, tmp_path, key)
    wait_for("first batches", lambda: settled_to(collector, key, 5), 30)

    # drop: cut at a quiet moment, so no batch is caught in flight (the blackhole cannot
    # avoid that: the agent goes on publishing until its keepalive notices).
    proxy.set_mode(mode, quiet=0.05)
    cut = time.monotonic()
    wait_for("the Last Will: host lost",
             lambda: host_of(collector, key)["state"] == "lost", WILL_DEADLINE)  # fmt: skip
    will_after = time.monotonic() - cut
    assert any(s["status"] == "offline" and s.get("reason") == "lost" for s in obs.statuses)
    had = host_of(collector, key)["last_seq"]
    # The agent keeps collecting: the outage lasts FAULT_SECONDS and a backlog of over 100.
    wait_for(
        "the outage to last and the backlog to grow",
        lambda: time.monotonic() - cut >= FAULT_SECONDS and outbox_seq(agent) - had > 100,
        FAULT_SECONDS + 120,
        interval=0.2,
    )
    backlog_seqs = set(range(had + 1, outbox_seq(agent) + 1))
    assert host_of(collector, key)["last_seq"] == had, "batches crossed the cut link"
    seen = obs.count()
    newest = outbox_seq(agent)
    proxy.set_mode(PASS)
    healed = time.monotonic()
    outage = healed - cut

    deadline = 60 + len(backlog_seqs) / 20
    h = wait_for("the backlog applied", lambda: settled_to(collector, key, newest), deadline)
    drained = time.monotonic() - healed
    assert h["state"] == "online"
    counts = final_counts(collector, key, agent, deadline)
    obs.flush()
    assert set(obs.since(0)) >= set(range(1, counts["sent"] + 1)), "a seq never reached the broker"
    after = obs.since(seen)
    first = until_current(after, newest)
    replayed = after[:first]
    save(
        f"link-outage-{mode}",
        counts,
        f"link {mode} for {outage:.0f} s at a {INTERVAL} s interval, backlog {len(backlog_seqs)} "
        f"batches, drained {drained:.1f} s after the link returned; Last Will after "
        f"{will_after:.1f} s (keepalive {KEEPALIVE} s); {len(replayed)} batches re-sent ahead "
        "of the current one",
    )

    # After the current batch, the backlog goes out in ascending seq order, all of it.
    current = after[first]
    backlog = [s for s in after[first + 1 :] if s < current]
    assert backlog == sorted(backlog), backlog
    assert set(backlog) | set(replayed) >= backlog_seqs - {current}, "backlog batches missing"
    if replayed:
        raise NotCurrentFirst(
            f"{len(replayed)} batches of the backlog (seqs {min(replayed)}..{max(replayed)}) "
            f"reached the broker before the current one (seq {current}); repeated: "
            f"{len(once_each(after))}"
        )
    assert once_each(after) == [], "a batch crossed the healed link twice"


# --- the broker ------------------------------------------------------------------------------


def test_broker_restart_with_persistence_loses_nothing(
    procs: Procs, broker: Mosquitto, collector: Collector, tmp_path: Path,
    observers: list[Observer],
) -> None:  # fmt: skip
    """mosquitto stops (SIGTERM: it saves its store) while the agent is connected, and starts
    again. A persistent subscriber that was away gets what was queued for it; the agent sends
    what it collected meanwhile; nothing is lost."""
    key = ("site-b", "srv1")
    agent = start_agent(procs, broker, tmp_path, key)
    wait_for("first batches", lambda: settled_to(collector, key, 3), 30)
    away = observe(broker, key, observers, "witness", persistent=True)
    away.stop()
    left_at = outbox_seq(agent)
    wait_for("ten batches queued for the witness",
             lambda: settled_to(collector, key, left_at + 10), 30)  # fmt: skip
    broker.stop()
    stopped_at = outbox_seq(agent)
    queued = set(range(left_at + 1, host_of(collector, key)["last_seq"] + 1))
    down = time.monotonic()
    wait_for("the agent collecting while the broker is down",
             lambda: outbox_seq(agent) >= stopped_at + 20, 30, interval=0.2)  # fmt: skip
    broker.start()
    down_for = time.monotonic() - down

    back = observe(broker, key, observers, "witness", persistent=True)
    assert back.session_present, "mosquitto did not keep the witness's session"
    back.flush()
    kept = {s for s in back.since(0) if s in queued}
    assert kept == queued, f"persisted queue: {len(kept)} of {len(queued)}"
    counts = final_counts(collector, key, agent)
    assert collector.proc is not None
    assert "session present: True" in collector.proc.output()
    save(
        "broker-restart",
        counts,
        f"mosquitto stopped for {down_for:.1f} s (persistence on, SIGTERM) at a {INTERVAL} s "
        f"interval; {len(kept)}/{len(queued)} batches queued for an absent persistent "
        "subscriber survived the restart",
    )


def test_broker_kill_9_after_puback_loses_nothing(
    procs: Procs, broker: Mosquitto, collector: Collector, tmp_path: Path,
    proxies: list[NetProxy], observers: list[Observer],
) -> None:  # fmt: skip
    """The broker acknowledges batches, holds them for the (stopped) collector's session, and
    dies with kill -9 before writing them to disk. The agent's outbox still has them."""
    key = ("site-c", "srv1")
    proxy = link_to(broker, proxies)
    obs = observe(broker, key, observers)
    agent = start_agent(procs, proxy, tmp_path, key)
    wait_for("first batches", lambda: settled_to(collector, key, 3), 30)
    witness = observe(broker, key, observers, "witness", persistent=True)
    witness.stop()
    applied = host_of(collector, key)["last_seq"]
    assert collector.proc is not None and collector.proc.stop() == 0
    wait_for("ten more batches routed by the broker",
             lambda: len({s for s in obs.since(0) if s > applied}) >= 10, 30)  # fmt: skip
    # Keep the agent away until the broker is back and has shown what it kept.
    proxy.set_mode(DROP, quiet=0.05)
    acked = {s for s in obs.since(0) if s > applied}  # PUBACKed and routed, not applied
    broker.kill9()
    broker.start()

    back = observe(broker, key, observers, "witness", persistent=True)
    back.flush()
    kept = {s for s in back.since(0) if s in acked}
    collector.start()
    proxy.set_mode(PASS)
    counts = final_counts(collector, key, agent)
    save(
        "broker-kill-9",
        counts,
        f"mosquitto (persistence on, default autosave) acknowledged {len(acked)} batches for "
        f"the stopped collector and was killed with -9: {len(acked) - len(kept)} of them were "
        f"gone after the restart (session kept: {back.session_present}); the agent re-sent "
        "them from its outbox",
    )


# --- slow link -------------------------------------------------------------------------------

SLOW_RATE = 8 * 1024  # bytes/s each way
SLOW_LATENCY = 0.3  # s one way
SLOW_INTERVAL = 2.0  # a batch is about 6 KB: 3 KB/s of current data on an 8 KB/s link


def _slow_link_backlog(
    procs: Procs, broker: Mosquitto, collector: Collector, tmp_path: Path,
    proxies: list[NetProxy], observers: list[Observer], key: tuple[str, str],
    resend_after: float, outage: float,
) -> tuple[Agent, NetProxy, Observer, int]:  # fmt: skip
    """An agent whose link was down for ``outage`` s and now comes back slow. Returns the
    agent, the link, the observer and the newest seq when the link returned."""
    proxy = link_to(broker, proxies)
    obs = observe(broker, key, observers)
    agent = start_agent(procs, proxy, tmp_path, key, SLOW_INTERVAL, resend_after)
    wait_for("first batches", lambda: settled_to(collector, key, 1), 30)
    proxy.set_mode(DROP, quiet=0.05)
    had = host_of(collector, key)["last_seq"]
    wait_for(f"a backlog of {outage / SLOW_INTERVAL:.0f} batches",
             lambda: outbox_seq(agent) >= had + outage / SLOW_INTERVAL, outage + 60)  # fmt: skip
    newest = outbox_seq(agent)
    proxy.set_mode(THROTTLE, rate=SLOW_RATE, latency=SLOW_LATENCY)
    return agent, proxy, obs, newest


def test_slow_link_drains_the_backlog(
    procs: Procs, broker: Mosquitto, collector: Collector, tmp_path: Path,
    proxies: list[NetProxy], observers: list[Observer],
) -> None:  # fmt: skip
    key = ("site-slow", "srv1")
    agent, proxy, obs, newest = _slow_link_backlog(
        procs, broker, collector, tmp_path, proxies, observers, key, 60.0, 10.0
    )
    seen = obs.count()
    healed, up0 = time.monotonic(), proxy.bytes_up
    backlog = newest - host_of(collector, key)["last_seq"]
    size = obs.batch_bytes()
    # Deadline: the backlog's bytes over the spare rate, three times over, plus reconnecting.
    spare = SLOW_RATE - size / SLOW_INTERVAL
    assert spare > SLOW_RATE / 4, f"batches of {size:.0f} B leave too little room on the link"
    deadline = 3 * backlog * size / spare + 20
    wait_for("the backlog over the slow link",
             lambda: settled_to(collector, key, newest), deadline)  # fmt: skip
    took = time.monotonic() - healed
    rate = (proxy.bytes_up - up0) / took
    assert rate <= SLOW_RATE * 1.1, f"the link carried {rate:.0f} B/s, above its cap"
    counts = final_counts(collector, key, agent, deadline)
    after = obs.since(seen)
    assert once_each(after) == [], "a batch crossed the slow link twice"
    save(
        "slow-link",
        counts,
        f"{backlog} batches of backlog ({size / 1024:.1f} KB each, {SLOW_INTERVAL:g} s "
        f"interval) over a {SLOW_RATE // 1024} KB/s link with {SLOW_LATENCY * 1000:.0f} ms "
        f"one-way latency: drained in {took:.1f} s at {rate / 1024:.1f} KB/s",
    )


def test_slow_link_resends_nothing_still_in_flight(
    procs: Procs, broker: Mosquitto, collector: Collector, tmp_path: Path,
    proxies: list[NetProxy], observers: list[Observer],
) -> None:  # fmt: skip
    """The same slow link with the resend timer shorter than the backlog's crossing time
    (production: 60 s against a day's backlog on 4 KB/s). Nothing is lost, but every batch
    should cross once while the session stays up."""
    key = ("site-slow", "srv2")
    resend_after = 2.0
    agent, proxy, obs, newest = _slow_link_backlog(
        procs, broker, collector, tmp_path, proxies, observers, key, resend_after, 10.0
    )
    seen = obs.count()
    healed = time.monotonic()
    wait_for("the backlog over the slow link", lambda: settled_to(collector, key, newest), 90)
    took = time.monotonic() - healed
    lag = outbox_seq(agent) - host_of(collector, key)["settled_upto"]
    # Then the link recovers its speed, and whatever the agent queued crosses at once.
    proxy.set_mode(PASS)
    counts = final_counts(collector, key, agent, 90)
    obs.flush()
    repeated = once_each(obs.since(seen))
    save(
        "slow-link-short-resend",
        counts,
        f"as slow-link with outbox.resend_after_seconds {resend_after:g}: backlog to seq "
        f"{newest} applied {took:.1f} s after the link returned, the collector then {lag} "
        f"batches behind; {len(repeated)} batches crossed the link more than once",
    )
    if repeated:
        raise ResentWhileInFlight(
            f"{len(repeated)} batches crossed the live link more than once "
            f"({sum(n for _, n in repeated)} copies), e.g. {repeated[:5]}; "
            f"the collector counted {counts['duplicates']} duplicates"
        )


# --- broker queue overflow -------------------------------------------------------------------


def sys_value(broker: Mosquitto, topic: str) -> int:
    """A counter from mosquitto's $SYS tree (retained, refreshed every sys_interval)."""
    out = subprocess.run(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", topic, "-C", "1",
         "-W", "5"],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    return int(out.stdout.split()[0])


def test_broker_queue_overflow_is_a_delay_not_a_loss(
    procs: Procs, tmp_path: Path, observers: list[Observer]
) -> None:
    """mosquitto with max_queued_messages 50 and max_inflight_messages 10 drops silently what
    is queued past them for the collector while it is away. The agent's batches wait for the
    collector's end-to-end ack, so what the broker dropped is sent again."""
    broker = Mosquitto(procs, tmp_path / "broker")
    with broker.conf.open("a") as conf:
        conf.write("max_inflight_messages 10\nmax_queued_messages 50\nsys_interval 1\n")
    broker.start()
    collector = Collector(procs, broker, tmp_path).start()
    key = ("site-q", "srv1")
    resend_after = 3.0
    agent = start_agent(procs, broker, tmp_path, key, INTERVAL, resend_after)
    wait_for("first batches", lambda: settled_to(collector, key, 3), 30)
    applied = host_of(collector, key)["last_seq"]
    assert collector.proc is not None and collector.proc.stop() == 0
    away = time.monotonic()
    wait_for("over 60 batches while the collector is away",
             lambda: outbox_seq(agent) > applied + 80, 60, interval=0.2)  # fmt: skip
    wait_for("mosquitto dropping", lambda: sys_value(broker, DROPPED) > 0, 10)
    away_for = time.monotonic() - away
    collector.start()
    counts = final_counts(collector, key, agent, 90)
    # $SYS is refreshed every second: wait for the counter to stay put.
    readings = [-1]

    def steady() -> bool:
        readings.append(sys_value(broker, DROPPED))
        return readings[-1] == readings[-2]

    wait_for("the $SYS drop counter to stay put", steady, 20, interval=1.2)
    dropped_by_broker = readings[-1]
    assert dropped_by_broker > 0
    save(
        "broker-queue-overflow",
        counts,
        f"mosquitto max_queued_messages 50, max_inflight_messages 10; the collector away "
        f"{away_for:.0f} s at a {INTERVAL} s interval, resend after {resend_after:g} s; "
        f"mosquitto dropped {dropped_by_broker} messages ($SYS/broker/publish/messages/"
        "dropped), all re-sent from the outbox",
    )


DROPPED = "$SYS/broker/publish/messages/dropped"

"""The agent's delivery order and end-to-end acks, with a fake publisher (no broker)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config import AgentConfig, OutboxConfig
from agent.cycle import Identity
from agent.outage import OutageTracker, TrackerState
from agent.outbox import Outbox
from agent.publisher import SessionEvent
from agent.runner import Agent
from outpost import wire


class FakePublisher:
    def __init__(self) -> None:
        self.connected = True
        self.sent: list[dict] = []
        self.refuse = False

    def publish(self, kind: str, payload: bytes) -> int | None:
        if self.refuse:
            return None
        self.sent.append(json.loads(payload))
        return len(self.sent)


def make_agent(tmp_path: Path, **outbox: object) -> tuple[Agent, FakePublisher]:
    cfg = AgentConfig(site="s1", host="h1", state_dir=str(tmp_path), outbox=OutboxConfig(**outbox))
    agent = Agent(cfg, sources=[])
    agent.outbox = Outbox(tmp_path / "outbox.sqlite", cfg.outbox.max_bytes)
    agent.who = Identity("s1", "h1", agent.outbox.agent_id, "boot")
    agent.outages = OutageTracker(TrackerState(), cfg.outage_report_min_seconds)
    pub = FakePublisher()
    agent.publisher = pub  # type: ignore[assignment]
    return agent, pub


def ack(agent: Agent, upto: int, ranges: list[tuple[int, int]] | None = None) -> None:
    msg = wire.Ack(v=1, agent_id=agent.who.agent_id, upto=upto, ranges=ranges or [])
    agent._handle(SessionEvent("ack", wire.encode(msg)))


def test_nothing_is_sent_before_the_session_is_up(tmp_path: Path) -> None:
    agent, pub = make_agent(tmp_path)
    agent.cycle(1000.0)
    agent._drain()
    assert pub.sent == []
    agent._handle(SessionEvent("connected"))
    agent._drain()
    assert [b["seq"] for b in pub.sent] == [1]


def test_after_an_outage_the_newest_goes_first_then_the_backlog_in_order(tmp_path: Path) -> None:
    agent, pub = make_agent(tmp_path)
    for i in range(5):  # collected while the link was down
        agent.cycle(1000.0 + i)
    agent._handle(SessionEvent("connected"))
    agent.cycle(1010.0)  # a current batch arrives right after the reconnect
    agent._drain()
    assert [b["seq"] for b in pub.sent] == [5, 6, 1, 2, 3, 4]
    assert all(b["outbox_low"] == 1 for b in pub.sent)


def test_rows_leave_the_outbox_only_when_acked_end_to_end(tmp_path: Path) -> None:
    agent, _pub = make_agent(tmp_path)
    agent._handle(SessionEvent("connected"))
    for i in range(3):
        agent.cycle(1000.0 + i)
        agent._drain()
    assert agent.outbox.stats().rows == 3  # published (PUBACK or not) is not delivered
    ack(agent, 1, [(3, 3)])
    assert agent.outbox.stats().rows == 1 and agent.outbox.low() == 2
    ack(agent, 3)
    assert agent.outbox.stats().rows == 0


def test_an_ack_for_another_agent_is_ignored(tmp_path: Path) -> None:
    agent, _pub = make_agent(tmp_path)
    agent._handle(SessionEvent("connected"))
    agent.cycle(1000.0)
    agent._drain()
    other = wire.Ack(v=1, agent_id="someone-else", upto=10)
    agent._handle(SessionEvent("ack", wire.encode(other)))
    agent._handle(SessionEvent("ack", b"garbage"))
    assert agent.outbox.stats().rows == 1


def test_a_disconnect_means_resending_what_was_in_flight(tmp_path: Path) -> None:
    agent, pub = make_agent(tmp_path)
    agent._handle(SessionEvent("connected"))
    agent.cycle(1000.0)
    agent.cycle(1001.0)
    agent._drain()
    assert [b["seq"] for b in pub.sent] == [1, 2]
    agent._handle(SessionEvent("disconnected"))
    agent._handle(SessionEvent("connected"))
    agent._drain()
    assert [b["seq"] for b in pub.sent[2:]] == [2, 1]


def test_the_in_flight_window_is_respected(tmp_path: Path) -> None:
    agent, pub = make_agent(tmp_path, max_inflight=3)
    agent._handle(SessionEvent("connected"))
    for i in range(6):
        agent.cycle(1000.0 + i)
    agent._drain()
    assert len(pub.sent) == 3
    ack(agent, 2)
    agent._drain()
    assert len(pub.sent) == 5


def test_a_refused_publish_is_counted_and_kept(tmp_path: Path) -> None:
    agent, pub = make_agent(tmp_path)
    agent._handle(SessionEvent("connected"))
    pub.refuse = True
    agent.cycle(1000.0)
    agent._drain()
    assert agent.publish_failures == 1 and agent.outbox.stats().rows == 1
    pub.refuse = False
    agent._drain()
    assert [b["seq"] for b in pub.sent] == [1]


def test_drops_under_pressure_are_declared_in_the_next_batch(tmp_path: Path) -> None:
    agent, pub = make_agent(tmp_path, max_bytes=65536)
    for i in range(200):  # about 1.3 kB each with no sources: the outbox overflows
        agent.cycle(1000.0 + i)
    dropped = agent.outbox.dropped_ranges()
    assert dropped and dropped[0][0] == 1
    agent._handle(SessionEvent("connected"))
    agent._drain()
    first = pub.sent[0]
    assert [tuple(r) for r in first["dropped"]] == dropped
    assert first["outbox_low"] == dropped[-1][1] + 1
    decoded = wire.decode_batch(json.dumps(first).encode(), None, wire.Limits())
    assert decoded.dropped == dropped


def test_a_cycle_too_big_for_one_message_is_split_under_the_limits() -> None:
    from agent.cycle import encode_batches

    who = Identity("s1", "h1", "a" * 32, "boot")
    limits = wire.Limits(max_payload_bytes=64 * 1024, max_samples=700)
    samples = [wire.Sample("outpost_x", float(i), {"k": "v" * 200}) for i in range(1500)]
    encoded = encode_batches(who, 7, 1000, 15.0, limits, samples)
    assert len(encoded) > 3
    got = [wire.decode_batch(data, None, limits) for data in encoded]
    assert [b.seq for b in got] == list(range(7, 7 + len(got)))
    assert sum(len(b.samples) for b in got) == 1500
    assert all(len(d) < limits.max_payload_bytes - 1024 for d in encoded)


def test_the_resend_clock_runs_from_the_brokers_puback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a slow link a batch may take longer than resend_after_seconds to cross: it is sent
    again only once the broker has taken it and the collector's ack is still missing."""
    clock = [100.0]
    monkeypatch.setattr("agent.runner.time.monotonic", lambda: clock[0])
    agent, pub = make_agent(tmp_path, resend_after_seconds=5.0)
    agent.cycle(1000.0)
    agent._handle(SessionEvent("connected"))
    agent._drain()
    assert [b["seq"] for b in pub.sent] == [1]
    clock[0] += 30  # still crossing the link: no PUBACK yet
    agent._drain()
    assert len(pub.sent) == 1
    agent._handle(SessionEvent("published", mid=1))  # the broker has it now
    clock[0] += 4
    agent._drain()
    assert len(pub.sent) == 1
    clock[0] += 2  # 6 s since the PUBACK and no ack: the broker or the collector lost it
    agent._drain()
    assert [b["seq"] for b in pub.sent] == [1, 1]
    # A PUBACK that never comes on a connection that stays up: resent after ten periods.
    clock[0] += 49
    agent._drain()
    assert len(pub.sent) == 2
    clock[0] += 2
    agent._drain()
    assert len(pub.sent) == 3


def test_paho_forgets_unacknowledged_publishes_on_a_disconnect() -> None:
    """paho would re-send these itself after the next CONNACK, ahead of the current batch."""
    import paho.mqtt.client as mqtt

    from agent.publisher import _forget_unacknowledged

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.publish("outpost/v1/s1/h1/metrics", b"{}", qos=1)  # queued while disconnected
    assert len(client._out_messages) == 1
    _forget_unacknowledged(client)
    assert len(client._out_messages) == 0 and client._inflight_messages == 0

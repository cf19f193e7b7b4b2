"""The agent's loop between cycles: how long it may sleep, that an idle turn reads nothing from
the outbox, and that :meth:`Agent.wake` ends a sleep at once (no broker: a fake publisher)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent.config import AgentConfig
from agent.cycle import Identity
from agent.outage import OutageTracker, TrackerState
from agent.outbox import Outbox
from agent.publisher import SessionEvent
from agent.runner import Agent
from outpost import systemd, wire


class FakePublisher:
    def __init__(self, config: Any = None) -> None:
        self.connected = True
        self.sent: list[int] = []

    def publish(self, kind: str, payload: bytes) -> int | None:
        self.sent.append(json.loads(payload)["seq"])
        return len(self.sent)

    def start(self) -> None:
        pass

    def stop(self) -> bool:
        return True


def make_agent(tmp_path: Path, **changes: Any) -> tuple[Agent, FakePublisher]:
    data: dict[str, Any] = {
        "site": "s1",
        "host": "h1",
        "state_dir": str(tmp_path),
        "sources": {"security": {"enabled": False}},
        **changes,
    }
    cfg = msgspec.convert(data, AgentConfig)
    agent = Agent(cfg, sources=[])
    agent.outbox = Outbox(tmp_path / "outbox.sqlite", cfg.outbox.max_bytes)
    agent.who = Identity("s1", "h1", agent.outbox.agent_id, "boot")
    agent.outages = OutageTracker(TrackerState(), cfg.outage_report_min_seconds)
    pub = FakePublisher()
    agent.publisher = pub  # type: ignore[assignment]
    return agent, pub


class CountingOutbox:
    """Counts the outbox reads the sender makes."""

    def __init__(self, agent: Agent) -> None:
        self.reads = 0
        real = agent.outbox.rows_after

        def rows_after(*args: Any) -> Any:
            self.reads += 1
            return real(*args)

        agent.outbox.rows_after = rows_after  # type: ignore[method-assign]


NO_WATCHDOG = systemd.Watchdog(None)


def test_an_idle_turn_reads_nothing_yet_new_rows_and_the_backlog_still_go(tmp_path: Path) -> None:
    agent, pub = make_agent(tmp_path)
    for i in range(3):  # collected while the link was down
        agent.cycle(1000.0 + i)
    agent._handle(SessionEvent("connected"))
    counted = CountingOutbox(agent)
    agent._drain()
    assert pub.sent == [3, 1, 2]  # the newest first, then the backlog
    reads = counted.reads
    for _ in range(5):
        agent._drain()
    assert counted.reads == reads  # nothing new, the backlog done: no query at all
    agent.cycle(1010.0)
    agent._drain()
    assert pub.sent == [3, 1, 2, 4] and counted.reads == reads + 1
    # After a reconnect everything not acknowledged goes again, backlog included.
    agent._handle(SessionEvent("connected"))
    agent._drain()
    assert pub.sent[4:] == [4, 1, 2, 3]


def test_a_resend_still_happens_when_the_backlog_was_done(tmp_path: Path) -> None:
    agent, pub = make_agent(tmp_path, outbox={"resend_after_seconds": 1.0})
    agent.cycle(1000.0)
    agent.cycle(1001.0)
    agent._handle(SessionEvent("connected"))
    agent._drain()
    assert pub.sent == [2, 1]
    for seq in (1, 2):
        agent._inflight[seq] = time.monotonic() - 5  # PUBACKed long ago, never acked
    agent._drain()
    assert pub.sent == [2, 1, 2, 1]


def test_with_no_poll_the_loop_sleeps_until_its_next_job(tmp_path: Path) -> None:
    agent, pub = make_agent(tmp_path, outbox={"resend_after_seconds": 60.0})
    now = time.monotonic()
    agent._next_cycle = now + 15.0
    agent._line_shown, agent._line_at = "shown", now
    assert agent._idle_seconds(NO_WATCHDOG, 5.0, "shown", None) == pytest.approx(15.0, abs=0.5)
    assert agent._idle_seconds(NO_WATCHDOG, 5.0, "shown", 1.0) == 1.0  # capped when asked
    # A status line held back by its gap goes out when the gap has passed.
    assert agent._idle_seconds(NO_WATCHDOG, 5.0, "changed", None) == pytest.approx(5.0, abs=0.5)
    # A batch in flight on a live session: wake when its resend falls due.
    agent._ready = True
    agent._inflight[1] = now - 50.0
    assert agent._idle_seconds(NO_WATCHDOG, 5.0, "shown", None) == pytest.approx(10.0, abs=0.5)
    pub.connected = False  # nothing can be resent: the session's events wake the loop
    assert agent._idle_seconds(NO_WATCHDOG, 5.0, "shown", None) == pytest.approx(15.0, abs=0.5)
    watchdog = systemd.Watchdog(4.0, send=lambda state: True)
    watchdog.ping()
    assert agent._idle_seconds(watchdog, 5.0, "shown", None) == pytest.approx(2.0, abs=0.5)


def test_wake_ends_the_sleep_of_a_loop_that_does_not_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A one-hour cycle and no poll: only the wake can make ``run`` see ``stop``."""
    agent, _pub = make_agent(tmp_path, interval_seconds=3600.0)
    monkeypatch.setattr(agent, "_publisher", lambda cfg: FakePublisher())
    stop = threading.Event()
    done = threading.Event()

    def run() -> None:
        agent.run(stop, poll=None)
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while agent.outbox.next_seq < 2 and time.monotonic() < deadline:  # the first cycle ran
        time.sleep(0.01)
    stop.set()
    assert not done.wait(0.3)  # set, but the loop sleeps on
    agent.wake()
    assert done.wait(30)
    thread.join(5)


def test_an_ack_still_deletes_what_it_covers(tmp_path: Path) -> None:
    agent, _pub = make_agent(tmp_path)
    agent._handle(SessionEvent("connected"))
    agent.cycle(1000.0)
    agent._drain()
    ack = wire.Ack(v=1, agent_id=agent.who.agent_id, upto=1, ranges=[])
    agent._handle(SessionEvent("ack", wire.encode(ack)))
    assert agent.outbox.stats().rows == 0 and not agent._inflight

"""Agent.apply: a reloaded config goes live without closing the outbox; what needs a restart,
or cannot be used, is refused whole (no broker: a fake publisher)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent.config import AgentConfig
from agent.cycle import Identity
from agent.outage import OutageTracker, TrackerState
from agent.outbox import Outbox
from agent.runner import Agent
from agent.sources import build_sources


class FakePublisher:
    def __init__(self, config: Any = None) -> None:
        self.config = config
        self.connected = True
        self.started = self.stopped = 0

    def publish(self, kind: str, payload: bytes) -> int | None:
        return 1

    def start(self) -> None:
        self.started += 1

    def stop(self) -> bool:
        self.stopped += 1
        self.connected = False
        return True


def config(tmp_path: Path, **changes: Any) -> AgentConfig:
    data: dict[str, Any] = {
        "site": "s1",
        "host": "h1",
        "state_dir": str(tmp_path),
        "interval_seconds": 10.0,
        "sources": {"security": {"enabled": False}},
    }
    data.update(changes)
    return msgspec.convert(data, AgentConfig)


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Agent:
    cfg = config(tmp_path)
    agent = Agent(cfg)
    agent.outbox = Outbox(tmp_path / "outbox.sqlite", cfg.outbox.max_bytes)
    agent.who = Identity("s1", "h1", agent.outbox.agent_id, "boot")
    agent.outages = OutageTracker(TrackerState(), cfg.outage_report_min_seconds)
    agent.publisher = FakePublisher(cfg.broker)  # type: ignore[assignment]
    monkeypatch.setattr(agent, "_publisher", lambda cfg: FakePublisher(cfg.broker))
    agent._next_cycle = time.monotonic() + 10.0
    return agent


def test_the_interval_and_limits_change_live_and_the_outbox_stays(
    agent: Agent, tmp_path: Path
) -> None:
    agent.cycle(time.time())
    outbox, seq, agent_id = agent.outbox, agent.outbox.next_seq, agent.outbox.agent_id
    sources = list(agent.sources)
    new = config(tmp_path, interval_seconds=2.0, outbox={"max_bytes": 100_000})
    assert agent.apply(new) == ["interval_seconds", "outbox.max_bytes"]
    assert agent.config is new
    assert agent.outbox is outbox and outbox.next_seq == seq and outbox.agent_id == agent_id
    assert outbox.max_bytes == 100_000
    assert agent.sources == sources  # their blocks did not change: the same objects
    # The next cycle is one new interval after the last one, not ten seconds away.
    assert agent._next_cycle - time.monotonic() <= 2.0
    agent.cycle(time.time())
    assert outbox.next_seq > seq


def test_nothing_changed_is_nothing_done(agent: Agent, tmp_path: Path) -> None:
    assert agent.apply(config(tmp_path)) == []


@pytest.mark.parametrize(
    "change", [{"site": "s2"}, {"host": "h2"}, {"state_dir": "/elsewhere"}], ids=str
)
def test_identity_and_state_dir_need_a_restart(
    agent: Agent, tmp_path: Path, change: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    before = agent.config
    with caplog.at_level(logging.ERROR):
        assert agent.apply(config(tmp_path, interval_seconds=1.0, **change)) is None
    assert agent.config is before  # refused whole: the interval did not change either
    (key,) = change
    assert f"reload refused: {key} changed" in caplog.text and "needs a restart" in caplog.text


def test_changed_sources_are_built_again_and_others_kept(agent: Agent, tmp_path: Path) -> None:
    system, probes = agent.sources[0], agent.sources[1]
    target = {"name": "gw", "kind": "tcp", "address": "127.0.0.1", "port": 9}
    blocks = {"security": {"enabled": False}, "probes": {"targets": [target]}}
    new = config(tmp_path, sources=blocks)
    assert agent.apply(new) == ["sources.probes"]
    assert agent.sources[0] is system
    assert agent.sources[1] is not probes and agent.sources[1].name == "probes"
    off = config(tmp_path, sources={"security": {"enabled": False}, "probes": {"enabled": False}})
    assert agent.apply(off) == ["sources.probes"]
    assert [s.name for s in agent.sources] == [s.name for s in build_sources(off.sources)]


def test_a_source_that_cannot_start_refuses_the_reload(
    agent: Agent, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before, sources = agent.config, list(agent.sources)
    secret = str(tmp_path / "missing.key")
    new = config(
        tmp_path,
        interval_seconds=1.0,
        sources={"security": {"privacy": {"pseudonymise": True, "secret_file": secret}}},
    )
    with caplog.at_level(logging.ERROR):
        assert agent.apply(new) is None
    assert agent.config is before and agent.sources == sources
    assert "reload refused: source security" in caplog.text


def test_broker_settings_reconnect_the_publisher(agent: Agent, tmp_path: Path) -> None:
    old = agent.publisher
    new = config(tmp_path, broker={"url": "mqtt://127.0.0.1:1884", "keepalive_seconds": 30})
    assert agent.apply(new) == ["broker.url", "broker.keepalive_seconds"]
    assert old.stopped == 1  # type: ignore[attr-defined]
    assert agent.publisher is not old
    assert agent.publisher.started == 1  # type: ignore[attr-defined]
    assert agent.publisher.config.url == "mqtt://127.0.0.1:1884"
    assert agent._ready is False  # until the new session says it is connected

"""The security source as a whole: its config, its checks failing on their own, messages,
pseudonyms, and its state committed with its events by the runner (a failed write means the
same events come again, a restart means none comes twice)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent.config import AgentConfig
from agent.cycle import Identity
from agent.outage import OutageTracker, TrackerState
from agent.outbox import Outbox
from agent.runner import Agent
from agent.sources.base import Collected, Stateful
from agent.sources.security import _MESSAGES, SecurityConfig, SecuritySource, describe
from outpost import wire
from outpost.wire import Event

DOCS = Path(__file__).resolve().parents[3] / "docs" / "events.md"
NOW = 1_800_000_000.0


def line(user: str) -> str:
    return (
        f"Jan 15 08:00:00 town-hall sshd[77]: Accepted password for {user} from "
        "192.0.2.10 port 40000 ssh2\n"
    )


def config(tmp_path: Path, **security: Any) -> SecurityConfig:
    auth_log = tmp_path / "auth.log"
    if not auth_log.exists():
        auth_log.write_text("", encoding="utf-8")
    block: dict[str, Any] = {
        "auth_log": {"path": str(auth_log)},
        "ports": {"enabled": False},
        "files": {"paths": [str(tmp_path / "watched")], "interval_seconds": 0},
        "boot_clock": {"enabled": False},
    }
    for key, value in security.items():
        block[key] = {**block.get(key, {}), **value}
    return msgspec.convert(block, SecurityConfig)


def append(tmp_path: Path, text: str) -> None:
    with (tmp_path / "auth.log").open("a", encoding="utf-8") as f:
        f.write(text)


def logins(collected: Collected) -> list[str]:
    return [e.attrs["user"] for e in collected.events if e.kind == "ssh_login"]


def test_every_kind_has_a_message_and_is_documented() -> None:
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", DOCS.read_text(encoding="utf-8"), re.M))
    kinds = set(_MESSAGES) - {"log_gap"}
    assert kinds <= documented, sorted(kinds - documented)
    assert "log_gap" in documented and "outage" in documented
    for kind in _MESSAGES:
        assert "?" not in describe(Event(kind)) or "{" not in describe(Event(kind))
    event = Event("sudo", attrs={"user": "li", "command": "/usr/bin/apt", "run_as": "root"})
    assert describe(event) == "li ran /usr/bin/apt as root with sudo"
    assert describe(Event("made_up_kind")) == "made up kind"


def test_reads_new_lines_and_sums_up(tmp_path: Path) -> None:
    (tmp_path / "auth.log").write_text(line("history"), encoding="utf-8")
    source = SecuritySource(config(tmp_path))
    assert isinstance(source, Stateful)
    first = source.collect(NOW)
    assert logins(first) == []  # from the end at the very first start
    ok = {s.labels["check"]: s.value for s in first.samples if s.name.endswith("check_success")}
    assert ok == {"auth_log": 1.0, "files": 1.0}
    append(tmp_path, line("wang") + "garbage \x00\xff line\n" + line("zhao"))
    got = source.collect(NOW + 1)
    assert logins(got) == ["wang", "zhao"]
    assert got.events[0].message == "wang logged in over SSH from 192.0.2.10 (password)"


def test_a_failing_check_does_not_stop_the_others(tmp_path: Path) -> None:
    cfg = config(tmp_path, auth_log={"path": str(tmp_path / "missing-dir" / "auth.log")})
    source = SecuritySource(cfg)
    source.collect(NOW)
    (tmp_path / "watched").write_text("a", encoding="utf-8")
    got = source.collect(NOW + 1)
    assert [e.attrs["change"] for e in got.events if e.kind == "file_changed"] == ["created"]


def test_no_auth_log_and_no_journal_says_what_to_do(tmp_path: Path) -> None:
    cfg = config(tmp_path, auth_log={"path": "auto", "journalctl": "/nonexistent/journalctl"})
    source = SecuritySource(cfg)
    source.checks = [c for c in source.checks if c.name == "auth_log"]
    if any(Path(p).exists() for p in ("/var/log/auth.log", "/var/log/secure")):
        pytest.skip("this machine has an auth log")
    with pytest.raises(Exception, match=r"set security\.auth_log\.path"):
        source.collect(NOW)


def test_pseudonymised_before_anything_leaves(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("a-long-enough-deployment-secret", encoding="utf-8")
    secret.chmod(0o600)
    cfg = config(tmp_path, privacy={"pseudonymise": True, "secret_file": str(secret)})
    source = SecuritySource(cfg)
    source.preflight()
    source.collect(NOW)
    append(tmp_path, line("wang"))
    (event,) = [e for e in source.collect(NOW + 1).events if e.kind == "ssh_login"]
    assert event.attrs["user"].startswith("anon-") and event.attrs["source"].startswith("anon-")
    assert "wang" not in event.message and "192.0.2.10" not in event.message
    assert event.attrs["user"] in event.message


def test_a_missing_secret_is_refused_up_front(tmp_path: Path) -> None:
    cfg = config(tmp_path, privacy={"pseudonymise": True, "secret_file": str(tmp_path / "no")})
    with pytest.raises(ValueError):
        SecuritySource(cfg).preflight()


def test_config_refuses_relative_watch_paths() -> None:
    with pytest.raises(msgspec.ValidationError, match="absolute"):
        msgspec.convert({"files": {"paths": ["etc/passwd"]}}, SecurityConfig)


# --- committed with the events, through the runner ------------------------------------------


def make_agent(tmp_path: Path, source: SecuritySource) -> Agent:
    cfg = AgentConfig(site="s1", host="h1", state_dir=str(tmp_path))
    agent = Agent(cfg, sources=[source])
    agent.outbox = Outbox(tmp_path / "outbox.sqlite", cfg.outbox.max_bytes)
    agent.who = Identity("s1", "h1", agent.outbox.agent_id, "boot")
    agent.outages = OutageTracker(TrackerState(), cfg.outage_report_min_seconds)
    agent._restore_sources()
    return agent


def stored_logins(outbox: Outbox) -> list[str]:
    out = []
    for row in outbox.rows_after(0, None, 10_000):
        if row.kind == wire.EVENTS:
            batch = msgspec.json.decode(row.payload, type=wire.Batch)
            out += [e.attrs["user"] for e in batch.events if e.kind == "ssh_login"]
    return out


def test_failed_write_reads_again_and_restart_reads_nothing_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    agent = make_agent(state, SecuritySource(config(tmp_path)))
    agent.cycle(NOW)
    append(tmp_path, line("u1"))
    agent.cycle(NOW + 1)

    real = Outbox.add_many

    def full_disk(*args: Any, **kwargs: Any) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Outbox, "add_many", full_disk)
    append(tmp_path, line("u2"))
    agent.cycle(NOW + 2)  # read, but not stored: the source goes back
    assert agent.write_failures == 1
    monkeypatch.setattr(Outbox, "add_many", real)
    append(tmp_path, line("u3"))
    agent.cycle(NOW + 3)
    assert stored_logins(agent.outbox) == ["u1", "u2", "u3"]
    agent.outbox.close()

    # A new process: it goes on from the stored position.
    append(tmp_path, line("u4"))
    again = make_agent(state, SecuritySource(config(tmp_path)))
    again.cycle(NOW + 4)
    again.cycle(NOW + 5)
    assert stored_logins(again.outbox) == ["u1", "u2", "u3", "u4"]

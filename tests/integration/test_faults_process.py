"""Process faults, a full disk and clock trouble, with real processes.

- The collector restarted, then killed with kill -9 while several agents publish every 0.2 s:
  nothing lost, the duplicates the restart causes dropped and counted, a firing alert still
  firing afterwards, paged exactly once and resolved exactly once.
- An agent at a 0.1 s interval killed with kill -9 at random (seeded) moments, again and
  again: its outbox passes SQLite's integrity check after every kill, its seq never goes
  back, the collector ends up with every seq it stored and every event exactly once, and the
  agent counts the unclean restarts and the cycles they cost.
- The agent's state directory on a small tmpfs filled to the last byte while its link is down,
  and filled again once the agent gave up its reserve: it goes on, events still arrive, the
  metrics it dropped are counted as dropped (none lost), and metrics flow again once there is
  room (root only: it mounts a tmpfs).
- Agents whose clocks are 3 hours ahead and behind (libfaketime): the collector flags them and
  orders their data by seq, so one restarted with its clock set right goes on updating.

Every case records its figures with reliability.record after its assertions pass.
"""

from __future__ import annotations

import glob
import json
import os
import random
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml
from harness import Agent, Collector, Mosquitto, Procs, wait_for
from reliability import record
from webhook import Receiver

pytestmark = pytest.mark.integration

SITE = "faults"


# --- helpers --------------------------------------------------------------------------------


class Stored(NamedTuple):
    """What an agent's outbox holds, read from outside the agent."""

    integrity: str
    next_seq: int
    rows: int
    dropped_total: int
    full_episodes: int


def stored(state_dir: Path) -> Stored:
    """Open the outbox read-only (the agent may be running, or just killed) and read it.
    Raises ValueError when SQLite cannot read it (so ``wait_for`` tries again)."""
    try:
        return _stored(state_dir)
    except sqlite3.Error as exc:
        raise ValueError(f"cannot read the outbox in {state_dir}: {exc}") from exc


def _stored(state_dir: Path) -> Stored:
    db = sqlite3.connect(f"file:{state_dir / 'outbox.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        integrity = str(db.execute("PRAGMA integrity_check").fetchone()[0])
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        rows = int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    finally:
        db.close()
    return Stored(
        integrity,
        int(meta.get("next_seq", "1")),
        rows,
        int(meta.get("dropped_total", "0")),
        int(meta.get("full_episodes_total", "0")),
    )


def agent_config(path: Path, host: str, extra: dict[str, Any] | None = None) -> Path:
    """An agent config: no probes, and the security source only where ``extra`` has it."""
    cfg: dict[str, Any] = {
        "site": SITE,
        "host": host,
        "sources": {"probes": {"enabled": False}, "security": {"enabled": False}},
        **(extra or {}),
    }
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def make_agent(procs: Procs, broker: Mosquitto, tmp_path: Path, host: str, interval: float,
               extra: dict[str, Any] | None = None) -> Agent:  # fmt: skip
    """An agent of the test's site with its own config file (not started)."""
    conf = agent_config(tmp_path / f"agent-{host}.yaml", host, extra)
    return Agent(procs, broker, tmp_path, SITE, host, interval, "--config", str(conf))


def host_of(collector: Collector, host: str) -> dict[str, Any]:
    return collector.hosts()[(SITE, host)]


def settled(collector: Collector, agent: Agent) -> Stored:
    """Wait until the collector has settled every seq the agent has stored so far; returns
    what the outbox held at the start."""
    now = stored(agent.state)
    wait_for(
        f"{agent.host}: every seq below {now.next_seq} settled",
        lambda: (host_of(collector, agent.host)["settled_upto"] or 0) >= now.next_seq - 1,
        30,
    )
    return now


def online(collector: Collector, *agents: Agent) -> None:
    for agent in agents:
        wait_for(
            f"{agent.host} online",
            lambda a=agent: host_of(collector, a.host)["state"] == "online",
            30,
        )


def auth_line(user: str) -> str:
    return (
        f"{time.strftime('%b %e %H:%M:%S')} srv sshd[2211]: Accepted publickey for {user} from "
        "198.51.100.7 port 50100 ssh2: ED25519 SHA256:Qm9vZm9vYmFyYmF6cXV4cXV1eA\n"
    )


def append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(text)


def logins(collector: Collector, host: str) -> Counter[str]:
    status, body = collector.get(f"/api/v1/events?host={host}&kind=ssh_login&limit=10000")
    assert status == 200, body
    return Counter(e["attrs"]["user"] for e in json.loads(body)["events"])


def security(auth_log: Path) -> dict[str, Any]:
    """The security source reading only ``auth_log``."""
    return {
        "probes": {"enabled": False},
        "security": {
            "auth_log": {"path": str(auth_log), "journal": "never", "from_start": True},
            "ports": {"enabled": False},
            "files": {"enabled": False},
            "boot_clock": {"enabled": False},
        },
    }


# --- a webhook receiver and an alerting collector ---------------------------------------------


def alerting_collector(procs: Procs, broker: Mosquitto, tmp_path: Path,
                       alerting: dict[str, Any]) -> Collector:  # fmt: skip
    conf = tmp_path / "collector.yaml"
    base: dict[str, Any] = {
        "engine": {"evaluate_every_seconds": 1, "resolve_after_seconds": 0},
        "dispatch": {"group_wait_seconds": 1, "repeat_every_seconds": 0},
    }
    conf.write_text(yaml.safe_dump({"alerting": {**base, **alerting}}), encoding="utf-8")
    return Collector(procs, broker, tmp_path, "--config", str(conf)).start()


def alerts(collector: Collector, rule: str, state: str = "firing") -> list[dict[str, Any]]:
    status, body = collector.get(f"/api/v1/alerts?state={state}")
    assert status == 200, body
    return [a for a in json.loads(body)["alerts"] if a["rule"] == rule]


def evaluations(collector: Collector) -> float:
    return collector.value("outpost_alert_evaluations_total") or 0.0


def more_evaluations(collector: Collector, n: int) -> None:
    start = evaluations(collector)
    wait_for(f"{n} more alert evaluations", lambda: evaluations(collector) >= start + n, 30)


# --- 1. the collector restarted and killed ----------------------------------------------------


def test_collector_restart_and_kill_9_lose_nothing_and_page_once(
    procs: Procs, broker: Mosquitto, tmp_path: Path, receiver: Receiver
) -> None:
    hook = f"http://127.0.0.1:{receiver.port}/oncall"
    collector = alerting_collector(procs, broker, tmp_path, {
        "rules": {"host_down": {"for_seconds": 0}},
        "notifiers": [{"type": "webhook", "name": "oncall", "url": hook}],
        "routing": {"routes": [{"name": "all", "steps": [{"notify": ["notifier:oncall"]}]}]},
    })  # fmt: skip
    # Quick to be declared lost (keepalive 2 s), quick to resend what no ack covered (1 s).
    quick = {"broker": {"keepalive_seconds": 2}, "outbox": {"resend_after_seconds": 1}}
    auth_log = tmp_path / "auth.log"  # a1 also reports events
    auth_log.write_text("", encoding="utf-8")
    agents = [
        make_agent(procs, broker, tmp_path, f"a{i}", 0.2,
                   {**quick, "sources": security(auth_log)} if i == 1 else quick)
        for i in range(1, 5)
    ]  # fmt: skip
    for agent in agents:
        agent.start()
    online(collector, *agents)
    live, victim = agents[:3], agents[3]
    users = [f"u{i}" for i in range(30)]
    append(auth_log, "".join(auth_line(u) for u in users[:10]))

    # An alert firing and delivered: one agent killed.
    assert victim.proc is not None
    victim.proc.kill9()
    fired = wait_for(
        "the host_down page", lambda: receiver.find("firing", "host_down", "/oncall"), 30
    )
    assert fired[0]["alerts"][0]["labels"] == {"site": SITE, "host": victim.host}
    (alert,) = alerts(collector, "host_down")

    # A planned restart.
    assert collector.proc is not None
    collector.proc.stop()
    append(auth_log, "".join(auth_line(u) for u in users[10:20]))  # while it is down
    collector.start()
    more_evaluations(collector, 3)
    assert [a["key"] for a in alerts(collector, "host_down")] == [alert["key"]]
    assert len(receiver.find("firing", "host_down", "/oncall")) == 1  # nobody paged again
    figures = [settled(collector, a) for a in live]
    hosts = [host_of(collector, a.host) for a in live]
    assert [h["lost"] for h in hosts] == [0, 0, 0]
    assert [h["dropped"] for h in hosts] == [0, 0, 0]
    sent = sum(f.next_seq - 1 for f in figures)
    restart_dups = sum(h["duplicates"] for h in hosts)
    record("collector-restart", sent=sent, arrived=sent, duplicates=restart_dups, lost=0,
           note="3 agents at 0.2 s; SIGTERM and start again with one host_down alert firing: "
                "still firing after, paged once")  # fmt: skip

    # kill -9 while it ingests: the agents publish all the time. Down for 2.5 s, longer than
    # the agents wait for an ack (1 s), so they send again what the broker also kept for the
    # collector's session: duplicates, by construction.
    before = {a.host: stored(a.state).next_seq for a in live}
    append(auth_log, "".join(auth_line(u) for u in users[20:]))
    collector.proc.kill9()
    wait_for(
        "the agents storing on while the collector is down",
        lambda: all(stored(a.state).next_seq > before[a.host] + 5 for a in live),
        30,
    )
    time.sleep(2.5)  # the fault itself: the collector stays down a while
    collector.start()
    more_evaluations(collector, 3)
    assert [a["key"] for a in alerts(collector, "host_down")] == [alert["key"]]
    assert len(receiver.find("firing", "host_down", "/oncall")) == 1

    # The victim comes back: exactly one resolve, and still one page.
    victim.start()
    wait_for("the resolve", lambda: receiver.find("resolved", "host_down", "/oncall"), 30)
    more_evaluations(collector, 3)
    assert len(receiver.find("resolved", "host_down", "/oncall")) == 1
    assert len(receiver.find("firing", "host_down", "/oncall")) == 1
    assert not alerts(collector, "host_down")

    figures = [settled(collector, a) for a in agents]
    hosts = [host_of(collector, a.host) for a in agents]
    assert [h["lost"] for h in hosts] == [0] * 4, hosts
    assert [h["dropped"] for h in hosts] == [0] * 4, hosts
    assert collector.value("outpost_collector_lost_messages_total") == 0.0
    dups = sum(h["duplicates"] for h in hosts) - restart_dups
    assert dups > 0  # dropped by (agent_id, seq) and counted
    assert (collector.value("outpost_collector_messages_total", result="duplicate") or 0) > 0
    assert all(f.integrity == "ok" for f in figures)
    # Every event applied exactly once, across the restart and the kill.
    assert logins(collector, "a1") == Counter({u: 1 for u in users})
    sent = sum(f.next_seq - 1 for f in figures)
    record("collector-kill-9", sent=sent, arrived=sent, duplicates=dups, lost=0,
           note="4 agents at 0.2 s (one killed for a host_down alert); the collector killed "
                "-9 while ingesting and down 2.5 s: alert still firing, paged once, resolved "
                "once; 30 events each applied once")  # fmt: skip


# --- 2. the agent killed, again and again ------------------------------------------------------


KILLS = int(os.environ.get("OUTPOST_FAULT_KILLS") or 12)  # more for a longer run


def test_agent_kill_9_at_random_moments(
    procs: Procs, broker: Mosquitto, collector: Collector, tmp_path: Path
) -> None:
    rng = random.Random(20240611)
    auth_log = tmp_path / "auth.log"
    auth_log.write_text("", encoding="utf-8")
    agent = make_agent(procs, broker, tmp_path, "k1", 0.1, {"sources": security(auth_log)})
    agent.env = {"OUTPOST_BOOT_ID": "boot-k1"}  # the same boot: only the agent dies
    users: list[str] = []
    seqs = [0]
    for kill in range(KILLS):
        new = [f"k{kill}-{j}" for j in range(3)]
        append(auth_log, "".join(auth_line(u) for u in new))
        users += new
        agent.start()
        wait_for(
            "the agent storing cycles",
            lambda: agent.state.exists() and stored(agent.state).next_seq > seqs[-1] + 3,
            30,
        )
        time.sleep(rng.uniform(0.0, 0.5))  # a random moment: the fault itself
        assert agent.proc is not None
        agent.proc.kill9()
        after = stored(agent.state)
        assert after.integrity == "ok", (kill, after)
        assert after.next_seq >= seqs[-1], (kill, seqs, after)  # never backwards
        seqs.append(after.next_seq)

    agent.start()
    wait_for("the agent going on", lambda: stored(agent.state).next_seq > seqs[-1], 30)
    final = settled(collector, agent)
    assert final.next_seq > seqs[-1]  # resumed with a higher seq
    host = host_of(collector, "k1")
    assert (host["lost"], host["dropped"]) == (0, 0), host
    # Every event exactly once: what was read before a kill and not stored is read again.
    wait_for("every login", lambda: set(logins(collector, "k1")) == set(users), 30)
    assert set(logins(collector, "k1").values()) == {1}
    # The unclean restarts, and the cycles they cost, counted.
    labels = {"site": SITE, "host": "k1"}
    restarts = wait_for(
        "the unclean restarts reported",
        lambda: (
            collector.value("outpost_agent_unclean_restarts_total", **labels) == KILLS
            and collector.value("outpost_agent_unclean_restarts_total", **labels)
        ),
        30,
    )
    missed = collector.value("outpost_agent_missed_cycles_total", **labels) or 0.0
    assert missed >= KILLS  # at least the cycle each kill interrupted (a start takes longer)
    said = sum(p.output().count("was not stopped cleanly") for p in procs.all if p.name == "agent")
    assert said == KILLS  # and logged at every start after a kill
    sent = final.next_seq - 1
    record("agent-kill-9", sent=sent, arrived=sent, duplicates=host["duplicates"], lost=0,
           note=f"{KILLS} kill -9 at random moments of an agent at 0.1 s: integrity ok every "
                f"time, {int(restarts)} unclean restarts and {int(missed)} missed cycles "
                f"counted, {len(users)} events each once")  # fmt: skip


# --- 3. a full disk ------------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 8 MiB tmpfs of the test's own (skipped where it cannot be mounted)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill needs root")
    where = tmp_path / "small-fs"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield where
    # Lazily: the agent may still hold its files until the process fixture stops it.
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(path: Path) -> int:
    """Take every free byte of the file system with ``path`` in one allocation, and write
    nothing after (a filler that goes on writing would also take the room the agent frees).
    Returns the bytes taken."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(50):
            st = os.statvfs(path.parent)
            free = st.f_bavail * st.f_frsize
            if not free:
                return 0
            try:
                os.posix_fallocate(fd, 0, os.fstat(fd).st_size + free)
            except OSError:  # the agent took some meanwhile: measure again
                continue
            return free
    finally:
        os.close(fd)
    raise AssertionError("could not fill the file system")


def test_disk_full_drops_metrics_keeps_events_and_recovers(
    procs: Procs, broker: Mosquitto, collector: Collector, tmp_path: Path, small_fs: Path
) -> None:
    auth_log = tmp_path / "auth.log"
    auth_log.write_text("", encoding="utf-8")
    extra = {"sources": security(auth_log), "outage_report_min_seconds": 1}
    agent = make_agent(procs, broker, tmp_path, "d1", 0.2, extra)
    agent.state = small_fs / "agent"  # the state directory on the small file system
    agent.start()
    online(collector, agent)
    labels = {"site": SITE, "host": "d1"}
    append(auth_log, auth_line("before"))
    wait_for("the first login", lambda: logins(collector, "d1")["before"] == 1, 30)

    # The link goes, and the disk fills: the outbox has to hold the backlog on no room.
    broker.stop()
    filler = small_fs / "filler"
    assert fill(filler) > 1 << 20
    wait_for("a disk-full episode", lambda: stored(agent.state).full_episodes == 1, 60)
    wait_for("metrics dropped", lambda: stored(agent.state).dropped_total > 0, 30)
    # Whatever fills the disk also takes the room the agent's reserve gave back: the outbox
    # goes on in the pages it has.
    more = small_fs / "filler-2"
    fill(more)
    during = [f"full-{i}" for i in range(5)]
    for user in during:
        append(auth_log, auth_line(user))
    mark = stored(agent.state).next_seq
    wait_for("cycles stored after the logins", lambda: stored(agent.state).next_seq > mark + 5,
             30)  # fmt: skip
    assert agent.proc is not None and agent.proc.running()

    # The link is back, the disk still full: the events arrive, the drops are declared.
    broker.start()
    wait_for("the logins of the full disk", lambda: all(logins(collector, "d1")[u] == 1
                                                        for u in during), 30)  # fmt: skip
    wait_for("the outage report", lambda: json.loads(collector.get("/api/v1/outages")[1])
             ["outages"], 30)  # fmt: skip
    wait_for("outpost_agent_outbox_full 1",
             lambda: collector.value("outpost_agent_outbox_full", **labels) == 1.0, 30)  # fmt: skip
    host = host_of(collector, "d1")
    assert host["dropped"] > 0 and host["lost"] == 0, host

    # Room again: the reserve comes back, the flag goes to 0, metrics flow and nothing more is
    # dropped.
    filler.unlink()
    more.unlink()
    wait_for("outpost_agent_outbox_full 0",
             lambda: collector.value("outpost_agent_outbox_full", **labels) == 0.0, 30)  # fmt: skip
    dropped = stored(agent.state).dropped_total
    first = settled(collector, agent)
    wait_for("metrics flowing", lambda: (host_of(collector, "d1")["settled_upto"] or 0)
             >= first.next_seq + 10, 30)  # fmt: skip
    final = settled(collector, agent)
    host = host_of(collector, "d1")
    assert final.dropped_total == dropped and final.integrity == "ok"
    assert host["lost"] == 0 and host["dropped"] <= final.dropped_total, host
    assert collector.value("outpost_agent_outbox_full_episodes_total", **labels) == 1.0
    assert collector.value("outpost_agent_outbox_dropped_events_total", **labels) == 0.0
    assert set(logins(collector, "d1").values()) == {1}
    assert (small_fs / "agent" / "outbox.sqlite.reserve").stat().st_size > 0
    assert agent.proc.output().count("the outbox no longer grows") == 1  # once, for the episode
    sent = final.next_seq - 1
    record("disk-full", sent=sent, arrived=sent - host["dropped"], duplicates=host["duplicates"],
           lost=host["lost"], dropped=host["dropped"],
           note="8 MiB tmpfs filled to the last byte while the link was down (and again "
                "after the agent gave up its reserve): oldest metrics dropped, "
                f"{len(during)} logins and the outage report delivered, metrics again once "
                "the fillers were deleted")  # fmt: skip


# --- 4. clock trouble --------------------------------------------------------------------------


FAKETIME_LIBS = ("/usr/lib/*/faketime/libfaketimeMT.so.1", "/usr/lib/faketime/libfaketimeMT.so.1")


def libfaketime() -> str:
    for pattern in FAKETIME_LIBS:
        found = glob.glob(pattern)
        if found:
            return found[0]
    pytest.skip("libfaketime is not installed (Debian package faketime; scripts/install --test)")


def faked(offset: int) -> dict[str, str]:
    """Only the wall clock moves: the agent's timers stay on the real monotonic clock."""
    return {"LD_PRELOAD": libfaketime(), "FAKETIME": f"{offset:+d}",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1", "FAKETIME_NO_CACHE": "1"}  # fmt: skip


HOURS3 = 3 * 3600


def test_clock_hours_off_is_flagged_and_data_is_ordered_by_seq(
    procs: Procs, broker: Mosquitto, tmp_path: Path
) -> None:
    collector = alerting_collector(procs, broker, tmp_path, {
        "rules": {"clock_skew": {"for_seconds": 0}},
    })  # fmt: skip
    ahead = make_agent(procs, broker, tmp_path, "ahead", 0.2)
    behind = make_agent(procs, broker, tmp_path, "behind", 0.2)
    ahead.env = faked(HOURS3)
    behind.env = faked(-HOURS3)
    ahead.start()
    behind.start()
    online(collector, ahead, behind)

    def skew_near(host: str, seconds: float) -> bool:
        """Received minus collected: negative for a clock ahead, within a minute."""
        skew = collector.value("outpost_host_clock_skew_seconds", site=SITE, host=host)
        return skew is not None and abs(skew - seconds) < 60

    wait_for("the skew of the agent ahead", lambda: skew_near("ahead", -HOURS3), 30)
    wait_for("the skew of the agent behind", lambda: skew_near("behind", HOURS3), 30)
    flagged = wait_for(
        "clock_skew alerts for both",
        lambda: {a["labels"]["host"] for a in alerts(collector, "clock_skew")} >= {"ahead",
                                                                                  "behind"}
        and alerts(collector, "clock_skew"),
        30,
    )  # fmt: skip
    assert {a["labels"]["site"] for a in flagged} == {SITE}

    def uptime(host: str) -> float:
        return collector.value("outpost_host_uptime_seconds", site=SITE, host=host) or 0.0

    # The agent ahead has its clock set right: its new batches carry times 3 hours before
    # the ones the collector holds. Ordered by seq, they still replace them.
    faked_uptime = uptime("ahead")
    assert ahead.proc is not None
    ahead.proc.stop()
    before = stored(ahead.state).next_seq
    ahead.env = None
    ahead.start()
    wait_for("the corrected clock seen", lambda: skew_near("ahead", 0.0), 30)
    first = uptime("ahead")
    assert first < faked_uptime - HOURS3 + 120, (first, faked_uptime)  # the real uptime now
    wait_for("its samples updating", lambda: uptime("ahead") > first, 30)
    wait_for("the clock_skew alert resolved for it",
             lambda: "ahead" not in {a["labels"]["host"] for a in alerts(collector, "clock_skew")},
             30)  # fmt: skip
    assert "behind" in {a["labels"]["host"] for a in alerts(collector, "clock_skew")}

    # The agent behind goes on too; nothing lost or mis-ordered for either.
    figures = [settled(collector, a) for a in (ahead, behind)]
    assert figures[0].next_seq > before
    hosts = [host_of(collector, h) for h in ("ahead", "behind")]
    assert [(h["lost"], h["dropped"]) for h in hosts] == [(0, 0), (0, 0)], hosts
    b_first = uptime("behind")
    wait_for("the agent behind updating", lambda: uptime("behind") > b_first, 30)
    sent = sum(f.next_seq - 1 for f in figures)
    record("clock-skew", sent=sent, arrived=sent, duplicates=sum(h["duplicates"] for h in hosts),
           lost=0, note="agents 3 h ahead and 3 h behind (libfaketime): skew shown and alerted; "
                        "the one ahead set right mid-run kept updating")  # fmt: skip

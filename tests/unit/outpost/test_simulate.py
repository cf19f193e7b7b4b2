"""The virtual agent of ``outpost simulate``: what it says, what it keeps, what it sends again."""

from __future__ import annotations

import json
import math
import random
import resource

import pytest
from typer.testing import CliRunner

from agent.cycle import with_delivery_state as agent_splice
from collector.catalogue import CATALOGUE
from outpost import wire
from outpost.cli import app
from outpost.simulate import (
    SampleModel,
    Tally,
    VirtualAgent,
    assign_connections,
    fleet_names,
    next_disconnect_in,
    nofile_plan,
    reconnect_delay,
    with_delivery_state,
)

NOW = 1_700_000_000.0


def make_agent(tally: Tally | None = None, **kw: int) -> VirtualAgent:
    rng = random.Random(1)
    return VirtualAgent(
        "sim-0001", "host-0001", "sim-test-00001", "boot-1", SampleModel(rng, NOW),
        tally if tally is not None else Tally(), interval=10.0, **kw,
    )  # fmt: skip


def ack(agent_id: str, upto: int, ranges: list[tuple[int, int]] | None = None) -> bytes:
    return wire.encode(wire.Ack(v=1, agent_id=agent_id, upto=upto, ranges=ranges or []))


def decode(payload: bytes) -> wire.Batch:
    return wire.decode_batch(payload, wire.TopicParts("sim-0001", "host-0001", "metrics"),
                             wire.Limits())  # fmt: skip


def invariant(t: Tally) -> bool:
    return t.batches == t.acked + t.dropped + t.unacked


# --- names and connections -----------------------------------------------------------------


def test_names_are_unique_slugs_spread_round_robin_over_the_sites() -> None:
    names = fleet_names(2000, 200, "sim")
    assert len(set(names)) == 2000
    assert all(wire.is_slug(site) and wire.is_slug(host) for site, host in names)
    per_site: dict[str, int] = {}
    for site, _ in names:
        per_site[site] = per_site.get(site, 0) + 1
    assert len(per_site) == 200 and set(per_site.values()) == {10}
    assert names[0] == ("sim-0001", "host-0001") and names[200] == ("sim-0001", "host-0002")


def test_more_sites_than_agents_means_one_agent_per_site() -> None:
    assert fleet_names(3, 50, "x") == [("x-0001", "host-0001"), ("x-0002", "host-0001"),
                                      ("x-0003", "host-0001")]  # fmt: skip


@pytest.mark.parametrize(("agents", "conns"), [(10, 10), (10, 3), (2000, 7), (5, 9)])
def test_connections_partition_the_agents_evenly(agents: int, conns: int) -> None:
    groups = assign_connections(agents, conns)
    assert len(groups) == min(agents, conns)
    assert sorted(i for g in groups for i in g) == list(range(agents))
    sizes = {len(g) for g in groups}
    assert max(sizes) - min(sizes) <= 1


# --- what a virtual agent says -------------------------------------------------------------


def test_a_batch_is_valid_protocol_with_catalogue_names() -> None:
    agent = make_agent()
    agent.connected()
    seq = agent.cycle(NOW)
    ((sent_seq, payload),) = agent.due(0.0, 60)
    batch = decode(payload)
    assert seq == sent_seq == batch.seq == 1
    assert (batch.site, batch.host, batch.agent_id, batch.boot_id) == (
        "sim-0001", "host-0001", "sim-test-00001", "boot-1",
    )  # fmt: skip
    assert batch.ts == int(NOW * 1000) and batch.interval == 10.0 and batch.outbox_low == 1
    names = {s.name for s in batch.samples}
    assert len(batch.samples) >= 25
    assert names <= set(CATALOGUE), names - set(CATALOGUE)
    assert {"outpost_host_uptime_seconds", "outpost_cpu_seconds_total",
            "outpost_network_receive_bytes_total"} <= names  # fmt: skip


def test_counters_only_grow_and_uptime_follows_the_clock() -> None:
    model = SampleModel(random.Random(3), NOW)
    first = model.samples(NOW, 0, 0, 0)
    later = model.samples(NOW + 10, 0, 0, 0)

    def values(samples: list[wire.Sample]) -> dict[tuple[str, str], float]:
        return {(s.name, json.dumps(s.labels, sort_keys=True)): s.value for s in samples}

    a, b = values(first), values(later)
    counters = [k for k in a if k[0].endswith("_total") and "outbox" not in k[0]]
    assert len(counters) >= 8
    assert all(b[k] >= a[k] for k in counters)
    assert (
        b[("outpost_network_receive_bytes_total", '{"interface": "eth0"}')]
        > a[("outpost_network_receive_bytes_total", '{"interface": "eth0"}')]
    )
    assert b[("outpost_host_uptime_seconds", "{}")] == pytest.approx(
        a[("outpost_host_uptime_seconds", "{}")] + 10
    )


def test_status_payloads_are_what_the_collector_reads() -> None:
    agent = make_agent()
    parts = wire.TopicParts("sim-0001", "host-0001", "status")
    will = wire.decode_status(agent.status("offline", "lost", 0), parts, wire.Limits())
    assert (will.status, will.reason, will.ts, will.agent_id) == (
        "offline", "lost", 0, "sim-test-00001",
    )  # fmt: skip
    assert agent.topic("outpost", "ack") == "outpost/v1/sim-0001/host-0001/ack"


def test_the_delivery_state_is_spliced_as_the_agent_does_it() -> None:
    stored = b'{"v":1,"site":"s","seq":5}'
    for dropped in ([], [(1, 2), (4, 4)]):
        assert with_delivery_state(stored, 3, dropped) == agent_splice(stored, 3, dropped)
    assert json.loads(with_delivery_state(stored, 3, [(1, 2)])) == {
        "outbox_low": 3, "dropped": [[1, 2]], "v": 1, "site": "s", "seq": 5,
    }  # fmt: skip


# --- the outbox and delivery ---------------------------------------------------------------


def test_nothing_goes_out_before_the_link_is_up() -> None:
    agent = make_agent()
    agent.cycle(NOW)
    assert agent.due(0.0, 60) == []
    agent.connected()
    assert [s for s, _ in agent.due(0.0, 60)] == [1]


def test_after_a_reconnect_the_newest_goes_first_then_the_backlog_in_order() -> None:
    tally = Tally()
    agent = make_agent(tally)
    for i in range(5):
        agent.cycle(NOW + i)
    agent.connected()
    due = agent.due(0.0, 60)
    assert [s for s, _ in due] == [5, 1, 2, 3, 4]
    for seq, _ in due:
        agent.sent(seq, 0.0)
    assert tally.sent == 5 and tally.resent == 0
    agent.cycle(NOW + 5)  # made while the backlog is in flight: current data
    assert [s for s, _ in agent.due(1.0, 60)] == [6]


def test_batches_in_flight_wait_for_their_ack_then_go_again_after_the_timeout() -> None:
    tally = Tally()
    agent = make_agent(tally)
    agent.connected()
    agent.cycle(NOW)
    agent.cycle(NOW + 10)
    for seq, _ in agent.due(0.0, 60):
        agent.sent(seq, 0.0)
    assert agent.due(30.0, 60) == []
    again = agent.due(61.0, 60)
    assert [s for s, _ in again] == [1, 2]  # both made after the connect: current data
    for seq, _ in again:
        agent.sent(seq, 61.0)
    assert (tally.sent, tally.resent, tally.published) == (2, 2, 4)


def test_a_disconnect_sends_what_was_in_flight_again_on_the_next_connect() -> None:
    tally = Tally()
    agent = make_agent(tally)
    agent.connected()
    agent.cycle(NOW)
    for seq, _ in agent.due(0.0, 60):
        agent.sent(seq, 0.0)
    agent.disconnected()
    agent.cycle(NOW + 10)
    assert agent.due(1.0, 60) == []
    agent.connected()
    assert [s for s, _ in agent.due(2.0, 60)] == [2, 1]


def test_an_ack_settles_what_it_covers_and_only_that() -> None:
    tally = Tally()
    agent = make_agent(tally)
    agent.connected()
    for i in range(6):
        agent.cycle(NOW + i)
    for seq, _ in agent.due(0.0, 60):
        agent.sent(seq, 0.0)
    assert agent.on_ack(ack("sim-test-00001", 2, [(4, 5)])) == 4
    assert list(agent.rows) == [3, 6]
    assert set(agent.inflight) == {3, 6}
    assert (tally.acked, tally.unacked, tally.acks) == (4, 2, 1)
    assert agent.low() == 3
    assert invariant(tally)


def test_acks_for_another_agent_or_unreadable_ones_are_ignored() -> None:
    tally = Tally()
    agent = make_agent(tally)
    agent.cycle(NOW)
    assert agent.on_ack(ack("someone-else", 1)) == 0
    assert agent.on_ack(b"{not json") == 0
    assert agent.on_ack(b'{"v":1,"agent_id":"sim-test-00001","upto":-1}') == 0
    assert list(agent.rows) == [1]
    assert (tally.acks, tally.bad_acks, tally.acked) == (1, 2, 0)


def test_a_full_outbox_drops_the_oldest_and_declares_it_until_settled() -> None:
    tally = Tally()
    agent = make_agent(tally, max_rows=3)
    for i in range(5):
        agent.cycle(NOW + i)
    assert list(agent.rows) == [3, 4, 5]
    assert agent.dropped == [(1, 2)] and tally.dropped == 2 and invariant(tally)
    agent.connected()
    batch = decode(agent.due(0.0, 60)[0][1])
    assert (batch.seq, batch.outbox_low, batch.dropped) == (5, 3, [(1, 2)])
    agent.on_ack(ack("sim-test-00001", 1))
    assert agent.dropped == [(2, 2)]
    agent.on_ack(ack("sim-test-00001", 4))
    assert agent.dropped == [] and list(agent.rows) == [5]
    assert invariant(tally) and tally.acked == 2


def test_the_tally_always_adds_up() -> None:
    rng = random.Random(9)
    tally = Tally()
    agent = make_agent(tally, max_rows=20)
    clock = 0.0
    for step in range(400):
        clock += 1
        roll = rng.random()
        if roll < 0.3:
            agent.cycle(NOW + step)
        elif roll < 0.4:
            agent.connected()
        elif roll < 0.45:
            agent.disconnected()
        elif roll < 0.7:
            for seq, _ in agent.due(clock, 5):
                agent.sent(seq, clock)
        elif agent.next_seq > 1:
            agent.on_ack(ack("sim-test-00001", rng.randrange(agent.next_seq)))
        assert invariant(tally), step
        assert len(agent.rows) <= 20


# --- timing and limits ---------------------------------------------------------------------


def test_reconnect_delays_are_jittered_doubled_and_capped() -> None:
    rng = random.Random(4)
    first = [reconnect_delay(rng, 1.0, 60.0, 0) for _ in range(200)]
    assert all(1.0 <= d <= 2.0 for d in first) and max(first) - min(first) > 0.5
    assert all(4.0 <= reconnect_delay(rng, 1.0, 60.0, 2) <= 8.0 for _ in range(50))
    assert all(60.0 <= reconnect_delay(rng, 1.0, 60.0, 40) <= 120.0 for _ in range(50))


def test_disconnects_follow_the_rate_per_connection() -> None:
    rng = random.Random(5)
    assert next_disconnect_in(rng, 0.0, 2000) == math.inf
    gaps = [next_disconnect_in(rng, 0.1, 2000) for _ in range(5000)]
    # 0.1 a minute for each of 2000 connections: one every 0.3 s on average.
    assert sum(gaps) / len(gaps) == pytest.approx(0.3, rel=0.1)


def test_the_open_files_limit_is_raised_to_the_hard_limit_or_refused() -> None:
    inf = resource.RLIM_INFINITY
    assert nofile_plan(2064, 4096, 8192) == (None, None)
    assert nofile_plan(2064, 1024, 8192) == (8192, None)
    assert nofile_plan(2064, 1024, inf) == (65536, None)
    raised, error = nofile_plan(2064, 1024, 1024)
    assert raised is None and error is not None
    assert "hard limit is 1024" in error and "--connections" in error


# --- the command line ----------------------------------------------------------------------

runner = CliRunner()


def test_bad_usage_exits_2_with_the_reason() -> None:
    result = runner.invoke(app, ["simulate", "--broker", "http://x", "--agents", "3",
                                 "--interval", "1"])  # fmt: skip
    assert result.exit_code == 2 and "url" in result.output and "<command line>" in result.output
    result = runner.invoke(app, ["simulate", "--broker", "mqtt://127.0.0.1:1", "--agents", "0",
                                 "--interval", "1"])  # fmt: skip
    assert result.exit_code == 2
    result = runner.invoke(app, ["simulate", "--broker", "mqtt://127.0.0.1:1", "--agents", "3",
                                 "--interval", "1", "--site-prefix", "Bad/Name"])  # fmt: skip
    assert result.exit_code == 2 and "--site-prefix" in result.output


def test_help_says_what_shared_connections_cost() -> None:
    result = runner.invoke(app, ["simulate", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "Last Will speaks for its first agent only" in text
    assert "Exit codes: 0" in text

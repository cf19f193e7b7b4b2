"""The agent's outage report: when the link went and came back, what answered meanwhile, and
whether the host rebooted."""

from __future__ import annotations

from agent.outage import OutageTracker, TrackerState
from outpost.wire import Sample


def probe(role: str, ok: bool) -> Sample:
    return Sample("outpost_probe_success", 1.0 if ok else 0.0, {"target": role, "kind": "tcp",
                                                                "role": role})  # fmt: skip


def running(now: float = 1000.0, boot: str = "b1", min_seconds: float = 30.0) -> OutageTracker:
    t = OutageTracker(TrackerState(), min_seconds)
    t.start(now, boot, 10.0)
    t.connected_at(now)
    return t


def test_a_link_outage_reports_what_answered_meanwhile() -> None:
    t = running()
    t.cycle(1010.0, [])
    t.disconnected(1015.0)
    t.cycle(1020.0, [probe("gateway", True), probe("uplink", False)])
    t.cycle(1030.0, [probe("gateway", True), probe("uplink", False)])
    event = t.connected_at(1100.0)
    assert event is not None and event.kind == "outage"
    a = event.attrs
    assert a["started_ms"] == "1015000" and a["ended_ms"] == "1100000"
    assert float(a["duration_seconds"]) == 85.0
    assert (a["gateway"], a["uplink"], a["rebooted"]) == ("answered", "silent", "false")
    assert a["uplink_probes"] == "0/2"
    assert t.connected_at(1200.0) is None  # reported once


def test_a_short_blip_is_not_reported() -> None:
    t = running()
    t.disconnected(1010.0)
    assert t.connected_at(1015.0) is None


def test_probes_while_connected_do_not_count() -> None:
    t = running()
    t.cycle(1010.0, [probe("gateway", False)])
    t.disconnected(1011.0)
    event = t.connected_at(1100.0)
    assert event is not None and event.attrs["gateway"] == "unprobed"


def test_a_new_boot_id_after_silence_is_a_reboot_reported_from_the_last_cycle() -> None:
    t = running()
    t.cycle(1010.0, [])
    saved = t.snapshot()  # what the outbox held when the power went
    after = OutageTracker(OutageTracker.restore(saved), 30.0)
    after.start(2000.0, "b2", 10.0)
    event = after.connected_at(2005.0)
    assert event is not None
    assert event.attrs["rebooted"] == "true" and event.attrs["started_ms"] == "1010000"


def test_the_agent_down_without_a_reboot() -> None:
    t = running()
    t.cycle(1010.0, [])
    after = OutageTracker(OutageTracker.restore(t.snapshot()), 30.0)
    after.start(1500.0, "b1", 10.0)
    event = after.connected_at(1501.0)
    assert event is not None
    assert (event.attrs["agent_down"], event.attrs["rebooted"]) == ("true", "false")


def test_a_quick_restart_is_not_an_outage() -> None:
    t = running()
    t.cycle(1010.0, [])
    after = OutageTracker(OutageTracker.restore(t.snapshot()), 30.0)
    after.start(1020.0, "b1", 10.0)
    assert after.connected_at(1021.0) is None


def test_a_planned_stop_is_not_an_outage_even_across_a_reboot() -> None:
    t = running()
    t.cycle(1010.0, [])
    t.stopped()
    after = OutageTracker(OutageTracker.restore(t.snapshot()), 30.0)
    after.start(5000.0, "b2", 10.0)
    assert after.connected_at(5001.0) is None


def test_an_outage_spanning_a_restart_is_reported_once_from_its_start() -> None:
    t = running()
    t.disconnected(1010.0)
    t.cycle(1020.0, [probe("gateway", False)])
    after = OutageTracker(OutageTracker.restore(t.snapshot()), 30.0)
    after.start(1025.0, "b1", 10.0)
    after.cycle(1030.0, [probe("gateway", False)])
    event = after.connected_at(1200.0)
    assert event is not None
    assert event.attrs["started_ms"] == "1010000" and event.attrs["gateway_probes"] == "0/2"


def test_garbage_in_the_saved_state_starts_afresh() -> None:
    assert OutageTracker.restore(b"{not json") == TrackerState()
    assert OutageTracker.restore(None) == TrackerState()


def test_a_power_cut_before_the_first_collection_is_still_a_reboot() -> None:
    first = OutageTracker(TrackerState(), 30.0)
    first.start(1000.0, "b1", 10.0)  # killed before any cycle: only the start was stored
    stored = OutageTracker.restore(first.snapshot())
    again = OutageTracker(stored, 30.0)
    again.start(1003.0, "b2", 10.0)
    event = again.connected_at(1004.0)
    assert event is not None and event.attrs["rebooted"] == "true"
    assert event.attrs["started_ms"] == "1000000"


# --- unclean stops: counted, with the collection cycles they cost ----------------------------


def restarted(t: OutageTracker, now: float, boot: str = "b1", uptime: float | None = None,
              interval: float = 1.0) -> tuple[OutageTracker, int | None]:  # fmt: skip
    """The agent starts again from what ``t`` had stored."""
    after = OutageTracker(OutageTracker.restore(t.snapshot()), 30.0)
    return after, after.start(now, boot, interval, uptime)


def test_a_kill_is_counted_with_the_cycles_it_cost() -> None:
    t = running()
    t.cycle(1010.0, [])  # the last cycle stored; the next was being collected when killed
    after, missed = restarted(t, 1013.5)
    assert missed == 3  # due at 1011, 1012 and 1013; the first cycle runs now
    assert (after.state.unclean_restarts, after.state.missed_cycles) == (1, 3)
    after.cycle(1013.5, [])
    again, missed = restarted(after, 1013.9)  # killed again at once: nothing was due
    assert missed == 0
    assert (again.state.unclean_restarts, again.state.missed_cycles) == (2, 3)
    assert again.connected_at(1014.0) is None  # too short to be an outage
    # The totals outlive the outage bookkeeping.
    assert (again.state.unclean_restarts, again.state.missed_cycles) == (2, 3)


def test_a_planned_stop_costs_nothing() -> None:
    t = running()
    t.cycle(1010.0, [])
    t.stopped()
    after, missed = restarted(t, 1100.0)
    assert missed is None
    assert (after.state.unclean_restarts, after.state.missed_cycles) == (0, 0)


def test_the_first_start_is_not_a_restart() -> None:
    t = OutageTracker(TrackerState(), 30.0)
    assert t.start(1000.0, "b1", 1.0) is None
    assert t.state.unclean_restarts == 0


def test_the_outage_report_carries_the_cycles_the_agent_missed() -> None:
    t = running()
    t.cycle(1010.0, [])
    after, missed = restarted(t, 1100.0)
    assert missed == 90
    event = after.connected_at(1101.0)
    assert event is not None and event.attrs["agent_down"] == "true"
    assert event.attrs["cycles_missed"] == "90"
    # A link outage while the agent ran missed no cycle.
    after.disconnected(1200.0)
    event = after.connected_at(1300.0)
    assert event is not None and event.attrs["cycles_missed"] == "0"
    assert after.state.missed_cycles == 90


def test_a_wall_clock_set_meanwhile_does_not_count_when_the_host_did_not_reboot() -> None:
    t = OutageTracker(TrackerState(), 30.0)
    t.start(1000.0, "b1", 1.0, uptime=50.0)
    t.cycle(1000.0 + 3 * 3600, [], uptime=51.0)  # the clock was 3 hours ahead...
    after, missed = restarted(t, 1003.0, uptime=53.0)  # ...and is right after the restart
    assert missed == 2
    assert after.connected_at(1004.0) is None  # two seconds down: no outage
    t = OutageTracker(TrackerState(), 30.0)
    t.start(1000.0, "b1", 1.0, uptime=50.0)
    t.cycle(1001.0 - 3 * 3600, [], uptime=51.0)  # 3 hours behind, then set right
    after, missed = restarted(t, 1003.0, uptime=53.0)
    assert missed == 2 and after.connected_at(1004.0) is None


def test_after_a_reboot_the_wall_clock_measures_the_silence() -> None:
    t = OutageTracker(TrackerState(), 30.0)
    t.start(1000.0, "b1", 1.0, uptime=5000.0)
    t.cycle(1010.0, [], uptime=5010.0)
    after, missed = restarted(t, 1070.0, boot="b2", uptime=30.0)  # uptime started again
    assert missed == 60
    event = after.connected_at(1071.0)
    assert event is not None and event.attrs["rebooted"] == "true"
    assert event.attrs["cycles_missed"] == "60"

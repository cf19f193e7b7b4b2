"""Tests for collector.state.FleetState: presence, staleness, inventory, samples and events."""

from __future__ import annotations

import pytest

from collector.inventory import Inventory, Site
from collector.state import MIN_STALE_SECONDS, Applied, FleetState, HostView
from outpost import wire

T0 = 1_700_000_000.0


def batch(
    seq: int,
    *,
    site: str = "s1",
    host: str = "h1",
    agent_id: str = "agent-1",
    ts: int | None = None,
    outbox_low: int = 0,
    dropped: list[tuple[int, int]] | None = None,
    interval: float = 0.0,
    samples: list[wire.Sample] | None = None,
    events: list[wire.Event] | None = None,
) -> wire.Batch:
    return wire.Batch(
        v=1,
        site=site,
        host=host,
        agent_id=agent_id,
        boot_id="boot-1",
        seq=seq,
        ts=seq * 1000 if ts is None else ts,
        outbox_low=outbox_low,
        dropped=dropped or [],
        interval=interval,
        samples=samples or [],
        events=events or [],
    )


def status(state: str, reason: str = "", agent_id: str = "") -> wire.Status:
    return wire.Status(v=1, status=state, reason=reason, agent_id=agent_id)  # type: ignore[arg-type]


def only_view(fleet: FleetState, now: float) -> HostView:
    (view,) = fleet.views(now)
    return view


def test_online_status() -> None:
    fleet = FleetState(stale_after=60)
    fleet.apply_status(status("online", agent_id="agent-1"), "s1", "h1", T0)
    view = only_view(fleet, T0 + 1)
    assert (view.site, view.host, view.state, view.up, view.expected) == (
        "s1",
        "h1",
        "online",
        True,
        False,
    )
    assert view.host_state is not None
    assert (view.host_state.agent_id, view.host_state.last_seen) == ("agent-1", T0)


@pytest.mark.parametrize(
    ("reason", "shown"),
    [("lost", "lost"), ("shutdown", "shutdown"), ("", "lost"), ("power", "lost")],
)
def test_offline_status(reason: str, shown: str) -> None:
    fleet = FleetState(stale_after=60)
    fleet.apply_batch(batch(1), T0)
    fleet.apply_status(status("offline", reason), "s1", "h1", T0 + 1)
    view = only_view(fleet, T0 + 2)
    assert (view.state, view.up) == (shown, False)
    # Coming back online clears the reason.
    fleet.apply_status(status("online"), "s1", "h1", T0 + 3)
    view = only_view(fleet, T0 + 3)
    assert (view.state, view.up, view.host_state.reason) == ("online", True, "")


def test_offline_wins_over_recent_batches() -> None:
    fleet = FleetState(stale_after=60)
    fleet.apply_status(status("offline", "shutdown"), "s1", "h1", T0)
    fleet.apply_batch(batch(1), T0 + 1)  # a late batch from before the stop
    assert only_view(fleet, T0 + 1).state == "shutdown"


def test_stale_after_stale_after_seconds() -> None:
    fleet = FleetState(stale_after=60)
    fleet.apply_batch(batch(1), T0)
    assert only_view(fleet, T0 + 60).state == "online"
    view = only_view(fleet, T0 + 60.5)
    assert (view.state, view.up) == ("stale", False)
    fleet.apply_batch(batch(2), T0 + 61)  # reporting again
    assert only_view(fleet, T0 + 61).state == "online"


def test_stale_uses_three_intervals_when_longer() -> None:
    fleet = FleetState(stale_after=60)
    fleet.apply_batch(batch(1, interval=300), T0)
    assert fleet.stale_limit(fleet.hosts["s1", "h1"]) == 900
    assert only_view(fleet, T0 + 900).state == "online"
    assert only_view(fleet, T0 + 901).state == "stale"


def test_stale_never_below_the_minimum() -> None:
    fleet = FleetState(stale_after=0)
    fleet.apply_batch(batch(1, interval=1), T0)
    assert fleet.stale_limit(fleet.hosts["s1", "h1"]) == MIN_STALE_SECONDS
    assert only_view(fleet, T0 + MIN_STALE_SECONDS).state == "online"
    assert only_view(fleet, T0 + MIN_STALE_SECONDS + 1).state == "stale"


def test_inventory_hosts_that_never_reported() -> None:
    inventory = Inventory(
        sites=[
            Site(id="s1", name="城关镇", hosts=["h1", "h2"]),
            Site(id="s2", hosts=["gw"]),
        ]
    )
    fleet = FleetState(stale_after=60, inventory=inventory)
    assert [s.id for s in fleet.sites()] == ["s1", "s2"]
    fleet.apply_batch(batch(1), T0)
    fleet.apply_batch(batch(1, site="s9", host="x", agent_id="agent-x"), T0)
    views = {(v.site, v.host): v for v in fleet.views(T0)}
    assert set(views) == {("s1", "h1"), ("s1", "h2"), ("s2", "gw"), ("s9", "x")}
    assert (views["s1", "h1"].state, views["s1", "h1"].expected) == ("online", True)
    assert (views["s9", "x"].state, views["s9", "x"].expected) == ("online", False)
    for key in [("s1", "h2"), ("s2", "gw")]:
        view = views[key]
        assert (view.state, view.up, view.expected) == ("never_reported", False, True)
        assert view.host_state is None
        assert view.track is None


def test_newer_batch_wins_over_an_older_backlog_batch() -> None:
    fleet = FleetState(stale_after=60)
    current = [wire.Sample("outpost_load1", 2.0)]
    backlog = [wire.Sample("outpost_load1", 1.0)]
    assert fleet.apply_batch(batch(10, ts=10_000, outbox_low=5, samples=current), T0) == Applied(
        True
    )
    assert fleet.apply_batch(batch(5, ts=5_000, outbox_low=5, samples=backlog), T0 + 1).new
    state = fleet.hosts["s1", "h1"]
    assert (state.samples, state.batch_ts, state.last_seen) == (current, 10_000, T0 + 1)
    newer = [wire.Sample("outpost_load1", 3.0)]
    fleet.apply_batch(batch(11, ts=11_000, outbox_low=6, samples=newer), T0 + 2)
    assert fleet.hosts["s1", "h1"].samples == newer


def test_a_clock_set_back_by_hours_does_not_freeze_the_samples() -> None:
    """Newest is by seq: an agent whose clock ran three hours ahead and was then corrected
    keeps updating its samples, and the skew follows the corrected clock."""
    fleet = FleetState(stale_after=60)
    ahead = int((T0 + 3 * 3600) * 1000)
    fleet.apply_batch(batch(1, ts=ahead, samples=[wire.Sample("outpost_load1", 1.0)]), T0)
    assert fleet.hosts["s1", "h1"].clock_skew == pytest.approx(-3 * 3600)
    corrected = [wire.Sample("outpost_load1", 2.0)]
    fleet.apply_batch(batch(2, ts=int((T0 + 10) * 1000), samples=corrected), T0 + 10)
    state = fleet.hosts["s1", "h1"]
    assert (state.samples, state.batch_seq, state.clock_skew) == (corrected, 2, 0.0)
    # A reinstalled agent (new id, seq from 1) is newest too.
    fresh = [wire.Sample("outpost_load1", 3.0)]
    fleet.apply_batch(batch(1, agent_id="agent-2", ts=int(T0 * 1000), samples=fresh), T0 + 20)
    assert fleet.hosts["s1", "h1"].samples == fresh


def test_an_events_batch_keeps_the_latest_samples() -> None:
    fleet = FleetState(stale_after=60)
    samples = [wire.Sample("outpost_load1", 2.0)]
    fleet.apply_batch(batch(1, ts=1_000, samples=samples), T0)
    fleet.apply_batch(batch(2, ts=2_000, events=[wire.Event("login_failed")]), T0)
    assert fleet.hosts["s1", "h1"].samples == samples


def test_events_counted_by_kind_and_severity() -> None:
    fleet = FleetState(stale_after=60)
    fleet.apply_batch(
        batch(
            1,
            events=[
                wire.Event("login_failed", "warning"),
                wire.Event("login_failed", "warning"),
                wire.Event("login_failed", "critical"),
            ],
        ),
        T0,
    )
    fleet.apply_batch(batch(2, events=[wire.Event("port_opened")]), T0)
    fleet.apply_batch(batch(2, events=[wire.Event("port_opened")]), T0)  # duplicate: not counted
    assert dict(fleet.hosts["s1", "h1"].events) == {
        ("login_failed", "warning"): 2,
        ("login_failed", "critical"): 1,
        ("port_opened", "info"): 1,
    }


def test_duplicates_change_nothing() -> None:
    fleet = FleetState(stale_after=60)
    fleet.apply_batch(batch(1, samples=[wire.Sample("a", 1.0)]), T0)
    assert fleet.apply_batch(batch(1, samples=[wire.Sample("a", 9.0)]), T0 + 5) == Applied(False)
    state = fleet.hosts["s1", "h1"]
    assert (state.samples[0].value, state.last_seen) == (1.0, T0)
    assert fleet.track("agent-1").duplicates == 1


def test_drops_and_losses_are_totalled() -> None:
    fleet = FleetState(stale_after=60)
    fleet.apply_batch(batch(1), T0)
    assert fleet.apply_batch(batch(6, outbox_low=6, dropped=[(2, 3)]), T0) == Applied(True, 2, 2)
    assert (fleet.dropped_total, fleet.lost_total) == (2, 2)
    assert fleet.track("agent-1").upto == 6


def test_settle_rejected() -> None:
    fleet = FleetState(stale_after=60)
    assert fleet.settle_rejected(("s1", "h1", "agent-1"), 4)
    assert not fleet.settle_rejected(("s1", "h1", "agent-1"), 4)
    # The refused seq is settled: the same seq arriving again is a duplicate.
    assert fleet.apply_batch(batch(4), T0) == Applied(False)
    assert fleet.apply_batch(batch(5), T0).new
    assert fleet.track("agent-1").upto == 5
    assert fleet.hosts["s1", "h1"].agent_id == "agent-1"


def test_a_new_agent_id_for_a_host_is_tracked_separately() -> None:
    fleet = FleetState(stale_after=60)
    fleet.apply_batch(batch(7, agent_id="old"), T0)
    fleet.apply_batch(batch(1, agent_id="new"), T0 + 1)  # reinstalled: seq starts again
    view = only_view(fleet, T0 + 1)
    assert view.host_state.agent_id == "new"
    assert view.track is fleet.track("new")
    assert fleet.track("old").upto == 7

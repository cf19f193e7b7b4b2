"""What kind of outage was it: the agent's side.

While the agent cannot reach the broker it keeps probing, and this tracker counts how its
``gateway`` and ``uplink`` probes fared. When the link is back it yields one ``outage`` event:
when the link went, when it came back, whether the gateway and uplink answered meanwhile, and
whether the host rebooted (a new boot id: most often a power cut) or only the agent was down.
The collector classifies the outage from these facts (collector/outages.py).

It also tells a stop that was asked for from one that was not (kill -9, a crash, a power
cut): the cycle being collected then was never stored, and none ran until the agent was back.
On start it counts such an unclean stop and the collection cycles it cost, measured on the
time since boot when the host did not reboot (a wall clock that was set meanwhile does not
count), else on the wall clock; the totals survive restarts and go out with every metrics
batch, and an outage report carries the cycles missed during that outage.

Pure: times come in as arguments; the runner persists ``snapshot()`` in the outbox's meta
table, so an outage that spans an agent restart or a power cut is still reported once.
"""

from __future__ import annotations

import msgspec

from outpost.wire import Event, Sample

__all__ = ["OUTAGE_EVENT", "OutageTracker", "TrackerState"]

OUTAGE_EVENT = "outage"
_ROLES = ("gateway", "uplink")


class TrackerState(msgspec.Struct, omit_defaults=True):
    """What must survive a restart."""

    last_alive: float = 0.0  # the last cycle the agent ran
    alive_uptime: float = 0.0  # seconds since boot then (0: unknown)
    boot_id: str = ""
    down_since: float = 0.0  # 0: the link is not known to be down
    rebooted: bool = False
    agent_down: bool = False  # the agent itself was not running for a while
    stopped_cleanly: bool = False  # the last stop was asked for (SIGTERM): not an outage
    gateway_ok: int = 0
    gateway_total: int = 0
    uplink_ok: int = 0
    uplink_total: int = 0
    outage_missed: int = 0  # cycles missed during this outage, because the agent was down
    # Totals since the outbox was made, never reset:
    unclean_restarts: int = 0  # starts after a stop that was not asked for
    missed_cycles: int = 0  # collection cycles those stops cost


class OutageTracker:
    def __init__(self, state: TrackerState, min_seconds: float) -> None:
        self.state = state
        self.min_seconds = min_seconds
        self.connected = False

    def start(
        self, now: float, boot_id: str, interval: float, uptime: float | None = None
    ) -> int | None:
        """On agent start: a changed boot id, or a long silence, opens an outage that began
        when the agent last ran. Returns None after a clean stop (or on the first start),
        else the collection cycles the unclean stop cost (also counted in the state).
        ``uptime``: seconds since boot now, when known."""
        st = self.state
        missed = None
        if st.last_alive and not st.stopped_cleanly:
            rebooted = bool(st.boot_id) and boot_id != st.boot_id
            elapsed = max(0.0, now - st.last_alive)
            if not rebooted and uptime is not None and 0 < st.alive_uptime <= uptime:
                elapsed = uptime - st.alive_uptime
            if rebooted:
                st.rebooted = True
            elif elapsed > 2 * interval + 5:
                st.agent_down = True
            if (st.rebooted or st.agent_down) and not st.down_since:
                st.down_since = st.last_alive
            # The cycles due since the last one stored (the one being collected when the
            # agent stopped among them); the first cycle runs now.
            missed = int(elapsed // interval) if interval > 0 else 0
            st.unclean_restarts += 1
            st.missed_cycles += missed
            st.outage_missed += missed
        st.boot_id = boot_id
        st.stopped_cleanly = False
        # Alive from now: a power cut before the first collection still counts.
        st.last_alive = max(st.last_alive, now)
        st.alive_uptime = uptime or 0.0
        return missed

    def stopped(self) -> None:
        """A stop that was asked for: the silence until the next start is planned."""
        self.state.stopped_cleanly = True

    def cycle(self, now: float, samples: list[Sample], uptime: float | None = None) -> None:
        """After each collection: note that the agent is alive, and while the link is down,
        how the gateway and uplink probes fared."""
        st = self.state
        st.last_alive = now
        st.alive_uptime = uptime or 0.0
        if self.connected or not st.down_since:
            return
        for s in samples:
            if s.name != "outpost_probe_success":
                continue
            role = s.labels.get("role", "")
            ok = 1 if s.value == 1.0 else 0
            if role == "gateway":
                st.gateway_total += 1
                st.gateway_ok += ok
            elif role == "uplink":
                st.uplink_total += 1
                st.uplink_ok += ok

    def disconnected(self, now: float) -> None:
        self.connected = False
        if not self.state.down_since:
            self.state.down_since = now

    def connected_at(self, now: float) -> Event | None:
        """The link is back: the outage report, or None when there was none (or it was too
        short to matter)."""
        self.connected = True
        st = self.state
        if not st.down_since:
            return None
        duration = max(0.0, now - st.down_since)
        event = None
        if duration >= self.min_seconds or st.rebooted or st.agent_down:
            event = Event(
                kind=OUTAGE_EVENT,
                severity="warning",
                ts=int(now * 1000),
                message=f"no link to the broker for {duration:.0f} s",
                attrs={
                    "started_ms": str(int(st.down_since * 1000)),
                    "ended_ms": str(int(now * 1000)),
                    "duration_seconds": f"{duration:.3f}",
                    "rebooted": _yes(st.rebooted),
                    "agent_down": _yes(st.agent_down),
                    "gateway": _answered(st.gateway_ok, st.gateway_total),
                    "uplink": _answered(st.uplink_ok, st.uplink_total),
                    "gateway_probes": f"{st.gateway_ok}/{st.gateway_total}",
                    "uplink_probes": f"{st.uplink_ok}/{st.uplink_total}",
                    "cycles_missed": str(st.outage_missed),
                },
            )
        self.state = TrackerState(
            last_alive=st.last_alive,
            alive_uptime=st.alive_uptime,
            boot_id=st.boot_id,
            unclean_restarts=st.unclean_restarts,
            missed_cycles=st.missed_cycles,
        )
        return event

    def snapshot(self) -> bytes:
        return msgspec.json.encode(self.state)

    @staticmethod
    def restore(data: bytes | None) -> TrackerState:
        if not data:
            return TrackerState()
        try:
            return msgspec.json.decode(data, type=TrackerState)
        except msgspec.DecodeError:
            return TrackerState()


def _yes(flag: bool) -> str:
    return "true" if flag else "false"


def _answered(ok: int, total: int) -> str:
    """``answered`` (at least once), ``silent`` (never), or ``unprobed``."""
    if total == 0:
        return "unprobed"
    return "answered" if ok else "silent"

"""What kind of outage was it: the agent's side.

While the agent cannot reach the broker it keeps probing, and this tracker counts how its
``gateway`` and ``uplink`` probes fared. When the link is back it yields one ``outage`` event:
when the link went, when it came back, whether the gateway and uplink answered meanwhile, and
whether the host rebooted (a new boot id: most often a power cut) or only the agent was down.
The collector classifies the outage from these facts (collector/outages.py).

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
    boot_id: str = ""
    down_since: float = 0.0  # 0: the link is not known to be down
    rebooted: bool = False
    agent_down: bool = False  # the agent itself was not running for a while
    stopped_cleanly: bool = False  # the last stop was asked for (SIGTERM): not an outage
    gateway_ok: int = 0
    gateway_total: int = 0
    uplink_ok: int = 0
    uplink_total: int = 0


class OutageTracker:
    def __init__(self, state: TrackerState, min_seconds: float) -> None:
        self.state = state
        self.min_seconds = min_seconds
        self.connected = False

    def start(self, now: float, boot_id: str, interval: float) -> None:
        """On agent start: a changed boot id, or a long silence, opens an outage that began
        when the agent last ran."""
        st = self.state
        if st.last_alive and not st.stopped_cleanly:
            if st.boot_id and boot_id != st.boot_id:
                st.rebooted = True
            elif now - st.last_alive > 2 * interval + 5:
                st.agent_down = True
            if (st.rebooted or st.agent_down) and not st.down_since:
                st.down_since = st.last_alive
        st.boot_id = boot_id
        st.stopped_cleanly = False
        # Alive from now: a power cut before the first collection still counts.
        st.last_alive = max(st.last_alive, now)

    def stopped(self) -> None:
        """A stop that was asked for: the silence until the next start is planned."""
        self.state.stopped_cleanly = True

    def cycle(self, now: float, samples: list[Sample]) -> None:
        """After each collection: note that the agent is alive, and while the link is down,
        how the gateway and uplink probes fared."""
        st = self.state
        st.last_alive = now
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
                },
            )
        self.state = TrackerState(last_alive=st.last_alive, boot_id=st.boot_id)
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

"""The contract every source keeps.

A source is built from its validated config block with no I/O in the constructor; ``collect``
reads what it measures and returns samples and events. It keeps no module-level state. A source
that raises is reported as ``outpost_agent_source_success{source} 0`` and the others go on.

A source that remembers where it was (a log position, the last set of listening ports) is
``Stateful``: the agent stores ``state()`` in the same transaction as the events that source
returned, hands it back through ``restore`` at start, and calls ``restore`` with the last stored
state when a write fails, so the same events come again: none lost, none repeated.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import msgspec

from agent.errors import SourceError
from outpost.wire import Event, Sample

__all__ = ["Collected", "DeviceData", "Source", "SourceError", "Stateful"]


class DeviceData(msgspec.Struct):
    """What a source read from one device it polls on the device's behalf (SNMP gear).

    ``up`` says whether the device answered; it becomes the device's ``outpost_host_up``.
    """

    up: bool
    samples: list[Sample] = msgspec.field(default_factory=list)
    events: list[Event] = msgspec.field(default_factory=list)


class Collected(msgspec.Struct):
    samples: list[Sample] = msgspec.field(default_factory=list)
    events: list[Event] = msgspec.field(default_factory=list)
    devices: dict[str, DeviceData] = msgspec.field(default_factory=dict)


class Source(Protocol):
    name: str

    def collect(self, now: float) -> Collected:
        """Read once. ``now`` is the wall-clock time of the cycle, in seconds."""
        ...


@runtime_checkable
class Stateful(Protocol):
    """A source whose position must survive restarts, committed with its events."""

    def state(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot of what the source has consumed so far."""
        ...

    def restore(self, data: dict[str, Any]) -> None:
        """Go back to a snapshot; tolerate a missing or damaged one by starting fresh."""
        ...

"""Reboots and wall-clock jumps of this host.

``BootClock`` compares the kernel's boot id with the one it saw last (``reboot`` when it
differs) and, within one boot, how far the wall clock moved against CLOCK_BOOTTIME, which
counts time since boot including suspend and is never set (``clock_jump`` when they disagree by
more than ``jump_seconds``). The last (boot id, wall, boottime) is its state, so both work across
agent restarts. The first check ever only records a baseline. Slow drift (NTP slewing) is not a
jump: each check compares with the previous one only. It does not say why the host rebooted.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from outpost.wire import Event

__all__ = ["BootClock", "boottime", "read_boot_id"]

logger = logging.getLogger(__name__)

BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
STATE_VERSION = 1
MAX_BOOT_ID = 64


def read_boot_id() -> str:
    """The kernel's id for this boot (Linux), else the boot time from psutil in whole seconds.

    ``OUTPOST_BOOT_ID`` overrides it, as it does for the agent's identity (agent/runner.py).
    """
    if os.environ.get("OUTPOST_BOOT_ID"):
        return os.environ["OUTPOST_BOOT_ID"][:MAX_BOOT_ID]
    try:
        return Path(BOOT_ID_FILE).read_text().strip()[:MAX_BOOT_ID]
    except OSError:
        import psutil

        return str(int(psutil.boot_time()))


def boottime() -> float:
    """Seconds since boot, counting suspend (CLOCK_BOOTTIME; monotonic where there is none)."""
    clock_id = getattr(time, "CLOCK_BOOTTIME", None)
    if clock_id is None:
        return time.monotonic()
    return time.clock_gettime(clock_id)


def _iso(ts: float) -> str:
    moment = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return moment.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _finite(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"not a number: {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"not finite: {value!r}")
    return float(value)


class BootClock:
    """Reports ``reboot`` and ``clock_jump``; see the module docstring.

    ``boot_id_reader`` and ``clock`` (seconds since boot) are the I/O, injectable for tests.
    """

    def __init__(
        self,
        jump_seconds: float = 120.0,
        boot_id_reader: Callable[[], str] = read_boot_id,
        clock: Callable[[], float] = boottime,
    ) -> None:
        self.jump_seconds = jump_seconds
        self._boot_id_reader = boot_id_reader
        self._clock = clock
        # None until the first check (or a restore) has set a baseline.
        self._boot_id: str | None = None
        self._wall = 0.0
        self._boot = 0.0

    def check(self, now: float) -> list[Event]:
        """Read the boot id and the boot clock, compare with the last check."""
        boot_id = self._boot_id_reader()
        since_boot = self._clock()
        before, wall, boot = self._boot_id, self._wall, self._boot
        self._boot_id, self._wall, self._boot = boot_id, now, since_boot
        ts = int(now * 1000)
        if before is None:
            logger.debug("baseline: boot id %s", boot_id)
            return []
        if boot_id != before:
            attrs = {
                "boot_id_before": before,
                "boot_id": boot_id,
                "boot_time": _iso(now - since_boot),
            }
            return [Event("reboot", "warning", ts, "", attrs)]
        if since_boot < boot:
            # Impossible within one boot: the boot id did not change when it should have.
            logger.warning("boot clock went backwards with the same boot id; new baseline")
            return []
        jump = (now - wall) - (since_boot - boot)
        if abs(jump) <= self.jump_seconds:
            return []
        return [Event("clock_jump", "warning", ts, "", {"jump_seconds": f"{jump:.1f}"})]

    def state(self) -> dict[str, Any]:
        """``{"v": 1, "boot_id": str | None, "wall": float, "boottime": float}``."""
        return {
            "v": STATE_VERSION,
            "boot_id": self._boot_id,
            "wall": self._wall,
            "boottime": self._boot,
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Go back to a stored state; garbage is logged and gives a fresh baseline."""
        self._boot_id, self._wall, self._boot = None, 0.0, 0.0
        if not data:
            return
        try:
            if data.get("v") != STATE_VERSION:
                raise ValueError(f"unknown state version {data.get('v')!r}")
            boot_id = data["boot_id"]
            if boot_id is None:
                return
            if not isinstance(boot_id, str) or len(boot_id) > MAX_BOOT_ID:
                raise ValueError(f"bad boot id {boot_id!r}")
            wall, boot = _finite(data["wall"]), _finite(data["boottime"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            logger.warning("stored boot clock state is damaged (%s); starting afresh", exc)
            return
        self._boot_id, self._wall, self._boot = boot_id, wall, boot

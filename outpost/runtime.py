"""What every long-running Outpost command shares: config loading that refuses to start on a
bad config (exit 2, one line per mistake), a stop event set by SIGTERM or SIGINT, and reading
the config again on SIGHUP (:class:`Reload`)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgspec

from outpost.config import ConfigError, load

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "Reload",
    "SignalFlag",
    "changed_keys",
    "load_or_exit",
    "load_or_log",
    "stop_event",
]

T = TypeVar("T")

EXIT_FAILURE = 1
EXIT_CONFIG = 2

log = logging.getLogger(__name__)


def load_or_exit(path: Path | None, type_: type[T], overrides: dict[str, Any]) -> T:
    try:
        return load(path, type_, overrides)
    except ConfigError as exc:
        # Plain stderr and SystemExit, not typer's: the agent runs without typer loaded.
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print(
            f"{len(exc.problems)} problem(s); nothing was started. "
            "Fix the file or flags named above (config/*.yaml has commented examples).",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_CONFIG) from None


def load_or_log(path: Path | None, type_: type[T], overrides: dict[str, Any]) -> T | None:
    """:func:`load` for a process that is already running: each problem is logged as an
    error (file, key path, what was found and expected, as :func:`load_or_exit` prints
    them) and None is returned, so the caller keeps what it has."""
    try:
        return load(path, type_, overrides)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("reload: %s", problem)
        log.error(
            "reload refused: %d problem(s) in %s; still running with the previous config",
            len(exc.problems),
            path or "the flags",
        )
        return None


def stop_event() -> threading.Event:
    """An event set on SIGTERM or SIGINT (the first one; a second SIGINT exits at once)."""
    stop = threading.Event()

    def handle(signum: int, frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            sys.exit(130)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


class SignalFlag:
    """Set by a signal handler, taken by the main loop. No lock: the handler runs on the
    main thread between two bytecodes, and a lock the main thread held at that moment would
    deadlock it. The handler only counts and the loop only remembers what it took, so a
    signal arriving during :meth:`take` is not lost."""

    def __init__(self) -> None:
        self._count = 0
        self._taken = 0

    def set(self) -> None:
        self._count += 1

    def take(self) -> bool:
        """True when the flag was set since the last take (once, however many times)."""
        count = self._count
        if count == self._taken:
            return False
        self._taken = count
        return True

    def on(self, signum: int) -> SignalFlag:
        """Set this flag on ``signum`` (from the main thread, as ``signal`` requires)."""
        signal.signal(signum, lambda _signum, _frame: self.set())
        return self


class Reload(Generic[T]):
    """How a running command reads its config again: the same file and the same command-line
    overrides as at start. :attr:`requested` is set on SIGHUP (see :meth:`on_sighup`); the
    main loop takes it and does the work, never the signal handler."""

    def __init__(
        self,
        path: Path | None,
        type_: type[T],
        overrides: dict[str, Any],
        verbose: int = 0,
        requested: SignalFlag | None = None,
    ) -> None:
        self.path = path
        self.type_ = type_
        self.overrides = dict(overrides)
        self.verbose = verbose
        self.requested = requested or SignalFlag()

    def on_sighup(self) -> Reload[T]:
        self.requested.on(signal.SIGHUP)
        return self

    def due(self) -> bool:
        return self.requested.take()

    def read(self) -> T | None:
        """The config as it is now, or None (problems logged) when it is not valid."""
        return load_or_log(self.path, self.type_, self.overrides)

    def set_logging(self, level: str, fmt: str) -> None:
        """Apply a reloaded ``log`` block, with the ``-v`` given at start."""
        from outpost.logs import setup_logging

        setup_logging(level, fmt, self.verbose)


def changed_keys(old: Any, new: Any, depth: int = 2) -> list[str]:
    """The dotted key paths (at most ``depth`` levels deep) where two configs differ, in
    order: ``["interval_seconds", "sources.probes"]``."""
    return _diff(msgspec.to_builtins(old), msgspec.to_builtins(new), "", depth)


def _diff(old: Any, new: Any, prefix: str, depth: int) -> list[str]:
    if old == new:
        return []
    # A block left at its defaults is not in the builtins at all.
    if old is None and isinstance(new, dict):
        old = {}
    if new is None and isinstance(old, dict):
        new = {}
    if depth <= 0 or not (isinstance(old, dict) and isinstance(new, dict)):
        return [prefix or "."]
    out: list[str] = []
    for key in [*old, *(k for k in new if k not in old)]:
        path = f"{prefix}.{key}" if prefix else str(key)
        out += _diff(old.get(key), new.get(key), path, depth - 1)
    return out

"""What every long-running Outpost command shares: config loading that refuses to start on a
bad config (exit 2, one line per mistake), and a stop event set by SIGTERM or SIGINT."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any, TypeVar

import typer

from outpost.config import ConfigError, load

__all__ = ["EXIT_CONFIG", "EXIT_FAILURE", "load_or_exit", "stop_event"]

T = TypeVar("T")

EXIT_FAILURE = 1
EXIT_CONFIG = 2


def load_or_exit(path: Path | None, type_: type[T], overrides: dict[str, Any]) -> T:
    try:
        return load(path, type_, overrides)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(f"error: {problem}", err=True)
        typer.echo(
            f"{len(exc.problems)} problem(s); nothing was started. "
            "Fix the file or flags named above (config/*.yaml has commented examples).",
            err=True,
        )
        raise typer.Exit(EXIT_CONFIG) from None


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

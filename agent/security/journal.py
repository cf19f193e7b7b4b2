"""Read auth entries from the systemd journal with ``journalctl``: ``JournalReader``.

Used when there is no auth log file. Each ``read`` runs ``journalctl -o json`` for the auth and
authpriv facilities after the cursor of the last entry returned, so entries come once each, in
order, across restarts (the cursor is the ``state``). The very first read only learns the cursor
of the newest entry (``-n 1``) and returns nothing, as a log file is followed from its end. At
most ``max_entries`` entries are read per call; then journalctl is stopped and the next call goes
on from there.

It does not parse messages (``authlog.parse_journal_entry``) nor talk to the journal through
libsystemd: journalctl is the one interface that is stable across distributions.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
import threading
from typing import IO, Any

from agent.sources.base import SourceError

__all__ = ["FACILITIES", "JournalReader"]

logger = logging.getLogger(__name__)

FACILITIES = ("SYSLOG_FACILITY=4", "SYSLOG_FACILITY=10")  # auth, authpriv
_STATE_VERSION = 1
_MAX_CURSOR = 4096
_STOP_WAIT = 5.0  # seconds to wait for journalctl to exit once told to stop
_HINT = (
    "check that the agent's user may read the system journal (groups systemd-journal or adm) "
    "and that journalctl works for it, or set security.auth_log.path to a log file"
)


def _stderr_tail(err: IO[bytes]) -> str:
    err.seek(0)
    text = err.read().decode("utf-8", errors="replace").strip()
    return " ".join(text.split())[-300:]


class JournalReader:
    """New auth entries from the journal as parsed ``journalctl -o json`` objects.

    ``skipped`` counts output lines that were not JSON objects (in this process).
    """

    skipped: int

    def __init__(
        self, command: str = "journalctl", max_entries: int = 20000, timeout: float = 10.0
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.command = command
        self.max_entries = max_entries
        self.timeout = timeout
        self.skipped = 0
        self._cursor: str | None = None

    def args(self) -> list[str]:
        """The command line the next ``read`` runs."""
        args = [self.command, "-o", "json", "--no-pager", "-q", *FACILITIES]
        if self._cursor is None:
            return [*args, "-n", "1"]
        return [*args, f"--after-cursor={self._cursor}"]

    def read(self) -> list[dict[str, Any]]:
        """The entries since the last call (none on the first call, which learns the cursor)."""
        learning = self._cursor is None
        entries = self._run(self.args())
        for entry in reversed(entries):
            cursor = entry.get("__CURSOR")
            if isinstance(cursor, str) and cursor:
                self._cursor = cursor
                break
        if learning:
            if self._cursor is not None:
                logger.debug("journal: starting after cursor %s", self._cursor)
            return []
        return entries

    def state(self) -> dict[str, Any]:
        return {"version": _STATE_VERSION, "cursor": self._cursor}

    def restore(self, data: dict[str, Any]) -> None:
        """Go back to a cursor from ``state``; ``{}`` or garbage starts afresh."""
        self._cursor = None
        if not data:
            return
        try:
            if data["version"] != _STATE_VERSION:
                raise ValueError(f"unknown version {data['version']!r}")
            cursor = data["cursor"]
            if cursor is not None and (
                not isinstance(cursor, str)
                or not cursor
                or len(cursor) > _MAX_CURSOR
                or not cursor.isprintable()
            ):
                raise ValueError("bad cursor")
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("ignoring the saved journal cursor (%s); starting afresh", exc)
            return
        self._cursor = cursor

    def _run(self, args: list[str]) -> list[dict[str, Any]]:
        with tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
                )
            except FileNotFoundError:
                raise SourceError(
                    f"{self.command!r} not found: install systemd's journalctl or name it in "
                    "security.auth_log.journalctl, or set security.auth_log.path to a log file"
                ) from None
            except OSError as exc:
                raise SourceError(f"cannot run {self.command!r}: {exc}; {_HINT}") from None
            expired = threading.Event()

            def expire() -> None:
                expired.set()
                proc.kill()

            timer = threading.Timer(self.timeout, expire)
            timer.start()
            entries: list[dict[str, Any]] = []
            stopped = False
            try:
                assert proc.stdout is not None
                for raw in proc.stdout:
                    entry = self._parse(raw)
                    if entry is None:
                        continue
                    entries.append(entry)
                    if len(entries) >= self.max_entries:
                        stopped = True
                        break
            finally:
                if stopped or expired.is_set():
                    proc.terminate()
                assert proc.stdout is not None
                proc.stdout.close()
                try:
                    status = proc.wait(_STOP_WAIT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    status = proc.wait()
                timer.cancel()
            if expired.is_set():
                if not entries:
                    raise SourceError(
                        f"{self.command} gave no answer within {self.timeout:g} s; {_HINT}"
                    )
                logger.warning(
                    "%s was stopped after %g s; going on after its last entry",
                    self.command,
                    self.timeout,
                )
            elif not stopped and status != 0:
                message = _stderr_tail(err) or "no message"
                if self._cursor is not None and "seek to cursor" in message.lower():
                    # A cursor journalctl cannot seek to would fail every time from now on.
                    logger.warning("journal: dropping cursor %s: %s", self._cursor, message)
                    self._cursor = None
                    raise SourceError(
                        f"{self.command} rejected the saved cursor ({message}); the next read "
                        "starts again from the newest entry"
                    )
                raise SourceError(
                    f"{self.command} failed (exit status {status}): {message}; {_HINT}"
                )
        return entries

    def _parse(self, raw: bytes) -> dict[str, Any] | None:
        if not raw.strip():
            return None
        try:
            entry = json.loads(raw)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            self.skipped += 1
            logger.debug("journal: skipped a line that is not a JSON object")
            return None
        return entry

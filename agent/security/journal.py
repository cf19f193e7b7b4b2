"""Read auth entries from the systemd journal with ``journalctl``: ``JournalReader``.

Used when there is no auth log file. One long-running ``journalctl -o json --follow`` child,
filtered to the auth and authpriv facilities and started after the cursor of the last entry
returned, writes to a pipe that a daemon thread parses into a bounded queue (when the queue is
full the thread waits, and journalctl waits on the pipe). ``read`` only takes what has arrived,
at most ``max_entries`` entries, without spawning or waiting, so a cycle costs next to nothing.
The cursor of the last entry returned is the ``state``: entries come once each, in order, across
restarts and failed database writes (``restore`` stops the child and drops what it queued; the
next ``read`` starts a new one after the restored cursor).

The very first read only learns the cursor of the newest entry with a one-shot ``-n 1`` run and
returns nothing, as a log file is followed from its end; the child then follows from there (or
``-n 0`` when the journal had no auth entry yet). A child that exits is reported as a
``SourceError`` once the entries it queued have been returned, and the ``read`` after that
starts a new one. On Linux the child is sent SIGTERM when the thread that started it dies, so
it never outlives the agent; ``close`` stops it.

It does not parse messages (``authlog.parse_journal_entry``) nor talk to the journal through
libsystemd: journalctl is the one interface that is stable across distributions.
"""

from __future__ import annotations

import ctypes
import enum
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from typing import IO, Any

from agent.errors import SourceError

__all__ = ["FACILITIES", "JournalReader", "parse_entry"]

logger = logging.getLogger(__name__)

FACILITIES = ("SYSLOG_FACILITY=4", "SYSLOG_FACILITY=10")  # auth, authpriv
_STATE_VERSION = 1
_MAX_CURSOR = 4096
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_HINT = (
    "check that the agent's user may read the system journal (groups systemd-journal or adm) "
    "and that journalctl works for it, or set security.auth_log.path to a log file"
)


class _Mark(enum.Enum):
    """What the reader thread queues besides entries."""

    SKIPPED = enum.auto()  # a line that was not a JSON object
    END = enum.auto()  # journalctl closed its output: it has exited or is exiting


_Item = dict[str, Any] | _Mark


def parse_entry(raw: bytes) -> dict[str, Any] | None:
    """One line of ``journalctl -o json``: the entry, or None when it is not a JSON object."""
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def _pump(stdout: IO[bytes], out: queue.Queue[_Item], stop: threading.Event) -> None:
    """The reader thread: parse journalctl's output into ``out`` until it ends.

    ``put`` waits while ``out`` is full. Once ``stop`` is set the rest of the output is read and
    dropped, so a journalctl blocked on a full pipe can see its SIGTERM and exit.
    """
    try:
        for raw in stdout:
            if stop.is_set() or not raw.strip():
                continue
            entry = parse_entry(raw)
            out.put(_Mark.SKIPPED if entry is None else entry)
    except (OSError, ValueError) as exc:
        logger.debug("journal: reading journalctl's output failed: %s", exc)
    finally:
        stdout.close()
        if not stop.is_set():
            out.put(_Mark.END)


def _death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux send the child SIGTERM when its parent dies; None elsewhere.

    "Parent" is the thread that forks (prctl(2)): the agent reads from its main thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec: no locks, no logging
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody will send it
            os._exit(1)

    return preexec


def _stderr_tail(err: IO[bytes]) -> str:
    err.seek(0)
    text = err.read().decode("utf-8", errors="replace").strip()
    return " ".join(text.split())[-300:]


class _Child:
    """A running ``journalctl --follow``, its stderr file, and the thread that reads its output."""

    def __init__(
        self, proc: subprocess.Popen[bytes], err: IO[bytes], cursor: str | None, bound: int
    ) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.err = err
        self.cursor = cursor  # where it started
        self.queue: queue.Queue[_Item] = queue.Queue(bound)
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=_pump,
            args=(proc.stdout, self.queue, self.stop),
            name=f"outpost-journal-{proc.pid}",
            daemon=True,
        )
        self.thread.start()

    def drain(self) -> None:
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                return


class JournalReader:
    """New auth entries from the journal as parsed ``journalctl -o json`` objects.

    ``skipped`` counts output lines that were not JSON objects (in this process). ``read``,
    ``restore`` and ``close`` are to be called from one thread, the one that lives as long as
    the reader (on Linux journalctl is stopped when the thread that started it ends).
    """

    skipped: int

    def __init__(
        self, command: str = "journalctl", max_entries: int = 20000, timeout: float = 10.0
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.command = command
        self.max_entries = max_entries
        self.timeout = timeout  # bounds the learning run and the wait for journalctl to stop
        self.skipped = 0
        self._cursor: str | None = None
        self._child: _Child | None = None
        self._failure: SourceError | None = None  # to raise on the next read

    def read(self) -> list[dict[str, Any]]:
        """The entries that have arrived since the last call, at most ``max_entries``.

        Nothing on the first call, which learns the cursor. Raises ``SourceError`` when
        journalctl cannot be run, or has stopped and its last entries were returned; the next
        call starts it again.
        """
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        if self._child is None:
            if self._cursor is None:
                self._learn()
                self._child = self._start()
                return []
            self._child = self._start()
        child = self._child
        entries: list[dict[str, Any]] = []
        ended = False
        while len(entries) < self.max_entries:
            try:
                item = child.queue.get_nowait()
            except queue.Empty:
                break
            if item is _Mark.SKIPPED:
                self._skip()
            elif item is _Mark.END:
                ended = True
                break
            else:
                entries.append(item)
        self._advance(entries)
        if ended:
            self._child = None
            failure = self._ended(child)
            if not entries:
                raise failure
            self._failure = failure
        return entries

    def state(self) -> dict[str, Any]:
        return {"version": _STATE_VERSION, "cursor": self._cursor}

    def restore(self, data: dict[str, Any]) -> None:
        """Go back to a cursor from ``state``; ``{}`` or garbage starts afresh.

        Stops journalctl and drops what it queued: the next ``read`` starts after the cursor.
        """
        self.close()
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

    def close(self) -> None:
        """Stop journalctl and its reader thread, if running; the cursor is kept."""
        self._failure = None
        child, self._child = self._child, None
        if child is None:
            return
        child.stop.set()
        child.proc.terminate()
        child.drain()  # a thread waiting to queue now sees ``stop`` and drops the rest
        self._reap(child)
        child.err.close()

    # --- internals ----------------------------------------------------------------------------

    def _follow_args(self) -> list[str]:
        args = [self.command, "-o", "json", "--follow", "--no-pager", "-q", *FACILITIES]
        if self._cursor is None:
            return [*args, "-n", "0"]
        return [*args, f"--after-cursor={self._cursor}"]

    def _spawn(self, args: list[str], err: IO[bytes]) -> subprocess.Popen[bytes]:
        try:
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                preexec_fn=_death_signal(),  # only prctl and getppid run in the child
            )
        except FileNotFoundError:
            raise SourceError(
                f"{self.command!r} not found: install systemd's journalctl or name it in "
                "security.auth_log.journalctl, or set security.auth_log.path to a log file"
            ) from None
        except OSError as exc:
            raise SourceError(f"cannot run {self.command!r}: {exc}; {_HINT}") from None

    def _start(self) -> _Child:
        args = self._follow_args()
        err = tempfile.TemporaryFile()  # noqa: SIM115 -- kept as long as the child runs
        try:
            proc = self._spawn(args, err)
        except BaseException:
            err.close()
            raise
        logger.debug("journal: started %s (pid %d)", " ".join(args), proc.pid)
        return _Child(proc, err, self._cursor, 2 * self.max_entries)

    def _reap(self, child: _Child) -> int:
        """Wait (bounded) for journalctl to exit, killing it if it will not, then its thread."""
        proc = child.proc
        try:
            status = proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            logger.warning("journal: %s (pid %d) did not stop; killing it", self.command, proc.pid)
            proc.kill()
            status = proc.wait()
        child.thread.join(self.timeout)
        if child.thread.is_alive():  # another process holds the pipe open
            logger.warning("journal: the thread reading %s's output did not stop", self.command)
        return status

    def _ended(self, child: _Child) -> SourceError:
        """journalctl closed its output: reap it and say why it stopped."""
        # It is exiting: no signal before a bounded wait, so that its own status is kept.
        try:
            child.proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            child.proc.terminate()
        status = self._reap(child)
        message = _stderr_tail(child.err) or "no message"
        child.err.close()
        return self._error(status, message, child.cursor)

    def _error(self, status: int, message: str, cursor: str | None) -> SourceError:
        if cursor is not None and cursor == self._cursor and "seek to cursor" in message.lower():
            # A cursor journalctl cannot seek to would fail every time from now on.
            logger.warning("journal: dropping cursor %s: %s", cursor, message)
            self._cursor = None
            return SourceError(
                f"{self.command} rejected the saved cursor ({message}); the next read "
                "starts again from the newest entry"
            )
        how = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
        return SourceError(f"{self.command} failed ({how}): {message}; {_HINT}")

    def _skip(self) -> None:
        self.skipped += 1
        logger.debug("journal: skipped a line that is not a JSON object")

    def _advance(self, entries: list[dict[str, Any]]) -> None:
        for entry in reversed(entries):
            cursor = entry.get("__CURSOR")
            if isinstance(cursor, str) and cursor:
                self._cursor = cursor
                return

    def _learn(self) -> None:
        """Learn the cursor of the newest entry with a one-shot ``journalctl -n 1``."""
        args = [self.command, "-o", "json", "--no-pager", "-q", *FACILITIES, "-n", "1"]
        with tempfile.TemporaryFile() as err:
            proc = self._spawn(args, err)
            expired = threading.Event()

            def expire() -> None:
                expired.set()
                proc.kill()

            timer = threading.Timer(self.timeout, expire)
            timer.start()
            entries: list[dict[str, Any]] = []
            try:
                assert proc.stdout is not None
                for raw in proc.stdout:
                    if not raw.strip():
                        continue
                    entry = parse_entry(raw)
                    if entry is None:
                        self._skip()
                    else:
                        entries.append(entry)
            finally:
                assert proc.stdout is not None
                proc.stdout.close()
                try:
                    status = proc.wait(self.timeout)
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
            elif status != 0:
                raise self._error(status, _stderr_tail(err) or "no message", None)
        self._advance(entries)
        if self._cursor is not None:
            logger.debug("journal: starting after cursor %s", self._cursor)

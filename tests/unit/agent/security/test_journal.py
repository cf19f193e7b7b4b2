"""Tests for agent.security.journal: a fake ``journalctl`` serves entries from a JSON-lines file.

Reading is asynchronous (a thread parses the output of one long-running journalctl), so the
tests wait for what they expect with ``wait_for``: a condition polled until a deadline.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import agent.security.journal
from agent.security.journal import FACILITIES, JournalReader, parse_entry
from agent.sources.base import SourceError

DEADLINE = 5.0  # seconds to wait for something asynchronous before failing

# Serves the lines of ENTRIES (one journal entry a line, or garbage), honouring --after-cursor
# and -n like journalctl; logs its arguments to CALLS, and its pid to PIDS once it has read
# ENTRIES (from then on, a --follow child sees every entry added). With --follow it goes on
# serving what is appended to ENTRIES (looking every 20 ms) until SIGTERM ends it, unless FAIL
# exists: then it writes FAIL's text to stderr and exits 1 after the entries it had.
FAKE = """\
import json, os, sys, time
entries, calls, pids, fail = sys.argv[1:5]
args = sys.argv[5:]
with open(calls, "a") as f:
    f.write(json.dumps(args) + "\\n")
def cursor(line):
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry.get("__CURSOR") if isinstance(entry, dict) else None
with open(entries, "rb") as f:
    data = f.read()
offset = data.rfind(b"\\n") + 1  # a line being written is left for later
lines = data[:offset].splitlines()
after = [a.split("=", 1)[1] for a in args if a.startswith("--after-cursor=")]
if after:
    cursors = [cursor(line) for line in lines]
    if after[0] not in cursors:
        sys.stderr.write("Failed to seek to cursor: Invalid argument\\n")
        sys.exit(1)
    lines = lines[cursors.index(after[0]) + 1 :]
if "-n" in args:
    n = int(args[args.index("-n") + 1])
    lines = lines[len(lines) - n :] if n else []
with open(pids, "a") as f:
    f.write(f"{os.getpid()}\\n")
out = sys.stdout.buffer
for line in lines:
    out.write(line + b"\\n")
out.flush()
if "--follow" not in args:
    sys.exit(0)
if os.path.exists(fail):
    with open(fail) as f:
        sys.stderr.write(f.read())
    sys.exit(1)
with open(entries, "rb") as f:
    f.seek(offset)
    pending = b""
    while True:  # SIGTERM's default action ends it
        chunk = f.read()
        if not chunk:
            time.sleep(0.02)
            continue
        *complete, pending = (pending + chunk).split(b"\\n")
        for line in complete:
            out.write(line + b"\\n")
        out.flush()
"""


class Journal:
    """The fake journal: entries to append, and what journalctl was called with."""

    def __init__(self, directory: Path) -> None:
        self.entries = directory / "entries.jsonl"
        self.calls = directory / "calls.jsonl"
        self.pids = directory / "pids"
        self.fail = directory / "fail"
        self.entries.touch()
        self.calls.touch()
        self.pids.touch()
        script = directory / "fake_journalctl.py"
        script.write_text(FAKE)
        self.command = str(directory / "journalctl")
        wrapper = Path(self.command)
        wrapper.write_text(
            f"#!/bin/sh\nexec {sys.executable} {script} {self.entries} {self.calls} "
            f'{self.pids} {self.fail} "$@"\n'
        )
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
        self.count = 0

    def add(self, n: int = 1, **fields: Any) -> list[dict[str, Any]]:
        added = []
        with open(self.entries, "a") as f:
            for _ in range(n):
                self.count += 1
                entry = {
                    "__CURSOR": f"s=abc;i={self.count:x}",
                    "MESSAGE": f"message {self.count}",
                    "SYSLOG_FACILITY": "10",
                    **fields,
                }
                f.write(json.dumps(entry) + "\n")
                added.append(entry)
        return added

    def add_raw(self, line: str) -> None:
        with open(self.entries, "a") as f:
            f.write(line + "\n")

    def call_list(self) -> list[list[str]]:
        return [json.loads(line) for line in self.calls.read_text().splitlines()]

    def pid_list(self) -> list[int]:
        return [int(line) for line in self.pids.read_text().splitlines()]


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path)


@pytest.fixture
def make_reader() -> Iterator[Callable[..., JournalReader]]:
    """Makes readers, and closes them (stopping their journalctl) even when the test fails."""
    made: list[JournalReader] = []

    def make(*args: Any, **kwargs: Any) -> JournalReader:
        reader = JournalReader(*args, **kwargs)
        made.append(reader)
        return reader

    yield make
    for reader in made:
        reader.close()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds; fail after ``DEADLINE`` seconds."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} after {DEADLINE:g} s")
        time.sleep(0.005)


def read_until(
    reader: JournalReader, count: int, batches: list[int] | None = None
) -> list[dict[str, Any]]:
    """What ``read`` returns over calls until ``count`` entries (or more) have come."""
    got: list[dict[str, Any]] = []

    def enough() -> bool:
        batch = reader.read()
        if batch and batches is not None:
            batches.append(len(batch))
        got.extend(batch)
        return len(got) >= count

    wait_for(enough, f"{count} entries")
    return got


def read_until_error(reader: JournalReader) -> tuple[list[dict[str, Any]], SourceError]:
    """What ``read`` returns over calls until it raises, and what it raised."""
    got: list[dict[str, Any]] = []
    errors: list[SourceError] = []

    def failed() -> bool:
        try:
            got.extend(reader.read())
        except SourceError as exc:
            errors.append(exc)
            return True
        return False

    wait_for(failed, "a SourceError")
    return got, errors[0]


def messages(entries: list[dict[str, Any]]) -> list[str]:
    return [e["MESSAGE"] for e in entries]


def running(pid: int) -> bool:
    """Whether ``pid`` names a process that has not exited (a zombie has)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return text.rsplit(")", 1)[1].split()[0] != "Z"


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("outpost-journal")]


FOLLOW = ["-o", "json", "--follow", "--no-pager", "-q", *FACILITIES]


def test_parse_entry() -> None:
    assert parse_entry(b'{"MESSAGE": "x"}\n') == {"MESSAGE": "x"}
    assert parse_entry(b"not json {") is None
    assert parse_entry(b'["a list"]') is None


def test_first_read_learns_the_cursor_and_returns_nothing(
    journal: Journal, make_reader: Callable[..., JournalReader]
) -> None:
    journal.add(3)
    reader = make_reader(journal.command)
    assert reader.read() == []
    assert journal.call_list()[0] == ["-o", "json", "--no-pager", "-q", *FACILITIES, "-n", "1"]
    assert reader.state() == {"version": 1, "cursor": "s=abc;i=3"}
    journal.add(2)
    assert messages(read_until(reader, 2)) == ["message 4", "message 5"]
    assert journal.call_list()[1:] == [[*FOLLOW, "--after-cursor=s=abc;i=3"]]
    assert reader.state() == {"version": 1, "cursor": "s=abc;i=5"}


def test_incremental_reads(journal: Journal, make_reader: Callable[..., JournalReader]) -> None:
    journal.add(1)
    reader = make_reader(journal.command)
    reader.read()
    assert reader.read() == []
    journal.add(2, _HOSTNAME="h")
    got = read_until(reader, 2)
    assert messages(got) == ["message 2", "message 3"]
    assert got[0]["_HOSTNAME"] == "h"
    assert reader.read() == []
    journal.add(1)
    assert messages(read_until(reader, 1)) == ["message 4"]


def test_an_empty_journal_is_followed_from_its_end(
    journal: Journal, make_reader: Callable[..., JournalReader]
) -> None:
    reader = make_reader(journal.command)
    assert reader.read() == []
    assert reader.state()["cursor"] is None
    wait_for(lambda: len(journal.pid_list()) == 2, "journalctl --follow to start")
    assert journal.call_list()[1] == [*FOLLOW, "-n", "0"]
    journal.add(2)
    assert messages(read_until(reader, 2)) == ["message 1", "message 2"]
    assert reader.state()["cursor"] == "s=abc;i=2"


def test_one_journalctl_serves_every_read(
    journal: Journal, make_reader: Callable[..., JournalReader]
) -> None:
    journal.add(1)
    reader = make_reader(journal.command)
    reader.read()
    for i in range(2, 22):
        journal.add(1)
        assert messages(read_until(reader, 1)) == [f"message {i}"]
        assert reader.read() == []
    assert len(journal.pid_list()) == 2  # the learning run and one journalctl --follow
    assert len(reader_threads()) == 1


def test_max_entries_per_read(journal: Journal, make_reader: Callable[..., JournalReader]) -> None:
    journal.add(1)
    reader = make_reader(journal.command, max_entries=3)
    reader.read()
    added = journal.add(40)  # more than the queue holds (2 x max_entries): the reader waits
    batches: list[int] = []
    assert read_until(reader, 40, batches) == added
    assert max(batches) == 3
    assert reader.state()["cursor"] == "s=abc;i=29"
    assert reader.read() == []


def test_non_json_lines_are_skipped_and_counted(
    journal: Journal, make_reader: Callable[..., JournalReader]
) -> None:
    journal.add(1)
    reader = make_reader(journal.command)
    reader.read()
    journal.add_raw("not json {")
    journal.add_raw('["a list"]')
    journal.add_raw("")
    journal.add(1)
    assert messages(read_until(reader, 1)) == ["message 2"]
    assert reader.skipped == 2


def test_missing_command(tmp_path: Path, make_reader: Callable[..., JournalReader]) -> None:
    reader = make_reader(str(tmp_path / "no-journalctl"))
    with pytest.raises(SourceError, match=r"not found: install systemd's journalctl"):
        reader.read()


def test_failing_command_says_what_to_do(
    tmp_path: Path, make_reader: Callable[..., JournalReader]
) -> None:
    script = tmp_path / "journalctl"
    script.write_text("#!/bin/sh\necho 'Failed to open journal: Permission denied' >&2\nexit 1\n")
    script.chmod(0o755)
    reader = make_reader(str(script))
    with pytest.raises(SourceError) as info:
        reader.read()
    message = str(info.value)
    assert "exit status 1" in message
    assert "Permission denied" in message
    assert "systemd-journal" in message


def test_entries_come_before_the_error_of_a_journalctl_that_stopped(
    journal: Journal, make_reader: Callable[..., JournalReader]
) -> None:
    journal.add(3)
    journal.fail.write_text("Failed to open journal: Permission denied\n")
    reader = make_reader(journal.command)
    reader.restore({"version": 1, "cursor": "s=abc;i=1"})
    got, error = read_until_error(reader)
    assert messages(got) == ["message 2", "message 3"]
    message = str(error)
    assert "exit status 1" in message
    assert "Permission denied" in message
    assert "systemd-journal" in message
    assert reader.state()["cursor"] == "s=abc;i=3"
    journal.fail.unlink()
    journal.add(1)
    assert messages(read_until(reader, 1)) == ["message 4"]
    assert journal.call_list()[-1] == [*FOLLOW, "--after-cursor=s=abc;i=3"]


def test_a_cursor_journalctl_rejects_is_dropped(
    journal: Journal, make_reader: Callable[..., JournalReader], caplog: pytest.LogCaptureFixture
) -> None:
    journal.add(2)
    reader = make_reader(journal.command)
    reader.restore({"version": 1, "cursor": "s=gone;i=1"})
    with caplog.at_level(logging.WARNING):
        got, error = read_until_error(reader)
    assert got == []
    assert "rejected the saved cursor" in str(error)
    assert "dropping cursor s=gone;i=1" in caplog.text
    assert reader.state()["cursor"] is None
    assert reader.read() == []  # learns the end again
    journal.add(1)
    assert messages(read_until(reader, 1)) == ["message 3"]


def test_timeout_without_entries(tmp_path: Path, make_reader: Callable[..., JournalReader]) -> None:
    script = tmp_path / "journalctl"
    script.write_text("#!/bin/sh\nexec sleep 120\n")
    script.chmod(0o755)
    reader = make_reader(str(script), timeout=0.2)
    with pytest.raises(SourceError, match=r"no answer within 0\.2 s"):
        reader.read()


def test_close_stops_journalctl(
    journal: Journal, make_reader: Callable[..., JournalReader]
) -> None:
    journal.add(1)
    reader = make_reader(journal.command)
    reader.read()
    wait_for(lambda: len(journal.pid_list()) == 2, "journalctl --follow to start")
    pid = journal.pid_list()[-1]
    os.kill(pid, 0)
    reader.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped and reaped
    assert reader_threads() == []
    reader.close()  # again: nothing to do
    assert reader.state()["cursor"] == "s=abc;i=1"


def test_close_stops_a_reader_held_back_by_a_full_queue(
    journal: Journal, make_reader: Callable[..., JournalReader]
) -> None:
    journal.add(1)
    reader = make_reader(journal.command, max_entries=1, timeout=30)
    reader.read()
    journal.add(50)
    assert messages(read_until(reader, 1)) == ["message 2"]  # and the queue fills up
    pid = journal.pid_list()[-1]
    started = time.monotonic()
    reader.close()
    assert time.monotonic() - started < DEADLINE
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert reader_threads() == []


def test_a_journalctl_that_dies_is_started_again(
    journal: Journal, make_reader: Callable[..., JournalReader]
) -> None:
    journal.add(1)
    reader = make_reader(journal.command)
    reader.read()
    journal.add(2)
    assert messages(read_until(reader, 2)) == ["message 2", "message 3"]
    pid = journal.pid_list()[-1]
    os.kill(pid, signal.SIGKILL)
    got, error = read_until_error(reader)
    assert got == []
    assert "killed by signal 9" in str(error)
    journal.add(1)
    assert messages(read_until(reader, 1)) == ["message 4"]  # nothing lost, nothing twice
    assert len(journal.pid_list()) == 3
    assert journal.call_list()[-1] == [*FOLLOW, "--after-cursor=s=abc;i=3"]


def test_restore_replaces_journalctl(
    journal: Journal, make_reader: Callable[..., JournalReader]
) -> None:
    journal.add(1)
    reader = make_reader(journal.command)
    reader.read()
    committed = reader.state()
    journal.add(2)
    read_until(reader, 2)
    old = journal.pid_list()[-1]
    reader.restore(committed)
    with pytest.raises(ProcessLookupError):
        os.kill(old, 0)
    assert messages(read_until(reader, 2)) == ["message 2", "message 3"]
    new = journal.pid_list()[-1]
    assert new != old
    assert len(reader_threads()) == 1


def test_restore_of_an_older_cursor_returns_the_same_entries_again(
    journal: Journal, make_reader: Callable[..., JournalReader]
) -> None:
    journal.add(1)
    reader = make_reader(journal.command)
    reader.read()
    committed = json.loads(json.dumps(reader.state()))
    journal.add(3)
    first = read_until(reader, 3)
    assert messages(first) == ["message 2", "message 3", "message 4"]
    reader.restore(committed)  # the database write failed
    assert read_until(reader, 3) == first
    journal.add(1)  # then the new entry, and nothing else: no entry came twice
    assert messages(read_until(reader, 1)) == ["message 5"]
    # And across a restart.
    again = make_reader(journal.command)
    again.restore(committed)
    assert messages(read_until(again, 4)) == [*messages(first), "message 5"]


@pytest.mark.parametrize(
    "garbage",
    [
        {"version": 2, "cursor": "x"},
        {"cursor": "x"},
        {"version": 1, "cursor": 5},
        {"version": 1, "cursor": ""},
        {"version": 1, "cursor": "a\nb"},
        {"version": 1},
    ],
)
def test_restore_of_garbage_starts_afresh(
    journal: Journal,
    make_reader: Callable[..., JournalReader],
    garbage: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal.add(2)
    reader = make_reader(journal.command)
    with caplog.at_level(logging.WARNING):
        reader.restore(garbage)
    assert "starting afresh" in caplog.text
    assert reader.read() == []
    assert journal.call_list()[0][-2:] == ["-n", "1"]


def test_restore_of_nothing_is_a_first_start(
    journal: Journal, make_reader: Callable[..., JournalReader]
) -> None:
    reader = make_reader(journal.command)
    reader.restore({})
    assert reader.state() == {"version": 1, "cursor": None}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_journalctl_does_not_outlive_the_agent(journal: Journal) -> None:
    journal.add(1)
    root = Path(agent.security.journal.__file__).resolve().parents[2]
    code = (
        "import sys\n"
        "import agent.sources  # first: agent.security.journal alone is a circular import\n"
        "from agent.security.journal import JournalReader\n"
        "reader = JournalReader(sys.argv[1])\n"
        "reader.restore({'version': 1, 'cursor': 's=abc;i=1'})\n"
        "reader.read()\n"
        "sys.stdin.read()\n"
    )
    agent_proc = subprocess.Popen(
        [sys.executable, "-c", code, journal.command],
        stdin=subprocess.PIPE,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        wait_for(lambda: len(journal.pid_list()) == 1, "journalctl --follow to start")
        pid = journal.pid_list()[0]
        assert running(pid)
    finally:
        agent_proc.kill()  # the agent dies without closing anything
        agent_proc.wait()
        assert agent_proc.stdin is not None
        agent_proc.stdin.close()
    wait_for(lambda: not running(pid), "journalctl to stop with the agent")

"""Tests for agent.security.journal: a fake ``journalctl`` serves entries from a JSON-lines file."""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.security.journal import FACILITIES, JournalReader
from agent.sources.base import SourceError

# Serves the lines of ENTRIES (one journal entry a line, or garbage), honouring --after-cursor
# and -n like journalctl; logs its arguments to CALLS and its pid to PIDS. With HANG present
# it prints what it has and then waits, like a journalctl reading a huge journal.
FAKE = """\
import json, os, sys, time
entries, calls, pids, hang = sys.argv[1:5]
args = sys.argv[5:]
with open(calls, "a") as f:
    f.write(json.dumps(args) + "\\n")
with open(pids, "a") as f:
    f.write(f"{os.getpid()}\\n")
def cursor(line):
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry.get("__CURSOR") if isinstance(entry, dict) else None
with open(entries, "rb") as f:
    lines = f.read().splitlines()
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
out = sys.stdout.buffer
for line in lines:
    out.write(line + b"\\n")
    out.flush()
if os.path.exists(hang):
    time.sleep(120)
"""


class Journal:
    """The fake journal: entries to append, and what journalctl was called with."""

    def __init__(self, directory: Path) -> None:
        self.entries = directory / "entries.jsonl"
        self.calls = directory / "calls.jsonl"
        self.pids = directory / "pids"
        self.hang = directory / "hang"
        self.entries.touch()
        script = directory / "fake_journalctl.py"
        script.write_text(FAKE)
        self.command = str(directory / "journalctl")
        wrapper = Path(self.command)
        wrapper.write_text(
            f"#!/bin/sh\nexec {sys.executable} {script} {self.entries} {self.calls} "
            f'{self.pids} {self.hang} "$@"\n'
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

    def last_args(self) -> list[str]:
        args: list[str] = json.loads(self.calls.read_text().splitlines()[-1])
        return args


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path)


def messages(entries: list[dict[str, Any]]) -> list[str]:
    return [e["MESSAGE"] for e in entries]


def test_first_read_learns_the_cursor_and_returns_nothing(journal: Journal) -> None:
    journal.add(3)
    reader = JournalReader(journal.command)
    assert reader.read() == []
    assert journal.last_args() == ["-o", "json", "--no-pager", "-q", *FACILITIES, "-n", "1"]
    assert reader.state() == {"version": 1, "cursor": "s=abc;i=3"}
    journal.add(2)
    assert messages(reader.read()) == ["message 4", "message 5"]
    assert journal.last_args()[-1] == "--after-cursor=s=abc;i=3"


def test_incremental_reads(journal: Journal) -> None:
    journal.add(1)
    reader = JournalReader(journal.command)
    reader.read()
    assert reader.read() == []
    journal.add(2, _HOSTNAME="h")
    got = reader.read()
    assert messages(got) == ["message 2", "message 3"]
    assert got[0]["_HOSTNAME"] == "h"
    assert reader.read() == []
    journal.add(1)
    assert messages(reader.read()) == ["message 4"]


def test_empty_journal_keeps_learning(journal: Journal) -> None:
    reader = JournalReader(journal.command)
    assert reader.read() == []
    assert reader.state()["cursor"] is None
    journal.add(2)
    assert reader.read() == []  # still the first look: learn where the journal ends
    assert reader.state()["cursor"] == "s=abc;i=2"
    journal.add(1)
    assert messages(reader.read()) == ["message 3"]


def test_max_entries_stops_journalctl_and_goes_on_next_time(journal: Journal) -> None:
    journal.add(1)
    reader = JournalReader(journal.command, max_entries=3, timeout=60)
    reader.read()
    journal.add(7)
    journal.hang.touch()  # journalctl would go on (and wait) after what it printed
    got = reader.read()
    assert messages(got) == ["message 2", "message 3", "message 4"]
    assert reader.state()["cursor"] == "s=abc;i=4"
    pid = int(journal.pids.read_text().split()[-1])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped and reaped
    got = reader.read()
    assert messages(got) == ["message 5", "message 6", "message 7"]
    journal.hang.unlink()
    assert messages(reader.read()) == ["message 8"]


def test_non_json_lines_are_skipped_and_counted(journal: Journal) -> None:
    journal.add(1)
    reader = JournalReader(journal.command)
    reader.read()
    journal.add_raw("not json {")
    journal.add_raw('["a list"]')
    journal.add_raw("")
    journal.add(1)
    assert messages(reader.read()) == ["message 2"]
    assert reader.skipped == 2


def test_missing_command(tmp_path: Path) -> None:
    reader = JournalReader(str(tmp_path / "no-journalctl"))
    with pytest.raises(SourceError, match=r"not found: install systemd's journalctl"):
        reader.read()


def test_failing_command_says_what_to_do(tmp_path: Path) -> None:
    script = tmp_path / "journalctl"
    script.write_text("#!/bin/sh\necho 'Failed to open journal: Permission denied' >&2\nexit 1\n")
    script.chmod(0o755)
    reader = JournalReader(str(script))
    with pytest.raises(SourceError) as info:
        reader.read()
    message = str(info.value)
    assert "exit status 1" in message
    assert "Permission denied" in message
    assert "systemd-journal" in message


def test_a_cursor_journalctl_rejects_is_dropped(
    journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    journal.add(2)
    reader = JournalReader(journal.command)
    reader.restore({"version": 1, "cursor": "s=gone;i=1"})
    with caplog.at_level(logging.WARNING), pytest.raises(SourceError, match="cursor"):
        reader.read()
    assert reader.state()["cursor"] is None
    assert reader.read() == []  # learns the end again
    journal.add(1)
    assert messages(reader.read()) == ["message 3"]


def test_timeout_without_entries(tmp_path: Path) -> None:
    script = tmp_path / "journalctl"
    script.write_text("#!/bin/sh\nexec sleep 120\n")
    script.chmod(0o755)
    reader = JournalReader(str(script), timeout=0.2)
    with pytest.raises(SourceError, match=r"no answer within 0\.2 s"):
        reader.read()


def test_restore_of_an_older_cursor_returns_the_same_entries_again(journal: Journal) -> None:
    journal.add(1)
    reader = JournalReader(journal.command)
    reader.read()
    committed = json.loads(json.dumps(reader.state()))
    journal.add(3)
    first = reader.read()
    assert messages(first) == ["message 2", "message 3", "message 4"]
    reader.restore(committed)  # the database write failed
    assert reader.read() == first
    # And across a restart.
    again = JournalReader(journal.command)
    again.restore(committed)
    assert again.read() == first


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
    journal: Journal, garbage: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    journal.add(2)
    reader = JournalReader(journal.command)
    with caplog.at_level(logging.WARNING):
        reader.restore(garbage)
    assert "starting afresh" in caplog.text
    assert reader.read() == []
    assert journal.last_args()[-2:] == ["-n", "1"]


def test_restore_of_nothing_is_a_first_start(journal: Journal) -> None:
    reader = JournalReader(journal.command)
    reader.restore({})
    assert reader.state() == {"version": 1, "cursor": None}

"""Tests for agent.security.follow: reading a log across rotation, truncation and restarts."""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.security.follow import HEAD_BYTES, LogFollower, rotation_rank, split_lines


class Log:
    """A log file and the rotations logrotate makes of it."""

    def __init__(self, directory: Path, name: str = "auth.log", *, dated: bool = False) -> None:
        self.dir = directory
        self.path = directory / name
        self.dated = dated
        self.day = datetime.date(2026, 11, 27)

    def write(self, data: bytes | str) -> None:
        with open(self.path, "ab") as f:
            f.write(data.encode() if isinstance(data, str) else data)

    def _next_name(self) -> Path:
        """Makes room for the next rotation and names it (``.1`` or ``-YYYYMMDD``)."""
        base = self.path.name
        if self.dated:
            name = f"{base}-{self.day:%Y%m%d}"
            self.day += datetime.timedelta(days=1)
            return self.dir / name
        numbers = []
        for entry in self.dir.iterdir():
            match = re.fullmatch(re.escape(base) + r"\.(\d+)", entry.name)
            if match:
                numbers.append(int(match.group(1)))
        for n in sorted(numbers, reverse=True):
            os.rename(self.dir / f"{base}.{n}", self.dir / f"{base}.{n + 1}")
        return self.dir / f"{base}.1"

    def rotate(self, *, create: bool = True) -> Path:
        """Rotation by rename, then (``create``) a new empty log."""
        target = self._next_name()
        os.rename(self.path, target)
        if create:
            self.path.touch()
        return target

    def copytruncate(self) -> Path:
        target = self._next_name()
        shutil.copyfile(self.path, target)
        os.truncate(self.path, 0)
        return target


def lines(*numbers: int, prefix: str = "line") -> str:
    return "".join(f"{prefix} {n}\n" for n in numbers)


def expect(*numbers: int, prefix: str = "line") -> list[str]:
    return [f"{prefix} {n}" for n in numbers]


def restart(follower: LogFollower, **kwargs: Any) -> LogFollower:
    """What the agent does on a restart: a new follower from the saved (JSON) state."""
    saved = json.loads(json.dumps(follower.state()))
    follower.close()
    new = LogFollower(follower.path, **kwargs)
    new.restore(saved)
    return new


def open_fds_under(directory: Path) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            count += 1
    return count


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    yield Log(tmp_path)


@pytest.fixture(params=["numbered", "dated"])
def any_log(request: pytest.FixtureRequest, tmp_path: Path) -> Log:
    if request.param == "dated":
        return Log(tmp_path, "secure", dated=True)
    return Log(tmp_path)


# -- pure parts --------------------------------------------------------------------------


def test_split_lines_holds_back_a_partial_line() -> None:
    assert split_lines(b"a\nbc\nde", skip=False, max_line=10, final=False) == (
        ["a", "bc"],
        5,
        False,
    )
    assert split_lines(b"a\nbc\nde", skip=False, max_line=10, final=True) == (
        ["a", "bc", "de"],
        7,
        False,
    )
    assert split_lines(b"", skip=False, max_line=10, final=True) == ([], 0, False)
    assert split_lines(b"\n\n", skip=False, max_line=10, final=False) == (["", ""], 2, False)


def test_split_lines_cuts_overlong_lines_and_skips_their_rest() -> None:
    assert split_lines(b"abcdefgh\nxy\n", skip=False, max_line=3, final=False) == (
        ["abc", "xy"],
        12,
        False,
    )
    # A line exactly max_line long is whole.
    assert split_lines(b"abc\n", skip=False, max_line=3, final=False) == (["abc"], 4, False)
    # Cut before its end is there: the rest is skipped on the next call.
    assert split_lines(b"abcdef", skip=False, max_line=3, final=False) == (["abc"], 6, True)
    assert split_lines(b"ghi", skip=True, max_line=3, final=False) == ([], 3, True)
    assert split_lines(b"jk\nok\n", skip=True, max_line=3, final=False) == (["ok"], 6, False)
    # A partial line not longer than max_line waits.
    assert split_lines(b"abc", skip=False, max_line=3, final=False) == ([], 0, False)


def test_split_lines_replaces_invalid_utf8_and_drops_nul_bytes() -> None:
    data = b"caf\xc3\xa9\n\xff\xfebad\n\0\0\0sshd\0[1]: ok\n"
    assert split_lines(data, skip=False, max_line=100, final=False) == (
        ["café", "\ufffd\ufffdbad", "sshd[1]: ok"],
        len(data),
        False,
    )


def test_rotation_rank_orders_older_rotations_first() -> None:
    ranks = {
        name: rotation_rank("auth.log", name)
        for name in ("auth.log.1", "auth.log.2", "auth.log.10")
    }
    assert ranks["auth.log.10"] < ranks["auth.log.2"] < ranks["auth.log.1"]  # type: ignore[operator]
    older = rotation_rank("secure", "secure-20261127")
    newer = rotation_rank("secure", "secure-20261128")
    assert older is not None and newer is not None and older < newer
    for name in ("auth.log", "auth.log.2.gz", "auth.log.1.xz", "auth.log.old", "auth.logger"):
        assert rotation_rank("auth.log", name) is None
    assert rotation_rank("messages", "messages-2026-11-27") is not None


# -- plain reading -----------------------------------------------------------------------


def test_first_start_reads_from_the_end(log: Log) -> None:
    log.write(lines(1, 2))
    with LogFollower(str(log.path)) as f:
        assert f.read() == []
        log.write(lines(3))
        assert f.read() == expect(3)
        assert f.read() == []


def test_first_start_returns_a_line_being_written_whole(log: Log) -> None:
    log.write(lines(1) + "line ")
    with LogFollower(str(log.path)) as f:
        assert f.read() == []
        log.write("2\n")
        assert f.read() == expect(2)


def test_from_start_reads_everything(log: Log) -> None:
    log.write(lines(1, 2))
    with LogFollower(str(log.path), from_start=True) as f:
        assert f.read() == expect(1, 2)


def test_partial_line_is_held_back_until_completed(log: Log) -> None:
    log.write("")
    with LogFollower(str(log.path)) as f:
        f.read()
        log.write("line 1\nline")
        assert f.read() == expect(1)
        assert f.read() == []
        log.write(" 2")
        assert f.read() == []
        log.write("\n")
        assert f.read() == expect(2)


def test_overlong_line_is_cut_even_while_being_written(log: Log) -> None:
    log.write("")
    with LogFollower(str(log.path), max_line=10) as f:
        f.read()
        log.write("x" * 25)
        assert f.read() == ["x" * 10]
        log.write("y" * 25)
        assert f.read() == []
        log.write("z\nshort\n" + "w" * 10 + "\n")
        assert f.read() == ["short", "w" * 10]


def test_invalid_utf8_and_nul_bytes(log: Log) -> None:
    log.write("")
    with LogFollower(str(log.path)) as f:
        f.read()
        log.write(b"\0" * 4096 + b"Nov 27 sshd[1]: \xff ok\n\x00\n")
        assert f.read() == ["Nov 27 sshd[1]: \ufffd ok", ""]


def test_missing_file_then_appearing_is_read_from_its_start(log: Log) -> None:
    with LogFollower(str(log.path)) as f:
        assert f.read() == []
        assert f.read() == []
        saved = f.state()
        log.write(lines(1, 2))
        assert f.read() == expect(1, 2)
    # The same across a restart while it was missing.
    log.path.unlink()
    with LogFollower(str(log.path)) as g:
        g.restore(saved)
        log.write(lines(3))
        assert g.read() == expect(3)


def test_max_bytes_limits_one_read_and_the_next_goes_on(log: Log) -> None:
    log.write("")
    with LogFollower(str(log.path), max_bytes=20, max_line=10) as f:
        f.read()
        log.write(lines(*range(10)))  # 7 bytes a line
        got: list[str] = []
        for _ in range(20):
            batch = f.read()
            assert sum(len(line) + 1 for line in batch) <= 20
            got += batch
        assert got == expect(*range(10))


# -- rotation by rename ------------------------------------------------------------------


def test_rename_rotation_while_running(any_log: Log) -> None:
    log = any_log
    log.write(lines(1))
    with LogFollower(str(log.path)) as f:
        f.read()
        log.write(lines(2))
        log.rotate()
        log.write(lines(3))
        assert f.read() == expect(2, 3)
        log.write(lines(4))
        assert f.read() == expect(4)


def test_rename_rotation_while_the_writer_still_writes_to_the_old_file(log: Log) -> None:
    log.write(lines(1))
    with LogFollower(str(log.path)) as f:
        f.read()
        writer = open(log.path, "ab")  # noqa: SIM115 - the daemon's open file
        writer.write(b"line 2\nline ")
        writer.flush()
        log.rotate()
        assert f.read() == expect(2)
        # Before its HUP the daemon goes on writing to the renamed file.
        writer.write(b"3\nline 4\npart")
        writer.flush()
        assert f.read() == expect(3, 4)
        writer.close()
        log.write(lines(5))  # reopened: the new file has data, the old one is done
        assert f.read() == ["part", *expect(5)]


def test_rename_rotation_without_a_new_file_yet(log: Log) -> None:
    log.write(lines(1))
    with LogFollower(str(log.path)) as f:
        f.read()
        log.write(lines(2))
        log.rotate(create=False)
        assert f.read() == expect(2)
        assert f.read() == []
        log.write(lines(3))
        assert f.read() == expect(3)


def test_rename_rotation_while_stopped(any_log: Log) -> None:
    log = any_log
    log.write(lines(1))
    f = LogFollower(str(log.path))
    f.read()
    log.write(lines(2))
    assert f.read() == expect(2)
    f = restart(f)
    log.write(lines(3))
    log.rotate()
    log.write(lines(4))
    assert f.read() == expect(3, 4)
    f = restart(f)
    assert f.read() == []
    f.close()


def test_several_rotations_while_stopped(any_log: Log) -> None:
    log = any_log
    log.write(lines(1))
    f = LogFollower(str(log.path))
    f.read()
    log.write("line 2\nline 3 with no newline")
    assert f.read() == expect(2)
    f = restart(f)
    log.rotate()
    log.write(lines(4))
    log.rotate()
    log.rotate()  # an empty one
    log.write(lines(5))
    log.rotate()
    log.write(lines(6) + "line 7")
    assert f.read() == ["line 3 with no newline", *expect(4, 5, 6)]
    log.write("\n")
    f = restart(f)
    assert f.read() == expect(7)
    f.close()


def test_rotated_file_found_again_when_new_file_is_still_empty(log: Log) -> None:
    log.write(lines(1))
    f = LogFollower(str(log.path))
    f.read()
    log.write("line 2\nline 3")
    assert f.read() == expect(2)
    log.rotate()
    assert f.read() == []  # the writer may not have reopened: hold back "line 3"
    f = restart(f)
    assert f.read() == []
    log.write(lines(4))
    assert f.read() == ["line 3", *expect(4)]
    f.close()


def test_rotated_file_gone_while_stopped_counts_a_gap(log: Log) -> None:
    log.write(lines(1))
    f = LogFollower(str(log.path))
    f.read()
    log.write(lines(2))
    f = restart(f)
    rotated = log.rotate()
    rotated.unlink()  # compressed away, say, before we saw it
    log.write(lines(3))
    assert f.read() == expect(3)
    assert f.gaps == 1
    f.close()


def test_gone_rotated_file_goes_on_with_rotations_written_after_it(log: Log) -> None:
    log.write(lines(1))
    old = log.rotate()
    os.utime(old, ns=(1_000_000_000, 1_000_000_000))  # last week's, read long ago
    log.write(lines(2))
    os.utime(log.path, ns=(2_000_000_000, 2_000_000_000))
    f = LogFollower(str(log.path))
    f.read()
    f = restart(f)
    # Two rotations while stopped (delaycompress: ours went .1 -> .2.gz): auth.log.1 holds
    # lines written after ours (now), auth.log.3 lines from before it.
    log.rotate()
    log.write(lines(3))
    log.rotate()
    (log.dir / "auth.log.2").unlink()  # ours
    log.write(lines(4))
    assert f.read() == expect(3, 4)
    assert f.gaps == 1
    f.close()


def test_replaced_by_a_smaller_file_while_running(log: Log) -> None:
    log.write(lines(1, 2, 3, 4))
    with LogFollower(str(log.path)) as f:
        f.read()
        log.write(lines(5))
        new = log.dir / "new"
        new.write_text(lines(6))
        os.replace(new, log.path)
        assert f.read() == expect(5, 6)
        assert f.gaps == 0


def test_replaced_by_a_smaller_file_while_stopped(log: Log) -> None:
    log.write(lines(1, 2, 3, 4))
    f = LogFollower(str(log.path))
    f.read()
    f = restart(f)
    new = log.dir / "new"
    new.write_text(lines(6))
    os.replace(new, log.path)
    assert f.read() == expect(6)
    f.close()


# -- copytruncate ------------------------------------------------------------------------


def test_copytruncate_while_running(any_log: Log) -> None:
    log = any_log
    log.write(lines(*range(200)))
    with LogFollower(str(log.path)) as f:
        f.read()
        log.write(lines(1000))
        log.copytruncate()
        log.write(lines(1001))
        assert f.read() == expect(1000, 1001)
        log.write(lines(1002))
        assert f.read() == expect(1002)
        assert f.gaps == 0


@pytest.mark.parametrize("before", [1, 200], ids=["short-head", "full-head"])
def test_copytruncate_while_stopped_when_the_file_grew_past_our_offset(
    log: Log, before: int
) -> None:
    log.write(lines(*range(before)))
    f = LogFollower(str(log.path))
    f.read()
    log.write(lines(1000))
    f = restart(f)
    log.write(lines(1001))
    log.copytruncate()
    log.write(lines(*range(2000, 2000 + 2 * before + 100)))  # past our offset, other head
    assert f.read() == expect(1000, 1001, *range(2000, 2000 + 2 * before + 100))
    f.close()


def test_copytruncate_found_by_its_head_when_we_lost_sight_of_the_rotations(log: Log) -> None:
    log.write(lines(*range(100)))
    f = LogFollower(str(log.path))
    f.read()
    log.write(lines(1000))
    state = f.state()
    del state["newest_rotated"]  # as from a state that does not say
    f.close()
    f = LogFollower(str(log.path))
    f.restore(state)
    log.copytruncate()
    log.write(lines(1001))
    assert f.read() == expect(1000, 1001)
    assert f.gaps == 0
    f.close()


def test_copytruncate_of_a_file_that_was_empty_when_we_last_looked(log: Log) -> None:
    log.write("")
    f = LogFollower(str(log.path))
    f.read()
    f = restart(f)
    log.write(lines(1, 2))
    log.copytruncate()
    log.write(lines(3, 4, 5))
    assert f.read() == expect(1, 2, 3, 4, 5)
    f.close()


def test_copytruncate_with_delaycompress_of_an_empty_file(log: Log) -> None:
    """Ours was empty at our last look, and the rotation we knew of went .1 -> .2.gz."""
    log.write(lines(1))
    old = log.copytruncate()
    os.utime(old, ns=(1_000_000_000, 1_000_000_000))  # last week's
    f = LogFollower(str(log.path))
    f.read()
    f = restart(f)
    log.write(lines(2, 3))
    log.copytruncate()
    (log.dir / "auth.log.2").rename(log.dir / "auth.log.2.gz")  # a new inode, as gzip makes
    shutil.copyfile(log.dir / "auth.log.2.gz", log.dir / "auth.log.2.gz.tmp")
    os.replace(log.dir / "auth.log.2.gz.tmp", log.dir / "auth.log.2.gz")
    log.write(lines(4))
    assert f.read() == expect(2, 3, 4)
    f.close()


def test_admin_removing_the_newest_rotation_does_not_replay_older_ones(log: Log) -> None:
    log.write(lines(1))
    older = log.rotate()
    log.write(lines(2))
    newest = log.rotate()
    for path in (older, newest):
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    f = LogFollower(str(log.path))
    assert f.read() == []  # ours is empty
    f = restart(f)
    newest.unlink()
    log.write(lines(3))
    assert f.read() == expect(3)
    f.close()


def test_two_copytruncates_while_stopped(any_log: Log) -> None:
    log = any_log
    log.write(lines(1) * 30)
    f = LogFollower(str(log.path))
    f.read()
    log.write(lines(2))
    f = restart(f)
    log.copytruncate()
    log.write(lines(3))
    log.copytruncate()
    log.write(lines(4))
    assert f.read() == expect(2, 3, 4)
    f.close()


def test_truncated_without_a_copy_reads_from_the_start_and_counts_a_gap(log: Log) -> None:
    log.write(lines(*range(100)))
    with LogFollower(str(log.path)) as f:
        f.read()
        os.truncate(log.path, 0)
        log.write(lines(1000))
        assert f.read() == expect(1000)
        assert f.gaps == 1


def test_a_new_device_number_after_a_reboot_is_the_same_file(any_log: Log) -> None:
    log = any_log
    log.write(lines(1))
    f = LogFollower(str(log.path))
    f.read()
    log.write(lines(2))
    assert f.read() == expect(2)
    state = f.state()
    state["file"]["dev"] += 1
    f.close()
    f = LogFollower(str(log.path))
    f.restore(state)
    log.write(lines(3))
    log.rotate()
    log.write(lines(4))
    assert f.read() == expect(3, 4)
    assert f.gaps == 0
    f.close()


# -- restore and resources ---------------------------------------------------------------


def test_restore_an_older_state_returns_the_same_lines_again(log: Log) -> None:
    log.write(lines(1))
    with LogFollower(str(log.path)) as f:
        f.read()
        committed = f.state()
        log.write(lines(2))
        log.rotate()
        log.write(lines(3) + "line")
        assert f.read() == expect(2, 3)
        f.restore(committed)  # the database write failed
        assert f.read() == expect(2, 3)
        assert f.read() == []
        log.write(" 4\n")
        assert f.read() == expect(4)


def test_restore_reaches_a_rotated_file_deleted_since(log: Log) -> None:
    """The file the failed read started in is kept open, so a retry finds it deleted."""
    log.write(lines(1))
    with LogFollower(str(log.path)) as f:
        f.read()
        committed = f.state()
        log.write(lines(2))
        rotated = log.rotate()
        log.write(lines(3))
        assert f.read() == expect(2, 3)
        rotated.unlink()
        f.restore(committed)
        assert f.read() == expect(2, 3)
        assert f.gaps == 0


def test_open_files_stay_bounded_and_close_releases_them(log: Log) -> None:
    log.write(lines(0))
    f = LogFollower(str(log.path))
    f.read()
    for n in range(1, 20):
        log.write(lines(n))
        log.rotate()
        log.write(lines(n + 100))
        assert f.read() == expect(n, n + 100)
        assert open_fds_under(log.dir) <= 2
    f.close()
    assert open_fds_under(log.dir) == 0


def test_state_is_json_and_empty_before_the_first_read(log: Log) -> None:
    log.write(lines(1))
    f = LogFollower(str(log.path))
    assert f.state() == {}
    f.read()
    state = f.state()
    assert json.loads(json.dumps(state)) == state
    assert set(state["file"]) == {
        "dev",
        "ino",
        "offset",
        "head_sha256",
        "head_len",
        "mtime_ns",
        "skip",
    }
    assert state["file"]["head_len"] == len(lines(1)) <= HEAD_BYTES
    f.close()


@pytest.mark.parametrize(
    "garbage",
    [
        {"version": 99},
        {"version": 1, "path": "/elsewhere", "file": None},
        {"version": 1, "file": "x"},
        {"nonsense": True},
        {
            "version": 1,
            "path": "PATH",
            "file": {
                "dev": 1,
                "ino": -4,
                "offset": 0,
                "head_sha256": "00",
                "head_len": 0,
                "mtime_ns": 0,
                "skip": False,
            },
        },
    ],
)
def test_restore_of_garbage_starts_afresh(
    log: Log, garbage: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    log.write(lines(1))
    if garbage.get("path") == "PATH":
        garbage = {**garbage, "path": str(log.path)}
    with LogFollower(str(log.path)) as f:
        with caplog.at_level(logging.WARNING):
            f.restore(garbage)
        assert "starting afresh" in caplog.text
        assert f.read() == []  # from the end, as on a first start
        log.write(lines(2))
        assert f.read() == expect(2)


def test_restore_of_nothing_starts_afresh_quietly(
    log: Log, caplog: pytest.LogCaptureFixture
) -> None:
    log.write(lines(1))
    with LogFollower(str(log.path), from_start=True) as f, caplog.at_level(logging.WARNING):
        f.restore({})
        assert f.read() == expect(1)
    assert caplog.text == ""


# -- the property ------------------------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 120)),
        st.tuples(st.just("rotate"), st.booleans()),  # True: the writer reopens at once
        st.tuples(st.just("reopen"), st.just(0)),
        st.tuples(st.just("copytruncate"), st.just(0)),
        st.tuples(st.just("read"), st.just(0)),
        st.tuples(st.just("read_failed"), st.just(0)),
        st.tuples(st.just("restart"), st.just(0)),
    ),
    max_size=40,
)
PAYLOADS = st.lists(st.binary(max_size=40), min_size=60, max_size=60)


def expected_lines(generations: list[bytes], max_line: int) -> list[str]:
    """Every file's lines in order, its last partial line included, cut at max_line."""
    out: list[str] = []
    for content in generations:
        parts = content.split(b"\n")
        if parts[-1] == b"":
            parts.pop()
        out += [p[:max_line].replace(b"\0", b"").decode("utf-8", "replace") for p in parts]
    return out


class Writer:
    """The daemon: appends to the file it has open, reopening the log when told (its HUP).

    ``generations`` holds each file's content in rotation order, the live log's last.
    """

    def __init__(self, log: Log) -> None:
        self.log = log
        self.generations = [b""]
        self.current = 0  # the generation the daemon writes to
        self.file = open(log.path, "ab", buffering=0) if log.path.exists() else None  # noqa: SIM115

    def append(self, chunk: bytes) -> None:
        if self.file is None:
            self.file = open(self.log.path, "ab", buffering=0)  # noqa: SIM115
        self.file.write(chunk)
        self.generations[self.current] += chunk

    def reopen(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = open(self.log.path, "ab", buffering=0)  # noqa: SIM115
            self.current = len(self.generations) - 1

    def rotate(self, *, reopen: bool) -> None:
        if self.log.path.exists():
            self.log.rotate()
            self.generations.append(b"")
            if reopen:
                self.reopen()

    def copytruncate(self) -> None:
        if self.log.path.exists():
            self.log.copytruncate()  # copy and truncate at once
            self.generations.append(b"")
            if self.current == len(self.generations) - 2:  # O_APPEND: on at the new start
                self.current += 1

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


@settings(max_examples=250, deadline=None, database=None)
@given(
    ops=OPS,
    payloads=PAYLOADS,
    dated=st.booleans(),
    exists=st.booleans(),
    max_line=st.sampled_from([12, 30, 16384]),
    max_bytes=st.sampled_from([1, 64, 4 << 20]),
)
def test_any_rotations_and_restarts_yield_exactly_the_written_lines(
    tmp_path_factory: pytest.TempPathFactory,
    ops: list[tuple[str, int]],
    payloads: list[bytes],
    dated: bool,
    exists: bool,
    max_line: int,
    max_bytes: int,
) -> None:
    """Appends, rotations (the daemon reopening at once or later), copytruncates, reads,
    failed commits and restarts in any order: the lines come exactly once, in order."""
    # The stream the daemon writes: unique numbered lines with any bytes in them. Appends cut it
    # anywhere.
    stream = b"".join(
        b"#%06d " % n + p.replace(b"\n", b"").replace(b"#", b"") + b"\n"
        for n, p in enumerate(payloads)
    )
    directory = tmp_path_factory.mktemp("prop")
    log = Log(directory, "secure" if dated else "auth.log", dated=dated)
    if exists:
        log.path.touch()
    writer = Writer(log)
    kw: dict[str, Any] = {"max_line": max_line, "max_bytes": max_bytes}
    f = LogFollower(str(log.path), **kw)
    try:
        out = f.read()
        committed = f.state()
        written = 0
        for op, arg in ops:
            if op == "append":
                chunk = stream[written : written + arg]
                written += len(chunk)
                writer.append(chunk)
            elif op == "rotate":
                writer.rotate(reopen=bool(arg))
            elif op == "reopen":
                writer.reopen()
            elif op == "copytruncate":
                writer.copytruncate()
            elif op == "read":
                out += f.read()
                committed = f.state()
            elif op == "read_failed":
                f.read()
                f.restore(committed)
            elif op == "restart":
                f.close()
                f = LogFollower(str(log.path), **kw)
                f.restore(json.loads(json.dumps(committed)))
        # End with a complete line in the live log: every earlier file is then finished.
        writer.reopen()
        end = stream.find(b"\n", written) + 1
        writer.append(stream[written:end] + b"#999999 end\n")
        previous = None
        for _ in range(10_000):
            got = f.read()
            out += got
            if not got and f.state() == previous:
                break
            previous = f.state()
        assert out == expected_lines(writer.generations, max_line)
        assert f.gaps == 0
    finally:
        f.close()
        writer.close()
        shutil.rmtree(directory)

"""Follow a growing log file across rotation: ``LogFollower``.

``LogFollower.read`` returns the complete lines appended since the previous call. It survives
rotation by rename (logrotate's default; numbered ``auth.log.1`` and RHEL's dated
``secure-20261127`` names) and by copytruncate, and a restart: its position (``state``) names the
file by device and inode, the offset of the first unreturned byte and a fingerprint of the file's
head, so a new follower given that state goes on where the old one stopped, even when the files
were rotated meanwhile. ``restore`` of an older state makes the next ``read`` return the same
lines again (the agent retries that way when its database write failed).

How rotation is told apart:

* rename: the log's path names another inode than ours. We finish our file first (kept open, or
  found again by inode among the siblings whose name starts with the log's name), then the
  rotated files newer than it (by name: ``.1`` is newer than ``.2``, ``-20261128`` newer than
  ``-20261127``), then the live file from its start. While every newer file is still empty the
  writer may not have reopened yet, so we keep reading ours and hold back its last partial line.
* copytruncate: our file shrank below our offset or its head no longer matches the
  fingerprint, or (while the fingerprint covers less than ``HEAD_BYTES``, too little to tell a
  rewritten head from an appended one) a rotated sibling appeared that was made from it since we
  last looked at it as the live log (newer than the newest rotation we saw then; older than ours
  when ours has since been renamed too). The copy is such a sibling that starts with our
  fingerprinted head (else any sibling that does): it is read from our old offset, then the
  files after it as above. Lines written between logrotate's copy and its truncate are lost;
  that is copytruncate's own flaw.
* our file is gone (deleted, or compressed without delaycompress) or was truncated with no copy
  left: ``gaps`` is counted and we go on with the rotations modified since our file was, then
  the live file. The device number may change across a reboot: a file with our inode number
  and our head is still ours.

A partial last line is held back until completed (and returned as a line once its file is
finished); a line longer than ``max_line`` bytes is cut there and the rest skipped; invalid UTF-8
is replaced and NUL bytes (left by a crash) are dropped. At most the file being read and the one
the last ``read`` started in are kept open.

It does not parse lines (``authlog.py``), read compressed rotations (``.gz`` and the like are
skipped), or watch with inotify: the source polls it once a cycle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import stat
from types import TracebackType
from typing import Any, NamedTuple

__all__ = ["HEAD_BYTES", "LogFollower", "rotation_rank", "split_lines"]

logger = logging.getLogger(__name__)

HEAD_BYTES = 1024  # the fingerprint covers the first (up to) this many bytes of a file
_STATE_VERSION = 1
_MAX_STEPS = 64  # files visited by one read(); the next read goes on from there
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".lzma", ".lzo", ".Z", ".zip", ".br")
_NUMBERED = re.compile(r"\.(\d{1,5})")  # auth.log.1
_DATED = re.compile(r"[-_.]\d{4}(?:[-_.]?\d+)*")  # secure-20261127, x.log-2026-11-27-1700000000
_DIGITS = re.compile(r"\d+")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_EMPTY_SHA = hashlib.sha256(b"").hexdigest()

Rank = tuple[int, tuple[int, ...]]  # sorts older rotations first
FileId = tuple[int, int]  # (st_dev, st_ino)


def rotation_rank(base: str, name: str) -> Rank | None:
    """Where ``name`` sits in the rotation of the log named ``base``; older sorts lower.

    ``None`` when ``name`` is not an uncompressed rotation of ``base`` (the log itself, ``.gz``
    and other compressed files, names like ``auth.log.old``).
    """
    if name == base or not name.startswith(base) or name.endswith(_COMPRESSED):
        return None
    suffix = name[len(base) :]
    numbered = _NUMBERED.fullmatch(suffix)
    if numbered:
        return (1, (-int(numbered.group(1)),))
    if _DATED.fullmatch(suffix):
        return (0, tuple(int(group) for group in _DIGITS.findall(suffix)))
    return None


def _decode(raw: bytes) -> str:
    return raw.replace(b"\0", b"").decode("utf-8", errors="replace")


def split_lines(
    data: bytes, *, skip: bool, max_line: int, final: bool
) -> tuple[list[str], int, bool]:
    """Split ``data`` read from a log into lines.

    Returns the lines, how many bytes of ``data`` they used up and whether the next byte is
    inside a line that was cut (``skip``: drop bytes up to the next newline). A line longer than
    ``max_line`` bytes is cut there. A trailing partial line is left unused unless ``final``
    (the file will not grow any more), when it is a line of its own.
    """
    lines: list[str] = []
    pos = 0
    end = len(data)
    while pos < end:
        if skip:
            newline = data.find(b"\n", pos)
            if newline < 0:
                return lines, end, True
            pos = newline + 1
            skip = False
            continue
        newline = data.find(b"\n", pos, pos + max_line + 1)
        if newline >= 0:
            lines.append(_decode(data[pos:newline]))
            pos = newline + 1
        elif end - pos > max_line:
            lines.append(_decode(data[pos : pos + max_line]))
            pos += max_line
            skip = True
        else:
            if final:
                lines.append(_decode(data[pos:]))
                pos = end
            break
    return lines, pos, skip


class _Sibling(NamedTuple):
    """A file in the log's directory whose name starts with the log's name (or the log)."""

    path: str
    fid: FileId
    size: int
    mtime_ns: int
    rank: Rank | None


@dataclasses.dataclass
class _Position:
    """Where we are: the file, the first byte not returned yet and the file's head."""

    fid: FileId
    offset: int = 0
    head_sha256: str = _EMPTY_SHA
    head_len: int = 0
    mtime_ns: int = 0
    skip: bool = False  # inside a line that was cut at max_line


def _fid(st: os.stat_result) -> FileId:
    return (st.st_dev, st.st_ino)


def _head_sha(fd: int, length: int) -> str:
    return hashlib.sha256(os.pread(fd, length, 0)).hexdigest()


def _count(value: Any) -> int:
    """A non-negative int from a saved state."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"{value!r} is not a count")
    return value


def _oldest_first(sibling: _Sibling) -> Rank:
    assert sibling.rank is not None
    return sibling.rank


class LogFollower:
    """Reads the new complete lines of one log file, across rotation and restarts.

    ``gaps`` counts (in this process; it is not part of the state) the times lines were likely
    lost: a rotated file we were still reading could not be found again, or the log was
    truncated and no copy of it was found.
    A missing log is not an error (``read`` returns ``[]`` and reads it from its start once it
    appears); other ``OSError``s opening the log (no permission) propagate.
    """

    gaps: int

    def __init__(
        self,
        path: str,
        *,
        from_start: bool = False,
        max_bytes: int = 4 << 20,
        max_line: int = 16384,
    ) -> None:
        if max_bytes < 1 or max_line < 1:
            raise ValueError("max_bytes and max_line must be at least 1")
        self.path = path
        self.from_start = from_start
        self.max_bytes = max_bytes
        self.max_line = max_line
        self.gaps = 0
        directory, self._base = os.path.split(path)
        self._dir = directory or "."
        self._started = False  # False: no read and no state yet, start as configured
        self._pos: _Position | None = None  # None: wait for the log, read it from 0
        # The newest rotated sibling when we last looked at the live file: anything newer is a
        # rotation since then. Unknown until we look (a state without it).
        self._newest: FileId | None = None
        self._newest_known = False
        self._fds: dict[FileId, int] = {}
        self._anchor: FileId | None = None  # the file the last read started in; kept open
        self._unreadable: set[FileId] = set()  # rotated files we may not open

    # -- public --------------------------------------------------------------------------

    def read(self) -> list[str]:
        """The complete lines added since the last call, at most about ``max_bytes`` of them."""
        if not self._started:
            self._start()
        self._anchor = self._pos.fid if self._pos else None
        self._prune()
        out: list[str] = []
        budget = self.max_bytes
        for _ in range(_MAX_STEPS):
            if budget <= 0:
                break
            if self._pos is None:
                if not self._enter_first():
                    break
                continue
            siblings, live = self._siblings(), self._live()
            fd = self._open_position(siblings, live)
            if fd is None:
                self._lost(siblings, live, "the rotated file we were reading is gone")
                continue
            st = os.fstat(fd)
            is_live = live is not None and live.fid == self._pos.fid
            if self._moved_after_truncation(fd, st, siblings, live):
                continue
            if is_live:
                self._consume(fd, budget, final=False, out=out)
                self._note_newest(siblings)
                break
            newer = self._successors(self._pos, st, siblings, live)
            # The writer has moved on once a newer file holds data: ours will not grow.
            finished = any(s.size > 0 for s in newer)
            used, eof = self._consume(fd, budget, final=finished, out=out)
            budget -= used
            if not (finished and eof):
                break
            for sibling in newer:
                if self._advance(sibling, siblings):
                    break
                if sibling.fid not in self._unreadable:
                    break  # renamed meanwhile: list the files again
                self.gaps += 1  # cannot be read: go on without it
        return out

    def state(self) -> dict[str, Any]:
        """The position, JSON-serialisable; ``{}`` before the first read."""
        if not self._started:
            return {}
        data: dict[str, Any] = {
            "version": _STATE_VERSION,
            "path": self.path,
            "file": None,
        }
        if self._pos is not None:
            pos = self._pos
            data["file"] = {
                "dev": pos.fid[0],
                "ino": pos.fid[1],
                "offset": pos.offset,
                "head_sha256": pos.head_sha256,
                "head_len": pos.head_len,
                "mtime_ns": pos.mtime_ns,
                "skip": pos.skip,
            }
        if self._newest_known:
            data["newest_rotated"] = None if self._newest is None else list(self._newest)
        return data

    def restore(self, data: dict[str, Any]) -> None:
        """Go back to a position from ``state``; ``{}`` or garbage starts afresh."""
        if not data:
            self._reset()
            return
        try:
            pos, newest, newest_known = self._parse_state(data)
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning(
                "ignoring the saved position of %s (%s); starting afresh", self.path, exc
            )
            self._reset()
            return
        self._started = True
        self._pos = pos
        self._newest, self._newest_known = newest, newest_known
        # A file we still hold open (the one the last read started in) is used again as it is:
        # it may have been deleted since.
        self._anchor = pos.fid if pos else None
        self._prune()

    def close(self) -> None:
        """Close the files held open; a later ``read`` opens them again."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> LogFollower:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- state ---------------------------------------------------------------------------

    def _reset(self) -> None:
        self.close()
        self._started = False
        self._pos = None
        self._newest, self._newest_known = None, False
        self._anchor = None

    def _parse_state(self, data: dict[str, Any]) -> tuple[_Position | None, FileId | None, bool]:
        if data["version"] != _STATE_VERSION:
            raise ValueError(f"unknown version {data['version']!r}")
        if data["path"] != self.path:
            raise ValueError(f"the position is for {data['path']!r}")
        raw = data["file"]
        pos = None
        if raw is not None:
            head_sha = raw["head_sha256"]
            if not isinstance(head_sha, str) or not _SHA256_HEX.fullmatch(head_sha):
                raise ValueError("bad head_sha256")
            head_len = _count(raw["head_len"])
            if head_len > HEAD_BYTES:
                raise ValueError("bad head_len")
            if not isinstance(raw["skip"], bool):
                raise TypeError("skip is not a bool")
            pos = _Position(
                fid=(_count(raw["dev"]), _count(raw["ino"])),
                offset=_count(raw["offset"]),
                head_sha256=head_sha,
                head_len=head_len,
                mtime_ns=_count(raw["mtime_ns"]),
                skip=raw["skip"],
            )
        newest: FileId | None = None
        known = "newest_rotated" in data
        if known and data["newest_rotated"] is not None:
            dev, ino = data["newest_rotated"]
            newest = (_count(dev), _count(ino))
        return pos, newest, known

    # -- files ---------------------------------------------------------------------------

    def _siblings(self) -> list[_Sibling]:
        """Regular files next to the log whose names start with its name, the log excluded."""
        found: list[_Sibling] = []
        try:
            entries = list(os.scandir(self._dir))
        except OSError as exc:
            logger.debug("cannot list %s: %s", self._dir, exc)
            return found
        for entry in entries:
            name = entry.name
            if name == self._base or not name.startswith(self._base):
                continue
            if name.endswith(_COMPRESSED):
                continue
            try:
                st = entry.stat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                rank = rotation_rank(self._base, name)
                found.append(_Sibling(entry.path, _fid(st), st.st_size, st.st_mtime_ns, rank))
        return found

    def _live(self) -> _Sibling | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return _Sibling(self.path, _fid(st), st.st_size, st.st_mtime_ns, None)

    def _open(self, sibling: _Sibling, head: _Position | None) -> int | None:
        """Open ``sibling``, checking it is still that inode (and starts with ``head``)."""
        if sibling.fid in self._fds:
            return self._fds[sibling.fid]
        try:
            fd = os.open(sibling.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if sibling.path == self.path:
                raise
            if sibling.fid not in self._unreadable:
                logger.warning("cannot open %s: %s", sibling.path, exc)
                if len(self._unreadable) >= 100:
                    self._unreadable.clear()
                self._unreadable.add(sibling.fid)
            return None
        ok = _fid(os.fstat(fd)) == sibling.fid
        if ok and head is not None and head.head_len:
            ok = _head_sha(fd, head.head_len) == head.head_sha256
        if not ok:
            os.close(fd)
            return None
        self._fds[sibling.fid] = fd
        return fd

    def _prune(self) -> None:
        keep = {self._anchor, self._pos.fid if self._pos else None}
        for fid in [fid for fid in self._fds if fid not in keep]:
            os.close(self._fds.pop(fid))

    def _note_newest(self, siblings: list[_Sibling]) -> None:
        ranked = [s for s in siblings if s.rank is not None]
        self._newest = max(ranked, key=_oldest_first).fid if ranked else None
        self._newest_known = True

    def _copies_since(
        self, siblings: list[_Sibling], pos: _Position, is_live: bool
    ) -> list[_Sibling]:
        """Rotated siblings made from our file by copying since we last saw it live.

        Those are the rotations newer than the newest one we saw then (when that one is gone
        since, compressed or deleted: those modified since our last look) and, when ours was
        renamed since, older than ours. Oldest first; none unless our last look was at the live
        file.
        """
        if not self._newest_known:
            return []
        ranked = sorted((s for s in siblings if s.rank is not None), key=_oldest_first)
        seen = next((s for s in ranked if s.fid == self._newest), None)
        if seen is not None:
            ranked = [s for s in ranked if _oldest_first(s) > _oldest_first(seen)]
        elif self._newest is not None:  # gone: those modified since are new
            ranked = [s for s in ranked if s.mtime_ns >= pos.mtime_ns]
        copies = [s for s in ranked if s.fid != pos.fid]
        if not is_live:
            me = next((s for s in siblings if s.fid == pos.fid), None)
            if me is None or me.rank is None:
                return []
            copies = [s for s in copies if _oldest_first(s) < me.rank]
        return copies

    # -- moving between files ------------------------------------------------------------

    def _start(self) -> None:
        """First read with no state: from the end of the log (or wait for it to appear)."""
        self._started = True
        self._pos = None
        self._note_newest(self._siblings())
        live = self._live()
        if live is None or self.from_start:
            return
        fd = self._open(live, None)
        if fd is None:
            return
        st = os.fstat(fd)
        size = st.st_size
        # Start after the last complete line, so a line being written is returned whole.
        tail_len = min(size, self.max_line + 1)
        tail = os.pread(fd, tail_len, size - tail_len)
        newline = tail.rfind(b"\n")
        offset, skip = size, tail_len > self.max_line
        if newline >= 0:
            offset, skip = size - tail_len + newline + 1, False
        elif not skip:
            offset = 0
        self._pos = _Position(fid=live.fid, offset=offset, mtime_ns=st.st_mtime_ns, skip=skip)
        self._refresh_head(fd, size)

    def _enter_first(self) -> bool:
        """No position yet: take the first rotation made since we looked, else the log."""
        siblings = self._siblings()
        candidates: list[_Sibling] = []
        if self._newest_known:
            ranked = sorted((s for s in siblings if s.rank is not None), key=_oldest_first)
            if self._newest is None:
                candidates = ranked
            else:
                seen = next((s for s in ranked if s.fid == self._newest), None)
                if seen is not None:
                    candidates = [s for s in ranked if _oldest_first(s) > _oldest_first(seen)]
        live = self._live()
        if live is not None:
            candidates.append(live)
        if any(self._advance(c, siblings) for c in candidates):
            return True
        self._note_newest(siblings)
        return False

    def _advance(self, sibling: _Sibling, siblings: list[_Sibling]) -> bool:
        """Move to the start of ``sibling``."""
        fd = self._open(sibling, None)
        if fd is None:
            return False
        self._pos = _Position(fid=sibling.fid, mtime_ns=sibling.mtime_ns)
        self._refresh_head(fd, os.fstat(fd).st_size)
        if sibling.path == self.path:
            self._note_newest(siblings)
        else:
            self._newest_known = False
        logger.debug("%s: now reading %s", self.path, sibling.path)
        self._prune()
        return True

    def _open_position(self, siblings: list[_Sibling], live: _Sibling | None) -> int | None:
        """The open file of our position: held open, the live log, or a sibling by inode."""
        pos = self._pos
        assert pos is not None
        if pos.fid in self._fds:
            return self._fds[pos.fid]
        candidates = [live, *siblings] if live is not None else siblings
        for sibling in candidates:
            if sibling.fid == pos.fid:
                return self._open(sibling, None)
        # The device number may have changed (a reboot, device-mapper): same inode and head.
        for sibling in candidates:
            if sibling.fid[1] == pos.fid[1] and sibling.size >= pos.offset:
                fd = self._open(sibling, pos)
                if fd is not None:
                    logger.info(
                        "%s: device of %s is now %d", self.path, sibling.path, sibling.fid[0]
                    )
                    if self._newest is not None and self._newest[0] == pos.fid[0]:
                        self._newest = (sibling.fid[0], self._newest[1])
                    pos.fid = sibling.fid
                    self._anchor = sibling.fid
                    return fd
        return None

    def _lost(self, siblings: list[_Sibling], live: _Sibling | None, why: str) -> None:
        """Give up on our file: go on with the rotations written since, then the log."""
        pos = self._pos
        assert pos is not None
        self.gaps += 1
        logger.warning("%s: %s; lines may be missing", self.path, why)
        self._pos = None
        candidates = sorted(
            (s for s in siblings if s.rank is not None and s.mtime_ns >= pos.mtime_ns),
            key=_oldest_first,
        )
        if live is not None:
            candidates.append(live)
        for candidate in candidates:
            if self._advance(candidate, siblings):
                return
        self._note_newest(siblings)

    def _successors(
        self, pos: _Position, st: os.stat_result, siblings: list[_Sibling], live: _Sibling | None
    ) -> list[_Sibling]:
        """The files written after ours, oldest first, the live log last."""
        me = next((s for s in siblings if s.fid == pos.fid), None)
        if me is not None and me.rank is not None:
            newer = [s for s in siblings if s.rank is not None and s.rank > me.rank]
        else:  # deleted, or renamed to a name we cannot place: go by modification time
            newer = [
                s
                for s in siblings
                if s.rank is not None and s.fid != pos.fid and s.mtime_ns >= st.st_mtime_ns
            ]
        newer.sort(key=_oldest_first)
        if live is not None and live.fid != pos.fid:
            newer.append(live)
        return newer

    def _moved_after_truncation(
        self, fd: int, st: os.stat_result, siblings: list[_Sibling], live: _Sibling | None
    ) -> bool:
        """Detect a copytruncate of our file and move to the copy; True when we moved."""
        pos = self._pos
        assert pos is not None
        is_live = live is not None and live.fid == pos.fid
        truncated = (
            st.st_size < pos.offset
            or st.st_size < pos.head_len
            or (pos.head_len > 0 and _head_sha(fd, pos.head_len) != pos.head_sha256)
        )
        copies = self._copies_since(siblings, pos, is_live)
        # A short fingerprint cannot tell a truncated-and-rewritten file from an appended one.
        suspect = pos.head_len < HEAD_BYTES and any(s.size > 0 for s in copies)
        if not (truncated or suspect):
            return False
        candidates = list(copies)
        if truncated:  # then any sibling that starts as ours did, newest first
            others = [s for s in siblings if s not in copies and s.fid != pos.fid]
            others.sort(key=lambda s: (s.rank is not None, s.rank or (0, ())), reverse=True)
            candidates += others
        for sibling in candidates:
            if sibling.size < pos.offset or sibling.size < pos.head_len:
                continue
            if self._open(sibling, pos) is None:
                continue
            logger.info("%s: copied to %s and truncated", self.path, sibling.path)
            self._pos = dataclasses.replace(pos, fid=sibling.fid, mtime_ns=sibling.mtime_ns)
            self._newest_known = False
            self._prune()
            return True
        if not truncated:
            return False
        if not is_live:
            self._lost(siblings, live, "a rotated file we were reading was truncated")
            return True
        self.gaps += 1
        logger.warning("%s: truncated, and no copy of it found; lines may be missing", self.path)
        self._pos = _Position(fid=pos.fid, mtime_ns=st.st_mtime_ns)
        self._note_newest(siblings)
        return True

    # -- reading -------------------------------------------------------------------------

    def _refresh_head(self, fd: int, size: int) -> None:
        pos = self._pos
        assert pos is not None
        if pos.head_len < HEAD_BYTES and size > pos.head_len:
            head = os.pread(fd, HEAD_BYTES, 0)
            pos.head_len, pos.head_sha256 = len(head), hashlib.sha256(head).hexdigest()

    def _consume(self, fd: int, budget: int, *, final: bool, out: list[str]) -> tuple[int, bool]:
        """Read on from our offset; returns the bytes read and whether that reached the end."""
        pos = self._pos
        assert pos is not None
        st = os.fstat(fd)
        self._refresh_head(fd, st.st_size)
        pos.mtime_ns = st.st_mtime_ns
        available = st.st_size - pos.offset
        want = max(budget, self.max_line + 1)
        size = max(0, min(available, want))
        data = os.pread(fd, size, pos.offset) if size else b""
        eof = available <= want or len(data) < size
        lines, used, skip = split_lines(
            data, skip=pos.skip, max_line=self.max_line, final=final and eof
        )
        out.extend(lines)
        pos.offset += used
        pos.skip = skip
        return len(data), eof

"""Watched files: accounts, sudoers, sshd and cron configuration, authorized keys.

``FileWatch`` expands its glob patterns at every check, stats each regular file, and hashes
(sha256) only the files whose (size, mtime_ns, ctime_ns, inode) changed since the last check.
It reports ``file_changed`` events naming what changed (content, mode, owner, created,
deleted) with the mode and owner before and after; never the content. The first check ever only
records a baseline. A file it may not read is tracked by its stat alone (logged once).
Directories and other non-regular files (fifos, sockets, devices) matched by a pattern are
skipped: opening a fifo would block. A file no longer matched by any pattern (the config
changed) or pushed beyond the bound of ``max_files`` is forgotten without an event; only one
that is really gone is ``deleted``. It does not watch in real time (no inotify): a change that
is undone between two checks is not seen.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import logging
import os
import stat
from collections.abc import Callable
from typing import Any, NamedTuple

from outpost.wire import Event

__all__ = [
    "DEFAULT_WATCH",
    "MAX_FILES",
    "FileState",
    "FileWatch",
    "sha256_file",
]

logger = logging.getLogger(__name__)

DEFAULT_WATCH = [
    "/etc/passwd",
    "/etc/shadow",
    "/etc/group",
    "/etc/gshadow",
    "/etc/sudoers",
    "/etc/sudoers.d/*",
    "/etc/ssh/sshd_config",
    "/etc/ssh/sshd_config.d/*",
    "/etc/crontab",
    "/etc/cron.d/*",
    "/var/spool/cron/crontabs/*",
    "/var/spool/cron/*",
    "/root/.ssh/authorized_keys",
]

MAX_FILES = 10_000
MAX_ATTR = 2048
STATE_VERSION = 1
_CHUNK = 1 << 16


class FileState(NamedTuple):
    """What is remembered of one file. ``sha256`` is None when the file could not be read."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    mode: int  # permission bits, stat.S_IMODE
    uid: int
    gid: int
    sha256: str | None

    def same_stat(self, other: FileState) -> bool:
        return (self.size, self.mtime_ns, self.ctime_ns, self.inode) == (
            other.size,
            other.mtime_ns,
            other.ctime_ns,
            other.inode,
        )


def sha256_file(path: str) -> str:
    """The hex sha256 of a file's content, read in chunks. Raises OSError."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _text(value: str) -> str:
    """A string safe for the wire: no lone surrogates, at most ``MAX_ATTR`` characters."""
    try:
        clean = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        clean = value.encode("utf-8", "replace").decode("utf-8")
    return clean[:MAX_ATTR]


def _mode(mode: int) -> str:
    return f"{mode:04o}"


def _owner(item: FileState) -> str:
    return f"{item.uid}:{item.gid}"


def _changes(before: FileState | None, after: FileState | None) -> list[str]:
    """What differs between two states of one path, sorted."""
    if before is None and after is None:
        return []
    if before is None:
        return ["created"]
    if after is None:
        return ["deleted"]
    out = []
    if before.sha256 is not None and after.sha256 is not None:
        content = before.sha256 != after.sha256
    else:
        # Not readable (now or then): judge the content by its stat alone.
        content = (before.size, before.mtime_ns, before.inode) != (
            after.size,
            after.mtime_ns,
            after.inode,
        )
    if content:
        out.append("content")
    if before.mode != after.mode:
        out.append("mode")
    if (before.uid, before.gid) != (after.uid, after.gid):
        out.append("owner")
    return sorted(out)


def _event(path: str, before: FileState | None, after: FileState | None, now: float) -> Event:
    attrs = {"path": _text(path), "change": ",".join(_changes(before, after))}
    if before is not None:
        attrs["mode_before"] = _mode(before.mode)
        attrs["owner_before"] = _owner(before)
    if after is not None:
        attrs["mode_after"] = _mode(after.mode)
        attrs["owner_after"] = _owner(after)
    return Event("file_changed", "warning", int(now * 1000), "", attrs)


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"not an integer: {value!r}")
    return value


def _file_from_json(item: Any) -> FileState:
    """One stored file; raises TypeError/ValueError when it is not one."""
    if not isinstance(item, list) or len(item) != 8:
        raise ValueError(f"bad file entry {item!r}")
    digest = item[7]
    if digest is not None and not (isinstance(digest, str) and len(digest) == 64):
        raise ValueError(f"bad sha256 {digest!r}")
    size, mtime_ns, ctime_ns, inode, mode, uid, gid = (_int(v) for v in item[:7])
    return FileState(size, mtime_ns, ctime_ns, inode, mode, uid, gid, digest)


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _matches(pattern: str, path: str) -> bool:
    """Whether ``glob.glob(pattern)`` could list ``path``: segment by segment, as glob does."""
    if not _is_glob(pattern):
        return pattern == path
    parts, names = pattern.split("/"), path.split("/")
    return len(parts) == len(names) and all(
        fnmatch.fnmatchcase(name, part) for part, name in zip(parts, names, strict=True)
    )


class FileWatch:
    """Reports changes to the files its glob patterns match; see the module docstring.

    A pattern without glob characters names one file that may come and go (created/deleted).
    ``hasher`` reads a file's sha256 (injectable for tests); at most ``max_files`` files are
    watched, the first ones in path order.
    """

    def __init__(
        self,
        patterns: list[str],
        *,
        hasher: Callable[[str], str] = sha256_file,
        max_files: int = MAX_FILES,
    ) -> None:
        self.patterns = list(dict.fromkeys(patterns))
        self.max_files = max_files
        self._hasher = hasher
        # None until the first check (or a restore) has set a baseline.
        self._known: dict[str, FileState] | None = None
        self._unreadable_logged: set[str] = set()
        self._over_limit_logged = False

    def _paths(self) -> list[str]:
        paths: set[str] = set()
        for pattern in self.patterns:
            if _is_glob(pattern):
                paths.update(glob.glob(pattern))
            else:
                paths.add(pattern)
        ordered = sorted(paths)
        if len(ordered) > self.max_files:
            if not self._over_limit_logged:
                logger.warning(
                    "%d files match the watch patterns; only the first %d are watched",
                    len(ordered),
                    self.max_files,
                )
                self._over_limit_logged = True
            ordered = ordered[: self.max_files]
        return ordered

    def _read(self, path: str, known: FileState | None) -> FileState | None:
        """The state of one path now; None when it is absent or not a regular file."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        item = FileState(
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_ino,
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            st.st_gid,
            None,
        )
        if known is not None and known.same_stat(item):
            return item._replace(sha256=known.sha256)
        try:
            digest = self._hasher(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if path not in self._unreadable_logged:
                logger.warning("cannot read %s (%s); watching its metadata only", path, exc)
                self._unreadable_logged.add(path)
            return item
        self._unreadable_logged.discard(path)
        return item._replace(sha256=digest)

    def check(self, now: float) -> list[Event]:
        """Stat (and where needed hash) the files; the first check ever reports nothing."""
        known = self._known
        base = known or {}
        current: dict[str, FileState] = {}
        for path in self._paths():
            item = self._read(path, base.get(path))
            if item is not None:
                current[path] = item
        self._known = current
        self._unreadable_logged &= current.keys()
        if known is None:
            logger.debug("baseline of %d watched files", len(current))
            return []
        events = []
        for path in sorted(current.keys() | known.keys()):
            before, after = known.get(path), current.get(path)
            if after is None and not self._gone(path):
                continue  # no longer watched (patterns changed, or beyond the bound): forget it
            if _changes(before, after):
                events.append(_event(path, before, after, now))
        return events

    def _gone(self, path: str) -> bool:
        """True when ``path`` is still matched by a pattern and is no longer a regular file."""
        if not any(_matches(pattern, path) for pattern in self.patterns):
            return False
        try:
            return not stat.S_ISREG(os.stat(path).st_mode)
        except OSError:
            return True

    def state(self) -> dict[str, Any]:
        """``{"v": 1, "files": {path: [size, mtime_ns, ctime_ns, inode, mode, uid, gid,
        sha256 | None]} | None}``."""
        files = None
        if self._known is not None:
            files = {path: list(item) for path, item in sorted(self._known.items())}
        return {"v": STATE_VERSION, "files": files}

    def restore(self, data: dict[str, Any]) -> None:
        """Go back to a stored state; garbage is logged and gives a fresh baseline."""
        self._known = None
        if not data:
            return
        try:
            if data.get("v") != STATE_VERSION:
                raise ValueError(f"unknown state version {data.get('v')!r}")
            files = data["files"]
            if files is None:
                return
            if not isinstance(files, dict):
                raise TypeError("files is not an object")
            if len(files) > self.max_files:
                raise ValueError(f"{len(files)} files, more than {self.max_files}")
            known = {str(path): _file_from_json(item) for path, item in files.items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            logger.warning("stored watched files state is damaged (%s); starting afresh", exc)
            return
        self._known = known

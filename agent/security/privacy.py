"""Pseudonyms for personal data in security events: user names and remote addresses.

``Pseudonymiser`` replaces them with ``anon-`` + 12 hex characters of HMAC-SHA256 under a
secret kept on the host: the same name always gives the same pseudonym (so events can still be
correlated), and without the secret a pseudonym cannot be checked against a guessed name.
It rewrites the attrs ``user``, ``users``, ``source``, ``sources``, ``run_as``,
``target_user``, the last segment of ``home`` (``/home/bob`` names bob) and the last segment of
any path under /var/spool/cron (a user's crontab is named after the user). Other attrs and the
event's message are left as they are: messages must be written from the pseudonymised attrs.
``load_secret`` reads the secret file and refuses one that is missing, empty or readable by
everyone.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import stat

import msgspec

from outpost.wire import Event

__all__ = ["PREFIX", "Pseudonymiser", "load_secret"]

logger = logging.getLogger(__name__)

PREFIX = "anon-"
HEX_CHARS = 12
NAME_ATTRS = frozenset({"user", "source", "run_as", "target_user"})
LIST_ATTRS = frozenset({"users", "sources"})
CRON_SPOOL = "/var/spool/cron/"
# Directories under the cron spool whose names are not user names.
_CRON_DIRS = frozenset({"crontabs", "tabs"})
MAX_SECRET = 1 << 16
SHORT_SECRET = 16

# One item of a comma list: the name, then an optional "+N more" suffix (alone or after it).
_ITEM_RE = re.compile(r"^(?P<name>.*?)(?P<more>\s*\+\d+ more)?$", re.DOTALL)
_SEP_RE = re.compile(r"(,\s*)")


class Pseudonymiser:
    """Keyed, stable pseudonyms; see the module docstring."""

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("the pseudonymisation secret is empty")
        self._secret = bytes(secret)

    def value(self, text: str) -> str:
        """``anon-`` + 12 hex chars of HMAC-SHA256(secret, text); "" stays "" (nothing to hide)."""
        if not text:
            return text
        data = text.encode("utf-8", "surrogateescape")
        return PREFIX + hmac.new(self._secret, data, hashlib.sha256).hexdigest()[:HEX_CHARS]

    def _list(self, text: str) -> str:
        """Each name of a comma list, keeping separators and a "+N more" suffix."""
        parts = _SEP_RE.split(text)
        for i in range(0, len(parts), 2):  # even indexes are items, odd ones separators
            match = _ITEM_RE.match(parts[i])
            if match is None:  # cannot happen: the pattern matches every string
                continue
            name, more = match["name"], match["more"] or ""
            parts[i] = self.value(name) + more
        return "".join(parts)

    def _last_segment(self, path: str) -> str:
        head, sep, name = path.rpartition("/")
        if not sep or not name:
            return path
        return f"{head}/{self.value(name)}"

    def _cron_path(self, path: str) -> str:
        rest = path[len(CRON_SPOOL) :]
        if not rest or rest.rstrip("/") in _CRON_DIRS:
            return path
        return self._last_segment(path)

    def event(self, event: Event) -> Event:
        """A copy of ``event`` with its personal attrs pseudonymised."""
        attrs = {}
        for key, value in event.attrs.items():
            if key in NAME_ATTRS:
                value = self.value(value)
            elif key in LIST_ATTRS:
                value = self._list(value)
            elif key == "home" and value.count("/") >= 2:
                value = self._last_segment(value)
            elif value.startswith(CRON_SPOOL):
                value = self._cron_path(value)
            attrs[key] = value
        return msgspec.structs.replace(event, attrs=attrs)


def load_secret(path: str) -> bytes:
    """The secret in ``path``, without surrounding whitespace.

    Raises ValueError saying what to do when the file is missing, not a regular file,
    unreadable, empty, or readable or writable by other users (mode & 0o007).
    """
    make = f"create one with: head -c 32 /dev/urandom | base64 > {path} && chmod 600 {path}"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ValueError(f"pseudonymisation secret {path} does not exist; {make}") from None
    except OSError as exc:
        raise ValueError(f"cannot stat pseudonymisation secret {path}: {exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"pseudonymisation secret {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o007:
        raise ValueError(
            f"pseudonymisation secret {path} has mode {mode:04o}, open to every user; "
            f"restrict it with: chmod 600 {path}"
        )
    try:
        with open(path, "rb") as f:
            secret = f.read(MAX_SECRET + 1)
    except OSError as exc:
        raise ValueError(f"cannot read pseudonymisation secret {path}: {exc}") from None
    if len(secret) > MAX_SECRET:
        raise ValueError(f"pseudonymisation secret {path} is larger than {MAX_SECRET} bytes")
    secret = secret.strip()
    if not secret:
        raise ValueError(f"pseudonymisation secret {path} is empty; {make}")
    if len(secret) < SHORT_SECRET:
        logger.warning(
            "pseudonymisation secret %s is only %d bytes; 32 random bytes are advised",
            path,
            len(secret),
        )
    return secret

"""Parsers for authentication logs: sshd, sudo, su, login and the shadow account tools.

Turns one line of ``/var/log/auth.log`` (Debian, Ubuntu) or ``/var/log/secure`` (RHEL), or one
journal entry (``journalctl -o json``), into an ``AuthRecord``: what happened, to which account,
from where. Lines that only repeat what another line already says (pam_unix authentication
failures and sessions, ``PAM n more authentication failures``, sshd's ``[preauth]`` chatter,
shadow's second line for the shadow group file) and garbage (binary, truncated, overlong) give
None. Nothing here raises on bad input.

It does no I/O and keeps no state: following the file is ``follow.py``, reading the journal is
``journal.py``, turning records into events is ``authevents.py``. Records never carry a password
or a command's arguments: for sudo only the executable path is kept.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

__all__ = [
    "MAX_LINE",
    "RECORD_KINDS",
    "AuthRecord",
    "parse_journal_entry",
    "parse_line",
    "parse_message",
]

logger = logging.getLogger(__name__)

RECORD_KINDS = frozenset(
    {
        "failed_password",
        "failed_publickey",
        "failed_other",
        "invalid_user",
        "accepted",
        "console_root_login",
        "sudo",
        "sudo_failed",
        "su",
        "su_failed",
        "user_added",
        "user_deleted",
        "group_added",
        "group_deleted",
        "group_member_added",
        "password_changed",
    }
)

# A longer line is not something sshd, sudo or shadow wrote (sudo splits long command lines
# itself); the follower cuts lines at this length too.
MAX_LINE = 16384
# User names, hosts and paths are cut to this many characters.
MAX_FIELD = 256
# "message repeated N times" beyond this is not believed.
MAX_REPEAT = 1_000_000


class AuthRecord(NamedTuple):
    """One thing an authentication log said. ``detail`` is kind-specific, values ``str``."""

    kind: str
    ts: float | None
    user: str = ""
    source: str = ""
    count: int = 1  # type: ignore[assignment]  # the spec's name; shadows tuple.count
    detail: dict[str, str] = {}  # noqa: RUF012  (a shared default: records are never mutated)


# --- line headers -----------------------------------------------------------------------------

_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_TRADITIONAL = re.compile(
    r"(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) {1,2}(?P<day>\d{1,2}) "
    r"(?P<hour>\d\d):(?P<minute>\d\d):(?P<second>\d\d) (?P<rest>.*)\Z"
)
_RFC3339 = re.compile(
    r"(?P<year>\d{4})-(?P<mon>\d\d)-(?P<day>\d\d)[T ](?P<hour>\d\d):(?P<minute>\d\d):"
    r"(?P<second>\d\d)(?P<frac>\.\d{1,9})?(?P<offset>[Zz]|[+-]\d\d:?\d\d)? (?P<rest>.*)\Z"
)
_HEADER = re.compile(r"(?P<host>\S+) (?P<prog>[^\s\[\]:]+)(?:\[\d+\])?: ?(?P<msg>.*)\Z")
_REPEATED = re.compile(r"message repeated (?P<n>\d{1,12}) times: \[ ?(?P<msg>.*)\]\Z")
_FUTURE_SLACK = 86400.0


def _traditional_ts(m: re.Match[str], now: float, tz: dt.tzinfo | None) -> float | None:
    """The time of a year-less stamp: the latest year that puts it at most a day after ``now``."""
    try:
        this_year = dt.datetime.fromtimestamp(now, tz).year
    except (ValueError, OverflowError, OSError):
        return None
    month, day = _MONTHS[m["mon"]], int(m["day"])
    hour, minute, second = int(m["hour"]), int(m["minute"]), min(int(m["second"]), 59)
    # Eight years back reaches a 29 February from any year.
    for year in range(this_year + 1, this_year - 8, -1):
        try:
            ts = dt.datetime(year, month, day, hour, minute, second, tzinfo=tz).timestamp()
        except (ValueError, OverflowError, OSError):
            continue
        if ts <= now + _FUTURE_SLACK:
            return ts
    return None


def _rfc3339_ts(m: re.Match[str], tz: dt.tzinfo | None) -> float | None:
    offset = m["offset"]
    zone: dt.tzinfo | None = tz
    try:
        if offset in ("Z", "z"):
            zone = dt.UTC
        elif offset:
            digits = offset[1:].replace(":", "")
            delta = dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
            zone = dt.timezone(-delta if offset[0] == "-" else delta)
        stamp = dt.datetime(
            int(m["year"]),
            int(m["mon"]),
            int(m["day"]),
            int(m["hour"]),
            int(m["minute"]),
            min(int(m["second"]), 59),
            tzinfo=zone,
        ).timestamp()
    except (ValueError, OverflowError, OSError):
        return None
    return stamp + (float(m["frac"]) if m["frac"] else 0.0)


def parse_line(line: str, now: float, tz: dt.tzinfo | None = None) -> AuthRecord | None:
    """Parse one syslog line (traditional ``Nov 27 10:15:01 host prog[pid]: msg`` or RFC 3339
    ``2024-05-01T10:15:01.123456+08:00 host prog[pid]: msg``). A traditional stamp is read in
    ``tz`` (None: the local zone) in the year that puts it at most a day after ``now``. None
    for anything that is not an authentication record, and for garbage."""
    try:
        return _parse_line(line, now, tz)
    except Exception:  # a crafted line must not stop the log from being read
        logger.debug("unparsable auth log line %.200r", line, exc_info=True)
        return None


def _parse_line(line: str, now: float, tz: dt.tzinfo | None) -> AuthRecord | None:
    if len(line) > MAX_LINE:
        return None
    # A crash can leave NUL bytes before the next line written: skip them, reject any other.
    line = line.lstrip("\x00").rstrip("\r\n")
    if not line or "\x00" in line:
        return None
    ts: float | None
    m = _TRADITIONAL.match(line)
    if m is not None:
        ts = _traditional_ts(m, now, tz)
    else:
        m = _RFC3339.match(line)
        if m is None:
            return None
        ts = _rfc3339_ts(m, tz)
    if ts is None:
        return None
    header = _HEADER.match(m["rest"])
    if header is None:
        return None
    return parse_message(header["prog"], header["msg"], ts)


# --- messages ---------------------------------------------------------------------------------


def parse_message(program: str, message: str, ts: float | None) -> AuthRecord | None:
    """Parse the message part of a line written by ``program`` (``sshd``, ``sudo``, ``su``,
    ``login``, ``useradd``...). Handles rsyslog's ``message repeated N times: [ ... ]``."""
    try:
        return _parse_message(program, message, ts)
    except Exception:  # see parse_line
        logger.debug("unparsable %.40r message %.200r", program, message, exc_info=True)
        return None


def _parse_message(program: str, message: str, ts: float | None) -> AuthRecord | None:
    if len(message) > MAX_LINE or "\x00" in message:
        return None
    program = program.rsplit("/", 1)[-1]
    text = message.strip()
    count = 1
    repeated = _REPEATED.match(text)
    if repeated is not None:
        count = int(repeated["n"])
        if not 1 <= count <= MAX_REPEAT:
            return None
        text = repeated["msg"].strip()
    record: AuthRecord | None = None
    handler = _HANDLERS.get(program)
    if handler is not None:
        record = handler(text, ts)
    if record is None:
        record = _password_changed(program, text, ts)
    if record is not None and count != 1:
        record = record._replace(count=count)
    return record


def _cut(value: str) -> str:
    return value[:MAX_FIELD]


def _tty(value: str) -> str:
    return _cut(value.removeprefix("/dev/"))


_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?\Z"
)
_DOTTED = re.compile(r"[0-9.]+\Z")


def _valid_address(value: str) -> bool:
    """An IPv4 or IPv6 address, or a host name (sshd with UseDNS), as sshd writes them."""
    try:
        if ":" in value:
            ipaddress.IPv6Address(value)
        elif _DOTTED.match(value):
            ipaddress.IPv4Address(value)
        else:
            return _HOSTNAME.match(value) is not None
    except ValueError:
        return False
    return True


def _valid_port(value: str | None) -> bool:
    return value is None or (len(value) <= 5 and int(value) <= 65535)


# sshd. The user is whatever the client sent (spaces included), so it is matched greedily: the
# address is the last " from A port P" before the fixed tail, which the client cannot write.
_SSH_TAIL = r"(?: ssh2)?(?:: .*)?\Z"
_SSH_FAILED = re.compile(
    r"Failed (?P<method>\S+) for (?P<invalid>invalid user )?(?P<user>.*) from (?P<addr>\S+)"
    r" port (?P<port>\d+)" + _SSH_TAIL
)
_SSH_ACCEPTED = re.compile(
    r"Accepted (?P<method>\S+) for (?P<user>.*) from (?P<addr>\S+) port (?P<port>\d+)" + _SSH_TAIL
)
_SSH_INVALID = re.compile(r"Invalid user (?P<user>.*) from (?P<addr>\S+)(?: port (?P<port>\d+))?\Z")
_FAILED_KINDS = {"password": "failed_password", "publickey": "failed_publickey"}


def _sshd(text: str, ts: float | None) -> AuthRecord | None:
    text = text.removesuffix(" [preauth]")
    m = _SSH_FAILED.match(text) or _SSH_ACCEPTED.match(text) or _SSH_INVALID.match(text)
    if m is None or not _valid_address(m["addr"]) or not _valid_port(m["port"]):
        return None
    detail = {"port": m["port"]} if m["port"] else {}
    if text.startswith("Invalid"):
        return AuthRecord("invalid_user", ts, _cut(m["user"]), m["addr"], detail=detail)
    # keyboard-interactive/pam -> keyboard-interactive
    method = m["method"].split("/", 1)[0]
    detail["method"] = _cut(method)
    if text.startswith("Accepted"):
        return AuthRecord("accepted", ts, _cut(m["user"]), m["addr"], detail=detail)
    if method == "none":
        # The probe every client sends first; sshd logs it only next to "Invalid user".
        return None
    kind = _FAILED_KINDS.get(method, "failed_other")
    return AuthRecord(kind, ts, _cut(m["user"]), m["addr"], detail=detail)


# login: util-linux "ROOT LOGIN ON tty1 [FROM host]", shadow "ROOT LOGIN  on '/dev/tty1' [from 'h']"
_ROOT_LOGIN = re.compile(
    r"ROOT LOGIN\s+(?:ON|on)\s+'?(?P<tty>[^'\s]+)'?(?:\s+(?:FROM|from)\s+'?(?P<host>[^'\s]+)'?)?"
    r"\s*\Z"
)


def _login(text: str, ts: float | None) -> AuthRecord | None:
    m = _ROOT_LOGIN.match(text)
    if m is None:
        return None
    return AuthRecord(
        "console_root_login", ts, "root", _cut(m["host"] or ""), detail={"tty": _tty(m["tty"])}
    )


# sudo: "alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/apt update"
_SUDO = re.compile(r"(?P<user>\S+) : (?P<rest>.*)\Z")
_SUDO_FIELD = re.compile(r"(?P<key>[A-Z]+)=(?P<value>.*)\Z")
_SUDO_ATTEMPTS = re.compile(r"(?P<n>\d{1,6}) incorrect password attempts?\Z")
_SUDO_REASONS = {
    "user NOT in sudoers": "not_in_sudoers",
    "user NOT authorized on host": "not_allowed",
    "command not allowed": "not_allowed",
    "a password is required": "auth_failure",
}
_SUDO_AUTH = re.compile(r"(?i)\b(?:authentication|password|pam)\b")


def _sudo(text: str, ts: float | None) -> AuthRecord | None:
    m = _SUDO.match(text)
    if m is None:
        return None
    parts = m["rest"].split(" ; ")
    fields: dict[str, str] = {}
    reason_text = ""
    for index, part in enumerate(parts):
        if part.startswith("COMMAND="):
            # The command comes last and may itself contain " ; ".
            fields["COMMAND"] = " ; ".join(parts[index:])[len("COMMAND=") :]
            break
        field = _SUDO_FIELD.match(part)
        if field is not None:
            fields[field["key"]] = field["value"]
        elif index == 0:
            reason_text = part
    if not fields:
        return None
    detail: dict[str, str] = {}
    if fields.get("USER"):
        detail["run_as"] = _cut(fields["USER"])
    command = fields.get("COMMAND", "").split()
    if command:
        detail["command"] = _cut(command[0])  # the executable only, never the arguments
    if fields.get("TTY"):
        detail["tty"] = _tty(fields["TTY"])
    user = _cut(m["user"])
    if not reason_text:
        return AuthRecord("sudo", ts, user, detail=detail) if command else None
    attempts = _SUDO_ATTEMPTS.match(reason_text)
    if attempts is not None:
        detail["reason"] = "incorrect_password"
        detail["attempts"] = attempts["n"]
    elif reason_text in _SUDO_REASONS:
        detail["reason"] = _SUDO_REASONS[reason_text]
    elif _SUDO_AUTH.search(reason_text):
        detail["reason"] = "auth_failure"
    else:
        return None
    return AuthRecord("sudo_failed", ts, user, detail=detail)


# su: util-linux "(to root) alice on pts/0", "FAILED SU (to root) alice on pts/0";
# shadow "Successful su for root by alice", "FAILED su for root by alice".
_SU_UTIL = re.compile(
    r"(?P<failed>FAILED SU )?\(to (?P<target>[^)\s]+)\) (?P<user>\S*) on (?P<tty>\S+)\Z"
)
_SU_SHADOW = re.compile(r"(?P<result>Successful|FAILED) su for (?P<target>\S+) by (?P<user>\S+)\Z")


def _su(text: str, ts: float | None) -> AuthRecord | None:
    m = _SU_UTIL.match(text)
    if m is not None:
        kind = "su_failed" if m["failed"] else "su"
        detail = {"target_user": _cut(m["target"]), "tty": _tty(m["tty"])}
        return AuthRecord(kind, ts, _cut(m["user"]), detail=detail)
    m = _SU_SHADOW.match(text)
    if m is not None:
        kind = "su" if m["result"] == "Successful" else "su_failed"
        return AuthRecord(kind, ts, _cut(m["user"]), detail={"target_user": _cut(m["target"])})
    return None


# shadow (useradd, userdel, usermod, groupadd, groupdel, gpasswd, ...). The "group added to
# /etc/group", "removed shadow group", "add ... to shadow group" and "removed from" lines
# duplicate the ones matched here.
_NEW_USER = re.compile(
    r"new user: name=(?P<name>[^,\s]+), UID=(?P<uid>\d+), GID=(?P<gid>\d+), "
    r"home=(?P<home>[^,]*), shell=(?P<shell>[^,]*)(?:, from=\S*)?\Z"
)
_NEW_GROUP = re.compile(r"new group: name=(?P<group>[^,\s]+), GID=(?P<gid>\d+)\Z")
_DELETE_USER = re.compile(r"delete user '(?P<name>[^']+)'\Z")
_REMOVED_GROUP = re.compile(
    r"(?:removed group '(?P<group>[^']+)' owned by '[^']*'|group '(?P<group2>[^']+)' removed)\Z"
)
_ADD_MEMBER = re.compile(
    r"(?:add '(?P<name>[^']+)' to group '(?P<group>[^']+)'"
    r"|user (?P<name2>\S+) added by \S+ to group (?P<group2>\S+))\Z"
)
_PASSWORD_SHADOW = re.compile(
    r"(?:change user '(?P<name>[^']+)' password"
    r"|password for '(?P<name2>[^']+)' changed by '[^']*')\Z"
)


def _shadow(program: str) -> Callable[[str, float | None], AuthRecord | None]:
    def parse(text: str, ts: float | None) -> AuthRecord | None:
        m = _NEW_USER.match(text)
        if m is not None:
            detail = {key: _cut(m[key]) for key in ("uid", "gid", "home", "shell") if m[key]}
            return AuthRecord("user_added", ts, _cut(m["name"]), detail=detail)
        m = _NEW_GROUP.match(text)
        if m is not None:
            return AuthRecord(
                "group_added", ts, detail={"group": _cut(m["group"]), "gid": m["gid"]}
            )
        m = _DELETE_USER.match(text)
        if m is not None:
            return AuthRecord("user_deleted", ts, _cut(m["name"]))
        m = _REMOVED_GROUP.match(text)
        if m is not None:
            return AuthRecord(
                "group_deleted", ts, detail={"group": _cut(m["group"] or m["group2"])}
            )
        m = _ADD_MEMBER.match(text)
        if m is not None:
            user, group = m["name"] or m["name2"], m["group"] or m["group2"]
            return AuthRecord("group_member_added", ts, _cut(user), detail={"group": _cut(group)})
        m = _PASSWORD_SHADOW.match(text)
        if m is not None:
            name = m["name"] or m["name2"]
            return AuthRecord("password_changed", ts, _cut(name), detail={"via": program})
        return None

    return parse


# Any program: "pam_unix(passwd:chauthtok): password changed for bob"
_PAM_PASSWORD = re.compile(
    r"pam_unix\((?P<service>[^:()\s]+):chauthtok\): password changed for (?P<name>\S+)\Z"
)


def _password_changed(program: str, text: str, ts: float | None) -> AuthRecord | None:
    m = _PAM_PASSWORD.match(text)
    if m is None:
        return None
    return AuthRecord("password_changed", ts, _cut(m["name"]), detail={"via": _cut(m["service"])})


_SHADOW_PROGRAMS = (
    "useradd",
    "userdel",
    "usermod",
    "groupadd",
    "groupdel",
    "groupmod",
    "gpasswd",
    "passwd",
    "chpasswd",
    "newusers",
)
_HANDLERS: dict[str, Callable[[str, float | None], AuthRecord | None]] = {
    "sshd": _sshd,
    "sshd-session": _sshd,  # OpenSSH 9.8 and later
    "login": _login,
    "sudo": _sudo,
    "su": _su,
    **{program: _shadow(program) for program in _SHADOW_PROGRAMS},
}


# --- the journal ------------------------------------------------------------------------------


def _journal_text(value: Any) -> str | None:
    """A journal field: a string, or a list of byte values when it is not valid UTF-8."""
    if isinstance(value, str):
        return value
    if (
        isinstance(value, list)
        and len(value) <= MAX_LINE
        and all(type(b) is int and 0 <= b <= 255 for b in value)
    ):
        return bytes(value).decode("utf-8", errors="replace")
    return None


def _journal_ts(value: Any) -> float | None:
    if isinstance(value, str) and value.isdigit() and len(value) <= 20:
        return int(value) / 1_000_000
    if type(value) is int and value >= 0:
        return value / 1_000_000
    return None


def parse_journal_entry(entry: Mapping[str, Any]) -> AuthRecord | None:
    """Parse one ``journalctl -o json`` entry: ``MESSAGE``, ``SYSLOG_IDENTIFIER`` (or
    ``_COMM``) and ``__REALTIME_TIMESTAMP`` (microseconds, as a string)."""
    try:
        fields: object = entry
        if not isinstance(fields, Mapping):
            return None
        message = _journal_text(fields.get("MESSAGE"))
        program = _journal_text(fields.get("SYSLOG_IDENTIFIER")) or _journal_text(
            fields.get("_COMM")
        )
        if not message or not program:
            return None
        ts = _journal_ts(fields.get("__REALTIME_TIMESTAMP"))
        if ts is not None and not math.isfinite(ts):
            ts = None
        return parse_message(program, message, ts)
    except Exception:  # see parse_line
        logger.debug("unparsable journal entry", exc_info=True)
        return None

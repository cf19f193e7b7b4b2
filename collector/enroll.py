"""Enrolment, on the collector side: one broker user per agent (and one for the collector) in
mosquitto's password file and ACL file, optionally a client certificate from the fleet CA, and
the config fragment the enrolled machine needs.

The two file formats, the password hash and the fragment are pure functions of their input;
:func:`enroll` and :func:`revoke` read and write the files (atomically, under a lock).

User names. An agent's broker user is ``<site>--<host>``, a slug like the identities, so it is
harmless wherever mosquitto puts a user name into a topic (``%u`` in a ``pattern`` line: a
``/``, ``+`` or ``#`` in it would reach past the pattern). The ACL does not rely on ``%u`` at
all: each user gets explicit ``topic`` lines for its own site and host, so the name is only a
label. Since a site may itself contain ``--``, two identities can give the same name
(``a--b``/``c`` and ``a``/``b--c``); each ACL block records whom it belongs to, and enrolment
refuses a name that already belongs to someone else (pass another ``username``).

Passwords. 32 random bytes (43 URL-safe characters), stored only as mosquitto 2.0's
PBKDF2-SHA512 hash: ``$7$<iterations>$<base64 salt>$<base64 hash>``, made here with hashlib
(no ``mosquitto_passwd`` needed on this machine, and no password on a command line).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cryptography import x509

from collector import ca
from outpost.connection import BROKER_URL_PATTERN, parse_broker_url
from outpost.errors import OutpostError
from outpost.wire import is_slug

__all__ = [
    "ACL_FILE",
    "COLLECTOR_USER",
    "PASSWORD_FILE",
    "EnrolError",
    "Enrolment",
    "Identity",
    "NotEnrolled",
    "acl_block",
    "agent_identity",
    "check_password",
    "collector_identity",
    "default_broker_url",
    "enroll",
    "fragment",
    "hash_password",
    "new_password",
    "remove_acl",
    "remove_password",
    "revoke",
    "set_acl",
    "set_password",
]

PASSWORD_FILE = "passwd"
ACL_FILE = "acl"
LOCK_FILE = ".enroll.lock"
COLLECTOR_USER = "outpost-collector"
# mosquitto_passwd's own choices in mosquitto 2.0. The passwords are random 256-bit strings,
# so more iterations would not make a leaked file any safer, but would cost the broker (one
# thread) CPU at every CONNECT when a whole county reconnects after a power cut.
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
HASH_BYTES = 64

_MARKER = re.compile(r"^# outpost: (?:agent site=(\S+) host=(\S+)|collector (\S+))$")
_PREFIX = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}\Z")
_ACL_HEADER = [
    "# mosquitto ACL for Outpost, kept by `outpost enroll` (docs/operations.md, mosquitto in",
    "# production). Each `user` block with an `# outpost:` line belongs to one enrolled agent or",
    "# collector: `outpost enroll` replaces or removes whole blocks and keeps everything else.",
    "# Every user has explicit topic lines; there are no `pattern` (%u) lines.",
]


class EnrolError(OutpostError):
    """Enrolment cannot go ahead: a bad identity or name, or files that do not agree."""


class NotEnrolled(EnrolError):
    """Revocation found nothing to revoke."""


@dataclass(frozen=True)
class Identity:
    """Who is enrolled: an agent (site and host) or a collector, and its broker user name."""

    username: str
    site: str | None = None
    host: str | None = None

    @property
    def is_collector(self) -> bool:
        return self.site is None

    @property
    def key(self) -> tuple[str, ...]:
        """What an ACL block's ``# outpost:`` line records: the same key is the same client."""
        if self.site is None or self.host is None:
            return ("collector", self.username)
        return ("agent", self.site, self.host)

    @property
    def label(self) -> str:
        """``agent <site>/<host>`` or ``collector``."""
        return "collector" if self.site is None else f"agent {self.site}/{self.host}"

    def describe(self) -> str:
        return f"{self.label} (user {self.username})"


def agent_identity(site: str, host: str, username: str | None = None) -> Identity:
    for what, value in (("site", site), ("host", host)):
        if not is_slug(value):
            raise EnrolError(
                f"{what} {value!r}: expected a slug (lower-case letters, digits and '-', "
                "starting with a letter or digit, at most 63 characters)"
            )
    name = username if username is not None else f"{site}--{host}"
    if not is_slug(name):
        hint = "" if username is not None else "; choose one with --username"
        raise EnrolError(f"user name {name!r} is not a slug (at most 63 characters){hint}")
    return Identity(name, site, host)


def collector_identity(username: str | None = None) -> Identity:
    name = username if username is not None else COLLECTOR_USER
    if not is_slug(name):
        raise EnrolError(f"user name {name!r}: expected a slug")
    return Identity(name)


# --- passwords ----------------------------------------------------------------------------


def new_password() -> str:
    """32 random bytes as 43 URL-safe characters: nothing to quote in YAML or a shell."""
    return secrets.token_urlsafe(32)


def hash_password(
    password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """The ``$7$`` (PBKDF2-HMAC-SHA512) hash mosquitto 2.0 reads from a password file."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, HASH_BYTES)
    return f"$7${iterations}${_b64(salt)}${_b64(digest)}"


def check_password(password: str, hashed: str) -> bool:
    """True when ``hashed`` (a ``$7$`` hash) is the hash of ``password``."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != "7" or not parts[2].isdigit():
        return False
    try:
        salt, want = base64.b64decode(parts[3]), base64.b64decode(parts[4])
    except ValueError:
        return False
    got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]), len(want))
    return hmac.compare_digest(got, want)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _password_user(line: str) -> str | None:
    if not line or line.startswith("#") or ":" not in line:
        return None
    return line.split(":", 1)[0]


def set_password(text: str, username: str, hashed: str) -> str:
    """The password file ``text`` with exactly one entry for ``username``: the given hash, in
    the place of the old entry (or at the end). Every other line is kept."""
    out: list[str] = []
    placed = False
    for line in text.splitlines():
        if _password_user(line) == username:
            if not placed:
                out.append(f"{username}:{hashed}")
                placed = True
            continue
        out.append(line)
    if not placed:
        out.append(f"{username}:{hashed}")
    return "\n".join(out) + "\n"


def remove_password(text: str, username: str) -> str:
    out = [line for line in text.splitlines() if _password_user(line) != username]
    return "\n".join(out) + "\n" if out else ""


# --- the ACL file --------------------------------------------------------------------------


def acl_block(identity: Identity, prefix: str = "outpost") -> list[str]:
    """The ``user`` block for ``identity``: an agent writes its own status, metrics and events
    and reads its own ack; the collector reads everything under ``<prefix>/v1/`` and writes
    every agent's ack."""
    if not _PREFIX.match(prefix):
        raise EnrolError(f"topic prefix {prefix!r}: expected [a-z0-9][a-z0-9_-]{{0,31}}")
    if identity.site is None or identity.host is None:
        return [
            f"user {identity.username}",
            f"# outpost: collector {identity.username}",
            f"topic read {prefix}/v1/#",
            f"topic write {prefix}/v1/+/+/ack",
        ]
    base = f"{prefix}/v1/{identity.site}/{identity.host}"
    return [
        f"user {identity.username}",
        f"# outpost: agent site={identity.site} host={identity.host}",
        f"topic write {base}/status",
        f"topic write {base}/metrics",
        f"topic write {base}/events",
        f"topic read {base}/ack",
    ]


@dataclass
class _Block:
    username: str | None  # None: the lines before the first `user` line
    lines: list[str] = field(default_factory=list)

    @property
    def owner(self) -> tuple[str, ...] | None:
        for line in self.lines:
            m = _MARKER.match(line.strip())
            if m:
                if m.group(3):
                    return ("collector", m.group(3))
                return ("agent", m.group(1), m.group(2))
        return None


def _parse_acl(text: str) -> list[_Block]:
    """Blocks from each ``user`` line to the next, with the comment lines right above a
    ``user`` line going with it; the first block holds what comes before any."""
    blocks = [_Block(None)]
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(("user ", "user\t")):
            above = blocks[-1].lines
            lead = 0
            while lead < len(above) and _comment(above[len(above) - lead - 1]):
                lead += 1
            moved = above[len(above) - lead :] if lead else []
            del above[len(above) - lead :]
            blocks.append(_Block(stripped[5:].strip(), [*moved, line]))
        else:
            blocks[-1].lines.append(line)
    return blocks


def _comment(line: str) -> bool:
    """A comment line that is not an ``# outpost:`` line."""
    stripped = line.strip()
    return stripped.startswith("#") and not _MARKER.match(stripped)


def _render_acl(blocks: list[_Block]) -> str:
    lines = [line for block in blocks for line in block.lines]
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines) + "\n" if lines else ""


def _lead(block: _Block) -> list[str]:
    """The comment lines above a block's ``user`` line."""
    out = []
    for line in block.lines:
        if line.strip().startswith(("user ", "user\t")):
            break
        out.append(line)
    return out


def _trail(block: _Block) -> list[str]:
    """The blank lines that end a block (they separate it from the next)."""
    n = 0
    while n < len(block.lines) and not block.lines[len(block.lines) - n - 1].strip():
        n += 1
    return block.lines[len(block.lines) - n :] if n else []


def set_acl(text: str, identity: Identity, prefix: str = "outpost") -> tuple[str, list[str]]:
    """The ACL ``text`` with one block for ``identity``, in the place of its old block (or at
    the end), and the user names of the blocks it replaced. Everything else is kept as it is.
    :class:`EnrolError` when the user name belongs to another identity or to a block not
    kept by ``outpost enroll``."""
    lines = acl_block(identity, prefix)
    blocks = _parse_acl(text)
    if not text.strip():
        blocks[0].lines = list(_ACL_HEADER)
    for block in blocks[1:]:
        if block.username == identity.username and block.owner != identity.key:
            whose = _describe_key(block.owner)
            raise EnrolError(
                f"broker user {identity.username!r} already belongs to {whose} in the ACL "
                "file; choose another name with --username"
            )
    kept: list[_Block] = []
    replaced: list[str] = []
    for block in blocks:
        if block.username is not None and block.owner == identity.key:
            if not replaced:
                kept.append(_Block(identity.username, [*_lead(block), *lines, *_trail(block)]))
            replaced.append(block.username)
        else:
            kept.append(block)
    if not replaced:
        while kept[-1].lines and not kept[-1].lines[-1].strip():
            kept[-1].lines.pop()
        lead = [""] if any(line.strip() for b in kept for line in b.lines) else []
        kept.append(_Block(identity.username, [*lead, *lines]))
    return _render_acl(kept), replaced


def remove_acl(text: str, key: tuple[str, ...]) -> tuple[str, list[str]]:
    """The ACL ``text`` without the blocks of the identity ``key``, and their user names."""
    blocks = _parse_acl(text)
    removed = [b.username for b in blocks if b.username is not None and b.owner == key]
    kept = [b for b in blocks if b.username is None or b.owner != key]
    return _render_acl(kept), [u for u in removed if u is not None]


def _describe_key(key: tuple[str, ...] | None) -> str:
    if key is None:
        return "a block not kept by `outpost enroll`"
    if key[0] == "collector":
        return f"the collector user {key[1]}"
    return f"agent {key[1]}/{key[2]}"


# --- the fragment ----------------------------------------------------------------------------


def _q(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a YAML double-quoted one


def fragment(
    identity: Identity,
    broker_url: str,
    target_dir: str,
    *,
    ca_file: bool = True,
    cert: bool = False,
    password: str | None = None,
) -> str:
    """The config the enrolled machine needs: for an agent, ``site``, ``host`` and ``broker``
    for its agent.yaml; for a collector, ``broker`` for its collector.yaml. Paths are under
    ``target_dir`` on that machine. ``password``, when given, goes into a comment at the top
    (the fragment is then printed, never written to a file)."""
    base = PurePosixPath(target_dir)
    role = "collector" if identity.is_collector else "agent"
    out = [
        f"# outpost enroll: {identity.describe()}.",
        f"# Merge into {base / role}.yaml on that machine, and install there, readable only by",
        f"# the user that runs the {role} (the CA certificate by anyone):",
        f"#   {base / role}.password (the password alone on its first line)",
    ]
    if ca_file:
        out.append(f"#   {base / 'ca.crt'} (the fleet CA's ca.crt)")
    if cert:
        out.append(f"#   {base / role}.crt and {base / role}.key (its client certificate)")
    if password is not None:
        out += [
            "# The password, shown this once (only its hash is kept on the broker):",
            f"#   {password}",
        ]
    if identity.site is not None and identity.host is not None:
        out += [f"site: {identity.site}", f"host: {identity.host}"]
    out += [
        "broker:",
        f"  url: {_q(broker_url)}",
        f"  username: {identity.username}",
        f"  password_file: {_q(str(base / role) + '.password')}",
    ]
    if ca_file or cert:
        out.append("  tls:")
    if ca_file:
        out.append(f"    ca_file: {_q(str(base / 'ca.crt'))}")
    if cert:
        out.append(f"    cert_file: {_q(str(base / role) + '.crt')}")
        out.append(f"    key_file: {_q(str(base / role) + '.key')}")
    return "\n".join(out) + "\n"


def default_broker_url(directory: Path) -> str:
    """``mqtts://<the first host name or IPv4 address of server.crt>:8883``."""
    try:
        cert = x509.load_pem_x509_certificate((directory / ca.SERVER_CERT).read_bytes())
    except (OSError, ValueError):
        raise EnrolError(
            f"no server certificate in {directory} to take the broker's name from: give "
            "--broker-url mqtts://HOST:8883"
        ) from None
    for name in ca.names_of(cert):
        if ":" not in name:  # IPv6 cannot be written in a broker URL
            return f"mqtts://{name}:8883"
    raise EnrolError(f"{directory / ca.SERVER_CERT} names no usable host: give --broker-url")


def _check_broker_url(url: str) -> str:
    try:
        if re.match(BROKER_URL_PATTERN, url) and url.startswith("mqtts://"):
            parse_broker_url(url)
            return url
    except OutpostError:
        pass
    raise EnrolError(f"broker URL {url!r}: expected mqtts://HOST:PORT (TLS)")


# --- reading and writing the files -----------------------------------------------------------


@dataclass(frozen=True)
class Enrolment:
    identity: Identity
    password: str
    broker_url: str
    rotated: bool  # it was enrolled before; its old password stops working at the next reload
    password_file: Path
    acl_file: Path
    cert_files: tuple[Path, Path] | None = None  # (certificate, key)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""


def enroll(
    directory: Path,
    identity: Identity,
    now: dt.datetime,
    *,
    prefix: str = "outpost",
    broker_url: str | None = None,
    cert: bool = False,
    cert_dir: Path | None = None,
    cert_days: int = 825,
) -> Enrolment:
    """Give ``identity`` a new password (its only entry in the password file) and its ACL
    block, and with ``cert`` a client certificate from the fleet CA in ``directory``. Enrolling
    again rotates the password and keeps one entry. The broker applies it at its next reload."""
    url = _check_broker_url(broker_url) if broker_url else default_broker_url(directory)
    fleet = ca.load_ca(directory) if cert else None
    password = new_password()
    pw_path, acl_path = directory / PASSWORD_FILE, directory / ACL_FILE
    with _locked(directory):
        acl_text, pw_text = _read(acl_path), _read(pw_path)
        new_acl, replaced = set_acl(acl_text, identity, prefix)
        new_pw = pw_text
        for old in replaced:
            if old != identity.username:
                new_pw = remove_password(new_pw, old)
        has_password = any(_password_user(x) == identity.username for x in pw_text.splitlines())
        if has_password and identity.username not in replaced:
            raise EnrolError(
                f"broker user {identity.username!r} is in {pw_path} but was not enrolled by "
                "`outpost enroll`; choose another name with --username, or remove it first "
                f"(mosquitto_passwd -D {pw_path} {identity.username})"
            )
        rotated = bool(replaced)
        new_pw = set_password(new_pw, identity.username, hash_password(password))
        cert_files = None
        if fleet is not None:
            role = "collector" if identity.is_collector else "agent"
            out = cert_dir if cert_dir is not None else directory / "clients" / identity.username
            key_pem, cert_pem = ca.issue_client(fleet, identity.username, now, cert_days)
            cert_files = (out / f"{role}.crt", out / f"{role}.key")
            ca.write_atomic(cert_files[1], key_pem, 0o600)
            ca.write_atomic(cert_files[0], cert_pem, 0o644)
        # The ACL first: a crash in between leaves a user without a password, not the reverse.
        ca.write_atomic(acl_path, new_acl.encode(), 0o640)
        ca.write_atomic(pw_path, new_pw.encode(), 0o640)
    return Enrolment(identity, password, url, rotated, pw_path, acl_path, cert_files)


def revoke(directory: Path, key: tuple[str, ...]) -> list[str]:
    """Remove the ACL blocks and password entries of the identity ``key`` (see
    :attr:`Identity.key`); returns the user names removed. :class:`NotEnrolled` when there
    were none. The broker applies it at its next reload."""
    pw_path, acl_path = directory / PASSWORD_FILE, directory / ACL_FILE
    with _locked(directory):
        acl_text, pw_text = _read(acl_path), _read(pw_path)
        new_acl, removed = remove_acl(acl_text, key)
        if not removed:
            raise NotEnrolled(f"{_describe_key(key)} is not enrolled in {acl_path}")
        new_pw = pw_text
        for username in removed:
            new_pw = remove_password(new_pw, username)
        # The password first: a crash in between leaves an ACL block nobody can log in as.
        ca.write_atomic(pw_path, new_pw.encode(), 0o640)
        ca.write_atomic(acl_path, new_acl.encode(), 0o640)
    return removed

"""The ``security`` source: what happens on the host that someone should know about.

Four checks, each switchable and each failing on its own (``outpost_security_check_success``):

- ``auth_log``: SSH, login, sudo, su and account changes, read from the auth log file
  (``/var/log/auth.log`` on Debian and Ubuntu, ``/var/log/secure`` on RHEL) or, where there is
  none, from the journal. Failed logins are summed per source address and cycle; a source that
  fails ``threshold`` times within ``window_seconds`` raises one ``ssh_bruteforce`` event.
- ``ports``: a TCP or UDP listening socket that appears or goes away.
- ``files``: a watched file whose content, mode or owner changes (never its content).
- ``boot_clock``: a reboot, and the wall clock jumping.

Where each check got to (log position, brute-force windows, known ports, file fingerprints,
boot id) is the source's state, stored in the same transaction as the events it returned, so
a restart neither repeats nor skips an event. With ``privacy.pseudonymise`` the user names and
addresses in the events are replaced by keyed pseudonyms before they are stored.
docs/events.md lists every event kind with its attrs and severity.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec

from agent.security.authevents import AuthEvents, BruteForceConfig
from agent.security.authlog import AuthRecord, parse_journal_entry, parse_line
from agent.security.clock import BootClock
from agent.security.files import DEFAULT_WATCH, FileWatch
from agent.security.follow import LogFollower
from agent.security.journal import JournalReader
from agent.security.ports import ListeningPorts
from agent.security.privacy import Pseudonymiser, load_secret
from agent.sources.base import Collected, SourceError
from outpost.wire import Event, Sample

__all__ = [
    "AUTH_LOG_CANDIDATES",
    "SecurityConfig",
    "SecuritySource",
    "describe",
]

log = logging.getLogger(__name__)

AUTH_LOG_CANDIDATES = ("/var/log/auth.log", "/var/log/secure")
CHECKS = ("auth_log", "ports", "files", "boot_clock")
_ERROR_LOG_EVERY = 600.0


class AuthLogConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    enabled: bool = True
    # "auto": the first of AUTH_LOG_CANDIDATES that exists, else the journal.
    path: str = "auto"
    journal: Literal["auto", "never", "always"] = "auto"
    journalctl: str = "journalctl"
    from_start: bool = False
    max_lines_per_cycle: Annotated[int, msgspec.Meta(ge=100, le=1_000_000)] = 50_000
    bruteforce: BruteForceConfig = msgspec.field(default_factory=BruteForceConfig)


class PortsConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    enabled: bool = True
    interval_seconds: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    ignore_ports: list[Annotated[int, msgspec.Meta(ge=0, le=65535)]] = []
    udp: bool = True


class FilesConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    enabled: bool = True
    interval_seconds: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    paths: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_WATCH))

    def __post_init__(self) -> None:
        for path in self.paths:
            if not path.startswith("/"):
                raise ValueError(f"files.paths: {path!r} is not an absolute path")


class BootClockConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    enabled: bool = True
    clock_jump_seconds: Annotated[float, msgspec.Meta(ge=1)] = 120.0


class PrivacyConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pseudonymise: bool = False
    secret_file: str = "/etc/outpost/pseudonym.key"


class SecurityConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The ``security`` block; config/agent.yaml documents every key."""

    enabled: bool = True
    auth_log: AuthLogConfig = msgspec.field(default_factory=AuthLogConfig)
    ports: PortsConfig = msgspec.field(default_factory=PortsConfig)
    files: FilesConfig = msgspec.field(default_factory=FilesConfig)
    boot_clock: BootClockConfig = msgspec.field(default_factory=BootClockConfig)
    privacy: PrivacyConfig = msgspec.field(default_factory=PrivacyConfig)


# --- messages ---------------------------------------------------------------------------------

_MESSAGES = {
    "ssh_login_failed": "{count} failed SSH login(s) from {source} (users: {users})",
    "ssh_bruteforce": "SSH brute force from {source}: {count} failed logins within "
    "{window_seconds} s (users: {users})",
    "ssh_login": "{user} logged in over SSH from {source} ({method})",
    "root_login": "root logged in ({via}) from {source}",
    "sudo": "{user} ran {command} as {run_as} with sudo",
    "sudo_failed": "sudo refused for {user} ({reason})",
    "su": "{user} became {target_user} with su",
    "su_failed": "su to {target_user} failed for {user}",
    "user_added": "user {user} created (uid {uid})",
    "user_deleted": "user {user} deleted",
    "group_added": "group {group} created",
    "group_deleted": "group {group} deleted",
    "group_member_added": "{user} added to group {group}",
    "password_changed": "password of {user} changed",
    "listen_port_opened": "new {proto} listener on {address}:{port} ({process})",
    "listen_port_closed": "{proto} listener on {address}:{port} closed ({process})",
    "file_changed": "{path} changed: {change}",
    "reboot": "the host rebooted (booted at {boot_time})",
    "clock_jump": "the wall clock jumped by {jump_seconds} s",
    "log_gap": "part of {path} was rotated away before it could be read",
}


class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "?"


def describe(event: Event) -> str:
    """A one-line English text for an event, written from its attrs (after pseudonymising)."""
    template = _MESSAGES.get(event.kind)
    if template is None:
        return event.kind.replace("_", " ")
    return template.format_map(_Blank({k: v for k, v in event.attrs.items() if v}))


# --- the source -------------------------------------------------------------------------------


class _Check:
    """One check on its own schedule, with its own failures."""

    def __init__(self, name: str, every: float, run: Callable[[float], list[Event]]) -> None:
        self.name = name
        self.every = every
        self.run = run
        self.last_run: float | None = None
        self.ok = True
        self.error = ""
        self._logged: dict[str, float] = {}

    def due(self, now: float) -> bool:
        return self.last_run is None or now - self.last_run >= self.every or now < self.last_run

    def failed(self, exc: Exception, now: float) -> None:
        self.ok = False
        text = self.error = str(exc) or type(exc).__name__
        last = self._logged.get(text)
        if last is None or now - last >= _ERROR_LOG_EVERY:
            self._logged = {text: now}
            log.warning("security check %s failed: %s", self.name, text)
        log.debug("security check %s traceback", self.name, exc_info=True)


class SecuritySource:
    name = "security"

    def __init__(
        self,
        config: SecurityConfig,
        *,
        ports: ListeningPorts | None = None,
        files: FileWatch | None = None,
        clock: BootClock | None = None,
    ) -> None:
        self.config = config
        cfg = config
        self.auth = AuthEvents(cfg.auth_log.bruteforce)
        self.follower: LogFollower | None = None
        self.journal: JournalReader | None = None
        self.log_path = ""
        self._gaps_seen = 0
        self.ports = ports or ListeningPorts(
            ignore_ports=list(cfg.ports.ignore_ports), include_udp=cfg.ports.udp
        )
        self.files = files or FileWatch(list(cfg.files.paths))
        self.clock = clock or BootClock(jump_seconds=cfg.boot_clock.clock_jump_seconds)
        self.pseudonymiser: Pseudonymiser | None = None
        self._privacy_error = ""
        self.checks: list[_Check] = []
        if cfg.auth_log.enabled:
            self.checks.append(_Check("auth_log", 0.0, self._auth_log))
        if cfg.ports.enabled:
            self.checks.append(_Check("ports", cfg.ports.interval_seconds, self.ports.check))
        if cfg.files.enabled:
            self.checks.append(_Check("files", cfg.files.interval_seconds, self.files.check))
        if cfg.boot_clock.enabled:
            self.checks.append(_Check("boot_clock", 0.0, self.clock.check))
        self._restored: dict[str, Any] = {}

    # --- the auth log ---------------------------------------------------------------------

    def _open_auth_source(self) -> None:
        """Choose the file or the journal, once, on the first cycle (no I/O in __init__)."""
        cfg = self.config.auth_log
        if self.follower is not None or self.journal is not None:
            return
        path = ""
        if cfg.journal != "always":
            if cfg.path != "auto":
                path = cfg.path
            else:
                path = next((p for p in AUTH_LOG_CANDIDATES if os.path.exists(p)), "")
        if path:
            self.log_path = path
            self.follower = LogFollower(
                path, from_start=cfg.from_start, max_bytes=cfg.max_lines_per_cycle * 256
            )
            self.follower.restore(self._restored.get("follow") or {})
            return
        if cfg.journal == "never":
            raise SourceError(
                f"no auth log found ({' or '.join(AUTH_LOG_CANDIDATES)}) and the journal is "
                "switched off: set security.auth_log.path, or journal: auto"
            )
        if shutil.which(cfg.journalctl) is None:
            raise SourceError(
                f"no auth log found ({' or '.join(AUTH_LOG_CANDIDATES)}) and no "
                f"{cfg.journalctl!r} to read the journal: install rsyslog, or set "
                "security.auth_log.path, or switch auth_log off"
            )
        self.log_path = "journal"
        self.journal = JournalReader(cfg.journalctl, max_entries=cfg.max_lines_per_cycle)
        self.journal.restore(self._restored.get("journal") or {})

    def _auth_log(self, now: float) -> list[Event]:
        self._open_auth_source()
        records: list[AuthRecord] = []
        events: list[Event] = []
        if self.follower is not None:
            for line in self.follower.read():
                record = parse_line(line, now)
                if record is not None:
                    records.append(record)
            if self.follower.gaps > self._gaps_seen:
                self._gaps_seen = self.follower.gaps
                events.append(
                    Event("log_gap", "warning", int(now * 1000), attrs={"path": self.log_path})
                )
        elif self.journal is not None:
            for entry in self.journal.read():
                record = parse_journal_entry(entry)
                if record is not None:
                    records.append(record)
        events.extend(self.auth.feed(records, now))
        return events

    # --- Source and Stateful ------------------------------------------------------------------

    def collect(self, now: float) -> Collected:
        events: list[Event] = []
        samples: list[Sample] = []
        for check in self.checks:
            if not check.due(now):
                samples.append(_success(check.name, check.ok))
                continue
            check.last_run = now
            try:
                events.extend(check.run(now))
                check.ok = True
            except Exception as exc:
                check.failed(exc, now)
            samples.append(_success(check.name, check.ok))
        if self.config.auth_log.enabled:
            samples.append(
                Sample("outpost_security_auth_failures_total", float(self.auth.failures_total))
            )
        events = [self._finish(e) for e in events]
        if self.checks and not any(c.ok for c in self.checks):
            raise SourceError(
                "every security check failed: "
                + "; ".join(f"{c.name}: {c.error}" for c in self.checks)
            )
        return Collected(samples=samples, events=events)

    def _finish(self, event: Event) -> Event:
        if self.config.privacy.pseudonymise:
            event = self._pseudonymiser().event(event)
        if not event.message:
            event = msgspec.structs.replace(event, message=describe(event))
        return event

    def _pseudonymiser(self) -> Pseudonymiser:
        if self.pseudonymiser is None:
            # Refuse to send what should have been hidden: the check fails loudly instead.
            self.pseudonymiser = Pseudonymiser(load_secret(self.config.privacy.secret_file))
        return self.pseudonymiser

    def preflight(self) -> None:
        """Load the pseudonymisation secret now, so ``agent check`` and the start fail on a
        bad one (ValueError, with what to do) rather than the first event."""
        if self.config.privacy.pseudonymise:
            self._pseudonymiser()

    def close(self) -> None:
        """Close the followed log and stop journalctl, if running."""
        if self.follower is not None:
            self.follower.close()
        if self.journal is not None:
            self.journal.close()

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"auth": self.auth.state()}
        if self.follower is not None:
            out["follow"] = self.follower.state()
        elif "follow" in self._restored:
            out["follow"] = self._restored["follow"]
        if self.journal is not None:
            out["journal"] = self.journal.state()
        elif "journal" in self._restored:
            out["journal"] = self._restored["journal"]
        out["ports"] = self.ports.state()
        out["files"] = self.files.state()
        out["clock"] = self.clock.state()
        return out

    def restore(self, data: dict[str, Any]) -> None:
        self._restored = dict(data) if isinstance(data, dict) else {}

        def part(key: str) -> dict[str, Any]:
            value = self._restored.get(key)
            return value if isinstance(value, dict) else {}

        self.auth.restore(part("auth"))
        if self.follower is not None:
            self.follower.restore(part("follow"))
        if self.journal is not None:
            self.journal.restore(part("journal"))
        self.ports.restore(part("ports"))
        self.files.restore(part("files"))
        self.clock.restore(part("clock"))


def _success(check: str, ok: bool) -> Sample:
    return Sample("outpost_security_check_success", 1.0 if ok else 0.0, {"check": check})

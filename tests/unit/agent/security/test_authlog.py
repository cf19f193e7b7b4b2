"""Tests for agent/security/authlog.py: real-looking lines from Debian 12, Ubuntu 22.04 and
24.04, RHEL 9 and the journal, the lines that must be ignored, and garbage."""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.security import authlog
from agent.security.authlog import (
    MAX_LINE,
    RECORD_KINDS,
    AuthRecord,
    parse_journal_entry,
    parse_line,
    parse_message,
)

UTC = dt.UTC
NOW = dt.datetime(2024, 11, 27, 12, 0, 0, tzinfo=UTC).timestamp()


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


T = at(2024, 11, 27, 10, 15, 1)  # what "Nov 27 10:15:01" means in UTC with NOW


def parse(line: str) -> AuthRecord | None:
    return parse_line(line, NOW, UTC)


def rec(kind: str, user: str = "", source: str = "", count: int = 1, **detail: str) -> AuthRecord:
    return AuthRecord(kind, T, user, source, count, detail)


# --- Debian 12: OpenSSH 9.2p1, sudo 1.9.13, util-linux 2.38 su, shadow 4.13 ------------------

DEBIAN = "Nov 27 10:15:01 bookworm "
DEBIAN_CASES = [
    (
        "sshd[24017]: Failed password for root from 203.0.113.7 port 50412 ssh2",
        rec("failed_password", "root", "203.0.113.7", method="password", port="50412"),
    ),
    (
        "sshd[24019]: Failed password for invalid user oracle from 203.0.113.7 port 50414 ssh2",
        rec("failed_password", "oracle", "203.0.113.7", method="password", port="50414"),
    ),
    (
        "sshd[24019]: Invalid user oracle from 203.0.113.7 port 50414",
        rec("invalid_user", "oracle", "203.0.113.7", port="50414"),
    ),
    (
        "sshd[24030]: Failed publickey for alice from 198.51.100.23 port 41820 ssh2: "
        "RSA SHA256:Yc4pu8Z1g1o0dG7m4kS2VqT6xQ0n8wQm1F0hJj2rU7A",
        rec("failed_publickey", "alice", "198.51.100.23", method="publickey", port="41820"),
    ),
    (
        "sshd[24031]: Failed keyboard-interactive/pam for invalid user test from "
        "203.0.113.8 port 33018 ssh2",
        rec("failed_other", "test", "203.0.113.8", method="keyboard-interactive", port="33018"),
    ),
    (
        "sshd[24101]: Accepted publickey for alice from 198.51.100.23 port 41822 ssh2: "
        "ED25519 SHA256:2vFqXCnBv0dNQ3Y1oE0jHk0f3m7o9GQ8wRk2j8yC0oU",
        rec("accepted", "alice", "198.51.100.23", method="publickey", port="41822"),
    ),
    (
        "sshd[24102]: Accepted password for root from 192.0.2.10 port 40022 ssh2",
        rec("accepted", "root", "192.0.2.10", method="password", port="40022"),
    ),
    (
        "sshd[24103]: Accepted keyboard-interactive/pam for bob from 192.0.2.11 port 40100 ssh2",
        rec("accepted", "bob", "192.0.2.11", method="keyboard-interactive", port="40100"),
    ),
    (
        "sshd[24104]: Accepted gssapi-with-mic for carol from ws1.example.org port 40200 ssh2",
        rec("accepted", "carol", "ws1.example.org", method="gssapi-with-mic", port="40200"),
    ),
    (
        "sshd[24105]: Accepted hostbased for dave from 192.0.2.12 port 40300 ssh2: "
        "ED25519 SHA256:PnW5WQ4Zb4sO3eG4m8H6mZ1XkqYcD2q7l5G0W1dJQ3E",
        rec("accepted", "dave", "192.0.2.12", method="hostbased", port="40300"),
    ),
    (
        "sshd[24017]: message repeated 5 times: [ Failed password for root from 203.0.113.7 "
        "port 50412 ssh2]",
        rec("failed_password", "root", "203.0.113.7", 5, method="password", port="50412"),
    ),
    (
        "sudo:    alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/apt update",
        rec("sudo", "alice", run_as="root", command="/usr/bin/apt", tty="pts/0"),
    ),
    (
        "sudo:    alice : TTY=pts/0 ; PWD=/srv ; USER=postgres ; COMMAND=/usr/bin/psql -c "
        "select 1 ; drop table users",
        rec("sudo", "alice", run_as="postgres", command="/usr/bin/psql", tty="pts/0"),
    ),
    (
        "sudo:    alice : 3 incorrect password attempts ; TTY=pts/0 ; PWD=/home/alice ; "
        "USER=root ; COMMAND=/usr/bin/passwd root",
        rec(
            "sudo_failed",
            "alice",
            reason="incorrect_password",
            attempts="3",
            run_as="root",
            command="/usr/bin/passwd",
            tty="pts/0",
        ),
    ),
    (
        "sudo:    alice : 1 incorrect password attempt ; TTY=pts/0 ; PWD=/home/alice ; "
        "USER=root ; COMMAND=/usr/bin/id",
        rec(
            "sudo_failed",
            "alice",
            reason="incorrect_password",
            attempts="1",
            run_as="root",
            command="/usr/bin/id",
            tty="pts/0",
        ),
    ),
    (
        "sudo:      bob : user NOT in sudoers ; TTY=pts/1 ; PWD=/home/bob ; USER=root ; "
        "COMMAND=/usr/bin/cat /etc/shadow",
        rec(
            "sudo_failed",
            "bob",
            reason="not_in_sudoers",
            run_as="root",
            command="/usr/bin/cat",
            tty="pts/1",
        ),
    ),
    (
        "sudo:    alice : command not allowed ; TTY=pts/0 ; PWD=/home/alice ; USER=root ; "
        "COMMAND=/usr/bin/rm -rf /",
        rec(
            "sudo_failed",
            "alice",
            reason="not_allowed",
            run_as="root",
            command="/usr/bin/rm",
            tty="pts/0",
        ),
    ),
    (
        "sudo:    alice : a password is required ; TTY=unknown ; PWD=/home/alice ; USER=root ; "
        "COMMAND=/usr/bin/true",
        rec(
            "sudo_failed",
            "alice",
            reason="auth_failure",
            run_as="root",
            command="/usr/bin/true",
            tty="unknown",
        ),
    ),
    (
        "su[25001]: (to root) alice on pts/0",
        rec("su", "alice", target_user="root", tty="pts/0"),
    ),
    (
        "su[25002]: FAILED SU (to root) alice on pts/0",
        rec("su_failed", "alice", target_user="root", tty="pts/0"),
    ),
    (
        "su[25003]: (to postgres) root on none",
        rec("su", "root", target_user="postgres", tty="none"),
    ),
    ("useradd[25100]: new group: name=bob, GID=1001", rec("group_added", group="bob", gid="1001")),
    (
        "useradd[25100]: new user: name=bob, UID=1001, GID=1001, home=/home/bob, "
        "shell=/bin/bash, from=/dev/pts/0",
        rec("user_added", "bob", uid="1001", gid="1001", home="/home/bob", shell="/bin/bash"),
    ),
    ("usermod[25200]: add 'bob' to group 'sudo'", rec("group_member_added", "bob", group="sudo")),
    (
        "passwd[25300]: pam_unix(passwd:chauthtok): password changed for bob",
        rec("password_changed", "bob", via="passwd"),
    ),
    (
        "chpasswd[25301]: pam_unix(chpasswd:chauthtok): password changed for bob",
        rec("password_changed", "bob", via="chpasswd"),
    ),
    (
        "usermod[25302]: change user 'bob' password",
        rec("password_changed", "bob", via="usermod"),
    ),
    ("userdel[25400]: delete user 'bob'", rec("user_deleted", "bob")),
    ("userdel[25400]: removed group 'bob' owned by 'bob'", rec("group_deleted", group="bob")),
    ("groupadd[25500]: new group: name=dev, GID=1002", rec("group_added", group="dev", gid="1002")),
    ("groupdel[25600]: group 'dev' removed", rec("group_deleted", group="dev")),
    (
        "gpasswd[25700]: user bob added by root to group dev",
        rec("group_member_added", "bob", group="dev"),
    ),
    (
        "login[812]: ROOT LOGIN  on '/dev/tty1'",
        rec("console_root_login", "root", tty="tty1"),
    ),
]

# Lines that duplicate another line or say nothing we report.
DEBIAN_IGNORED = [
    "sshd[24017]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh "
    "ruser= rhost=203.0.113.7  user=root",
    "sshd[24017]: PAM 2 more authentication failures; logname= uid=0 euid=0 tty=ssh ruser= "
    "rhost=203.0.113.7  user=root",
    "sshd[24017]: Connection closed by authenticating user root 203.0.113.7 port 50412 [preauth]",
    "sshd[24019]: Disconnected from invalid user oracle 203.0.113.7 port 50414 [preauth]",
    "sshd[24017]: error: maximum authentication attempts exceeded for root from 203.0.113.7 "
    "port 50412 ssh2 [preauth]",
    "sshd[24017]: Disconnecting authenticating user root 203.0.113.7 port 50412: Too many "
    "authentication failures [preauth]",
    "sshd[24019]: Failed none for invalid user oracle from 203.0.113.7 port 50414 ssh2",
    "sshd[24101]: pam_unix(sshd:session): session opened for user alice(uid=1000) by (uid=0)",
    "sshd[24101]: Received disconnect from 198.51.100.23 port 41822:11: disconnected by user",
    "sshd[24101]: Server listening on 0.0.0.0 port 22.",
    "sudo: pam_unix(sudo:session): session opened for user root(uid=0) by alice(uid=1000)",
    "sudo: pam_unix(sudo:auth): authentication failure; logname=alice uid=1000 euid=0 "
    "tty=/dev/pts/0 ruser=alice rhost=  user=alice",
    "su[25001]: pam_unix(su:session): session opened for user root(uid=0) by alice(uid=1000)",
    "su[25002]: pam_unix(su:auth): authentication failure; logname=alice uid=1000 euid=0 "
    "tty=/dev/pts/0 ruser=alice rhost=  user=root",
    "usermod[25200]: add 'bob' to shadow group 'sudo'",
    "userdel[25400]: removed shadow group 'bob' owned by 'bob'",
    "groupadd[25500]: group added to /etc/group: name=dev, GID=1002",
    "groupadd[25500]: group added to /etc/gshadow: name=dev",
    "groupdel[25600]: group 'dev' removed from /etc/group",
    "login[812]: pam_unix(login:session): session opened for user root(uid=0) by LOGIN(uid=0)",
    "CRON[26000]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)",
    "systemd-logind[600]: New session 42 of user alice.",
]


@pytest.mark.parametrize(("message", "expected"), DEBIAN_CASES)
def test_debian_12(message: str, expected: AuthRecord) -> None:
    assert parse(DEBIAN + message) == expected
    assert expected.kind in RECORD_KINDS


@pytest.mark.parametrize("message", DEBIAN_IGNORED)
def test_debian_12_lines_that_are_ignored(message: str) -> None:
    assert parse(DEBIAN + message) is None


def test_every_record_kind_is_covered() -> None:
    kinds = {expected.kind for _, expected in DEBIAN_CASES}
    assert kinds == RECORD_KINDS


# --- Ubuntu 22.04 (OpenSSH 8.9p1, traditional stamps), IPv6 ----------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "Nov 27 10:15:01 jammy sshd[3021]: Invalid user admin from 2001:db8::dead:beef "
            "port 59122",
            rec("invalid_user", "admin", "2001:db8::dead:beef", port="59122"),
        ),
        (
            "Nov 27 10:15:01 jammy sshd[3021]: Failed password for invalid user admin from "
            "2001:db8::dead:beef port 59122 ssh2",
            rec("failed_password", "admin", "2001:db8::dead:beef", method="password", port="59122"),
        ),
        (
            "Nov 27 10:15:01 jammy sshd[3022]: Accepted publickey for ubuntu from "
            "fe80::1c2b:3aff:fe4d:5e6f%eth0 port 51000 ssh2: ECDSA SHA256:q0Nq1f6m0S5C",
            rec(
                "accepted",
                "ubuntu",
                "fe80::1c2b:3aff:fe4d:5e6f%eth0",
                method="publickey",
                port="51000",
            ),
        ),
        (
            "Nov 27 10:15:01 jammy sshd[3023]: Failed password for root from ::ffff:192.0.2.9 "
            "port 4000 ssh2",
            rec("failed_password", "root", "::ffff:192.0.2.9", method="password", port="4000"),
        ),
        (
            "Nov 27 10:15:01 jammy sudo:   ubuntu : TTY=pts/0 ; PWD=/home/ubuntu ; USER=root ; "
            "COMMAND=/usr/bin/systemctl restart nginx",
            rec("sudo", "ubuntu", run_as="root", command="/usr/bin/systemctl", tty="pts/0"),
        ),
        (
            "Nov  5 10:15:01 jammy su[4001]: (to root) ubuntu on pts/2",
            rec("su", "ubuntu", target_user="root", tty="pts/2")._replace(
                ts=at(2024, 11, 5, 10, 15, 1)
            ),
        ),
    ],
)
def test_ubuntu_22_04(line: str, expected: AuthRecord) -> None:
    assert parse(line) == expected


# --- RHEL 9 /var/log/secure (OpenSSH 8.7p1, sudo[pid], util-linux login) ---------------------

RHEL = "Nov 27 10:15:01 rhel9 "


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "sshd[1612]: Failed password for invalid user test from 203.0.113.50 port 44402 ssh2",
            rec("failed_password", "test", "203.0.113.50", method="password", port="44402"),
        ),
        (
            "sshd[1612]: Invalid user test from 203.0.113.50 port 44402",
            rec("invalid_user", "test", "203.0.113.50", port="44402"),
        ),
        (
            "sshd[1613]: Accepted publickey for ec2-user from 198.51.100.2 port 55200 ssh2: "
            "RSA SHA256:3m1bB7H2oU0gkE4r5pX9w0Fh1hN8jv2mQ3oA6y1Xk2s",
            rec("accepted", "ec2-user", "198.51.100.2", method="publickey", port="55200"),
        ),
        (
            "sudo[1700]: ec2-user : TTY=pts/0 ; PWD=/home/ec2-user ; USER=root ; "
            "COMMAND=/bin/dnf install -y nginx",
            rec("sudo", "ec2-user", run_as="root", command="/bin/dnf", tty="pts/0"),
        ),
        (
            "sudo[1701]:   mallory : user NOT in sudoers ; TTY=pts/1 ; PWD=/tmp ; USER=root ; "
            "COMMAND=/bin/bash",
            rec(
                "sudo_failed",
                "mallory",
                reason="not_in_sudoers",
                run_as="root",
                command="/bin/bash",
                tty="pts/1",
            ),
        ),
        (
            "su[1800]: (to root) ec2-user on pts/0",
            rec("su", "ec2-user", target_user="root", tty="pts/0"),
        ),
        (
            "su[1801]: FAILED SU (to root) ec2-user on pts/0",
            rec("su_failed", "ec2-user", target_user="root", tty="pts/0"),
        ),
        ("login[900]: ROOT LOGIN ON tty1", rec("console_root_login", "root", tty="tty1")),
        (
            "login[901]: ROOT LOGIN ON pts/3 FROM jump.example.net",
            rec("console_root_login", "root", "jump.example.net", tty="pts/3"),
        ),
        (
            "useradd[2000]: new user: name=deploy, UID=1001, GID=1001, home=/home/deploy, "
            "shell=/bin/bash, from=/dev/pts/0",
            rec(
                "user_added",
                "deploy",
                uid="1001",
                gid="1001",
                home="/home/deploy",
                shell="/bin/bash",
            ),
        ),
        (
            "passwd[2100]: pam_unix(passwd:chauthtok): password changed for deploy",
            rec("password_changed", "deploy", via="passwd"),
        ),
    ],
)
def test_rhel_9(message: str, expected: AuthRecord) -> None:
    assert parse(RHEL + message) == expected


def test_rhel_9_noise_is_ignored() -> None:
    for message in (
        "sshd[1612]: pam_unix(sshd:auth): check pass; user unknown",
        "sshd[1612]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh "
        "ruser= rhost=203.0.113.50",
        "sshd[1612]: error: PAM: Authentication failure for root from 203.0.113.50",
        "sshd[1612]: User root from 203.0.113.50 not allowed because not listed in AllowUsers",
        "sudo[1700]: pam_unix(sudo:session): session closed for user root",
        "su[1800]: pam_unix(su-l:session): session opened for user root(uid=0) by ec2-user(uid=0)",
    ):
        assert parse(RHEL + message) is None, message


# --- shadow su, sshd-session, sudo details ----------------------------------------------------


def test_shadow_su_lines() -> None:
    assert parse_message("su", "Successful su for root by alice", T) == rec(
        "su", "alice", target_user="root"
    )
    assert parse_message("su", "FAILED su for root by alice", T) == rec(
        "su_failed", "alice", target_user="root"
    )
    assert parse_message("su", "+ pts/0 alice:root", T) is None


def test_sshd_session_program_of_openssh_9_8() -> None:
    record = parse_message(
        "sshd-session", "Failed password for root from 203.0.113.1 port 1 ssh2", None
    )
    assert record == AuthRecord(
        "failed_password", None, "root", "203.0.113.1", 1, {"method": "password", "port": "1"}
    )


def test_old_invalid_user_line_without_port() -> None:
    assert parse_message("sshd", "Invalid user admin from 203.0.113.1", T) == rec(
        "invalid_user", "admin", "203.0.113.1"
    )


def test_preauth_suffix_is_dropped() -> None:
    record = parse_message("sshd", "Invalid user admin from 203.0.113.1 port 2222 [preauth]", T)
    assert record == rec("invalid_user", "admin", "203.0.113.1", port="2222")


def test_user_name_with_spaces_cannot_fake_the_source() -> None:
    # sshd logs whatever user name the client sent; the address is the last one.
    record = parse_message(
        "sshd",
        "Failed password for invalid user x from 192.0.2.1 port 1 ssh2 from 203.0.113.66 "
        "port 40000 ssh2",
        T,
    )
    assert record is not None
    assert record.source == "203.0.113.66"
    assert record.user == "x from 192.0.2.1 port 1 ssh2"
    assert record.detail["port"] == "40000"


def test_empty_invalid_user_name() -> None:
    assert parse_message("sshd", "Invalid user  from 203.0.113.1 port 2", T) == rec(
        "invalid_user", "", "203.0.113.1", port="2"
    )


def test_sudo_keeps_no_arguments_and_no_password() -> None:
    record = parse_message(
        "sudo",
        "alice : TTY=pts/0 ; PWD=/root ; USER=root ; COMMAND=/usr/bin/mysql -u root -pS3cret",
        T,
    )
    assert record is not None
    assert record.detail["command"] == "/usr/bin/mysql"
    assert "S3cret" not in repr(record)


def test_sudo_unknown_reason_and_continuation_are_ignored() -> None:
    assert parse_message("sudo", "alice : problem with defaults entries ; TTY=pts/0", T) is None
    assert parse_message("sudo", "alice : (command continued) --verbose", T) is None
    assert parse_message("sudo", "alice : TTY=pts/0 ; PWD=/", T) is None


def test_sudo_pam_error_is_an_auth_failure() -> None:
    record = parse_message(
        "sudo",
        "alice : PAM account management error: Permission denied ; TTY=pts/0 ; PWD=/ ; "
        "USER=root ; COMMAND=/bin/ls",
        T,
    )
    assert record is not None
    assert record.kind == "sudo_failed"
    assert record.detail["reason"] == "auth_failure"


def test_program_with_a_path() -> None:
    assert parse_message("/usr/sbin/sshd", "Invalid user a from 192.0.2.1 port 3", T) == rec(
        "invalid_user", "a", "192.0.2.1", port="3"
    )


def test_unknown_program_gives_none() -> None:
    assert parse_message("nginx", "Failed password for root from 192.0.2.1 port 3 ssh2", T) is None


def test_message_repeated_of_another_program() -> None:
    record = parse_message("su", "message repeated 2 times: [ FAILED SU (to root) bob on pts/1]", T)
    assert record == rec("su_failed", "bob", count=2, target_user="root", tty="pts/1")


def test_message_repeated_with_nonsense_counts() -> None:
    msg = "Failed password for root from 192.0.2.1 port 3 ssh2"
    assert parse_message("sshd", f"message repeated 0 times: [ {msg}]", T) is None
    assert parse_message("sshd", f"message repeated 99999999999 times: [ {msg}]", T) is None
    assert parse_message("sshd", f"message repeated 2 times: [ {msg}", T) is None


# --- timestamps ---------------------------------------------------------------------------


SSH_FAIL = "host sshd[1]: Failed password for root from 192.0.2.1 port 22 ssh2"


def ts_of(stamp: str, now: float, tz: dt.tzinfo | None = UTC) -> float | None:
    record = parse_line(f"{stamp} {SSH_FAIL}", now, tz)
    return None if record is None else record.ts


def test_rfc3339_stamps() -> None:
    assert ts_of("2024-05-01T10:15:01.123456+08:00", NOW) == pytest.approx(
        at(2024, 5, 1, 2, 15, 1) + 0.123456
    )
    assert ts_of("2024-05-01T10:15:01Z", NOW) == at(2024, 5, 1, 10, 15, 1)
    assert ts_of("2024-05-01T10:15:01.5-05:30", NOW) == at(2024, 5, 1, 15, 45, 1) + 0.5
    # An RFC 3339 stamp is believed whatever `now` says: it carries its year.
    assert ts_of("2031-01-01T00:00:00+00:00", NOW) == at(2031, 1, 1, 0, 0, 0)


def test_rfc3339_ubuntu_24_04_line() -> None:
    record = parse_line(
        "2024-05-01T10:15:01.123456+08:00 noble sshd[1200]: Failed password for root from "
        "203.0.113.9 port 40000 ssh2",
        NOW,
    )
    assert record is not None
    assert record.kind == "failed_password"
    assert record.ts == pytest.approx(at(2024, 5, 1, 2, 15, 1) + 0.123456)


def test_rfc3339_without_offset_uses_tz() -> None:
    plus8 = dt.timezone(dt.timedelta(hours=8))
    assert ts_of("2024-05-01T10:15:01", NOW, plus8) == at(2024, 5, 1, 2, 15, 1)


def test_traditional_stamp_in_another_zone() -> None:
    plus8 = dt.timezone(dt.timedelta(hours=8))
    assert ts_of("Nov 27 10:15:01", NOW, plus8) == at(2024, 11, 27, 2, 15, 1)


def test_traditional_stamp_default_is_local_time() -> None:
    expected = dt.datetime(2024, 11, 27, 10, 15, 1).timestamp()  # naive: local
    assert ts_of("Nov 27 10:15:01", NOW, None) == expected


def test_year_around_new_year() -> None:
    early_jan = at(2025, 1, 1, 0, 0, 30)
    assert ts_of("Dec 31 23:59:59", early_jan) == at(2024, 12, 31, 23, 59, 59)
    late_dec = at(2024, 12, 31, 23, 59, 50)
    # A line from a host whose clock is a little ahead: next year, up to a day ahead.
    assert ts_of("Jan  1 00:00:10", late_dec) == at(2025, 1, 1, 0, 0, 10)


def test_year_is_never_more_than_a_day_ahead() -> None:
    assert ts_of("Nov 28 11:59:59", NOW) == at(2024, 11, 28, 11, 59, 59)
    assert ts_of("Nov 28 12:00:01", NOW) == at(2023, 11, 28, 12, 0, 1)


def test_29_february_goes_to_the_last_leap_year() -> None:
    assert ts_of("Feb 29 12:00:00", at(2025, 3, 1, 0, 0, 0)) == at(2024, 2, 29, 12, 0, 0)
    assert ts_of("Feb 29 12:00:00", at(2024, 3, 1, 0, 0, 0)) == at(2024, 2, 29, 12, 0, 0)


def test_impossible_dates_and_times() -> None:
    for stamp in ("Nov 31 10:15:01", "Nov 27 24:15:01", "Nov 27 10:60:01", "Nov  0 10:15:01"):
        assert ts_of(stamp, NOW) is None, stamp
    for stamp in ("2024-13-01T10:15:01Z", "2024-05-01T10:15:01+25:00", "2024-02-30T00:00:00Z"):
        assert ts_of(stamp, NOW) is None, stamp


def test_leap_second_is_clamped() -> None:
    assert ts_of("2016-12-31T23:59:60Z", NOW) == at(2016, 12, 31, 23, 59, 59)


def test_absurd_now_gives_none() -> None:
    for now in (float("nan"), float("inf"), 1e300):
        assert parse_line(f"Nov 27 10:15:01 {SSH_FAIL}", now, UTC) is None


# --- journal --------------------------------------------------------------------------------


def journal(message: Any, identifier: Any = "sshd", **more: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "__CURSOR": "s=6f1c2a;i=1a2b;b=9d0e;m=12345;t=6279b1e0c8f40;x=abc",
        "__REALTIME_TIMESTAMP": "1732702501123456",
        "__MONOTONIC_TIMESTAMP": "81234567",
        "_BOOT_ID": "9d0e6a1b2c3d4e5f60718293a4b5c6d7",
        "PRIORITY": "6",
        "SYSLOG_FACILITY": "10",
        "SYSLOG_IDENTIFIER": identifier,
        "_PID": "24017",
        "_COMM": "sshd",
        "_HOSTNAME": "bookworm",
        "MESSAGE": message,
    }
    entry.update(more)
    return entry


def test_journal_entry() -> None:
    record = parse_journal_entry(
        journal("Failed password for root from 2001:db8::7 port 50412 ssh2")
    )
    assert record == AuthRecord(
        "failed_password",
        1732702501.123456,
        "root",
        "2001:db8::7",
        1,
        {"method": "password", "port": "50412"},
    )


def test_journal_sudo_and_shadow_entries() -> None:
    sudo = parse_journal_entry(
        journal(
            "    alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/apt update",
            "sudo",
            _COMM="sudo",
        )
    )
    assert sudo is not None
    assert (sudo.kind, sudo.user, sudo.detail["command"]) == ("sudo", "alice", "/usr/bin/apt")
    added = parse_journal_entry(journal("new group: name=dev, GID=1002", "groupadd"))
    assert added is not None
    assert added.kind == "group_added"


def test_journal_message_as_byte_values() -> None:
    raw = b"Failed password for invalid user caf\xe9 from 203.0.113.5 port 4242 ssh2"
    record = parse_journal_entry(journal(list(raw)))
    assert record is not None
    assert record.kind == "failed_password"
    assert record.user == "caf\ufffd"
    assert record.source == "203.0.113.5"


def test_journal_identifier_falls_back_to_comm() -> None:
    entry = journal("Invalid user a from 192.0.2.1 port 3")
    del entry["SYSLOG_IDENTIFIER"]
    record = parse_journal_entry(entry)
    assert record is not None
    assert record.kind == "invalid_user"


@pytest.mark.parametrize(
    "timestamp", [None, "", "abc", "-5", "1e6", "9" * 40, 1.5, [1, 2], {"a": 1}, True]
)
def test_journal_bad_timestamp_gives_no_time(timestamp: Any) -> None:
    record = parse_journal_entry(
        journal("Invalid user a from 192.0.2.1 port 3", __REALTIME_TIMESTAMP=timestamp)
    )
    assert record is not None
    assert record.ts is None


def test_journal_integer_timestamp() -> None:
    record = parse_journal_entry(
        journal("Invalid user a from 192.0.2.1 port 3", __REALTIME_TIMESTAMP=1732702501000000)
    )
    assert record is not None
    assert record.ts == 1732702501.0


@pytest.mark.parametrize(
    "entry",
    [
        {},
        {"MESSAGE": "Invalid user a from 192.0.2.1 port 3"},  # no program at all
        journal(None),
        journal(""),
        journal(["not", "bytes"]),
        journal([300, 1, 2]),
        journal([-1]),
        journal(["Invalid user a from 192.0.2.1 port 3", "Invalid user b from 192.0.2.1"]),
        journal({"nested": "dict"}),
        journal(12345),
        journal("Invalid user a from 192.0.2.1 port 3", identifier=None, _COMM=None),
        journal("Invalid user a from 192.0.2.1 port 3", identifier=["x"], _COMM=[1, 2]),
        journal("Invalid user a from 192.0.2.1 port 3", identifier="kernel"),
        journal("Server listening on :: port 22."),
    ],
)
def test_journal_entries_without_a_record(entry: dict[str, Any]) -> None:
    assert parse_journal_entry(entry) is None


def test_journal_entry_that_is_not_a_mapping() -> None:
    entries: tuple[Any, ...] = (None, [], "MESSAGE", 42)
    for entry in entries:
        assert parse_journal_entry(entry) is None


# --- garbage ------------------------------------------------------------------------------


def _garbage() -> list[str]:
    rng = random.Random(4)
    noise = bytes(rng.randrange(256) for _ in range(2000))
    good = f"Nov 27 10:15:01 {SSH_FAIL}"
    return [
        "",
        "\n",
        "   ",
        "\x00",
        "\x00" * 4096,
        noise.decode("latin-1"),
        noise.decode("utf-8", errors="replace"),
        "\ufffd" * 200,
        "Nov 27 10:15:01 host sshd[1]: \ufffd\ufffd\ufffd\ufffd",
        "\ufffd\ufffd\ufffd 27 10:15:01 host sshd[1]: Invalid user a from 192.0.2.1 port 3",
        good[:40],  # truncated mid-line
        good[:-12],
        "Nov 27 10:1",
        "Nov 27",
        "Nov 27 10:15:01 host sshd[1]:",
        "Nov 27 10:15:01 host sshd[1]: Failed password for root from",
        "Nov 27 10:15:01 host sshd[1]: Failed password for root from 203.0.113.5 port",
        good[:20] + "\x00" + good[20:],  # a NUL inside
        good + "\x00",
        good.replace("sshd", "ss\x00hd"),
        f"Nov 27 10:15:01 host sshd[1]: Failed password for {'a' * 100_000} from 192.0.2.1 "
        "port 22 ssh2",
        "x" * 100_000,
        "Nov 27 10:15:01 host sudo: alice : TTY=pts/0 ; COMMAND=/bin/" + "a" * MAX_LINE,
        "\x1b[31mNov 27 10:15:01 host sshd[1]: Invalid user a from 192.0.2.1 port 3\x1b[0m",
        # Looks like sshd, but the address is malformed.
        "Nov 27 10:15:01 host sshd[1]: Failed password for root from 999.1.2.3 port 22 ssh2",
        "Nov 27 10:15:01 host sshd[1]: Failed password for root from 203.0.113 port 22 ssh2",
        "Nov 27 10:15:01 host sshd[1]: Failed password for root from 2001:db8:::1 port 22 ssh2",
        "Nov 27 10:15:01 host sshd[1]: Failed password for root from 2001:db8::g port 22 ssh2",
        "Nov 27 10:15:01 host sshd[1]: Failed password for root from -bad-.host port 22 ssh2",
        "Nov 27 10:15:01 host sshd[1]: Failed password for root from 203.0.113.5 port 99999 ssh2",
        "Nov 27 10:15:01 host sshd[1]: Failed password for root from 203.0.113.5 port 0000001 ssh2",
        "Nov 27 10:15:01 host sshd[1]: Accepted publickey for alice from [::1] port 22 ssh2",
        "Nov 27 10:15:01 host sshd[1]: Invalid user a from 203.0.113.5\ufffd port 22",
        "Nov 27 10:15:01 host sshd[1]: Invalid user a from  port 22",
    ]


@pytest.mark.parametrize("line", _garbage(), ids=range(len(_garbage())))
def test_garbage_gives_none(line: str) -> None:
    with no_swallowed_errors():
        assert parse(line) is None


def test_nul_bytes_left_by_a_crash_before_a_line_are_skipped() -> None:
    # After an unclean shutdown the file can hold a run of NULs, then the next line.
    line = "\x00" * 512 + f"Nov 27 10:15:01 {SSH_FAIL}"
    assert parse(line) == rec("failed_password", "root", "192.0.2.1", method="password", port="22")


def test_replacement_characters_in_a_user_name_are_kept() -> None:
    # A user name that was not UTF-8 must not hide a failed login.
    record = parse(
        "Nov 27 10:15:01 host sshd[1]: Failed password for invalid user \ufffd\ufffdroot from "
        "203.0.113.5 port 22 ssh2"
    )
    assert record is not None
    assert record.user == "\ufffd\ufffdroot"


def test_crlf_line_end() -> None:
    assert parse(f"Nov 27 10:15:01 {SSH_FAIL}\r\n") is not None


def test_long_fields_are_cut() -> None:
    record = parse_message("sshd", f"Invalid user {'u' * 5000} from 192.0.2.1 port 3", T)
    assert record is not None
    assert len(record.user) == authlog.MAX_FIELD


# --- never raises -------------------------------------------------------------------------


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def no_swallowed_errors() -> Iterator[None]:
    """Fail if the parsers' last-resort ``except`` caught anything: it is for crafted input
    nobody thought of, not for the input the tests know about."""
    log = logging.getLogger(authlog.__name__)
    handler = _Collect()
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert [r for r in handler.records if r.exc_info] == []


PREFIXES = [
    "Nov 27 10:15:01 host sshd[1]: ",
    "Feb 29 23:59:59 host sudo: ",
    "2024-05-01T10:15:01.123456+08:00 host su[2]: ",
    "Nov 27 10:15:01 host useradd[3]: ",
    "Nov 27 10:15:01 host sshd[1]: Failed password for ",
    "Nov 27 10:15:01 host sshd[1]: message repeated 3 times: [ ",
    "Nov 27 10:15:01 host login[4]: ROOT LOGIN ",
    "Nov 27 10:15:01 host sudo: alice : ",
]
FRAGMENTS = [
    " from ",
    " port ",
    " ssh2",
    ": ",
    " ; ",
    "COMMAND=",
    "USER=",
    "invalid user ",
    "'",
    "(to ",
    ") ",
    " on ",
    "2001:db8::1",
    "203.0.113.5",
    "65536",
    "\x00",
    "\ufffd",
    "]",
    "[",
]
line_text = st.one_of(
    st.text(),
    st.builds(
        lambda prefix, parts: prefix + "".join(parts),
        st.sampled_from(PREFIXES),
        st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=12),
    ),
)


@settings(max_examples=400, deadline=None, database=None)
@given(line=line_text, now=st.floats(allow_nan=True, allow_infinity=True))
def test_parse_line_never_raises(line: str, now: float) -> None:
    with no_swallowed_errors():
        record = parse_line(line, now)
    assert record is None or record.kind in RECORD_KINDS


@settings(max_examples=200, deadline=None, database=None)
@given(
    entry=st.dictionaries(
        st.sampled_from(["MESSAGE", "SYSLOG_IDENTIFIER", "_COMM", "__REALTIME_TIMESTAMP"]),
        st.one_of(
            st.text(),
            st.integers(),
            st.none(),
            st.lists(st.integers(min_value=-2, max_value=300), max_size=20),
            st.sampled_from(["sshd", "sudo", "su", "useradd", "1732702501123456"]),
        ),
    )
)
def test_parse_journal_entry_never_raises(entry: dict[str, Any]) -> None:
    with no_swallowed_errors():
        record = parse_journal_entry(entry)
    assert record is None or record.kind in RECORD_KINDS

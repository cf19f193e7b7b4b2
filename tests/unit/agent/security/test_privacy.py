"""Tests for agent/security/privacy.py."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path

import pytest

from agent.security.privacy import Pseudonymiser, load_secret
from outpost.wire import Event

SECRET = b"0123456789abcdef0123456789abcdef"
ANON = re.compile(r"^anon-[0-9a-f]{12}$")


@pytest.fixture
def anon() -> Pseudonymiser:
    return Pseudonymiser(SECRET)


def test_value_is_a_keyed_hmac(anon: Pseudonymiser) -> None:
    expected = hmac.new(SECRET, b"alice", hashlib.sha256).hexdigest()[:12]
    assert anon.value("alice") == f"anon-{expected}"
    assert ANON.match(anon.value("203.0.113.7"))


def test_value_is_stable(anon: Pseudonymiser) -> None:
    assert anon.value("alice") == anon.value("alice") == Pseudonymiser(SECRET).value("alice")
    assert anon.value("alice") != anon.value("bob")


def test_a_different_secret_gives_a_different_pseudonym(anon: Pseudonymiser) -> None:
    assert Pseudonymiser(b"another secret entirely").value("alice") != anon.value("alice")


def test_empty_stays_empty(anon: Pseudonymiser) -> None:
    assert anon.value("") == ""


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        Pseudonymiser(b"")


def test_event_pseudonymises_personal_attrs_only(anon: Pseudonymiser) -> None:
    event = Event(
        "sudo",
        "info",
        1_700_000_000_000,
        "",
        {
            "user": "alice",
            "run_as": "root",
            "target_user": "bob",
            "source": "2001:db8::1",
            "command": "/usr/bin/apt",
            "tty": "pts/0",
            "method": "publickey",
            "port": "51234",
            "count": "3",
        },
    )
    out = anon.event(event)
    assert out.attrs == {
        "user": anon.value("alice"),
        "run_as": anon.value("root"),
        "target_user": anon.value("bob"),
        "source": anon.value("2001:db8::1"),
        "command": "/usr/bin/apt",
        "tty": "pts/0",
        "method": "publickey",
        "port": "51234",
        "count": "3",
    }
    assert (out.kind, out.severity, out.ts, out.message) == (
        event.kind,
        event.severity,
        event.ts,
        event.message,
    )
    assert event.attrs["user"] == "alice"  # the original is not changed


def test_comma_lists_keep_their_plus_more_suffix(anon: Pseudonymiser) -> None:
    event = Event(
        "ssh_login_failed",
        "warning",
        attrs={"users": "root,admin,oracle,+3 more", "sources": "192.0.2.1,192.0.2.2"},
    )
    out = anon.event(event).attrs
    a, b, c = (anon.value(n) for n in ("root", "admin", "oracle"))
    assert out["users"] == f"{a},{b},{c},+3 more"
    assert out["sources"] == f"{anon.value('192.0.2.1')},{anon.value('192.0.2.2')}"


def test_comma_lists_in_other_spellings(anon: Pseudonymiser) -> None:
    a, b = anon.value("root"), anon.value("admin")
    assert anon.event(Event("x", attrs={"users": "root, admin +12 more"})).attrs["users"] == (
        f"{a}, {b} +12 more"
    )
    assert anon.event(Event("x", attrs={"users": "root,admin +2 more"})).attrs["users"] == (
        f"{a},{b} +2 more"
    )
    assert anon.event(Event("x", attrs={"users": "root"})).attrs["users"] == a
    assert anon.event(Event("x", attrs={"users": ""})).attrs["users"] == ""


def test_cron_spool_paths_lose_the_user_name(anon: Pseudonymiser) -> None:
    def path(value: str) -> str:
        return anon.event(Event("file_changed", "warning", attrs={"path": value})).attrs["path"]

    assert path("/var/spool/cron/crontabs/alice") == (
        f"/var/spool/cron/crontabs/{anon.value('alice')}"
    )
    assert path("/var/spool/cron/alice") == f"/var/spool/cron/{anon.value('alice')}"
    assert path("/var/spool/cron/crontabs") == "/var/spool/cron/crontabs"
    assert path("/etc/cron.d/backup") == "/etc/cron.d/backup"
    assert path("/etc/passwd") == "/etc/passwd"


def test_home_directory_loses_the_user_name(anon: Pseudonymiser) -> None:
    attrs = {"user": "bob", "uid": "1001", "gid": "1001", "home": "/home/bob", "shell": "/bin/sh"}
    out = anon.event(Event("user_added", "warning", attrs=attrs)).attrs
    assert out["home"] == f"/home/{anon.value('bob')}"
    assert (out["uid"], out["gid"], out["shell"]) == ("1001", "1001", "/bin/sh")
    root = anon.event(Event("user_added", "warning", attrs={"home": "/root"})).attrs
    assert root["home"] == "/root"


def test_file_event_attrs_other_than_the_path_are_untouched(anon: Pseudonymiser) -> None:
    attrs = {
        "path": "/etc/shadow",
        "change": "content,mode",
        "mode_before": "0640",
        "mode_after": "0644",
        "owner_before": "0:42",
        "owner_after": "0:42",
    }
    assert anon.event(Event("file_changed", "warning", attrs=attrs)).attrs == attrs


# --- load_secret --------------------------------------------------------------------------


def _secret_file(tmp_path: Path, content: bytes, mode: int = 0o600) -> str:
    path = tmp_path / "privacy.key"
    path.write_bytes(content)
    path.chmod(mode)
    return str(path)


def test_load_secret_reads_and_strips(tmp_path: Path) -> None:
    assert load_secret(_secret_file(tmp_path, SECRET + b"\n")) == SECRET


def test_load_secret_allows_a_group_readable_file(tmp_path: Path) -> None:
    assert load_secret(_secret_file(tmp_path, SECRET, 0o640)) == SECRET


def test_load_secret_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_secret(str(tmp_path / "nope.key"))


def test_load_secret_empty(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is empty"):
        load_secret(_secret_file(tmp_path, b" \n"))


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602, 0o666])
def test_load_secret_world_accessible_says_to_chmod_600(tmp_path: Path, mode: int) -> None:
    path = _secret_file(tmp_path, SECRET, mode)
    with pytest.raises(ValueError, match=re.escape(f"chmod 600 {path}")) as info:
        load_secret(path)
    assert f"{mode:04o}" in str(info.value)


def test_load_secret_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a regular file"):
        load_secret(str(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_load_secret_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        load_secret(_secret_file(tmp_path, SECRET, 0o200))


def test_load_secret_short_is_accepted_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert load_secret(_secret_file(tmp_path, b"short")) == b"short"
    assert "only 5 bytes" in caplog.text

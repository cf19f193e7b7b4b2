"""Enrolment: the mosquitto password hash, the password and ACL files, idempotence, revocation,
the config fragment, and the fleet CA. (The real mosquitto accepting all of it is in
tests/integration/test_enrolment.py.)"""

from __future__ import annotations

import base64
import datetime as dt
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.config import AgentConfig
from collector import ca
from collector import enroll as en
from collector.config import CollectorConfig
from outpost.config import validate

NOW = dt.datetime(2026, 11, 27, 8, 0, tzinfo=dt.UTC)
A = en.agent_identity("chengguan-town", "srv1")
C = en.collector_identity()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the hash --------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="needs mosquitto_passwd")
def test_the_hash_is_what_mosquitto_passwd_makes(tmp_path: Path) -> None:
    pwfile = tmp_path / "passwd"
    pwfile.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(pwfile), "u1", "s3cret-ü"], check=True)
    theirs = pwfile.read_text().strip().split(":", 1)[1]
    _, seven, iterations, salt, _digest = theirs.split("$")
    ours = en.hash_password("s3cret-ü", base64.b64decode(salt), int(iterations))
    assert seven == "7" and ours == theirs
    assert en.check_password("s3cret-ü", theirs)


def test_the_hash_format_and_check() -> None:
    hashed = en.hash_password("pw")
    assert re.fullmatch(r"\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==", hashed), hashed
    assert en.hash_password("pw") != hashed  # a new salt each time
    assert en.check_password("pw", hashed)
    assert not en.check_password("pw2", hashed)
    for bad in ("", "$6$abc$def", "$7$x$AA==$AA==", "$7$101$!!$AA=="):
        assert not en.check_password("pw", bad)


def test_passwords_are_long_random_and_plain() -> None:
    passwords = {en.new_password() for _ in range(100)}
    assert len(passwords) == 100
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43}", p) for p in passwords)


# --- identities -------------------------------------------------------------------------------


def test_user_names_are_slugs() -> None:
    assert A.username == "chengguan-town--srv1" and A.key == ("agent", "chengguan-town", "srv1")
    assert C.username == "outpost-collector" and C.key == ("collector", "outpost-collector")
    assert en.agent_identity("s", "h", "custom").username == "custom"
    for site, host, user in (
        ("Site", "h", None),
        ("s/x", "h", None),
        ("s", "h+", None),
        ("s", "#", None),
        ("s" * 40, "h" * 40, None),  # too long together
        ("s", "h", "s.h"),
        ("s", "h", "s/h"),
    ):
        with pytest.raises(en.EnrolError):
            en.agent_identity(site, host, user)
    with pytest.raises(en.EnrolError, match="--username"):
        en.agent_identity("s" * 40, "h" * 40)


# --- the password file ------------------------------------------------------------------------


def test_set_password_keeps_one_entry_in_place_and_other_lines() -> None:
    text = "# kept\nother:$7$1$AA==$AA==\nchengguan-town--srv1:old\nlast:x\n"
    out = en.set_password(text, A.username, "NEW")
    assert out == "# kept\nother:$7$1$AA==$AA==\nchengguan-town--srv1:NEW\nlast:x\n"
    twice = en.set_password(out + "chengguan-town--srv1:dup\n", A.username, "NEWER")
    assert twice.count("chengguan-town--srv1:") == 1 and "NEWER" in twice
    assert en.set_password("", "u", "H") == "u:H\n"
    assert en.remove_password(out, A.username) == "# kept\nother:$7$1$AA==$AA==\nlast:x\n"
    assert en.remove_password("u:H\n", "u") == ""


# --- the ACL file ------------------------------------------------------------------------------


def test_acl_blocks() -> None:
    assert en.acl_block(A) == [
        "user chengguan-town--srv1",
        "# outpost: agent site=chengguan-town host=srv1",
        "topic write outpost/v1/chengguan-town/srv1/status",
        "topic write outpost/v1/chengguan-town/srv1/metrics",
        "topic write outpost/v1/chengguan-town/srv1/events",
        "topic read outpost/v1/chengguan-town/srv1/ack",
    ]
    assert en.acl_block(C, "county-7") == [
        "user outpost-collector",
        "# outpost: collector outpost-collector",
        "topic read county-7/v1/#",
        "topic write county-7/v1/+/+/ack",
    ]
    with pytest.raises(en.EnrolError):
        en.acl_block(A, "bad/prefix")


def test_set_acl_is_idempotent_and_keeps_foreign_blocks() -> None:
    foreign = "# operator's own\nuser grafana\ntopic read $SYS/#\n"
    first, replaced = en.set_acl(foreign, A)
    assert replaced == []
    assert first.startswith(foreign.rstrip("\n") + "\n\nuser chengguan-town--srv1\n")
    again, replaced = en.set_acl(first, A)
    assert again == first and replaced == ["chengguan-town--srv1"]
    both, _ = en.set_acl(again, C)
    b = en.agent_identity("hongqi-village", "nas")
    three, _ = en.set_acl(both, b)
    # Re-enrolling the first keeps its place, and every other block as it was.
    redone, replaced = en.set_acl(three, A)
    assert redone == three and replaced == [A.username]
    assert redone.count("user ") == 4 and "topic read $SYS/#" in redone


def test_a_new_acl_file_explains_itself() -> None:
    text, _ = en.set_acl("", A)
    assert text.startswith("# mosquitto ACL for Outpost")
    assert "pattern" not in "\n".join(
        line for line in text.splitlines() if not line.startswith("#")
    )


def test_set_acl_refuses_a_name_that_belongs_to_someone_else() -> None:
    text, _ = en.set_acl("", en.agent_identity("a--b", "c"))  # user a--b--c
    with pytest.raises(en.EnrolError, match="agent a--b/c"):
        en.set_acl(text, en.agent_identity("a", "b--c"))  # would also be a--b--c
    assert en.set_acl(text, en.agent_identity("a", "b--c", "a-bc"))[1] == []
    with pytest.raises(en.EnrolError, match="not kept by"):
        en.set_acl("user outpost-collector\ntopic read #\n", C)


def test_a_new_user_name_replaces_the_old_block() -> None:
    text, _ = en.set_acl("", A)
    renamed, replaced = en.set_acl(text, en.agent_identity("chengguan-town", "srv1", "cg-srv1"))
    assert replaced == ["chengguan-town--srv1"]
    assert "user cg-srv1" in renamed and "user chengguan-town--srv1" not in renamed


def test_remove_acl() -> None:
    text, _ = en.set_acl("user grafana\ntopic read x\n", A)
    text, _ = en.set_acl(text, C)
    out, removed = en.remove_acl(text, A.key)
    assert removed == [A.username] and "chengguan-town" not in out
    assert "user grafana" in out and "user outpost-collector" in out
    assert en.remove_acl(out, A.key) == (out, [])


def test_comments_above_a_user_line_stay_with_it() -> None:
    text, _ = en.set_acl("", A)
    text += "\n# Grafana's broker panel\nuser grafana\ntopic read $SYS/#\n"
    out, _ = en.remove_acl(text, A.key)
    header, _ = en.set_acl("", C)
    header = header.split("\n\n")[0]
    assert out == f"{header}\n\n# Grafana's broker panel\nuser grafana\ntopic read $SYS/#\n"
    again, _ = en.set_acl(text, A)
    assert again == text


# --- the fragment ------------------------------------------------------------------------------


def test_the_agent_fragment_is_a_valid_agent_config() -> None:
    text = en.fragment(A, "mqtts://broker.example:8883", "/etc/outpost", cert=True, password="PW")
    cfg = validate(yaml.safe_load(text), AgentConfig, "fragment")
    assert (cfg.site, cfg.host) == ("chengguan-town", "srv1")
    assert cfg.broker.username == "chengguan-town--srv1"
    assert cfg.broker.password_file == "/etc/outpost/agent.password"
    assert cfg.broker.password is None
    assert cfg.broker.tls.ca_file == "/etc/outpost/ca.crt"
    assert cfg.broker.tls.cert_file == "/etc/outpost/agent.crt"
    assert cfg.broker.tls.key_file == "/etc/outpost/agent.key"
    assert "#   PW\n" in text  # a comment, only when asked


def test_the_collector_fragment_is_a_valid_collector_config() -> None:
    text = en.fragment(C, "mqtts://10.0.0.5:8883", "/opt/o t", ca_file=False)
    cfg = validate(yaml.safe_load(text), CollectorConfig, "fragment")
    assert cfg.broker.username == "outpost-collector"
    assert cfg.broker.password_file == "/opt/o t/collector.password"
    assert cfg.broker.tls.ca_file is None


# --- the files -------------------------------------------------------------------------------


@pytest.fixture
def cadir(tmp_path: Path) -> Path:
    d = tmp_path / "outpost"
    ca.init_ca(d, ["broker.example", "10.0.0.5"], NOW)
    return d


def _entries(d: Path) -> dict[str, str]:
    lines = (d / en.PASSWORD_FILE).read_text().splitlines()
    return dict(line.split(":", 1) for line in lines)


def test_enroll_writes_both_files_and_rotates(cadir: Path) -> None:
    first = en.enroll(cadir, A, NOW)
    assert first.broker_url == "mqtts://broker.example:8883" and not first.rotated
    assert en.check_password(first.password, _entries(cadir)[A.username])
    assert _mode(cadir / "passwd") == 0o640 and _mode(cadir / "acl") == 0o640
    acl = (cadir / "acl").read_text()
    second = en.enroll(cadir, A, NOW)
    assert second.rotated and second.password != first.password
    entries = _entries(cadir)
    assert list(entries) == [A.username]
    assert en.check_password(second.password, entries[A.username])
    assert not en.check_password(first.password, entries[A.username])
    assert (cadir / "acl").read_text() == acl
    assert first.password not in (cadir / "passwd").read_text() + acl


def test_enroll_with_a_client_certificate(cadir: Path, tmp_path: Path) -> None:
    done = en.enroll(cadir, A, NOW, cert=True, cert_dir=tmp_path / "out")
    assert done.cert_files == (tmp_path / "out" / "agent.crt", tmp_path / "out" / "agent.key")
    assert _mode(done.cert_files[1]) == 0o600
    cert = x509.load_pem_x509_certificate(done.cert_files[0].read_bytes())
    fleet = ca.load_ca(cadir)
    cert.verify_directly_issued_by(fleet.cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == A.username
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    default = en.enroll(cadir, C, NOW, cert=True)
    assert default.cert_files is not None
    assert default.cert_files[0] == cadir / "clients" / "outpost-collector" / "collector.crt"


def test_enroll_refuses_what_it_cannot_do(tmp_path: Path, cadir: Path) -> None:
    with pytest.raises(ca.CaError, match="ca init"):
        en.enroll(tmp_path / "empty", A, NOW, cert=True, broker_url="mqtts://b:8883")
    with pytest.raises(en.EnrolError, match="--broker-url"):
        en.enroll(tmp_path / "empty", A, NOW)
    with pytest.raises(en.EnrolError, match="mqtts://"):
        en.enroll(cadir, A, NOW, broker_url="mqtt://broker.example:1883")
    (cadir / "passwd").write_text("outpost-collector:$7$101$AA==$AA==\n")
    with pytest.raises(en.EnrolError, match="mosquitto_passwd -D"):
        en.enroll(cadir, C, NOW)
    assert not (cadir / "acl").exists()  # nothing written


def test_revoke(cadir: Path) -> None:
    en.enroll(cadir, A, NOW)
    b = en.agent_identity("hongqi-village", "nas")
    kept = en.enroll(cadir, b, NOW)
    assert en.revoke(cadir, A.key) == [A.username]
    assert list(_entries(cadir)) == [b.username]
    assert en.check_password(kept.password, _entries(cadir)[b.username])
    assert "chengguan-town" not in (cadir / "acl").read_text()
    with pytest.raises(en.NotEnrolled):
        en.revoke(cadir, A.key)


def test_write_atomic_sets_the_mode_and_keeps_the_group(tmp_path: Path) -> None:
    path = tmp_path / "f"
    old = os.umask(0o077)
    try:
        ca.write_atomic(path, b"one", 0o640)
    finally:
        os.umask(old)
    assert _mode(path) == 0o640 and path.read_bytes() == b"one"
    if os.geteuid() == 0:
        os.chown(path, -1, 4321)
        ca.write_atomic(path, b"two", 0o640)
        assert path.stat().st_gid == 4321 and path.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


# --- the CA -------------------------------------------------------------------------------------


def test_init_ca_creates_and_then_keeps(tmp_path: Path) -> None:
    d = tmp_path / "o"
    first = ca.init_ca(d, ["Broker.Example", "10.0.0.5"], NOW)
    assert first.created_ca and first.issued_server
    assert _mode(d / "ca.key") == 0o600 and _mode(d / "server.key") == 0o640
    assert _mode(d / "ca.crt") == 0o644 and _mode(d / "server.crt") == 0o644
    server = x509.load_pem_x509_certificate((d / "server.crt").read_bytes())
    fleet = ca.load_ca(d)
    server.verify_directly_issued_by(fleet.cert)
    assert ca.names_of(server) == ["broker.example", "10.0.0.5"]
    assert server.not_valid_before_utc < NOW  # back-dated for hosts with slow clocks
    constraints = fleet.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0

    again = ca.init_ca(d, ["10.0.0.5", "broker.example"], NOW)
    assert not again.created_ca and not again.issued_server
    assert (d / "server.crt").read_bytes() == server.public_bytes(serialization.Encoding.PEM)
    ca_pem = (d / "ca.crt").read_bytes()
    renamed = ca.init_ca(d, ["broker.example", "broker2.example"], NOW)
    assert renamed.issued_server and (d / "ca.crt").read_bytes() == ca_pem
    late = ca.init_ca(d, ["broker.example", "broker2.example"], NOW + dt.timedelta(days=800))
    assert late.issued_server  # within 30 days of its end


def test_init_ca_refuses_bad_names_and_half_a_ca(tmp_path: Path) -> None:
    for bad in ([], ["under_score.example"], ["-x.example"], ["a b"]):
        with pytest.raises(ca.CaError):
            ca.init_ca(tmp_path / "o", bad, NOW)
    ca.init_ca(tmp_path / "o", ["b.example"], NOW)
    (tmp_path / "o" / "ca.key").unlink()
    with pytest.raises(ca.CaError, match="only one of"):
        ca.init_ca(tmp_path / "o", ["b.example"], NOW)


def test_the_default_broker_url_skips_ipv6(tmp_path: Path) -> None:
    ca.init_ca(tmp_path, ["::1", "10.0.0.5"], NOW)
    assert en.default_broker_url(tmp_path) == "mqtts://10.0.0.5:8883"
    ca.init_ca(tmp_path / "v6", ["::1"], NOW)
    with pytest.raises(en.EnrolError, match="--broker-url"):
        en.default_broker_url(tmp_path / "v6")

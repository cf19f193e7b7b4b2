"""The agent and collector over TLS with passwords, against a mosquitto that allows no
anonymous clients."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from harness import MOSQUITTO, Procs, free_port, wait_for

pytestmark = pytest.mark.integration


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_pki(d: Path) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", "server.key", "-out", "server.csr", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt",
             cwd=d)  # fmt: skip


def test_tls_and_passwords(procs: Procs, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    _make_pki(pki)
    pw = tmp_path / "passwd"
    pw.touch()
    for user, secret in (("collector", "c-secret"), ("site-t-srv1", "a-secret")):
        subprocess.run(["mosquitto_passwd", "-b", str(pw), user, secret], check=True)
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {pw}\n"
        f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\nkeyfile {pki / 'server.key'}\n"
        + ("user root\n" if os.geteuid() == 0 else "")
    )
    procs.start("mosquitto", [MOSQUITTO, "-c", str(conf)])
    (tmp_path / "c.pw").write_text("c-secret\n")
    (tmp_path / "a.pw").write_text("a-secret\n")
    (tmp_path / "bad.pw").write_text("wrong\n")
    hport = free_port()
    url = f"mqtts://127.0.0.1:{port}"
    ca = pki / "ca.crt"
    for name, pwfile, user in (
        ("collector", "c.pw", "collector"),
        ("agent", "a.pw", "site-t-srv1"),
    ):
        (tmp_path / f"{name}.yaml").write_text(
            f"broker:\n  username: {user}\n  password_file: {tmp_path / pwfile}\n"
            f"  tls:\n    ca_file: {ca}\n"
            + ("site: site-t\nhost: srv1\n" if name == "agent" else "")
        )
    procs.outpost("collector", "collector", "run", "--config", str(tmp_path / "collector.yaml"),
                  "--broker", url, "--listen", f"127.0.0.1:{hport}",
                  "--state-dir", str(tmp_path / "c"), "-v")  # fmt: skip
    # The collector's session must exist before the agent's first publish, or that batch
    # waits for the agent's resend timeout (60 s).
    wait_for("the collector's broker session", lambda: _healthy(hport), 30)
    procs.outpost("agent", "agent", "run", "--config", str(tmp_path / "agent.yaml"),
                  "--broker", url, "--state-dir", str(tmp_path / "a"), "--interval", "0.5",
                  "-v")  # fmt: skip

    import json
    import urllib.request

    def settled() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{hport}/api/v1/hosts", timeout=2) as r:
            hosts = json.load(r)["hosts"]
        return any(h["host"] == "srv1" and (h["settled_upto"] or 0) >= 2 for h in hosts)

    wait_for("the agent's batches acked over TLS", settled, 30)

    # A wrong password is refused: that agent never shows up, and says why in its log.
    (tmp_path / "intruder.yaml").write_text(f"broker:\n  tls:\n    ca_file: {ca}\n")
    intruder = procs.outpost(
        "agent", "agent", "run", "--config", str(tmp_path / "intruder.yaml"),
        "--site", "site-t", "--host", "srv9", "--broker", url, "--username", "site-t-srv1",
        "--password-file", str(tmp_path / "bad.pw"), "--state-dir", str(tmp_path / "x"),
    )  # fmt: skip
    wait_for("the refusal in the intruder's log", lambda: "refused" in intruder.output(), 20)
    # Without the CA, TLS itself fails, and the agent says what to check.
    stranger = procs.outpost(
        "agent", "agent", "run", "--site", "site-t", "--host", "srv8", "--broker", url,
        "--state-dir", str(tmp_path / "y"),
    )  # fmt: skip
    wait_for("the TLS failure in the log", lambda: "TLS CA" in stranger.output(), 20)
    with urllib.request.urlopen(f"http://127.0.0.1:{hport}/api/v1/hosts", timeout=2) as r:
        assert all(h["host"] != "srv9" for h in json.load(r)["hosts"])
    for proc in procs.all:
        assert "secret" not in proc.output()


def _healthy(port: int) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False

"""Helpers for integration tests: real processes on loopback (mosquitto and the outpost
commands), each stopped by its PID when the test ends, passed or failed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class Proc:
    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None):
        self.name = name
        self.argv = argv
        self.log = log
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        out = open(self.log, "ab")  # noqa: SIM115 - closed below; the child keeps its copy
        self.popen = subprocess.Popen(
            self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.env, start_new_session=True,
        )  # fmt: skip
        out.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait()
        return self.popen.returncode

    def kill9(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Mosquitto:
    def __init__(self, procs: Procs, root: Path):
        self.procs = procs
        self.port = free_port()
        self.root = root
        (root / "data").mkdir(parents=True, exist_ok=True)
        self.conf = root / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {root / 'data'}/\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            # As root, mosquitto would drop to its own user, which cannot write here.
            + ("user root\n" if os.geteuid() == 0 else "")
        )
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        self.proc = self.procs.start("mosquitto", [MOSQUITTO, "-c", str(self.conf)])
        wait_for("mosquitto to listen", lambda: _accepts(self.port), 10)
        return self

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.stop()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill9()


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Procs:
    """Every process a test starts; all stopped at teardown."""

    def __init__(self, root: Path):
        self.root = root
        self.all: list[Proc] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.root / f"{name}-{len(self.all)}.log"
        proc = Proc(name, argv, log, {**os.environ, **env} if env else None).start()
        self.all.append(proc)
        return proc

    def outpost(self, name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        return self.start(name, [sys.executable, "-m", "outpost", *args], env)

    def stop_all(self) -> None:
        for proc in reversed(self.all):
            with contextlib.suppress(ProcessLookupError):
                proc.stop(timeout=5)


class Collector:
    def __init__(self, procs: Procs, broker: Mosquitto, root: Path, *extra: str):
        self.procs = procs
        self.broker = broker
        self.port = free_port()
        self.state = root / "collector"
        self.extra = extra
        self.proc: Proc | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Collector:
        self.proc = self.procs.outpost(
            "collector", "collector", "run", "--broker", self.broker.url,
            "--listen", f"127.0.0.1:{self.port}", "--state-dir", str(self.state), "-v",
            *self.extra,
        )  # fmt: skip
        wait_for("the collector's /healthz", lambda: self.get("/healthz")[0] == 200, 20)
        return self

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        status, body = self.get("/metrics")
        assert status == 200
        out = {}
        for fam in text_string_to_metric_families(body.decode()):
            for s in fam.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    def value(self, name: str, **labels: str) -> float | None:
        return self.metrics().get((name, frozenset(labels.items())))

    def hosts(self) -> dict[tuple[str, str], dict[str, Any]]:
        status, body = self.get("/api/v1/hosts")
        assert status == 200
        return {(h["site"], h["host"]): h for h in json.loads(body)["hosts"]}


class Agent:
    def __init__(self, procs: Procs, broker: Mosquitto, root: Path, site: str, host: str,
                 interval: float = 0.5, *extra: str):  # fmt: skip
        self.procs = procs
        self.broker = broker
        self.site, self.host = site, host
        self.state = root / f"agent-{site}-{host}"
        self.interval = interval
        self.extra = extra
        self.env: dict[str, str] | None = None
        self.proc: Proc | None = None

    def start(self) -> Agent:
        self.proc = self.procs.outpost(
            "agent", "agent", "run", "--broker", self.broker.url, "--site", self.site,
            "--host", self.host, "--state-dir", str(self.state),
            "--interval", str(self.interval), "-v", *self.extra, env=self.env,
        )  # fmt: skip
        return self

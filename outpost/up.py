"""``outpost up``: the embedded default. A broker, a collector and a local agent on one machine,
with no set-up, until Ctrl-C.

mosquitto is used when it is on PATH (MQTT 5); otherwise the pure-Python amqtt broker, which
speaks only MQTT 3.1.1, so the collector and agent are told to use 3.1.1 with persistent
sessions. Everything listens on loopback; the broker allows anonymous clients, which is why
this is a demo and not a deployment (see docs/operations.md).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Annotated, Optional

import typer

from outpost.runtime import EXIT_FAILURE, stop_event

__all__ = ["app"]

app = typer.Typer(add_completion=False, rich_markup_mode=None)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pick(port: int) -> int:
    return port if port and _port_free(port) else _free_port()


def _slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63]
    return s or "localhost"


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "outpost" / "up"


def _wait_port(port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def _healthy(url: str, deadline: float, proc: subprocess.Popen[bytes]) -> bool:
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


class _Children:
    """The processes ``up`` started, stopped in reverse order by PID."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        self.procs.append((name, proc))
        return proc

    def exited(self) -> tuple[str, int] | None:
        for name, proc in self.procs:
            code = proc.poll()
            if code is not None:
                return name, code
        return None

    def stop_all(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@app.command()
def up(
    state_dir: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Where the demo keeps its outbox, collector state and logs."),
    ] = None,
    broker_port: Annotated[
        int, typer.Option(help="Broker port on 127.0.0.1 (a free one if taken).")
    ] = 1883,
    http_port: Annotated[
        int, typer.Option(help="Collector HTTP port on 127.0.0.1 (a free one if taken).")
    ] = 9468,
    site: Annotated[str, typer.Option(help="Site slug for the local agent.")] = "local",
    host: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Host slug for the local agent (default: this machine's name)."),
    ] = None,
    interval: Annotated[float, typer.Option(help="Seconds between collections.")] = 5.0,
    embedded: Annotated[
        bool, typer.Option(help="Use the embedded Python broker even if mosquitto is installed.")
    ] = False,
) -> None:
    """Run an MQTT broker, the collector and a local agent on this machine until Ctrl-C.

    Uses mosquitto when it is installed, otherwise the embedded amqtt broker (MQTT 3.1.1).
    Prints where /metrics and the API are. Loopback only; for a demo, not a deployment.
    """
    state = state_dir or _default_state_dir()
    (state / "logs").mkdir(parents=True, exist_ok=True)
    host = host or _slug(socket.gethostname())
    bport, hport = _pick(broker_port), _pick(http_port)
    stop = stop_event()
    children = _Children(state / "logs")
    mosquitto = None if embedded else shutil.which("mosquitto")
    if mosquitto:
        conf = state / "mosquitto.conf"
        (state / "broker").mkdir(exist_ok=True)
        conf.write_text(
            "# written by outpost up: a loopback-only demo broker\n"
            f"listener {bport} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {state / 'broker'}/\n"
            # As root, mosquitto would drop to its own user, which cannot write the state dir.
            + ("user root\n" if os.geteuid() == 0 else "")
        )
        children.start("broker", [mosquitto, "-c", str(conf)])
        broker_desc, protocol = "mosquitto", "5"
    else:
        try:
            import amqtt  # noqa: F401
        except ImportError:
            typer.echo(
                "error: no MQTT broker: install mosquitto (apt-get install mosquitto) or the "
                "embedded one (pip install 'outpost[embedded]').",
                err=True,
            )
            raise typer.Exit(EXIT_FAILURE) from None
        children.start("broker", [sys.executable, "-m", "outpost.embedded_broker", str(bport)])
        broker_desc, protocol = "amqtt (embedded, Python)", "3.1.1"
    url = f"mqtt://127.0.0.1:{bport}"
    try:
        if not _wait_port(bport, time.monotonic() + 15):
            typer.echo(
                f"error: the broker did not start; see {state / 'logs' / 'broker.log'}", err=True
            )
            raise typer.Exit(EXIT_FAILURE)
        py = [sys.executable, "-m", "outpost"]
        collector = children.start(
            "collector",
            [*py, "collector", "run", "--broker", url, "--listen", f"127.0.0.1:{hport}",
             "--state-dir", str(state / "collector"), "--protocol", protocol, "-v"],
        )  # fmt: skip
        children.start(
            "agent",
            [*py, "agent", "run", "--broker", url, "--site", site, "--host", host,
             "--state-dir", str(state / "agent"), "--interval", str(interval),
             "--protocol", protocol, "-v"],
        )  # fmt: skip
        base = f"http://127.0.0.1:{hport}"
        if not _healthy(f"{base}/healthz", time.monotonic() + 20, collector):
            typer.echo(f"error: the collector did not come up; see {state / 'logs'}", err=True)
            raise typer.Exit(EXIT_FAILURE)
        typer.echo(
            f"Outpost is up.\n"
            f"  broker     {broker_desc}, MQTT {protocol}, {url} (loopback, anonymous: demo only)\n"
            f"  collector  metrics {base}/metrics\n"
            f"             API     {base}/api/v1/hosts   health {base}/healthz\n"
            f"  agent      site {site}, host {host}, every {interval:g} s\n"
            f"  state      {state}  (logs in {state / 'logs'})\n"
            f"See the fleet: outpost collector status --url {base}\n"
            f"Press Ctrl-C to stop."
        )
        while not stop.wait(0.5):
            gone = children.exited()
            if gone:
                name, code = gone
                typer.echo(
                    f"error: the {name} exited with code {code}; see {state / 'logs' / name}.log",
                    err=True,
                )
                raise typer.Exit(EXIT_FAILURE)
        typer.echo("Stopping...")
    finally:
        children.stop_all()
    typer.echo("Stopped.")

"""``outpost simulate``: a fleet of virtual agents against a real broker and collector.

For load and soak tests: N virtual agents, each keeping docs/protocol.md like a real agent
(outpost/simulate.py), over one MQTT connection each or C shared ones, all driven from one
thread (outpost/simulate_net.py). Prints a summary at the end; exit 0 when every batch was
acknowledged, 1 when some stayed unacknowledged after the drain, 2 for bad usage.
"""

from __future__ import annotations

import json
import logging
import random
import resource
import secrets
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

__all__ = ["app"]

log = logging.getLogger(__name__)

app = typer.Typer(add_completion=False, rich_markup_mode=None)

_HELP = """Drive N virtual agents against a broker, to load or soak-test a collector.

Each virtual agent behaves like a real one (docs/protocol.md): site/host slugs (sites
<site-prefix>-0001..., hosts host-0001...), a stable agent_id, a boot_id, its own seq, a
retained online status with a Last Will offline/lost, a batch of realistic samples every
interval, and an in-memory outbox that keeps every batch until the collector's ack covers
it: unacknowledged batches go again after a reconnect (newest first, then the backlog) or
after --resend-after seconds.

By default every agent has its own MQTT connection and Last Will, like a real fleet; all of
them are driven from one thread, and the open-files limit is raised as far as the hard limit
allows. With --connections C below N, the agents share C connections: the broker sees C
clients, and each connection's Last Will speaks for its first agent only (the others stay
online until they stop or go stale). Shared connections publish for many agents, so they
need an anonymous (demo) broker or a user allowed on all those topics; so does the default
mode with --username.

--disconnect-rate R drops connections abruptly (the socket is closed without DISCONNECT, so
the broker publishes the Last Will) R times a minute per connection, at random; each comes
back after 1 to 2 s.

After --duration (or on Ctrl-C / SIGTERM) no more batches are made; the simulator waits up to
--drain seconds for the acks of what is still held, says offline/shutdown for every agent
and disconnects. Agent ids are new on every run (seqs start at 1); --seed makes the timing,
the disconnects and the readings repeatable.

Exit codes: 0 every batch acknowledged; 1 batches still unacknowledged after the drain (or
the broker was never reached); 2 bad usage or config."""


def _broker_overrides(**flags: Any) -> dict[str, Any]:
    keys = {
        "url": "url",
        "protocol": "protocol",
        "username": "username",
        "password_file": "password_file",
        "ca_file": "tls.ca_file",
        "cert_file": "tls.cert_file",
        "key_file": "tls.key_file",
        "keepalive": "keepalive_seconds",
        "prefix": "topic_prefix",
    }
    return {keys[k]: v for k, v in flags.items() if v is not None}


PathOpt = Optional[Path]  # noqa: UP045 - typer needs Optional here


@app.command(help=_HELP)
def simulate(
    broker: Annotated[str, typer.Option(help="mqtt://HOST:PORT or mqtts://HOST:PORT.")],
    agents: Annotated[int, typer.Option(min=1, help="Virtual agents to run.")],
    interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between two batches of one agent.")
    ],
    sites: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=1, help="Sites the agents are spread over (default: one per 10)."),
    ] = None,
    duration: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(min=0, help="Seconds to run (default: until Ctrl-C or SIGTERM)."),
    ] = None,
    connections: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            min=1,
            help="MQTT connections the agents share (default: one per agent). Below --agents, "
            "Last Will is per connection only.",
        ),
    ] = None,
    disconnect_rate: Annotated[
        float,
        typer.Option(min=0, help="Abrupt disconnects per connection per minute (default 0)."),
    ] = 0.0,
    seed: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Seed for timing, disconnects and readings (default: random)."),
    ] = None,
    prefix: Annotated[str, typer.Option(help="Topic prefix, as the collector's.")] = "outpost",
    site_prefix: Annotated[
        str, typer.Option(help="Sites are named <site-prefix>-0001, -0002, ...")
    ] = "sim",
    drain: Annotated[
        float,
        typer.Option(min=0, help="Seconds to wait at the end for the acks of held batches."),
    ] = 30.0,
    resend_after: Annotated[
        float, typer.Option(min=1, help="Seconds without an ack before a batch goes again.")
    ] = 60.0,
    outbox_rows: Annotated[
        int,
        typer.Option(min=1, help="Batches one agent holds at most; past it the oldest drop."),
    ] = 360,
    protocol: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="MQTT protocol: 5 (default) or 3.1.1."),
    ] = None,
    keepalive: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="MQTT keepalive in seconds (default 10)."),
    ] = None,
    username: Annotated[Optional[str], typer.Option(help="Broker user name.")] = None,  # noqa: UP045
    password_file: Annotated[
        PathOpt, typer.Option(help="File whose first line is the broker password.")
    ] = None,
    ca_file: Annotated[PathOpt, typer.Option(help="CA certificate for mqtts://.")] = None,
    cert_file: Annotated[PathOpt, typer.Option(help="Client certificate (optional).")] = None,
    key_file: Annotated[PathOpt, typer.Option(help="Key of the client certificate.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON (with each agent).")
    ] = False,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="-v info, -vv debug.")
    ] = 0,
) -> None:
    from outpost import wire
    from outpost.connection import BrokerConfig, check_files
    from outpost.logs import setup_logging
    from outpost.runtime import EXIT_CONFIG, EXIT_FAILURE, load_or_exit, stop_event
    from outpost.simulate import (
        SampleModel,
        Tally,
        VirtualAgent,
        assign_connections,
        fleet_names,
        nofile_plan,
    )

    setup_logging("warning", "text", verbose)
    overrides = _broker_overrides(
        url=broker,
        protocol=protocol,
        username=username,
        password_file=str(password_file) if password_file else None,
        ca_file=str(ca_file) if ca_file else None,
        cert_file=str(cert_file) if cert_file else None,
        key_file=str(key_file) if key_file else None,
        keepalive=keepalive,
        prefix=prefix,
    )
    config = load_or_exit(None, BrokerConfig, overrides)
    problems = check_files(config)
    n_sites = sites if sites is not None else max(1, agents // 10)
    if not wire.is_slug(f"{site_prefix}-{n_sites:04d}"):
        problems.append(
            f"--site-prefix {site_prefix!r}: site names must be slugs (lower-case letters, "
            "digits and -, at most 63 characters)"
        )
    for problem in problems:
        typer.echo(f"error: {problem}", err=True)
    if problems:
        raise typer.Exit(EXIT_CONFIG)
    n_conns = min(connections or agents, agents)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new_soft, error = nofile_plan(n_conns + 64, soft, hard)
    if error:
        typer.echo(f"error: {n_conns} connections: {error}", err=True)
        raise typer.Exit(EXIT_CONFIG)
    if new_soft is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
        log.info("open-files limit raised from %d to %d", soft, new_soft)

    from outpost.simulate_net import Fleet

    rng = random.Random(seed)
    run_id = secrets.token_hex(4)
    tally = Tally()
    now = time.time()
    virtual = [
        VirtualAgent(
            site,
            host,
            f"sim-{run_id}-{i + 1:05d}",
            str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            SampleModel(rng, now),
            tally,
            interval=interval,
            max_rows=outbox_rows,
        )
        for i, (site, host) in enumerate(fleet_names(agents, n_sites, site_prefix))
    ]
    groups = assign_connections(agents, n_conns)
    client_ids = None
    if n_conns < agents:
        client_ids = [f"outpost-simulate-{site_prefix}-{run_id}-{c + 1}" for c in range(n_conns)]
    try:
        fleet = Fleet(
            config,
            virtual,
            groups,
            tally,
            rng=rng,
            resend_after=resend_after,
            disconnect_rate=disconnect_rate,
            client_ids=client_ids,
        )
    except (OSError, ValueError) as exc:
        typer.echo(f"error: cannot set up the MQTT clients: {exc}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    stop = stop_event()
    started = time.monotonic()
    display = _Display(enabled=sys.stderr.isatty())
    try:
        fleet.run(stop, duration, drain, interval, display.update)
    finally:
        display.close()
    elapsed = time.monotonic() - started
    summary: dict[str, Any] = {
        "agents": agents,
        "connections": n_conns,
        "sites": min(n_sites, agents),
        "interval_seconds": interval,
        "disconnect_rate": disconnect_rate,
        "elapsed_seconds": round(elapsed, 1),
        **tally.as_dict(),
        "ever_connected": fleet.ever_connected,
    }
    ok = fleet.ever_connected and tally.unacked == 0
    summary["ok"] = ok
    if as_json:
        summary["per_agent"] = [agent.summary() for agent in virtual]
        typer.echo(json.dumps(summary, separators=(",", ":")))
    else:
        _print_summary(summary)
    if not fleet.ever_connected:
        typer.echo(
            f"error: never connected to the broker at {config.url}; {tally.unacked} batches "
            "were not delivered. Check that the broker runs and is reachable (and the user "
            "name, password and TLS files)",
            err=True,
        )
        raise typer.Exit(EXIT_FAILURE)
    if tally.unacked:
        typer.echo(
            f"error: {tally.unacked} batches still unacknowledged after waiting {drain:g} s. "
            f"Is a collector running on this broker with topic prefix {config.topic_prefix!r}?",
            err=True,
        )
        raise typer.Exit(EXIT_FAILURE)


_ROWS = (
    ("batches", "batches made"),
    ("sent", "sent (at least once)"),
    ("acked", "acknowledged"),
    ("resent", "sent again"),
    ("unacked", "unacknowledged"),
    ("dropped", "dropped (outbox full)"),
    ("connects", "connects"),
    ("connect_failures", "failed connects"),
    ("disconnects", "abrupt disconnects"),
    ("connection_losses", "connections lost"),
)


def _print_summary(summary: dict[str, Any]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{summary['agents']} agents over {summary['connections']} connections, "
        f"{summary['elapsed_seconds']:g} s",
        box=box.SIMPLE,
    )
    table.add_column("")
    table.add_column("count", justify="right")
    for key, label in _ROWS:
        table.add_row(label, str(summary[key]))
    Console(soft_wrap=True).print(table)


class _Display:
    """A live table on the terminal (stderr), refreshed once a second; nothing otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.live: Any = None
        if enabled:
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(stderr=True), auto_refresh=False, transient=True)
            self.live.start()

    def update(self, progress: Any) -> None:
        if self.live is None:
            return
        from rich.table import Table

        t = progress.tally
        table = Table.grid(padding=(0, 2))
        table.add_row(
            f"[bold]{progress.phase}[/]",
            f"{progress.elapsed:.0f} s",
            f"connected {progress.up}/{progress.connections}",
        )
        table.add_row(
            f"batches {t.batches}",
            f"acked {t.acked}",
            f"unacked {t.unacked}",
            f"resent {t.resent}",
            f"disconnects {t.disconnects}",
        )
        self.live.update(table, refresh=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()

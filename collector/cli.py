"""``outpost collector``: run the collector, check its config, show fleet status."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

__all__ = ["app"]

app = typer.Typer(
    help="The collector: MQTT ingest, fleet state, /metrics for Prometheus, HTTP API.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

ConfigOpt = Annotated[
    Optional[Path],  # noqa: UP045 - typer needs Optional here
    typer.Option("--config", "-c", help="collector.yaml (see config/collector.yaml)."),
]


def _inventory_or_exit(path: str | None) -> Any:
    from collector.inventory import Inventory
    from outpost.runtime import load_or_exit

    if path is None:
        return Inventory()
    return load_or_exit(Path(path), Inventory, {})


@app.command()
def run(
    config: ConfigOpt = None,
    broker: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="mqtt://HOST:PORT or mqtts://HOST:PORT."),
    ] = None,
    listen: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="HOST:PORT for /metrics, /healthz and the API (default 127.0.0.1:9468)."),
    ] = None,
    state_dir: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Where seq bookkeeping is kept across restarts."),
    ] = None,
    sites: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="sites.yaml: the sites and hosts that should exist."),
    ] = None,
    protocol: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="MQTT protocol: 5 or 3.1.1."),
    ] = None,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="-v info, -vv debug.")
    ] = 0,
    log_format: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--log-format", help="text or json (one object per line, for journald)."),
    ] = None,
) -> None:
    """Run the collector until SIGTERM or Ctrl-C.

    SIGHUP reads the config, these flags and the sites file again and applies them without
    losing state; a bad file is logged and the running config kept. listen, broker,
    state_dir, events and whether alerting runs need a restart. Under systemd (Type=notify
    or notify-reload) it reports readiness, status and watchdog pings."""
    from collector.config import CollectorConfig
    from collector.service import CollectorService
    from outpost.errors import OutpostError
    from outpost.logs import setup_logging
    from outpost.runtime import EXIT_FAILURE, Reload, load_or_exit, stop_event

    flags = {
        "broker.url": broker,
        "listen": listen,
        "state_dir": str(state_dir) if state_dir else None,
        "sites_file": str(sites) if sites else None,
        "broker.protocol": protocol,
        "log.format": log_format,
    }
    overrides = {k: v for k, v in flags.items() if v is not None}
    cfg = load_or_exit(config, CollectorConfig, overrides)
    inventory = _inventory_or_exit(cfg.sites_file)
    setup_logging(cfg.log.level, cfg.log.format, verbose)
    stop = stop_event()
    # SIGHUP: the same file and flags (and the sites file) are read again by the main thread.
    reload = Reload(config, CollectorConfig, overrides, verbose).on_sighup()
    from outpost.connection import check_files

    for problem in check_files(cfg.broker):
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    try:
        service = CollectorService(cfg, inventory)
    except (ValueError, OutpostError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        service.start()
    except OSError as exc:
        typer.echo(
            f"error: cannot listen on {cfg.listen}: {exc}. Choose another --listen.", err=True
        )
        raise typer.Exit(EXIT_FAILURE) from None
    try:
        service.supervise(stop, reload)
    finally:
        service.stop()


@app.command()
def check(
    config: Annotated[Path, typer.Option("--config", "-c", help="The collector.yaml to check.")],
) -> None:
    """Check a collector config (and the sites file it names): print each mistake with its
    file, key path, what was found and what was expected, and exit 2; exit 0 when valid."""
    from collector.config import CollectorConfig
    from outpost.runtime import load_or_exit

    cfg = load_or_exit(config, CollectorConfig, {})
    inventory = _inventory_or_exit(cfg.sites_file)
    from collector.alerting.service import check_config
    from outpost.connection import check_files
    from outpost.errors import OutpostError

    try:
        check_config(cfg.alerting, inventory)
    except (ValueError, OutpostError) as exc:
        typer.echo(f"{config}: alerting: {exc}", err=True)
        raise typer.Exit(2) from None
    problems = check_files(cfg.broker)
    for problem in problems:
        typer.echo(f"{config}: {problem}", err=True)
    if problems:
        raise typer.Exit(2)
    typer.echo(
        f"{config}: ok (broker {cfg.broker.url}, listen {cfg.listen}, "
        f"{len(inventory.sites)} sites in inventory)"
    )


@app.command()
def status(
    url: Annotated[
        str, typer.Option(help="The collector's HTTP address.")
    ] = "http://127.0.0.1:9468",
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
) -> None:
    """Show every host the collector knows of, as a table. Exit 1 if the collector cannot be
    reached, 3 if any expected host is not online."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/api/v1/hosts", timeout=5) as resp:
            hosts = json.load(resp)["hosts"]
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        typer.echo(
            f"error: cannot read {url}/api/v1/hosts: {exc}. Is the collector running?", err=True
        )
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(hosts, ensure_ascii=False, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table("site", "host", "state", "last seen", "seq", "lost", "dropped")
        for h in hosts:
            seen = "-" if not h["last_seen"] else _ago(h["last_seen"])
            style = "green" if h["up"] else "red"
            table.add_row(
                h["site"],
                h["host"],
                f"[{style}]{h['state']}[/]",
                seen,
                str(h["last_seq"] or "-"),
                str(h["lost"]),
                str(h["dropped"]),
            )
        Console().print(table)
    if any(h["expected"] and not h["up"] for h in hosts):
        raise typer.Exit(3)


@app.command()
def events(
    url: Annotated[
        str, typer.Option(help="The collector's HTTP address.")
    ] = "http://127.0.0.1:9468",
    site: Annotated[Optional[str], typer.Option(help="Only this site.")] = None,  # noqa: UP045
    host: Annotated[Optional[str], typer.Option(help="Only this host.")] = None,  # noqa: UP045
    kind: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Only this kind, e.g. ssh_bruteforce (docs/events.md)."),
    ] = None,
    severity: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Only this severity: info, warning or critical."),
    ] = None,
    since: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Only events since: seconds since 1970 or ISO 8601."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
) -> None:
    """Show the newest security and operational events agents reported, as a table. Exit 1 if
    the collector cannot be reached, 2 if it refuses the filters."""
    from urllib.parse import urlencode

    params = {"site": site, "host": host, "kind": kind, "severity": severity, "since": since}
    query = urlencode({k: v for k, v in params.items() if v} | {"limit": str(limit)})
    address = f"{url.rstrip('/')}/api/v1/events?{query}"
    try:
        with urllib.request.urlopen(address, timeout=5) as resp:
            found = json.load(resp)["events"]
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read())["error"]
        except (ValueError, KeyError):
            reason = str(exc)
        typer.echo(f"error: the collector refused the query: {reason}", err=True)
        raise typer.Exit(2) from None
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        typer.echo(
            f"error: cannot read {url}/api/v1/events: {exc}. Is the collector running?", err=True
        )
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(found, ensure_ascii=False, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    colour = {"critical": "red", "warning": "yellow", "info": "default"}
    table = Table("time (UTC)", "site", "host", "kind", "severity", "message")
    for e in found:
        table.add_row(
            e["time"][:19].replace("T", " "),
            e["site"],
            e["host"],
            e["kind"],
            f"[{colour.get(e['severity'], 'default')}]{e['severity']}[/]",
            e["message"],
        )
    Console().print(table)


def _ago(ts: float) -> str:
    import time

    s = max(0, int(time.time() - ts))
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"

"""``outpost agent``: run the agent, print one cycle, or check a config."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Annotated, Optional

import typer

__all__ = ["app"]

app = typer.Typer(
    help="The agent that reports this host (and gear it can reach) over MQTT.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

ConfigOpt = Annotated[
    Optional[Path],  # noqa: UP045 - typer needs Optional here
    typer.Option("--config", "-c", help="agent.yaml (see config/agent.yaml); flags override it."),
]
SiteOpt = Annotated[Optional[str], typer.Option(help="Site slug, e.g. xiaoshan-town.")]  # noqa: UP045
HostOpt = Annotated[Optional[str], typer.Option(help="Host slug, e.g. srv1.")]  # noqa: UP045
VerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True, help="-v info, -vv debug.")]
LogFormatOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--log-format", help="text or json (one object per line, for journald)."),
]


@app.command()
def once(
    site: SiteOpt = None,
    host: HostOpt = None,
    config: ConfigOpt = None,
    indent: Annotated[bool, typer.Option(help="Pretty-print the JSON.")] = False,
) -> None:
    """Collect once and print the metrics batch as the JSON that would be published.

    Needs no broker and writes nothing.
    """
    from agent.config import AgentConfig
    from agent.cycle import Identity, build_batch, collect
    from agent.runner import read_boot_id
    from agent.service import overrides
    from agent.sources import build_sources
    from outpost import wire
    from outpost.runtime import load_or_exit

    cfg = load_or_exit(config, AgentConfig, overrides(site=site, host=host))
    now = time.time()
    sources = build_sources(cfg.sources)
    try:
        result = collect(sources, now)
    finally:
        for source in sources:
            close = getattr(source, "close", None)
            if close is not None:
                close()
    who = Identity(cfg.site, cfg.host, uuid.uuid4().hex, read_boot_id())
    batch = build_batch(who, 1, int(now * 1000), cfg.interval_seconds, samples=result.samples)
    batch.outbox_low = 1
    data = wire.encode(batch)
    if indent:
        typer.echo(json.dumps(json.loads(data), indent=2, ensure_ascii=False))
    else:
        typer.echo(data.decode())


@app.command()
def run(
    config: ConfigOpt = None,
    broker: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="mqtt://HOST:PORT or mqtts://HOST:PORT."),
    ] = None,
    site: SiteOpt = None,
    host: HostOpt = None,
    state_dir: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Where the outbox lives (kept across restarts)."),
    ] = None,
    interval: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(help="Seconds between collection cycles."),
    ] = None,
    protocol: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="MQTT protocol: 5 or 3.1.1."),
    ] = None,
    username: Annotated[Optional[str], typer.Option(help="Broker user name.")] = None,  # noqa: UP045
    password_file: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="File whose first line is the broker password."),
    ] = None,
    verbose: VerboseOpt = 0,
    log_format: LogFormatOpt = None,
) -> None:
    """Run the agent until SIGTERM or Ctrl-C: collect every interval, keep every batch in the
    outbox until the collector acknowledges it, and publish over MQTT.

    SIGHUP reads the config file (and these flags) again and applies it without losing the
    outbox; a bad file is logged and the running config kept. site, host and state_dir need
    a restart. Under systemd (Type=notify or notify-reload) it reports readiness, status and
    watchdog pings."""
    from agent import service

    flags = service.overrides(
        site=site,
        host=host,
        broker=broker,
        state_dir=state_dir,
        interval=interval,
        protocol=protocol,
        username=username,
        password_file=password_file,
        log_format=log_format,
    )
    service.run(config, flags, verbose)


@app.command()
def check(
    config: Annotated[Path, typer.Option("--config", "-c", help="The agent.yaml to check.")],
) -> None:
    """Check an agent config: print each mistake with its file, key path, what was found and
    what was expected, and exit 2; exit 0 when it is valid."""
    from agent.config import AgentConfig
    from agent.service import preflight
    from outpost.runtime import load_or_exit

    cfg = load_or_exit(config, AgentConfig, {})
    preflight(cfg)
    typer.echo(f"{config}: ok (site {cfg.site}, host {cfg.host}, broker {cfg.broker.url})")

"""``outpost alerts``: list, acknowledge and silence alerts, and test a route, through the
collector's HTTP API.

Writing needs the API token (``alerting.api_token_file`` of collector.yaml): pass the same
file with ``--token-file`` or set ``OUTPOST_API_TOKEN``. Exit codes: 0 done, 1 the collector
cannot be reached, 2 the collector refused (bad input, a wrong token), 3 ``list`` found
firing alerts nobody acknowledged.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

__all__ = ["app"]

app = typer.Typer(
    help="List, acknowledge and silence alerts, and send test messages.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

UrlOpt = Annotated[str, typer.Option(help="The collector's HTTP address.")]
TokenOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(help="File whose first line is the API token (or set OUTPOST_API_TOKEN)."),
]
DEFAULT_URL = "http://127.0.0.1:9468"


def _token(token_file: Path | None) -> str:
    if token_file is not None:
        try:
            lines = token_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            typer.echo(f"error: cannot read {token_file}: {exc.strerror}", err=True)
            raise typer.Exit(2) from None
        return lines[0].strip() if lines else ""
    return os.environ.get("OUTPOST_API_TOKEN", "")


def _call(
    url: str, method: str, path: str, body: dict[str, Any] | None = None, token: str = ""
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{url.rstrip('/')}{path}", data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read())["error"]
        except (ValueError, KeyError):
            reason = str(exc)
        typer.echo(f"error: the collector refused: {reason}", err=True)
        raise typer.Exit(2) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        typer.echo(f"error: cannot reach {url}: {exc}. Is the collector running?", err=True)
        raise typer.Exit(1) from None


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    s = max(0, int(time.time() - ts))
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


@app.command("list")
def list_(
    url: UrlOpt = DEFAULT_URL,
    state: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Only firing, pending or resolved."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
) -> None:
    """Show the alerts as a table, firing first. Exit 3 when a firing alert is not
    acknowledged (and neither inhibited nor silenced)."""
    path = "/api/v1/alerts" + (f"?state={state}" if state else "")
    alerts = _call(url, "GET", path)["alerts"]
    if as_json:
        typer.echo(json.dumps(alerts, ensure_ascii=False, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table("key", "state", "severity", "rule", "site", "host", "for", "ack / note")
        colour = {"firing": "red", "pending": "yellow", "resolved": "green"}
        for a in alerts:
            note = a["acked_by"] and f"acked by {a['acked_by']}"
            if a["inhibited_by"]:
                note = f"inhibited by {a['inhibited_by'][:8]}"
            elif a["silenced_by"]:
                note = f"silenced ({a['silenced_by']})"
            elif a["flapping"]:
                note = (note + " " if note else "") + "flapping"
            table.add_row(
                a["key"][:8],
                f"[{colour[a['state']]}]{a['state']}[/]",
                a["severity"],
                a["rule"],
                a["site"],
                a["host"],
                _ago(a["fired_at"] or a["started"]),
                note or "",
            )
        Console().print(table)
    if any(
        a["state"] == "firing" and not (a["acked_by"] or a["inhibited_by"] or a["silenced_by"])
        for a in alerts
    ):
        raise typer.Exit(3)


@app.command()
def ack(
    keys: Annotated[list[str], typer.Argument(help="Alert keys (or their first 8 characters).")],
    by: Annotated[str, typer.Option(help="Who takes it.")] = "",
    note: Annotated[str, typer.Option(help="What is being done.")] = "",
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenOpt = None,
) -> None:
    """Acknowledge alerts: escalation stops, the alert stays until it resolves."""
    done = _call(url, "POST", "/api/v1/alerts/ack", {"keys": keys, "by": by or os.environ.get(
        "USER", ""), "note": note}, _token(token_file))["acknowledged"]  # fmt: skip
    typer.echo(f"acknowledged {len(done)} alert(s)")


@app.command()
def unack(
    keys: Annotated[list[str], typer.Argument(help="Alert keys (or their first 8 characters).")],
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenOpt = None,
) -> None:
    """Take an acknowledgement back: escalation goes on."""
    done = _call(url, "POST", "/api/v1/alerts/unack", {"keys": keys}, _token(token_file))
    typer.echo(f"unacknowledged {len(done['unacknowledged'])} alert(s)")


@app.command()
def silence(
    reason: Annotated[str, typer.Option(help="Why (required): shown to everyone.")],
    site: Annotated[str, typer.Option(help="Silence this site.")] = "",
    host: Annotated[str, typer.Option(help="Silence this host.")] = "",
    rule: Annotated[str, typer.Option(help="Silence this rule, e.g. disk_full.")] = "",
    minutes: Annotated[float, typer.Option(min=1, help="For how long.")] = 120,
    by: Annotated[str, typer.Option(help="Who silences.")] = "",
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenOpt = None,
) -> None:
    """Send no notifications for matching alerts (site, host and/or rule) for a while."""
    if not (site or host or rule):
        typer.echo("error: name at least one of --site, --host and --rule", err=True)
        raise typer.Exit(2)
    body = {"site": site, "host": host, "rule": rule, "minutes": minutes, "reason": reason,
            "by": by or os.environ.get("USER", "")}  # fmt: skip
    made = _call(url, "POST", "/api/v1/silences", body, _token(token_file))["silence"]
    typer.echo(
        f"silence {made['id']} until {time.strftime('%Y-%m-%d %H:%M', time.localtime(made['end']))}"
    )


@app.command()
def unsilence(
    silence_id: Annotated[str, typer.Argument(help="The silence's id (from `silences`).")],
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenOpt = None,
) -> None:
    """Remove a silence before its end."""
    _call(url, "DELETE", f"/api/v1/silences/{silence_id}", None, _token(token_file))
    typer.echo(f"removed silence {silence_id}")


@app.command()
def silences(url: UrlOpt = DEFAULT_URL) -> None:
    """Show the silences in force."""
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "site", "host", "rule", "until", "by", "reason")
    for s in _call(url, "GET", "/api/v1/silences")["silences"]:
        until = time.strftime("%Y-%m-%d %H:%M", time.localtime(s["end"]))
        table.add_row(s["id"], s["site"], s["host"], s["rule"], until, s["created_by"], s["reason"])
    Console().print(table)


@app.command()
def test(
    route: Annotated[str, typer.Option("--route", help="The route's name in collector.yaml.")],
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenOpt = None,
) -> None:
    """Send a test message to everyone on the route's first step."""
    queued = _call(url, "POST", "/api/v1/alerts/test", {"route": route}, _token(token_file))
    for item in queued["queued"]:
        typer.echo(f"queued for {item['notifier']} {item['to']}".rstrip())
    if not queued["queued"]:
        typer.echo("nobody is on that route's first step right now")

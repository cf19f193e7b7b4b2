"""``outpost ca`` and ``outpost enroll``: the fleet CA and the broker's users, run on the
collector side (where the broker's password and ACL files are kept).

The password is printed to stdout once (or written to ``--password-file-out``); nothing else
prints or logs it. Messages go to stderr, so stdout is only what the enrolled machine needs.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Optional

import typer

__all__ = ["ca_app", "enroll_app"]

DEFAULT_DIR = Path("/etc/mosquitto/outpost")
EXIT_FAILURE = 1
EXIT_USAGE = 2

DirOpt = Annotated[
    Path,
    typer.Option(
        "--dir",
        help="The broker's Outpost directory: fleet CA, server certificate, passwd and acl.",
    ),
]

ca_app = typer.Typer(
    help="The fleet's certificate authority: the broker's TLS certificate, client certificates.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

enroll_app = typer.Typer(add_completion=False, rich_markup_mode=None)


@ca_app.callback()
def _ca() -> None:
    """The fleet's certificate authority."""


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _group_hint(*paths: Path) -> None:
    """Say so when the broker's group (``mosquitto``, where it exists) cannot read a file it
    needs: these files are 0640 and mosquitto does not run as root."""
    import grp

    try:
        gid = grp.getgrnam("mosquitto").gr_gid
    except KeyError:
        return
    wrong = [str(p) for p in paths if p.exists() and p.stat().st_gid != gid]
    if wrong:
        typer.echo(
            f"mosquitto cannot read {', '.join(wrong)}: chgrp mosquitto them (or make their "
            "directory setgid, group mosquitto, before the files are written).",
            err=True,
        )


@ca_app.command("init")
def ca_init(
    server_name: Annotated[
        list[str],
        typer.Option(
            "--server-name",
            help="A host name or IP address agents use to reach the broker (repeat for each).",
        ),
    ],
    directory: DirOpt = DEFAULT_DIR,
    ca_days: Annotated[int, typer.Option(min=30, help="Days the CA is valid.")] = 3650,
    server_days: Annotated[
        int, typer.Option(min=7, help="Days the broker's certificate is valid.")
    ] = 825,
) -> None:
    """Create the fleet CA (ca.key 0600, ca.crt) in --dir, unless one is there, and issue the
    broker's server certificate (server.key 0640, server.crt) for the --server-name names,
    unless the one there names exactly those and has more than 30 days left. Safe to run
    again; an existing CA is never replaced. Exit 2 on a bad name, 1 on a file error."""
    from collector import ca

    try:
        result = ca.init_ca(
            directory,
            server_name,
            dt.datetime.now(dt.UTC),
            ca_days=ca_days,
            server_days=server_days,
        )
    except ca.CaError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    except OSError as exc:
        raise _fail(f"cannot write in {directory}: {exc}", EXIT_FAILURE) from None
    if result.created_ca:
        typer.echo(f"created the fleet CA: {directory / ca.CA_CERT}, {directory / ca.CA_KEY}")
    else:
        typer.echo(f"kept the fleet CA in {directory / ca.CA_CERT}")
    names = ", ".join(result.server_names)
    until = f"{result.not_after:%Y-%m-%d}"
    if result.issued_server:
        typer.echo(
            f"issued the broker's certificate for {names}, valid until {until}: "
            f"{directory / ca.SERVER_CERT}, {directory / ca.SERVER_KEY}"
        )
        typer.echo("restart mosquitto to use it.")
        _group_hint(directory / ca.SERVER_KEY)
    else:
        typer.echo(f"kept the broker's certificate for {names}, valid until {until}")
    typer.echo(f"agents need {directory / ca.CA_CERT} as broker.tls.ca_file.")


@enroll_app.command()
def enroll(
    site: Annotated[Optional[str], typer.Option(help="The agent's site slug.")] = None,  # noqa: UP045
    host: Annotated[Optional[str], typer.Option(help="The agent's host slug.")] = None,  # noqa: UP045
    collector: Annotated[
        bool, typer.Option("--collector", help="Enrol the collector's own user instead.")
    ] = False,
    revoke: Annotated[
        bool, typer.Option("--revoke", help="Remove the user and its ACL lines instead.")
    ] = False,
    directory: DirOpt = DEFAULT_DIR,
    username: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Broker user name (a slug); default <site>--<host> or outpost-collector."
        ),
    ] = None,
    cert: Annotated[
        bool, typer.Option("--cert", help="Also issue a client certificate from the fleet CA.")
    ] = False,
    cert_dir: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="Where --cert writes agent.crt/agent.key (collector.*): default "
            "DIR/clients/<user>."
        ),
    ] = None,
    cert_days: Annotated[
        int, typer.Option(min=1, help="Days the client certificate is valid.")
    ] = 825,
    password_file_out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Write the password here (mode 0600) instead of printing it."),
    ] = None,
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Write the config fragment here instead of printing it."),
    ] = None,
    broker_url: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="mqtts://HOST:PORT for the fragment; default: the first name in "
            "DIR/server.crt, port 8883."
        ),
    ] = None,
    target_dir: Annotated[
        str,
        typer.Option(help="Where the files go on the enrolled machine (named in the fragment)."),
    ] = "/etc/outpost",
    topic_prefix: Annotated[str, typer.Option(help="First topic level.")] = "outpost",
) -> None:
    """Enrol an agent (--site, --host) or the collector (--collector) with the broker: a new
    random password (mosquitto's PBKDF2-SHA512 hash in DIR/passwd), its ACL lines in DIR/acl
    (an agent writes only its own status, metrics and events and reads only its own ack; the
    collector reads outpost/v1/# and writes every ack), with --cert a client certificate; then
    print the config fragment that machine needs. Enrolling again rotates the password and
    keeps one entry; --revoke removes it. Reload mosquitto afterwards (systemctl reload
    mosquitto). Exit 2 on bad usage or a name that is taken, 1 when there is nothing to revoke
    or a file cannot be written."""
    from collector import ca
    from collector import enroll as en

    if collector == (site is not None or host is not None):
        raise _fail("give either --site and --host (an agent) or --collector", EXIT_USAGE)
    if not collector and (site is None or host is None):
        raise _fail("an agent needs both --site and --host", EXIT_USAGE)
    if revoke and (cert or password_file_out or out or cert_dir or broker_url):
        raise _fail("--revoke takes only --site/--host or --collector, and --dir", EXIT_USAGE)
    try:
        identity = (
            en.collector_identity(username)
            if collector
            else en.agent_identity(site or "", host or "", username)
        )
    except en.EnrolError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None

    if revoke:
        try:
            removed = en.revoke(directory, identity.key)
        except en.NotEnrolled as exc:
            raise _fail(str(exc), EXIT_FAILURE) from None
        except OSError as exc:
            raise _fail(f"cannot update {directory}: {exc}", EXIT_FAILURE) from None
        _group_hint(directory / en.PASSWORD_FILE, directory / en.ACL_FILE)
        typer.echo(
            f"revoked {identity.label}: removed user(s) "
            f"{', '.join(removed)} from {directory}. Reload mosquitto to apply it: "
            "systemctl reload mosquitto",
            err=True,
        )
        return

    try:
        done = en.enroll(
            directory,
            identity,
            dt.datetime.now(dt.UTC),
            prefix=topic_prefix,
            broker_url=broker_url,
            cert=cert,
            cert_dir=cert_dir,
            cert_days=cert_days,
        )
    except (en.EnrolError, ca.CaError) as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    except OSError as exc:
        raise _fail(f"cannot update {directory}: {exc}", EXIT_FAILURE) from None

    text = en.fragment(
        identity,
        done.broker_url,
        target_dir,
        ca_file=(directory / ca.CA_CERT).exists(),
        cert=cert,
        password=None if password_file_out or out else done.password,
    )
    try:
        if password_file_out is not None:
            ca.write_atomic(password_file_out, (done.password + "\n").encode(), 0o600)
        if out is not None:
            ca.write_atomic(out, text.encode(), 0o644)
    except OSError as exc:
        raise _fail(
            f"enrolled, but cannot write {exc.filename}: {exc.strerror}. Run the "
            "same command again (it rotates the password).",
            EXIT_FAILURE,
        ) from None
    if out is None:
        typer.echo(text, nl=False)
    elif password_file_out is None:
        typer.echo(done.password)
    _group_hint(done.password_file, done.acl_file)
    what = "rotated the password of" if done.rotated else "enrolled"
    typer.echo(
        f"{what} {identity.describe()} in {done.password_file} and {done.acl_file}. "
        "Reload mosquitto to apply it: systemctl reload mosquitto",
        err=True,
    )
    if done.cert_files is not None:
        typer.echo(f"client certificate: {done.cert_files[0]}, key: {done.cert_files[1]}", err=True)

"""The root ``outpost`` command. Each side's commands load only when used, so a host that runs
only the agent never imports collector code.

``outpost agent run`` is the one command that stays up, so it does not load the command-line
framework at all: :func:`main` hands its flags to agent/service.py, which reads them with
argparse (help and mistakes still go to the typer command, so they read the same). The typer
app is built on first use (``app`` here, or any other command).
"""

from __future__ import annotations

import importlib
import sys
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import typer

    app: typer.Typer  # built on first use: see __getattr__

__all__ = ["app", "main"]

# command name -> (module, attribute, one-line help shown in the list)
_LAZY: dict[str, tuple[str, str, str]] = {
    "up": ("outpost.up", "app", "Run broker, collector and a local agent on this machine."),
    "agent": ("agent.cli", "app", "Run, try or check the agent that reports this host."),
    "collector": ("collector.cli", "app", "Run or check the collector that keeps fleet state."),
    "alerts": ("collector.alerting.cli", "app", "List, acknowledge and silence alerts."),
    "ca": ("collector.enroll_cli", "ca_app", "Create the fleet CA and the broker's certificate."),
    "enroll": ("collector.enroll_cli", "enroll_app", "Enrol, re-key or revoke a broker user."),
    "simulate": ("outpost.simulate_cli", "app", "Drive N virtual agents to load-test a collector."),
}


@cache
def _app() -> Any:
    import typer
    from typer.core import TyperGroup

    class _LazyGroup(TyperGroup):
        def list_commands(self, ctx: Any) -> list[str]:
            return [*super().list_commands(ctx), *_LAZY]

        def get_command(self, ctx: Any, cmd_name: str) -> Any:
            if cmd_name in _LAZY:
                module, attr, _help = _LAZY[cmd_name]
                sub = getattr(importlib.import_module(module), attr)
                command = typer.main.get_command(sub)
                command.name = cmd_name
                return command
            return super().get_command(ctx, cmd_name)

        def format_commands(self, ctx: Any, formatter: Any) -> None:
            rows = [(name, help_) for name, (_m, _a, help_) in _LAZY.items()]
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    app = typer.Typer(
        cls=_LazyGroup,
        help="Outpost: monitoring for unattended sites. Agents report over MQTT to a collector "
        "that feeds Prometheus and alerts on-call staff.",
        no_args_is_help=True,
        add_completion=False,
        rich_markup_mode=None,
    )

    @app.callback()
    def _root() -> None:
        """Outpost: monitoring for unattended sites."""

    return app


def __getattr__(name: str) -> Any:
    if name == "app":
        return _app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    argv = sys.argv[1:]
    if argv[:2] == ["agent", "run"]:
        from agent import service

        if service.main(argv[2:]):
            return
    _app()()

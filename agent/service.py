"""``outpost agent run`` as a long-running process: flags, config, preflight, the main loop.

The agent stays up for months on small hosts, and what it imports stays in its memory. So
``outpost agent run`` starts here without the command-line framework (typer, click and what
they load cost about 8 MB of a 34 MB agent): :func:`parse` reads its flags, and the typer
command in agent/cli.py (``--help``, ``once``, ``check``, and ``run`` called through the typer
app) calls the same :func:`run`. What :func:`parse` does not take as it stands (``--help``, an
unknown flag, a bad value) goes to the typer command, so help and error messages are typer's,
one text for both ways in. tests/unit/agent/test_service.py checks that both read the same
flags the same way.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["RUN_FLAGS", "main", "overrides", "parse", "preflight", "run"]

EXIT_PROBLEM = 2

# flag -> (config key it overrides, value type); --config and --verbose are handled apart.
RUN_FLAGS: dict[str, tuple[str, type]] = {
    "--broker": ("broker.url", str),
    "--site": ("site", str),
    "--host": ("host", str),
    "--state-dir": ("state_dir", Path),
    "--interval": ("interval_seconds", float),
    "--protocol": ("broker.protocol", str),
    "--username": ("broker.username", str),
    "--password-file": ("broker.password_file", Path),
    "--log-format": ("log.format", str),
}

_KEYS = {flag[2:].replace("-", "_"): key for flag, (key, _type) in RUN_FLAGS.items()}


def overrides(**flags: Any) -> dict[str, Any]:
    """Config overrides from flags given by their parameter names (``state_dir=...``); the
    flags not given (None) are left out, and paths become strings."""
    out: dict[str, Any] = {}
    for name, value in flags.items():
        if value is None:
            continue
        out[_KEYS[name]] = str(value) if isinstance(value, Path) else value
    return out


def preflight(cfg: Any) -> list[Any]:
    """Build the sources and let each check what it needs before the first cycle (a secret
    file, say); a problem is printed with what to do, exit 2."""
    from agent.sources import build_sources
    from outpost.connection import check_files

    problems = check_files(cfg.broker)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        raise SystemExit(EXIT_PROBLEM)
    sources = build_sources(cfg.sources)
    for source in sources:
        check = getattr(source, "preflight", None)
        if check is None:
            continue
        try:
            check()
        except (ValueError, OSError) as exc:
            print(f"error: source {source.name}: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_PROBLEM) from None
    return sources


def run(config: Path | None, flags: dict[str, Any], verbose: int) -> None:
    """Load the config (file, then ``flags``), check it, and run the agent until SIGTERM or
    SIGINT; SIGHUP reads the same file and flags again."""
    from agent.config import AgentConfig
    from agent.runner import Agent
    from outpost.logs import setup_logging
    from outpost.runtime import Reload, load_or_exit, stop_event

    cfg = load_or_exit(config, AgentConfig, flags)
    setup_logging(cfg.log.level, cfg.log.format, verbose)
    sources = preflight(cfg)
    stop = stop_event()
    reload = Reload(config, AgentConfig, flags, verbose).on_sighup()
    agent = Agent(cfg, sources)
    # The signals that set ``stop`` and ``reload`` also wake the loop, so it need not look
    # every second: an idle agent sleeps until its next job.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        _also_wake(signum, agent.wake)
    agent.run(stop, reload, poll=None)


def _also_wake(signum: int, wake: Callable[[], None]) -> None:
    """Call ``wake`` after the handler already set for ``signum``."""
    previous = signal.getsignal(signum)
    if not callable(previous):
        raise RuntimeError(f"no handler for signal {signum} to add to")

    def handler(number: int, frame: FrameType | None) -> None:
        previous(number, frame)
        wake()

    signal.signal(signum, handler)


def parse(argv: list[str]) -> tuple[Path | None, dict[str, Any], int] | None:
    """``argv`` (after ``agent run``) as (config file, overrides, verbosity), or None for
    anything but the plain forms: ``--flag VALUE``, ``--flag=VALUE``, ``-c FILE``, ``-v``,
    ``-vv``, ``--verbose``. None sends the arguments to the typer command, which runs them or
    says what is wrong; so this parser may refuse what it does not need, never misread."""
    config: Path | None = None
    given: dict[str, Any] = {}
    verbose = 0
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--verbose" or (len(arg) > 1 and arg[0] == "-" and set(arg[1:]) == {"v"}):
            verbose += 1 if arg == "--verbose" else len(arg) - 1
            continue
        flag, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if not eq:
            if not args or args[0].startswith("-"):
                return None
            value = args.pop(0)
        if flag in ("-c", "--config"):
            config = Path(value)
        elif flag in RUN_FLAGS:
            key, type_ = RUN_FLAGS[flag]
            if type_ is float and not value.isascii():
                return None  # float() reads other scripts' digits; typer does not
            try:
                given[key] = str(type_(value)) if type_ is Path else type_(value)
            except ValueError:
                return None
        else:
            return None
    return config, given, verbose


def main(argv: list[str]) -> bool:
    """Run the agent with ``argv`` (the arguments after ``agent run``). False, having done
    nothing, when the typer command should take them instead (``--help``, a mistake)."""
    parsed = parse(argv)
    if parsed is None:
        return False
    config, given, verbose = parsed
    run(config, given, verbose)
    return True

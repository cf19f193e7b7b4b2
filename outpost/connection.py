"""How to reach the broker: the ``broker`` config block both sides share, and URL parsing.

No paho here: each side wraps paho in one module of its own (agent/publisher.py,
collector/mqtt.py) and takes its settings from this one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec

from outpost.errors import OutpostError

__all__ = [
    "BrokerAddress",
    "BrokerConfig",
    "TlsConfig",
    "check_files",
    "parse_broker_url",
    "read_password",
]

BROKER_URL_PATTERN = r"^mqtts?://[^/\s:]+(:[0-9]{1,5})?/?$"


class TlsConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


class BrokerConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    url: Annotated[str, msgspec.Meta(pattern=BROKER_URL_PATTERN)] = "mqtt://127.0.0.1:1883"
    protocol: Literal["5", "3.1.1"] = "5"
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    client_id: str | None = None
    keepalive_seconds: Annotated[int, msgspec.Meta(ge=2, le=3600)] = 10
    session_expiry_seconds: Annotated[int, msgspec.Meta(ge=60)] = 7 * 86400
    reconnect_min_seconds: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    reconnect_max_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0
    topic_prefix: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}\Z")] = "outpost"
    tls: TlsConfig = msgspec.field(default_factory=TlsConfig)


class BrokerAddress(msgspec.Struct, frozen=True):
    host: str
    port: int
    tls: bool


class BrokerUrlError(OutpostError):
    pass


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://host:port`` (default port 1883) or ``mqtts://host:port`` (8883, TLS)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise BrokerUrlError(f"broker URL {url!r}: expected mqtt://HOST:PORT or mqtts://HOST:PORT")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise BrokerUrlError(f"broker URL {url!r}: the port is not a number") from None
    return BrokerAddress(parts.hostname, port, tls)


def check_files(config: BrokerConfig) -> list[str]:
    """What would stop a connection before it starts: an unreadable password file, a TLS
    file that cannot be read. One line per problem, saying what to do."""
    problems = []
    try:
        read_password(config)
    except OutpostError as exc:
        problems.append(f"{exc}; check the path and that this user may read it")
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(config.tls, key)
        if not path:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            problems.append(
                f"broker.tls.{key} {path}: cannot read it ({exc.strerror}); check the path "
                "and that this user may read it"
            )
    return problems


def read_password(config: BrokerConfig) -> str | None:
    """The password from ``password`` or the first line of ``password_file``."""
    if config.password is not None:
        return config.password
    if config.password_file:
        try:
            return Path(config.password_file).read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError) as exc:
            raise OutpostError(
                f"broker.password_file {config.password_file}: cannot read a password ({exc})"
            ) from None
    return None

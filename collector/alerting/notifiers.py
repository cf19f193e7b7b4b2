"""Delivering a rendered message: one notifier class per kind of receiver.

Kinds (the ``type`` of a notifier config):

- ``webhook``: POST of the notification as JSON to any URL (optional bearer token, headers);
- ``alertmanager``: POST ``{url}/api/v2/alerts`` of Prometheus Alertmanager;
- ``smtp``: mail through an SMTP server (STARTTLS by default, or implicit TLS, optional AUTH);
- ``wecom``: a WeCom (企业微信) group robot; markdown, or text when it has to @ someone;
- ``dingtalk``: a DingTalk (钉钉) custom robot, with the optional 加签 signature;
- ``feishu``: a Feishu (飞书) custom bot, with the optional signature;
- ``sms``: any HTTP SMS gateway, from a request template.

Each notifier's ``send(message, notification)`` returns when the receiver took the message
and raises ``DeliveryError`` otherwise; its ``retryable`` says whether trying again later can
help (network trouble, HTTP 429 and 5xx, a robot's "too many requests") or not (a wrong key,
a refused address, a bad signature). Every notifier has a token bucket of
``rate_per_minute``; an empty bucket is a retryable "rate limited". The robot services count
about 20 messages a minute per robot and DingTalk blocks a robot for ten minutes past that,
so the default is 20.

Secrets (tokens, robot URLs that carry a key, signing secrets, passwords) come inline or from
a ``*_file`` (its first line), read when a message is sent, so a rotated secret needs no
restart. They never appear in a log line or an error text: URLs are shown with every query
value and a Feishu hook token replaced by ``***``, and known secrets are scrubbed from the
answers quoted in errors.

No I/O in the constructors; the HTTP kinds use urllib (with the environment's proxy
settings), mail uses smtplib. Rendering is templates.py's; retrying is delivery.py's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import logging
import re
import smtplib
import ssl
import string
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Protocol

import msgspec

from collector.alerting.model import Alert, Notification
from collector.alerting.templates import Message, shorten, summarize
from outpost import __version__
from outpost.errors import OutpostError

__all__ = [
    "NOTIFIER_TYPES",
    "AlertmanagerConfig",
    "DeliveryError",
    "DingtalkConfig",
    "FeishuConfig",
    "Notifier",
    "NotifierConfig",
    "NotifierError",
    "SmsConfig",
    "SmtpConfig",
    "TokenBucket",
    "WebhookConfig",
    "WecomConfig",
    "build_notifier",
    "dingtalk_sign",
    "feishu_sign",
    "redact_url",
]

log = logging.getLogger(__name__)

USER_AGENT = f"outpost-collector/{__version__}"
_MAX_ANSWER = 64 * 1024  # bytes of an answer read
_PHONE = re.compile(r"\+?[0-9][0-9 -]{5,19}")

Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
HttpUrl = Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s/?#]+[^\s]*$")]


# --- errors ------------------------------------------------------------------------------


class NotifierError(OutpostError):
    """A notifier that cannot work: an unreadable secret file, a bad URL in it."""


class DeliveryError(NotifierError):
    """A message was not delivered. ``retryable``: whether trying again later can help."""

    def __init__(self, retryable: bool, detail: str) -> None:
        super().__init__(detail)
        self.retryable = retryable
        self.detail = detail


# --- configs -----------------------------------------------------------------------------


def _one_of(config: Any, field: str, required: bool) -> None:
    inline, path = getattr(config, field), getattr(config, f"{field}_file")
    if inline is not None and path is not None:
        raise ValueError(f"notifier {config.name}: give {field} or {field}_file, not both")
    if required and inline is None and path is None:
        raise ValueError(f"notifier {config.name}: {field} or {field}_file is required")


def _check_headers(config: Any, headers: dict[str, str]) -> None:
    for key, value in headers.items():
        if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", key):
            raise ValueError(f"notifier {config.name}: header name {key!r} is not valid")
        if "\r" in value or "\n" in value:
            raise ValueError(f"notifier {config.name}: header {key} has a line break")


class _Base(
    msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True, tag_field="type"
):
    name: Name
    rate_per_minute: Annotated[int, msgspec.Meta(ge=1, le=6000)] = 20
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0


class WebhookConfig(_Base, tag="webhook"):
    """POST of the notification as JSON (see ``WebhookNotifier``)."""

    url: HttpUrl
    bearer_token: str | None = None
    bearer_token_file: str | None = None
    headers: dict[str, str] = {}
    ca_file: str | None = None

    def __post_init__(self) -> None:
        _one_of(self, "bearer_token", required=False)
        _check_headers(self, self.headers)


class AlertmanagerConfig(_Base, tag="alertmanager"):
    """Alertmanager's base URL (``http://alertmanager:9093``); alerts go to /api/v2/alerts.
    ``ends_after_seconds``: a firing alert is sent with ``endsAt`` that far ahead (300 s to
    30 days, default a day), so Alertmanager keeps it firing until Outpost resolves it."""

    url: HttpUrl
    generator_url: str = ""  # the back-link Alertmanager shows, e.g. the collector's page
    ends_after_seconds: Annotated[float, msgspec.Meta(ge=300, le=30 * 86400)] = 86400.0
    bearer_token: str | None = None
    bearer_token_file: str | None = None
    headers: dict[str, str] = {}
    ca_file: str | None = None

    def __post_init__(self) -> None:
        _one_of(self, "bearer_token", required=False)
        _check_headers(self, self.headers)


class SmtpConfig(_Base, tag="smtp"):
    """Mail. ``port`` defaults to 465 with ``ssl``, else 587 with ``starttls``, else 25."""

    host: Annotated[str, msgspec.Meta(min_length=1)]
    from_: Annotated[str, msgspec.Meta(min_length=3)] = msgspec.field(name="from")
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None
    starttls: bool = True
    ssl: bool = False  # implicit TLS (smtps); STARTTLS is then not used
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    ca_file: str | None = None

    def __post_init__(self) -> None:
        _one_of(self, "password", required=False)
        if (self.password is not None or self.password_file) and not self.username:
            raise ValueError(f"notifier {self.name}: a password needs a username")
        if "@" not in parseaddr(self.from_)[1]:
            raise ValueError(f"notifier {self.name}: from {self.from_!r} is not a mail address")


class _RobotBase(_Base):
    url: HttpUrl | None = None  # the robot's webhook URL, with its key or access token
    url_file: str | None = None  # or a file holding it

    def __post_init__(self) -> None:
        _one_of(self, "url", required=True)


class WecomConfig(_RobotBase, tag="wecom"):
    """A WeCom group robot: ``https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=...``."""

    msgtype: Literal["markdown", "text"] = "markdown"


class DingtalkConfig(_RobotBase, tag="dingtalk"):
    """A DingTalk custom robot: ``https://oapi.dingtalk.com/robot/send?access_token=...``;
    ``secret`` is the 加签 secret (``SEC...``) when the robot has one."""

    secret: str | None = None
    secret_file: str | None = None
    msgtype: Literal["markdown", "text"] = "markdown"

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_of(self, "secret", required=False)


class FeishuConfig(_RobotBase, tag="feishu"):
    """A Feishu custom bot: ``https://open.feishu.cn/open-apis/bot/v2/hook/...``;
    ``secret`` when the bot has 签名校验 on."""

    secret: str | None = None
    secret_file: str | None = None
    msg_type: Literal["text", "post"] = "text"

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_of(self, "secret", required=False)


class SmsConfig(_Base, tag="sms"):
    """An HTTP SMS gateway. ``url``, ``headers`` and ``body`` may use ``$to``, ``$text``,
    ``$title`` and ``$token``: URL-encoded in the URL, JSON-escaped in a ``json`` body (write
    ``"$text"``), form-encoded in a ``form`` body, as they are in headers and ``raw``."""

    url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s/?#]+[^\s]*$")]
    method: Literal["POST", "PUT", "GET"] = "POST"
    headers: dict[str, str] = {}
    body: str = '{"to": "$to", "text": "$text"}'
    body_format: Literal["json", "form", "raw"] = "json"
    content_type: str | None = None
    token: str | None = None
    token_file: str | None = None
    success_status: tuple[Annotated[int, msgspec.Meta(ge=100, le=599)], ...] = (200, 201, 202, 204)
    success_contains: str = ""  # when set, an answer without it is a failure
    max_length: Annotated[int, msgspec.Meta(ge=20, le=10000)] = 300
    ca_file: str | None = None

    def __post_init__(self) -> None:
        _one_of(self, "token", required=False)
        _check_headers(self, self.headers)
        if not self.success_status:
            raise ValueError(f"notifier {self.name}: success_status is empty")


NotifierConfig = (
    WebhookConfig
    | AlertmanagerConfig
    | SmtpConfig
    | WecomConfig
    | DingtalkConfig
    | FeishuConfig
    | SmsConfig
)


# --- shared pieces -----------------------------------------------------------------------


class TokenBucket:
    """``per_minute`` tokens refilled evenly, at most ``per_minute`` saved up. Thread-safe."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self.tokens = self.capacity
        self.last = clock()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + max(0.0, now - self.last) * self.rate)
            self.last = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return True
            return False


def redact_url(url: str) -> str:
    """``url`` fit for a log line: no user info, every query value and a hook token ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(a malformed URL)"
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    if parts.username or parts.password:
        netloc = "***@" + netloc
    query = "&".join(
        f"{key}=***" for key, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    )
    path = re.sub(r"(/hook/)[^/]+", r"\1***", parts.path)
    return urllib.parse.urlunsplit((parts.scheme, netloc, path, query, ""))


def _read_secret(inline: str | None, path: str | None, what: str) -> str | None:
    if inline is not None:
        return inline
    if not path:
        return None
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise NotifierError(f"{what}_file {path}: cannot read it ({reason})") from None
    if not lines or not lines[0].strip():
        raise NotifierError(f"{what}_file {path}: the first line is empty")
    return lines[0].strip()


def _snippet(body: bytes) -> str:
    text = " ".join(body[:2000].decode("utf-8", "replace").split())
    return text[:200] or "(empty)"


def _cut(text: str, max_bytes: int) -> str:
    """``text`` cut to ``max_bytes`` of UTF-8, with "…"."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[: max_bytes - 3].decode("utf-8", "ignore").rstrip() + "…"


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _targets(to: str) -> list[str]:
    return [part.strip() for part in re.split(r"[,;]", to) if part.strip()]


def _is_phone(target: str) -> bool:
    return bool(_PHONE.fullmatch(target))


def _is_all(target: str) -> bool:
    return target.lower() in ("@all", "all")


class _Answer(NamedTuple):
    status: int
    body: bytes


def _request(
    url: str,
    data: bytes | None,
    headers: dict[str, str],
    timeout: float,
    ca_file: str | None = None,
    method: str = "POST",
) -> _Answer:
    """One HTTP request; any status comes back as an answer, transport trouble raises."""
    where = redact_url(url)
    context = ssl.create_default_context(cafile=ca_file) if url.startswith("https:") else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:
            return _Answer(answer.status, answer.read(_MAX_ANSWER))
    except urllib.error.HTTPError as exc:
        with exc:
            body = exc.read(_MAX_ANSWER) if exc.fp is not None else b""
        return _Answer(exc.code, body)
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise DeliveryError(
                False, f"{where}: its TLS certificate is not trusted ({reason.verify_message})"
            ) from None
        if isinstance(reason, TimeoutError):
            raise DeliveryError(True, f"{where}: no answer within {timeout:g} s") from None
        raise DeliveryError(True, f"{where}: cannot connect ({reason})") from None
    except TimeoutError:
        raise DeliveryError(True, f"{where}: no answer within {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise DeliveryError(True, f"{where}: {type(exc).__name__} ({exc})") from None


def _require_2xx(answer: _Answer, url: str) -> None:
    status = answer.status
    if 200 <= status < 300:
        return
    retryable = status in (408, 425, 429) or status >= 500
    raise DeliveryError(
        retryable, f"{redact_url(url)} answered HTTP {status}: {_snippet(answer.body)}"
    )


def _json_answer(answer: _Answer, url: str) -> dict[str, Any]:
    try:
        data = json.loads(answer.body or b"{}")
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise DeliveryError(
            True, f"{redact_url(url)}: unexpected answer {_snippet(answer.body)}"
        ) from None
    return data


def _json(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _json_headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT}
    headers.update(extra or {})
    return headers


class Notifier(Protocol):
    """What the delivery worker needs of a notifier."""

    name: str

    def send(self, message: Message, n: Notification) -> None: ...

    def check(self) -> None: ...


class _Notifier:
    """Rate limit, secret scrubbing and logging around ``_send``."""

    kind = ""

    def __init__(self, config: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.name: str = config.name
        self.bucket = TokenBucket(config.rate_per_minute, clock)

    def send(self, message: Message, n: Notification) -> None:
        if not self.bucket.take():
            raise DeliveryError(
                True, f"notifier {self.name}: rate limited ({self.config.rate_per_minute}/min)"
            )
        try:
            self._send(message, n)
        except NotifierError as exc:
            retryable = getattr(exc, "retryable", False)
            detail = f"notifier {self.name} ({self.kind}): {self._scrub(str(exc))}"
            raise DeliveryError(retryable, detail) from None
        except Exception as exc:  # a bug or a config the checks missed: do not retry it
            detail = f"{type(exc).__name__}: {self._scrub(str(exc))}"
            raise DeliveryError(False, f"notifier {self.name} ({self.kind}): {detail}") from None
        log.debug("notifier %s: sent a %s message", self.name, n.status)

    def check(self) -> None:
        """Read the secrets now; raises ``NotifierError`` when one cannot be had."""
        self._secrets()

    def _send(self, message: Message, n: Notification) -> None:  # pragma: no cover
        raise NotImplementedError

    def _secrets(self) -> list[str]:
        return []

    def _scrub(self, text: str) -> str:
        try:
            secrets = self._secrets()
        except NotifierError:
            secrets = []
        url = getattr(self.config, "url", None)
        if isinstance(url, str):
            secrets += _query_secrets(url)
        for secret in sorted(secrets, key=len, reverse=True):
            if len(secret) >= 4:
                text = text.replace(secret, "***")
                quoted = urllib.parse.quote(secret, safe="")
                text = text.replace(quoted, "***") if len(quoted) >= 4 else text
        return text


def _query_secrets(url: str) -> list[str]:
    parts = urllib.parse.urlsplit(url)
    found = [value for _, value in urllib.parse.parse_qsl(parts.query)]
    hook = re.search(r"/hook/([^/]+)", parts.path)
    if hook:
        found.append(hook.group(1))
    if parts.password:
        found.append(parts.password)
    return found


# --- webhook -----------------------------------------------------------------------------


def _alert_json(alert: Alert) -> dict[str, Any]:
    return {
        "key": alert.key,
        "rule": alert.rule,
        "labels": alert.labels,
        "severity": alert.severity,
        "state": alert.state,
        "started": alert.started,
        "value": alert.value,
        "args": alert.args,
    }


class _BearerNotifier(_Notifier):
    """A notifier that may send ``Authorization: Bearer`` (webhook, Alertmanager)."""

    config: WebhookConfig | AlertmanagerConfig

    def _token(self) -> str | None:
        c = self.config
        return _read_secret(c.bearer_token, c.bearer_token_file, "bearer_token")

    def _secrets(self) -> list[str]:
        token = self._token()
        return [token] if token else []


class WebhookNotifier(_BearerNotifier):
    """POST ``{version, status, route, level, locale, audience, to, alerts, title, text,
    ack_url}`` as JSON; any 2xx is success."""

    kind = "webhook"
    config: WebhookConfig

    def _send(self, message: Message, n: Notification) -> None:
        c = self.config
        payload = {
            "version": "1",
            "status": n.status,
            "route": n.route,
            "level": n.level,
            "locale": n.locale,
            "audience": n.audience,
            "to": n.to,
            "alerts": [_alert_json(a) for a in n.alerts],
            "title": message.title,
            "text": message.text,
            "ack_url": n.ack_url,
        }
        headers = _json_headers()
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        headers.update(c.headers)
        answer = _request(c.url, _json(payload), headers, c.timeout_seconds, c.ca_file)
        _require_2xx(answer, c.url)


# --- alertmanager ------------------------------------------------------------------------


def _label_name(name: str) -> str:
    name = re.sub(r"[^a-zA-Z0-9_]", "_", name)
    return name if re.match(r"[a-zA-Z_]", name) else "_" + name


class AlertmanagerNotifier(_BearerNotifier):
    """POST the group's alerts to Alertmanager's API v2. A firing alert carries ``endsAt`` =
    now + ``ends_after_seconds`` (default 86400, bounded 300 s .. 30 days): without it
    Alertmanager would resolve the alert by itself after its ``resolve_timeout`` (5 min by
    default), as Outpost does not send firing alerts again that often. Keep it longer than
    the dispatch's ``repeat_every_seconds`` (each repeat moves ``endsAt`` on): an alert that
    is not sent again within it ends in Alertmanager, though not in Outpost. A resolved alert
    carries ``endsAt`` = its ``resolved_at``."""

    kind = "alertmanager"
    config: AlertmanagerConfig

    def alerts(self, message: Message, n: Notification, now: float) -> list[dict[str, Any]]:
        """The request body (a list of postable alerts)."""
        c = self.config
        out: list[dict[str, Any]] = []
        if n.status == "test":
            item: dict[str, Any] = {
                "labels": {"alertname": "test_message", "severity": "info", "route": n.route},
                "annotations": {"summary": message.title, "description": message.text},
                "startsAt": _rfc3339(now),
                "endsAt": _rfc3339(now + 300),
            }
            out.append(item)
        for alert in n.alerts if n.status != "test" else []:
            labels = {"alertname": alert.rule, "severity": alert.severity}
            for key, value in alert.labels.items():
                name = _label_name(key)
                if value and name not in labels:
                    labels[name] = value
            annotations = {
                "summary": summarize(alert, n.locale),
                "description": message.text,
            }
            if n.ack_url:
                annotations["ack_url"] = n.ack_url
            item = {
                "labels": labels,
                "annotations": annotations,
                "startsAt": _rfc3339(alert.fired_at or alert.started),
            }
            if n.status == "resolved" or alert.state == "resolved":
                item["endsAt"] = _rfc3339(alert.resolved_at or now)
            else:
                item["endsAt"] = _rfc3339(now + c.ends_after_seconds)
            if c.generator_url:
                item["generatorURL"] = c.generator_url
            out.append(item)
        return out

    def _send(self, message: Message, n: Notification) -> None:
        c = self.config
        url = c.url.rstrip("/") + "/api/v2/alerts"
        body = self.alerts(message, n, time.time())
        if not body:
            return
        headers = _json_headers()
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        headers.update(c.headers)
        answer = _request(url, _json(body), headers, c.timeout_seconds, c.ca_file)
        _require_2xx(answer, url)


# --- smtp --------------------------------------------------------------------------------


def _smtp_text(exc: smtplib.SMTPResponseException) -> str:
    error = exc.smtp_error
    text = error.decode("utf-8", "replace") if isinstance(error, bytes) else str(error)
    return f"{exc.smtp_code} {' '.join(text.split())}"


class SmtpNotifier(_Notifier):
    """A plain-text UTF-8 mail: subject = title, body = text, to = the target (one address
    or several separated by commas)."""

    kind = "smtp"
    config: SmtpConfig

    def _password(self) -> str | None:
        c = self.config
        return _read_secret(c.password, c.password_file, "password")

    def _secrets(self) -> list[str]:
        password = self._password()
        return [password] if password else []

    def mail(self, message: Message, n: Notification) -> EmailMessage:
        c = self.config
        recipients = _targets(n.to)
        if not recipients:
            raise DeliveryError(False, "no recipient address (the target's `to` is empty)")
        mail = EmailMessage()
        mail["Subject"] = message.title
        mail["From"] = c.from_
        mail["To"] = ", ".join(recipients)
        mail["Date"] = formatdate(usegmt=True)
        domain = parseaddr(c.from_)[1].rpartition("@")[2] or "localhost"
        mail["Message-ID"] = make_msgid(domain=domain)
        mail["X-Mailer"] = USER_AGENT
        mail.set_content(message.text, charset="utf-8")
        return mail

    def _send(self, message: Message, n: Notification) -> None:
        c = self.config
        mail = self.mail(message, n)
        recipients = _targets(n.to)
        password = self._password()
        port = c.port or (465 if c.ssl else 587 if c.starttls else 25)
        where = f"SMTP {c.host}:{port}"
        try:
            context = ssl.create_default_context(cafile=c.ca_file)
            smtp: smtplib.SMTP
            if c.ssl:
                smtp = smtplib.SMTP_SSL(c.host, port, timeout=c.timeout_seconds, context=context)
            else:
                smtp = smtplib.SMTP(c.host, port, timeout=c.timeout_seconds)
            with smtp:
                smtp.ehlo()
                if c.starttls and not c.ssl:
                    smtp.starttls(context=context)
                    smtp.ehlo()
                if c.username:
                    smtp.login(c.username, password or "")
                smtp.send_message(mail, to_addrs=recipients)
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(False, f"{where}: login refused ({_smtp_text(exc)})") from None
        except smtplib.SMTPNotSupportedError as exc:
            raise DeliveryError(False, f"{where}: not supported by the server ({exc})") from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            retryable = all(400 <= code < 500 for code in codes)
            refused = ", ".join(f"{addr} ({code})" for addr, (code, _) in exc.recipients.items())
            raise DeliveryError(retryable, f"{where}: recipients refused: {refused}") from None
        except smtplib.SMTPResponseException as exc:
            retryable = 400 <= exc.smtp_code < 500
            raise DeliveryError(retryable, f"{where}: {_smtp_text(exc)}") from None
        except smtplib.SMTPServerDisconnected as exc:
            raise DeliveryError(True, f"{where}: disconnected ({exc})") from None
        except ssl.SSLCertVerificationError as exc:
            raise DeliveryError(
                False, f"{where}: its TLS certificate is not trusted ({exc.verify_message})"
            ) from None
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
            raise DeliveryError(True, f"{where}: TLS connection closed ({exc})") from None
        except ssl.SSLError as exc:
            raise DeliveryError(False, f"{where}: TLS failed ({exc.reason or exc})") from None
        except TimeoutError:
            raise DeliveryError(
                True, f"{where}: no answer within {c.timeout_seconds:g} s"
            ) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(True, f"{where}: {type(exc).__name__} ({exc})") from None


# --- robots ------------------------------------------------------------------------------


def dingtalk_sign(secret: str, timestamp_ms: str) -> str:
    """DingTalk 加签: base64(HMAC-SHA256(key=secret, msg=f"{timestamp}\\n{secret}")); the
    caller URL-encodes it as the ``sign`` query parameter next to ``timestamp``."""
    digest = hmac.new(
        secret.encode("utf-8"), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256
    ).digest()
    return base64.b64encode(digest).decode("ascii")


def feishu_sign(secret: str, timestamp_s: str) -> str:
    """Feishu 签名校验: base64(HMAC-SHA256(key=f"{timestamp}\\n{secret}", msg=b""))."""
    key = f"{timestamp_s}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode("ascii")


def _add_query(url: str, params: dict[str, str]) -> str:
    joiner = "&" if urllib.parse.urlsplit(url).query else ("" if url.endswith("?") else "?")
    return url + joiner + urllib.parse.urlencode(params)


class _Robot(_Notifier):
    """A chat robot: the webhook URL is a secret; errors come as HTTP 200 with a code."""

    config: Any
    code_field = "errcode"
    retry_codes: frozenset[int] = frozenset()

    def _url(self) -> str:
        url = _read_secret(self.config.url, self.config.url_file, "url")
        assert url is not None  # one of url, url_file is required
        if not re.match(r"^https?://[^\s/?#]+", url):
            raise NotifierError("url_file: the first line is not an http(s) URL")
        return url

    def _signing_secret(self) -> str | None:
        return None

    def _secrets(self) -> list[str]:
        url = self._url()
        found = [url, *_query_secrets(url)]
        secret = self._signing_secret()
        if secret:
            found.append(secret)
        return found

    def _post(self, url: str, payload: dict[str, Any]) -> None:
        c = self.config
        answer = _request(url, _json(payload), _json_headers(), c.timeout_seconds)
        _require_2xx(answer, url)
        data = _json_answer(answer, url)
        code = data.get(self.code_field, data.get("StatusCode", 0))
        if code in (0, None):
            return
        message = data.get("errmsg") or data.get("msg") or data.get("StatusMessage") or ""
        retryable = isinstance(code, int) and code in self.retry_codes
        raise DeliveryError(
            retryable, f"{redact_url(url)} refused the message: {self.code_field} {code} {message}"
        )


class WecomNotifier(_Robot):
    """WeCom group robot: ``{"msgtype": "markdown", "markdown": {"content"}}`` (4096 bytes),
    or ``{"msgtype": "text", "text": {"content", "mentioned_mobile_list",
    "mentioned_list"}}`` (2048 bytes) when the target names phones, user ids or ``@all``
    (WeCom markdown cannot @ anyone). errcode 45009 (too frequent) and -1 (busy) are
    retryable."""

    kind = "wecom"
    retry_codes = frozenset({-1, 45009})

    def payload(self, message: Message, n: Notification) -> dict[str, Any]:
        targets = _targets(n.to)
        phones = [("@all" if _is_all(t) else t) for t in targets if _is_phone(t) or _is_all(t)]
        users = [t for t in targets if not (_is_phone(t) or _is_all(t))]
        if self.config.msgtype == "text" or targets:
            text: dict[str, Any] = {"content": _cut(message.text, 2048)}
            if phones:
                text["mentioned_mobile_list"] = phones
            if users:
                text["mentioned_list"] = users
            return {"msgtype": "text", "text": text}
        return {"msgtype": "markdown", "markdown": {"content": _cut(message.markdown, 4096)}}

    def _send(self, message: Message, n: Notification) -> None:
        self._post(self._url(), self.payload(message, n))


class DingtalkNotifier(_Robot):
    """DingTalk custom robot: ``{"msgtype": "markdown", "markdown": {"title", "text"}, "at":
    {"atMobiles", "isAtAll"}}`` (or text); the phones are also written into the text, which
    DingTalk needs to show the @. With a secret, ``timestamp`` (ms) and ``sign`` go in the
    query. errcode 130101 (more than 20 a minute) and -1 (busy) are retryable."""

    kind = "dingtalk"
    retry_codes = frozenset({-1, 130101})

    def _signing_secret(self) -> str | None:
        c = self.config
        return _read_secret(c.secret, c.secret_file, "secret")

    def payload(self, message: Message, n: Notification) -> dict[str, Any]:
        targets = _targets(n.to)
        phones = [t.replace(" ", "") for t in targets if _is_phone(t)]
        at_all = any(_is_all(t) for t in targets)
        mention = " ".join(f"@{p}" for p in phones)
        at = {"atMobiles": phones, "isAtAll": at_all}
        if self.config.msgtype == "text":
            content = message.text + (f"\n{mention}" if mention else "")
            return {"msgtype": "text", "text": {"content": _cut(content, 18000)}, "at": at}
        text = message.markdown + (f"\n\n{mention}" if mention else "")
        markdown = {"title": message.title, "text": _cut(text, 18000)}
        return {"msgtype": "markdown", "markdown": markdown, "at": at}

    def _send(self, message: Message, n: Notification) -> None:
        url = self._url()
        secret = self._signing_secret()
        if secret:
            timestamp = str(round(time.time() * 1000))
            url = _add_query(
                url, {"timestamp": timestamp, "sign": dingtalk_sign(secret, timestamp)}
            )
        self._post(url, self.payload(message, n))


class FeishuNotifier(_Robot):
    """Feishu custom bot: ``{"msg_type": "text", "content": {"text"}}`` or a ``post`` (rich
    text, the acknowledge link clickable); with a secret, ``timestamp`` (s) and ``sign`` in
    the body. A target ``all`` @s everyone, other non-phone targets are user ids (the bot
    cannot @ by phone). code 11232 and 99991400 (frequency limits) are retryable."""

    kind = "feishu"
    code_field = "code"
    retry_codes = frozenset({11232, 99991400})

    def _signing_secret(self) -> str | None:
        c = self.config
        return _read_secret(c.secret, c.secret_file, "secret")

    def payload(self, message: Message, n: Notification) -> dict[str, Any]:
        targets = [t for t in _targets(n.to) if not _is_phone(t)]
        mentions = [
            '<at user_id="all">所有人</at>' if _is_all(t) else f'<at user_id="{t}"></at>'
            for t in targets
        ]
        if self.config.msg_type == "text":
            text = _cut(message.text, 15000)
            if mentions:
                text = " ".join(mentions) + "\n" + text
            return {"msg_type": "text", "content": {"text": text}}
        lines = message.text.split("\n")
        if lines and lines[0] == message.title:
            lines = lines[1:]
        content: list[list[dict[str, str]]] = []
        for line in lines:
            if n.ack_url and n.ack_url in line:
                before, _, after = line.partition(n.ack_url)
                row = [{"tag": "text", "text": before}] if before else []
                row.append({"tag": "a", "text": n.ack_url, "href": n.ack_url})
                if after:
                    row.append({"tag": "text", "text": after})
                content.append(row)
            else:
                content.append([{"tag": "text", "text": line}])
        for t in targets:
            content.append([{"tag": "at", "user_id": "all" if _is_all(t) else t}])
        lang = "zh_cn" if n.locale == "zh-CN" else "en_us"
        post = {lang: {"title": message.title, "content": content}}
        return {"msg_type": "post", "content": {"post": post}}

    def _send(self, message: Message, n: Notification) -> None:
        url = self._url()
        payload: dict[str, Any] = {}
        secret = self._signing_secret()
        if secret:
            timestamp = str(int(time.time()))
            payload["timestamp"] = timestamp
            payload["sign"] = feishu_sign(secret, timestamp)
        payload.update(self.payload(message, n))
        self._post(url, payload)


# --- sms ---------------------------------------------------------------------------------


class SmsNotifier(_Notifier):
    """An HTTP SMS gateway from a request template; the text is cut to ``max_length`` (a
    short last line such as the acknowledge link is kept whole)."""

    kind = "sms"
    config: SmsConfig

    def _token(self) -> str | None:
        c = self.config
        return _read_secret(c.token, c.token_file, "token")

    def _secrets(self) -> list[str]:
        token = self._token()
        return [token] if token else []

    def request(
        self, message: Message, n: Notification
    ) -> tuple[str, bytes | None, dict[str, str]]:
        """The URL, body and headers of the request."""
        c = self.config
        to = n.to.strip()
        if not to:
            raise DeliveryError(False, "no phone number (the target's `to` is empty)")
        values = {
            "to": to,
            "text": shorten(message.text, c.max_length),
            "title": message.title,
            "token": self._token() or "",
        }

        def fill(template: str, encode: Callable[[str], str]) -> str:
            return string.Template(template).safe_substitute(
                {key: encode(value) for key, value in values.items()}
            )

        url = fill(c.url, lambda v: urllib.parse.quote(v, safe=""))
        headers = {"User-Agent": USER_AGENT}
        headers.update({k: fill(v, lambda v: " ".join(v.split())) for k, v in c.headers.items()})
        if c.method == "GET":
            return url, None, headers
        if c.body_format == "json":
            body = fill(c.body, lambda v: json.dumps(v, ensure_ascii=False)[1:-1])
            content_type = "application/json; charset=utf-8"
        elif c.body_format == "form":
            body = fill(c.body, lambda v: urllib.parse.quote_plus(v))
            content_type = "application/x-www-form-urlencoded; charset=utf-8"
        else:
            body = fill(c.body, lambda v: v)
            content_type = "text/plain; charset=utf-8"
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = c.content_type or content_type
        return url, body.encode("utf-8"), headers

    def _send(self, message: Message, n: Notification) -> None:
        c = self.config
        url, body, headers = self.request(message, n)
        answer = _request(url, body, headers, c.timeout_seconds, c.ca_file, c.method)
        if answer.status not in c.success_status:
            status = answer.status
            retryable = status in (408, 425, 429) or status >= 500
            raise DeliveryError(
                retryable, f"{redact_url(url)} answered HTTP {status}: {_snippet(answer.body)}"
            )
        if c.success_contains and c.success_contains not in answer.body.decode("utf-8", "replace"):
            raise DeliveryError(
                False, f"{redact_url(url)}: the gateway refused it: {_snippet(answer.body)}"
            )


# --- registry ----------------------------------------------------------------------------

NOTIFIER_TYPES: dict[type, type[_Notifier]] = {
    WebhookConfig: WebhookNotifier,
    AlertmanagerConfig: AlertmanagerNotifier,
    SmtpConfig: SmtpNotifier,
    WecomConfig: WecomNotifier,
    DingtalkConfig: DingtalkNotifier,
    FeishuConfig: FeishuNotifier,
    SmsConfig: SmsNotifier,
}


def build_notifier(config: NotifierConfig, clock: Callable[[], float] = time.monotonic) -> Notifier:
    """The notifier for a validated config (no I/O); ``clock`` drives its rate limit."""
    return NOTIFIER_TYPES[type(config)](config, clock)

"""The alerting part of the collector's HTTP API, as a function of the request.

Reading is open on the listen address; writing (acknowledge, unacknowledge, silence, remove a
silence, send a test) needs ``Authorization: Bearer <token>`` with the token of
``alerting.api_token_file``. The one exception is the acknowledge link in a message: it
carries its own signed, expiring token. Following the link shows a page with a button
(``GET``); only pressing it (``POST``) acknowledges, so a chat app that previews links
acknowledges nothing.

| method and path | what |
|---|---|
| GET /api/v1/alerts[?state=firing\\|pending\\|resolved] | alerts, firing first |
| POST /api/v1/alerts/ack | {"keys": [...], "by": "...", "note": "..."} |
| POST /api/v1/alerts/unack | {"keys": [...]} |
| GET, POST /api/v1/alerts/ack?token=... | the link: a page, then the acknowledgement |
| GET /api/v1/silences | silences in force |
| POST /api/v1/silences | {"site"/"host"/"rule", "end" or "minutes", "reason", "by"} |
| DELETE /api/v1/silences/<id> | remove a silence |
| POST /api/v1/alerts/test | {"route": "..."}: a test message to the route's first step |

Every request refused for want of authority is counted by reason (``REFUSED_REASONS``), for
``outpost_api_requests_refused_total``: ``no_token`` (no bearer token), ``wrong_token``,
``writes_off`` (no ``api_token_file`` configured) and ``bad_link`` (an acknowledge link that
is forged, altered, expired or not configured, shown or pressed).
"""

from __future__ import annotations

import hmac
import html
import json
import logging
from datetime import datetime
from typing import Any, NamedTuple
from urllib.parse import parse_qs

from collector.alerting.links import LinkError
from collector.alerting.service import AlertService

__all__ = ["MAX_BODY", "REFUSED_REASONS", "Reply", "handle"]

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
JSON = "application/json; charset=utf-8"
HTML = "text/html; charset=utf-8"
REFUSED_REASONS = ("no_token", "wrong_token", "writes_off", "bad_link")


class Reply(NamedTuple):
    code: int
    content_type: str
    body: bytes


class _Refused(Exception):
    def __init__(self, code: int, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason  # one of REFUSED_REASONS when authority was missing


def _count_refused(service: AlertService, reason: str) -> None:
    with service.lock:
        service.api_refused[reason] += 1


def _json(code: int, obj: Any) -> Reply:
    return Reply(code, JSON, json.dumps(obj, ensure_ascii=False).encode())


def handles(path: str) -> bool:
    return path.startswith(("/api/v1/alerts", "/api/v1/silences"))


def handle(
    service: AlertService, method: str, path: str, query: str, headers: Any, body: bytes
) -> Reply:
    """Answer one request; never raises."""
    try:
        return _route(service, method, path, query, headers, body)
    except _Refused as exc:
        if exc.reason:
            _count_refused(service, exc.reason)
        return _json(exc.code, {"error": str(exc)})
    except (ValueError, KeyError) as exc:
        return _json(400, {"error": str(exc).strip("'\"")[:300]})


def _route(
    service: AlertService, method: str, path: str, query: str, headers: Any, body: bytes
) -> Reply:
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    form = "application/x-www-form-urlencoded" in str(headers.get("Content-Type", ""))
    if path == "/api/v1/alerts/ack" and (method == "GET" or "token" in params or form):
        return _link(service, method, params, body)
    if method == "GET":
        if path == "/api/v1/alerts":
            state = params.get("state")
            alerts = service.alerts_json()
            if state:
                alerts = [a for a in alerts if a["state"] == state]
            return _json(200, {"alerts": alerts})
        if path == "/api/v1/silences":
            return _json(200, {"silences": service.silences_json()})
        raise _Refused(404, f"no such endpoint {path[:100]}")
    _authorise(service, headers)
    data = _body(body)
    if method == "POST" and path == "/api/v1/alerts/ack":
        done = service.ack(_keys(data), str(data.get("by", "")), str(data.get("note", "")))
        return _json(200, {"acknowledged": done})
    if method == "POST" and path == "/api/v1/alerts/unack":
        return _json(200, {"unacknowledged": service.unack(_keys(data))})
    if method == "POST" and path == "/api/v1/silences":
        made = service.silence(
            end=_end(data, service.clock()),
            reason=str(data.get("reason", "")),
            site=str(data.get("site", "")),
            host=str(data.get("host", "")),
            rule=str(data.get("rule", "")),
            by=str(data.get("by", "")),
        )
        return _json(201, {"silence": {"id": made.id, "end": made.end}})
    if method == "DELETE" and path.startswith("/api/v1/silences/"):
        silence_id = path.rsplit("/", 1)[1]
        if not service.unsilence(silence_id):
            raise _Refused(404, f"no silence {silence_id[:40]!r}")
        return _json(200, {"removed": silence_id})
    if method == "POST" and path == "/api/v1/alerts/test":
        notes = service.test(str(data.get("route", "")))
        return _json(200, {"queued": [{"notifier": n.notifier, "to": n.to} for n in notes]})
    raise _Refused(404, f"no such endpoint {method} {path[:100]}")


def _authorise(service: AlertService, headers: Any) -> None:
    if not service.token:
        raise _Refused(
            403, "write access is off: set alerting.api_token_file in collector.yaml", "writes_off"
        )
    given = str(headers.get("Authorization", ""))
    scheme, _, token = given.partition(" ")
    reason = "wrong_token" if given.strip() else "no_token"
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), service.token.encode()
    ):
        raise _Refused(401, "a valid 'Authorization: Bearer <token>' header is required", reason)


def _body(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_BODY:
        raise _Refused(413, f"request body over {MAX_BODY} bytes")
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise _Refused(400, "the request body is not JSON") from None
    if not isinstance(data, dict):
        raise _Refused(400, "the request body must be a JSON object")
    return data


def _keys(data: dict[str, Any]) -> list[str]:
    keys = data.get("keys")
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise _Refused(400, '"keys" must be a non-empty list of alert keys')
    return [k[:64] for k in keys[:1000]]


def _end(data: dict[str, Any], now: float) -> float:
    if "minutes" in data:
        minutes = data["minutes"]
        if not isinstance(minutes, int | float) or not 0 < minutes <= 366 * 24 * 60:
            raise _Refused(400, '"minutes" must be a number over 0, at most a year')
        return now + float(minutes) * 60
    end = data.get("end")
    if isinstance(end, int | float):
        return float(end)
    if isinstance(end, str):
        try:
            when = datetime.fromisoformat(end)
        except ValueError:
            raise _Refused(400, '"end" must be seconds since 1970 or ISO 8601') from None
        if when.tzinfo is None:
            raise _Refused(400, '"end" needs a time zone, e.g. 2026-12-01T18:00:00+08:00')
        return when.timestamp()
    raise _Refused(400, 'give "end" (seconds since 1970 or ISO 8601) or "minutes"')


# --- the acknowledge link -------------------------------------------------------------------

_PAGE = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Outpost</title>
<style>body{{font-family:sans-serif;max-width:32em;margin:2em auto;padding:0 1em}}
button{{font-size:1.2em;padding:.5em 1.5em}}</style></head><body>
{content}
</body></html>
"""


def _page(code: int, content: str) -> Reply:
    return Reply(code, HTML, _PAGE.format(content=content).encode())


def _link(service: AlertService, method: str, params: dict[str, str], body: bytes) -> Reply:
    form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
    token = form.get("token") or params.get("token", "")
    if method == "GET":
        try:
            from collector.alerting.links import verify

            if not service.link_secret:
                raise LinkError("signature", "acknowledge links are not configured")
            keys = verify(service.link_secret, token, service.clock())
        except LinkError as exc:
            _count_refused(service, "bad_link")
            return _page(400, _link_error(exc))
        alerts = {a["key"]: a for a in service.alerts_json()}
        rows = "".join(
            f"<li>{html.escape(a['rule'])} {html.escape(a['site'])} {html.escape(a['host'])}"
            f" ({html.escape(a['state'])})</li>"
            for a in (alerts[k] for k in keys if k in alerts)
        )
        return _page(
            200,
            f"<h1>确认告警 / Acknowledge</h1><ul>{rows or '<li>-</li>'}</ul>"
            '<form method="post" action="/api/v1/alerts/ack">'
            f'<input type="hidden" name="token" value="{html.escape(token)}">'
            '<p><label>姓名 / Name: <input name="by" maxlength="64"></label></p>'
            '<button type="submit">我来处理 / I will handle it</button></form>'
            "<p>确认后，告警不再升级给下一位值班人员。<br>"
            "Once acknowledged, the alert is not escalated to the next person.</p>",
        )
    by = (form.get("by") or params.get("by") or "link").strip()[:64]
    try:
        done = service.ack_token(token, by)
    except LinkError as exc:
        _count_refused(service, "bad_link")
        return _page(400, _link_error(exc))
    log.info("acknowledged through a link by %s: %s", by, ", ".join(done) or "nothing new")
    return _page(
        200,
        f"<h1>已确认 / Acknowledged</h1><p>{len(done)} 条告警由 {html.escape(by)} 确认。<br>"
        f"{len(done)} alert(s) acknowledged by {html.escape(by)}.</p>",
    )


def _link_error(exc: LinkError) -> str:
    if exc.reason == "expired":
        return (
            "<h1>链接已过期 / Link expired</h1><p>请在告警列表中确认，或联系县信息中心。<br>"
            "Acknowledge it from the alert list, or call the county IT centre.</p>"
        )
    return "<h1>链接无效 / Invalid link</h1><p>请完整复制链接。<br>Copy the whole link.</p>"

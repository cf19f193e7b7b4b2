"""Notifiers against local receivers: request formats, signatures, errors, rate limits.

Each HTTP test starts its own receiver on a free loopback port; the mail tests start an
aiosmtpd server (plain, STARTTLS with a self-signed certificate, or implicit TLS, with
AUTH). The DingTalk and Feishu signatures are checked with the documented algorithms written
out again here, not with the code under test.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import socket
import ssl
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Iterator
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from collector.alerting.model import Alert, Notification, alert_key
from collector.alerting.notifiers import (
    AlertmanagerConfig,
    AlertmanagerNotifier,
    DeliveryError,
    DingtalkConfig,
    FeishuConfig,
    NotifierConfig,
    NotifierError,
    SmsConfig,
    SmtpConfig,
    TokenBucket,
    WebhookConfig,
    WecomConfig,
    build_notifier,
    redact_url,
)
from collector.alerting.templates import Message

STARTED = 1_780_000_000.0
ACK = "https://outpost.example/ack/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
MESSAGE = Message(
    "[严重] 宝山村小学：主机 srv1 失联",
    "[严重] 宝山村小学：主机 srv1 失联\n已收不到主机 srv1 的数据。\n确认收到：" + ACK,
    "#### [严重] 宝山村小学：主机 srv1 失联\n\n已收不到主机 srv1 的数据。\n\n"
    f"确认收到：[点此确认]({ACK})",
)


def make_alert(rule: str = "host_down", host: str = "srv1", **kw: Any) -> Alert:
    labels = {"site": "baoshan", "host": host, **kw.pop("labels", {})}
    fields: dict[str, Any] = {
        "key": alert_key(rule, labels),
        "rule": rule,
        "labels": labels,
        "severity": "critical",
        "state": "firing",
        "started": STARTED,
        "last_active": STARTED + 300,
        "fired_at": STARTED + 120,
    }
    fields.update(kw)
    return Alert(**fields)


def note(to: str = "", status: str = "firing", alerts: list[Alert] | None = None) -> Notification:
    return Notification(
        "n", to, "zh-CN", "it", [make_alert()] if alerts is None else alerts, status,
        ACK if status == "firing" else "", "county-it", 1,
    )  # fmt: skip


def config(data: dict[str, Any]) -> NotifierConfig:
    return msgspec.convert(data, NotifierConfig)  # type: ignore[arg-type]


# --- a local HTTP receiver ---------------------------------------------------------------


class Request(NamedTuple):
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def query(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (timeout tests) is expected


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.answers: deque[tuple[int, bytes, float]] = deque()
        self.default: tuple[int, bytes] = (200, b"{}")
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.requests.append(Request(self.command, self.path, headers, body))
                if receiver.answers:
                    status, payload, delay = receiver.answers.popleft()
                else:
                    (status, payload), delay = receiver.default, 0.0
                if delay:
                    time.sleep(delay)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_POST = do_GET = do_PUT = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, status: int, body: Any = None, delay: float = 0.0) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body or {}).encode()
        self.answers.append((status, payload, delay))

    @property
    def last(self) -> Request:
        assert self.requests, "no request arrived"
        return self.requests[-1]


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    r = Receiver()
    r.thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()
        r.thread.join(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- webhook -----------------------------------------------------------------------------


def test_webhook_request(receiver: Receiver, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\nignored second line\n")
    notifier = build_notifier(
        config(
            {
                "type": "webhook",
                "name": "hook",
                "url": receiver.url + "/outpost/alerts",
                "bearer_token_file": str(token),
                "headers": {"X-Outpost-County": "lincang"},
            }
        )
    )
    alert = make_alert(value=0.97, args={"mount": "/"})
    notifier.send(MESSAGE, note(to="ops", alerts=[alert]))
    request = receiver.last
    assert (request.method, request.path) == ("POST", "/outpost/alerts")
    assert request.headers["content-type"] == "application/json; charset=utf-8"
    assert request.headers["authorization"] == "Bearer s3cret-token"
    assert request.headers["x-outpost-county"] == "lincang"
    assert request.headers["user-agent"].startswith("outpost-collector/")
    assert request.json() == {
        "version": "1",
        "status": "firing",
        "route": "county-it",
        "level": 1,
        "locale": "zh-CN",
        "audience": "it",
        "to": "ops",
        "alerts": [
            {
                "key": alert.key,
                "rule": "host_down",
                "labels": {"site": "baoshan", "host": "srv1"},
                "severity": "critical",
                "state": "firing",
                "started": STARTED,
                "value": 0.97,
                "args": {"mount": "/"},
            }
        ],
        "title": MESSAGE.title,
        "text": MESSAGE.text,
        "ack_url": ACK,
    }


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(500, True), (503, True), (429, True), (408, True), (404, False), (400, False), (401, False)],
)
def test_webhook_http_errors(receiver: Receiver, status: int, retryable: bool) -> None:
    notifier = build_notifier(config({"type": "webhook", "name": "hook", "url": receiver.url}))
    receiver.answer(status, {"error": "nope"})
    with pytest.raises(DeliveryError) as info:
        notifier.send(MESSAGE, note())
    assert info.value.retryable is retryable
    assert f"HTTP {status}" in str(info.value) and "nope" in str(info.value)
    assert "notifier hook (webhook)" in str(info.value)


def test_webhook_any_2xx_is_success(receiver: Receiver) -> None:
    notifier = build_notifier(config({"type": "webhook", "name": "hook", "url": receiver.url}))
    receiver.answer(204, b"")
    notifier.send(MESSAGE, note())


def test_unreachable_and_slow_receivers_are_retryable(receiver: Receiver) -> None:
    closed = build_notifier(
        config({"type": "webhook", "name": "hook", "url": f"http://127.0.0.1:{free_port()}/x"})
    )
    with pytest.raises(DeliveryError) as info:
        closed.send(MESSAGE, note())
    assert info.value.retryable and "cannot connect" in str(info.value)
    slow = build_notifier(
        config({"type": "webhook", "name": "hook", "url": receiver.url, "timeout_seconds": 0.2})
    )
    receiver.answer(200, {}, delay=1.0)
    with pytest.raises(DeliveryError) as info:
        slow.send(MESSAGE, note())
    assert info.value.retryable and "no answer within 0.2 s" in str(info.value)


def test_secrets_never_appear_in_errors(receiver: Receiver) -> None:
    notifier = build_notifier(
        config(
            {
                "type": "webhook",
                "name": "hook",
                "url": receiver.url + "/in?apikey=k3y-in-url",
                "bearer_token": "t0ken-value",
            }
        )
    )
    receiver.answer(400, {"error": "bad token t0ken-value for key k3y-in-url"})
    with pytest.raises(DeliveryError) as info:
        notifier.send(MESSAGE, note())
    text = str(info.value)
    assert "t0ken-value" not in text and "k3y-in-url" not in text
    assert "apikey=***" in text


def test_redact_url() -> None:
    assert (
        redact_url("https://user:pw@oapi.dingtalk.com/robot/send?access_token=abc&sign=x%2B")
        == "https://***@oapi.dingtalk.com/robot/send?access_token=***&sign=***"
    )
    assert (
        redact_url("https://open.feishu.cn/open-apis/bot/v2/hook/0b1c-2d3e")
        == "https://open.feishu.cn/open-apis/bot/v2/hook/***"
    )
    assert redact_url("http://[::1]:8080/a") == "http://[::1]:8080/a"


# --- alertmanager ------------------------------------------------------------------------


def test_alertmanager_request(receiver: Receiver) -> None:
    notifier = build_notifier(
        config(
            {
                "type": "alertmanager",
                "name": "am",
                "url": receiver.url + "/",
                "generator_url": "https://outpost.example/alerts",
                "bearer_token": "am-token",
            }
        )
    )
    disk = make_alert(
        "disk_full", "srv2", labels={"mountpoint": "/data", "bad-name": "x"}, value=0.95,
        severity="warning", args={"free_bytes": "1073741824"},
    )  # fmt: skip
    before = time.time()
    notifier.send(MESSAGE, note(alerts=[make_alert(), disk]))
    after = time.time()
    request = receiver.last
    assert (request.method, request.path) == ("POST", "/api/v2/alerts")
    assert request.headers["content-type"] == "application/json; charset=utf-8"
    assert request.headers["authorization"] == "Bearer am-token"
    body = request.json()
    assert body[0] == {
        "labels": {
            "alertname": "host_down",
            "severity": "critical",
            "site": "baoshan",
            "host": "srv1",
        },
        "annotations": {
            "summary": "主机 srv1 失联",
            "description": MESSAGE.text,
            "ack_url": ACK,
        },
        "startsAt": "2026-05-28T20:28:40.000Z",
        "endsAt": body[0]["endsAt"],
        "generatorURL": "https://outpost.example/alerts",
    }
    # Firing: endsAt a day ahead (the default), not left to Alertmanager's resolve_timeout.
    for item in body:
        ends = dt.datetime.fromisoformat(item["endsAt"].replace("Z", "+00:00")).timestamp()
        assert before + 86400 - 0.001 <= ends <= after + 86400 + 0.001
    assert body[1]["labels"] == {
        "alertname": "disk_full",
        "severity": "warning",
        "site": "baoshan",
        "host": "srv2",
        "mountpoint": "/data",
        "bad_name": "x",
    }
    assert body[1]["annotations"]["summary"] == "主机 srv2 磁盘 /data 已用 95%"
    dt.datetime.fromisoformat(body[1]["startsAt"].replace("Z", "+00:00"))


def test_alertmanager_ends_after_seconds() -> None:
    notifier = AlertmanagerNotifier(
        config(
            {"type": "alertmanager", "name": "am", "url": "http://am", "ends_after_seconds": 300}
        )
    )
    now = STARTED + 600.25
    (firing,) = notifier.alerts(MESSAGE, note(), now)
    assert firing["startsAt"] == "2026-05-28T20:28:40.000Z"
    assert firing["endsAt"] == "2026-05-28T20:41:40.250Z"  # now + 300 s
    gone = make_alert(state="resolved", resolved_at=STARTED + 500.0)
    (resolved,) = notifier.alerts(MESSAGE, note(status="resolved", alerts=[gone]), now)
    assert resolved["endsAt"] == "2026-05-28T20:35:00.000Z"  # resolved_at, not now + 300
    # Resolved without a resolved_at (not expected): now, so Alertmanager ends it at once.
    odd = make_alert(state="resolved")
    (item,) = notifier.alerts(MESSAGE, note(status="resolved", alerts=[odd]), now)
    assert item["endsAt"] == "2026-05-28T20:36:40.250Z"
    assert AlertmanagerConfig(name="am", url="http://am").ends_after_seconds == 86400


def test_alertmanager_resolved_and_test(receiver: Receiver) -> None:
    notifier = build_notifier(config({"type": "alertmanager", "name": "am", "url": receiver.url}))
    gone = make_alert(state="resolved", resolved_at=STARTED + 600.5)
    notifier.send(MESSAGE, note(status="resolved", alerts=[gone]))
    (item,) = receiver.last.json()
    assert item["endsAt"] == "2026-05-28T20:36:40.500Z"
    assert "ack_url" not in item["annotations"] and "generatorURL" not in item
    notifier.send(MESSAGE, note(status="test", alerts=[]))
    (item,) = receiver.last.json()
    assert item["labels"] == {"alertname": "test_message", "severity": "info", "route": "county-it"}
    starts = dt.datetime.fromisoformat(item["startsAt"].replace("Z", "+00:00")).timestamp()
    ends = dt.datetime.fromisoformat(item["endsAt"].replace("Z", "+00:00")).timestamp()
    assert abs(starts - time.time()) < 30 and ends - starts == 300


def test_alertmanager_errors(receiver: Receiver) -> None:
    notifier = build_notifier(config({"type": "alertmanager", "name": "am", "url": receiver.url}))
    receiver.answer(400, {"code": 400, "message": "start time must be before end time"})
    with pytest.raises(DeliveryError) as info:
        notifier.send(MESSAGE, note())
    assert not info.value.retryable and "start time" in str(info.value)
    receiver.answer(500, b"oops")
    with pytest.raises(DeliveryError) as info:
        notifier.send(MESSAGE, note())
    assert info.value.retryable


# --- wecom -------------------------------------------------------------------------------


def wecom(receiver: Receiver, **extra: Any) -> Any:
    data = {
        "type": "wecom",
        "name": "wx",
        "url": receiver.url + "/cgi-bin/webhook/send?key=wx-KEY-123",
    }
    data.update(extra)
    return build_notifier(config(data))


def test_wecom_markdown(receiver: Receiver) -> None:
    receiver.default = (200, b'{"errcode":0,"errmsg":"ok"}')
    wecom(receiver).send(MESSAGE, note())
    request = receiver.last
    assert request.path == "/cgi-bin/webhook/send?key=wx-KEY-123"
    assert request.headers["content-type"] == "application/json; charset=utf-8"
    assert request.json() == {"msgtype": "markdown", "markdown": {"content": MESSAGE.markdown}}


def test_wecom_text_mentions_phones(receiver: Receiver) -> None:
    receiver.default = (200, b'{"errcode":0,"errmsg":"ok"}')
    wecom(receiver).send(MESSAGE, note(to="13800001111, zhangsan"))
    assert receiver.last.json() == {
        "msgtype": "text",
        "text": {
            "content": MESSAGE.text,
            "mentioned_mobile_list": ["13800001111"],
            "mentioned_list": ["zhangsan"],
        },
    }
    wecom(receiver, msgtype="text").send(MESSAGE, note())
    assert receiver.last.json() == {"msgtype": "text", "text": {"content": MESSAGE.text}}


def test_wecom_cuts_long_messages_by_bytes(receiver: Receiver) -> None:
    receiver.default = (200, b'{"errcode":0,"errmsg":"ok"}')
    long = Message("t", "字" * 3000, "字" * 3000)
    wecom(receiver).send(long, note())
    content = receiver.last.json()["markdown"]["content"]
    assert len(content.encode()) <= 4096 and content.endswith("…")
    wecom(receiver).send(long, note(to="13800001111"))
    content = receiver.last.json()["text"]["content"]
    assert len(content.encode()) <= 2048 and content.endswith("…")


@pytest.mark.parametrize(
    ("errcode", "retryable"), [(45009, True), (-1, True), (93000, False), (40008, False)]
)
def test_wecom_error_codes(receiver: Receiver, errcode: int, retryable: bool) -> None:
    receiver.answer(200, {"errcode": errcode, "errmsg": "refused, key wx-KEY-123"})
    with pytest.raises(DeliveryError) as info:
        wecom(receiver).send(MESSAGE, note())
    assert info.value.retryable is retryable
    assert f"errcode {errcode}" in str(info.value)
    assert "wx-KEY-123" not in str(info.value)


def test_robot_answer_that_is_not_json(receiver: Receiver) -> None:
    receiver.answer(200, b"<html>gateway</html>")
    with pytest.raises(DeliveryError) as info:
        wecom(receiver).send(MESSAGE, note())
    assert info.value.retryable and "unexpected answer" in str(info.value)


# --- dingtalk ----------------------------------------------------------------------------


def documented_dingtalk_sign(secret: str, timestamp: str) -> str:
    # 把 timestamp+"\n"+密钥 当做签名字符串，使用 HmacSHA256 算法计算签名（密钥为 key），
    # 然后进行 Base64 encode，最后再把签名参数再进行 urlEncode。
    string_to_sign = f"{timestamp}\n{secret}".encode()
    code = hmac.new(secret.encode(), string_to_sign, digestmod=hashlib.sha256).digest()
    return urllib.parse.quote_plus(base64.b64encode(code))


def test_dingtalk_signed_markdown(receiver: Receiver, tmp_path: Path) -> None:
    secret = "SEC0123456789abcdef+/=secret"
    (tmp_path / "secret").write_text(secret + "\n")
    (tmp_path / "url").write_text(receiver.url + "/robot/send?access_token=ding-TOKEN\n")
    receiver.default = (200, b'{"errcode":0,"errmsg":"ok"}')
    notifier = build_notifier(
        config(
            {
                "type": "dingtalk",
                "name": "ding",
                "url_file": str(tmp_path / "url"),
                "secret_file": str(tmp_path / "secret"),
            }
        )
    )
    before = time.time() * 1000
    notifier.send(MESSAGE, note(to="13800001111,13900002222"))
    request = receiver.last
    path, _, raw_query = request.path.partition("?")
    assert path == "/robot/send"
    query = request.query
    assert query["access_token"] == "ding-TOKEN"
    timestamp = query["timestamp"]
    assert before - 1000 <= int(timestamp) <= time.time() * 1000 + 1000
    signed = documented_dingtalk_sign(secret, timestamp)
    assert f"sign={signed}" in raw_query.split("&")
    assert request.json() == {
        "msgtype": "markdown",
        "markdown": {
            "title": MESSAGE.title,
            "text": MESSAGE.markdown + "\n\n@13800001111 @13900002222",
        },
        "at": {"atMobiles": ["13800001111", "13900002222"], "isAtAll": False},
    }


def test_dingtalk_unsigned_text(receiver: Receiver) -> None:
    receiver.default = (200, b'{"errcode":0,"errmsg":"ok"}')
    notifier = build_notifier(
        config(
            {
                "type": "dingtalk",
                "name": "ding",
                "url": receiver.url + "/robot/send?access_token=ding-TOKEN",
                "msgtype": "text",
            }
        )
    )
    notifier.send(MESSAGE, note(to="@all"))
    assert receiver.last.query == {"access_token": "ding-TOKEN"}
    assert receiver.last.json() == {
        "msgtype": "text",
        "text": {"content": MESSAGE.text},
        "at": {"atMobiles": [], "isAtAll": True},
    }


@pytest.mark.parametrize(
    ("errcode", "retryable"), [(130101, True), (310000, False), (300001, False)]
)
def test_dingtalk_error_codes(receiver: Receiver, errcode: int, retryable: bool) -> None:
    notifier = build_notifier(
        config(
            {
                "type": "dingtalk",
                "name": "ding",
                "url": receiver.url + "/robot/send?access_token=ding-TOKEN",
                "secret": "SECabc",
            }
        )
    )
    receiver.answer(200, {"errcode": errcode, "errmsg": "sign not match"})
    with pytest.raises(DeliveryError) as info:
        notifier.send(MESSAGE, note())
    assert info.value.retryable is retryable
    text = str(info.value)
    assert f"errcode {errcode} sign not match" in text
    assert "ding-TOKEN" not in text and "SECabc" not in text
    assert "access_token=***&timestamp=***&sign=***" in text


# --- feishu ------------------------------------------------------------------------------


def documented_feishu_sign(secret: str, timestamp: int) -> str:
    # 把 timestamp + "\n" + 密钥 当做签名字符串，使用 HmacSHA256 算法计算签名，再进行 Base64
    # 编码（签名字符串作 HMAC 的密钥，消息为空）。
    string_to_sign = f"{timestamp}\n{secret}"
    code = hmac.new(string_to_sign.encode("utf-8"), digestmod=hashlib.sha256).digest()
    return base64.b64encode(code).decode("utf-8")


def test_feishu_signed_text(receiver: Receiver) -> None:
    receiver.default = (200, b'{"code":0,"data":{},"msg":"success"}')
    notifier = build_notifier(
        config(
            {
                "type": "feishu",
                "name": "fs",
                "url": receiver.url + "/open-apis/bot/v2/hook/fs-HOOK-id",
                "secret": "fs-secret",
            }
        )
    )
    notifier.send(MESSAGE, note(to="all"))
    request = receiver.last
    assert request.path == "/open-apis/bot/v2/hook/fs-HOOK-id"
    body = request.json()
    timestamp = int(body["timestamp"])
    assert isinstance(body["timestamp"], str) and abs(timestamp - time.time()) < 5
    assert body == {
        "timestamp": str(timestamp),
        "sign": documented_feishu_sign("fs-secret", timestamp),
        "msg_type": "text",
        "content": {"text": '<at user_id="all">所有人</at>\n' + MESSAGE.text},
    }


def test_feishu_post(receiver: Receiver) -> None:
    receiver.default = (200, b'{"StatusCode":0,"StatusMessage":"success"}')
    notifier = build_notifier(
        config(
            {
                "type": "feishu",
                "name": "fs",
                "url": receiver.url + "/open-apis/bot/v2/hook/fs-HOOK-id",
                "msg_type": "post",
            }
        )
    )
    notifier.send(MESSAGE, note())
    body = receiver.last.json()
    assert "sign" not in body and "timestamp" not in body
    assert body == {
        "msg_type": "post",
        "content": {
            "post": {
                "zh_cn": {
                    "title": MESSAGE.title,
                    "content": [
                        [{"tag": "text", "text": "已收不到主机 srv1 的数据。"}],
                        [
                            {"tag": "text", "text": "确认收到："},
                            {"tag": "a", "text": ACK, "href": ACK},
                        ],
                    ],
                }
            }
        },
    }


@pytest.mark.parametrize(
    ("code", "retryable"), [(11232, True), (9499, False), (19021, False), (19024, False)]
)
def test_feishu_error_codes(receiver: Receiver, code: int, retryable: bool) -> None:
    notifier = build_notifier(
        config(
            {
                "type": "feishu",
                "name": "fs",
                "url": receiver.url + "/open-apis/bot/v2/hook/fs-HOOK-id",
                "secret": "fs-secret",
            }
        )
    )
    receiver.answer(200, {"code": code, "data": {}, "msg": "sign match fail"})
    with pytest.raises(DeliveryError) as info:
        notifier.send(MESSAGE, note())
    assert info.value.retryable is retryable
    assert f"code {code} sign match fail" in str(info.value)
    assert "fs-HOOK-id" not in str(info.value) and "/hook/***" in str(info.value)
    receiver.answer(429, {"code": 99991400, "msg": "request trigger frequency limit"})
    with pytest.raises(DeliveryError) as info:
        notifier.send(MESSAGE, note())
    assert info.value.retryable


# --- sms ---------------------------------------------------------------------------------


def test_sms_json_gateway(receiver: Receiver) -> None:
    receiver.default = (200, b'{"Code":"OK"}')
    notifier = build_notifier(
        config(
            {
                "type": "sms",
                "name": "sms",
                "url": receiver.url + "/sms/send",
                "headers": {"X-Api-Key": "$token"},
                "body": '{"phone": "$to", "content": "$text", "sign": "县信息中心"}',
                "token": "sms-TOKEN",
                "success_contains": '"Code":"OK"',
                "max_length": 60,
            }
        )
    )
    notifier.send(MESSAGE, note(to="13800001111"))
    request = receiver.last
    assert request.headers["x-api-key"] == "sms-TOKEN"
    assert request.headers["content-type"] == "application/json; charset=utf-8"
    body = request.json()
    assert body["phone"] == "13800001111" and body["sign"] == "县信息中心"
    assert len(body["content"]) <= 60
    assert body["content"].startswith("[严重] 宝山村小学")
    assert "…" in body["content"]


def test_sms_keeps_the_ack_link_whole(receiver: Receiver) -> None:
    notifier = build_notifier(
        config({"type": "sms", "name": "sms", "url": receiver.url + "/s", "max_length": 120})
    )
    long = Message("t", "t\n" + "很长的说明。" * 30 + "\n确认收到：" + ACK, "")
    notifier.send(long, note(to="13800001111"))
    text = receiver.last.json()["text"]
    assert len(text) <= 120 and text.endswith("…\n确认收到：" + ACK)


def test_sms_get_and_form(receiver: Receiver) -> None:
    get = build_notifier(
        config(
            {
                "type": "sms",
                "name": "sms",
                "method": "GET",
                "url": receiver.url + "/send?u=outpost&key=$token&m=$to&c=$text",
                "token": "k&y",
            }
        )
    )
    get.send(Message("t", "设备 srv1 断电 & 断网", ""), note(to="+86 138 0000 1111"))
    request = receiver.last
    assert request.method == "GET" and request.body == b""
    assert request.query == {
        "u": "outpost",
        "key": "k&y",
        "m": "+86 138 0000 1111",
        "c": "设备 srv1 断电 & 断网",
    }
    form = build_notifier(
        config(
            {
                "type": "sms",
                "name": "sms",
                "url": receiver.url + "/form",
                "body": "to=$to&msg=$text&title=$title",
                "body_format": "form",
            }
        )
    )
    form.send(Message("标题 1", "a+b=c 你好", ""), note(to="13800001111"))
    request = receiver.last
    assert request.headers["content-type"] == "application/x-www-form-urlencoded; charset=utf-8"
    assert dict(urllib.parse.parse_qsl(request.body.decode())) == {
        "to": "13800001111",
        "msg": "a+b=c 你好",
        "title": "标题 1",
    }


def test_sms_failures(receiver: Receiver) -> None:
    notifier = build_notifier(
        config(
            {
                "type": "sms",
                "name": "sms",
                "url": receiver.url + "/s?token=$token",
                "token": "sms-TOKEN",
                "success_contains": '"ok":true',
            }
        )
    )
    receiver.answer(200, {"ok": False, "error": "bad token sms-TOKEN"})
    with pytest.raises(DeliveryError) as info:
        notifier.send(MESSAGE, note(to="13800001111"))
    assert not info.value.retryable and "sms-TOKEN" not in str(info.value)
    receiver.answer(502, b"bad gateway")
    with pytest.raises(DeliveryError) as info:
        notifier.send(MESSAGE, note(to="13800001111"))
    assert info.value.retryable and "token=***" in str(info.value)
    receiver.answer(403, b"forbidden")
    with pytest.raises(DeliveryError) as info:
        notifier.send(MESSAGE, note(to="13800001111"))
    assert not info.value.retryable
    with pytest.raises(DeliveryError) as info:
        notifier.send(MESSAGE, note(to=""))
    assert not info.value.retryable and "no phone number" in str(info.value)


# --- rate limits, secrets, configs -------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_unexpected_errors_are_not_retried(receiver: Receiver) -> None:
    notifier = build_notifier(
        config(
            {
                "type": "sms",
                "name": "sms",
                "url": receiver.url + "/s",
                "headers": {"X-Auth": "$token", "X-Title": "$title"},
                "token": "sms-TOKEN",
            }
        )
    )
    with pytest.raises(DeliveryError) as info:
        notifier.send(MESSAGE, note(to="13800001111"))  # a Chinese title cannot be a header
    assert not info.value.retryable and "UnicodeEncodeError" in str(info.value)
    assert "sms-TOKEN" not in str(info.value)
    assert receiver.requests == []


def test_rate_limit(receiver: Receiver) -> None:
    clock = FakeClock()
    notifier = build_notifier(
        config({"type": "webhook", "name": "hook", "url": receiver.url, "rate_per_minute": 2}),
        clock=clock,
    )
    notifier.send(MESSAGE, note())
    notifier.send(MESSAGE, note())
    with pytest.raises(DeliveryError) as info:
        notifier.send(MESSAGE, note())
    assert info.value.retryable and "rate limited" in str(info.value)
    assert len(receiver.requests) == 2
    clock.now += 30
    notifier.send(MESSAGE, note())
    with pytest.raises(DeliveryError):
        notifier.send(MESSAGE, note())
    assert len(receiver.requests) == 3


def test_token_bucket_saves_up_at_most_a_minute() -> None:
    clock = FakeClock()
    bucket = TokenBucket(3, clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.now += 3600
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.now += 20
    assert [bucket.take(), bucket.take()] == [True, False]


def test_unreadable_secret_file(tmp_path: Path) -> None:
    notifier = build_notifier(
        config({"type": "wecom", "name": "wx", "url_file": str(tmp_path / "missing")})
    )
    with pytest.raises(NotifierError, match=r"url_file .*missing: cannot read it"):
        notifier.check()
    with pytest.raises(DeliveryError) as info:
        notifier.send(MESSAGE, note())
    assert not info.value.retryable
    (tmp_path / "empty").write_text("\n")
    notifier = build_notifier(
        config(
            {
                "type": "dingtalk",
                "name": "d",
                "url": "http://x/",
                "secret_file": str(tmp_path / "empty"),
            }
        )
    )
    with pytest.raises(NotifierError, match="first line is empty"):
        notifier.check()
    (tmp_path / "bad").write_text("not a url\n")
    notifier = build_notifier(
        config({"type": "feishu", "name": "f", "url_file": str(tmp_path / "bad")})
    )
    with pytest.raises(NotifierError, match="not an http"):
        notifier.check()


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"type": "wecom", "name": "wx"}, "url or url_file is required"),
        ({"type": "wecom", "name": "wx", "url": "http://a", "url_file": "/f"}, "not both"),
        ({"type": "dingtalk", "name": "d", "url": "ftp://a"}, "regex"),
        (
            {"type": "dingtalk", "name": "d", "url": "http://a", "secret": "s", "secret_file": "f"},
            "not both",
        ),
        ({"type": "webhook", "name": "Bad Name", "url": "http://a"}, "name"),
        (
            {"type": "webhook", "name": "w", "url": "http://a", "headers": {"X": "a\nb"}},
            "line break",
        ),
        (
            {"type": "webhook", "name": "w", "url": "http://a", "headers": {"X Y": "a"}},
            "header name",
        ),
        (
            {"type": "webhook", "name": "w", "url": "http://a", "rate_per_minute": 0},
            "rate_per_minute",
        ),
        ({"type": "webhook", "name": "w", "url": "http://a", "colour": "red"}, "colour"),
        ({"type": "smtp", "name": "m", "host": "h", "from": "nobody"}, "not a mail address"),
        ({"type": "smtp", "name": "m", "host": "h", "from": "a@b.cn", "password": "p"}, "username"),
        ({"type": "sms", "name": "s", "url": "http://a", "success_status": []}, "success_status"),
        ({"type": "sms", "name": "s", "url": "http://a", "max_length": 5}, "max_length"),
        (
            {"type": "alertmanager", "name": "am", "url": "http://a", "ends_after_seconds": 299},
            "ends_after_seconds",
        ),
        (
            {
                "type": "alertmanager",
                "name": "am",
                "url": "http://a",
                "ends_after_seconds": 2592001,
            },
            "ends_after_seconds",
        ),
        ({"type": "pager", "name": "p"}, "type"),
    ],
)
def test_config_errors(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=problem):
        config(data)


def test_build_notifier_for_every_kind() -> None:
    configs = [
        WebhookConfig(name="a", url="http://a"),
        AlertmanagerConfig(name="b", url="http://b"),
        SmtpConfig(name="c", host="h", from_="a@b.cn"),
        WecomConfig(name="d", url="http://d"),
        DingtalkConfig(name="e", url="http://e"),
        FeishuConfig(name="f", url="http://f"),
        SmsConfig(name="g", url="http://g"),
    ]
    kinds = []
    for c in configs:
        notifier = build_notifier(c)
        assert notifier.name == c.name
        kinds.append(type(notifier).__name__)
    assert kinds == [
        "WebhookNotifier",
        "AlertmanagerNotifier",
        "SmtpNotifier",
        "WecomNotifier",
        "DingtalkNotifier",
        "FeishuNotifier",
        "SmsNotifier",
    ]


# --- smtp --------------------------------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.mails: list[Any] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        if address.startswith("later@"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append(envelope)
        return "250 OK"


def authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, data: Any
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"outpost", b"pa55")
    return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Mailserver(NamedTuple):
    port: int
    sink: Sink


def start_smtp(
    request: pytest.FixtureRequest, certificate: tuple[Path, Path] | None, mode: str
) -> Mailserver:
    sink = Sink()
    kwargs: dict[str, Any] = {"authenticator": authenticator}
    if certificate is not None:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(*certificate)
        if mode == "starttls":
            kwargs.update(tls_context=tls, require_starttls=True, auth_require_tls=True)
        else:
            kwargs.update(ssl_context=tls, auth_require_tls=False)
    else:
        kwargs["auth_require_tls"] = False
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    request.addfinalizer(controller.stop)
    return Mailserver(port, sink)


def smtp_config(port: int, **extra: Any) -> NotifierConfig:
    data = {
        "type": "smtp",
        "name": "mail",
        "host": "127.0.0.1",
        "port": port,
        "from": "Outpost 告警 <alerts@county.example>",
        "timeout_seconds": 5,
    }
    data.update(extra)
    return config(data)


def check_mail(envelope: Any, to: list[str]) -> None:
    assert envelope.mail_from == "alerts@county.example"
    assert envelope.rcpt_tos == to
    mail = message_from_bytes(envelope.content, policy=policy.default)
    assert mail["Subject"] == MESSAGE.title
    assert mail["To"] == ", ".join(to)
    assert mail["From"] == "Outpost 告警 <alerts@county.example>"
    assert mail["Message-ID"].endswith("@county.example>")
    assert mail.get_content_type() == "text/plain"
    assert mail.get_content_charset() == "utf-8"
    assert mail.get_content().rstrip("\n") == MESSAGE.text


def test_smtp_plain_with_auth(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    server = start_smtp(request, None, "plain")
    (tmp_path / "pw").write_text("pa55\n")
    notifier = build_notifier(
        smtp_config(
            server.port, starttls=False, username="outpost", password_file=str(tmp_path / "pw")
        )
    )
    notifier.send(MESSAGE, note(to="it@county.example, boss@county.example"))
    (envelope,) = server.sink.mails
    check_mail(envelope, ["it@county.example", "boss@county.example"])


def test_smtp_starttls_with_auth(
    request: pytest.FixtureRequest, certificate: tuple[Path, Path]
) -> None:
    server = start_smtp(request, certificate, "starttls")
    notifier = build_notifier(
        smtp_config(server.port, username="outpost", password="pa55", ca_file=str(certificate[0]))
    )
    notifier.send(MESSAGE, note(to="it@county.example"))
    (envelope,) = server.sink.mails
    check_mail(envelope, ["it@county.example"])
    # Without the county's CA the certificate is not trusted: no point in trying again.
    untrusted = build_notifier(smtp_config(server.port, username="outpost", password="pa55"))
    with pytest.raises(DeliveryError) as info:
        untrusted.send(MESSAGE, note(to="it@county.example"))
    assert not info.value.retryable and "not trusted" in str(info.value)


def test_smtp_implicit_tls(request: pytest.FixtureRequest, certificate: tuple[Path, Path]) -> None:
    server = start_smtp(request, certificate, "ssl")
    notifier = build_notifier(
        smtp_config(
            server.port, ssl=True, username="outpost", password="pa55", ca_file=str(certificate[0])
        )
    )
    notifier.send(MESSAGE, note(to="it@county.example"))
    (envelope,) = server.sink.mails
    check_mail(envelope, ["it@county.example"])


def test_smtp_errors(request: pytest.FixtureRequest) -> None:
    server = start_smtp(request, None, "plain")
    wrong = build_notifier(
        smtp_config(server.port, starttls=False, username="outpost", password="wrong-pw")
    )
    with pytest.raises(DeliveryError) as info:
        wrong.send(MESSAGE, note(to="it@county.example"))
    assert not info.value.retryable and "login refused (535" in str(info.value)
    assert "wrong-pw" not in str(info.value)
    ok = build_notifier(smtp_config(server.port, starttls=False))
    with pytest.raises(DeliveryError) as info:
        ok.send(MESSAGE, note(to="nobody@county.example"))
    assert not info.value.retryable and "nobody@county.example (550)" in str(info.value)
    with pytest.raises(DeliveryError) as info:
        ok.send(MESSAGE, note(to="later@county.example"))
    assert info.value.retryable
    with pytest.raises(DeliveryError) as info:
        ok.send(MESSAGE, note(to=""))
    assert not info.value.retryable and "no recipient" in str(info.value)
    # The server offers no STARTTLS: a configuration problem.
    tls = build_notifier(smtp_config(server.port))
    with pytest.raises(DeliveryError) as info:
        tls.send(MESSAGE, note(to="it@county.example"))
    assert not info.value.retryable and "not supported" in str(info.value)
    assert server.sink.mails == []


def test_smtp_server_down() -> None:
    notifier = build_notifier(smtp_config(free_port(), starttls=False))
    with pytest.raises(DeliveryError) as info:
        notifier.send(MESSAGE, note(to="it@county.example"))
    assert info.value.retryable

"""Alert messages: every rule in both languages for both audiences, times, groups, overrides."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from collector.alerting.model import Alert, Notification, alert_key
from collector.alerting.templates import (
    TemplateError,
    render,
    rule_names,
    shorten,
    summarize,
    validate_templates,
)

RULES = [
    "host_down",
    "host_shutdown",
    "host_never_reported",
    "site_unreachable",
    "disk_full",
    "disk_full_predicted",
    "memory_pressure",
    "uplink_loss",
    "uplink_latency",
    "gear_interface_down",
    "gear_rebooted",
    "ssh_bruteforce",
    "new_listening_port",
    "file_changed",
    "ups_on_battery",
    "ups_low_battery",
    "clock_skew",
    "outbox_backlog",
    "collector_losing",
    "collector_broker_down",
]

# 2026-03-04 23:30 UTC = 2026-03-05 07:30 Beijing time.
STARTED = datetime(2026, 3, 4, 23, 30, tzinfo=UTC).timestamp()
NOW = STARTED + 75 * 60
ACK = "https://outpost.county.example/ack/AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefgh"
NAMES = {"baoshan": "宝山村小学", "hetang": "Hetang Clinic"}

# What each rule's sentences use, as rules.py gives it (labels, value, args).
EXAMPLES: dict[str, tuple[dict[str, str], float | None, dict[str, str]]] = {
    "host_down": ({"host": "srv1"}, None, {}),
    "host_shutdown": ({"host": "srv1"}, None, {}),
    "host_never_reported": ({"host": "srv1"}, None, {}),
    "site_unreachable": ({}, None, {}),
    "disk_full": ({"host": "srv1", "mountpoint": "/data"}, 0.953, {"free_bytes": "1288490188"}),
    "disk_full_predicted": ({"host": "srv1", "mountpoint": "/"}, 17.4, {"free_bytes": "5e9"}),
    "memory_pressure": ({"host": "srv1"}, 0.031, {"available_pct": "3.1"}),
    "uplink_loss": ({}, 0.25, {}),
    "uplink_latency": ({}, 0.734, {}),
    "gear_interface_down": ({"host": "switch1", "interface": "ge-0/0/3"}, None, {}),
    "gear_rebooted": ({"host": "switch1"}, None, {}),
    "ssh_bruteforce": ({"host": "srv1", "source": "203.0.113.7"}, 42.0, {"count": "42"}),
    "new_listening_port": (
        {"host": "srv1", "proto": "tcp", "port": "4444"},
        None,
        {"process": "nc"},
    ),
    "file_changed": ({"host": "srv1", "path": "/etc/passwd"}, None, {}),
    "ups_on_battery": ({"host": "srv1"}, 87.0, {}),
    "ups_low_battery": ({"host": "srv1"}, 15.0, {}),
    "clock_skew": ({"host": "srv1"}, -150.4, {}),
    "outbox_backlog": ({"host": "srv1"}, 1234.0, {}),
    "collector_losing": ({}, 17.0, {}),
    "collector_broker_down": ({}, None, {}),
}

COLLECTOR_WIDE = ("collector_losing", "collector_broker_down")


def make_alert(
    rule: str,
    labels: dict[str, str] | None = None,
    *,
    site: str = "baoshan",
    severity: str = "critical",
    value: float | None = None,
    args: dict[str, str] | None = None,
    started: float = STARTED,
    resolved_at: float | None = None,
) -> Alert:
    labels = {"site": "" if rule in COLLECTOR_WIDE else site, **(labels or {})}
    return Alert(
        key=alert_key(rule, labels),
        rule=rule,
        labels=labels,
        severity=severity,
        state="resolved" if resolved_at else "firing",
        started=started,
        last_active=NOW,
        fired_at=started + 60,
        resolved_at=resolved_at,
        value=value,
        args=args or {},
    )


def example(rule: str, **kw: object) -> Alert:
    labels, value, args = EXAMPLES[rule]
    return make_alert(rule, labels, value=value, args=args, **kw)  # type: ignore[arg-type]


def note(
    alerts: list[Alert],
    locale: str = "zh-CN",
    audience: str = "it",
    status: str = "firing",
    ack_url: str = ACK,
) -> Notification:
    return Notification(
        "sms", "13800001111", locale, audience, alerts, status,
        ack_url if status == "firing" else "", "county-it", 0,
    )  # fmt: skip


def test_every_builtin_rule_has_sentences() -> None:
    assert set(rule_names()) == set(RULES) == set(EXAMPLES)


def test_rule_list_matches_rules_module() -> None:
    rules = pytest.importorskip("collector.alerting.rules")
    assert set(rules.BUILTIN_RULES) == set(RULES)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("locale", ["zh-CN", "en"])
@pytest.mark.parametrize("audience", ["it", "contact"])
@pytest.mark.parametrize("status", ["firing", "resolved"])
def test_every_rule_renders(rule: str, locale: str, audience: str, status: str) -> None:
    resolved = NOW - 60 if status == "resolved" else None
    message = render(
        note([example(rule, resolved_at=resolved)], locale, audience, status), NOW, NAMES
    )
    for part in message:
        assert "$" not in part and "?" not in part and "None" not in part, part
    assert message.text.splitlines()[0] == message.title
    assert message.markdown.startswith(f"#### {message.title}\n\n")
    if rule in COLLECTOR_WIDE:
        assert ("县监控平台" if locale == "zh-CN" else "County monitoring") in message.title
    else:
        assert "宝山村小学" in message.title
    host = EXAMPLES[rule][0].get("host")
    if host:
        assert host in message.text
    if locale == "zh-CN":
        assert "北京时间" in message.text and "3月5日 07:30" in message.text
    else:
        assert "2026-03-04 23:30 UTC" in message.text
    if status == "firing" and audience == "it":
        assert ACK in message.text
        assert f"]({ACK})" in message.markdown
    if status == "firing" and audience == "contact":
        told = (
            "县里的技术人员也已收到通知。" if locale == "zh-CN" else "County IT has been told too."
        )
        assert message.text.splitlines()[-1] == told
        assert ACK not in message.text
    if status == "resolved":
        assert ("已恢复" if locale == "zh-CN" else "Resolved") in message.title
        assert ACK not in message.text


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("audience", ["it", "contact"])
def test_chinese_fits_a_text_message(rule: str, audience: str) -> None:
    message = render(note([example(rule)], "zh-CN", audience), NOW, NAMES)
    assert len(message.text) <= 300
    assert len(shorten(message.text, 300)) <= 300


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("locale", ["zh-CN", "en"])
@pytest.mark.parametrize("audience", ["it", "contact"])
def test_cut_for_sms_keeps_the_last_line(rule: str, locale: str, audience: str) -> None:
    text = render(note([example(rule)], locale, audience), NOW, NAMES).text
    short = shorten(text, 160)
    assert len(short) <= 160
    assert short.splitlines()[0].startswith(text.splitlines()[0][:8])
    assert short.splitlines()[-1] == text.splitlines()[-1]


def test_it_message_in_chinese() -> None:
    alert = example("disk_full", severity="warning")
    message = render(note([alert]), NOW, NAMES)
    assert message.title == "[警告] 宝山村小学：主机 srv1 磁盘 /data 已用 95.3%"
    assert message.text.splitlines() == [
        message.title,
        "主机 srv1 的磁盘 /data 已用 95.3%，只剩 1.2 GB。",
        "地点：宝山村小学（baoshan），主机 srv1",
        "开始：北京时间 3月5日 07:30，已持续 1 小时 15 分钟",
        "建议：清理日志或旧文件，或者扩容；磁盘写满后服务会出错。",
        f"确认收到：{ACK}",
    ]


def test_contact_message_in_chinese() -> None:
    message = render(note([example("host_down")], audience="contact"), NOW, NAMES)
    assert message.text.splitlines() == [
        "[设备告警] 宝山村小学，设备 srv1",
        "县里联系不上设备 srv1，可能是停电或断网了。",
        "开始：北京时间 3月5日 07:30",
        "处理方法：请检查路由器和服务器的电源指示灯是否亮着；如果不亮，请检查插座和电源开关。"
        "如果灯亮着，请将路由器断电 30 秒后再通电。",
        "县里的技术人员也已收到通知。",
    ]


def test_contact_message_in_english() -> None:
    message = render(note([example("site_unreachable")], "en", "contact"), NOW, NAMES)
    assert message.text.splitlines() == [
        "[Equipment alert] 宝山村小学",
        "The county cannot reach any device here. The power or the internet line may be off.",
        "Since: 2026-03-04 23:30 UTC",
        "What to do: Check that the router's and the server's power lights are on; if not, "
        "check the socket and the switch. If they are on, switch the router off for 30 seconds "
        "and on again.",
        "County IT has been told too.",
    ]


def test_site_name_falls_back_to_the_id() -> None:
    message = render(note([example("host_down", site="xiaocun")]), NOW, NAMES)
    assert message.title == "[严重] xiaocun：主机 srv1 失联"
    assert "地点：xiaocun，主机 srv1" in message.text


def test_year_is_shown_when_it_is_not_this_year() -> None:
    old = datetime(2025, 12, 31, 15, 0, tzinfo=UTC).timestamp()
    text = render(note([example("host_down", started=old)]), NOW, NAMES).text
    assert "北京时间 2025年12月31日 23:00" in text
    assert "已持续 63 天 9 小时" in text


def test_group_of_alerts() -> None:
    alerts = [
        make_alert("host_down", {"host": f"srv{i}"}) for i in range(1, 8)
    ]  # fmt: skip
    message = render(note(alerts), NOW, NAMES)
    assert message.title == "[严重] 宝山村小学：主机 srv1 失联 等 7 条告警"
    lines = message.text.splitlines()
    assert lines[1:7] == [f"- 主机 srv{i} 失联" for i in range(1, 6)] + ["- 另有 2 条"]
    assert "地点：宝山村小学（baoshan），主机 srv1、srv2、srv3 等 4 台" in lines
    english = render(note(alerts[:2], "en"), NOW, NAMES)
    assert english.title == "[Critical] 宝山村小学: Host srv1 is down and 1 more"
    assert "Where: 宝山村小学 (baoshan), hosts srv1, srv2" in english.text
    contact = render(note(alerts[:2], "en", "contact"), NOW, NAMES)
    assert contact.title == "[Equipment alert] 宝山村小学, devices srv1, srv2"
    # One rule's steps once, not once per host.
    assert contact.text.count("switch the router off") == 1


def test_mixed_rules_give_each_rule_steps_once() -> None:
    alerts = [example("host_down"), example("ups_on_battery"), example("gear_rebooted")]
    text = render(note(alerts, audience="contact"), NOW, NAMES).text
    assert text.count("请检查路由器和服务器的电源指示灯") == 1
    assert "UPS（不间断电源）" in text


def test_resolved_messages() -> None:
    alert = example("host_down", resolved_at=STARTED + 28 * 60)
    it = render(note([alert], status="resolved"), NOW, NAMES)
    assert it.title == "[已恢复] 宝山村小学：主机 srv1 失联"
    assert "已恢复：北京时间 3月5日 07:58，共持续 28 分钟" in it.text
    contact = render(note([alert], "en", "contact", "resolved"), NOW, NAMES)
    assert contact.title == "[Resolved] 宝山村小学, device srv1"
    assert "began at 2026-03-04 23:30 UTC was solved at 2026-03-04 23:58 UTC" in contact.text


@pytest.mark.parametrize("locale", ["zh-CN", "en"])
@pytest.mark.parametrize("audience", ["it", "contact"])
def test_test_messages(locale: str, audience: str) -> None:
    message = render(note([], locale, audience, "test"), NOW, NAMES)
    assert ("测试" if locale == "zh-CN" else "Test") in message.title
    assert ("3月5日 08:45" if locale == "zh-CN" else "2026-03-05 00:45 UTC") in message.text
    assert "?" not in message.text and "$" not in message.text


def test_user_rule_uses_its_own_summary() -> None:
    alert = make_alert(
        "camera_offline",
        {"host": "cam3"},
        severity="warning",
        value=0.0,
        args={"summary": "Camera cam3 has no picture", "runbook": "https://wiki/cams"},
    )
    it = render(note([alert], "en"), NOW, NAMES)
    assert it.title == "[Warning] 宝山村小学: Camera cam3 has no picture"
    assert "Hint: https://wiki/cams" in it.text
    contact = render(note([alert], "zh-CN", "contact"), NOW, NAMES)
    assert "县里发现这里的设备有异常。" in contact.text
    bare = render(note([make_alert("custom_x", value=3.25)], "zh-CN"), NOW, NAMES)
    assert bare.title == "[严重] 宝山村小学：规则 custom_x 触发（值 3.25）"
    assert summarize(make_alert("custom_x", value=3.25), "en") == "Rule custom_x fired (value 3.25)"


def test_values_derived_from_the_alert() -> None:
    assert summarize(example("memory_pressure"), "en") == "Host srv1 is low on memory"
    text = render(note([example("memory_pressure")], "en"), NOW, NAMES).text
    assert "only 3.1% of its memory" in text
    assert summarize(example("uplink_loss"), "zh-CN") == "外网丢包 25%"
    assert summarize(example("uplink_latency"), "en") == "Uplink latency 734 ms"
    assert summarize(example("outbox_backlog"), "zh-CN") == "主机 srv1 积压 1234 条未发出的数据"
    text = render(note([example("clock_skew")], "zh-CN"), NOW, NAMES).text
    assert "主机 srv1 的时钟比采集端快了约 150 秒。" in text
    behind = make_alert("clock_skew", {"host": "srv1"}, value=200.0)
    assert "is about 200 s behind the collector." in render(note([behind], "en"), NOW, NAMES).text
    jump = make_alert("clock_skew", {"host": "srv1", "event": "clock_jump"}, value=-3600.0)
    assert (
        "The clock of host srv1 jumped by about 3600 s."
        in render(note([jump], "en"), NOW, NAMES).text
    )
    jump = make_alert("clock_skew", {"host": "srv1", "event": "clock_jump"})
    assert "主机 srv1 的时钟发生了跳变。" in render(note([jump]), NOW, NAMES).text
    assert (
        summarize(example("disk_full_predicted"), "zh-CN") == "主机 srv1 磁盘 / 预计 17 小时后写满"
    )
    port = make_alert("new_listening_port", {"host": "srv1", "proto": "udp", "port": "53"})
    assert (
        "On host srv1, udp port 53 is now listening (program: unknown)."
        in render(note([port], "en"), NOW, NAMES).text
    )
    ssh = render(note([example("ssh_bruteforce")]), NOW, NAMES).text
    assert "主机 srv1 收到来自 203.0.113.7 的大量 SSH 登录失败（42 次）。" in ssh


def test_no_ack_line_without_a_link() -> None:
    text = render(note([example("host_down")], ack_url=""), NOW, NAMES).text
    assert "确认收到" not in text


# --- overrides ---------------------------------------------------------------------------


def test_overrides_from_a_templates_dir(tmp_path: Path) -> None:
    (tmp_path / "zh-CN.contact.txt").write_text(
        "# 村里用的短版本\n"
        "[title.firing]\n"
        "【设备告警】$site\n"
        "[firing]\n"
        "$title\n"
        "$plain\n"
        "联系人：$nobody\n"
        "备注：$route_note\n"
        "请照做：$steps\n"
        "有问题请打 0871-1234567。\n",
        encoding="utf-8",
    )
    (tmp_path / "zh-CN.rules.yaml").write_text(
        "host_down:\n"
        "  steps: 请看看机柜里的灯。\n"
        "camera_offline:\n"
        "  plain: 摄像头 $host 没有画面。\n",
        encoding="utf-8",
    )
    message = render(
        note([example("host_down")], audience="contact"), NOW, NAMES, templates_dir=str(tmp_path)
    )
    assert message.title == "【设备告警】宝山村小学"
    assert message.text.splitlines() == [
        "【设备告警】宝山村小学",
        "县里联系不上设备 srv1，可能是停电或断网了。",
        "联系人：?",
        "备注：?",
        "请照做：请看看机柜里的灯。",
        "有问题请打 0871-1234567。",
    ]
    # Sections the file does not have stay built in.
    resolved = render(
        note([example("host_down", resolved_at=NOW)], audience="contact", status="resolved"),
        NOW,
        NAMES,
        templates_dir=str(tmp_path),
    )
    assert resolved.title == "[已恢复] 宝山村小学，设备 srv1"
    camera = make_alert("camera_offline", {"host": "cam3"})
    text = render(note([camera], audience="contact"), NOW, NAMES, str(tmp_path)).text
    assert "摄像头 cam3 没有画面。" in text
    # The IT templates and English are untouched.
    it = render(note([example("host_down")]), NOW, NAMES, str(tmp_path))
    assert it.title == "[严重] 宝山村小学：主机 srv1 失联"
    validate_templates(str(tmp_path))


def test_a_line_of_empty_values_is_left_out(tmp_path: Path) -> None:
    (tmp_path / "en.it.txt").write_text(
        "[firing]\n$title\nLink: $ack_url\nRoute: $route\n", encoding="utf-8"
    )
    n = note([example("host_down")], "en", ack_url="")
    assert render(n, NOW, NAMES, str(tmp_path)).text.splitlines()[1:] == ["Route: county-it"]


def test_a_dollar_sign_stays(tmp_path: Path) -> None:
    (tmp_path / "en.it.txt").write_text("[firing]\n$title costs $$5, $ 3\n", encoding="utf-8")
    text = render(note([example("host_down")], "en"), NOW, NAMES, str(tmp_path)).text
    assert text.endswith("costs $5, $ 3")


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("zh-CN.it.txt", "no section\n[firing]\nx\n", "before the first section"),
        ("en.contact.txt", "[firing]\na\n[firing]\nb\n", "appears twice"),
        ("zh-CN.rules.yaml", "host_down: [1, 2\n", "not valid YAML"),
        ("en.rules.yaml", "host_down:\n  summry: x\n", "summry"),
        ("en.rules.yaml", "- a\n", "Expected `object`"),
    ],
)
def test_broken_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, content: str, problem: str
) -> None:
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(TemplateError, match=problem) as info:
        validate_templates(str(tmp_path))
    assert name in str(info.value)
    locale, kind = name.split(".")[:2]
    audience = kind if kind in ("it", "contact") else "it"
    with caplog.at_level(logging.WARNING):
        message = render(note([example("host_down")], locale, audience), NOW, NAMES, str(tmp_path))
    assert "using the built-in templates" in caplog.text
    assert "srv1" in message.title


def test_missing_templates_dir() -> None:
    with pytest.raises(TemplateError, match="not a directory"):
        validate_templates("/nonexistent/templates")
    message = render(note([example("host_down")]), NOW, NAMES, "/nonexistent/templates")
    assert message.title == "[严重] 宝山村小学：主机 srv1 失联"


# --- shorten -----------------------------------------------------------------------------


def test_shorten() -> None:
    assert shorten("short", 10) == "short"
    assert shorten("abcdefghij", 5) == "abcd…"
    text = "line one is long enough\nline two\nhttps://x/ack/abc"
    short = shorten(text, 30)
    assert short == "line one is…\nhttps://x/ack/abc" and len(short) <= 30
    # A last line longer than two thirds of the room is not kept.
    assert shorten("a" * 40 + "\n" + "b" * 35, 50) == "a" * 40 + "\n" + "b" * 8 + "…"

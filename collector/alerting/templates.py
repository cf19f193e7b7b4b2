"""Alert messages in Simplified Chinese and English, from editable templates.

``render`` turns a notification into a ``Message``: a one-line title, a plain text of a few
lines (mail, SMS, Feishu) and a markdown version (DingTalk and WeCom robots). Two audiences:

- ``it``: county IT on call. What is wrong with the values, the site and host, since when,
  a hint on what to look at first, and the acknowledge link.
- ``contact``: a site's local contact (a village clerk, a teacher). What is wrong in plain
  words, since when, concrete steps, and a line saying county IT has been told.

Times: the sites' own time zones are not known here, so zh-CN messages give Beijing time
(UTC+8, China has no daylight saving) and English ones UTC.

Templates. Built in for every (locale, audience), with one set of sentences per rule. A
``templates_dir`` may override any of them:

- ``<locale>.<audience>.txt`` (``zh-CN.contact.txt``...): sections that start with a line
  ``[firing]``, ``[resolved]``, ``[test]``, ``[title.firing]``, ``[title.resolved]`` or
  ``[title.test]``; a section not in the file stays built in.
- ``<locale>.rules.yaml``: per rule name, any of ``summary`` (one line, used in titles and
  lists), ``detail`` (IT), ``runbook`` (IT hint), ``plain`` (contacts: what is wrong) and
  ``steps`` (contacts: what to do). Names of user rules may be given too.

Placeholders are ``$name`` (``string.Template``; ``$$`` is a dollar sign). The rule sentences
see the alert's labels and args (``$host``, ``$mount``, ``$used_pct``, ``$free``...); the
message templates see ``$title $summary $details $list $site $site_id $host $where $severity
$count $since $duration $resolved $now $runbook $plain $steps $ack_url $route $level``. Times
are written without the zone (Beijing time for zh-CN, UTC for en), so a template says which.
A name that has no value becomes ``?``; a template line whose placeholders are all empty is
left out. User rules (rules.py) bring their own ``summary`` and ``runbook`` in their args.

Rendering reads the override files (small, rarely used) each time; a broken file is logged
and the built-in templates are used, so a typo never stops an alert. ``validate_templates``
lets the collector refuse a broken directory at start.
"""

from __future__ import annotations

import logging
import math
import string
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple

import msgspec
import yaml

from collector.alerting.model import Alert, Notification
from outpost.errors import OutpostError

__all__ = [
    "AUDIENCES",
    "LOCALES",
    "SECTIONS",
    "Message",
    "RuleText",
    "TemplateError",
    "render",
    "rule_names",
    "shorten",
    "summarize",
    "validate_templates",
]

log = logging.getLogger(__name__)

LOCALES = ("zh-CN", "en")
AUDIENCES = ("it", "contact")
STATUSES = ("firing", "resolved", "test")
SECTIONS = ("title.firing", "title.resolved", "title.test", "firing", "resolved", "test")
RULE_FIELDS = ("summary", "detail", "runbook", "plain", "steps")

_BEIJING = timezone(timedelta(hours=8))
_MAX_LIST = 5  # alerts listed one per line in a group message
_MAX_HOSTS = 3  # hosts named in a title


class Message(NamedTuple):
    """One rendered message: ``title`` (one line), ``text`` (plain, a few lines) and
    ``markdown`` (for robots)."""

    title: str
    text: str
    markdown: str


class RuleText(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The sentences of one rule in one language; ``None`` keeps the built-in one."""

    summary: str | None = None
    detail: str | None = None
    runbook: str | None = None
    plain: str | None = None
    steps: str | None = None


class TemplateError(OutpostError):
    """A template file that cannot be used (names the file and what is wrong)."""


# --- built-in texts ----------------------------------------------------------------------

_ZH_POWER = (
    "请检查路由器和服务器的电源指示灯是否亮着；如果不亮，请检查插座和电源开关。"
    "如果灯亮着，请将路由器断电 30 秒后再通电。"
)
_EN_POWER = (
    "Check that the router's and the server's power lights are on; if not, check the socket "
    "and the switch. If they are on, switch the router off for 30 seconds and on again."
)
_ZH_NOTHING = "您不需要做什么，县里的技术人员会远程处理。"
_EN_NOTHING = "You don't need to do anything; county IT will handle it remotely."
_ZH_DISK_STEPS = "您不需要做什么，县里的技术人员会远程清理。请不要往这台设备里拷贝大文件。"
_EN_DISK_STEPS = (
    "You don't need to do anything; county IT will clean it up remotely. "
    "Please don't copy large files onto this device."
)
_ZH_SYSTEM = "县里的监控系统出了问题，正在处理。"
_EN_SYSTEM = "The county's monitoring system has a problem; it is being handled."


def _t(summary: str, detail: str, runbook: str, plain: str, steps: str) -> RuleText:
    return RuleText(summary, detail, runbook, plain, steps)


_ZH_RULES: dict[str, RuleText] = {
    "host_down": _t(
        "主机 $host 失联",
        "已收不到主机 $host 的数据，它可能断电、断网或死机了。",
        "先看同站点的其他主机：都失联多半是停电或断网；只有这一台，可能是死机或网线松了。",
        "县里联系不上设备 $host，可能是停电或断网了。",
        _ZH_POWER,
    ),
    "host_shutdown": _t(
        "主机 $host 已关机",
        "主机 $host 正常关机后一直没有再开机。",
        "确认是否有人有意关机；如果不是，请站点联系人开机。",
        "设备 $host 被关掉了，一直没有再打开。",
        "如果不是有意关的，请按一下它的电源按钮开机，然后等 5 分钟。",
    ),
    "host_never_reported": _t(
        "主机 $host 从未上报",
        "站点清单里有主机 $host，但从没收到过它的数据。",
        "检查这台主机是否装好并启动了 outpost-agent，能否连上采集端。",
        "设备 $host 还没有连上县里的监控系统。",
        "请确认设备 $host 已开机、网线已插好。其余的由县里的技术人员处理。",
    ),
    "site_unreachable": _t(
        "站点失联",
        "站点的所有主机都联系不上，可能是停电或外网断了。",
        "先打电话问站点是否停电；没停电就查上联线路和路由器。",
        "县里联系不上这里的所有设备，可能是停电或断网了。",
        _ZH_POWER,
    ),
    "disk_full": _t(
        "主机 $host 磁盘 $mount 已用 $used_pct%",
        "主机 $host 的磁盘 $mount 已用 $used_pct%，只剩 $free。",
        "清理日志或旧文件，或者扩容；磁盘写满后服务会出错。",
        "设备 $host 的存储空间快满了。",
        _ZH_DISK_STEPS,
    ),
    "disk_full_predicted": _t(
        "主机 $host 磁盘 $mount 预计 $hours_left 小时后写满",
        "按最近的增长速度，主机 $host 的磁盘 $mount 约 $hours_left 小时后写满，现在还剩 $free。",
        "找出在快速写入的东西（日志、录像、备份），清理或扩容。",
        "设备 $host 的存储空间用得很快，可能很快就会用完。",
        _ZH_DISK_STEPS,
    ),
    "memory_pressure": _t(
        "主机 $host 内存不足",
        "主机 $host 的可用内存只剩 $avail_pct%。",
        "查看占用内存最多的进程，必要时重启对应的服务。",
        "设备 $host 负担太重，可能会变慢。",
        _ZH_NOTHING,
    ),
    "uplink_loss": _t(
        "外网丢包 $loss_pct%",
        "站点外网线路的丢包率是 $loss_pct%。",
        "检查运营商线路和路由器；持续丢包请向运营商报修。",
        "这里的网络不稳定，时好时坏。",
        "请看看路由器和光猫的网线有没有插紧。如果一直不好，县里会联系运营商报修。",
    ),
    "uplink_latency": _t(
        "外网延迟 $latency_ms 毫秒",
        "站点外网线路的平均延迟是 $latency_ms 毫秒。",
        "看是否有大流量（下载、视频）占满带宽；持续偏高请向运营商报修。",
        "这里的网络很慢。",
        "如果有人在下载大文件或看视频，请先暂停。其余的由县里的技术人员处理。",
    ),
    "gear_interface_down": _t(
        "$host 的端口 $interface 断开",
        "设备 $host 的端口 $interface 已启用，但没有连接。",
        "检查这个端口的网线和对端设备。",
        "网络设备 $host 上有一根网线断了（端口 $interface）。",
        "请检查网络设备 $host 上的网线有没有松动或被拔掉。插紧后，看对应的指示灯亮不亮。",
    ),
    "gear_rebooted": _t(
        "设备 $host 重启了",
        "网络设备 $host 刚刚重启过。",
        "如果不是计划内的重启，检查供电和设备日志；反复重启多半是电源或硬件问题。",
        "网络设备 $host 刚刚自己重启了，可能是停过电。",
        "如果刚才停过电，您不需要做什么。如果经常这样，请告诉县里的技术人员。",
    ),
    "ssh_bruteforce": _t(
        "主机 $host 遭到 SSH 暴力破解",
        "主机 $host 收到来自 $source 的大量 SSH 登录失败（$count 次）。",
        "封禁来源地址，查看有没有登录成功的记录，确认只允许密钥登录。",
        "有人在尝试破解设备 $host 的密码。",
        "您不需要操作设备，县里的技术人员会远程处理。"
        "如果有人打电话要密码或让您操作电脑，请先和县里核实。",
    ),
    "new_listening_port": _t(
        "主机 $host 新开了端口 $proto/$port",
        "主机 $host 的 $proto 端口 $port 开始被监听（程序：$process）。",
        "确认这是计划内的服务；如果不是，停掉这个程序并排查入侵。",
        "设备 $host 上多了一个新的网络服务。",
        "您不需要做什么。如果最近有人在这台设备上装过软件，请告诉县里的技术人员。",
    ),
    "file_changed": _t(
        "主机 $host 上的文件 $path 被改动",
        "主机 $host 上受监控的文件 $path 被修改了。",
        "确认是否为计划内的变更；如果不是，查看登录记录并排查入侵。",
        "设备 $host 上的一个重要文件被改动了。",
        "如果最近有人维护过这台设备，请告诉县里的技术人员。否则您不需要做什么。",
    ),
    "ups_on_battery": _t(
        "主机 $host 的 UPS 正在用电池供电",
        "主机 $host 的 UPS 断了市电，正在用电池供电。",
        "确认站点是否停电；电池用完前安排正常关机。",
        "这里可能停电了，设备 $host 正在用备用电池。",
        "请看看是不是停电了，或者 UPS（不间断电源）的插头是否松了。插头松了请插好。",
    ),
    "ups_low_battery": _t(
        "主机 $host 的 UPS 电量低（$battery_pct%）",
        "主机 $host 的 UPS 正在用电池供电，电量只剩 $battery_pct%。",
        "马上恢复供电或正常关机，否则设备会突然断电。",
        "备用电池快用完了，设备 $host 很快会断电。",
        "如果能恢复供电，请尽快恢复。来电后，请确认路由器和服务器的电源指示灯亮着。",
    ),
    "clock_skew": _t(
        "主机 $host 的时间不准",
        "主机 $host 的时钟$skew_text。",
        "检查这台主机的 NTP 配置和时间同步服务。",
        "设备 $host 的时间不准。",
        _ZH_NOTHING,
    ),
    "outbox_backlog": _t(
        "主机 $host 积压 $rows 条未发出的数据",
        "主机 $host 有 $rows 条数据发不出去，它到采集端的连接有问题。",
        "检查它到消息服务器的网络和证书；连接恢复后数据会自动补发。",
        "设备 $host 的数据发不出来，网络可能有问题。",
        "请看看路由器的指示灯是否正常。其余的由县里的技术人员处理。",
    ),
    "collector_losing": _t(
        "采集端丢失数据",
        "采集端发现有消息丢失，共 $count 条。",
        "查看采集端日志和消息服务器状态，确认磁盘和内存正常。",
        _ZH_SYSTEM,
        _ZH_NOTHING,
    ),
    "collector_broker_down": _t(
        "采集端连不上消息服务器",
        "采集端连不上消息服务器，收不到任何站点的数据。",
        "检查消息服务器（mosquitto）是否在运行，以及证书和网络。",
        _ZH_SYSTEM,
        _ZH_NOTHING,
    ),
}

_EN_RULES: dict[str, RuleText] = {
    "host_down": _t(
        "Host $host is down",
        "No data from host $host: it may have lost power or network, or hung.",
        "Check the site's other hosts: if all are down, it is most likely power or the line; "
        "if only this one, it may have hung or lost its cable.",
        "The county cannot reach the device $host. The power or the network may be off.",
        _EN_POWER,
    ),
    "host_shutdown": _t(
        "Host $host was shut down",
        "Host $host shut down cleanly and has not come back.",
        "Check whether the shutdown was planned; if not, ask the site contact to switch it on.",
        "The device $host was switched off and has not been switched on again.",
        "If it was not switched off on purpose, press its power button once, then wait 5 minutes.",
    ),
    "host_never_reported": _t(
        "Host $host has never reported",
        "The site list has host $host, but it has never sent any data.",
        "Check that outpost-agent is installed and running on it and can reach the collector.",
        "The device $host is not connected to the county's monitoring yet.",
        "Make sure the device $host is switched on and its network cable is plugged in. "
        "County IT will do the rest.",
    ),
    "site_unreachable": _t(
        "Site unreachable",
        "No host of the site can be reached: most likely a power cut, or the uplink is down.",
        "Call the site to ask about power; if the power is on, check the uplink and the router.",
        "The county cannot reach any device here. The power or the internet line may be off.",
        _EN_POWER,
    ),
    "disk_full": _t(
        "Disk $mount on $host is $used_pct% full",
        "Disk $mount on host $host is $used_pct% full, $free left.",
        "Clean up logs or old files, or add space: services fail once the disk is full.",
        "The device $host is running out of storage space.",
        _EN_DISK_STEPS,
    ),
    "disk_full_predicted": _t(
        "Disk $mount on $host full in about $hours_left h",
        "At the recent rate, disk $mount on host $host will be full in about $hours_left "
        "hours; $free left now.",
        "Find what is writing fast (logs, recordings, backups); clean up or add space.",
        "The device $host is using up its storage quickly and may soon run out.",
        _EN_DISK_STEPS,
    ),
    "memory_pressure": _t(
        "Host $host is low on memory",
        "Host $host has only $avail_pct% of its memory available.",
        "Find the process using the most memory; restart that service if needed.",
        "The device $host is overloaded and may be slow.",
        _EN_NOTHING,
    ),
    "uplink_loss": _t(
        "Uplink losing $loss_pct% of packets",
        "The site's uplink is losing $loss_pct% of its packets.",
        "Check the provider's line and the router; report lasting loss to the provider.",
        "The internet connection here is unstable.",
        "Check that the cables of the router and the modem are firmly plugged in. "
        "If it stays bad, county IT will call the provider.",
    ),
    "uplink_latency": _t(
        "Uplink latency $latency_ms ms",
        "The site's uplink has an average round trip of $latency_ms ms.",
        "Look for heavy traffic (downloads, video) filling the line; report lasting delay to "
        "the provider.",
        "The internet connection here is very slow.",
        "If someone is downloading large files or watching videos, ask them to pause. "
        "County IT will do the rest.",
    ),
    "gear_interface_down": _t(
        "Port $interface on $host is down",
        "Port $interface on device $host is enabled but has no link.",
        "Check the cable on that port and the device at its other end.",
        "A network cable on the device $host is disconnected (port $interface).",
        "Check whether a cable on the network device $host is loose or unplugged. Plug it in "
        "firmly and see whether its light comes on.",
    ),
    "gear_rebooted": _t(
        "Device $host restarted",
        "Network device $host has just restarted.",
        "If it was not planned, check its power and logs; repeated restarts point to power or "
        "hardware trouble.",
        "The network device $host has just restarted by itself, perhaps after a power cut.",
        "If the power was just off, you don't need to do anything. If it happens often, "
        "please tell county IT.",
    ),
    "ssh_bruteforce": _t(
        "SSH brute force on host $host",
        "Host $host is getting many failed SSH logins from $source ($count so far).",
        "Block the source, look for any successful login, and allow key logins only.",
        "Someone is trying to guess the password of the device $host.",
        "You don't need to touch the device; county IT will handle it remotely. If anyone "
        "calls asking for a password or to operate the computer, check with county IT first.",
    ),
    "new_listening_port": _t(
        "New port $proto/$port open on $host",
        "On host $host, $proto port $port is now listening (program: $process).",
        "Check that the service is expected; if not, stop it and look for an intrusion.",
        "A new network service appeared on the device $host.",
        "You don't need to do anything. If someone installed software on this device "
        "recently, please tell county IT.",
    ),
    "file_changed": _t(
        "File $path changed on $host",
        "The watched file $path on host $host was modified.",
        "Check whether the change was planned; if not, review the logins and look for an "
        "intrusion.",
        "An important file on the device $host was changed.",
        "If someone worked on this device recently, please tell county IT. Otherwise you "
        "don't need to do anything.",
    ),
    "ups_on_battery": _t(
        "UPS of $host is on battery",
        "The UPS of host $host lost mains power and is running on battery.",
        "Check whether the site has a power cut; plan a clean shutdown before the battery "
        "runs out.",
        "The power may be off here; the device $host is running on its backup battery.",
        "Check whether there is a power cut, or whether the plug of the UPS (backup power "
        "box) is loose. If it is loose, plug it back in.",
    ),
    "ups_low_battery": _t(
        "UPS of $host is low ($battery_pct%)",
        "The UPS of host $host is on battery with $battery_pct% left.",
        "Restore power or shut down cleanly now, or the host will lose power abruptly.",
        "The backup battery is almost empty; the device $host will soon lose power.",
        "If you can restore the power, please do it soon. When it is back, check that the "
        "router's and the server's power lights are on.",
    ),
    "clock_skew": _t(
        "Clock of host $host is wrong",
        "The clock of host $host $skew_text.",
        "Check NTP on this host and its time sync service.",
        "The clock of the device $host is wrong.",
        _EN_NOTHING,
    ),
    "outbox_backlog": _t(
        "Host $host has $rows unsent messages",
        "Host $host holds $rows messages it cannot deliver: its link to the collector is failing.",
        "Check its network path and certificates to the broker; the data is sent once the "
        "link is back.",
        "The device $host cannot send its data; the network may have a problem.",
        "Check that the router's lights look normal. County IT will do the rest.",
    ),
    "collector_losing": _t(
        "Collector is losing data",
        "The collector found lost messages: $count in total.",
        "Check the collector's log and the broker; make sure disk and memory are fine.",
        _EN_SYSTEM,
        _EN_NOTHING,
    ),
    "collector_broker_down": _t(
        "Collector lost the broker",
        "The collector cannot reach the message broker and gets no data from any site.",
        "Check that the broker (mosquitto) is running, and its certificates and network.",
        _EN_SYSTEM,
        _EN_NOTHING,
    ),
}

# For rules without sentences of their own (user rules): their args give summary/runbook.
_GENERIC = {
    "zh-CN": _t(
        "规则 $rule 触发",
        "",
        "",
        "县里发现这里的设备有异常。",
        "您现在不需要做什么，县里的技术人员会处理，需要时会联系您。",
    ),
    "en": _t(
        "Rule $rule fired",
        "",
        "",
        "County IT noticed a problem with the equipment here.",
        "You don't need to do anything now; county IT will handle it and call you if needed.",
    ),
}

_BUILTIN_RULES: dict[str, dict[str, RuleText]] = {"zh-CN": _ZH_RULES, "en": _EN_RULES}

_BODIES: dict[tuple[str, str], dict[str, str]] = {
    ("zh-CN", "it"): {
        "title.firing": "[$severity] $site：$summary",
        "title.resolved": "[已恢复] $site：$summary",
        "title.test": "[测试] Outpost 告警测试",
        "firing": (
            "$title\n$details\n地点：$where\n开始：北京时间 $since，已持续 $duration\n"
            "建议：$runbook\n确认收到：$ack_url"
        ),
        "resolved": (
            "$title\n$list\n已恢复：北京时间 $resolved，共持续 $duration\n地点：$where\n"
            "开始：北京时间 $since"
        ),
        "test": (
            "$title\n这是一条测试消息，用来确认告警能送到您这里，不需要处理。\n"
            "路由：$route\n发送时间：北京时间 $now"
        ),
    },
    ("zh-CN", "contact"): {
        "title.firing": "[设备告警] $where",
        "title.resolved": "[已恢复] $where",
        "title.test": "[测试] 设备告警测试",
        "firing": (
            "$title\n$plain\n开始：北京时间 $since\n处理方法：$steps\n县里的技术人员也已收到通知。"
        ),
        "resolved": (
            "$title\n北京时间 $since 出现的问题已在 $resolved 解决，不需要再做什么。谢谢您！"
        ),
        "test": (
            "$title\n这是一条测试消息，用来确认您能收到设备告警。您不需要做任何事。\n"
            "发送时间：北京时间 $now"
        ),
    },
    ("en", "it"): {
        "title.firing": "[$severity] $site: $summary",
        "title.resolved": "[Resolved] $site: $summary",
        "title.test": "[Test] Outpost alert test",
        "firing": (
            "$title\n$details\nWhere: $where\nSince: $since UTC ($duration)\nHint: $runbook\n"
            "Acknowledge: $ack_url"
        ),
        "resolved": (
            "$title\n$list\nResolved: $resolved UTC, after $duration\nWhere: $where\n"
            "Since: $since UTC"
        ),
        "test": (
            "$title\nThis is a test message to check that alerts reach you. Nothing to do.\n"
            "Route: $route\nSent: $now UTC"
        ),
    },
    ("en", "contact"): {
        "title.firing": "[Equipment alert] $where",
        "title.resolved": "[Resolved] $where",
        "title.test": "[Test] Equipment alert test",
        "firing": (
            "$title\n$plain\nSince: $since UTC\nWhat to do: $steps\nCounty IT has been told too."
        ),
        "resolved": (
            "$title\nThe problem that began at $since UTC was solved at $resolved UTC. "
            "Nothing more to do. Thank you!"
        ),
        "test": (
            "$title\nThis is a test message to check that you receive alerts about the "
            "equipment. You don't need to do anything.\nSent: $now UTC"
        ),
    },
}

_WORDS: dict[str, dict[str, str]] = {
    "zh-CN": {
        "critical": "严重",
        "warning": "警告",
        "info": "提示",
        "collector": "县监控平台",
        "join": "、",
        "sentences": "",
        "hosts_more": "{hosts} 等 {n} 台",
        "it_hosts": "主机 {hosts}",
        "contact_hosts": "设备 {hosts}",
        "where": "{site}，{hosts}",
        "site_id": "{name}（{id}）",
        "group": "{first} 等 {total} 条告警",
        "value": "（值 {v}）",
        "list_more": "- 另有 {n} 条",
        "ack": "点此确认",
        "behind": "比采集端慢了约 {v} 秒",
        "ahead": "比采集端快了约 {v} 秒",
        "jumped_by": "跳变了约 {v} 秒",
        "jumped": "发生了跳变",
        "a_process": "未知",
    },
    "en": {
        "critical": "Critical",
        "warning": "Warning",
        "info": "Info",
        "collector": "County monitoring",
        "join": ", ",
        "sentences": " ",
        "hosts_more": "{hosts} and {n} more",
        "it_hosts": "host {hosts}",
        "contact_hosts": "device {hosts}",
        "it_hosts_n": "hosts {hosts}",
        "contact_hosts_n": "devices {hosts}",
        "where": "{site}, {hosts}",
        "site_id": "{name} ({id})",
        "group": "{first} and {more} more",
        "value": " (value {v})",
        "list_more": "- and {n} more",
        "ack": "Acknowledge",
        "behind": "is about {v} s behind the collector",
        "ahead": "is about {v} s ahead of the collector",
        "jumped_by": "jumped by about {v} s",
        "jumped": "jumped",
        "a_process": "unknown",
    },
}


def rule_names() -> tuple[str, ...]:
    """The rules with built-in sentences (the same in every locale)."""
    return tuple(_ZH_RULES)


# --- loading overrides -------------------------------------------------------------------


def _parse_sections(text: str, source: str) -> dict[str, str]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]") and stripped[1:-1] in SECTIONS:
            name = stripped[1:-1]
            if name in sections:
                raise TemplateError(f"{source}:{number}: section [{name}] appears twice")
            current = sections[name] = []
        elif current is not None:
            current.append(line)
        elif stripped and not stripped.startswith("#"):
            raise TemplateError(
                f"{source}:{number}: text before the first section; start with one of "
                + ", ".join(f"[{s}]" for s in SECTIONS)
            )
    return {name: "\n".join(lines).strip("\n") for name, lines in sections.items()}


def _parse_rules(text: str, source: str) -> dict[str, RuleText]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TemplateError(f"{source}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    try:
        return msgspec.convert(data, dict[str, RuleText])
    except msgspec.ValidationError as exc:
        raise TemplateError(f"{source}: {exc}") from None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"{path}: cannot read ({exc})") from None


def _load_overrides(
    templates_dir: str, locale: str, audience: str
) -> tuple[dict[str, str], dict[str, RuleText]]:
    base = Path(templates_dir)
    path = base / f"{locale}.{audience}.txt"
    text = _read(path)
    bodies = _parse_sections(text, str(path)) if text is not None else {}
    path = base / f"{locale}.rules.yaml"
    text = _read(path)
    rules = _parse_rules(text, str(path)) if text is not None else {}
    return bodies, rules


def validate_templates(templates_dir: str) -> None:
    """Read every override file in ``templates_dir``; raises ``TemplateError`` naming the
    file (and line) of the first problem. A missing directory is an error."""
    if not Path(templates_dir).is_dir():
        raise TemplateError(f"templates_dir {templates_dir}: not a directory")
    for locale in LOCALES:
        for audience in AUDIENCES:
            _load_overrides(templates_dir, locale, audience)


def _templates(
    locale: str, audience: str, templates_dir: str | None
) -> tuple[dict[str, str], dict[str, RuleText]]:
    bodies = dict(_BODIES[(locale, audience)])
    rules = dict(_BUILTIN_RULES[locale])
    if not templates_dir:
        return bodies, rules
    try:
        user_bodies, user_rules = _load_overrides(templates_dir, locale, audience)
    except TemplateError as exc:
        log.warning("alert templates: %s; using the built-in templates", exc)
        return bodies, rules
    bodies.update(user_bodies)
    for name, text in user_rules.items():
        old = rules.get(name, RuleText())
        merged = {f: getattr(text, f) for f in RULE_FIELDS if getattr(text, f) is not None}
        rules[name] = msgspec.structs.replace(old, **merged)
    return bodies, rules


# --- values ------------------------------------------------------------------------------


class _Values(dict[str, str]):
    """Template values; a name without one reads as ``?``."""

    def __missing__(self, key: str) -> str:
        return "?"


def _number(value: float) -> str:
    """At most three significant digits, no trailing zeros: 95, 4.2, 0.123, 12300."""
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    digits = max(0, 2 - math.floor(math.log10(abs(value))))
    text = f"{round(value, digits):.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _bytes(text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        return text
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{_number(value)} {unit}"
        value /= 1024
    return text  # pragma: no cover


def _float(text: str | None) -> float | None:
    try:
        value = float(text or "")
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _first(*values: str | None) -> str | None:
    return next((v for v in values if v), None)


def _alert_values(alert: Alert, locale: str) -> _Values:
    """Labels, args, and what the sentences need derived from the value."""
    words = _WORDS[locale]
    values = _Values()
    values.update(alert.labels)
    values.update(alert.args)
    values["rule"] = alert.rule
    args, labels, v = alert.args, alert.labels, alert.value
    values["value"] = args.get("value") or (_number(v) if v is not None else "")
    mount = _first(args.get("mount"), args.get("mountpoint"), labels.get("mountpoint"))
    if mount:
        values.setdefault("mount", mount)
    interface = _first(args.get("interface"), labels.get("interface"), labels.get("name"))
    if interface:
        values.setdefault("interface", interface)
    free = _first(args.get("free_bytes"), args.get("avail_bytes"), args.get("free"))
    if free:
        values["free"] = _bytes(free)

    def derive(name: str, scale: float = 1.0, digits: bool = True) -> None:
        if name not in values and v is not None:
            values[name] = _number(v * scale) if digits else str(round(v * scale))

    rule = alert.rule
    if rule == "disk_full":
        derive("used_pct", 100)
    elif rule == "memory_pressure":
        if args.get("available_pct"):
            values.setdefault("avail_pct", args["available_pct"])
        derive("avail_pct", 100)
    elif rule == "disk_full_predicted":
        derive("hours_left", 1, digits=False)
    elif rule == "ssh_bruteforce":
        derive("count", 1, digits=False)
    elif rule == "new_listening_port":
        if not values.get("process"):
            values["process"] = words["a_process"]
    elif rule == "uplink_loss":
        derive("loss_pct", 100)
    elif rule == "uplink_latency":
        derive("latency_ms", 1000, digits=False)
    elif rule in ("ups_on_battery", "ups_low_battery"):
        derive("battery_pct", 1, digits=False)
    elif rule == "outbox_backlog":
        values.setdefault("rows", values.get("count") or (str(round(v)) if v is not None else "?"))
    elif rule == "collector_losing":
        derive("count", 1, digits=False)
    elif rule == "clock_skew":
        seconds = v if v is not None else _float(args.get("skew_seconds"))
        if labels.get("event") == "clock_jump" or args.get("kind") == "clock_jump":
            if seconds is None:
                values["skew_text"] = words["jumped"]
            else:
                values["skew_text"] = words["jumped_by"].format(v=round(abs(seconds)))
        elif seconds is not None:
            way = "behind" if seconds > 0 else "ahead"  # positive: the host's clock is behind
            values["skew_text"] = words[way].format(v=round(abs(seconds)))
        else:
            values["skew_text"] = words["jumped"]
    return values


def _fill(template: str, values: _Values) -> str:
    return string.Template(template).safe_substitute(values)


def _placeholders(line: str) -> list[str]:
    names = []
    for match in string.Template.pattern.finditer(line):
        name = match.group("named") or match.group("braced")
        if name:
            names.append(name)
    return names


def _fill_lines(template: str, values: _Values) -> list[str]:
    """Each line filled; a line whose placeholders are all empty is left out."""
    out = []
    for line in template.splitlines():
        names = _placeholders(line)
        if names and all(values.get(name, "?") == "" for name in names):
            continue
        out.append(_fill(line, values).rstrip())
    while out and not out[-1]:
        out.pop()
    return out


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _unique(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        if item:
            seen.setdefault(item, None)
    return list(seen)


def _time(t: float, now: float, locale: str) -> str:
    if locale == "zh-CN":
        dt = datetime.fromtimestamp(t, _BEIJING)
        ref = datetime.fromtimestamp(now, _BEIJING)
        day = (
            f"{dt.month}月{dt.day}日"
            if dt.year == ref.year
            else f"{dt.year}年{dt.month}月{dt.day}日"
        )
        return f"{day} {dt:%H:%M}"
    return f"{datetime.fromtimestamp(t, UTC):%Y-%m-%d %H:%M}"


def _duration(seconds: float, locale: str) -> str:
    minutes = int(max(0.0, seconds) // 60)
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    if locale == "zh-CN":
        if days:
            return f"{days} 天 {hours} 小时" if hours else f"{days} 天"
        if hours:
            return f"{hours} 小时 {mins} 分钟" if mins else f"{hours} 小时"
        return f"{mins} 分钟" if mins else "不到 1 分钟"
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {mins} min" if mins else f"{hours} h"
    return f"{mins} min" if mins else "under a minute"


def _rule_text(alert: Alert, rules: dict[str, RuleText], locale: str) -> RuleText:
    generic = _GENERIC[locale]
    own = rules.get(alert.rule)
    summary = alert.args.get("summary")
    runbook = alert.args.get("runbook")
    if own is None:
        if summary is None:
            summary = generic.summary or ""
            if alert.value is not None:
                summary += _WORDS[locale]["value"].format(v=_number(alert.value))
        return RuleText(summary, None, runbook or "", generic.plain, generic.steps)
    return RuleText(
        own.summary or summary or generic.summary,
        own.detail,
        own.runbook if own.runbook is not None else (runbook or ""),
        own.plain or generic.plain,
        own.steps or generic.steps,
    )


def _site_label(site: str, site_names: dict[str, str], locale: str, with_id: bool) -> str:
    if not site:
        return _WORDS[locale]["collector"]
    name = site_names.get(site) or site
    if with_id and name != site:
        return _WORDS[locale]["site_id"].format(name=name, id=site)
    return name


def _hosts(hosts: list[str], locale: str) -> str:
    words = _WORDS[locale]
    shown = words["join"].join(hosts[:_MAX_HOSTS])
    if len(hosts) > _MAX_HOSTS:
        return words["hosts_more"].format(hosts=shown, n=len(hosts) - _MAX_HOSTS)
    return shown


def _values(
    n: Notification, now: float, site_names: dict[str, str], locale: str, audience: str,
    rules: dict[str, RuleText],
) -> _Values:  # fmt: skip
    words = _WORDS[locale]
    alerts = list(n.alerts)
    site = alerts[0].site if alerts else ""
    hosts = _unique(a.host for a in alerts)
    values = _Values(
        site=_site_label(site, site_names, locale, with_id=False),
        site_id=site,
        host=_hosts(hosts, locale),
        severity=words.get(alerts[0].severity, alerts[0].severity) if alerts else "",
        count=str(len(alerts)),
        now=_time(now, now, locale),
        ack_url=n.ack_url,
        route=n.route,
        level=str(n.level),
        status=n.status,
    )
    label = _site_label(site, site_names, locale, with_id=audience == "it")
    if hosts:
        key = f"{audience}_hosts"
        if len(hosts) > 1 and f"{key}_n" in words:
            key += "_n"
        values["where"] = words["where"].format(
            site=label, hosts=words[key].format(hosts=_hosts(hosts, locale))
        )
    else:
        values["where"] = label

    texts = []
    for alert in alerts:
        own = _alert_values(alert, locale)
        rule = _rule_text(alert, rules, locale)
        texts.append({f: _one_line(_fill(getattr(rule, f) or "", own)) for f in RULE_FIELDS})
    summaries = [t["summary"] for t in texts]
    if len(texts) == 1:
        values["summary"] = summaries[0]
        values["details"] = texts[0]["detail"] or summaries[0]
        values["list"] = ""
    elif texts:
        values["summary"] = words["group"].format(
            first=summaries[0], total=len(texts), more=len(texts) - 1
        )
        lines = [f"- {s}" for s in summaries[:_MAX_LIST]]
        if len(summaries) > _MAX_LIST:
            lines.append(words["list_more"].format(n=len(summaries) - _MAX_LIST))
        values["details"] = values["list"] = "\n".join(lines)
    else:
        values["summary"] = values["details"] = values["list"] = ""
    sentences = words["sentences"]
    values["runbook"] = sentences.join(_unique(t["runbook"] for t in texts)[:2])
    values["plain"] = sentences.join(_unique(t["plain"] for t in texts)[:3])
    values["steps"] = sentences.join(_unique(t["steps"] for t in texts)[:2])

    if alerts:
        since = min(a.started for a in alerts)
        ends = [a.resolved_at for a in alerts if a.resolved_at is not None]
        end = max(ends) if ends and n.status == "resolved" else now
        values["since"] = _time(since, now, locale)
        values["duration"] = _duration(end - since, locale)
        values["resolved"] = _time(end, now, locale)
    else:
        values["since"] = values["resolved"] = values["now"]
        values["duration"] = _duration(0, locale)
    return values


# --- rendering ---------------------------------------------------------------------------


def render(
    n: Notification, now: float, site_names: dict[str, str], templates_dir: str | None = None
) -> Message:
    """The message for one notification, in its locale and for its audience."""
    locale = n.locale if n.locale in LOCALES else "zh-CN"
    audience = n.audience if n.audience in AUDIENCES else "it"
    status = n.status if n.status in STATUSES else "firing"
    bodies, rules = _templates(locale, audience, templates_dir)
    values = _values(n, now, site_names, locale, audience, rules)
    title = _one_line(_fill(bodies[f"title.{status}"], values))
    values["title"] = title
    text = "\n".join(_fill_lines(bodies[status], values))
    md_values = _Values(values)
    if n.ack_url:
        md_values["ack_url"] = f"[{_WORDS[locale]['ack']}]({n.ack_url})"
    md_lines = [line for line in _fill_lines(bodies[status], md_values) if line.strip()]
    if md_lines and md_lines[0] == title:
        md_lines = md_lines[1:]
    markdown = "\n\n".join([f"#### {title}", *md_lines])
    return Message(title, text, markdown)


def summarize(alert: Alert, locale: str = "zh-CN") -> str:
    """The built-in one-line summary of one alert (Alertmanager's ``summary`` annotation)."""
    locale = locale if locale in LOCALES else "zh-CN"
    rule = _rule_text(alert, _BUILTIN_RULES[locale], locale)
    return _one_line(_fill(rule.summary or "", _alert_values(alert, locale)))


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending the cut with "…". A short last
    line (the acknowledge link, "county IT has been told") is kept whole."""
    if len(text) <= limit:
        return text
    head, sep, last = text.rpartition("\n")
    if sep and head and len(last) <= limit * 2 // 3:
        room = limit - len(last) - 1
        if room >= 2:
            return head[: room - 1].rstrip() + "…\n" + last
    return text[: max(0, limit - 1)].rstrip() + "…"

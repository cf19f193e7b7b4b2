"""/metrics for alerting: notifications by notifier and result, alerts by state, the firing
ones by rule and site, the evaluation loop's health, and the API requests refused. Rendered at
scrape time from the alert service's counters; names and meanings are in docs/metrics.md."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from collector.alerting.api import REFUSED_REASONS
from collector.alerting.delivery import RESULTS
from collector.alerting.model import SEVERITIES
from collector.alerting.service import AlertService
from collector.catalogue import ALERTING_FAMILIES, CATALOGUE

__all__ = ["AlertsCollector"]

STATES = ("pending", "firing", "resolved")


class AlertsCollector(Collector):
    def __init__(self, service: AlertService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        m = self.service.metrics()
        fam = {
            name: Metric(name[:-6] if kind == "counter" else name, CATALOGUE[name], kind)
            for name, kind in ALERTING_FAMILIES.items()
        }
        sent = m["notifications"]
        for notifier in m["notifiers"]:
            for result in RESULTS:
                fam["outpost_notifications_total"].add_sample(
                    "outpost_notifications_total",
                    {"notifier": notifier, "result": result},
                    float(sent.get((notifier, result), 0)),
                )
        for state in STATES:
            for severity in SEVERITIES:
                fam["outpost_alerts"].add_sample(
                    "outpost_alerts",
                    {"state": state, "severity": severity},
                    float(m["states"].get((state, severity), 0)),
                )
        for (rule, site, severity), n in sorted(m["firing"].items()):
            fam["outpost_alerts_firing"].add_sample(
                "outpost_alerts_firing", {"rule": rule, "site": site, "severity": severity}, n
            )
        for name, key in (
            ("outpost_alert_evaluations_total", "evaluations"),
            ("outpost_alert_evaluation_failures_total", "evaluation_failures"),
            ("outpost_alert_evaluation_duration_seconds", "evaluation_seconds"),
            ("outpost_alert_events_dropped_total", "events_dropped"),
        ):
            fam[name].add_sample(name, {}, float(m[key]))
        with self.service.lock:
            refused = dict(self.service.api_refused)
        for reason in REFUSED_REASONS:  # every reason, 0 included, so rate() sees the first
            fam["outpost_api_requests_refused_total"].add_sample(
                "outpost_api_requests_refused_total",
                {"reason": reason},
                float(refused.get(reason, 0)),
            )
        yield from fam.values()

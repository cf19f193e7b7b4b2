"""Delivering notifications: the queue in the alert store, drained by one worker thread.

A notification is rendered (templates.py) and handed to its notifier when it is due. A
retryable failure (the network, a rate limit, a robot saying "too many requests") is tried
again with exponential backoff and jitter, for up to ``give_up_after_seconds``; a permanent
one (a wrong key, a refused address) is marked failed at once. Every outcome is counted per
notifier for ``outpost_notifications_total{notifier,result}``. The worker never runs on the
ingest thread, so a slow robot API cannot hold up metrics.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Annotated, Any

import msgspec

from collector.alerting.model import Notification
from collector.alerting.store import AlertStore

__all__ = ["RESULTS", "DeliveryConfig", "DeliveryWorker"]

log = logging.getLogger(__name__)

RESULTS = ("sent", "retried", "failed")


class DeliveryConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    first_retry_seconds: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    max_retry_seconds: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    give_up_after_seconds: Annotated[float, msgspec.Meta(gt=0)] = 86400.0


def backoff(
    attempts: int, config: DeliveryConfig, rnd: Callable[[], float] = random.random
) -> float:
    """Seconds before the next try after ``attempts`` failures: doubling, capped, +-20 %."""
    base = min(config.first_retry_seconds * 2 ** min(attempts, 30), config.max_retry_seconds)
    return float(base * (0.8 + 0.4 * rnd()))


class DeliveryWorker:
    """Sends what is due. ``send(notification) -> None`` raises the notifier's error; its
    ``retryable`` attribute (default True) says whether to try again."""

    def __init__(
        self,
        store: AlertStore,
        lock: threading.Lock,
        send: Callable[[Notification], None],
        config: DeliveryConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.lock = lock  # the alert state lock: the store's connection is shared
        self.send = send
        self.config = config
        self.clock = clock
        self.counts: Counter[tuple[str, str]] = Counter()
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """Try every due delivery once; returns how many were tried."""
        now = self.clock()
        with self.lock:
            due = self.store.due(now)
        for item in due:
            note = item.notification
            try:
                self.send(note)
            except Exception as exc:
                retryable = bool(getattr(exc, "retryable", True))
                detail = str(exc) or type(exc).__name__
                with self.lock:
                    age = self.clock() - item.created
                    if retryable and age < self.config.give_up_after_seconds:
                        wait = backoff(item.attempts, self.config)
                        self.store.retry(item.id, self.clock() + wait, detail)
                        self.counts[(note.notifier, "retried")] += 1
                        log.warning(
                            "notifier %s: delivery failed (%s); trying again in %.0f s",
                            note.notifier, detail, wait,
                        )  # fmt: skip
                    else:
                        self.store.finish(item.id, "failed", detail)
                        self.counts[(note.notifier, "failed")] += 1
                        log.error(
                            "notifier %s: gave up on a %s notification for %s: %s",
                            note.notifier, note.status, note.to or note.route, detail,
                        )  # fmt: skip
                continue
            with self.lock:
                self.store.finish(item.id, "sent")
                self.counts[(note.notifier, "sent")] += 1
        return len(due)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                tried = self.run_once()
            except Exception:
                log.exception("the delivery worker failed; going on")
                tried = 0
            if not tried:
                self.wake.wait(1.0)
                self.wake.clear()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="alert-delivery", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def metrics(self) -> dict[tuple[str, str], int]:
        return dict(self.counts)

    def describe(self) -> dict[str, Any]:
        with self.lock:
            return {"pending": self.store.pending_count()}

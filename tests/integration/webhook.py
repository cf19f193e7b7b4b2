"""A webhook endpoint for the alerting tests (and bench/detection.py): keeps every JSON body
posted to it, with its path and when it arrived."""

from __future__ import annotations

import http.server
import json
import threading
import time
from typing import Any

from harness import free_port

__all__ = ["Receiver"]


class Receiver:
    """A webhook endpoint: keeps every JSON body posted to it, with its path and its arrival
    (seconds since 1970)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.got: list[tuple[str, dict[str, Any], float]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                arrived = time.time()
                with outer.lock:
                    outer.got.append((self.path, json.loads(body), arrived))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def messages(self, path: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [m for p, m, _at in self.got if path is None or p == path]

    def find(self, status: str, rule: str, path: str = "/level0") -> list[dict[str, Any]]:
        return [
            m
            for m in self.messages(path)
            if m["status"] == status and any(a["rule"] == rule for a in m["alerts"])
        ]

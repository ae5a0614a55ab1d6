"""A stand-in for the feedback service in the platform tests: impressions and clicks counted by variant.

    python tests/platform/feedback_stub.py --port P

``POST /feedback`` with ``{"variant": "stable", "impressions": 5, "clicks": 1}``
adds to ``recflow_feedback_impressions_total`` / ``recflow_feedback_clicks_total``
(the names the canary analysis reads); ``GET /metrics`` serves them. The
platform runs it as one of its services, which is what the real feedback
service (``python -m recflow.feedback``) will be.
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, generate_latest

REGISTRY = CollectorRegistry()
IMPRESSIONS = Counter("recflow_feedback_impressions", "", ["variant"], registry=REGISTRY)
CLICKS = Counter("recflow_feedback_clicks", "", ["variant"], registry=REGISTRY)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        IMPRESSIONS.labels(event["variant"]).inc(event["impressions"])
        CLICKS.labels(event["variant"]).inc(event["clicks"])
        self._answer(b"{}")

    def do_GET(self):
        self._answer(generate_latest(REGISTRY))

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    ThreadingHTTPServer(("127.0.0.1", parser.parse_args().port), Handler).serve_forever()

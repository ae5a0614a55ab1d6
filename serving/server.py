"""Start a KServe ``ModelServer`` with recflow's additions to its HTTP app.

Two additions, the same for every model served (the recommender and the
benchmark's no-op floor):

- a body FastAPI rejects before the model sees it (a V2 request that is not
  JSON, or whose ``inputs`` lack a ``name`` or ``datatype``) is a client
  error: HTTP 400 naming the field, where FastAPI would answer 422;
- every HTTP request is counted by endpoint and status code
  (``recflow_requests_total``), 4xx and 5xx included.
"""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from recflow.http import validation_problems
from serving import metrics

log = logging.getLogger(__name__)


class RequestCounter:
    """Pure ASGI middleware (no per-request task, unlike Starlette's BaseHTTPMiddleware)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def send_counted(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            metrics.REQUESTS.labels(_endpoint(scope.get("path", "")), str(status)).inc()


def _endpoint(path: str) -> str:
    if path.endswith(":predict"):
        return "v1"
    if path.endswith("/infer"):
        return "v2"
    if path == "/metrics":
        return "metrics"
    return "other"


async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    return JSONResponse(status_code=400, content={"error": "invalid request: " + validation_problems(error.errors())})


_configured = False


def configure_app() -> None:
    """Add the exception handler and the counter to KServe's app (once per process)."""
    global _configured
    if _configured:
        return
    from kserve.model_server import app

    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_middleware(RequestCounter)
    _configured = True


def serve(models: list, port: int, access_log: bool = False) -> None:
    """Serve ``models`` on ``port`` until SIGTERM/SIGINT (one uvicorn worker, REST only).

    Per-request access and latency log lines are off unless ``access_log``:
    Prometheus has the latencies, and at thousands of requests a second the
    log lines cost as much CPU as the no-op model's whole request.
    """
    from kserve import ModelServer

    configure_app()
    if not access_log:
        # uvicorn's access lines and KServe's per-request timing lines.
        for name in ("uvicorn.access", "kserve.trace"):
            logging.getLogger(name).setLevel(logging.WARNING)
    server = ModelServer(http_port=port, workers=1, enable_grpc=False, enable_latency_logging=access_log)
    server.start(models)

"""The feedback ingestion service: an HTTP front for :class:`~recflow.feedback.ingest.FeedbackIngestor`.

    python -m recflow.feedback --workspace .recflow --port 8090

Endpoints:

- ``POST /v1/feedback`` with ``{"events": [FeedbackEvent, ...]}``: 200 with
  ``{"accepted", "duplicates", "last_sequence"}`` once the events are in the
  log; 400 naming the field for a malformed body or event. Retrying a batch
  is safe (duplicates are dropped by ``event_id``).
- ``GET /healthz``: 200 while the log is writable; the body says how many
  clicks wait for the online store and its last error.
- ``GET /metrics``: Prometheus.

The local platform (``recflow up``) runs it beside the model servers; the
simulator posts what it shows and what was clicked.
"""

from __future__ import annotations

import argparse
import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from recflow.feedback.ingest import FeedbackIngestor
from recflow.http import validation_problems
from recflow.feedback.log import FeedbackEvent, FeedbackLog

DEFAULT_WORKSPACE = ".recflow"
LOG_FILE = "feedback/events.jsonl"
MAX_EVENTS_PER_REQUEST = 10_000


class FeedbackBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[FeedbackEvent] = Field(max_length=MAX_EVENTS_PER_REQUEST)


def create_app(ingestor: FeedbackIngestor) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI):
        ingestor.start()
        yield
        ingestor.stop()

    app = FastAPI(title="recflow feedback", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"error": "invalid feedback: " + validation_problems(error.errors())})

    @app.post("/v1/feedback")
    async def feedback(batch: FeedbackBatch) -> dict:
        # fsync blocks: off the event loop.
        receipt = await run_in_threadpool(ingestor.accept, batch.events)
        return {"accepted": receipt.accepted, "duplicates": receipt.duplicates, "last_sequence": receipt.last_sequence}

    @app.get("/healthz")
    async def health() -> dict:
        return {
            "status": "ok",
            "logged_events": len(ingestor.log),
            "pending_clicks": ingestor.pending,
            "online_store_error": ingestor.last_error,
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def build_parser() -> argparse.ArgumentParser:
    """The command line, also read by the chart's test: the Deployment's args must parse."""
    parser = argparse.ArgumentParser(prog="python -m recflow.feedback", description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default=DEFAULT_WORKSPACE, help=f"default: {DEFAULT_WORKSPACE}")
    parser.add_argument("--feature-repo", help="Feast repo whose online store gets the clicks (default: <workspace>/feature_repo)")
    parser.add_argument("--log", help=f"the feedback log (default: <workspace>/{LOG_FILE})")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (a pod: 0.0.0.0); default: 127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    return parser


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from recflow.features.store import get_store

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    repo = Path(args.feature_repo) if args.feature_repo else Path(args.workspace) / "feature_repo"
    if not (repo / "feature_store.yaml").is_file():
        raise SystemExit(f"no Feast repo at {repo} (feature_store.yaml missing): pass --feature-repo")
    log_path = Path(args.log) if args.log else Path(args.workspace) / LOG_FILE
    with FeedbackLog(log_path) as feedback_log:
        app = create_app(FeedbackIngestor(get_store(repo), feedback_log))
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)

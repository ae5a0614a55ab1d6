"""The drift monitor process: follows the feedback log and exports the drift gauges.

    python -m recflow.monitoring --workspace .recflow --port 8091 [--config monitor.yaml]

Endpoints:

- ``GET /drift``: the latest report (the monitored model, each window's
  score, threshold and size, and whether it drifted);
- ``GET /healthz``: 200 once the monitor runs;
- ``GET /metrics``: Prometheus (``recflow_drift_*``, read by the alerting
  rules in ``rules/`` under the scrape job ``monitor``).

The local platform (``recflow up``) runs it beside the feedback service; on a
cluster the chart does, with ``--inference-service``: there the stable
model's feedback is labelled with its revision (or Deployment), which the
InferenceService's status names.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

import yaml
from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from recflow.feedback.service import DEFAULT_WORKSPACE, LOG_FILE
from recflow.monitoring.live import STABLE_VARIANT, LiveDriftMonitor, MonitorConfig

log = logging.getLogger(__name__)


def create_app(monitor: LiveDriftMonitor) -> FastAPI:
    stop = threading.Event()

    def follow() -> None:
        while not stop.is_set():
            try:
                monitor.poll()
            except Exception:  # a damaged log or a bad bundle: reported, and tried again next interval
                log.exception("drift poll failed")
            stop.wait(monitor.config.interval_seconds)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        follower = threading.Thread(target=follow, name="drift-monitor", daemon=True)
        follower.start()
        yield
        stop.set()
        follower.join(timeout=5)

    app = FastAPI(title="recflow drift monitor", lifespan=lifespan)

    @app.get("/drift")
    async def drift() -> dict:
        return monitor.current()

    @app.get("/healthz")
    async def health() -> dict:
        return {"status": "ok", "log_position": monitor.position}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def find_bundle(workspace: Path, version: str) -> Path | None:
    """The bundle of a model version: one the local platform serves, else the workspace's registry of blessed models."""
    from recflow.platform.state import PlatformState

    state = PlatformState.read(workspace)
    for process in state.processes if state is not None else []:
        card = process.bundle / "model_card.json" if process.bundle is not None else None
        if card is not None and card.is_file() and json.loads(card.read_text()).get("version") == version:
            return process.bundle
    registered = workspace / "models" / version
    return registered if registered.is_dir() else None


def cluster_stable_variant(inference_service: str, api=None) -> Callable[[], str]:
    """The variant the InferenceService's stable model answers as (its rolled-out revision, or its
    Deployment in Standard mode), read at each call; the last one read if the API does not answer."""
    from recflow.kubernetes import current_namespace, custom_objects_api
    from recflow.kubernetes.inferenceservice import InferenceService, stable_variant

    isvc = InferenceService(inference_service, current_namespace(), api if api is not None else custom_objects_api())
    known = ""

    def read() -> str:
        nonlocal known
        try:
            known = stable_variant(isvc.get())
        except Exception as error:  # the API server's own types; the next poll asks again
            log.warning("reading InferenceService %s failed, still following %r: %s", inference_service, known, error)
        return known

    return read


def build_parser() -> argparse.ArgumentParser:
    """The command line, also read by the chart's test: the Deployment's args must parse."""
    parser = argparse.ArgumentParser(prog="python -m recflow.monitoring", description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default=DEFAULT_WORKSPACE, help=f"default: {DEFAULT_WORKSPACE}")
    parser.add_argument("--log", help=f"the feedback log (default: <workspace>/{LOG_FILE})")
    parser.add_argument("--config", help="monitor settings (YAML, see recflow/monitoring/live.py MonitorConfig)")
    parser.add_argument(
        "--inference-service", help="on a cluster: follow the feedback of this InferenceService's stable variant "
        "(its rolled-out revision or stable Deployment) instead of the variant named 'stable'",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (a pod: 0.0.0.0); default: 127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    return parser


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = MonitorConfig.model_validate(yaml.safe_load(Path(args.config).read_text()) or {}) if args.config else MonitorConfig()
    workspace = Path(args.workspace)
    log_path = Path(args.log) if args.log else workspace / LOG_FILE
    stable = cluster_stable_variant(args.inference_service) if args.inference_service else lambda: STABLE_VARIANT
    monitor = LiveDriftMonitor(log_path, lambda version: find_bundle(workspace, version), config, stable)
    uvicorn.run(create_app(monitor), host=args.host, port=args.port, log_level="warning", access_log=False)

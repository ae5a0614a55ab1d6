"""The local platform's settings: ports, scraping, supervision, and the processes beside the model servers.

Read from a YAML file (``recflow up --config platform.yaml``); unknown keys
are errors. Every port left unset is a free loopback port picked at start.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

# The scrape jobs the rollout analysis reads (recflow/rollout/prometheus.py) and
# the names of HAProxy's two slots (recflow/rollout/proxy.py): the model servers'.
MODEL_JOBS = ("stable", "canary")
RESERVED_NAMES = {*MODEL_JOBS, "proxy", "prometheus"}


class ServiceSpec(BaseModel):
    """One more recflow process, supervised, restarted and scraped like the model servers.

    ``command`` may hold ``{python}`` (this interpreter), ``{port}`` and
    ``{workspace}``, filled in at start, e.g. ``ServiceSpec(name="feedback", health_path="/healthz",
    command=["{python}", "-m", "recflow.feedback", "--workspace", "{workspace}", "--port", "{port}"])``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$", description="Process name and its Prometheus scrape job")
    command: list[str] = Field(min_length=1)
    port: int | None = Field(None, ge=1, le=65535, description="Unset: a free loopback port")
    health_path: str = Field("/metrics", pattern=r"^/", description="Answers 200 once the process is ready")
    metrics_path: str | None = Field("/metrics", pattern=r"^/", description="Scraped by Prometheus; null: not scraped")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_NAMES:
            raise ValueError(f"{name!r} is one of the platform's own processes ({', '.join(sorted(RESERVED_NAMES))})")
        return name


# The feedback ingestion (recflow.feedback): the simulator's clicks reach the
# offline log and the online store through it, and its counters give the
# canary analysis its click-through per variant.
FEEDBACK_SERVICE = ServiceSpec(
    name="feedback",
    command=["{python}", "-m", "recflow.feedback", "--workspace", "{workspace}", "--port", "{port}"],
    health_path="/healthz",
)

# The drift monitor (recflow.monitoring): follows the feedback log and exports
# the drift gauges under the scrape job the alerting rules name ("monitor").
MONITOR_SERVICE = ServiceSpec(
    name="monitor",
    command=["{python}", "-m", "recflow.monitoring", "--workspace", "{workspace}", "--port", "{port}"],
    health_path="/healthz",
)


class PlatformConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    proxy_port: int | None = Field(None, ge=1, le=65535, description="HAProxy's endpoint; unset: a free port")
    prometheus_port: int | None = Field(None, ge=1, le=65535, description="Prometheus' UI and API; unset: a free port")
    stable_port: int | None = Field(None, ge=1, le=65535, description="The stable model server; unset: a free port")
    serving_config: Path | None = Field(None, description="Serving settings (serving/config.py) for every model server")
    scrape_interval_seconds: int = Field(1, ge=1, le=60, description="Prometheus scrape and rule interval")
    start_timeout_seconds: float = Field(120.0, gt=0, description="Longest wait for a process to become healthy")
    stop_grace_seconds: float = Field(15.0, gt=0, description="SIGTERM, then SIGKILL after this long")
    max_restarts: int = Field(5, ge=0, description="Restarts of one crashed process before it is left down")
    restart_backoff_seconds: float = Field(1.0, gt=0, description="Wait before the first restart; doubled each time")
    services: list[ServiceSpec] = Field(
        default_factory=lambda: [FEEDBACK_SERVICE, MONITOR_SERVICE],
        description="More recflow processes to run (default: feedback and the drift monitor)",
    )

    @field_validator("services")
    @classmethod
    def _unique_names(cls, services: list[ServiceSpec]) -> list[ServiceSpec]:
        names = [service.name for service in services]
        if len(set(names)) != len(names):
            raise ValueError(f"service names must be unique, got {names}")
        return services

    @classmethod
    def from_file(cls, path: str | Path) -> PlatformConfig:
        return cls.model_validate(yaml.safe_load(Path(path).read_text()) or {})

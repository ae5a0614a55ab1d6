"""The platform's state file, ``<workspace>/platform/state.json``: written by the supervisor, read by the CLI.

The supervisor rewrites it (atomically) on every change: a process started,
became healthy, crashed, was restarted or stopped, a canary came or went.
``recflow status`` reads it and checks each process's health itself.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

ProcessStatus = Literal["starting", "running", "crashed", "failed", "stopped"]
PlatformStatus = Literal["starting", "running", "stopping", "stopped", "failed"]


def platform_directory(workspace: str | Path) -> Path:
    return Path(workspace) / "platform"


def state_path(workspace: str | Path) -> Path:
    return platform_directory(workspace) / "state.json"


class Crash(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: dt.datetime
    exit_code: int


class ProcessState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["haproxy", "prometheus", "model", "service"]
    pid: int | None
    port: int
    url: str
    health_url: str
    log: Path
    status: ProcessStatus
    exit_code: int | None = None
    restarts: int = 0
    crashes: list[Crash] = []
    bundle: Path | None = None  # model servers only

    def describe_crashes(self) -> str:
        """``crashed at 12:03:04, exit code -9, restarted 1x``, or "" for a process that never crashed."""
        if not self.crashes:
            return ""
        last = self.crashes[-1]
        return f"crashed at {last.at.astimezone():%H:%M:%S}, exit code {last.exit_code}, restarted {self.restarts}x"


class Canary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bundle: Path
    owner_pid: int  # the rollout driving it; gone -> the canary is rolled back
    percent: int = 0


class PlatformState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workspace: Path
    status: PlatformStatus
    error: str | None = None
    supervisor_pid: int
    control_url: str
    proxy_url: str
    prometheus_url: str
    started_at: dt.datetime
    processes: list[ProcessState]
    canary: Canary | None = None

    def process(self, name: str) -> ProcessState | None:
        return next((process for process in self.processes if process.name == name), None)

    def write(self, path: Path) -> None:
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(self.model_dump_json(indent=2))
        temporary.replace(path)

    @classmethod
    def read(cls, workspace: str | Path) -> PlatformState | None:
        path = state_path(workspace)
        return cls.model_validate_json(path.read_text()) if path.exists() else None


def alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie (exited, not yet reaped by its parent) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"

"""The local platform's supervisor: one process that owns HAProxy, Prometheus and the recflow servers.

    python -m recflow.platform.supervisor --workspace .recflow --bundle DIR [--config platform.json]

``recflow up`` starts it detached (its own session: closing the terminal
stops nothing) and ``recflow down`` stops it with SIGTERM, upon which it
stops its children. Meanwhile it

- looks at every child twice a second: a crashed server is recorded and
  restarted with back-off (:mod:`recflow.platform.children`);
- keeps ``<workspace>/platform/state.json`` current (:mod:`recflow.platform.state`);
- answers the rollout on a loopback control port (JSON over HTTP): start a
  canary, set its share, promote it, roll it back. The canary's processes
  are the supervisor's children like the others, so a promoted canary stays
  supervised after the rollout command exits, and a canary whose rollout
  died is rolled back.

Promotion without a failed request: the canary already takes 100 % of the
users; the ``stable`` slot is pointed at the canary's server and its health
check awaited, the weights go back to stable 100 / canary 0 (both slots now
lead to the same server), the Prometheus target changes job, and only then
is the old stable server stopped (SIGTERM: it finishes what it has in
flight, and nothing new reaches it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from recflow.platform import prometheus
from recflow.platform.children import HOST, Child, command_launcher, stop
from recflow.platform.config import PlatformConfig
from recflow.platform.state import Canary, PlatformState, alive, platform_directory, state_path
from recflow.rollout.proxy import TrafficProxy, require_haproxy
from serving.process import free_port

log = logging.getLogger("recflow.platform")

TICK_SECONDS = 0.5


class PlatformError(RuntimeError):
    """A control request the platform cannot carry out; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


class Supervisor:
    def __init__(self, workspace: Path, bundle: Path, config: PlatformConfig) -> None:
        self.workspace = workspace.resolve()
        self.directory = platform_directory(self.workspace)
        self.config = config
        self.logs = self.directory / "logs"
        self.prometheus_directory = self.directory / "prometheus"
        self.lock = threading.RLock()  # the children and the canary: shared by the loop and control requests
        self.control_lock = threading.Lock()  # one control operation at a time
        self.stopping = threading.Event()
        self.status, self.error = "starting", None
        self.started_at = dt.datetime.now(dt.timezone.utc)
        self.canary: Canary | None = None
        self._written = ""

        require_haproxy()  # both binaries named before anything starts
        prometheus_binary = prometheus.require_prometheus()
        stable = self._model_server("stable", bundle.resolve(), config.stable_port or free_port())
        # Without a canary, the canary slot points at the stable server, in maintenance, at weight 0.
        proxy_port = config.proxy_port or free_port()
        self.proxy = TrafficProxy(self.directory / "haproxy", proxy_port, stable.address, stable.address)
        prometheus_port = config.prometheus_port or free_port()
        prometheus_config = prometheus.write_config(self.prometheus_directory, config.scrape_interval_seconds)
        self.children: dict[str, Child] = {
            "proxy": Child("proxy", "haproxy", self.proxy.port, "/", self.proxy.directory / "haproxy.log",
                           lambda: self.proxy.start().process, restart=False),
            "prometheus": Child(
                "prometheus", "prometheus", prometheus_port, "/-/ready", self.logs / "prometheus.log",
                command_launcher(prometheus.command(prometheus_binary, prometheus_config, self.prometheus_directory,
                                                    prometheus_port), self.logs / "prometheus.log"),
                restart=True,
            ),
            "stable": stable,
        }  # fmt: skip
        for service in config.services:
            port = service.port or free_port()
            fill = {"python": sys.executable, "port": str(port), "workspace": str(self.workspace)}
            command = [part.format(**fill) for part in service.command]
            log_path = self.logs / f"{service.name}.log"
            self.children[service.name] = Child(
                service.name, "service", port, service.health_path, log_path, command_launcher(command, log_path),
                restart=True,
            )
        self.control = ThreadingHTTPServer((HOST, 0), _control_handler(self))

    def _model_server(self, name: str, bundle: Path, port: int, serving_config: Path | None = None) -> Child:
        command = [sys.executable, "-m", "serving", "--bundle", str(bundle),
                   "--feature-repo", str(self.workspace / "feature_repo"), "--port", str(port)]  # fmt: skip
        serving_config = serving_config or self.config.serving_config
        if serving_config is not None:
            command += ["--config", str(serving_config.resolve())]
        log_path = self.logs / f"model-{port}.log"
        return Child(name, "model", port, "/v2/health/ready", log_path, command_launcher(command, log_path),
                     restart=True, bundle=bundle)  # fmt: skip

    # --- the loop --------------------------------------------------------------------------------

    def run(self) -> int:
        """Start everything, supervise until SIGTERM, stop everything; 1 if the start failed."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stopping.set())
        self.directory.mkdir(parents=True, exist_ok=True)
        threading.Thread(target=self.control.serve_forever, name="control", daemon=True).start()
        prometheus.set_target(self.prometheus_directory, "stable", self.children["stable"].address)
        for service in self.config.services:
            if service.metrics_path is not None:
                address = self.children[service.name].address
                prometheus.set_target(self.prometheus_directory, service.name, address, service.metrics_path)
        try:
            self._start_all()
            self.status = "running"
            self._write_state()
            log.info("platform running: %s", ", ".join(f"{c.name} {c.url}" for c in self.children.values()))
            while not self.stopping.wait(TICK_SECONDS):
                self._tick()
                self._roll_back_abandoned_canary()
        except (RuntimeError, OSError) as error:  # a process that did not start, haproxy refusing its config
            log.error("%s", error)
            self.status, self.error = "failed", str(error)
        finally:
            if self.status != "failed":
                self.status = "stopping"
            self._write_state()
            self.control.shutdown()
            with self.lock:
                stop(self.children.values(), self.config.stop_grace_seconds)
            if self.status == "stopping":
                self.status = "stopped"
            self._write_state()
            log.info("platform %s", self.status)
        return 1 if self.status == "failed" else 0

    def _start_all(self) -> None:
        self._write_state()
        for child in self.children.values():
            child.start()
            if child.kind == "haproxy":
                self.proxy.set_enabled("canary", False)
        while not self.stopping.is_set():
            self._tick()
            failed = [child for child in self.children.values() if child.status == "failed"]
            if failed:
                raise PlatformError("\n".join(f"{c.name} did not start (see {c.log_path}):\n{c.log_tail()}" for c in failed))
            if all(child.status == "running" for child in self.children.values()):
                return
            time.sleep(0.2)

    def _tick(self) -> None:
        with self.lock:
            for child in self.children.values():
                before = child.status
                if child.supervise(self.config.start_timeout_seconds, self.config.max_restarts,
                                   self.config.restart_backoff_seconds):  # fmt: skip
                    if child.status in ("crashed", "failed"):
                        action = "restarting" if child.status == "crashed" else "left down"
                        log.warning("%s exited with code %s; %s", child.name, child.crashes[-1].exit_code, action)
                    elif child.status != before:
                        log.info("%s: %s -> %s", child.name, before, child.status)
            self._write_state()

    def _roll_back_abandoned_canary(self) -> None:
        """A canary whose rollout process is gone has nobody to decide: it goes back to 0 %."""
        canary = self.canary
        if canary is None or alive(canary.owner_pid) or not self.control_lock.acquire(blocking=False):
            return
        try:
            if self.canary is canary:
                log.warning("rollout process %d is gone: rolling canary %s back", canary.owner_pid, canary.bundle)
                self._remove_canary()
        except (RuntimeError, OSError):  # tried again at the next tick
            log.exception("rolling the abandoned canary back failed")
        finally:
            self.control_lock.release()

    def _write_state(self) -> None:
        with self.lock:
            state = PlatformState(
                workspace=self.workspace, status=self.status, error=self.error, supervisor_pid=os.getpid(),
                control_url=f"http://{HOST}:{self.control.server_address[1]}", proxy_url=self.children["proxy"].url,
                prometheus_url=self.children["prometheus"].url, started_at=self.started_at,
                processes=[child.state() for child in self.children.values()], canary=self.canary,
            )  # fmt: skip
            text = state.model_dump_json()
            if text != self._written:
                state.write(state_path(self.workspace))
                self._written = text

    # --- control operations (one at a time, from the control port) ---------------------------------

    def start_canary(self, bundle: str, owner_pid: int, serving_config: str | None = None) -> None:
        """Start a server on ``bundle`` in the canary slot at 0 %, scraped as job ``canary``.

        ``serving_config``: the canary server's settings, if not the platform's
        (a rollout drill's injected fault).
        """
        with self.control_lock:
            if self.canary is not None:
                raise PlatformError(
                    f"a rollout is already running (canary {self.canary.bundle}, rollout pid {self.canary.owner_pid})"
                )
            path = Path(bundle).resolve()
            if not (path / "model_card.json").is_file():
                raise PlatformError(f"{path} is not a model bundle (no model_card.json)", status=400)
            settings = Path(serving_config) if serving_config else None
            if settings is not None and not settings.is_file():
                raise PlatformError(f"no serving config at {settings}", status=400)
            child = self._model_server("canary", path, free_port(), settings)
            with self.lock:
                self.children["canary"] = child
                self.canary = Canary(bundle=path, owner_pid=owner_pid)
                child.start()
            try:
                self._wait_running(child)
                prometheus.set_target(self.prometheus_directory, "canary", child.address)
                self._wait_scraped("canary", child.address)
                self.proxy.set_canary_percent(0)
                self.proxy.set_address("canary", child.address)
                self.proxy.set_enabled("canary", True)
                self.proxy.wait_up("canary", child.address)
            except (RuntimeError, OSError):  # PlatformError, haproxy refusing, a timeout
                self._remove_canary()
                raise
            self._write_state()

    def set_canary_percent(self, percent: int) -> None:
        with self.control_lock:
            canary = self._require_canary()
            self.proxy.set_canary_percent(percent)
            with self.lock:
                canary.percent = percent
            self._write_state()

    def promote(self) -> None:
        """The canary becomes the stable server; the old stable server stops once no request can reach it."""
        with self.control_lock:
            self._require_canary()
            candidate, previous = self.children["canary"], self.children["stable"]
            if candidate.status != "running":
                raise PlatformError(f"the canary is {candidate.status}, not running: not promoted")
            self.proxy.set_canary_percent(100)
            self.proxy.set_address("stable", candidate.address)
            try:
                self.proxy.wait_up("stable", candidate.address)
            except TimeoutError:  # the canary keeps its 100 %, the stable slot its server
                self.proxy.set_address("stable", previous.address)
                raise
            self.proxy.set_canary_percent(0)
            self.proxy.set_enabled("canary", False)
            prometheus.set_target(self.prometheus_directory, "stable", candidate.address)
            prometheus.remove_target(self.prometheus_directory, "canary")
            with self.lock:
                candidate.name = "stable"
                self.children["stable"] = self.children.pop("canary")
                self.canary = None
            log.info("promoted %s; stopping the previous stable server (%s)", candidate.bundle, previous.bundle)
            stop([previous], self.config.stop_grace_seconds)
            self._write_state()

    def roll_back(self) -> None:
        with self.control_lock:
            self._require_canary()
            self._remove_canary()

    def _remove_canary(self) -> None:
        """Canary slot to 0 % and into maintenance, its target gone, then its server stopped."""
        self.proxy.set_canary_percent(0)
        self.proxy.set_enabled("canary", False)
        prometheus.remove_target(self.prometheus_directory, "canary")
        with self.lock:
            child = self.children.pop("canary", None)
            self.canary = None
        if child is not None:
            stop([child], self.config.stop_grace_seconds)
        self._write_state()

    def _require_canary(self) -> Canary:
        if self.canary is None:
            raise PlatformError("no canary is running")
        return self.canary

    def _wait_scraped(self, job: str, address: str, timeout: float = 30.0) -> None:
        """Until Prometheus scrapes it, the canary's figures are missing from the first analysis."""
        deadline = time.monotonic() + timeout
        while not prometheus.scraped(self.children["prometheus"].url, job, address):
            if time.monotonic() > deadline:
                raise PlatformError(f"Prometheus did not scrape {address} as job {job} within {timeout:.0f} s", 500)
            time.sleep(0.2)

    def _wait_running(self, child: Child) -> None:
        while child.status != "running":
            if child.status == "failed" or self.stopping.is_set():
                raise PlatformError(f"the canary server did not start (see {child.log_path}):\n{child.log_tail()}", 500)
            time.sleep(0.2)


def _control_handler(supervisor: Supervisor) -> type[BaseHTTPRequestHandler]:
    routes = {
        ("POST", "/canary"): supervisor.start_canary,
        ("PUT", "/canary/percent"): supervisor.set_canary_percent,
        ("POST", "/canary/promote"): supervisor.promote,
        ("DELETE", "/canary"): supervisor.roll_back,
    }

    class ControlHandler(BaseHTTPRequestHandler):
        def _dispatch(self) -> None:
            operation = routes.get((self.command, self.path))
            if operation is None:
                return self._answer(404, {"error": f"no {self.command} {self.path}"})
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                operation(**(json.loads(body) if body else {}))
            except PlatformError as error:
                return self._answer(error.status, {"error": str(error)})
            except (TypeError, ValueError) as error:  # a malformed request body
                return self._answer(400, {"error": str(error)})
            except (RuntimeError, TimeoutError, OSError) as error:
                log.exception("%s %s failed", self.command, self.path)
                return self._answer(500, {"error": f"{type(error).__name__}: {error}"})
            self._answer(200, {})

        do_POST = do_PUT = do_DELETE = _dispatch

        def _answer(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:
            log.info("control: " + format, *args)

    return ControlHandler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recflow.platform.supervisor", description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True, type=Path)
    parser.add_argument("--bundle", required=True, type=Path, help="the stable model server's bundle")
    parser.add_argument("--config", type=Path, help="PlatformConfig (YAML or JSON; default: the defaults)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = PlatformConfig.from_file(args.config) if args.config else PlatformConfig()
    return Supervisor(args.workspace, args.bundle, config).run()


if __name__ == "__main__":
    sys.exit(main())

"""The local traffic split: HAProxy in front of the stable and canary servers, weights changed live.

The rollout controller's local backend moves traffic by changing the two
servers' weights through HAProxy's runtime API (``set weight``): no reload,
no dropped connection, the next request already follows the new split.

Sticky assignment: clients send the user id in the ``X-Recflow-User`` header
(the proxy does not parse JSON bodies) and HAProxy hashes it on a consistent
ring, so a user keeps their variant while the weights move, except for the
users the growing canary takes over. Requests without the header are
balanced like any other. Every answer names the slot that served it in
``X-Recflow-Variant``: the feedback a client sends about those items carries
it, and the canary analysis compares click-through per variant.

A request that fails on one server (connection refused, empty answer,
timeout, 5xx) is retried once on the other: a canary that fails requests is
rolled back on the evidence of its own counters, without users seeing its
failures.

A slot can be pointed at another server live (``set server ... addr``): the
local platform promotes a canary by pointing the ``stable`` slot at it, and
parks the ``canary`` slot in maintenance while no canary runs.

``haproxy`` comes from the Debian package of that name; a missing binary is
reported with the command that installs it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

USER_HEADER = "X-Recflow-User"
VARIANT_HEADER = "X-Recflow-Variant"
BACKEND = "recommender"
VARIANTS = ("stable", "canary")

CONFIG = """\
global
    stats socket {socket} mode 600 level admin
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    # A request that finds its server gone, or gets a 5xx from it, is sent
    # again to the other one: recommendations are reads, safe to repeat. The
    # failing server still counts its own 5xx, which the canary analysis reads.
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response response-timeout 500 502 503 504

frontend {backend}
    bind 127.0.0.1:{port}
    default_backend {backend}

backend {backend}
    balance hdr({header})
    hash-type consistent
    option httpchk GET /
    http-response set-header {variant_header} %[srv_name]
    server stable {stable} weight 100 check inter 1s
    server canary {canary} weight 0 check inter 1s
"""


@dataclass(frozen=True)
class ServerState:
    address: str  # host:port
    up: bool  # its health check passes
    maintenance: bool


def require_haproxy() -> str:
    path = shutil.which("haproxy")
    if path is None:
        raise FileNotFoundError("haproxy is not installed: sudo apt-get install haproxy (Debian package)")
    return path


MAX_SOCKET_PATH = 100


class TrafficProxy:
    """HAProxy on ``port`` splitting between ``stable`` and ``canary`` (``host:port`` each)."""

    def __init__(self, directory: str | Path, port: int, stable: str, canary: str) -> None:
        self.directory = Path(directory)
        self.port = port
        self.stable, self.canary = stable, canary
        self.socket_path = self.directory / "haproxy.sock"
        # A UNIX socket's path must fit sun_path (108 bytes): a deep workspace's
        # socket goes to a directory of its own under the temp dir instead.
        self._socket_dir: Path | None = None
        if len(str(self.socket_path)) > MAX_SOCKET_PATH:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="recflow-haproxy-"))
            self.socket_path = self._socket_dir / "haproxy.sock"
        self.config_path = self.directory / "haproxy.cfg"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0) -> TrafficProxy:
        binary = require_haproxy()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            CONFIG.format(socket=self.socket_path, backend=BACKEND, port=self.port, header=USER_HEADER,
                          variant_header=VARIANT_HEADER, stable=self.stable, canary=self.canary)
        )
        check = subprocess.run([binary, "-c", "-f", str(self.config_path)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy rejected {self.config_path}:\n{check.stdout}{check.stderr}")
        log = (self.directory / "haproxy.log").open("ab")
        self.process = subprocess.Popen([binary, "-db", "-f", str(self.config_path)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.process.returncode}; see {self.directory / 'haproxy.log'}")
            try:
                self.weights()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"haproxy's runtime socket did not answer within {timeout:.0f} s")

    def set_canary_percent(self, percent: int) -> None:
        """Send ``percent`` of users to the canary and the rest to the stable server."""
        if not 0 <= percent <= 100:
            raise ValueError(f"canary percent must be within 0..100, got {percent}")
        target = {"canary": percent, "stable": 100 - percent}
        current = self.weights()
        # The server gaining weight first: both at 0 for an instant would answer 503.
        for server in sorted(target, key=lambda name: current[name] - target[name]):
            weight = target[server]
            answer = self._runtime(f"set weight {BACKEND}/{server} {weight}")
            if answer.strip():
                raise RuntimeError(f"haproxy refused 'set weight {BACKEND}/{server} {weight}': {answer.strip()}")

    def weights(self) -> dict[str, int]:
        """Current weight of each variant (its percent of users)."""
        return {server: int(self._runtime(f"get weight {BACKEND}/{server}").split()[0]) for server in VARIANTS}

    def set_address(self, server: str, address: str) -> None:
        """Point ``server``'s slot at ``host:port``; requests already sent finish where they are."""
        host, _, port = address.rpartition(":")
        answer = self._runtime(f"set server {BACKEND}/{server} addr {host} port {port}")
        if "change" not in answer:  # "IP changed from ...", "no need to change the addr, port changed ..."
            raise RuntimeError(f"haproxy refused to point {server} at {address}: {answer.strip()}")

    def set_enabled(self, server: str, enabled: bool) -> None:
        """Take ``server``'s slot out of maintenance (health-checked again) or put it in."""
        state = "ready" if enabled else "maint"
        answer = self._runtime(f"set server {BACKEND}/{server} state {state}")
        if answer.strip():
            raise RuntimeError(f"haproxy refused 'set server {BACKEND}/{server} state {state}': {answer.strip()}")

    def servers(self) -> dict[str, ServerState]:
        """Each slot's address, whether its health check passes, and whether it is in maintenance."""
        states = {}
        for line in self._runtime(f"show servers state {BACKEND}").splitlines():
            fields = line.split()
            if len(fields) > 18 and fields[1] == BACKEND:
                # srv_addr, srv_op_state (2: up), srv_admin_state (bit 0x1: maintenance), srv_port
                states[fields[3]] = ServerState(
                    address=f"{fields[4]}:{fields[18]}", up=fields[5] == "2", maintenance=bool(int(fields[6]) & 1)
                )
        return states

    def wait_up(self, server: str, address: str, timeout: float = 15.0) -> None:
        """Wait until ``server``'s slot points at ``address`` and its health check passes there."""
        deadline = time.monotonic() + timeout
        while (state := self.servers()[server]) != ServerState(address, up=True, maintenance=False):
            if time.monotonic() > deadline:
                raise TimeoutError(f"haproxy's {server} slot is not up at {address} after {timeout:.0f} s: {state}")
            time.sleep(0.1)

    def _runtime(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(5)
            connection.connect(str(self.socket_path))
            connection.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := connection.recv(4096):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def __enter__(self) -> TrafficProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

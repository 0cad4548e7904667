"""``corral dev``: a whole single-host stack in the foreground (like ``nomad agent -dev``).

A local ``redis-server`` child (when no Redis URL is configured), one host worker for this
machine's Docker with beat embedded, and optionally Flower on loopback. Children share one
environment, so they agree on Redis; stopping the stack stops them all (worker first, by SIGTERM:
its soft shutdown requeues anything running).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from corral.errors import HostConfigurationNeeded
from corral.services import state_services
from corral.settings import load_settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class DevStack:
    def __init__(self, host_id: str, flower_port: int | None = None, log_dir: Path | None = None) -> None:
        self.host_id = host_id
        self.flower_port = flower_port
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="corral-dev-"))
        self.children: list[subprocess.Popen[bytes]] = []
        self.redis_url = load_settings().redis.url

    def start(self, timeout_s: float = 60.0) -> None:
        env = dict(os.environ)
        if not self.redis_url:
            self.redis_url = self._start_redis()
        env["CORRAL_REDIS__URL"] = self.redis_url
        env["CORRAL_HOST__ID"] = self.host_id
        os.environ["CORRAL_REDIS__URL"] = self.redis_url
        os.environ["CORRAL_HOST__ID"] = self.host_id
        load_settings.cache_clear()
        self.children.append(
            self._spawn(
                "worker",
                [
                    sys.executable,
                    "-m",
                    "workers.main",
                    "worker",
                    "--host",
                    self.host_id,
                    "--beat",
                    "--concurrency",
                    "2",
                ],
                env,
            )
        )
        if self.flower_port:
            # Loopback only, so the dev stack may serve Flower's API without auth (never do this on a network).
            env["FLOWER_UNAUTHENTICATED_API"] = "true"
            self.children.append(
                self._spawn(
                    "flower",
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "workers.app",
                        "flower",
                        "--address=127.0.0.1",
                        f"--port={self.flower_port}",
                    ],
                    env,
                )
            )
        self._wait_for_heartbeat(timeout_s)

    def _start_redis(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise HostConfigurationNeeded("redis-server is not installed (apt-get install redis-server)")
        port = free_port()
        data = self.log_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        self.children.append(
            self._spawn(
                "redis",
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(data),
                    "--appendonly",
                    "yes",
                    "--save",
                    "",
                    "--maxmemory-policy",
                    "noeviction",
                ],
                dict(os.environ),
            )
        )
        if not _wait_port(port, 10):
            raise HostConfigurationNeeded(f"redis-server did not start (log: {self.log_dir / 'redis.log'})")
        return f"redis://127.0.0.1:{port}"

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("ab")
        return subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )

    def _wait_for_heartbeat(self, timeout_s: float) -> None:
        store = state_services().store
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if store.host(self.host_id):
                return
            if any(c.poll() is not None for c in self.children):
                break
            time.sleep(0.2)
        self.stop()
        raise HostConfigurationNeeded(f"the host worker did not come up (logs in {self.log_dir})")

    def healthy(self) -> bool:
        return all(child.poll() is None for child in self.children)

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in reversed(self.children):
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(5)
        self.children.clear()

"""``corral dev``: a whole stack in the foreground (like ``nomad agent -dev``); ``--hosts N`` makes it a
fleet of N host workers on this machine's Docker (distinct host ids, state dirs, signing identities).

A local ``redis-server`` child (when no Redis URL is configured), one host worker for this
machine's Docker with beat embedded, and optionally Flower on loopback. Stopping the stack stops
them all (worker first, by SIGTERM: its soft shutdown requeues anything running).

The local Redis is never open: on first start the stack creates its credentials under
``<host.state_dir>/dev`` (``corral.trust.credentials``: a Redis ACL user and password per role, signing
keys for the worker and for the ``dev`` client, directories 0700, files 0600) and reuses them after.
redis-server binds loopback with protected mode on and the default user off; each child gets its own
role (the worker signs as ``corral-host-<host>``, Flower has the read-mostly ``flower`` user and no
key) and this process acts as the ``dev`` client. ``client_env()`` is what another shell exports.
With a configured Redis URL, children inherit this process's settings unchanged.

Flower is never open either: HTTP basic auth with ``FLOWER_BASIC_AUTH`` from the environment, else
``operator`` and a password generated on first start into ``<host.state_dir>/dev/flower.auth`` (0600),
printed once by ``corral dev`` and reused after. Its tasks page shows each task's host queue (routing
key) and typed exception; task arguments are summaries (``corral.celeryconf.QuietAMQP``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from corral.contract.errors import HostConfigurationNeeded
from corral.settings import Settings, load_settings
from corral.state.services import state_services
from corral.trust.credentials import Fleet, add_identity, env_lines, init_fleet

DEV_CLIENT = "dev"
"""The client identity of ``corral dev`` (and of a shell that sources its client env file)."""


FLOWER_USER = "operator"
REDIS_NICE = -5
"""The local Redis's scheduling priority, the reads lane's (``workers.reads.READS_NICE``)."""
FLOWER_TASKS_COLUMNS = "name,state,routing_key,worker,exception,runtime,received,kwargs,uuid"
"""The tasks page: where each task ran (host queue, worker), its outcome and typed error, its host and caller."""


def flower_basic_auth(credentials_dir: Path) -> tuple[str, bool]:
    """Flower's ``user:password``: ``FLOWER_BASIC_AUTH`` when set, else the one kept in
    ``credentials_dir/flower.auth``, created (0600) on first use; True when it was just created."""
    configured = os.environ.get("FLOWER_BASIC_AUTH", "").strip()
    if configured:
        return configured, False
    path = credentials_dir / "flower.auth"
    if path.exists():
        return path.read_text().strip(), False
    credentials_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = f"{FLOWER_USER}:{secrets.token_urlsafe(18)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")
    return value, True


def component_identity(host_id: str) -> str:
    return f"corral-host-{host_id}"


def prioritize(pid: int, nice: int) -> None:
    """The control plane first: a host busy starting sandboxes answers reads in milliseconds only if
    Redis is not waiting for a CPU behind the engine. The nice value of ``pid`` and of its session's
    autogroup (Redis starts in a session of its own; across sessions only a group's nice counts, see
    ``workers.reads.raise_priority``). Lowering either takes root; without it Redis keeps ours."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, nice)
    with contextlib.suppress(OSError), open(f"/proc/{pid}/autogroup", "w") as group:
        group.write(str(nice))


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


@dataclass
class Child:
    """A supervised child process: restarted when it dies, unless it is ``essential``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    essential: bool = False
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0


class DevStack:
    def __init__(
        self,
        host_id: str,
        flower_port: int | None = None,
        log_dir: Path | None = None,
        concurrency: int = 2,
        hosts: int = 1,
    ) -> None:
        self.host_id = host_id
        self.host_ids = [host_id] if hosts <= 1 else [f"{host_id}-{i}" for i in range(1, hosts + 1)]
        """One host worker each (the first embeds beat); ``--hosts 3``: ``dev-1``, ``dev-2``, ``dev-3``."""
        self.flower_port = flower_port
        self.concurrency = concurrency
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="corral-dev-"))
        self.children: list[Child] = []
        settings = load_settings()
        self.redis_url = settings.redis.url
        self.fleet: Fleet | None = None
        self.credentials_dir = Path(settings.host.state_dir) / "dev"
        self.flower_auth: str | None = None
        self.flower_auth_created = False
        """Whether ``flower_auth`` was generated by this start (``corral dev`` prints it then, only)."""

    @property
    def worker_pid(self) -> int | None:
        worker = next((c for c in self.children if c.name == "worker"), None)
        return worker.proc.pid if worker and worker.proc else None

    def start(self, timeout_s: float = 60.0) -> None:
        if self.flower_port and importlib.util.find_spec("flower") is None:  # an extra: it serves one process
            raise HostConfigurationNeeded("Flower is not installed here: pip install 'corral[flower]'")
        if not self.redis_url:
            self.fleet = init_fleet(self.credentials_dir, [*map(component_identity, self.host_ids), DEV_CLIENT])
            self.redis_url = self._start_redis()
            os.environ.update(self.fleet.role_env("client", DEV_CLIENT))
            env_file = self.fleet.env_file("client")
            env_file.write_text(env_lines(self.client_env()))
            env_file.chmod(0o600)
        os.environ["CORRAL_REDIS__URL"] = self.redis_url
        os.environ["CORRAL_HOST__ID"] = self.host_ids[0]
        load_settings.cache_clear()
        for index, host in enumerate(self.host_ids):
            beat = ["--beat"] if index == 0 else []
            worker = [sys.executable, "-m", "workers.main", "worker", "--host", host, *beat]
            name = "worker" if index == 0 else f"worker-{host}"
            self._launch(Child(name, [*worker, "--concurrency", str(self.concurrency)], self.worker_env(host)))
        if self.flower_port:
            flower = [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.app",
                "flower",
                "--address=127.0.0.1",
                f"--port={self.flower_port}",
            ]
            flower += ["--enable_events=False"]  # workers send events already; its JSON wake-up would be refused
            flower += [f"--tasks_columns={FLOWER_TASKS_COLUMNS}"]
            self.flower_auth, self.flower_auth_created = flower_basic_auth(self.credentials_dir)
            flower_env = self._role_env("flower", None)
            flower_env.pop("FLOWER_UNAUTHENTICATED_API", None)
            # In the environment, not argv: /proc/PID/cmdline is readable by every local user.
            flower_env["FLOWER_BASIC_AUTH"] = self.flower_auth
            self._launch(Child("flower", flower, flower_env))
        self._wait_for_heartbeat(timeout_s)

    def client_env(self) -> dict[str, str]:
        """What a client in another shell exports to use this stack (paths only, no secret)."""
        env = {"CORRAL_REDIS__URL": str(self.redis_url)}
        if self.fleet is not None:
            env.update(self.fleet.role_env("client", DEV_CLIENT))
        return env

    def redis_settings(self, role: str) -> Settings:
        """Settings that reach this stack's Redis as ``role`` (benchmarks read its broker, events and
        state as ``admin``)."""
        assert self.fleet is not None and self.redis_url, "the stack is not started"
        return Settings(
            redis={"url": self.redis_url, "username": role, "password_file": str(self.fleet.password_file(role))}
        )

    def worker_env(self, host_id: str) -> dict[str, str]:
        """The environment of a worker for ``host_id`` on this stack (its own signing identity)."""
        env = self._role_env("worker", component_identity(host_id))
        env["CORRAL_HOST__ID"] = host_id
        if len(self.host_ids) > 1:
            # Hosts on one machine: each its own spools, detach acks and secret dirs, so one host's
            # reconciler never takes another's files for leftovers.
            host = load_settings().host
            env["CORRAL_HOST__STATE_DIR"] = str(Path(host.state_dir) / "hosts" / host_id)
            env["CORRAL_HOST__SECRETS_ROOT"] = f"{host.secrets_root.rstrip('/')}-{host_id}"
            if host_id != self.host_ids[0] and "metrics" in Settings.model_fields:
                env["CORRAL_METRICS__PORT"] = str(free_port())  # one metrics endpoint per worker
        return env

    def _role_env(self, role: str, identity: str | None) -> dict[str, str]:
        env = dict(os.environ)
        if self.fleet is None:
            return env
        if identity is not None:
            add_identity(self.fleet, identity)
        for key in [
            k for k in env if k.startswith(("CORRAL_SECURITY__", "CORRAL_REDIS__USERNAME", "CORRAL_REDIS__PASS"))
        ]:
            del env[key]
        return {**env, **self.fleet.role_env(role, identity)}

    def _start_redis(self) -> str:
        assert self.fleet is not None
        binary = shutil.which("redis-server")
        if binary is None:
            raise HostConfigurationNeeded("redis-server is not installed (apt-get install redis-server)")
        port = free_port()
        data = self.log_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
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
            "--proto-max-bulk-len",  # as config/redis.conf: no message a worker must decode is over 32 MiB
            "32mb",
            "--protected-mode",
            "yes",
            "--aclfile",  # the default user is off: nothing connects without a role's password
            str(self.fleet.acl_file),
        ]
        self._launch(Child("redis", argv, dict(os.environ), essential=True))
        assert self.children[-1].proc is not None
        prioritize(self.children[-1].proc.pid, REDIS_NICE)
        if not _wait_port(port, 10):
            raise HostConfigurationNeeded(f"redis-server did not start (log: {self.log_dir / 'redis.log'})")
        return f"redis://127.0.0.1:{port}"

    def _launch(self, child: Child) -> None:
        with (self.log_dir / f"{child.name}.log").open("ab") as log:
            child.proc = subprocess.Popen(
                child.argv,
                env=child.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        if child not in self.children:
            self.children.append(child)

    def _wait_for_heartbeat(self, timeout_s: float) -> None:
        store = state_services().store
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(store.host(host) for host in self.host_ids):
                return
            if not self.healthy():
                break
            time.sleep(0.2)
        self.stop()
        raise HostConfigurationNeeded(f"the host workers did not come up (logs in {self.log_dir})")

    def healthy(self) -> bool:
        return all(c.proc is not None and c.proc.poll() is None for c in self.children)

    def supervise(self) -> bool:
        """Restart dead children, like systemd's Restart=always (a Celery worker can exit after a
        broker loss); False once an essential child (Redis) is gone."""
        for child in self.children:
            if child.proc is not None and child.proc.poll() is not None:
                if child.essential:
                    return False
                child.restarts += 1
                self._launch(child)
        return True

    def stop(self) -> None:
        running = [c.proc for c in reversed(self.children) if c.proc is not None]
        for proc in running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in running:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.children.clear()

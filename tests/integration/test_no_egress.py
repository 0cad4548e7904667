""" "No egress" reaches nothing (issue 7, escape 5), performed on the real engine.

A small HTTP listener on the host serves a random token on the bridge addresses a container could
aim at: docker0's and the gateway of a ``--internal`` Docker network (the old "no egress" bridge).
The control proves the attack is real: a container on that internal network, and one on the default
bridge, fetch the token from their gateway. Then a sandbox in each mode that promises no egress
(disabled, adapter_defined_denied, an empty allowlist, an empty egress rule set) tries every one of
those addresses and every other address of the host, and fails; inside it has only ``lo`` and no
route. The listener binds those bridge addresses only (not 0.0.0.0): they are host-internal, and
every container route to the host's other addresses ends on the same host stack anyway.
"""

from __future__ import annotations

import http.server
import ipaddress
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.contract.models import NetworkIsolationPolicy, NetworkKind
from corral.contract.refs import slug
from corral.runtimes.docker.resources import container_name
from corral.runtimes.docker.runtime import DockerRuntime
from corral.settings import HostSettings
from tests.harness import docker_runtime
from tests.integration.test_docker_runtime import count_labeled, make_env, output, sh, wait_exit

pytestmark = pytest.mark.docker

TOKEN = f"reached-{uuid.uuid4().hex}"
NO_EGRESS = [
    NetworkIsolationPolicy(kind=NetworkKind.disabled),
    NetworkIsolationPolicy(kind=NetworkKind.adapter_defined_denied),
    NetworkIsolationPolicy(kind=NetworkKind.allowlist),
    NetworkIsolationPolicy(kind=NetworkKind.egress_scoped),
]


class _Token(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = TOKEN.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def host_addresses() -> list[str]:
    """Every IPv4 address of this host but loopback (``ip -4 -o addr``)."""
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    found = [line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3]
    return [a for a in found if not ipaddress.ip_address(a).is_loopback]


def gateway_of(network: dict[str, Any]) -> str:
    """The host's own address on a Docker network's bridge (its gateway)."""
    subnet = ipaddress.ip_network(network["IPAM"]["Config"][0]["Subnet"])
    mine = [a for a in host_addresses() if ipaddress.ip_address(a) in subnet]
    assert mine, f"no host address on {network['Name']}"
    return mine[0]


@pytest.fixture(scope="module")
def internal_network(docker_client: Any) -> Iterator[Any]:
    """What "no egress" used to be: a per-session ``--internal`` bridge."""
    network = docker_client.networks.create(
        f"corral-egress-probe-{uuid.uuid4().hex[:8]}", driver="bridge", internal=True, labels={"corral.test": "egress"}
    )
    try:
        network.reload()
        yield network
    finally:
        network.remove()


@pytest.fixture(scope="module")
def listener(docker_client: Any, internal_network: Any) -> Iterator[tuple[list[str], int]]:
    """(gateway addresses served, port): the token on docker0 and on the internal network's gateway."""
    bridge = gateway_of(docker_client.networks.get("bridge").attrs)
    internal = gateway_of(internal_network.attrs)
    port = 0
    servers: list[http.server.ThreadingHTTPServer] = []
    try:
        for address in (bridge, internal):
            server = http.server.ThreadingHTTPServer((address, port), _Token)
            port = server.server_address[1]
            servers.append(server)
            threading.Thread(target=server.serve_forever, daemon=True).start()
        for address in (bridge, internal):  # the host itself reaches it: the listener is up
            with socket.create_connection((address, port), timeout=5):
                pass
        yield [bridge, internal], port
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def fetch(host: str, port: int) -> str:
    """A shell command that prints the listener's answer (busybox nc: its wget crashes when static)."""
    return f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port}"


def _fetch_from(docker_client: Any, image: str, network: str, host: str, port: int) -> str:
    """What a plain container on ``network`` gets from ``host:port`` (the control, outside corral)."""
    script = f"{fetch(host, port)} || echo FAILED"
    container = docker_client.containers.run(
        image, ["sh", "-c", script], network=network, detach=True, labels={"corral.test": "egress"}
    )
    try:
        container.wait(timeout=30)
        return bytes(container.logs(stdout=True, stderr=False)).decode()
    finally:
        container.remove(force=True)


def test_the_escape_is_real_on_an_internal_bridge(
    docker_client: Any, busybox_image: str, internal_network: Any, listener: tuple[list[str], int]
) -> None:
    """Control: without this, the sandbox tests below could pass against a dead listener."""
    (bridge, internal), port = listener
    assert TOKEN in _fetch_from(docker_client, busybox_image, internal_network.name, internal, port)
    assert TOKEN in _fetch_from(docker_client, busybox_image, "bridge", bridge, port)


@pytest.fixture
def runtime(docker_client: Any, tmp_path: Path) -> Iterator[DockerRuntime]:
    host_id = f"n-{uuid.uuid4().hex[:12]}"
    host = HostSettings(id=host_id, state_dir=str(tmp_path / "state"), secrets_root=f"/dev/shm/corral-test-{host_id}")
    with docker_runtime(docker_client, host, host_id) as rt:
        yield rt


@pytest.mark.parametrize("network", NO_EGRESS, ids=lambda n: n.kind.value)
def test_no_egress_mode_reaches_nothing(
    runtime: DockerRuntime,
    busybox_image: str,
    docker_client: Any,
    listener: tuple[list[str], int],
    network: NetworkIsolationPolicy,
) -> None:
    gateways, port = listener
    targets = sorted({*gateways, *host_addresses(), "127.0.0.1"})
    probes = "; ".join(
        f"if {fetch(t, port)} 2>/dev/null; then echo; echo reached={t}; else echo blocked={t}; fi" for t in targets
    )
    script = (
        "echo links=$(ls /sys/class/net | tr '\\n' ' '); "
        "echo routes=$(tail -n +2 /proc/net/route | wc -l); "
        "echo ipv6_routes=$(grep -v ' lo$' /proc/net/ipv6_route 2>/dev/null | wc -l); "
        "ip -o addr | sed 's/^/addr=/'; " + probes
    )
    env = make_env(busybox_image, network=network)
    ref = sh(runtime, env, script)
    assert wait_exit(runtime, ref).exit_code == 0
    out = output(runtime, ref).decode()
    got = [line for line in out.splitlines() if "=" in line]
    assert "links=lo" in got, out
    assert "routes=0" in got and "ipv6_routes=0" in got, out
    assert all(line.split()[1] == "lo" for line in got if line.startswith("addr=")), out
    assert TOKEN not in out and "reached=" not in out, out
    assert sorted(line.split("=", 1)[1] for line in got if line.startswith("blocked=")) == targets
    inspected = docker_client.api.inspect_container(container_name(slug(env.environment_id)))
    assert inspected["HostConfig"]["NetworkMode"] == "none"
    assert count_labeled(docker_client, runtime.host_id, env.environment_id)["networks"] == 0

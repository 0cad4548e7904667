"""Names, labels and removal of everything the Docker runtime creates on a host.

The adapter is stateless: every resource of a session is found again from deterministic names
(derived from ``refs.slug(environment_id)``) AND from labels, so any worker process of the host,
or a restarted one, can continue or clean up what another started. Directories carry a
``.corral-labels.json`` with the same labels as containers and networks, so a reconciler can list
all four kinds of resources the same way (``list_labeled``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.contract.refs import slug
from corral.io.spool import LABELS_FILE, SpoolLayout, read_json, write_json
from corral.runtimes.docker import mounts as docker_mounts
from corral.settings import HostSettings

LABEL_HOST = "corral.host"
LABEL_SESSION = "corral.session"
LABEL_SLUG = "corral.slug"
LABEL_OWNER = "corral.owner"
LABEL_CONFIG = "corral.config"
SHIM_MODULE = "corral.io.shim"
TEMPLATE_MODULE = "corral.io.template"


def container_name(s: str) -> str:
    return f"corral-{s}"


def network_name(s: str) -> str:
    return f"corral-{s}"


def labels_for(host_id: str, environment_id: str, owner: str | None) -> dict[str, str]:
    return {
        LABEL_HOST: host_id,
        LABEL_SESSION: environment_id,
        LABEL_SLUG: slug(environment_id),
        LABEL_OWNER: owner or "",
    }


@dataclass(frozen=True)
class SessionPaths:
    """Host paths of one session: its spool and its secret directory (on tmpfs)."""

    spool: SpoolLayout
    secret_dir: Path


def session_paths(host: HostSettings, s: str) -> SessionPaths:
    return SessionPaths(
        spool=SpoolLayout(Path(host.state_dir) / "spool" / s),
        secret_dir=Path(host.secrets_root) / s,
    )


def ticket_path(host: HostSettings, ticket_ref: str) -> Path:
    """Ack file of a detach ticket; named by the ticket's slug (a ref may hold any character)."""
    return Path(host.state_dir) / "tickets" / f"{slug(ticket_ref)}.json"


def ensure_labeled_dir(path: Path, labels: dict[str, str]) -> None:
    """Create a private directory (0700) and its labels file; repeating it changes nothing."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    if read_json(path / LABELS_FILE) != labels:
        write_json(path / LABELS_FILE, labels)


def owns(attrs_labels: dict[str, str] | None, host_id: str, environment_id: str) -> bool:
    labels = attrs_labels or {}
    return labels.get(LABEL_HOST) == host_id and labels.get(LABEL_SESSION) == environment_id


def _session_filter(host_id: str, environment_id: str) -> dict[str, Any]:
    return {"label": [f"{LABEL_HOST}={host_id}", f"{LABEL_SESSION}={environment_id}"]}


def find_containers(client: Any, host_id: str, environment_id: str) -> dict[str, str]:
    """Containers of a session, id -> name: by its deterministic name and by its labels. The
    engine's own API (one inspect, one listing): docker-py's ``containers.list`` inspects each."""
    import docker.errors

    found: dict[str, str] = {}
    name = container_name(slug(environment_id))
    try:
        by_name = client.api.inspect_container(name)
        if owns((by_name.get("Config") or {}).get("Labels"), host_id, environment_id):
            found[by_name["Id"]] = name
    except docker.errors.NotFound:
        pass
    for item in client.api.containers(all=True, filters=_session_filter(host_id, environment_id)):
        found.setdefault(item["Id"], container_name_of(item))
    return found


def find_networks(client: Any, host_id: str, environment_id: str) -> list[Any]:
    """Networks of a session; Docker's ``name`` filter is a substring match, so names are compared."""
    found: dict[str, Any] = {}
    name = network_name(slug(environment_id))
    for item in client.networks.list(names=[name]):
        if item.name == name and owns(item.attrs.get("Labels"), host_id, environment_id):
            found[item.id] = item
    for item in client.networks.list(filters=_session_filter(host_id, environment_id)):
        found.setdefault(item.id, item)
    return list(found.values())


def shim_pid(layout: SpoolLayout) -> int | None:
    """The pid of this spool's shim when it is alive AND really our shim: a recycled pid that now
    belongs to another program is never signalled."""
    try:
        pid = int(layout.shim_pid.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    if SHIM_MODULE.encode() in cmdline and str(layout.root).encode() in cmdline:
        return pid
    return None


def kill_shim(layout: SpoolLayout) -> None:
    pid = shim_pid(layout)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _remove_dir(path: Path, what: str, failures: list[str]) -> None:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        failures.append(f"{what} {path.name} ({type(exc).__name__})")


def remove_session(client: Any, host: HostSettings, host_id: str, environment_id: str) -> list[str]:
    """Remove everything of a session: shim, containers, networks, pinned mounts, secret dir, spool.
    Never raises for a failed removal; returns what failed (what is already gone is success)."""
    import docker.errors

    s = slug(environment_id)
    paths = session_paths(host, s)
    failures: list[str] = []
    with contextlib.suppress(OSError):  # FIRST: no supervisor starts for a shim killed below
        paths.spool.removing.touch(exist_ok=True)
    kill_shim(paths.spool)
    try:
        if client is None:
            raise ConnectionError("docker engine unreachable")
        containers = find_containers(client, host_id, environment_id)
        networks = find_networks(client, host_id, environment_id)
    except Exception as exc:  # the engine is down or refusing: report, do not raise
        failures.append(f"docker listing ({type(exc).__name__})")
        containers, networks = {}, []
    for container_id, name in containers.items():
        try:
            client.api.remove_container(container_id, force=True, v=True)  # v: an image VOLUME's anonymous volumes
        except docker.errors.NotFound:
            pass
        except Exception as exc:
            failures.append(f"container {name} ({type(exc).__name__})")
    for network in networks:
        try:
            network.remove()
        except docker.errors.NotFound:
            pass
        except Exception as exc:
            failures.append(f"network {network.name} ({type(exc).__name__})")
    failures += docker_mounts.unpin_session(host, s)  # after the containers: nothing uses the pins now
    _remove_dir(paths.secret_dir, "secret dir", failures)
    _remove_dir(paths.spool.root, "spool dir", failures)
    if not failures:  # everything is gone: a detach ack for it would only promise a reclaim of nothing
        _remove_acks(host, environment_id)
    return failures


def _remove_acks(host: HostSettings, environment_id: str) -> None:
    ticket_dir = Path(host.state_dir) / "tickets"
    for path in ticket_dir.glob("*.json") if ticket_dir.is_dir() else []:
        ack = read_json(path)
        if isinstance(ack, dict) and ack.get("environment_id") == environment_id:
            path.unlink(missing_ok=True)


def _labeled_dirs(parent: Path, host_id: str) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    try:
        children = sorted(parent.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return out
    for child in children:
        labels = read_json(child / LABELS_FILE)
        if isinstance(labels, dict) and labels.get(LABEL_HOST) == host_id:
            out.append({"path": str(child), **{str(k): str(v) for k, v in labels.items()}})
    return out


def container_name_of(listed: dict[str, Any]) -> str:
    """A container's name from the engine's listing (``/name`` in ``Names``)."""
    names = listed.get("Names") or [str(listed.get("Id", ""))]
    return str(names[0]).lstrip("/")


def list_labeled(client: Any, host_id: str, host: HostSettings) -> dict[str, list[dict[str, str]]]:
    """Everything labeled for ``host_id``: containers, networks, secret dirs, spool dirs, pinned
    mount dirs (``docker_mounts``), tickets.
    The reconciler compares this with the session records to find what nobody owns."""
    flt = {"label": [f"{LABEL_HOST}={host_id}"]}
    # The engine's own listing: docker-py's ``containers.list`` inspects each container it lists, and
    # one removed in between (a cleanup at the same moment) failed the whole listing with a 404.
    containers = [
        {
            "name": container_name_of(c),
            "id": str(c["Id"]),
            "status": str(c.get("State") or ""),
            **(c.get("Labels") or {}),
        }
        for c in client.api.containers(all=True, filters=flt)
    ]
    networks = [
        {"name": n.name, "id": n.id, **dict(n.attrs.get("Labels") or {})} for n in client.networks.list(filters=flt)
    ]
    tickets: list[dict[str, str]] = []
    ticket_dir = Path(host.state_dir) / "tickets"
    for path in sorted(ticket_dir.glob("*.json")) if ticket_dir.is_dir() else []:
        ack = read_json(path)
        if isinstance(ack, dict) and ack.get("host_id") == host_id:
            tickets.append({"path": str(path), **{str(k): str(v) for k, v in ack.items()}})
    return {
        "containers": containers,
        "networks": networks,
        "secret_dirs": _labeled_dirs(Path(host.secrets_root), host_id),
        "spool_dirs": _labeled_dirs(Path(host.state_dir) / "spool", host_id),
        "mount_dirs": _labeled_dirs(Path(host.state_dir) / "mounts", host_id),
        "tickets": tickets,
    }

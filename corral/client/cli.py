"""The ``corral`` command line. Every command takes ``--json`` for schedulers.

Exit codes: ``corral run`` exits with the sandboxed process's exit code; any corral error (bad
input, unknown host, policy denial, ...) prints one line and exits 125, like ``docker run``.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from corral.client.render import Progress, age, console, emit_json, ending, errors, print_error, table
from corral.client.units import parse_duration_ms, parse_env, parse_memory_mb
from corral.contract.errors import AgentError, InvalidRequest, PolicyDenial
from corral.contract.lifecycle import shown_state
from corral.contract.models import dump
from corral.contract.vocabulary import ProcessIoStream, ProcessSignal
from corral.fleet.job import JobSpec
from corral.fleet.placement import health_of

CORRAL_ERROR_EXIT = 125
F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _client() -> Any:
    from corral.client.client import Client

    return Client()


def handles_errors(func: F) -> F:
    """Turn an AgentError into one readable line (or a JSON error) and exit 125."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AgentError as exc:
            print_error(exc, kwargs.get("as_json", False))
            sys.exit(CORRAL_ERROR_EXIT)
        except RuntimeError as exc:  # configuration problems (no Redis URL, ...)
            line = " ".join(str(exc).split())  # one line, however Celery wrapped it
            print_error(
                AgentError(line, kind="host_configuration_needed", retry="host_configuration_needed"),
                kwargs.get("as_json", False),
            )
            sys.exit(CORRAL_ERROR_EXIT)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """corral: run batch jobs in isolated sandboxes on a fleet of hosts, through Celery."""


@main.command(context_settings={"ignore_unknown_options": False})
@click.argument("image")
@click.argument("argv", nargs=-1)
@click.option("--host", help="Run on this host (default: admission picks one; see --placement).")
@click.option(
    "--placement",
    type=click.Choice(["spread", "binpack"]),
    default="spread",
    show_default=True,
    help="spread: the least allocated host; binpack: the most allocated one that fits.",
)
@click.option("--cpus", type=float, default=1.0, show_default=True)
@click.option("--memory", default="512m", show_default=True, help="Memory limit, e.g. 256m, 2g.")
@click.option("--pids", type=int, default=64, show_default=True, help="Maximum number of processes.")
@click.option("--timeout", default="10m", show_default=True, help="Kill the process after this long.")
@click.option("--env", "env", multiple=True, help="NAME=VALUE (repeatable).")
@click.option("--mount", "mounts", multiple=True, help="ALIAS:DEST[:rw], ALIAS defined by the host (repeatable).")
@click.option("--network", default="disabled", show_default=True, help="Network mode (disabled = none).")
@click.option("--secret", "secrets", multiple=True, help="Secret NAME, mounted at /run/secrets/NAME.")
@click.option("--secret-env", "secret_envs", multiple=True, help="VAR=NAME: secret NAME in env VAR (weaker).")
@click.option("--user", help="Run as USER[:GROUP] inside the sandbox (default 65534:65534, nobody).")
@click.option("--workdir", default="/", show_default=True)
@click.option("--interactive", "-i", is_flag=True, help="Forward this command's stdin to the process.")
@click.option("--detach", is_flag=True, help="Start, then hand the sandbox over under a reclaim ticket.")
@click.option("--ttl", default="1h", show_default=True, help="Detach ticket lifetime.")
@json_option
@handles_errors
def run(
    image: str,
    argv: tuple[str, ...],
    host: str | None,
    placement: str,
    cpus: float,
    memory: str,
    pids: int,
    timeout: str,
    env: tuple[str, ...],
    mounts: tuple[str, ...],
    network: str,
    secrets: tuple[str, ...],
    secret_envs: tuple[str, ...],
    user: str | None,
    workdir: str,
    interactive: bool,
    detach: bool,
    ttl: str,
    as_json: bool,
) -> None:
    """Run ARGV in a sandbox from IMAGE:  corral run IMAGE -- CMD ARGS..."""
    if network not in (
        "disabled",
        "allowlist",
        "egress_scoped",
        "socket_relay",
        "exposed_ports",
        "adapter_defined_denied",
    ):
        raise InvalidRequest(f"unknown network mode {network!r}")
    job = JobSpec(
        image=image,
        argv=list(argv),
        cpus=cpus,
        memory_mb=parse_memory_mb(memory),
        process_count=pids,
        timeout_ms=parse_duration_ms(timeout),
        env=parse_env(env),
        mounts=list(mounts),
        network=network,
        secrets=list(secrets),
        env_secrets=parse_env(secret_envs),
        user=user,
        workdir=workdir,
        allow_detach=detach,
        stdin=interactive,
    )
    job.environment(), job.process()  # validate before anything is sent
    client = _client()
    if detach:
        handle = client.submit(job, host, placement, _say_queued)
        try:
            _wait_started(client, handle, as_json)
            ticket = client.detach(handle, parse_duration_ms(ttl))
        except BaseException:
            client.cleanup_quietly(handle)
            raise
        if as_json:
            emit_json({"environment_id": handle.environment_id, "host": handle.host, **dump(ticket)})
        else:
            console.print(f"{handle.environment_id} detached on {handle.host}; ticket {ticket.ticket_ref}")
        return
    sys.exit(_run_attached(client, job, host, as_json, placement))


def _say_queued(reason: str) -> None:
    """A job that fits nowhere yet waits; say why on stderr (stdout is the job's)."""
    print(f"corral: queued: {reason}", file=sys.stderr, flush=True)


def _wait_started(client: Any, handle: Any, as_json: bool) -> None:
    """Wait for the host to prepare and start the process; on a terminal, say where (stderr)."""
    progress = Progress(enabled=not as_json)
    try:
        progress.update(f"preparing on {handle.host}")
        client.wait(handle)
    finally:
        progress.done()


def _say_ending(stats: Any, job: JobSpec) -> None:
    """A killed process is said so on stderr, not only by its exit code (137 says nothing)."""
    reason = stats.reason.value if stats.reason is not None else None
    line = ending(reason, bool(stats.oom_killed), job.memory_mb, job.timeout_ms)
    if line is not None:
        errors.print(line, markup=False, soft_wrap=True)


def write_output(stream: ProcessIoStream, data: bytes) -> None:
    target = sys.stdout.buffer if stream is ProcessIoStream.stdout else sys.stderr.buffer
    target.write(data)
    target.flush()


def _stdin_room(denial: PolicyDenial) -> int:
    """Bytes the host would still take under its stdin cap, read from a ``limits.max_stdin_bytes`` denial."""
    context = denial.context
    if context.get("rule") != "limits.max_stdin_bytes":
        return 0
    try:
        return max(0, int(context["limit"]) - int(context["written"]))
    except (KeyError, ValueError):
        return 0


def _forward_stdin(client: Any, handle: Any, chunk: int = 1 << 20) -> None:
    """Copy our stdin to the sandbox in bounded writes, then close its stdin."""
    source = sys.stdin.buffer
    read = getattr(source, "read1", source.read)  # read1: forward what is there, don't wait for a full chunk
    try:
        while data := read(chunk):
            try:
                client.write_stdin(handle, data)
            except PolicyDenial as exc:
                # The host refuses a whole write that would pass its stdin cap: send what still fits
                # (the cap is exact, whatever the chunking), then report the refusal.
                room = _stdin_room(exc)
                if room:
                    client.write_stdin(handle, data[:room])
                raise
    except AgentError as exc:  # the process ended, or the host's stdin cap was reached
        print_error(exc, False)
    with contextlib.suppress(AgentError):  # close it either way, so a reader sees EOF instead of hanging
        client.write_stdin(handle, b"", close=True)


def _run_attached(client: Any, job: JobSpec, host: str | None, as_json: bool, placement: str = "spread") -> int:
    """Stream output live; Ctrl-C terminates (then kills after a grace) and still cleans up."""
    handle = client.submit(job, host, placement, _say_queued)
    captured: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
    interrupted: list[int] = []

    def on_output(stream: ProcessIoStream, data: bytes) -> None:
        if as_json:
            captured[stream.value] += data
        else:
            out = sys.stdout.buffer if stream is ProcessIoStream.stdout else sys.stderr.buffer
            out.write(data)
            out.flush()

    def on_interrupt(signum: int, frame: Any) -> None:
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(signum)
        client.signal(handle, ProcessSignal.terminate, grace_ms=job_grace_ms)

    job_grace_ms = 5000
    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        _wait_started(client, handle, as_json)
        if job.stdin:
            threading.Thread(target=_forward_stdin, args=(client, handle), daemon=True).start()
        stats = client.follow(handle, on_output)
    finally:
        signal.signal(signal.SIGINT, previous)
        cleanup = client.cleanup_quietly(handle)
    if not as_json:  # --json carries reason and oom_killed
        _say_ending(stats, job)
    code = stats.exit_code if stats.exit_code is not None else CORRAL_ERROR_EXIT
    if as_json:
        emit_json(
            {
                "environment_id": handle.environment_id,
                "host": handle.host,
                "exit_code": stats.exit_code,
                "reason": stats.reason,
                "oom_killed": stats.oom_killed,
                "stdout_b64": base64.b64encode(captured["stdout"]).decode(),
                "stderr_b64": base64.b64encode(captured["stderr"]).decode(),
                "cleanup": cleanup.status if cleanup else None,
            }
        )
    return int(code)


@main.command()
@click.option("--all", "show_all", is_flag=True, help="Include cleaned-up sandboxes.")
@json_option
@handles_errors
def ps(show_all: bool, as_json: bool) -> None:
    """List sandboxes (your tenant's; every tenant's for an operator)."""
    sessions = [s for s in _client().view_sessions() if show_all or s.get("state") not in ("cleaned",)]
    rows = []
    for s in sessions:
        env = _json_field(s, "environment")
        image = ((env.get("spec") or {}).get("image") or {}).get("image_ref", "")
        rows.append(
            {
                "id": s["environment_id"],
                "host": s.get("host"),
                "state": shown_state(s),  # a detached sandbox whose process ended: exited
                "session_state": s.get("state"),
                "image": image,
                "created_ms": s.get("created_ms"),
                "exit_code": s.get("exit_code"),
                "reason": s.get("reason"),
                "exited_ms": s.get("exited_ms"),
                "ticket": s.get("ticket_ref"),
            }
        )
    if as_json:
        emit_json(rows)
        return
    table(
        "sandboxes",
        ["ID", "HOST", "STATE", "IMAGE", "CREATED", "EXIT", "REASON", "TICKET"],
        [
            (r["id"], r["host"], r["state"], r["image"], age(r["created_ms"]), r["exit_code"], r["reason"], r["ticket"])
            for r in rows
        ],
    )


def _json_field(record: dict[str, str], name: str) -> dict[str, Any]:
    try:
        value = json.loads(record.get(name) or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _lost_output(summary: str) -> str:
    """The part of a frame's summary saying output was not captured (``process.lost_summary``)."""
    return "; ".join(part for part in summary.split("; ") if "not captured" in part)


@main.command()
@click.argument("sandbox")
@click.option("--follow", "-f", is_flag=True, help="Keep reading until the process ends.")
@click.option("--stream", type=click.Choice(["stdout", "stderr", "both"]), default="both", show_default=True)
@json_option
@handles_errors
def logs(sandbox: str, follow: bool, stream: str, as_json: bool) -> None:
    """Print a sandbox's output (byte-exact)."""
    client = _client()
    handle = client.handle(sandbox)
    if follow and stream == "both" and not as_json:
        stats = client.follow(
            handle,
            lambda s, data: (sys.stdout.buffer if s is ProcessIoStream.stdout else sys.stderr.buffer).write(data),
        )
        lost = _lost_output(stats.redacted_summary)
        if lost:  # the host's I/O shim died while the process ran: say what is missing
            click.echo(f"corral: {lost}", err=True)
        return
    streams = [ProcessIoStream.stdout, ProcessIoStream.stderr] if stream == "both" else [ProcessIoStream(stream)]
    out: dict[str, Any] = {}
    for s in streams:
        data = bytearray()
        cursor = 0
        while True:
            frame = client.read_frame(handle.host, handle.process_ref, s, cursor)
            cursor = frame.cursor
            chunk = base64.b64decode(frame.content_b64) if frame.content_b64 else b""
            if as_json:
                data += chunk
            else:
                target = sys.stdout.buffer if s is ProcessIoStream.stdout else sys.stderr.buffer
                target.write(chunk)
                target.flush()
            if frame.eof or (frame.byte_count == 0 and not follow):
                break
            if frame.byte_count == 0:
                time.sleep(0.1)
        out[s.value] = {"bytes": cursor, "content_b64": base64.b64encode(bytes(data)).decode()}
        lost = _lost_output(frame.redacted_summary) if frame.eof else ""
        if lost:  # the host's I/O shim died while the process ran: say what is missing
            out[s.value]["lost"] = lost
            if not as_json:
                click.echo(f"corral: {lost}", err=True)
    if as_json:
        emit_json(out)


@main.command()
@click.argument("sandbox")
@json_option
@handles_errors
def stats(sandbox: str, as_json: bool) -> None:
    """Resource usage and exit status of a sandbox."""
    client = _client()
    snapshot = client.stats(client.handle(sandbox))
    if as_json:
        emit_json(dump(snapshot))
        return
    table(
        f"stats {sandbox}",
        ["STATE", "CPU ms", "MEMORY", "PROCS", "EXIT", "REASON", "OOM"],
        [
            (
                snapshot.state,
                snapshot.cpu_millis,
                snapshot.memory_bytes,
                snapshot.process_count,
                snapshot.exit_code,
                snapshot.reason,
                snapshot.oom_killed,
            )
        ],
    )


@main.command()
@click.argument("sandbox")
@click.option("--signal", "signal_name", default="terminate", show_default=True, help="interrupt, terminate or kill.")
@click.option("--grace", default="5s", show_default=True, help="After terminate, kill after this long.")
@json_option
@handles_errors
def kill(sandbox: str, signal_name: str, grace: str, as_json: bool) -> None:
    """Signal a sandbox's process."""
    if signal_name not in ProcessSignal.__members__:
        raise InvalidRequest(f"unknown signal {signal_name[:40]!r} (expected interrupt, terminate or kill)")
    client = _client()
    result = client.signal(client.handle(sandbox), ProcessSignal(signal_name), parse_duration_ms(grace))
    if as_json:
        emit_json(dump(result))
    else:
        console.print(f"{signal_name} {'delivered' if result.delivered else 'not delivered (not running)'}")


@main.command()
@click.argument("sandbox")
@json_option
@handles_errors
def rm(sandbox: str, as_json: bool) -> None:
    """Remove everything a sandbox owns (stops it first)."""
    client = _client()
    result = client.cleanup(client.handle(sandbox))
    if as_json:
        emit_json(dump(result))
    else:
        console.print(f"{sandbox}: cleanup {result.status.value} {result.redacted_summary}")
    if result.status.value != "completed":
        sys.exit(1)


@main.command()
@click.argument("sandbox")
@click.option("--ttl", required=True, help="Ticket lifetime, e.g. 30m.")
@json_option
@handles_errors
def detach(sandbox: str, ttl: str, as_json: bool) -> None:
    """Hand a sandbox over under a reclaim ticket (its policy must allow detach)."""
    client = _client()
    result = client.detach(client.handle(sandbox), parse_duration_ms(ttl))
    if as_json:
        emit_json(dump(result))
    else:
        console.print(
            f"{sandbox} detached; ticket {result.ticket_ref}, reclaimed at {result.deadline_ms} ms (unix) at the latest"
        )


@main.command()
@click.argument("ticket")
@json_option
@handles_errors
def reclaim(ticket: str, as_json: bool) -> None:
    """Reclaim a detached sandbox now."""
    result = _client().reclaim(ticket)
    if as_json:
        emit_json(dump(result))
    else:
        console.print(f"{ticket}: reclaim {result.status.value}")
    if result.status.value != "completed":
        sys.exit(1)


@main.command()
@json_option
@handles_errors
def tickets(as_json: bool) -> None:
    """List open detach tickets (your tenant's; every tenant's for an operator)."""
    rows = _client().view_tickets()
    if as_json:
        emit_json(rows)
        return
    table(
        "tickets",
        ["TICKET", "SANDBOX", "HOST", "STATE", "DEADLINE", "ATTEMPTS"],
        [
            (
                t["ticket_ref"],
                t.get("environment_id"),
                t.get("host"),
                t.get("state"),
                t.get("deadline_ms"),
                t.get("attempts", "0"),
            )
            for t in rows
        ],
    )


@main.command()
@click.argument("sandbox")
@json_option
@handles_errors
def journal(sandbox: str, as_json: bool) -> None:
    """The intent/result journal of a sandbox."""
    client = _client()
    records = client.view_journal(client.handle(sandbox).environment_id)
    if as_json:  # upstream's records (``record``, ``network_record``) as JSON objects, not strings
        emit_json(
            [
                {
                    "id": r.record_id,
                    **{k: json.loads(v) if k in ("record", "network_record") else v for k, v in r.fields.items()},
                }
                for r in records
            ]
        )
        return
    table(
        f"journal {sandbox}",
        ["ID", "KIND", "OPERATION", "STATUS", "SUMMARY"],
        [
            (
                r.record_id,
                r.kind,
                r.fields.get("op"),
                r.fields.get("status", r.fields.get("action", "")),
                r.fields.get("summary", ""),
            )
            for r in records
        ],
    )


@main.command()
@json_option
@handles_errors
def hosts(as_json: bool) -> None:
    """Hosts of the fleet: up/down by heartbeat, health, runtime, and capacity allocated/offered."""
    client = _client()
    statuses = client.hosts()
    usage = {h.host_id: client.usage(h.host_id) for h in statuses}
    if as_json:
        emit_json(
            [
                {
                    "host": h.host_id,
                    "up": h.up,
                    "healthy": h.healthy,
                    "record": h.record,
                    "capacity": cap.as_dict() if (cap := usage[h.host_id][0]) else None,
                    "allocated": usage[h.host_id][1].as_dict(),
                }
                for h in statuses
            ]
        )
        return

    def in_use(host_id: str) -> tuple[str, str, str]:
        cap, used = usage[host_id]
        if cap is None:
            return "", "", ""
        return (
            f"{used.slots}/{cap.slots}",
            f"{used.cpus_m / 1000:g}/{cap.cpus_m / 1000:g}",
            f"{used.mem_mb}/{cap.mem_mb} MB",
        )

    table(
        "hosts",
        ["HOST", "STATUS", "HEALTH", "RUNTIME", "SLOTS", "CPUS", "MEMORY", "HEARTBEAT"],
        [
            (
                h.host_id,
                "up" if h.up else "down",
                health_of(h.record) if h.up else "",
                (h.record or {}).get("report", {}).get("adapter_kind", ""),
                *in_use(h.host_id),
                age((h.record or {}).get("heartbeat_ms")),
            )
            for h in statuses
        ],
    )


@main.command()
@click.option("--host", "host_id", help="Host to reconcile (default: every live host).")
@click.option("--dry-run", is_flag=True, help="Only show what would be done.")
@json_option
@handles_errors
def reconcile(host_id: str | None, dry_run: bool, as_json: bool) -> None:
    """Find what a host holds that nobody owns (crash leftovers) and reclaim it."""
    client = _client()
    hosts = [host_id] if host_id else [h.host_id for h in client.hosts() if h.up]
    reports = [client.reconcile(h, dry_run=dry_run) for h in hosts]
    if as_json:
        emit_json([dump(r) for r in reports])
        return
    for report in reports:
        table(
            f"reconcile {report.host_id}{' (dry run)' if dry_run else ''}",
            ["SANDBOX", "RESOURCES", "STATE", "ACTION", "REASON", "OUTCOME"],
            [
                (f.environment_id, ",".join(f.resources), f.state, f.action.value, f.reason, f.outcome)
                for f in report.findings
            ],
        )


@main.group()
def keys() -> None:
    """Fleet credentials: Redis ACL users per role and message-signing identities (README: Security)."""


@keys.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--host", "hosts", multiple=True, help="A host id: its worker signs as corral-host-<id> (repeatable).")
@click.option("--client", "clients", multiple=True, help="A client identity, e.g. a scheduler (repeatable).")
@json_option
@handles_errors
def keys_init(directory: Path, hosts: tuple[str, ...], clients: tuple[str, ...], as_json: bool) -> None:
    """Create (or complete) a credentials directory; nothing existing is replaced.

    Writes redis/users.acl (load it with redis-server's aclfile), a password file per role, a key pair
    per identity (beat always), the trust stores and env/<identity>.env for each process.
    """
    from corral.trust.credentials import env_lines, init_fleet

    names = [f"corral-host-{h}" for h in hosts] + ["corral-beat"] + list(clients)
    fleet = init_fleet(directory, names)
    roles = {f"corral-host-{h}": "worker" for h in hosts} | {"corral-beat": "beat"} | dict.fromkeys(clients, "client")
    written = {}
    for name, role in {**roles, "flower": "flower"}.items():
        env_file = fleet.root / "env" / f"{name}.env"
        env_file.write_text(env_lines(fleet.role_env(role, None if role == "flower" else name)))
        env_file.chmod(0o600)
        written[name] = str(env_file)
    if as_json:
        emit_json({"acl_file": str(fleet.acl_file), "env_files": written})
        return
    console.print(f"ACL file: {fleet.acl_file}  (redis.conf: aclfile {fleet.acl_file})", markup=False)
    for name, path in written.items():
        console.print(f"{name}: {path}", markup=False)
    console.print(
        "Add CORRAL_REDIS__URL to each env file; copy trust/ to every worker host and restart workers "
        "after adding an identity (trust stores are read at start).",
        markup=False,
    )


@keys.command("new")
@click.argument("name")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False, path_type=Path))
@handles_errors
def keys_new(name: str, directory: Path) -> None:
    """A key pair for NAME in DIRECTORY (made by `corral keys init`), trusted as a fleet component
    when NAME starts with corral-, else as a client (its caller identity on every host)."""
    from corral.trust.credentials import Fleet, add_identity

    fleet = Fleet(directory)
    trusted = add_identity(fleet, name)
    console.print(f"key {fleet.key(name)}  certificate {fleet.cert(name)}  trusted in {trusted.parent}", markup=False)


@main.command()
@click.option("--host", required=True, help="This host's id; the worker consumes corral.host.<id>.")
@click.option("--concurrency", type=int, default=4, show_default=True)
@click.option("--beat", is_flag=True, help="Embed the beat scheduler (single-host stacks only).")
@click.option("--slots", type=int, default=None, help="Sandboxes admission places here at once (default: policy max).")
@click.option(
    "--read-concurrency",
    type=click.IntRange(2, 64),
    default=8,
    show_default=True,
    help="Threads of the reads lane (stats, output frames); half of them may hold a read for output.",
)
def worker(host: str, concurrency: int, beat: bool, slots: int | None, read_concurrency: int) -> None:
    """Run a host worker (consumes corral.host.HOST and corral.fleet; its reads lane corral.host.HOST.reads)."""
    argv = [sys.executable, "-m", "workers.main", "worker", "--host", host, "--concurrency", str(concurrency)]
    argv += ["--slots", str(slots)] if slots is not None else []
    argv += ["--read-concurrency", str(read_concurrency)]
    os.execv(sys.executable, argv + (["--beat"] if beat else []))


@main.command()
def beat() -> None:
    """Run the beat scheduler (redbeat: one leader across the fleet)."""
    os.execv(sys.executable, [sys.executable, "-m", "workers.main", "beat"])


@main.command()
@click.option("--host", "host_id", default="dev", show_default=True)
@click.option("--demo", is_flag=True, help="Run one sandboxed job end to end (its launch, output, journal), stop.")
@click.option("--flower-port", type=int, default=None, help="Also serve Flower on 127.0.0.1:PORT.")
@click.option(
    "--hosts",
    "hosts",
    type=click.IntRange(1, 16),
    default=1,
    show_default=True,
    help="Host workers on this machine (HOST-1..HOST-N with N > 1): a fleet for placement tests.",
)
@click.argument("job", nargs=-1)
@handles_errors
def dev(host_id: str, demo: bool, flower_port: int | None, hosts: int, job: tuple[str, ...]) -> None:
    """A stack in the foreground: local Redis, this machine's Docker, host workers (the first with beat).

    With --demo, run JOB (IMAGE CMD...; default: a busybox greeting) and print its output and journal.
    """
    from corral.client.devstack import DevStack

    stack = DevStack(host_id, flower_port=flower_port, hosts=hosts)
    console.print(
        f"[bold]corral dev[/]: starting redis, worker {', '.join(stack.host_ids)} (+beat)"
        f"{f', flower on 127.0.0.1:{flower_port}' if flower_port else ''}; logs in {stack.log_dir}"
    )
    stack.start()
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(stack.client_env().items()))
    console.print(f"stack up (credentials in {stack.credentials_dir})", markup=False, highlight=False)
    if flower_port and stack.flower_auth:
        user, _, password = stack.flower_auth.partition(":")
        where = (
            f"user {user}, password {password} (shown once; kept in {stack.credentials_dir / 'flower.auth'})"
            if stack.flower_auth_created
            else "basic auth from FLOWER_BASIC_AUTH"
            if os.environ.get("FLOWER_BASIC_AUTH")
            else f"basic auth: credentials in {stack.credentials_dir / 'flower.auth'}"
        )
        console.print(f"flower: http://127.0.0.1:{flower_port}/ ({where})", markup=False, highlight=False)
    try:
        if demo:
            sys.exit(_demo(stack.host_ids[0] if hosts == 1 else None, job))
        console.print(
            f"in another shell:\n  export {exports}\n  corral run corral/busybox:latest -- echo hello\n"
            "Ctrl-C stops the stack.",
            markup=False,
            highlight=False,
        )
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):  # set explicitly: a background job ignores SIGINT
            signal.signal(signum, lambda *_: stop.set())
        while not stop.wait(1):
            if not stack.supervise():
                console.print("redis exited; stopping the stack")
                break
    finally:
        console.print("stopping the stack")
        stack.stop()


DEMO_JOB = (
    "corral/busybox:latest",
    "sh",
    "-c",
    'echo "hello from a corral sandbox: $(id)"; echo "root is read-only:"; touch /x 2>&1; '
    'echo "network interfaces: $(ls /sys/class/net)"; echo "this line goes to stderr" >&2',
)


def _demo(host_id: str | None, job: tuple[str, ...]) -> int:
    from corral.client.client import Client

    image, *argv = job or DEMO_JOB
    client = Client()
    spec = JobSpec(image=image, argv=argv, memory_mb=128, timeout_ms=60_000)
    console.print(f"$ corral run {image} -- {shlex.join(argv)}", markup=False, highlight=False, style="bold")
    outcome = client.run(spec, host=host_id, on_output=write_output)
    sys.stdout.flush()
    console.print(f"[bold]exit code {outcome.exit_code}[/] ({outcome.reason}) on host {outcome.host}")
    records = client.journal(outcome.environment_id)
    table(
        f"journal of {outcome.environment_id}",
        ["KIND", "OPERATION", "STATUS", "SUMMARY"],
        [(r.kind, r.fields.get("op"), r.fields.get("status", ""), r.fields.get("summary", "")) for r in records],
    )
    return int(outcome.exit_code or 0)


# -- batches ---------------------------------------------------------------------------------------

BATCH_STATES = ("queued", "running", "succeeded", "failed", "cancelled")


def parse_deadline_ms(text: str, now_ms: int) -> int:
    """``2h`` (from now) or an ISO-8601 time (``2026-12-01T06:00:00Z``); a time in the past is refused."""
    import datetime

    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return now_ms + parse_duration_ms(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    deadline = int(moment.timestamp() * 1000)
    if deadline <= now_ms:
        raise InvalidRequest(f"the deadline {text} is in the past", context={"deadline": text[:40]})
    return deadline


@main.group()
def batch() -> None:
    """Many jobs at once: arrays, job files, retries, deadlines (held and dispatched by the fleet).

    `corral batch wait` exits 0 when every job succeeded, 1 when some failed (or were cancelled),
    2 when some could not be placed at all; any corral error exits 125."""


@batch.command("submit", context_settings={"ignore_unknown_options": False})
@click.argument("image", required=False)
@click.argument("argv", nargs=-1)
@click.option("--array", "array", help="N (indices 0..N-1), A-B, or A-B%T (at most T running at once).")
@click.option("--file", "jobs_file", type=click.Path(dir_okay=False, path_type=Path), help="JSON lines, one job each.")
@click.option("--throttle", type=int, default=None, help="At most this many jobs running at once.")
@click.option("--retry", "retry", multiple=True, help="exit:CODE[,CODE] or reason:NAME (repeatable; first match wins).")
@click.option("--max-attempts", type=int, default=1, show_default=True, help="Attempts per index, the first included.")
@click.option("--deadline", help="For the whole batch: 2h (from now) or an ISO time; then the rest is cancelled.")
@click.option("--idempotency-key", help="A resubmission with the same key returns the same batch.")
@click.option("--placement", type=click.Choice(["spread", "binpack"]), default="spread", show_default=True)
@click.option("--cpus", type=float, default=1.0, show_default=True)
@click.option("--memory", default="512m", show_default=True)
@click.option("--timeout", default="10m", show_default=True, help="Per job.")
@click.option("--env", "env", multiple=True, help="NAME=VALUE (repeatable).")
@click.option("--network", default="disabled", show_default=True)
@click.option("--mount", "mounts", multiple=True)
@json_option
@handles_errors
def batch_submit(
    image: str | None,
    argv: tuple[str, ...],
    array: str | None,
    jobs_file: Path | None,
    throttle: int | None,
    retry: tuple[str, ...],
    max_attempts: int,
    deadline: str | None,
    idempotency_key: str | None,
    placement: str,
    cpus: float,
    memory: str,
    timeout: str,
    env: tuple[str, ...],
    network: str,
    mounts: tuple[str, ...],
    as_json: bool,
) -> None:
    """Submit IMAGE -- ARGV as an --array, or the jobs of --file:  corral batch submit --array 30 IMAGE -- CMD"""
    from corral.fleet.batch import parse_array, parse_jobs_file, parse_retry

    # Everything is judged here first: a bad line, range, rule or deadline submits nothing.
    jobs = None
    if jobs_file is not None:
        if image is not None or array is not None:
            raise InvalidRequest("--file holds whole jobs: give no IMAGE and no --array with it")
        try:
            jobs = parse_jobs_file(jobs_file.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"cannot read {jobs_file}: {exc.__class__.__name__}") from None
    elif image is None or not argv:
        raise InvalidRequest("give IMAGE -- CMD ARGS (with --array) or --file jobs.jsonl")
    if array is not None:
        parse_array(array)
    if throttle is not None and throttle < 1:
        raise InvalidRequest("--throttle 0 would never run anything")
    for rule in retry:
        parse_retry(rule)
    if max_attempts < 1:
        raise InvalidRequest("--max-attempts must be at least 1")
    now = int(time.time() * 1000)
    deadline_ms = parse_deadline_ms(deadline, now) if deadline else None
    job = None
    if image is not None:
        job = JobSpec(
            image=image,
            argv=list(argv),
            cpus=cpus,
            memory_mb=parse_memory_mb(memory),
            timeout_ms=parse_duration_ms(timeout),
            env=parse_env(env),
            mounts=list(mounts),
            network=network,
        )
        job.environment(), job.process()
    handle = _client().submit_batch(
        job,
        array=array if array is not None else (None if jobs is not None else "1"),
        jobs=jobs,
        throttle=throttle,
        retry=list(retry),
        max_attempts=max_attempts,
        deadline_ms=deadline_ms,
        idempotency_key=idempotency_key,
        placement="binpack" if placement == "binpack" else "spread",
    )
    if as_json:
        emit_json({"batch_id": handle.batch_id, "created": handle.created})
    else:
        console.print(
            f"{handle.batch_id}{'' if handle.created else ' (existing batch for this idempotency key)'}", markup=False
        )


def _show_batch(status: dict[str, Any], as_json: bool, with_jobs: bool) -> None:
    if as_json:
        emit_json(status)
        return
    meta = status["batch"]
    counts = "  ".join(f"{state} {meta.get(state, 0)}" for state in BATCH_STATES)
    console.print(f"{meta.get('id')}  {meta.get('state')}  {counts}", markup=False, highlight=False)
    if meta.get("reason") and int(meta.get("queued") or 0):
        console.print(f"queued: {meta['reason']}", markup=False, highlight=False)
    if meta.get("noop"):
        console.print(meta["noop"], markup=False, highlight=False)
    if with_jobs:
        jobs = status.get("jobs") or {}
        table(
            "jobs",
            ["INDEX", "STATE", "ATTEMPT", "HOST", "EXIT", "REASON", "SECONDS"],
            [
                (
                    index,
                    rec.get("state"),
                    rec.get("attempt"),
                    rec.get("host") or "",
                    "" if rec.get("exit_code") is None else rec.get("exit_code"),
                    rec.get("reason") or "",
                    _seconds(rec),
                )
                for index, rec in sorted(jobs.items(), key=lambda kv: int(kv[0]))
            ],
        )


def _seconds(rec: dict[str, Any]) -> str:
    if rec.get("ended_ms") and rec.get("started_ms"):
        return f"{(rec['ended_ms'] - rec['started_ms']) / 1000:.1f}"
    return ""


@batch.command("status")
@click.argument("batch_id")
@click.option("--jobs", "with_jobs", is_flag=True, help="Also each job's outcome, host, timing and output tail.")
@json_option
@handles_errors
def batch_status(batch_id: str, with_jobs: bool, as_json: bool) -> None:
    """Counts by state (queued, running, succeeded, failed, cancelled) and why jobs wait."""
    _show_batch(_client().batch(batch_id).status(jobs=with_jobs), as_json, with_jobs)


@batch.command("wait")
@click.argument("batch_id")
@click.option("--timeout", default=None, help="Give up after this long (exit 125).")
@json_option
@handles_errors
def batch_wait(batch_id: str, timeout: str | None, as_json: bool) -> None:
    """Wait until the batch is over: exit 0 all succeeded, 1 some failed, 2 some could not be placed."""
    from corral.fleet.batch import wait_exit_code

    progress = Progress(enabled=not as_json)

    def show(meta: dict[str, Any]) -> None:
        counts = ", ".join(f"{meta.get(state, 0)} {state}" for state in BATCH_STATES)
        progress.update(f"batch {batch_id}: {counts}")

    try:
        limit_s = parse_duration_ms(timeout) / 1000 if timeout else None
        status = _client().batch(batch_id).wait(timeout=limit_s, on_status=show)
    finally:
        progress.done()
    _show_batch(status, as_json, with_jobs=not as_json)
    sys.exit(wait_exit_code(status["batch"]))


@batch.command("cancel")
@click.argument("batch_id")
@json_option
@handles_errors
def batch_cancel(batch_id: str, as_json: bool) -> None:
    """Cancel what is queued and terminate what runs (a finished batch: nothing to do, and it says so)."""
    _show_batch(_client().batch(batch_id).cancel(), as_json, False)


@batch.command("retry")
@click.argument("batch_id")
@click.option("--failed", is_flag=True, required=True, help="Queue every failed job again (fresh attempts).")
@json_option
@handles_errors
def batch_retry(batch_id: str, failed: bool, as_json: bool) -> None:
    """Queue the failed jobs of a batch again."""
    _show_batch(_client().batch(batch_id).retry_failed(), as_json, False)


@batch.command("ls")
@json_option
@handles_errors
def batch_ls(as_json: bool) -> None:
    """Your batches (every tenant's for an operator), newest first."""
    rows = _client().batches()
    if as_json:
        emit_json(rows)
        return
    table(
        "batches",
        ["BATCH", "STATE", *[s.upper() for s in BATCH_STATES], "CREATED"],
        [
            (r.get("id"), r.get("state"), *[r.get(s, "0") for s in BATCH_STATES], age(int(r.get("created_ms") or 0)))
            for r in rows
        ],
    )

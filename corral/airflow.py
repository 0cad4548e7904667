"""Airflow 3: run corral jobs from a DAG (``pip install 'corral[airflow]'``).

``CorralOperator`` is named and shaped like Airflow's ``DockerOperator``, but the container runs on
corral's fleet: the task submits a batch (one job, or an ``array``) through the Python client, signed
with a client identity, and::

    CorralOperator(task_id="count", image="corral/busybox:latest", command=["sh", "-c", "echo 42"])

Where corral is: ``conn_id="corral_default"`` names an Airflow Connection (``connection_settings``):
host and port of the corral Redis, login and password of the client's Redis user, and in its extra
``key_file`` and ``cert_file`` (the client identity made by ``corral keys``), optionally ``tls``
(``rediss://``), ``tls_ca_file``, ``tls_cert_file``, ``tls_key_file``, ``password_file``, the database
numbers (``broker_db``, ``result_db``, ``state_db``) or a whole ``url``. For example, as an environment
variable: ``AIRFLOW_CONN_CORRAL_DEFAULT='{"conn_type": "corral", "host": "redis.internal", "port": 6379,
"login": "client", "password": "...", "extra": {"key_file": "/keys/etl.key", "cert_file":
"/keys/etl.crt"}}'``. Without ``conn_id``, the Airflow worker's environment (``CORRAL_*`` variables or
``CORRAL_CONFIG``, as for the CLI) says it.

- streams each job's output into the Airflow task log (lines; stderr lines prefixed ``stderr:``,
  array jobs prefixed ``[index]``); output the spool no longer holds comes from the batch's tail;
- succeeds when every job exits 0, else raises ``AirflowException`` (Airflow's retries apply);
- returns the last stdout line for XCom (a list, one per index, for an array), or with
  ``xcom_output="name"`` the value of the last stdout line ``name=VALUE``;
- ``on_kill`` (a killed or timed-out task) cancels the batch: queued jobs never start, running ones
  are terminated;
- submits with an idempotency key derived from dag id, run id, task id and map index, so a **retry of
  the Airflow task reuses its batch** instead of starting a second one: a batch still running is
  followed, a succeeded one is returned as it is, a failed one has its failed jobs re-run in place
  (``retry_failed``); only a batch that ``on_kill`` cancelled is submitted again, under the key with
  ``:try<N>`` appended;
- ``deferrable=True`` submits, then frees the worker slot: ``CorralBatchTrigger`` waits in the
  triggerer (asyncio Redis reads of the batch's counters, read-only for the client role) and the
  task resumes in ``execute_complete`` to decide; a user killing the deferred task cancels the batch
  (the trigger's ``on_kill``; not a triggerer restart). Output in deferrable mode: for batches up to
  ``live_jobs`` the trigger streams each job's output into the task log while the task is deferred
  (Airflow shows a trigger's log lines in the task log), the same way the operator does (``LiveOutput``:
  frame reads from the host's spool, in a thread of the triggerer since each is a blocking signed Celery
  call; the job's tail fills in what the stream missed); for larger batches it logs each job's end as it
  happens and the resumed task logs each job's output tail (the last 4 KiB of each stream).
- mapped tasks work as for any operator (``CorralOperator.partial(image=...).expand(command=[...])``):
  each mapped instance is its own batch, keyed by its map index.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shlex
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import redis.asyncio as aioredis

from corral.client.client import BatchHandle, Client
from corral.contract.errors import AgentError
from corral.contract.refs import process_ref_for
from corral.contract.vocabulary import ProcessIoStream
from corral.fleet.batch import batch_key, parse_array
from corral.fleet.job import JobSpec
from corral.settings import Settings, load_settings

try:
    from airflow.sdk import BaseHook, BaseOperator, Context
    from airflow.sdk.exceptions import AirflowException
    from airflow.triggers.base import BaseTrigger, TriggerEvent
except ImportError as exc:  # the module is only useful inside Airflow
    raise ImportError("corral.airflow needs Apache Airflow 3: pip install 'corral[airflow]'") from exc

TERMINAL = ("succeeded", "failed", "cancelled")
LIVE_JOBS = 16
"""Batches up to this size (``live_jobs=``) stream each running job's output live; a larger one logs each job's output
tail when it ends and reads the jobs only when the counters move (a frame read per job and poll, or
every job's record each second, would load the fleet for a log)."""
COUNTERS = ("state", "queued", "running", "succeeded", "failed", "cancelled", "unplaceable")


def idempotency_key(dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    """The same for every try of one task instance (Airflow's retries), different for any other."""
    key = f"airflow:{dag_id}:{run_id}:{task_id}:{map_index}"
    return key if len(key) <= 200 else "airflow:" + hashlib.sha256(key.encode()).hexdigest()


def missing_part(seen: str, tail: str) -> str:
    """What of ``tail`` (the end of a job's whole output) ``seen`` (its streamed start) lacks."""
    if seen.endswith(tail):
        return ""
    for k in range(min(len(seen), len(tail) - 1), 0, -1):
        if seen.endswith(tail[:k]):
            return tail[k:]
    return tail


def last_line(text: str, name: str | None) -> str | None:
    lines = [line for line in text.splitlines() if line.strip()]
    if name is None:
        return lines[-1] if lines else None
    prefix = f"{name}="
    values = [line[len(prefix) :] for line in lines if line.startswith(prefix)]
    return values[-1] if values else None


class LiveOutput:
    """Streams a batch's jobs' output into a log, line by line: a running job's new output from its
    host's spool (``Client.read_frame``: a signed call to the host's reads lane), and when the job ends
    what the stream missed, from the job's tail (the sandbox is cleaned up as soon as it ends).
    Used by ``CorralOperator`` (in the worker) and by ``CorralBatchTrigger`` (in the triggerer, from a
    thread: each read blocks on its Celery call)."""

    def __init__(self, client: Client, log: Any, labeled: bool) -> None:
        self.client = client
        self.log = log
        self.labeled = labeled
        # Keyed by attempt (environment id and start time: a re-run of failed jobs may reuse an id).
        self.cursors: dict[tuple[str, ProcessIoStream], int] = {}
        self.seen: dict[tuple[str, ProcessIoStream], str] = {}
        self.partial: dict[tuple[str, ProcessIoStream], str] = {}
        self.done: set[str] = set()

    def label(self, index: int) -> str:
        return f"[{index}] " if self.labeled else ""

    def text(self, label: str, stream: ProcessIoStream, text: str) -> None:
        prefix = label + ("stderr: " if stream is ProcessIoStream.stderr else "")
        for line in text.splitlines():
            self.log.info("%s%s", prefix, line)

    def job(self, index: int, rec: dict[str, Any], live: bool) -> None:
        """One job's record at this poll: log its new output (``live``), and all of it once it ended."""
        env_id, host = rec.get("environment_id"), rec.get("host")
        attempt = f"{env_id}@{rec.get('started_ms')}"
        if not env_id or not host or attempt in self.done:
            return
        label = self.label(index)
        for stream in (ProcessIoStream.stdout, ProcessIoStream.stderr):
            key = (attempt, stream)
            text = self.read(host, env_id, key) if live else ""
            self.seen[key] = (self.seen.get(key, "") + text)[-65536:]
            lines = (self.partial.get(key, "") + text).split("\n")
            self.partial[key] = lines.pop()
            for line in lines:
                self.log.info("%s%s%s", label, "stderr: " if stream is ProcessIoStream.stderr else "", line)
        if rec.get("state") in TERMINAL or (rec.get("state") == "queued" and rec.get("ended_ms")):
            self.done.add(attempt)
            for stream, tail_field in (
                (ProcessIoStream.stdout, "stdout_tail"),
                (ProcessIoStream.stderr, "stderr_tail"),
            ):
                key = (attempt, stream)
                rest = self.partial.pop(key, "") + missing_part(self.seen.get(key, ""), rec.get(tail_field) or "")
                self.text(label, stream, rest)
            self.log.info(
                "corral: %sattempt %s on %s ended: exit %s (%s)%s",
                label, rec.get("attempt"), host, rec.get("exit_code"), rec.get("reason"),
                ", retried" if rec.get("state") == "queued" else "",
            )  # fmt: skip

    def read(self, host: str, env_id: str, key: tuple[str, ProcessIoStream]) -> str:
        out = b""
        try:
            for _ in range(64):
                frame = self.client.read_frame(host, process_ref_for(env_id), key[1], self.cursors.get(key, 0))
                self.cursors[key] = frame.cursor
                if frame.content_b64:
                    out += base64.b64decode(frame.content_b64)
                if frame.eof or frame.byte_count == 0:
                    break
        except AgentError:
            pass  # not started yet, or already cleaned up: the batch's tail covers it
        return out.decode("utf-8", errors="replace")


CONNECTION_EXTRAS = (
    "key_file", "cert_file", "password_file", "tls_ca_file", "tls_cert_file", "tls_key_file", "tls_verify",
    "broker_db", "result_db", "beat_db", "state_db", "url", "tls",
)  # fmt: skip


def connection_settings(conn: Any, base: Settings | None = None) -> Settings:
    """corral's client settings from an Airflow Connection (see the module doc), over ``base`` (the
    process's own settings: its config file and ``CORRAL_*`` variables) for what the connection leaves out."""
    extra: dict[str, Any] = dict(getattr(conn, "extra_dejson", None) or {})
    unknown = sorted(set(extra) - set(CONNECTION_EXTRAS))
    if unknown:
        raise ValueError(f"connection {conn.conn_id}: unknown extra field(s) {', '.join(unknown)}")
    redis: dict[str, Any] = {}
    if extra.get("url"):
        redis["url"] = extra["url"]
    elif conn.host:
        scheme = "rediss" if extra.get("tls") else "redis"
        redis["url"] = f"{scheme}://{conn.host}:{conn.port or 6379}"
    if conn.login:
        redis["username"] = conn.login
    if conn.password:
        redis["password"] = conn.password
    for name in ("password_file", "tls_ca_file", "tls_cert_file", "tls_key_file", "tls_verify"):
        if name in extra:
            redis[name] = extra[name]
    for name in ("broker_db", "result_db", "beat_db", "state_db"):
        if name in extra:
            redis[name] = int(extra[name])
    security: dict[str, Any] = {name: extra[name] for name in ("key_file", "cert_file") if name in extra}
    settings = base or load_settings()
    return settings.model_copy(
        update={
            "redis": settings.redis.model_copy(update=redis),
            "security": settings.security.model_copy(update=security),
        }
    )


def settings_for(conn_id: str | None) -> Settings:
    return connection_settings(BaseHook.get_connection(conn_id)) if conn_id else load_settings()


async def asettings_for(conn_id: str | None) -> Settings:
    """In the triggerer (async: a connection is fetched without blocking its event loop)."""
    return connection_settings(await BaseHook.aget_connection(conn_id)) if conn_id else load_settings()


class CorralBatchTrigger(BaseTrigger):
    """Fires once the batch is over (no job queued or running), with its counters as the event."""

    def __init__(
        self,
        batch_id: str,
        poll_interval: float = 2.0,
        conn_id: str | None = None,
        live_jobs: int = 0,
        labeled: bool = False,
    ) -> None:
        super().__init__()
        self.batch_id = batch_id
        self.poll_interval = poll_interval
        self.conn_id = conn_id
        self.live_jobs = live_jobs
        """Stream the jobs' output into the task log while deferred, for batches up to this size (0: never)."""
        self.labeled = labeled
        """Prefix each line with its job's index (an array)."""

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "batch_id": self.batch_id,
            "poll_interval": self.poll_interval,
            "conn_id": self.conn_id,
            "live_jobs": self.live_jobs,
            "labeled": self.labeled,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        settings = await asettings_for(self.conn_id)
        r = aioredis.Redis.from_url(
            settings.redis_url(settings.redis.state_db), decode_responses=True, **(settings.redis_tls() or {})
        )
        fields = ("state", "running", "queued", "succeeded", "failed", "cancelled", "unplaceable", "total")
        ended: set[str] = set()
        out: LiveOutput | None = None
        try:
            while True:
                values = await r.hmget(batch_key(self.batch_id), list(fields))
                meta = dict(zip(fields, values, strict=True))
                if meta["state"] is None:
                    yield TriggerEvent({"batch_id": self.batch_id, "state": "missing"})
                    return
                if out is None and 0 < int(meta["total"] or 0) <= self.live_jobs:
                    out = LiveOutput(await asyncio.to_thread(Client, settings), self.log, self.labeled)
                if out is not None:  # the jobs' records read after the counters: at least as recent
                    raw = cast(dict[str, str], await r.hgetall(f"{batch_key(self.batch_id)}:jobs"))
                    await asyncio.to_thread(self._stream, out, {int(i): json.loads(t) for i, t in raw.items()})
                elif len(ended) < int(meta["succeeded"] or 0) + int(meta["failed"] or 0) + int(meta["cancelled"] or 0):
                    await self._log_ends(r, ended)  # a large batch: its tails come in execute_complete
                if meta["state"] != "active" and int(meta["running"] or 0) == 0:
                    yield TriggerEvent({"batch_id": self.batch_id, **meta, "streamed": out is not None})
                    return
                await asyncio.sleep(self.poll_interval)
        finally:
            if out is not None:
                await asyncio.to_thread(out.client.close)
            await r.aclose()

    @staticmethod
    def _stream(out: LiveOutput, records: dict[int, dict[str, Any]]) -> None:
        """In a thread of the triggerer: each frame read is a blocking Celery call."""
        for index in sorted(records):
            out.job(index, records[index], live=True)

    async def _log_ends(self, r: aioredis.Redis, ended: set[str]) -> None:
        """Log each job's end once (the task log shows a trigger's lines while the task is deferred)."""
        raw = cast(dict[str, str], await r.hgetall(f"{batch_key(self.batch_id)}:jobs"))
        for index, text in sorted(raw.items(), key=lambda kv: int(kv[0])):
            rec = json.loads(text)
            if rec.get("state") not in TERMINAL or index in ended:
                continue
            ended.add(index)
            self.log.info(
                "corral: job %s attempt %s on %s ended: exit %s (%s)",
                index, rec.get("attempt"), rec.get("host"), rec.get("exit_code"), rec.get("reason"),
            )  # fmt: skip

    async def on_kill(self) -> None:
        """A user killed the deferred task (mark failed, clear): cancel its batch, as ``on_kill`` does."""
        settings = await asettings_for(self.conn_id)
        await asyncio.to_thread(cancel_batch, self.batch_id, settings)


def cancel_batch(batch_id: str, settings: Settings | None = None) -> None:
    client = Client(settings)
    try:
        client.batch(batch_id).cancel()
    finally:
        client.close()


class CorralOperator(BaseOperator):
    """Run ``command`` in ``image`` on the corral fleet (one job, or ``array`` jobs); see the module doc."""

    template_fields: Sequence[str] = ("image", "command", "env", "array", "idempotency_key")
    ui_color = "#e8d8b0"

    def __init__(
        self,
        *,
        image: str,
        command: list[str] | str,
        array: int | str | None = None,
        env: dict[str, str] | None = None,
        cpus: float = 1.0,
        memory_mb: int = 512,
        job_timeout_s: float = 600,
        network: str = "disabled",
        mounts: list[str] | None = None,
        secrets: list[str] | None = None,
        user: str | None = None,
        workdir: str = "/",
        retry: list[str] | None = None,
        max_attempts: int = 1,
        throttle: int | None = None,
        xcom_output: str | None = None,
        idempotency_key: str | None = None,
        deferrable: bool = False,
        poll_interval: float = 1.0,
        live_jobs: int = LIVE_JOBS,
        conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.image = image
        self.command = command
        self.array = array
        self.env = env or {}
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.job_timeout_s = job_timeout_s
        self.network = network
        self.mounts = mounts or []
        self.secrets = secrets or []
        self.user = user
        self.workdir = workdir
        self.retry_rules = retry or []
        self.max_attempts = max_attempts
        self.throttle = throttle
        self.xcom_output = xcom_output
        self.idempotency_key = idempotency_key
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.live_jobs = live_jobs
        self.conn_id = conn_id
        self._handle: BatchHandle | None = None

    # -- submission -----------------------------------------------------------------------------

    def _job(self) -> JobSpec:
        argv = shlex.split(self.command) if isinstance(self.command, str) else list(self.command)
        return JobSpec(
            image=self.image,
            argv=argv,
            env=self.env,
            cpus=self.cpus,
            memory_mb=self.memory_mb,
            timeout_ms=int(self.job_timeout_s * 1000),
            network=self.network,
            mounts=self.mounts,
            secrets=self.secrets,
            user=self.user,
            workdir=self.workdir,
        )

    def _array(self) -> str:
        return "1" if self.array is None else str(self.array)

    def _submit(self, client: Client, context: Context) -> BatchHandle:
        ti = context["ti"]
        key = self.idempotency_key or idempotency_key(
            ti.dag_id, ti.run_id, ti.task_id, -1 if ti.map_index is None else ti.map_index
        )
        parse_array(self._array())  # a bad range is refused before anything is sent

        def submit(k: str) -> BatchHandle:
            return client.submit_batch(
                self._job(),
                array=self._array(),
                throttle=self.throttle,
                retry=self.retry_rules,
                max_attempts=self.max_attempts,
                idempotency_key=k,
            )

        handle = submit(key)
        if handle.created:
            self.log.info("corral: submitted batch %s (key %s)", handle.batch_id, key)
            return handle
        meta = handle.status()["batch"]
        state = meta.get("state")
        self.log.info("corral: try %s reuses batch %s of key %s (%s)", ti.try_number, handle.batch_id, key, state)
        if state == "cancelled":  # on_kill stopped it: this try runs the work again
            handle = submit(f"{key}:try{ti.try_number}")
            self.log.info("corral: batch was cancelled; submitted batch %s", handle.batch_id)
        elif state == "finished" and int(meta.get("failed") or 0):
            queued = handle.retry_failed()["batch"].get("queued")
            self.log.info("corral: re-running the failed jobs of batch %s (%s queued)", handle.batch_id, queued)
        return handle

    def _client(self) -> Client:
        return Client(settings_for(self.conn_id))

    # -- Airflow's entry points -------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        client = self._client()
        try:
            self._handle = handle = self._submit(client, context)
            if self.deferrable:
                self.defer(
                    trigger=CorralBatchTrigger(
                        handle.batch_id, self.poll_interval, self.conn_id, self.live_jobs, self.array is not None
                    ),
                    method_name="execute_complete",
                )
            status = self._follow(client, handle)
            return self._result(handle.batch_id, status)
        finally:
            client.close()

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Resumed after ``CorralBatchTrigger`` fired: log each job's output tail, then decide."""
        client = self._client()
        try:
            status = client.batch(event["batch_id"]).status(jobs=True)
            if not event.get("streamed"):  # the trigger did not log the output live: the tails now
                out = LiveOutput(client, self.log, self.array is not None)
                for index, rec in sorted(status["jobs"].items(), key=lambda kv: int(kv[0])):
                    out.text(out.label(int(index)), ProcessIoStream.stdout, rec.get("stdout_tail") or "")
                    out.text(out.label(int(index)), ProcessIoStream.stderr, rec.get("stderr_tail") or "")
            return self._result(event["batch_id"], status)
        finally:
            client.close()

    def on_kill(self) -> None:
        if self._handle is not None:
            self.log.info("corral: task killed; cancelling batch %s", self._handle.batch_id)
            self._handle.cancel()

    # -- output and outcome -----------------------------------------------------------------------

    def _follow(self, client: Client, handle: BatchHandle) -> dict[str, Any]:
        """Poll the batch; stream running jobs' output from their host's spool (best effort: the
        sandbox is cleaned up as soon as the job ends, and its tail fills in what was missed)."""
        out = LiveOutput(client, self.log, self.array is not None)
        live, counters = True, None
        while True:
            if not live:
                meta = handle.status()["batch"]
                if tuple(meta.get(k) for k in COUNTERS) == counters:
                    self._sleep()
                    continue
            status = handle.status(jobs=True)
            meta = status["batch"]
            live = int(meta.get("total") or 0) <= self.live_jobs
            counters = tuple(meta.get(k) for k in COUNTERS)
            over = meta.get("state") != "active" and int(meta.get("running") or 0) == 0
            for index_text, rec in sorted(status["jobs"].items(), key=lambda kv: int(kv[0])):
                out.job(int(index_text), rec, live)
            if over:
                return handle.status(jobs=True)
            self._sleep()

    def _sleep(self) -> None:
        time.sleep(self.poll_interval)

    def _result(self, batch_id: str, status: dict[str, Any]) -> Any:
        meta, jobs = status["batch"], status["jobs"]
        bad = {int(i): r for i, r in jobs.items() if r.get("state") != "succeeded"}
        if bad or meta.get("state") != "finished":
            first = bad[min(bad)] if bad else {}
            raise AirflowException(
                f"corral batch {batch_id}: {len(bad)} of {meta.get('total')} jobs did not succeed "
                f"(state {meta.get('state')}; first: index {min(bad) if bad else '-'} {first.get('state')}, "
                f"exit {first.get('exit_code')}, reason {first.get('reason')})"
            )
        values = []
        for index in sorted(int(i) for i in jobs):
            value = last_line(jobs[str(index)].get("stdout_tail") or "", self.xcom_output)
            if value is None and self.xcom_output is not None:
                raise AirflowException(f"corral batch {batch_id}: job {index} printed no line {self.xcom_output}=...")
            values.append(value)
        return values if self.array is not None else values[0]

"""Batches: many jobs submitted at once, held in Redis, dispatched as room appears.

A batch is one job template and an array of indices (``--array 30``, ``--array 0-99%10``: at most 10
running at once), or a JSON-lines file of job specs (``--file jobs.jsonl``). The fleet worker that
accepts the submission (``corral.batch_submit``, a signed task) stores the batch with the **verified
caller** of that message; the dispatcher (``corral.host.dispatcher``) later sends every job's chain signed
with its own component key *carrying that caller*, so each host admits the job for the submitting
tenant exactly as if the client had sent it (a component-signed message keeps its caller;
``corral.trust.signing``). Nothing the client writes into the batch can name another caller.

Each attempt runs with ``CORRAL_BATCH_ID``, ``CORRAL_ARRAY_INDEX`` and ``CORRAL_ATTEMPT`` in its
environment. When it ends (seen by its host's reaper) its exit code, reason, host, timing and a bounded
output tail are kept in the batch and the sandbox is cleaned up; counters change in the same Lua call
(``batch.lua``), never through a Celery chord. Retry rules (``exit:3``, ``exit:1,2``, ``reason:oom``;
reasons: exit timeout oom signal lost host_lost start_failed) are tried in order, first match wins, and
each index has its own attempt budget (``max_attempts``). A ``deadline`` cancels what remains.

Keys (prefix ``corral:``; see ``batch.lua`` for each batch's own keys)::

    batch:<id>[:pending|:jobs|:specs|:running]   one batch (kept ``retention_s`` once over)
    batches                 ZSET  batch ids by creation (``corral batch ls``)
    batches:active          SET   batches the dispatcher still works on
    batchidem:<tenant>:<k>  STR   batch id of an idempotency key (a resubmission creates nothing)
    batchrun:<host>         HASH  environment id -> batch id of attempts running on that host
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import redis
from pydantic import Field, ValidationError, field_validator

from corral.contract.errors import InvalidRequest
from corral.contract.refs import new_ref, slug
from corral.contract.wire import Model
from corral.fleet.admission import Mode
from corral.fleet.job import JobSpec
from corral.state.store import PREFIX

SCRIPT = Path(__file__).with_name("batch.lua")
BATCHES_KEY = f"{PREFIX}batches"
ACTIVE_KEY = f"{PREFIX}batches:active"
DEFAULT_RETENTION_S = 7 * 24 * 3600
TAIL_BYTES = 4096
"""Bytes of stdout (and of stderr) a finished job keeps: the end of its output."""
REASONS = ("exit", "timeout", "oom", "signal", "lost", "host_lost", "start_failed")
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


DISPATCH_LOCK = f"{PREFIX}dispatch:lock"
"""Held by the one dispatcher running (with a short expiry: a killed worker does not stall batches)."""
DISPATCH_NEXT = f"{PREFIX}dispatch:next"
"""Set while a dispatcher wake-up is on its way (one at a time, fleet-wide)."""


def reap_request_key(host_id: str) -> str:
    """Set while a reap request is on its way to that host (one at a time)."""
    return f"{PREFIX}reap:{host_id}"


def reaping_key(host_id: str) -> str:
    """Held by the one reaper running on that host."""
    return f"{PREFIX}reaping:{host_id}"


def batch_key(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}"


def idem_key(tenant: str, key: str) -> str:
    return f"{PREFIX}batchidem:{slug(tenant)}:{slug(key)}"


def run_key(host_id: str) -> str:
    return f"{PREFIX}batchrun:{host_id}"


def attempt_env_id(batch_id: str, index: int, attempt: int) -> str:
    return f"{batch_id}.{index}.a{attempt}"


def parse_env_id(environment_id: str) -> tuple[str, int, int] | None:
    match = re.fullmatch(r"(bat-[0-9a-f]{12})\.(\d+)\.a(\d+)", environment_id)
    return (match.group(1), int(match.group(2)), int(match.group(3))) if match else None


# -- what a scheduler states -----------------------------------------------------------------------


class JobTemplate(Model):
    """One job of a batch: ``JobSpec``'s fields (one JSON object a line in ``--file``)."""

    image: str = Field(min_length=1, max_length=512)
    argv: list[str] = Field(min_length=1)
    cpus: float = Field(default=1.0, gt=0, le=256)
    memory_mb: int = Field(default=512, ge=6)
    process_count: int = Field(default=64, ge=1)
    timeout_ms: int = Field(default=600_000, ge=1)
    env: dict[str, str] = Field(default_factory=dict)
    mounts: list[str] = Field(default_factory=list)
    network: str = "disabled"
    secrets: list[str] = Field(default_factory=list)
    env_secrets: dict[str, str] = Field(default_factory=dict)
    user: str | None = None
    workdir: str = "/"
    writable_root: bool = False

    def job(self, environment_id: str, extra_env: dict[str, str]) -> JobSpec:
        fields = self.model_dump()
        fields["env"] = {**self.env, **extra_env}
        return JobSpec(**fields, environment_id=environment_id)

    def check(self) -> None:
        """Build the contract requests once, so a bad template is refused at submission."""
        job = self.job("check", {})
        job.environment(), job.process()


class ArraySpec(Model):
    first: int = Field(ge=0)
    last: int = Field(ge=0)
    throttle: int | None = Field(default=None, ge=1)

    @property
    def size(self) -> int:
        return self.last - self.first + 1


def parse_array(text: str) -> ArraySpec:
    """``N`` (indices 0..N-1), ``A-B`` (inclusive) or either with ``%T`` (at most T running at once)."""
    match = re.fullmatch(r"\s*(\d+)(?:-(\d+))?(?:%(\d+))?\s*", text)
    if match is None:
        raise InvalidRequest(f"array {text[:40]!r} is not N, A-B or A-B%T", context={"array": text[:40]})
    a, b, t = match.groups()
    first, last = (0, int(a) - 1) if b is None else (int(a), int(b))
    if b is None and int(a) == 0:
        raise InvalidRequest("array 0 is empty: give at least one index", context={"array": text[:40]})
    if last < first:
        raise InvalidRequest(f"array range {first}-{last} is reversed", context={"array": text[:40]})
    if t is not None and int(t) == 0:
        raise InvalidRequest("array throttle %0 would never run anything", context={"array": text[:40]})
    return ArraySpec(first=first, last=last, throttle=int(t) if t is not None else None)


@dataclass(frozen=True)
class RetryRule:
    kind: Literal["exit", "reason"]
    values: tuple[str, ...]

    def matches(self, exit_code: int | None, reason: str) -> bool:
        if self.kind == "exit":
            return reason == "exit" and exit_code is not None and str(exit_code) in self.values
        return reason in self.values

    def __str__(self) -> str:
        return f"{self.kind}:{','.join(self.values)}"


def parse_retry(text: str) -> RetryRule:
    """``exit:3``, ``exit:1,2``, ``reason:oom`` (reasons: exit timeout oom signal lost host_lost start_failed)."""
    kind, _, rest = text.partition(":")
    values = tuple(v.strip() for v in rest.split(",") if v.strip())
    if kind == "exit" and values and all(re.fullmatch(r"\d{1,3}", v) and int(v) <= 255 for v in values):
        return RetryRule("exit", tuple(str(int(v)) for v in values))
    if kind == "reason" and values and all(v in REASONS for v in values):
        return RetryRule("reason", values)
    raise InvalidRequest(
        f"retry rule {text[:60]!r} does not parse: use exit:CODE[,CODE] or reason:NAME ({', '.join(REASONS)})",
        context={"rule": text[:60]},
    )


def should_retry(rules: list[RetryRule], exit_code: int | None, reason: str, attempt: int, max_attempts: int) -> bool:
    """First matching rule wins; no match, or this index's attempts used up, means the job fails."""
    if attempt >= max_attempts:
        return False
    return any(rule.matches(exit_code, reason) for rule in rules)


def parse_jobs_file(text: str) -> list[JobTemplate]:
    """One ``JobTemplate`` per non-empty line; the first bad line is an ``InvalidRequest`` naming it."""
    jobs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            template = JobTemplate.model_validate_json(line)
            template.check()
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "<line>"
            raise InvalidRequest(
                f"jobs file line {number}: {where}: {first['msg']}", context={"line": str(number)}
            ) from None
        except InvalidRequest as exc:
            raise InvalidRequest(f"jobs file line {number}: {exc.message}", context={"line": str(number)}) from None
        jobs.append(template)
    if not jobs:
        raise InvalidRequest("the jobs file holds no job")
    return jobs


class BatchSubmitRequest(Model):
    """``corral.batch_submit``: a template with an array, or a list of jobs (a file)."""

    template: JobTemplate | None = None
    array: ArraySpec | None = None
    jobs: list[JobTemplate] | None = None
    throttle: int | None = Field(default=None, ge=1)
    retry: list[str] = Field(default_factory=list, max_length=32)
    max_attempts: int = Field(default=1, ge=1, le=100)
    deadline_ms: int | None = Field(default=None, ge=0)
    """Absolute (epoch ms): remaining jobs are cancelled and running ones terminated then."""
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    placement: Mode = "spread"
    retention_s: int = Field(default=DEFAULT_RETENTION_S, ge=60, le=90 * 24 * 3600)

    @field_validator("retry")
    @classmethod
    def _rules(cls, value: list[str]) -> list[str]:
        for rule in value:
            parse_retry(rule)
        return value

    def size(self) -> int:
        if self.jobs is not None:
            return len(self.jobs)
        return self.array.size if self.array is not None else 1

    def check(self, now_ms: int, max_jobs: int) -> None:
        """The bad-input rules of a submission (all ``InvalidRequest``; nothing is stored before)."""
        if (self.template is None) == (self.jobs is None):
            raise InvalidRequest("a batch is a job template (with --array) or a list of jobs (--file), not both")
        if self.jobs is not None and self.array is not None:
            raise InvalidRequest("--array applies to one job template, not to a jobs file")
        if self.jobs is not None and not self.jobs:
            raise InvalidRequest("the jobs file holds no job")
        if self.size() > max_jobs:
            raise InvalidRequest(
                f"batch of {self.size()} jobs is over this fleet's maximum of {max_jobs} (limits.max_batch_jobs)",
                context={"rule": "limits.max_batch_jobs", "limit": str(max_jobs)},
            )
        if self.deadline_ms is not None and self.deadline_ms <= now_ms:
            raise InvalidRequest("the deadline is in the past", context={"deadline_ms": str(self.deadline_ms)})
        for template in [self.template] if self.template else []:
            template.check()

    def effective_throttle(self) -> int | None:
        return self.throttle or (self.array.throttle if self.array else None)


class BatchRef(Model):
    batch_id: str
    created: bool
    """False: the idempotency key named an existing batch; nothing was created."""


class BatchControl(Model):
    batch_id: str = Field(max_length=64)
    action: Literal["status", "cancel", "retry_failed", "list"] = "status"
    jobs: bool = False
    """status: include each job's record."""


# -- the store ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """A batch's meta hash, typed."""

    raw: dict[str, str]

    @property
    def batch_id(self) -> str:
        return self.raw.get("id", "")

    @property
    def state(self) -> str:
        return self.raw.get("state", "")

    def count(self, name: str) -> int:
        return int(self.raw.get(name) or 0)

    @property
    def tenant(self) -> str:
        return self.raw.get("tenant", "")

    @property
    def caller(self) -> str:
        return self.raw.get("caller", "")

    @property
    def throttle(self) -> int | None:
        value = self.raw.get("throttle")
        return int(value) if value else None

    @property
    def max_attempts(self) -> int:
        return int(self.raw.get("max_attempts") or 1)

    @property
    def rules(self) -> list[RetryRule]:
        return [parse_retry(r) for r in json.loads(self.raw.get("retry") or "[]")]

    @property
    def deadline_ms(self) -> int | None:
        value = self.raw.get("deadline_ms")
        return int(value) if value else None

    @property
    def placement(self) -> Mode:
        value = self.raw.get("placement", "spread")
        return "binpack" if value == "binpack" else "spread"

    @property
    def retention_ms(self) -> int:
        return int(self.raw.get("retention_s") or DEFAULT_RETENTION_S) * 1000


class BatchStore:
    def __init__(self, client: redis.Redis, ttl_s: int = 7 * 24 * 3600) -> None:
        self.r = client
        self.ttl_ms = ttl_s * 1000
        self._script = client.register_script(SCRIPT.read_text())

    def _call(self, batch_id: str, *args: str | int) -> Any:
        return self._script(keys=[batch_key(batch_id)], args=[args[0], batch_key(batch_id), *args[1:]])

    def submit(
        self, request: BatchSubmitRequest, tenant: str, caller: str, now_ms: int, batch_id: str | None = None
    ) -> BatchRef:
        """Store the whole batch in one Lua call: O(1) round trips however many jobs."""
        batch_id = batch_id or new_ref("bat")
        meta = {
            "tenant": tenant,
            "caller": caller,
            "retry": json.dumps(request.retry),
            "max_attempts": str(request.max_attempts),
            "throttle": str(request.effective_throttle() or ""),
            "deadline_ms": str(request.deadline_ms or ""),
            "placement": request.placement,
            "retention_s": str(request.retention_s),
            "template": request.template.model_dump_json() if request.template else "",
            "idempotency_key": request.idempotency_key or "",
        }
        first, last = (request.array.first, request.array.last) if request.array else (0, request.size() - 1)
        specs = [x for i, job in enumerate(request.jobs or []) for x in (str(i), job.model_dump_json())]
        ttl = self.ttl_ms + request.retention_s * 1000 + max(0, (request.deadline_ms or 0) - now_ms)
        args: list[str | int] = [
            (request.idempotency_key and idem_key(tenant, request.idempotency_key)) or "",
            batch_id,
            ttl,
            BATCHES_KEY,
            ACTIVE_KEY,
            now_ms,
            len(meta),
            *[x for kv in meta.items() for x in kv],
            first,
            last,
            len(specs) // 2,
            *specs,
        ]
        status, got = cast(list[str], self._call(batch_id, "submit", *args))
        return BatchRef(batch_id=got, created=status == "created")

    def batch(self, batch_id: str) -> Batch | None:
        raw = cast(dict[str, str], self.r.hgetall(batch_key(batch_id)))
        return Batch(raw) if raw else None

    def active(self) -> list[str]:
        return sorted(cast(set[str], self.r.smembers(ACTIVE_KEY)))

    def list_ids(self, limit: int = 100) -> list[str]:
        return cast(list[str], self.r.zrevrange(BATCHES_KEY, 0, limit - 1))

    def pending(self, batch_id: str, count: int) -> list[int]:
        if count <= 0:  # ZRANGE 0 -1 would be everything: a full throttle must read nothing
            return []
        return [int(i) for i in cast(list[str], self.r.zrange(f"{batch_key(batch_id)}:pending", 0, count - 1))]

    def running(self, batch_id: str) -> dict[str, int]:
        raw = cast(dict[str, str], self.r.hgetall(f"{batch_key(batch_id)}:running"))
        return {env: int(i) for env, i in raw.items()}

    def jobs(self, batch_id: str) -> dict[int, dict[str, Any]]:
        raw = cast(dict[str, str], self.r.hgetall(f"{batch_key(batch_id)}:jobs"))
        return {int(i): json.loads(v) for i, v in raw.items()}

    def job(self, batch_id: str, index: int) -> dict[str, Any] | None:
        raw = cast(str | None, self.r.hget(f"{batch_key(batch_id)}:jobs", str(index)))
        return cast(dict[str, Any], json.loads(raw)) if raw else None

    def template(self, batch: Batch, index: int) -> JobTemplate:
        raw = batch.raw.get("template") or cast(
            str | None, self.r.hget(f"{batch_key(batch.batch_id)}:specs", str(index))
        )
        if not raw:
            raise InvalidRequest(f"batch {batch.batch_id} has no job {index}")
        return JobTemplate.model_validate_json(raw)

    def record_dispatch(self, batch_id: str, jobs: int, reserve_us: int, sent_us: int, send_us: int = 0) -> None:
        """The dispatcher's own cost, summed over its passes (``stat_*`` fields of the batch hash): jobs
        sent, time in admission calls, per job the time from its reservation to its chain sent (the
        jobs reserved together in one call are sent one after the other), and the time of the sends
        themselves (recording the attempt, signing and publishing the chain)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hincrby(batch_key(batch_id), "stat_jobs", jobs)
        pipe.hincrby(batch_key(batch_id), "stat_reserve_us", reserve_us)
        pipe.hincrby(batch_key(batch_id), "stat_sent_us", sent_us)
        pipe.hincrby(batch_key(batch_id), "stat_send_us", send_us)
        pipe.execute()

    def set_reason(self, batch_id: str, reason: str) -> None:
        self.r.hset(batch_key(batch_id), "reason", reason)

    def start(self, batch_id: str, index: int, environment_id: str, host: str, record: dict[str, Any]) -> bool:
        return bool(
            self._call(batch_id, "start", str(index), environment_id, json.dumps(record), run_key(host), batch_id)
        )

    def finish(
        self,
        batch: Batch,
        index: int,
        environment_id: str,
        host: str,
        outcome: Literal["succeeded", "failed", "cancelled", "retry"],
        record: dict[str, Any],
        now_ms: int,
    ) -> int:
        """-1: this attempt was already finished (nothing changed); 1: the batch is now over."""
        args: list[str | int] = [
            environment_id, str(index), outcome, json.dumps(record), run_key(host), now_ms, batch.retention_ms,
            ACTIVE_KEY,
        ]  # fmt: skip
        return int(self._call(batch.batch_id, "finish", *args))

    def unplaceable(self, batch: Batch, index: int, record: dict[str, Any], now_ms: int) -> int:
        args: list[str | int] = [str(index), json.dumps(record), now_ms, batch.retention_ms, ACTIVE_KEY]
        return int(self._call(batch.batch_id, "unplaceable", *args))

    def cancel(self, batch: Batch, reason: str, now_ms: int) -> list[str]:
        return cast(list[str], self._call(batch.batch_id, "cancel", reason, now_ms, batch.retention_ms, ACTIVE_KEY))

    def requeue(self, batch: Batch, records: dict[int, dict[str, Any]]) -> int:
        flat = [x for i, rec in records.items() for x in (str(i), json.dumps(rec))]
        return int(self._call(batch.batch_id, "requeue", self.ttl_ms + batch.retention_ms, ACTIVE_KEY, *flat))

    def running_on(self, host_id: str) -> dict[str, str]:
        """Environment id -> batch id of the attempts running on a host."""
        return cast(dict[str, str], self.r.hgetall(run_key(host_id)))

    def find_idempotent(self, tenant: str, key: str) -> str | None:
        return cast(str | None, self.r.get(idem_key(tenant, key)))


def template_of(job: JobSpec) -> JobTemplate:
    """The batch template of a ``JobSpec`` (its id, stdin and detach settings do not apply to batches)."""
    fields = {name: getattr(job, name) for name in JobTemplate.model_fields}
    return JobTemplate.model_validate(fields)


def wait_exit_code(batch: dict[str, str]) -> int:
    """``corral batch wait``'s exit code (Nomad's convention): 0 every job succeeded, 1 some failed or
    were cancelled, 2 some could not be placed at all."""
    if int(batch.get("unplaceable") or 0):
        return 2
    return 1 if int(batch.get("failed") or 0) or int(batch.get("cancelled") or 0) else 0

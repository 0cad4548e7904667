"""The one task base class: request validation, host check, error conversion and retry policy.

Every failure leaves a task as an ``AgentError`` (the JSON result backend rebuilds it typed on the
client). A pydantic validation error becomes ``InvalidRequest`` listing field locations and
messages but never the offending input (it could be large or sensitive); a document larger than
``MAX_REQUEST_BYTES`` is refused before it is parsed at all, and the process specs that later steps
of a chain carry in the same message are judged on size at its first step (``admit_chained``). Only
``retryable`` errors are retried, with capped exponential backoff; nothing retries a bad request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar, overload

import redis
from celery import Task
from celery.exceptions import Retry
from pydantic import BaseModel, ValidationError

from corral.celeryconf import TASK_PREFIX
from corral.contract.errors import AgentError, InvalidRequest, Retryable
from corral.contract.models import IsolatedProcessSpec
from corral.contract.operations import Operation
from corral.contract.wire import WireResult, to_wire
from corral.host import metrics
from corral.host.services import coordinator
from corral.sandbox.policy import MAX_REQUEST_BYTES
from corral.settings import load_settings

log = logging.getLogger("corral.tasks")

R = TypeVar("R", bound=BaseModel | str)
Q = TypeVar("Q", bound=BaseModel)

MAX_RETRIES = 5


def document_size_over(payload: Any, limit: int) -> bool:
    """Whether a decoded JSON document is bigger than ``limit`` (about its JSON size: string lengths
    plus a few bytes per value), walked iteratively and stopping as soon as it is: an absurd request
    is refused before pydantic builds (and copies) it."""
    total = 0
    stack = [payload]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) + 2
        elif isinstance(item, dict | list | tuple):
            total += 2 + len(item)
        else:
            total += 8
        if total > limit:
            return True
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def chained_processes(chain: Any) -> list[tuple[str, Any]]:
    """(environment id, process document) of every later step that Celery embedded in this message
    (the first message of a chain carries all the rest, each step's request as its first argument)."""
    found: list[tuple[str, Any]] = []
    for step in chain if isinstance(chain, list | tuple) else ():
        args = step.get("args") if isinstance(step, dict) else None
        request = args[0] if isinstance(args, list | tuple) and args else None
        if isinstance(request, dict) and isinstance(request.get("process"), dict):
            env = request.get("environment")
            env_id = env.get("environment_id") if isinstance(env, dict) else None
            if isinstance(env_id, str):
                found.append((env_id, request["process"]))
    return found


def validation_error(exc: ValidationError, model: type[BaseModel]) -> InvalidRequest:
    problems = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()[:5]]
    more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return InvalidRequest(
        f"invalid {model.__name__}: " + "; ".join(problems) + more,
        context={"model": model.__name__, "errors": str(exc.error_count())},
    )


class CorralTask(Task):  # type: ignore[misc]
    abstract = True
    acks_late = True
    reject_on_worker_lost = True
    max_retries = MAX_RETRIES
    throws = (AgentError,)  # expected outcomes: logged as one line, not as a crash traceback

    def parse(self, model: type[Q], payload: Any, max_bytes: int = MAX_REQUEST_BYTES) -> Q:
        if document_size_over(payload, max_bytes):
            raise InvalidRequest(
                f"{model.__name__} document is larger than {max_bytes} bytes; refused before parsing",
                context={"model": model.__name__, "max_bytes": max_bytes},
            )
        try:
            return model.model_validate(payload)
        except ValidationError as exc:
            raise validation_error(exc, model) from None

    def last_attempt(self) -> bool:
        """No retry follows this delivery (retries spent, or run eagerly)."""
        return bool(self.request.is_eager) or self.request.retries >= self.max_retries

    def check_host(self, host: str | None) -> None:
        here = load_settings().host.id
        if host is not None and host != here:
            raise InvalidRequest(f"task for host {host} delivered to host {here}", context={"host": host})

    def admit_chained(self) -> None:
        """Judge the process specs that later steps of this chain carry on their size, now: a process
        the host would refuse at prepare_environment stops the chain at its first step, before its
        payload is published again with each step (the authoritative checks still run later)."""
        chained = chained_processes(getattr(self.request, "chain", None))
        for env_id, process in chained:
            coordinator().admit_chained_process(
                Operation(self.name.removeprefix(TASK_PREFIX)), env_id, self.parse(IsolatedProcessSpec, process)
            )

    @overload
    def run_operation(self, host: str | None, call: Callable[[], BaseModel]) -> dict[str, Any]: ...
    @overload
    def run_operation(self, host: str | None, call: Callable[[], str]) -> str: ...
    def run_operation(self, host: str | None, call: Callable[[], R]) -> WireResult:
        """Run one contract operation and return its JSON-safe result, converting every failure;
        its outcome and duration go to the host's metrics (``corral.host.metrics``)."""
        started = time.monotonic()
        outcome, error = "ok", None
        try:
            return self._run_operation(host, call)
        except Retry as exc:  # a transient failure, sent again with a backoff
            outcome, error = "retry", exc.exc if isinstance(exc.exc, AgentError) else None
            raise
        except AgentError as exc:
            outcome, error = "error", exc
            raise
        finally:
            operation = str(self.name).removeprefix("corral.")
            metrics.observe_operation(operation, time.monotonic() - started, outcome, error)

    def _run_operation(self, host: str | None, call: Callable[[], R]) -> WireResult:
        try:
            self.check_host(host)
            self.admit_chained()
            return to_wire(call())
        except AgentError as exc:
            if exc.retryable and not self.last_attempt():
                log.warning("retrying %s after %s", self.name, exc)
                raise self.retry(exc=exc, countdown=min(2**self.request.retries, 30)) from None
            raise
        except redis.RedisError as exc:
            # The state store blipped (restart, failover): transient. The retry finds the key held
            # by this same process and takes it over at once; effects are idempotent.
            error = Retryable(f"state store unavailable: {exc.__class__.__name__}", kind="journal_failure")
            if not self.last_attempt():
                raise self.retry(exc=error, countdown=min(2**self.request.retries, 30)) from None
            raise error from None
        except Exception as exc:
            log.exception("unexpected failure in %s", self.name)
            raise AgentError(
                f"{self.name} failed unexpectedly: {exc.__class__.__name__}",
                retry="not_retryable",
                context={"task": self.name},
            ) from None

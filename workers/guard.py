"""The worker's gate: a task message that is not validly signed is dropped, counted and journaled.

``GuardedConsumer`` (Celery's ``worker_consumer``) refuses, before any strategy or pool sees it:

- a message of any content type other than ``corral-signed`` (JSON, pickle, raw ``application/data``,
  which kombu would otherwise hand over undecoded);
- a signed message whose signature does not verify or whose signer no trust store knows
  (``corral.trust.signing`` raises, kombu reports a decode error);
- a client-signed message that is not a task, or an otherwise invalid task message;
- a message whose task name or id (headers, not signed) differ from the ones bound into the signed
  body (``corral.trust.signing.BIND_KEY``): a captured body replayed as another task;
- a message whose headers carry request fields the signature does not cover (``UNCOVERED_HEADERS``);
- a compressed message: kombu inflates a body whose ``compression`` header names a codec as soon as
  the message is read, so a few hundred KiB of zlib became hundreds of MiB in this process before any
  check. Nothing in corral compresses task messages; this process's codecs refuse to decompress.

Each refusal acks the message (so it is never redelivered), adds one to the host's
``corral:rejected:<host>`` counter (by reason) and appends a ``denial`` record to the host journal
with the task name, the task id and the reason only: nothing of the refused payload is kept or logged.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from celery.worker.consumer import Consumer
from kombu import compression

from corral.state.services import Services, state_services
from corral.trust.signing import CONTENT_TYPE, SignatureRejected, bound_headers

log = logging.getLogger("corral.guard")

_PRINTABLE = re.compile(r"[^A-Za-z0-9._:@-]")

UNCOVERED_HEADERS = ("callbacks", "errbacks", "chain", "chord", "stamped_headers", "stamps")
"""Celery builds a task's request from the headers, then the signed embed over them: a body without
a ``chain`` key let a ``chain`` header stand, and the worker published it with its own key. Stamps
name options a retry re-publishes. None of these belong in a header."""


def _refuse_compressed(body: Any) -> bytes:
    raise SignatureRejected("compressed message")


def refuse_compressed_bodies() -> None:
    """Replace every kombu codec's decoder in this process with a refusal (kombu's registry is global)."""
    for content_type in compression.encoders():  # type: ignore[no-untyped-call]
        encoder, _ = compression.get_encoder(content_type)  # type: ignore[no-untyped-call]
        compression.register(encoder, _refuse_compressed, content_type)  # type: ignore[no-untyped-call]


def _header(message: Any, name: str) -> str:
    """A header value shortened to safe characters (they are the sender's words, not ours)."""
    value = (getattr(message, "headers", None) or {}).get(name)
    return _PRINTABLE.sub("?", str(value))[:100] if value is not None else ""


def reason_of(exc: BaseException) -> str:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, SignatureRejected):
            return seen.reason
        inner = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        seen = inner or seen.__cause__ or seen.__context__
    return "invalid message"


class GuardedConsumer(Consumer):  # type: ignore[misc]
    _services: Services | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        refuse_compressed_bodies()
        super().__init__(*args, **kwargs)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        handler = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Any) -> Any:
            if message.content_type != CONTENT_TYPE:
                return self.refuse(message, "unsigned")
            if any((getattr(message, "headers", None) or {}).get(name) for name in UNCOVERED_HEADERS):
                return self.refuse(message, "headers carry request fields the signature does not cover")
            try:
                body = message.decode()  # verified (and stamped) once; kombu caches it for the strategy
            except Exception as exc:
                return self.on_decode_error(message, exc)
            headers = getattr(message, "headers", None) or {}
            if bound_headers(body) != [headers.get("task"), headers.get("id")]:
                return self.refuse(message, "headers do not match the signed body")
            return handler(message)

        return on_task_received

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        self.refuse(message, reason_of(exc))

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        self.refuse(message, reason_of(exc))

    def refuse(self, message: Any, reason: str) -> None:
        task, task_id = _header(message, "task"), _header(message, "id")
        log.warning("refused task message %s[%s]: %s", task or "?", task_id or "?", reason)
        try:
            if self._services is None:
                self._services = state_services()
            services = self._services
            host = services.settings.host.id
            services.store.count_rejection(host, reason)
            services.journal.append_host(
                host, "denial", {"op": task, "task_id": task_id, "rule": "signature", "reason": reason}
            )
        except Exception:  # the message is refused whether or not the record could be written
            log.exception("could not record a refused message")
        finally:
            message.ack()

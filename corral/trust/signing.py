"""Signed task messages: a worker runs only what a key it trusts has signed, as the signer.

Every process has an Ed25519 key pair and a self-signed X.509 certificate whose subject common name
is its *identity* (``corral keys`` makes them). Messages are serialized by the kombu serializer
``corral-signed``: the JSON body is signed, and the signer's certificate fingerprint travels with it::

    MAGIC (8 bytes) | SHA-256 fingerprint of the signer's certificate (32) | signature (64) | JSON body

A worker looks the fingerprint up in two trust stores (``security.component_certs`` and
``security.client_certs``, directories of certificates) and verifies the signature over the body
bytes before it decodes any JSON. Then:

- signed by a **fleet component** (an identity starting with ``corral-``: host workers, beat, found in
  the component store only): the body is taken as it is. Workers publish chain steps and reclaims on
  behalf of the original caller, so the caller they carry is kept.
- signed by a **client**: the body must be a task message (protocol 2 ``[args, kwargs, embed]``), and
  the ``caller`` keyword argument is overwritten with the signer's identity in the message and in
  every signature embedded in it (callbacks, errbacks, chain, chord, recursively): a client cannot
  put another identity into a later chain step, which a worker publishes with its own key. Anything
  else a client signs (a worker control command, say) is refused, and so is whatever would carry a
  signature past the stamp: a task that is not corral's (Celery's ``celery.chord``/``chord_unlock``
  take signatures as *arguments* and have the worker publish them), an embedded signature type other
  than chain/group/chord (``xmap``/``chunks`` call the task in-process), a chain item that is not a
  signature (Celery turns a bare task name into one), and an embed key other than the stamped ones
  (Celery merges every embed key into the task's request: ``kwargs`` there is what a retry re-sends).
- anything else (another content type, an unknown signer, a bad signature, a malformed envelope) is
  refused: kombu raises ``DecodeError`` and the worker's guard (``workers.guard``) drops the message,
  counts it and journals it without running anything.

A client certificate whose name starts with ``corral-`` is never loaded as a client, and a component
store certificate without that prefix is ignored: the two stores cannot be confused.

Only message bodies are signed (like Celery's ``auth`` serializer), so the task name and id from the
headers are copied into the signed body (``BIND_KEY`` in the embed, by a ``before_task_publish``
handler) and the worker's guard refuses a message whose headers differ: a captured signed body cannot
be replayed as another task. Other headers (ETA, expiry, retries) are not covered. Results and events
stay JSON; the Redis ACL decides who may write them (``corral.trust.credentials``).
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from celery.signals import before_task_publish
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID
from kombu.serialization import registry
from kombu.utils.json import dumps as json_dumps
from kombu.utils.json import loads as json_loads

from corral.settings import Settings
from corral.trust.identity import CALLER_KWARG, is_component

log = logging.getLogger("corral.trust.signing")

SERIALIZER = "corral-signed"
CONTENT_TYPE = "application/x-corral-signed"
MAGIC = b"corral1\n"
_FP = 32
_SIG = 64
_HEAD = len(MAGIC) + _FP + _SIG
EMBED_KEYS = ("callbacks", "errbacks", "chain", "chord")
BIND_KEY = "corral_bind"
"""Embed key holding ``[task name, task id]`` as the publisher's headers said, inside the signature."""
CLIENT_TASK_PREFIX = "corral."
"""The only tasks a client may name, at the top of a message and in every signature it embeds."""
CANVAS_TYPES = ("chain", "group", "chord")
_CLIENT_EMBED = frozenset((*EMBED_KEYS, BIND_KEY))


def bind_headers(sender: Any = None, body: Any = None, headers: Any = None, **_: Any) -> None:
    """``before_task_publish``: copy the task name and id into the body that is about to be signed."""
    if isinstance(body, list | tuple) and len(body) == 3 and isinstance(body[2], dict) and isinstance(headers, dict):
        body[2][BIND_KEY] = [headers.get("task"), headers.get("id")]


def bound_headers(body: Any) -> list[Any] | None:
    embed = body[2] if isinstance(body, list | tuple) and len(body) == 3 else None
    bound = embed.get(BIND_KEY) if isinstance(embed, dict) else None
    return bound if isinstance(bound, list) else None


class SignatureRejected(Exception):
    """A message that must not run; ``reason`` is a short fixed phrase safe to journal."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Signer:
    identity: str
    fingerprint: bytes
    public_key: Ed25519PublicKey
    component: bool


def _load_cert(path: Path) -> tuple[str, bytes, Ed25519PublicKey]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    key = cert.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 certificate")
    now = datetime.datetime.now(datetime.UTC)
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        raise ValueError("certificate not valid now")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not str(names[0].value):
        raise ValueError("certificate has no single common name")
    fingerprint = cert.fingerprint(hashes.SHA256())
    return str(names[0].value), fingerprint, key


def load_trust(directory: str | None, component: bool) -> dict[bytes, Signer]:
    """Every valid certificate (``*.pem``/``*.crt``) of a store, by fingerprint; misfits are logged and skipped."""
    store: dict[bytes, Signer] = {}
    if not directory:
        return store
    for path in sorted(Path(directory).glob("*")):
        if path.suffix not in (".pem", ".crt") or not path.is_file():
            continue
        try:
            identity, fingerprint, key = _load_cert(path)
        except (ValueError, OSError) as exc:
            log.warning("trust store %s: skipping %s (%s)", directory, path.name, exc)
            continue
        if is_component(identity) != component:
            log.warning(
                "trust store %s: skipping %s: %r is %s component name",
                directory,
                path.name,
                identity,
                "not a" if component else "a",
            )
            continue
        store[fingerprint] = Signer(identity, fingerprint, key, component)
    return store


def stamp(body: Any, identity: str) -> Any:
    """Overwrite ``caller`` in a protocol 2 task body and every signature embedded in it."""
    if not (isinstance(body, list | tuple) and len(body) == 3 and isinstance(body[1], dict)):
        raise SignatureRejected("client-signed message is not a task")
    args, kwargs, embed = body
    kwargs[CALLER_KWARG] = identity
    if embed is not None:
        if not isinstance(embed, dict):
            raise SignatureRejected("client-signed message is not a task")
        if not _CLIENT_EMBED.issuperset(embed):
            raise SignatureRejected("client-signed message carries fields outside the task")
        bound = bound_headers(body)
        if bound is not None:  # without it the guard refuses the message anyway
            _client_task(bound[0] if bound else None)
        for key in EMBED_KEYS:
            for signature in _signatures(embed.get(key)):
                _stamp_signature(signature, identity)
    return [args, kwargs, embed]


def _client_task(name: Any) -> None:
    if not (isinstance(name, str) and name.startswith(CLIENT_TASK_PREFIX)):
        raise SignatureRejected("client may send only corral tasks")


def _signatures(value: Any) -> Iterator[dict[str, Any]]:
    if value is None:
        return
    if isinstance(value, dict):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _signatures(item)
    else:  # Celery makes a signature of a bare task name too, without any caller
        raise SignatureRejected("client-signed message embeds something that is not a signature")


def _stamp_signature(signature: dict[str, Any], identity: str) -> None:
    kwargs = signature.get("kwargs")
    if not isinstance(kwargs, dict):
        kwargs = signature["kwargs"] = {}
    kind = signature.get("subtask_type")
    if kind is None:
        _client_task(signature.get("task"))
        kwargs[CALLER_KWARG] = identity
    elif kind in CANVAS_TYPES:  # their kwargs hold the member signatures (tasks, header, body)
        for key in ("tasks", "header", "body"):
            for inner in _signatures(kwargs.get(key)):
                _stamp_signature(inner, identity)
    else:  # xmap, xstarmap, chunks: the worker calls the task in-process, past any stamp
        raise SignatureRejected("client-signed message embeds an unsupported signature type")
    options = signature.get("options")
    if isinstance(options, dict):
        for key in ("link", "link_error", "chord", "chain"):
            for inner in _signatures(options.get(key)):
                _stamp_signature(inner, identity)


class MessageSigner:
    """The ``corral-signed`` serializer: signs with this process's key, verifies against the stores."""

    def __init__(
        self,
        key: Ed25519PrivateKey | None,
        fingerprint: bytes | None,
        clients: dict[bytes, Signer],
        components: dict[bytes, Signer],
    ) -> None:
        self._key = key
        self._fingerprint = fingerprint
        self._trusted = {**clients, **components}

    def serialize(self, data: Any) -> bytes:
        if self._key is None or self._fingerprint is None:
            raise SignatureRejected("this process has no signing key (security.key_file)")
        body = json_dumps(data)  # type: ignore[no-untyped-call]
        raw = body.encode() if isinstance(body, str) else bytes(body)
        return MAGIC + self._fingerprint + self._key.sign(raw) + raw

    def deserialize(self, data: bytes | str) -> Any:
        raw = data.encode("latin-1") if isinstance(data, str) else bytes(data)
        signer, body = self.verify(raw)
        decoded = json_loads(body)  # type: ignore[no-untyped-call]
        return decoded if signer.component else stamp(decoded, signer.identity)

    def verify(self, raw: bytes) -> tuple[Signer, bytes]:
        if len(raw) < _HEAD or not raw.startswith(MAGIC):
            raise SignatureRejected("malformed envelope")
        fingerprint = raw[len(MAGIC) : len(MAGIC) + _FP]
        signer = self._trusted.get(fingerprint)
        if signer is None:
            raise SignatureRejected("unknown signer")
        body = raw[_HEAD:]
        try:
            signer.public_key.verify(raw[len(MAGIC) + _FP : _HEAD], body)
        except InvalidSignature:
            raise SignatureRejected("bad signature") from None
        return signer, body


def load_key(path: str) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


@lru_cache(maxsize=8)
def _identity_of_cert(path: str) -> tuple[str, bytes]:
    identity, fingerprint, _ = _load_cert(Path(path))
    return identity, fingerprint


def identity(settings: Settings) -> str | None:
    """This process's identity: the common name of its certificate (None without one)."""
    if not settings.security.cert_file:
        return None
    return _identity_of_cert(settings.security.cert_file)[0]


def build_signer(settings: Settings) -> MessageSigner:
    sec = settings.security
    key = load_key(sec.key_file) if sec.key_file else None
    fingerprint = _identity_of_cert(sec.cert_file)[1] if sec.cert_file else None
    if (key is None) != (fingerprint is None):
        raise RuntimeError("security.key_file and security.cert_file must be set together")
    return MessageSigner(
        key, fingerprint, load_trust(sec.client_certs, component=False), load_trust(sec.component_certs, component=True)
    )


def register(settings: Settings) -> MessageSigner:
    """Register (or replace) the ``corral-signed`` serializer for this process; kombu's registry is global."""
    signer = build_signer(settings)
    before_task_publish.connect(bind_headers, weak=False, dispatch_uid="corral-bind-headers")
    registry.register(  # type: ignore[no-untyped-call]
        SERIALIZER, signer.serialize, signer.deserialize, content_type=CONTENT_TYPE, content_encoding="binary"
    )
    return signer


def signing_ready(settings: Settings) -> bool:
    return bool(settings.security.key_file and settings.security.cert_file)


# -- key creation (``corral keys``, ``corral dev``, tests) ------------------------------------------


def create_identity(name: str, directory: Path, days: int = 825) -> tuple[Path, Path]:
    """A new Ed25519 key (0600) and self-signed certificate for ``name`` in ``directory`` (0700):
    ``<name>.key`` and ``<name>.pem``. An existing pair is kept (never silently replaced)."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"invalid identity name {name!r}")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    if key_path.exists() and cert_path.exists():
        return key_path, cert_path
    key = Ed25519PrivateKey.generate()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .sign(key, None)
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def trust(cert_path: Path, store: Path) -> Path:
    """Copy a certificate into a trust store directory."""
    store.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = store / cert_path.name
    target.write_bytes(cert_path.read_bytes())
    return target

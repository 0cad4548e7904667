"""Message signing (``corral.trust.signing``): verification, the two trust stores, caller stamping."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, chain
from kombu.serialization import registry

from corral.trust.credentials import Fleet, init_fleet
from corral.trust.signing import (
    MAGIC,
    MessageSigner,
    SignatureRejected,
    create_identity,
    load_key,
    load_trust,
    trust,
)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return init_fleet(tmp_path_factory.mktemp("fleet"), ["corral-host-a", "alice", "bob"])


def signer_for(fleet: Fleet, name: str) -> MessageSigner:
    """A process signing as ``name`` that verifies like a worker of ``fleet``."""
    from corral.trust.signing import _identity_of_cert

    return MessageSigner(
        load_key(str(fleet.key(name))),
        _identity_of_cert(str(fleet.cert(name)))[1],
        load_trust(str(fleet.clients), component=False),
        load_trust(str(fleet.components), component=True),
    )


def worker(fleet: Fleet) -> MessageSigner:
    return signer_for(fleet, "corral-host-a")


def test_component_message_is_kept_as_signed(fleet: Fleet) -> None:
    body = [[{"x": 1}], {"host": "a", "caller": "alice"}, {"chain": None}]
    assert worker(fleet).deserialize(worker(fleet).serialize(body)) == body


def test_client_caller_is_overwritten_with_the_signer(fleet: Fleet) -> None:
    body = [[{"x": 1}], {"host": "a", "caller": "bob"}, None]
    args, kwargs, _ = worker(fleet).deserialize(signer_for(fleet, "alice").serialize(body))
    assert kwargs == {"host": "a", "caller": "alice"}
    assert args == [{"x": 1}]


def test_missing_caller_is_added_for_a_client(fleet: Fleet) -> None:
    _, kwargs, _ = worker(fleet).deserialize(signer_for(fleet, "alice").serialize([[], {}, None]))
    assert kwargs == {"caller": "alice"}


def test_every_embedded_signature_of_a_real_celery_chain_is_stamped(fleet: Fleet) -> None:
    """The body Celery itself builds for a chain with an errback: steps 2.. and the errback carry
    another identity, and all of them come out as the signer's."""
    captured: list[Any] = []

    def capture(data: Any) -> str:
        captured.append(data)
        return json.dumps(data)

    registry.register("capture", capture, json.loads, content_type="application/x-capture")  # type: ignore[no-untyped-call]
    app = Celery("t", broker="memory://", set_as_current=False)
    app.conf.task_serializer = "capture"
    steps = [app.signature(f"corral.step{i}", kwargs={"caller": "bob"}, immutable=True) for i in range(3)]
    workflow = chain(*steps)
    on_error = app.signature("corral.cleanup", kwargs={"caller": "bob"}, immutable=True)
    on_error.link(app.signature("corral.after", kwargs={"caller": "bob"}))
    workflow.link_error(on_error)
    workflow.apply_async()
    body = captured[-1]
    stamped = worker(fleet).deserialize(signer_for(fleet, "alice").serialize(list(body)))
    callers: list[Any] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if "task" in value and isinstance(value.get("kwargs"), dict):
                callers.append((value["task"], value["kwargs"].get("caller")))
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(body[2])
    assert {caller for _, caller in callers} == {"bob"}  # what the client put there
    callers.clear()
    walk(stamped[2])
    assert stamped[1]["caller"] == "alice"
    assert {name for name, _ in callers} == {"corral.after", "corral.cleanup", "corral.step1", "corral.step2"}
    assert {caller for _, caller in callers} == {"alice"}


def test_a_client_signed_non_task_is_refused(fleet: Fleet) -> None:
    """A worker control command (a dict body) signed by a client never reaches the worker."""
    control = {"method": "shutdown", "arguments": {}, "destination": None}
    with pytest.raises(SignatureRejected, match="not a task"):
        worker(fleet).deserialize(signer_for(fleet, "alice").serialize(control))
    assert worker(fleet).deserialize(worker(fleet).serialize(control)) == control


def test_unknown_signer_tampered_body_and_garbage_are_refused(fleet: Fleet, tmp_path: Path) -> None:
    create_identity("mallory", tmp_path / "ids")
    from corral.trust.signing import _identity_of_cert

    rogue = MessageSigner(
        load_key(str(tmp_path / "ids" / "mallory.key")),
        _identity_of_cert(str(tmp_path / "ids" / "mallory.pem"))[1],
        {},
        {},
    )
    with pytest.raises(SignatureRejected, match="unknown signer"):
        worker(fleet).deserialize(rogue.serialize([[], {}, None]))
    signed = signer_for(fleet, "alice").serialize([[], {"n": 1}, None])
    with pytest.raises(SignatureRejected, match="bad signature"):
        worker(fleet).deserialize(signed.replace(b'"n": 1', b'"n": 2'))
    with pytest.raises(SignatureRejected, match="malformed"):
        worker(fleet).deserialize(b"[[], {}, null]")
    with pytest.raises(SignatureRejected, match="malformed"):
        worker(fleet).deserialize(MAGIC + b"short")


def test_stores_cannot_be_confused(fleet: Fleet, tmp_path: Path) -> None:
    """A client certificate named like a component is not loaded as a client (nor as a component),
    and a component store ignores a certificate without the component prefix."""
    _, fake = create_identity("corral-host-evil", tmp_path / "ids")
    _, plain = create_identity("carol", tmp_path / "ids")
    clients, components = tmp_path / "clients", tmp_path / "components"
    trust(fake, clients)
    trust(plain, components)
    assert load_trust(str(clients), component=False) == {}
    assert load_trust(str(components), component=True) == {}


def test_a_process_without_a_key_cannot_sign(fleet: Fleet) -> None:
    verifier = MessageSigner(None, None, {}, load_trust(str(fleet.components), component=True))
    with pytest.raises(SignatureRejected, match="no signing key"):
        verifier.serialize([[], {}, None])


def test_credentials_are_private(fleet: Fleet) -> None:
    for path in (fleet.root, fleet.root / "redis", fleet.root / "identities"):
        assert path.stat().st_mode & 0o777 == 0o700
    for path in (fleet.password_file("worker"), fleet.key("alice"), fleet.acl_file):
        assert path.stat().st_mode & 0o777 == 0o600
    acl = fleet.acl_file.read_text()
    assert "user default off" in acl
    assert fleet.password("client") not in acl  # hashed only


def test_corral_keys_init_and_new(tmp_path: Path) -> None:
    """`corral keys` makes a directory a worker, beat, Flower and a client can each start from."""
    from click.testing import CliRunner

    from corral.client.cli import main

    root = tmp_path / "fleet"
    done = CliRunner().invoke(main, ["keys", "init", str(root), "--host", "edge-1", "--client", "airflow"])
    assert done.exit_code == 0, done.output
    assert CliRunner().invoke(main, ["keys", "new", "ci-bot", "--dir", str(root)]).exit_code == 0
    env = dict(line.split("=", 1) for line in (root / "env" / "corral-host-edge-1.env").read_text().splitlines())
    assert env["CORRAL_REDIS__USERNAME"] == "worker"
    clients = load_trust(env["CORRAL_SECURITY__CLIENT_CERTS"], component=False)
    components = load_trust(env["CORRAL_SECURITY__COMPONENT_CERTS"], component=True)
    assert sorted(s.identity for s in clients.values()) == ["airflow", "ci-bot"]
    assert sorted(s.identity for s in components.values()) == ["corral-beat", "corral-host-edge-1"]
    flower = (root / "env" / "flower.env").read_text()
    assert "CORRAL_SECURITY__KEY_FILE=\n" in flower and "CORRAL_REDIS__USERNAME=flower" in flower

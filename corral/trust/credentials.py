"""A fleet's credentials in one directory: Redis ACL users per role, and signing identities.

``corral keys init DIR`` (and ``corral dev``, docker-compose's init service, the test suite) lays out::

    DIR/redis/users.acl              the ACL file for redis-server (``aclfile``): hashed passwords only
    DIR/redis/<role>.password        one password per role (0600)
    DIR/identities/<name>.key|.pem   Ed25519 key (0600) and self-signed certificate per identity
    DIR/trust/components/<name>.pem  certificates of fleet components (``corral-*``): workers, beat
    DIR/trust/clients/<name>.pem     certificates of clients (schedulers); each is one caller identity
    DIR/env/<role>.env               the ``CORRAL_*`` settings of a role (paths only, no secret)

Directories are 0700, key and password files 0600. Nothing existing is ever replaced.

Redis roles (``acl_rules``), least privilege within what Redis ACLs can express:

- ``worker``: the broker (queues, unacked sets, bindings, worker mailboxes), results, state, beat keys
  (a worker may embed beat), every channel; no ``@admin`` or ``@dangerous`` command (``FLUSHALL``,
  ``CONFIG``, ``KEYS``, ``DEBUG``, ...).
- ``client`` (schedulers, the CLI): push to host and fleet queues, declare bindings, publish task
  events, read and forget its results; read-only on the state keys (``corral ps``/``journal``). No
  ``SCAN`` or ``RANDOMKEY``: result keys are named by random task ids, and a client that could list
  them read other tenants' output frames while their jobs streamed (nothing in corral lists keys).
- ``beat``: its redbeat keys, and push to the fleet queue.
- ``flower``: subscribe to events, read queue lengths and bindings; it has no signing key, so it
  cannot send tasks or control commands that a worker would accept.
- ``admin``: everything (operators and the test suite only; never given to a process that runs tasks).

Redis ACLs cannot restrict logical database numbers: a key pattern covers that name in every db.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from corral.trust.signing import create_identity, trust

ROLES = ("worker", "client", "beat", "flower", "admin")

_CONNECT = "+@connection -client +client|setname +client|id"
_RESULTS = "~celery-task-meta-* ~celery-taskset-meta-*"
_BINDINGS = "~_kombu.binding*"
_QUEUES = "~corral.host.* ~corral.fleet*"
_EVENTS = "&/*.celeryev/*"


def acl_rules(broker_db: int = 0) -> dict[str, str]:
    """Each role's ACL rules after ``user NAME on #HASH`` (selectors in parentheses, Redis 7). A
    PSUBSCRIBE pattern must equal an allowed pattern, hence the broker db in Flower's."""
    return {
        "worker": (
            "resetchannels ~corral.* ~corral:* ~unacked ~unacked_index ~unacked_mutex ~*.pidbox* ~celeryev.* "
            f"{_BINDINGS} {_RESULTS} &* +@all -@admin -@dangerous +info"
        ),
        "client": (
            f"resetchannels {_CONNECT} +@transaction %R~corral:* +@read -@dangerous -scan -randomkey "
            f"({_QUEUES} +lpush +rpush +llen) ({_BINDINGS} +sadd +smembers) "
            f"({_RESULTS} &celery-task-meta-* &celery-taskset-meta-* +get +mget +del +subscribe +unsubscribe) "
            f"({_EVENTS} +publish)"
        ),
        "beat": (
            f"resetchannels {_CONNECT} +@transaction ~corral:redbeat:* +@read +@write +@scripting -@dangerous "
            f"({_QUEUES} +lpush +rpush +llen) ({_BINDINGS} +sadd +smembers) ({_EVENTS} +publish) "
            "(&celery-task-meta-* +subscribe +unsubscribe)"  # Celery subscribes to each sent task's result
        ),
        "flower": (
            f"resetchannels {_CONNECT} +@transaction +script|exists +script|load {_QUEUES} +llen "
            f"({_BINDINGS} +smembers +sadd +srem +zadd +zrem +zrangebyscore +exists +del +time +evalsha +eval) "
            f"(~celeryev.* +llen +del) ({_EVENTS} &/{broker_db}.celeryev/* &/*.celery.pidbox* "
            "+psubscribe +subscribe +punsubscribe +unsubscribe +publish)"
        ),
        "admin": "~* &* +@all",
    }


DEFAULT_USER = "user default off resetpass ~* &* +@all"
"""No connection can become ``default`` (off, no password: anonymous clients get ``NOAUTH``), yet it
keeps every permission: Redis 7.0 replays an AOF's MULTI/EXEC blocks as the default user, and with
``-@all`` it drops them (``NOPERM ... after processing the command 'exec'``), losing every Lua or
transactional write on restart. Seen here with redis-server 7.0.15."""


def acl_line(role: str, password: str) -> str:
    digest = hashlib.sha256(password.encode()).hexdigest()
    return f"user {role} on #{digest} {acl_rules()[role]}"


@dataclass(frozen=True)
class Fleet:
    """Paths of one credentials directory."""

    root: Path

    @property
    def acl_file(self) -> Path:
        return self.root / "redis" / "users.acl"

    def password_file(self, role: str) -> Path:
        return self.root / "redis" / f"{role}.password"

    def key(self, name: str) -> Path:
        return self.root / "identities" / f"{name}.key"

    def cert(self, name: str) -> Path:
        return self.root / "identities" / f"{name}.pem"

    @property
    def components(self) -> Path:
        return self.root / "trust" / "components"

    @property
    def clients(self) -> Path:
        return self.root / "trust" / "clients"

    def env_file(self, role: str) -> Path:
        return self.root / "env" / f"{role}.env"

    def password(self, role: str) -> str:
        return self.password_file(role).read_text().strip()

    def role_env(self, role: str, identity: str | None = None) -> dict[str, str]:
        """The ``CORRAL_*`` variables a process of this role needs (paths, no secret values)."""
        env = {"CORRAL_REDIS__USERNAME": role, "CORRAL_REDIS__PASSWORD_FILE": str(self.password_file(role))}
        # Without an identity the key settings are set empty, so they override any inherited ones (a
        # Flower started from a client's environment must not sign as that client).
        env["CORRAL_SECURITY__KEY_FILE"] = str(self.key(identity)) if identity else ""
        env["CORRAL_SECURITY__CERT_FILE"] = str(self.cert(identity)) if identity else ""
        if role in ("worker", "beat", "flower", "admin"):
            env["CORRAL_SECURITY__COMPONENT_CERTS"] = str(self.components)
        if role == "worker":
            env["CORRAL_SECURITY__CLIENT_CERTS"] = str(self.clients)
        return env


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def add_identity(fleet: Fleet, name: str) -> Path:
    """A key pair for ``name``, its certificate trusted as a component (``corral-*``) or a client."""
    _, cert = create_identity(name, fleet.root / "identities")
    from corral.trust.identity import is_component

    return trust(cert, fleet.components if is_component(name) else fleet.clients)


def init_fleet(root: Path, identities: list[str]) -> Fleet:
    """Create (or complete) a credentials directory: a password per role, the ACL file, the identities
    (``corral-host-<id>``, ``corral-beat``, client names) and an env file per role."""
    fleet = Fleet(root)
    for sub in (
        root,
        root / "redis",
        root / "identities",
        root / "trust",
        fleet.components,
        fleet.clients,
        root / "env",
    ):
        _private_dir(sub)
    for role in ROLES:
        if not fleet.password_file(role).exists():
            _write_private(fleet.password_file(role), secrets.token_urlsafe(32) + "\n")
    acl = f"{DEFAULT_USER}\n"
    acl += "".join(f"{acl_line(role, fleet.password(role))}\n" for role in ROLES)
    _write_private(fleet.acl_file, acl)
    for name in identities:
        add_identity(fleet, name)
    return fleet


def env_lines(env: dict[str, str]) -> str:
    return "".join(f"{k}={v}\n" for k, v in sorted(env.items()))

"""Secret providers: secret values by name, looked up only on the host that runs the sandbox.

A provider is anything with ``resolve(name) -> bytes | None`` (the ``SecretProvider`` protocol):
``None`` means "not mine, ask the next one". A ``SecretChain`` asks its providers in order; the
first value wins, and a name no provider knows is ``NotFound`` naming the secret (never a value).

Built-in providers:

- ``DirectoryProvider``: the file ``<dir>/<name>`` (its exact bytes); the directory is
  ``host.secrets_dir`` (default ``/etc/corral/secrets``);
- ``EnvironmentProvider``: the variable ``CORRAL_SECRET_<NAME>`` of the worker's environment
  (``NAME`` upper-cased, ``-`` and ``.`` become ``_``).

Plug-ins are named in the host settings by import path, ``"package.module:Attribute"``::

    [host]
    secret_providers = ["corral.sandbox.secrets:DirectoryProvider", "corral.sandbox.secrets:EnvironmentProvider",
                        "mypkg.vault:VaultProvider"]

They are imported only where a runtime is built, that is on the worker that runs the sandbox; a
client never imports them and never sees a value. The attribute is used like this: if it has a
``from_settings`` callable, ``attr.from_settings(host_settings)`` builds the provider; else if it
is a class or function, ``attr()`` does; else it must itself be a provider object. A provider may
raise ``corral.contract.errors.AgentError`` (for example ``NotFound`` for a value it holds but may not
give); any other exception is reported as ``HostConfigurationNeeded`` naming the provider and the
secret, never the exception text (which could quote a value).

Values never leave this module except to be materialized into a sandbox or used for redaction:
they are not returned by any contract operation, logged, journaled, or put in task arguments.
"""

from __future__ import annotations

import importlib
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from corral.contract.errors import AgentError, HostConfigurationNeeded, InvalidRequest, NotFound

if TYPE_CHECKING:
    from corral.settings import HostSettings

ENV_PREFIX = "CORRAL_SECRET_"
DEFAULT_DIRECTORY = "/etc/corral/secrets"
DEFAULT_PROVIDERS = ("corral.sandbox.secrets:DirectoryProvider", "corral.sandbox.secrets:EnvironmentProvider")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_]\w*)*$")


def env_key(name: str, prefix: str = ENV_PREFIX) -> str:
    """The environment variable that may carry secret ``name``."""
    return prefix + name.upper().replace("-", "_").replace(".", "_")


def check_name(name: str) -> str:
    """A secret name is a plain file name: no separators, no leading dot, so no traversal."""
    if not _NAME_RE.match(name):
        raise InvalidRequest("not a valid secret name", context={"secret": name[:64]})
    return name


@runtime_checkable
class SecretProvider(Protocol):
    """One source of secret values. ``None``: this provider does not know the name."""

    def resolve(self, name: str) -> bytes | None: ...


class DirectoryProvider:
    """One file per secret in a host directory (root-owned, 0700, by the operator's choice)."""

    def __init__(self, directory: str | os.PathLike[str] = DEFAULT_DIRECTORY) -> None:
        self.directory = Path(directory)

    @classmethod
    def from_settings(cls, host: HostSettings) -> DirectoryProvider:
        return cls(host.secrets_dir)

    def resolve(self, name: str) -> bytes | None:
        try:
            return (self.directory / check_name(name)).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except PermissionError as exc:
            raise NotFound("secret is not readable by this host", context={"secret": name}) from exc

    def __repr__(self) -> str:
        return f"DirectoryProvider({str(self.directory)!r})"


class EnvironmentProvider:
    """``CORRAL_SECRET_<NAME>`` from the worker's environment (or a given mapping, for tests)."""

    def __init__(self, environ: Mapping[str, str] | None = None, prefix: str = ENV_PREFIX) -> None:
        self._environ = environ
        self.prefix = prefix

    def resolve(self, name: str) -> bytes | None:
        environ = os.environ if self._environ is None else self._environ
        value = environ.get(env_key(check_name(name), self.prefix))
        return None if value is None else os.fsencode(value)

    def __repr__(self) -> str:
        return f"EnvironmentProvider(prefix={self.prefix!r})"


def _label(provider: object) -> str:
    kind = type(provider)
    return f"{kind.__module__}:{kind.__qualname__}"


class SecretChain:
    """Providers asked in order; the first that knows a name gives its value."""

    def __init__(self, providers: Iterable[SecretProvider]) -> None:
        self.providers = list(providers)

    @classmethod
    def default(
        cls, secrets_dir: str | os.PathLike[str] = DEFAULT_DIRECTORY, environ: Mapping[str, str] | None = None
    ) -> SecretChain:
        """The built-in chain: the directory, then the environment."""
        return cls([DirectoryProvider(secrets_dir), EnvironmentProvider(environ)])

    @classmethod
    def from_settings(cls, host: HostSettings) -> SecretChain:
        """The chain ``host.secret_providers`` names (plug-ins imported here, on the worker)."""
        return cls(load_providers(host.secret_providers, host))

    def describe(self) -> list[str]:
        """What each provider is (class names only), for the capability report."""
        return [_label(p) for p in self.providers]

    def resolve(self, name: str) -> bytes:
        check_name(name)
        for provider in self.providers:
            try:
                value = provider.resolve(name)
            except AgentError:
                raise
            except Exception as exc:  # never the exception text: it could quote a value
                raise HostConfigurationNeeded(
                    f"secret provider failed ({type(exc).__name__})",
                    context={"secret": name, "provider": _label(provider)},
                ) from None
            if value is None:
                continue
            if isinstance(value, str):
                return value.encode("utf-8")
            if isinstance(value, (bytes, bytearray, memoryview)):
                return bytes(value)
            raise HostConfigurationNeeded(
                "secret provider returned neither bytes nor None",
                context={"secret": name, "provider": _label(provider)},
            )
        raise NotFound("secret is not known to this host", context={"secret": name})

    def resolve_many(self, names: list[str]) -> tuple[list[bytes], list[str]]:
        """Values of the names that resolve, and the names that do not (for fail-closed callers)."""
        values: list[bytes] = []
        missing: list[str] = []
        for name in names:
            try:
                values.append(self.resolve(name))
            except AgentError:
                missing.append(name)
        return values, missing


def load_provider(path: str, host: HostSettings) -> SecretProvider:
    """Import ``package.module:Attribute`` and build a provider from it (see the module docstring)."""
    if not _PATH_RE.match(path):
        raise HostConfigurationNeeded(
            "a secret provider is named as 'package.module:Attribute'", context={"provider": path[:200]}
        )
    module_name, attr_path = path.split(":", 1)
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr_path.split("."):
            target = getattr(target, part)
    except Exception as exc:
        raise HostConfigurationNeeded(
            f"secret provider cannot be imported ({type(exc).__name__})", context={"provider": path}
        ) from None
    try:
        factory = getattr(target, "from_settings", None)
        if callable(factory):
            provider = factory(host)
        elif isinstance(target, type) or (callable(target) and not isinstance(target, SecretProvider)):
            provider = target()
        else:
            provider = target
    except AgentError:
        raise
    except Exception as exc:
        raise HostConfigurationNeeded(
            f"secret provider cannot be built ({type(exc).__name__})", context={"provider": path}
        ) from None
    if not isinstance(provider, SecretProvider):
        raise HostConfigurationNeeded("secret provider has no resolve(name) method", context={"provider": path})
    return provider


def load_providers(paths: Iterable[str], host: HostSettings) -> list[SecretProvider]:
    return [load_provider(path, host) for path in paths]


def resolve(name: str, secrets_dir: str | os.PathLike[str] | None = None) -> bytes:
    """Resolve one secret with this host's settings: its configured chain, or, given a directory,
    the built-in chain over that directory."""
    if secrets_dir is not None:
        return SecretChain.default(secrets_dir).resolve(name)
    from corral.settings import load_settings

    return SecretChain.from_settings(load_settings().host).resolve(name)


class SessionSecrets:
    """The secret values of each live session, kept in this process's memory for redacting its output
    frames, so a frame read costs no provider call (a Vault round trip, a file read) and a stream of
    thousands of frames does not ask the providers thousands of times.

    An entry is keyed by the session (its slug) and stamped by the caller with what identifies the
    session's list of secret names (the file's inode and mtime): a list written anew, or a new session
    under a reused slug, misses and is resolved again. Only complete answers are kept: while a name
    does not resolve, each read asks again (the frame withholds raw content meanwhile). Bounded: past
    ``max_sessions`` the least recently read session is dropped (it is resolved again on its next
    read). ``drop`` is called at cleanup and reclaim. Values never leave this object except to the
    redactor; they are never written to Redis, a file or a log, and ``repr`` shows a count only.
    """

    def __init__(self, max_sessions: int = 256) -> None:
        self.max_sessions = max_sessions
        self._entries: OrderedDict[str, tuple[Hashable, list[bytes]]] = OrderedDict()
        self._lock = threading.Lock()

    def values(
        self, session: str, stamp: Hashable, resolve: Callable[[], tuple[list[bytes], list[str]]]
    ) -> tuple[list[bytes], list[str]]:
        """The session's values (and the names that did not resolve), from memory when ``stamp`` matches."""
        with self._lock:
            entry = self._entries.get(session)
            if entry is not None and entry[0] == stamp:
                self._entries.move_to_end(session)
                return list(entry[1]), []
        values, missing = resolve()
        if not missing:
            with self._lock:
                self._entries[session] = (stamp, list(values))
                self._entries.move_to_end(session)
                while len(self._entries) > self.max_sessions:
                    self._entries.popitem(last=False)
        return values, missing

    def drop(self, session: str) -> None:
        with self._lock:
            self._entries.pop(session, None)

    def __contains__(self, session: object) -> bool:
        with self._lock:
            return session in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __repr__(self) -> str:
        return f"SessionSecrets({len(self)} session(s))"

"""The host's secret provider: secret values by name, looked up only on the host that runs the work.

Lookup order: a file ``<host.secrets_dir>/<name>`` (its exact bytes), then the environment
variable ``CORRAL_SECRET_<NAME>`` (``NAME`` upper-cased, ``-`` and ``.`` become ``_``). Values
never leave this module except to be materialized into a sandbox or used for redaction; errors
name the secret, never its value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from corral.errors import InvalidRequest, NotFound

ENV_PREFIX = "CORRAL_SECRET_"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def env_key(name: str) -> str:
    """The environment variable that may carry secret ``name``."""
    return ENV_PREFIX + name.upper().replace("-", "_").replace(".", "_")


def check_name(name: str) -> str:
    """A secret name is a plain file name: no separators, no leading dot, so no traversal."""
    if not _NAME_RE.match(name):
        raise InvalidRequest("not a valid secret name", context={"secret": name[:64]})
    return name


class SecretProvider:
    """Resolves secret names to bytes from a host directory, then from the environment."""

    def __init__(self, secrets_dir: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> None:
        self._dir = Path(secrets_dir)
        self._environ = environ

    def resolve(self, name: str) -> bytes:
        check_name(name)
        try:
            return (self._dir / name).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            pass
        except PermissionError as exc:
            raise NotFound("secret is not readable by this host", context={"secret": name}) from exc
        environ = os.environ if self._environ is None else self._environ
        value = environ.get(env_key(name))
        if value is None:
            raise NotFound("secret is not known to this host", context={"secret": name})
        return os.fsencode(value)

    def resolve_many(self, names: list[str]) -> tuple[list[bytes], list[str]]:
        """Values of the names that resolve, and the names that do not (for fail-closed callers)."""
        values: list[bytes] = []
        missing: list[str] = []
        for name in names:
            try:
                values.append(self.resolve(name))
            except (NotFound, InvalidRequest):
                missing.append(name)
        return values, missing


def resolve(name: str, secrets_dir: str | os.PathLike[str] | None = None) -> bytes:
    """Resolve one secret with this host's settings (``settings.host.secrets_dir`` by default)."""
    if secrets_dir is None:
        from corral.settings import load_settings

        secrets_dir = load_settings().host.secrets_dir
    return SecretProvider(secrets_dir).resolve(name)

"""Where the coordinator gets its host policy: a TOML file, re-read when it changes, failing closed.

A policy edited on a running host applies without a restart: ``current()`` stats the file at most
once per ``check_interval_s`` and re-reads it when its mtime (or size or inode, for editors that
replace the file) changed. Each prefork pool process holds its own source, so each re-reads on its own.

Failing closed: a file that is missing, unreadable or invalid makes ``current()`` raise
``PolicyDenial`` (``rule=policy.file``) for every request until it is fixed. The previous good policy
is not kept either: what applies is what the file says, or nothing. Without any configured or
default file (a wheel install with no ``/etc/corral/policy.toml``) the built-in defaults apply; they
are the documented defaults of ``config/policy.toml``, not an allow-all.

On every successful load the alias table (policy aliases plus the legacy ``host.mounts``) is handed
to ``on_load``: ``from_settings`` uses it to rewrite ``HostSettings.mounts`` / ``writable_mounts`` in
place, which is what the Docker runtime resolves aliases from.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from corral.contract.errors import PolicyDenial
from corral.sandbox.policy import HostPolicy, PolicyError, mount_table, parse_policy, symlink_roots, with_legacy_mounts
from corral.settings import Settings, policy_path

log = logging.getLogger("corral.sandbox.policy")

Stamp = tuple[int, int, int]


class PolicySource:
    def __init__(
        self,
        path: Path | None,
        *,
        legacy_mounts: Mapping[str, str] | None = None,
        legacy_writable: Sequence[str] = (),
        check_interval_s: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
        on_load: Callable[[HostPolicy], None] | None = None,
    ) -> None:
        self.path = path
        self._legacy = (dict(legacy_mounts or {}), list(legacy_writable))
        self._interval = check_interval_s
        self._monotonic = monotonic
        self._on_load = on_load
        self._lock = threading.Lock()
        self._checked: float | None = None
        self._stamp: Stamp | None = None
        self._policy: HostPolicy | None = None
        self._error: str | None = None
        if path is None:
            self._use(lambda: HostPolicy(), "built-in defaults")
        else:
            self._check(self._monotonic())

    @classmethod
    def fixed(cls, policy: HostPolicy) -> PolicySource:
        """A source that never reads a file (tests, embedding)."""
        source = cls(None)
        source._policy = policy
        return source

    @classmethod
    def from_settings(cls, settings: Settings) -> PolicySource:
        """This host's source: ``host.policy_file`` (or the default file), the legacy ``host.mounts``
        merged in, and the resulting alias table written back into ``settings.host``."""
        host = settings.host
        mounts, writable = host.configured_mounts()
        return cls(
            policy_path(settings),
            legacy_mounts=mounts,
            legacy_writable=writable,
            check_interval_s=host.policy_check_s,
            on_load=lambda policy: host.use_mount_aliases(*mount_table(policy), symlink_roots(policy)),
        )

    def current(self) -> HostPolicy:
        """The policy in force; ``PolicyDenial`` (``rule=policy.file``) when the file is unusable."""
        if self.path is not None:
            now = self._monotonic()
            if self._checked is None or now - self._checked >= self._interval:
                self._check(now)
        if self._policy is None:
            raise PolicyDenial(
                f"the host policy is unusable, so every request is denied: {self._error}",
                context={"rule": "policy.file"},
            )
        return self._policy

    # -- loading ---------------------------------------------------------------------------------

    def _check(self, now: float) -> None:
        assert self.path is not None
        path = self.path
        with self._lock:
            self._checked = now
            try:
                st = os.stat(path)
            except OSError as exc:
                self._stamp = None
                self._fail(f"cannot read the policy file {path} ({exc.__class__.__name__})")
                return
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp == self._stamp:
                return
            self._stamp = stamp
            self._use(lambda: parse_policy(path.read_text(encoding="utf-8"), str(path)), str(path))

    def _use(self, read: Callable[[], HostPolicy], source: str) -> None:
        try:
            policy = with_legacy_mounts(read(), *self._legacy)
        except (OSError, UnicodeDecodeError, PolicyError) as exc:
            self._fail(str(exc) if isinstance(exc, PolicyError) else f"cannot read {source} ({exc.__class__.__name__})")
            return
        self._policy, self._error = policy, None
        if self._on_load is not None:
            self._on_load(policy)
        log.info("host policy loaded from %s", source)

    def _fail(self, error: str) -> None:
        if error != self._error:
            log.error("host policy unusable, denying every request: %s", error)
        self._policy, self._error = None, error

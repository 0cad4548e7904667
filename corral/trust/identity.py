"""Who is asking: the verified caller of an operation, and the tenant it acts for.

A caller's *identity* is the name its messages are signed with (the subject CN of its certificate,
``corral.trust.signing``); it never comes from a field the client could set freely. Identities of fleet
components (host workers, beat) start with ``COMPONENT_PREFIX``: they publish chain steps and sweeps
on behalf of the original caller, so the caller they carry is kept. The host policy maps every other
identity to a tenant (``corral.sandbox.policy``).
"""

from __future__ import annotations

from dataclasses import dataclass

COMPONENT_PREFIX = "corral-"
"""Identities of fleet components (``corral-host-<id>``, ``corral-beat``); never a client's."""

CALLER_KWARG = "caller"
"""The task keyword argument that carries the caller's identity (stamped by the worker on receipt)."""


def is_component(identity: str) -> bool:
    return identity.startswith(COMPONENT_PREFIX)


@dataclass(frozen=True)
class Caller:
    identity: str
    tenant: str
    operator: bool = False
    """An operator sees and may act on every tenant's sessions (fleet components are operators)."""

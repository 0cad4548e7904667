"""Tenants: who a verified caller acts for, and what its tenant may use on this host.

The host policy's ``[tenants.<name>]`` tables (``corral.sandbox.policy.TenantRules``) map caller identities
(``corral.trust.identity``) to tenants. Each tenant's rules can only *narrow* the host-wide rules: images
(name patterns), mount aliases, network modes, limits and the hosts that serve it. Secrets are the
exception: they are a *grant*, and a tenant may use only the secret names its ``secrets`` patterns
match (none by default), so a secret is never readable by a caller the operator did not name.

Identities map like this, fail closed:

- a fleet component (``corral-*``) is an operator with no tenant: it may act on any session (the
  sweeper's reclaim, the reconciler) but cannot create one;
- with no ``[tenants]`` at all, every identity (the anonymous one too) belongs to the implicit
  tenant ``default`` with the host-wide rules and no secrets (so out of the box a single user works
  unchanged, except that ``--secret`` needs a tenant listing the secret);
- otherwise an identity listed by a tenant belongs to it, an identity listed by none belongs to the
  tenant listing ``*`` if any, and any other identity (a missing caller is ``anonymous``) is denied
  every operation (``rule=tenants.identities``).

Every check is pure and raises ``PolicyDenial`` naming its rule, ``tenants.<name>.<rule>``.
Sessions record the tenant that created them (``corral.host.coordinator``); only that tenant, operators
and components may act on them.
"""

from __future__ import annotations

import fnmatch

from corral.contract.models import ExecutionEnvironment, IsolatedProcessSpec
from corral.sandbox.policy import HostPolicy, TenantRules, deny, image_name
from corral.trust.identity import Caller, is_component

DEFAULT_TENANT = "default"
"""The implicit tenant of a policy that defines none (and of sessions recorded before tenants)."""
ANONYMOUS = "anonymous"
"""The identity of a message that carries no caller (signing off, or an old client)."""
ANY_IDENTITY = "*"
NO_TENANT = ""
"""The tenant of a fleet component: it owns no session and may create none."""
HIDDEN_RULE = "tenants.sessions"
"""The rule of the one answer for a session that does not exist or belongs to another tenant."""

_IMPLICIT = TenantRules(identities=[ANY_IDENTITY])


def resolve_caller(policy: HostPolicy, identity: str | None) -> Caller:
    """The caller an identity is on this host; ``PolicyDenial`` when it belongs to no tenant."""
    who = identity or ANONYMOUS
    if is_component(who):
        return Caller(who, NO_TENANT, operator=True)
    if not policy.tenants:
        return Caller(who, DEFAULT_TENANT)
    catch_all: tuple[str, TenantRules] | None = None
    for name, rules in policy.tenants.items():
        if who in rules.identities:
            return Caller(who, name, rules.operator)
        if ANY_IDENTITY in rules.identities:
            catch_all = (name, rules)
    if catch_all is not None:
        return Caller(who, catch_all[0], catch_all[1].operator)
    deny(f"caller {who} belongs to no tenant on this host", "tenants.identities", identity=who[:128])


def tenant_rules(policy: HostPolicy, caller: Caller) -> TenantRules:
    """The rules of the caller's tenant; a caller without one (a component) may not create sessions."""
    if not policy.tenants and caller.tenant == DEFAULT_TENANT:
        return _IMPLICIT
    rules = policy.tenants.get(caller.tenant)
    if rules is None:
        deny(f"caller {caller.identity} has no tenant that may create sandboxes", "tenants.identities")
    return rules


def _matches(value: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns)


def _at_most(value: float, limit: float | None, what: str, rule: str) -> None:
    if limit is not None and value > limit:
        deny(f"{what} {value:g} exceeds this tenant's maximum {limit:g}", rule)


def secret_names(env: ExecutionEnvironment) -> list[str]:
    secrets = env.spec.secrets
    return [m.secret_ref for m in secrets.secret_mounts] + [e.secret_ref for e in secrets.env_secrets]


def check_tenant(policy: HostPolicy, caller: Caller, env: ExecutionEnvironment, host_id: str) -> None:
    """Everything the caller's tenant rules say about an environment (after ``check_environment``)."""
    rules = tenant_rules(policy, caller)
    rule = f"tenants.{caller.tenant}"
    spec = env.spec
    if rules.hosts is not None and not _matches(host_id, rules.hosts):
        deny(f"host {host_id} does not serve tenant {caller.tenant}", f"{rule}.hosts", host=host_id)
    if spec.image is not None and rules.images is not None:
        name = image_name(spec.image.image_ref)
        if not _matches(name, rules.images):
            deny(f"image {name} is not allowed for tenant {caller.tenant}", f"{rule}.images", image=name)
    if rules.mounts is not None:
        for mount in spec.filesystem.mounts:
            if mount.source_alias not in rules.mounts:
                deny(
                    f"mount alias {mount.source_alias!r} is not allowed for tenant {caller.tenant}",
                    f"{rule}.mounts",
                    alias=mount.source_alias,
                )
    if rules.network_modes is not None and spec.network.kind not in rules.network_modes:
        deny(
            f"network mode {spec.network.kind.value} is not allowed for tenant {caller.tenant}", f"{rule}.network_modes"
        )
    for name in secret_names(env):
        if not _matches(name, rules.secrets):
            hint = "" if policy.tenants else " (no tenants are defined: grant it with a [tenants.NAME] secrets rule)"
            deny(f"secret {name} is not granted to tenant {caller.tenant}{hint}", f"{rule}.secrets", secret=name)
    limits = rules.limits
    _at_most(spec.resources.cpu_quota, limits.max_cpus, "cpus", f"{rule}.limits.max_cpus")
    _at_most(spec.resources.memory_mb, limits.max_memory_mb, "memory_mb", f"{rule}.limits.max_memory_mb")
    _at_most(spec.resources.timeout_ms, limits.max_timeout_ms, "timeout_ms", f"{rule}.limits.max_timeout_ms")
    _at_most(
        spec.resources.process_count, limits.max_process_count, "process_count", f"{rule}.limits.max_process_count"
    )


def check_tenant_process(policy: HostPolicy, caller: Caller, process: IsolatedProcessSpec) -> None:
    """The process spec's own timeout against the tenant's ceiling."""
    if process.timeout_ms is not None:
        limit = tenant_rules(policy, caller).limits.max_timeout_ms
        _at_most(process.timeout_ms, limit, "timeout_ms", f"tenants.{caller.tenant}.limits.max_timeout_ms")


def check_sandboxes(policy: HostPolicy, caller: Caller, live: int) -> None:
    """``live``: the tenant's sandboxes already on this host (the new one would be one more)."""
    limit = tenant_rules(policy, caller).limits.max_sandboxes
    if limit is not None and live >= limit:
        deny(
            f"tenant {caller.tenant} already has {live} sandbox(es) on this host (maximum {limit})",
            f"tenants.{caller.tenant}.limits.max_sandboxes",
        )


def owner_of(record: dict[str, str]) -> str:
    """The tenant a session record belongs to (records written before tenants: ``default``)."""
    return record.get("tenant", DEFAULT_TENANT)


def may_act(caller: Caller, owner: str) -> bool:
    """Whether the caller may see or act on a session owned by tenant ``owner``."""
    return caller.operator or (caller.tenant != NO_TENANT and caller.tenant == owner)


def check_operator(policy: HostPolicy, caller: Caller) -> None:
    """Fleet-wide operations (``corral reconcile``: its report lists every tenant's sessions) are for
    operators and components; with no tenants defined there is no one else to hide anything from."""
    if policy.tenants and not caller.operator:
        deny(f"caller {caller.identity} is not an operator", "tenants.operator")

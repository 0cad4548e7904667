"""corral.host.tenancy: identity -> tenant mapping (fail closed) and every per-tenant rule, as pure checks."""

from __future__ import annotations

import pytest

from corral.contract.errors import PolicyDenial
from corral.contract.models import IsolatedProcessSpec
from corral.fleet.job import JobSpec
from corral.host.tenancy import (
    DEFAULT_TENANT,
    NO_TENANT,
    check_operator,
    check_sandboxes,
    check_tenant,
    check_tenant_process,
    may_act,
    resolve_caller,
)
from corral.sandbox.policy import HostPolicy, PolicyError, parse_policy
from corral.trust.identity import Caller
from tests.unit.policy_helpers import policy_with

TENANTS = policy_with(
    mounts={"data": {"path": "/srv/data"}, "models": {"path": "/srv/models"}},
    tenants={
        "acme": {
            "identities": ["alice", "bob"],
            "images": ["corral/busybox:*"],
            "mounts": ["data"],
            "network_modes": ["disabled"],
            "secrets": ["acme-*", "shared"],
            "limits": {"max_cpus": 2, "max_memory_mb": 1024, "max_timeout_ms": 600_000, "max_sandboxes": 2},
            "hosts": ["edge-*"],
        },
        "globex": {"identities": ["carol"]},
        "ops": {"identities": ["root-team"], "operator": True},
    },
)
ALICE = resolve_caller(TENANTS, "alice")
CAROL = resolve_caller(TENANTS, "carol")


def env(**kwargs: object) -> JobSpec:
    return JobSpec(image=str(kwargs.pop("image", "corral/busybox:latest")), argv=["true"], **kwargs)  # type: ignore[arg-type]


def denied_rule(call: object) -> str:
    assert callable(call)
    with pytest.raises(PolicyDenial) as info:
        call()
    return info.value.context["rule"]


# -- identities ----------------------------------------------------------------------------------


def test_identities_map_to_their_tenant_and_operator_flag() -> None:
    assert resolve_caller(TENANTS, "bob") == Caller("bob", "acme", False)
    assert resolve_caller(TENANTS, "root-team") == Caller("root-team", "ops", True)


@pytest.mark.parametrize("identity", ["mallory", None, "", "anonymous"])
def test_an_identity_no_tenant_lists_is_denied(identity: str | None) -> None:
    assert denied_rule(lambda: resolve_caller(TENANTS, identity)) == "tenants.identities"


def test_catch_all_tenant_takes_unlisted_identities_only() -> None:
    policy = policy_with(tenants={"dev": {"identities": ["*"]}, "acme": {"identities": ["alice"]}})
    assert resolve_caller(policy, "alice").tenant == "acme"
    assert resolve_caller(policy, "someone").tenant == "dev"
    assert resolve_caller(policy, None) == Caller("anonymous", "dev", False)


def test_without_tenants_everyone_is_the_implicit_default_tenant_and_not_an_operator() -> None:
    assert resolve_caller(HostPolicy(), "x") == Caller("x", DEFAULT_TENANT, False)
    assert resolve_caller(HostPolicy(), None) == Caller("anonymous", DEFAULT_TENANT, False)


def test_components_are_operators_without_a_tenant_and_cannot_create() -> None:
    beat = resolve_caller(TENANTS, "corral-beat")
    assert beat == Caller("corral-beat", NO_TENANT, True)
    assert may_act(beat, "acme") and may_act(beat, "globex")
    assert denied_rule(lambda: check_tenant(TENANTS, beat, env().environment(), "edge-1")) == "tenants.identities"


def test_policy_refuses_component_identities_and_identities_in_two_tenants() -> None:
    with pytest.raises(PolicyError, match="fleet components"):
        parse_policy('[tenants.a]\nidentities = ["corral-host-x"]\n')
    with pytest.raises(PolicyError, match="listed by tenants"):
        parse_policy('[tenants.a]\nidentities = ["u"]\n[tenants.b]\nidentities = ["u"]\n')


def test_may_act_only_on_own_tenant_unless_operator() -> None:
    assert may_act(ALICE, "acme")
    assert not may_act(ALICE, "globex")
    assert not may_act(CAROL, "acme")
    assert may_act(resolve_caller(TENANTS, "root-team"), "acme")


# -- per-tenant rules narrow the host's --------------------------------------------------------


def test_an_environment_within_every_rule_passes() -> None:
    job = env(mounts=["data:/data"], secrets=["acme-token"], env_secrets={"K": "shared"}, cpus=2, memory_mb=1024)
    check_tenant(TENANTS, ALICE, job.environment(), "edge-1")


@pytest.mark.parametrize(
    ("job", "host", "rule"),
    [
        (env(), "core-1", "tenants.acme.hosts"),
        (env(image="corral/other:latest"), "edge-1", "tenants.acme.images"),
        (env(mounts=["models:/m"]), "edge-1", "tenants.acme.mounts"),
        (env(network="adapter_defined_denied"), "edge-1", "tenants.acme.network_modes"),
        (env(secrets=["globex-token"]), "edge-1", "tenants.acme.secrets"),
        (env(env_secrets={"K": "other"}), "edge-1", "tenants.acme.secrets"),
        (env(cpus=3), "edge-1", "tenants.acme.limits.max_cpus"),
        (env(memory_mb=2048), "edge-1", "tenants.acme.limits.max_memory_mb"),
        (env(timeout_ms=900_000), "edge-1", "tenants.acme.limits.max_timeout_ms"),
    ],
)
def test_each_tenant_rule_denies_naming_itself(job: JobSpec, host: str, rule: str) -> None:
    assert denied_rule(lambda: check_tenant(TENANTS, ALICE, job.environment(), host)) == rule


def test_secrets_are_a_grant_a_tenant_without_a_secrets_rule_gets_none() -> None:
    job = env(secrets=["acme-token"])
    assert denied_rule(lambda: check_tenant(TENANTS, CAROL, job.environment(), "edge-1")) == "tenants.globex.secrets"


def test_without_tenants_secrets_are_denied_and_the_denial_says_how_to_grant_them() -> None:
    default = resolve_caller(HostPolicy(), "x")
    check_tenant(HostPolicy(), default, env(mounts=[]).environment(), "h")
    with pytest.raises(PolicyDenial, match=r"\[tenants.NAME\] secrets") as info:
        check_tenant(HostPolicy(), default, env(secrets=["token"]).environment(), "h")
    assert info.value.context["rule"] == "tenants.default.secrets"


def test_process_timeout_and_sandbox_count_limits() -> None:
    process = IsolatedProcessSpec(process_id="p1", argv=["true"], timeout_ms=900_000)
    assert denied_rule(lambda: check_tenant_process(TENANTS, ALICE, process)) == "tenants.acme.limits.max_timeout_ms"
    check_tenant_process(TENANTS, CAROL, process)
    check_sandboxes(TENANTS, ALICE, 1)
    assert denied_rule(lambda: check_sandboxes(TENANTS, ALICE, 2)) == "tenants.acme.limits.max_sandboxes"
    check_sandboxes(TENANTS, CAROL, 10_000)


def test_fleet_wide_operations_are_for_operators_once_tenants_exist() -> None:
    check_operator(TENANTS, resolve_caller(TENANTS, "root-team"))
    check_operator(TENANTS, resolve_caller(TENANTS, "corral-beat"))
    assert denied_rule(lambda: check_operator(TENANTS, ALICE)) == "tenants.operator"
    check_operator(HostPolicy(), resolve_caller(HostPolicy(), "x"))

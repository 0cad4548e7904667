"""Helpers for the host-policy and capability-matching tests: policies from partial sections, capability
reports to order, and requests whose environment a test rewrites (JobSpec has no requirement option)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from corral.contract.matching import Approval, ApprovalKind
from corral.contract.models import (
    Capability,
    Health,
    HealthState,
    IsolationCapabilityReport,
    IsolationClass,
    IsolationRequirement,
    Level,
    Locality,
    Platform,
    Tenancy,
    TrustVector,
)
from corral.fleet.job import JobSpec
from corral.host.policy_source import PolicySource
from corral.sandbox.policy import HostPolicy

STRONG_TRUST = TrustVector(
    locality=Locality.local,
    tenancy=Tenancy.dedicated,
    auditability=Level.required,
    cleanup=Level.required,
    data_residency="local_only",
    secret_isolation=Level.required,
)


def claims_container(report: IsolationCapabilityReport) -> IsolationCapabilityReport:
    return report.model_copy(update={"supported_classes": [IsolationClass.container]})


def report(
    classes: list[IsolationClass] | None = None,
    capabilities: list[Capability] | None = None,
    health: HealthState = HealthState.healthy,
    **overrides: Any,
) -> IsolationCapabilityReport:
    """A report that satisfies everything unless told otherwise: a container with every capability,
    the strongest trust vector and good health."""
    fields: dict[str, Any] = {
        "report_ref": "report-test",
        "adapter_ref": "adapter-test",
        "adapter_kind": "test",
        "adapter_version": "0",
        "supported_classes": [IsolationClass.container] if classes is None else classes,
        "platform": Platform(os="linux", cpu_architecture="amd64"),
        "capabilities": list(Capability) if capabilities is None else capabilities,
        "trust": STRONG_TRUST,
        "health": Health(state=health, reason=None if health is HealthState.healthy else "test"),
    }
    fields.update(overrides)
    return IsolationCapabilityReport(**fields)


def requirement(
    minimum_class: IsolationClass = IsolationClass.container,
    capabilities: list[Capability] | None = None,
    allowed_gaps: list[str] | None = None,
    policy_ref: str | None = None,
    **trust: Any,
) -> IsolationRequirement:
    return IsolationRequirement.model_validate(
        {
            "minimum_class": minimum_class,
            "required_capabilities": capabilities or [],
            "trust": TrustVector(**trust),
            "fallback": {"allowed_gaps": allowed_gaps or [], "policy_ref": policy_ref},
        }
    )


def approval(gaps: list[str], kind: ApprovalKind = ApprovalKind.downgrade, policy_ref: str = "dec-1") -> Approval:
    return Approval(policy_ref=policy_ref, kind=kind, gaps=gaps)


def policy_with(**sections: Any) -> HostPolicy:
    """The default policy with some sections changed key by key (``mounts`` and ``approvals`` replaced)."""
    data = HostPolicy().model_dump(mode="json")
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(name), dict) and name != "mounts":
            data[name] = {**data[name], **value}
        else:
            data[name] = value
    return HostPolicy.model_validate(data)


def fixed(policy: HostPolicy) -> PolicySource:
    return PolicySource.fixed(policy)


def with_requirement(job: JobSpec, need: IsolationRequirement, host: str) -> list[tuple[str, BaseModel]]:
    """The job's chain with the environment's requirement replaced in every request."""
    env = job.environment()
    spec = env.spec.model_copy(update={"requirement": need})
    env = env.model_copy(update={"spec": spec})
    return [(op, request.model_copy(update={"environment": env})) for op, request in job.requests(host)]

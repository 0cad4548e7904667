"""Helpers for the host-policy and capability-matching tests: policies from partial sections, capability
reports to order, and requests whose environment a test rewrites (JobSpec has no requirement option)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from corral.contract.domain import PolicyRef
from corral.contract.matching import Approval, ApprovalKind
from corral.contract.models import (
    DataResidencyKind,
    DataResidencyRequirement,
    HealthState,
    IsolationCapabilityReport,
    IsolationCapabilitySet,
    IsolationRequirement,
    IsolationRuntimeHealth,
    IsolationTrustRequirement,
    PlatformReport,
)
from corral.contract.vocabulary import (
    AuditabilityRequirement,
    CleanupGuaranteeRequirement,
    IsolationCapability,
    IsolationClass,
    IsolationRuntimeKind,
    LocalityRequirement,
    SecretIsolationRequirement,
    TenantBoundaryRequirement,
)
from corral.fleet.job import JobSpec
from corral.host.policy_source import PolicySource
from corral.sandbox.policy import HostPolicy

STRONG_TRUST = IsolationTrustRequirement(
    locality=LocalityRequirement.local,
    tenancy=TenantBoundaryRequirement.dedicated,
    auditability=AuditabilityRequirement.required,
    cleanup=CleanupGuaranteeRequirement.required,
    data_residency=DataResidencyRequirement(kind=DataResidencyKind.local_only),
    secret_isolation=SecretIsolationRequirement.required,
)


def claims_container(report: IsolationCapabilityReport) -> IsolationCapabilityReport:
    return report.model_copy(update={"supported_classes": [IsolationClass.container]})


def report(
    classes: list[IsolationClass] | None = None,
    capabilities: list[IsolationCapability] | None = None,
    health: HealthState = HealthState.healthy,
    **overrides: Any,
) -> IsolationCapabilityReport:
    """A report that satisfies everything unless told otherwise: a container with every capability,
    the strongest trust vector and good health."""
    fields: dict[str, Any] = {
        "report_ref": "report-test",
        "adapter_ref": "adapter-test",
        "adapter_kind": IsolationRuntimeKind.container,
        "adapter_version": "0",
        "supported_classes": [IsolationClass.container] if classes is None else classes,
        "platform": PlatformReport(platform="test", os="linux", cpu_architecture="amd64"),
        "capabilities": IsolationCapabilitySet(
            capabilities=list(IsolationCapability) if capabilities is None else capabilities
        ),
        "trust": STRONG_TRUST,
        "health": IsolationRuntimeHealth(kind=health, reason="" if health is HealthState.healthy else "test")
        if health is not HealthState.unsupported_host
        else IsolationRuntimeHealth(kind=health, missing_prerequisites=["test"]),
    }
    fields.update(overrides)
    return IsolationCapabilityReport(**fields)


def requirement(
    minimum_class: IsolationClass = IsolationClass.container,
    capabilities: list[IsolationCapability] | None = None,
    allowed_gaps: list[str] | None = None,
    policy_ref: str | None = None,
    **trust: Any,
) -> IsolationRequirement:
    """A requirement whose fallback accepts exactly ``allowed_gaps`` (in upstream's terms: the listed
    capability and trust downgrades, any other class for a ``class:`` gap, a degraded host for
    ``health:degraded``) once the host approves ``policy_ref``; neither given: ``deny``."""
    gaps = allowed_gaps or []
    fallback: dict[str, Any] = {"kind": "deny"}
    if gaps or policy_ref is not None:
        fallback = {
            "kind": "allow_if_package_and_policy_approve",
            "accepted_classes": list(IsolationClass) if any(g.startswith("class:") for g in gaps) else [],
            "accepted_capability_downgrades": [g.split(":", 1)[1] for g in gaps if g.startswith("capability:")],
            "accepted_trust_downgrades": [g.split(":", 1)[1] for g in gaps if g.startswith("trust:")],
            "required_policy_refs": [PolicyRef.host(policy_ref)] if policy_ref is not None else [],
            "accept_degraded_host": "health:degraded" in gaps,
        }
    return IsolationRequirement.model_validate(
        {
            "minimum_class": minimum_class,
            "required_capabilities": {"capabilities": capabilities or []},
            "trust": IsolationTrustRequirement(**trust),
            "fallback": fallback,
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

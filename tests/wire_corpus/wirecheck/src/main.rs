//! wirecheck <RustTypeName> < doc.json
//! (also `Vec<RustTypeName>` for a JSON array of that type).
//! Decodes stdin as the named upstream agent-sdk-core type (unmodified sources of
//! heyclawdia/clawdia_sdk@adad005), prints it re-serialized (pretty JSON) on stdout.
//! Exit 1 on decode failure, 2 on unknown type / usage error, 3 when `--verify` is given
//! and the re-encoded value differs from the input (compared as JSON values, key order ignored).
use std::io::Read;

use agent_sdk_core::{capability, domain, effect, error, package_isolation as pi, ports_isolation as po, records_isolation as ri, application_isolation as ai};

fn roundtrip<T: serde::de::DeserializeOwned + serde::Serialize>(input: &str) -> Result<serde_json::Value, String> {
    let value: T = serde_json::from_str(input).map_err(|e| e.to_string())?;
    serde_json::to_value(&value).map_err(|e| e.to_string())
}

macro_rules! types {
    ($name:expr, $input:expr; $($label:literal => $ty:ty),* $(,)?) => {
        match $name {
            $($label => Some(roundtrip::<$ty>($input)),)*
            $(n if n.strip_prefix("Vec<").and_then(|r| r.strip_suffix('>')) == Some($label) => Some(roundtrip::<Vec<$ty>>($input)),)*
            "--list" => { $(println!("{}", $label);)* std::process::exit(0) }
            _ => None,
        }
    };
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let verify = args.iter().any(|a| a == "--verify");
    let name = match args.iter().find(|a| a.as_str() != "--verify") {
        Some(n) => n.clone(),
        None => { eprintln!("usage: wirecheck [--verify] <RustTypeName|--list> < doc.json"); std::process::exit(2) }
    };
    let mut input = String::new();
    if name != "--list" { std::io::stdin().read_to_string(&mut input).expect("read stdin"); }
    let result = types!(name.as_str(), &input;
        "()" => (),
        // ports::isolation
        "IsolationCapabilityReport" => po::IsolationCapabilityReport,
        "IsolationRuntimeKind" => po::IsolationRuntimeKind,
        "IsolationRuntimeHealth" => po::IsolationRuntimeHealth,
        "PlatformReport" => po::PlatformReport,
        "SessionPrepareRequest" => po::SessionPrepareRequest,
        "ImageResolveRequest" => po::ImageResolveRequest,
        "ImageResolution" => po::ImageResolution,
        "RootfsPrepareRequest" => po::RootfsPrepareRequest,
        "MountResolveRequest" => po::MountResolveRequest,
        "MountPlan" => po::MountPlan,
        "NetworkPrepareRequest" => po::NetworkPrepareRequest,
        "SecretPrepareRequest" => po::SecretPrepareRequest,
        "SecretMaterializationPlan" => po::SecretMaterializationPlan,
        "EnvironmentPrepareRequest" => po::EnvironmentPrepareRequest,
        "ProcessStartRequest" => po::ProcessStartRequest,
        "ProcessStartResult" => po::ProcessStartResult,
        "ProcessIoRequest" => po::ProcessIoRequest,
        "ProcessIoFrame" => po::ProcessIoFrame,
        "ProcessIoStream" => po::ProcessIoStream,
        "ProcessSignalRequest" => po::ProcessSignalRequest,
        "ProcessSignalResult" => po::ProcessSignalResult,
        "ProcessSignal" => po::ProcessSignal,
        "ProcessStatsRequest" => po::ProcessStatsRequest,
        "ProcessStatsSnapshot" => po::ProcessStatsSnapshot,
        "CleanupRequest" => po::CleanupRequest,
        "CleanupResult" => po::CleanupResult,
        "CleanupStatus" => po::CleanupStatus,
        "DetachTransferRequest" => po::DetachTransferRequest,
        "DetachTransferResult" => po::DetachTransferResult,
        "ReclaimRequest" => po::ReclaimRequest,
        "ReclaimResult" => po::ReclaimResult,
        // package::isolation newtypes
        "ExecutionEnvironmentId" => pi::ExecutionEnvironmentId,
        "IsolationRequirementRef" => pi::IsolationRequirementRef,
        "IsolationRuntimeRef" => pi::IsolationRuntimeRef,
        "IsolationSessionId" => pi::IsolationSessionId,
        "IsolationSessionRef" => pi::IsolationSessionRef,
        "IsolationAdapterSessionRef" => pi::IsolationAdapterSessionRef,
        "IsolationCapabilityReportRef" => pi::IsolationCapabilityReportRef,
        "ImageRef" => pi::ImageRef,
        "RootfsRef" => pi::RootfsRef,
        "MountRef" => pi::MountRef,
        "NetworkNamespaceRef" => pi::NetworkNamespaceRef,
        "SecretRef" => pi::SecretRef,
        "SecretMountRef" => pi::SecretMountRef,
        "PreparedEnvironmentRef" => pi::PreparedEnvironmentRef,
        "IsolatedProcessId" => pi::IsolatedProcessId,
        "IsolatedProcessRef" => pi::IsolatedProcessRef,
        "ProcessIoStreamRef" => pi::ProcessIoStreamRef,
        "ProcessStatsSnapshotRef" => pi::ProcessStatsSnapshotRef,
        "CleanupPlanRef" => pi::CleanupPlanRef,
        "ReclaimTicketRef" => pi::ReclaimTicketRef,
        "ChildArtifactId" => pi::ChildArtifactId,
        "RunChildLifecyclePolicyRef" => pi::RunChildLifecyclePolicyRef,
        "RuntimePackageSidecarId" => pi::RuntimePackageSidecarId,
        "PolicyDecisionRef" => pi::PolicyDecisionRef,
        // package::isolation structs/enums
        "IsolationClass" => pi::IsolationClass,
        "IsolationRequirement" => pi::IsolationRequirement,
        "IsolationFallback" => pi::IsolationFallback,
        "IsolationCapabilitySet" => pi::IsolationCapabilitySet,
        "IsolationCapability" => pi::IsolationCapability,
        "IsolationTrustRequirement" => pi::IsolationTrustRequirement,
        "IsolationTrustField" => pi::IsolationTrustField,
        "LocalityRequirement" => pi::LocalityRequirement,
        "TenantBoundaryRequirement" => pi::TenantBoundaryRequirement,
        "AuditabilityRequirement" => pi::AuditabilityRequirement,
        "CleanupGuaranteeRequirement" => pi::CleanupGuaranteeRequirement,
        "DataResidencyRequirement" => pi::DataResidencyRequirement,
        "SecretIsolationRequirement" => pi::SecretIsolationRequirement,
        "IsolationRequirementSnapshot" => pi::IsolationRequirementSnapshot,
        "IsolationFingerprintFields" => pi::IsolationFingerprintFields,
        "ExecutionEnvironment" => pi::ExecutionEnvironment,
        "EnvironmentSpec" => pi::EnvironmentSpec,
        "ExecutionEnvironmentKind" => pi::ExecutionEnvironmentKind,
        "ImageRequest" => pi::ImageRequest,
        "RootfsRequest" => pi::RootfsRequest,
        "ResourceLimits" => pi::ResourceLimits,
        "FilesystemIsolationPolicy" => pi::FilesystemIsolationPolicy,
        "RootFilesystemMode" => pi::RootFilesystemMode,
        "WorkspaceMountPolicy" => pi::WorkspaceMountPolicy,
        "WorkspaceMountMode" => pi::WorkspaceMountMode,
        "MountPolicy" => pi::MountPolicy,
        "MountMode" => pi::MountMode,
        "MountExpansionAudit" => pi::MountExpansionAudit,
        "SymlinkPolicy" => pi::SymlinkPolicy,
        "SingleFileMountExpansionPolicy" => pi::SingleFileMountExpansionPolicy,
        "NetworkIsolationPolicy" => pi::NetworkIsolationPolicy,
        "SecretExposurePolicy" => pi::SecretExposurePolicy,
        "AmbientSecretPolicy" => pi::AmbientSecretPolicy,
        "SecretMountPolicy" => pi::SecretMountPolicy,
        "SecretEnvPolicy" => pi::SecretEnvPolicy,
        "EnvironmentLifecyclePolicy" => pi::EnvironmentLifecyclePolicy,
        "CleanupMode" => pi::CleanupMode,
        "ProcessOwnershipPolicy" => pi::ProcessOwnershipPolicy,
        "ProcessOwnershipClass" => pi::ProcessOwnershipClass,
        "ChildShutdownBehavior" => pi::ChildShutdownBehavior,
        "DetachPolicy" => pi::DetachPolicy,
        "ReclaimPolicy" => pi::ReclaimPolicy,
        "IsolationAdapterRequirement" => pi::IsolationAdapterRequirement,
        "ProcessIoPolicy" => pi::ProcessIoPolicy,
        "ProcessIoCapturePolicy" => pi::ProcessIoCapturePolicy,
        "ProcessContentCaptureMode" => pi::ProcessContentCaptureMode,
        "TruncationPolicy" => pi::TruncationPolicy,
        "ContentRefMode" => pi::ContentRefMode,
        "ProcessStatsPolicy" => pi::ProcessStatsPolicy,
        "IsolatedProcessSpec" => pi::IsolatedProcessSpec,
        "RedactedEnvVar" => pi::RedactedEnvVar,
        "TerminalMode" => pi::TerminalMode,
        "StdinPolicy" => pi::StdinPolicy,
        // domain::error
        "AgentError" => error::AgentError,
        "AgentErrorKind" => error::AgentErrorKind,
        "RetryClassification" => error::RetryClassification,
        "ErrorContext" => error::ErrorContext,
        "CausalIds" => error::CausalIds,
        // records::effect
        "EffectKind" => effect::EffectKind,
        "EffectIntent" => effect::EffectIntent,
        "EffectTerminalStatus" => effect::EffectTerminalStatus,
        "EffectResult" => effect::EffectResult,
        // records::isolation
        "IsolationRecord" => ri::IsolationRecord,
        "IsolationRequestedRecord" => ri::IsolationRequestedRecord,
        "IsolationCapabilityReportedRecord" => ri::IsolationCapabilityReportedRecord,
        "IsolationCapabilityMatchRecord" => ri::IsolationCapabilityMatchRecord,
        "IsolationDowngradeDecisionRecord" => ri::IsolationDowngradeDecisionRecord,
        "IsolationEnvironmentPrepareIntentRecord" => ri::IsolationEnvironmentPrepareIntentRecord,
        "IsolationEnvironmentPrepareResultRecord" => ri::IsolationEnvironmentPrepareResultRecord,
        "IsolationProcessStartIntentRecord" => ri::IsolationProcessStartIntentRecord,
        "IsolationProcessStartResultRecord" => ri::IsolationProcessStartResultRecord,
        "IsolationProcessStatsRecord" => ri::IsolationProcessStatsRecord,
        "IsolationCleanupIntentRecord" => ri::IsolationCleanupIntentRecord,
        "IsolationCleanupResultRecord" => ri::IsolationCleanupResultRecord,
        "IsolationFailureRecord" => ri::IsolationFailureRecord,
        "IsolationEventBase" => ri::IsolationEventBase,
        "IsolationEventRecord" => ri::IsolationEventRecord,
        "IsolationEventKind" => ri::IsolationEventKind,
        "IsolationNetworkPreparedRecord" => ri::IsolationNetworkPreparedRecord,
        "PolicyDecisionScope" => ai::PolicyDecisionScope,
        // domain refs / ids used on the isolation boundary
        "PolicyRef" => domain::PolicyRef,
        "PolicyKind" => domain::PolicyKind,
        "SourceRef" => domain::SourceRef,
        "SourceKind" => domain::SourceKind,
        "DestinationRef" => domain::DestinationRef,
        "DestinationKind" => domain::DestinationKind,
        "EntityRef" => domain::EntityRef,
        "EntityKind" => domain::EntityKind,
        "CorrelationEntry" => domain::CorrelationEntry,
        "PrivacyClass" => domain::PrivacyClass,
        "RetentionClass" => domain::RetentionClass,
        "TrustClass" => domain::TrustClass,
        "ContentRef" => domain::ContentRef,
        "RunId" => domain::RunId,
        "AgentId" => domain::AgentId,
        "EffectId" => domain::EffectId,
        "IdempotencyKey" => domain::IdempotencyKey,
        "DedupeKey" => domain::DedupeKey,
        "PackageSidecarRef" => capability::PackageSidecarRef,
        "RuntimePackageFingerprint" => agent_sdk_core::package::RuntimePackageFingerprint,
    );
    match result {
        None => { eprintln!("wirecheck: unknown type {name} (try --list)"); std::process::exit(2) }
        Some(Err(e)) => { eprintln!("wirecheck: decode failed as {name}: {e}"); std::process::exit(1) }
        Some(Ok(value)) => {
            println!("{}", serde_json::to_string_pretty(&value).expect("encode"));
            if verify {
                let original: serde_json::Value = serde_json::from_str(&input).expect("input parsed above");
                if original != value {
                    eprintln!("wirecheck: re-encoded value differs from input for {name}");
                    std::process::exit(3)
                }
            }
        }
    }
}

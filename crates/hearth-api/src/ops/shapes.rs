//! Shapes nested in several operations' inputs and outputs: code artifacts,
//! logging, hooks, CPU and memory configuration, idle policies, port
//! specifications, build sizes. Plain serde data, read and written on the
//! request task by the handlers (conventions in [`crate::ops`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `Tags`: tag keys to values.
pub type Tags = BTreeMap<String, String>;

/// `EnvironmentVariableMap` (values are sensitive: never log them).
pub type EnvironmentVariables = BTreeMap<String, String>;

/// `TokenParts`: the header names and values of an auth token (sensitive).
pub type TokenParts = BTreeMap<String, String>;

/// `CodeArtifact` (union): where an image's code comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum CodeArtifact {
    Uri(String),
}

/// `Logging` (union).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Logging {
    Disabled(Empty),
    CloudWatch(CloudWatchLogging),
}

/// An empty structure (`LoggingDisabled`, `Unit`, and the outputs of
/// SuspendMicrovm, ResumeMicrovm and TerminateMicrovm).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// `CloudWatchLogging`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudWatchLogging {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_stream: Option<String>,
}

/// `CpuConfiguration`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CpuConfiguration {
    /// `Architecture` enum.
    pub architecture: String,
}

/// `Resources`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(rename = "minimumMemoryInMiB")]
    pub minimum_memory_in_mib: i32,
}

/// `Hooks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hooks {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub microvm_hooks: Option<MicrovmHooks>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub microvm_image_hooks: Option<MicrovmImageHooks>,
}

/// `MicrovmHooks`: which lifecycle hooks run, and their timeouts. States are
/// the `HookState` enum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MicrovmHooks {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_timeout_in_seconds: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_timeout_in_seconds: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspend: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspend_timeout_in_seconds: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminate_timeout_in_seconds: Option<i32>,
}

/// `MicrovmImageHooks`: the build's ready and validate hooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MicrovmImageHooks {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_timeout_in_seconds: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validate_timeout_in_seconds: Option<i32>,
}

/// `IdlePolicy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdlePolicy {
    pub max_idle_duration_seconds: i32,
    pub suspended_duration_seconds: i32,
    pub auto_resume_enabled: bool,
}

/// `PortSpecification` (union).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum PortSpecification {
    Port(i32),
    Range(PortRange),
    AllPorts(Empty),
}

/// `PortRange`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRange {
    pub start_port: i32,
    pub end_port: i32,
}

/// `SnapshotBuild`: sizes of what a build produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnapshotBuild {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_snapshot_size_in_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code_install_size_in_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_snapshot_size_in_bytes: Option<i64>,
}

//! What a version asks its build for, read from the version's stored
//! configuration (the create or update request's members, camelCase, as
//! the API wrote them), and the server's own build settings.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// The members of a version's configuration that a build uses.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionConfig {
    pub base_image_arn: String,
    pub base_image_version: Option<String>,
    pub code_artifact: CodeArtifactDoc,
    #[serde(default)]
    pub environment_variables: BTreeMap<String, String>,
    pub hooks: Option<HooksDoc>,
    pub resources: Option<Vec<ResourcesDoc>>,
    pub logging: Option<LoggingDoc>,
    pub egress_network_connectors: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CodeArtifactDoc {
    pub uri: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HooksDoc {
    pub port: Option<i64>,
    pub microvm_image_hooks: Option<ImageHooksDoc>,
    pub microvm_hooks: Option<MicrovmHooksDoc>,
}

/// `hooks.microvmHooks` of a version: the hooks each microVM of it calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MicrovmHooksDoc {
    pub run: Option<String>,
    pub run_timeout_in_seconds: Option<i64>,
    pub resume: Option<String>,
    pub resume_timeout_in_seconds: Option<i64>,
    pub suspend: Option<String>,
    pub suspend_timeout_in_seconds: Option<i64>,
    pub terminate: Option<String>,
    pub terminate_timeout_in_seconds: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageHooksDoc {
    pub ready: Option<String>,
    pub ready_timeout_in_seconds: Option<i64>,
    pub validate: Option<String>,
    pub validate_timeout_in_seconds: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ResourcesDoc {
    #[serde(rename = "minimumMemoryInMiB")]
    pub minimum_memory_in_mib: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LoggingDoc {
    Disabled(serde_json::Value),
    CloudWatch(CloudWatchDoc),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudWatchDoc {
    pub log_group: Option<String>,
    pub log_stream: Option<String>,
}

/// The connector whose presence gives a build internet egress.
pub const INTERNET_EGRESS: &str = "INTERNET_EGRESS";
/// Default port of the lifecycle hooks.
pub const DEFAULT_HOOK_PORT: u16 = 8080;
/// Default ready-hook timeout: the service model's default (its Smithy
/// model says 30, and SDKs built from it leave 30 out of a request).
pub const DEFAULT_READY_TIMEOUT_SECS: u64 = 30;
/// Default validate-hook timeout, likewise the model's.
pub const DEFAULT_VALIDATE_TIMEOUT_SECS: u64 = 30;

impl VersionConfig {
    /// A build has egress unless connectors are given without
    /// `INTERNET_EGRESS` (builds need it for `pip install` and the like).
    pub fn wants_egress(&self) -> bool {
        match &self.egress_network_connectors {
            None => true,
            Some(list) => list
                .iter()
                .any(|a| a.ends_with(&format!(":{INTERNET_EGRESS}"))),
        }
    }

    pub fn keeps_log_output(&self) -> bool {
        !matches!(self.logging, Some(LoggingDoc::Disabled(_)))
    }

    /// The log group and stream of a build.
    pub fn log_names(&self, image_name: &str, version: &str, build_id: &str) -> (String, String) {
        let cw = match &self.logging {
            Some(LoggingDoc::CloudWatch(cw)) => Some(cw),
            _ => None,
        };
        let group = cw
            .and_then(|c| c.log_group.clone())
            .unwrap_or_else(|| format!("/aws/lambda-microvms/{image_name}"));
        let stream = cw
            .and_then(|c| c.log_stream.clone())
            .unwrap_or_else(|| format!("{version}/{build_id}"));
        (group, stream)
    }

    /// `minimumMemoryInMiB` (the largest given), or `default_mib`.
    pub fn memory_mib(&self, default_mib: u32) -> i64 {
        self.resources
            .as_ref()
            .and_then(|r| r.iter().map(|r| r.minimum_memory_in_mib).max())
            .unwrap_or(i64::from(default_mib))
    }

    pub fn image_hooks(&self) -> Option<hearth_builder::ImageHooks> {
        let h = self.hooks.as_ref()?;
        let ih = h.microvm_image_hooks.as_ref();
        let enabled = |s: Option<&String>| s.map(String::as_str) == Some("ENABLED");
        let secs = |v: Option<i64>, d: u64| {
            std::time::Duration::from_secs(v.map(|v| v.max(1) as u64).unwrap_or(d))
        };
        let ready = ih
            .filter(|i| enabled(i.ready.as_ref()))
            .map(|i| secs(i.ready_timeout_in_seconds, DEFAULT_READY_TIMEOUT_SECS));
        let validate = ih
            .filter(|i| enabled(i.validate.as_ref()))
            .map(|i| secs(i.validate_timeout_in_seconds, DEFAULT_VALIDATE_TIMEOUT_SECS));
        Some(hearth_builder::ImageHooks {
            port: h
                .port
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(DEFAULT_HOOK_PORT),
            ready_timeout: ready,
            validate_timeout: validate,
        })
    }
}

/// The ARN of the managed base image `name` in `region` (owner `aws`).
pub fn managed_image_arn(region: &str, name: &str) -> String {
    format!("arn:aws:lambda:{region}:aws:microvm-image:{name}")
}

/// A managed base image the server offers.
#[derive(Debug, Clone)]
pub struct BaseImageFile {
    pub name: String,
    pub version: String,
    pub root_disk: PathBuf,
}

/// Memory limits of the app microVM a build snapshots.
pub const DEFAULT_APP_MEM_MIB: u32 = 512;
pub const MIN_APP_MEM_MIB: i64 = 128;
pub const MAX_APP_MEM_MIB: i64 = 16384;

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: serde_json::Value) -> VersionConfig {
        let mut v = serde_json::json!({
            "baseImageArn": "arn:aws:lambda:us-east-1:aws:microvm-image:debian-12-python",
            "buildRoleArn": "arn:aws:iam::123456789012:role/r",
            "codeArtifact": {"uri": "file:///x.zip"}
        });
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn egress_is_on_unless_connectors_leave_it_out() {
        assert!(cfg(serde_json::json!({})).wants_egress());
        let arn =
            "arn:aws:lambda:us-east-1:aws:network-connector:aws-network-connector:INTERNET_EGRESS";
        assert!(cfg(serde_json::json!({"egressNetworkConnectors": [arn]})).wants_egress());
        assert!(!cfg(serde_json::json!({"egressNetworkConnectors": []})).wants_egress());
    }

    #[test]
    fn hooks_logging_and_memory_are_read_with_defaults() {
        let c = cfg(serde_json::json!({
            "hooks": {"microvmImageHooks": {"ready": "ENABLED", "validate": "DISABLED"}},
            "logging": {"cloudWatch": {"logGroup": "g"}},
            "resources": [{"minimumMemoryInMiB": 768}]
        }));
        let h = c.image_hooks().unwrap();
        assert_eq!(h.port, DEFAULT_HOOK_PORT);
        assert_eq!(
            h.ready_timeout.unwrap().as_secs(),
            DEFAULT_READY_TIMEOUT_SECS
        );
        assert!(h.validate_timeout.is_none());
        assert_eq!(
            c.log_names("app", "2", "bld-x"),
            ("g".into(), "2/bld-x".into())
        );
        assert_eq!(c.memory_mib(512), 768);
        assert!(c.keeps_log_output());
        let d = cfg(serde_json::json!({"logging": {"disabled": {}}}));
        assert!(!d.keeps_log_output());
        assert_eq!(d.memory_mib(512), 512);
    }
}

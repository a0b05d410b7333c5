//! The SDK's image types as JSON for `--json` and `hearth image get`: the
//! API's member names (camelCase), members that are absent left out,
//! timestamps as RFC 3339 strings (what the aws CLI shows). Pure.

use std::collections::HashMap;

use aws_sdk_lambdamicrovms::operation::get_microvm_image::GetMicrovmImageOutput;
use aws_sdk_lambdamicrovms::operation::get_microvm_image_build::GetMicrovmImageBuildOutput;
use aws_sdk_lambdamicrovms::primitives::{DateTime, DateTimeFormat};
use aws_sdk_lambdamicrovms::types::{
    CodeArtifact, Hooks, Logging, MicrovmImageSummary, MicrovmImageVersionSummary, SnapshotBuild,
};
use serde_json::{json, Map, Value};

/// RFC 3339 (`2026-05-01T12:00:00Z`), or the epoch seconds if the time
/// cannot be written so.
pub fn time(t: &DateTime) -> String {
    t.fmt(DateTimeFormat::DateTime)
        .unwrap_or_else(|_| t.secs().to_string())
}

struct Obj(Map<String, Value>);

impl Obj {
    fn new() -> Obj {
        Obj(Map::new())
    }
    fn put(mut self, k: &str, v: impl Into<Value>) -> Obj {
        self.0.insert(k.to_string(), v.into());
        self
    }
    fn opt(self, k: &str, v: Option<impl Into<Value>>) -> Obj {
        match v {
            Some(v) => self.put(k, v),
            None => self,
        }
    }
    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

fn map(m: Option<&HashMap<String, String>>) -> Option<Value> {
    m.map(|m| {
        let sorted: std::collections::BTreeMap<_, _> = m.iter().collect();
        json!(sorted)
    })
}

pub fn code_artifact(c: &CodeArtifact) -> Value {
    match c.as_uri() {
        Ok(uri) => json!({ "uri": uri }),
        Err(_) => json!({ "unknown": {} }),
    }
}

fn logging(l: &Logging) -> Value {
    match l {
        Logging::CloudWatch(cw) => json!({ "cloudWatch": Obj::new()
            .opt("logGroup", cw.log_group())
            .opt("logStream", cw.log_stream())
            .done() }),
        Logging::Disabled(_) => json!({ "disabled": {} }),
        _ => json!({ "unknown": {} }),
    }
}

pub fn hooks(h: &Hooks) -> Value {
    let image = h.microvm_image_hooks().map(|i| {
        json!({
            "ready": i.ready().as_str(),
            "readyTimeoutInSeconds": i.ready_timeout_in_seconds(),
            "validate": i.validate().as_str(),
            "validateTimeoutInSeconds": i.validate_timeout_in_seconds(),
        })
    });
    let vm = h.microvm_hooks().map(|m| {
        json!({
            "run": m.run().as_str(),
            "runTimeoutInSeconds": m.run_timeout_in_seconds(),
            "resume": m.resume().as_str(),
            "resumeTimeoutInSeconds": m.resume_timeout_in_seconds(),
            "suspend": m.suspend().as_str(),
            "suspendTimeoutInSeconds": m.suspend_timeout_in_seconds(),
            "terminate": m.terminate().as_str(),
            "terminateTimeoutInSeconds": m.terminate_timeout_in_seconds(),
        })
    });
    Obj::new()
        .opt("port", h.port())
        .opt("microvmHooks", vm)
        .opt("microvmImageHooks", image)
        .done()
}

pub fn image(i: &GetMicrovmImageOutput) -> Value {
    Obj::new()
        .put("imageArn", i.image_arn())
        .put("name", i.name())
        .put("state", i.state().as_str())
        .opt("latestActiveImageVersion", i.latest_active_image_version())
        .opt("latestFailedImageVersion", i.latest_failed_image_version())
        .put("createdAt", time(i.created_at()))
        .opt("updatedAt", i.updated_at().map(time))
        .opt("tags", map(i.tags()))
        .done()
}

pub fn image_summary(i: &MicrovmImageSummary) -> Value {
    Obj::new()
        .put("imageArn", i.image_arn())
        .put("name", i.name())
        .put("state", i.state().as_str())
        .opt("latestActiveImageVersion", i.latest_active_image_version())
        .opt("latestFailedImageVersion", i.latest_failed_image_version())
        .put("createdAt", time(i.created_at()))
        .done()
}

pub fn version(v: &MicrovmImageVersionSummary) -> Value {
    let strs = |l: &[String]| Value::from(l.to_vec());
    Obj::new()
        .put("imageArn", v.image_arn())
        .put("imageVersion", v.image_version())
        .put("state", v.state().as_str())
        .put("status", v.status().as_str())
        .opt("stateReason", v.state_reason())
        .put("baseImageArn", v.base_image_arn())
        .opt("baseImageVersion", v.base_image_version())
        .put("buildRoleArn", v.build_role_arn())
        .opt("description", v.description())
        .opt("codeArtifact", v.code_artifact().map(code_artifact))
        .opt("logging", v.logging().map(logging))
        .opt(
            "egressNetworkConnectors",
            v.egress_network_connectors.as_deref().map(strs),
        )
        .opt(
            "cpuConfigurations",
            v.cpu_configurations.as_ref().map(|c| {
                c.iter()
                    .map(|c| json!({ "architecture": c.architecture().as_str() }))
                    .collect::<Vec<_>>()
            }),
        )
        .opt(
            "resources",
            v.resources.as_ref().map(|r| {
                r.iter()
                    .map(|r| json!({ "minimumMemoryInMiB": r.minimum_memory_in_mib() }))
                    .collect::<Vec<_>>()
            }),
        )
        .opt(
            "additionalOsCapabilities",
            v.additional_os_capabilities.as_ref().map(|c| {
                c.iter()
                    .map(|c| Value::from(c.as_str()))
                    .collect::<Vec<_>>()
            }),
        )
        .opt("hooks", v.hooks().map(hooks))
        .opt("environmentVariables", map(v.environment_variables()))
        .put("createdAt", time(v.created_at()))
        .opt("updatedAt", v.updated_at().map(time))
        .opt("tags", map(v.tags()))
        .done()
}

fn snapshot_build(s: &SnapshotBuild) -> Value {
    Obj::new()
        .opt(
            "memorySnapshotSizeInBytes",
            s.memory_snapshot_size_in_bytes(),
        )
        .opt("codeInstallSizeInBytes", s.code_install_size_in_bytes())
        .opt("diskSnapshotSizeInBytes", s.disk_snapshot_size_in_bytes())
        .done()
}

pub fn build(b: &GetMicrovmImageBuildOutput) -> Value {
    Obj::new()
        .put("imageArn", b.image_arn())
        .put("imageVersion", b.image_version())
        .put("buildId", b.build_id())
        .put("buildState", b.build_state().as_str())
        .opt("stateReason", b.state_reason())
        .put("architecture", b.architecture().as_str())
        .put("chipset", b.chipset().as_str())
        .put("chipsetGeneration", b.chipset_generation())
        .put("createdAt", time(b.created_at()))
        .opt("snapshotBuild", b.snapshot_build().map(snapshot_build))
        .done()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_lambdamicrovms::types::{HookState, MicrovmImageHooks};

    #[test]
    fn hooks_keep_the_api_member_names_and_leave_absent_ones_out() {
        let h = Hooks::builder()
            .port(9000)
            .microvm_image_hooks(
                MicrovmImageHooks::builder()
                    .ready(HookState::Enabled)
                    .ready_timeout_in_seconds(120)
                    .build(),
            )
            .build();
        assert_eq!(
            hooks(&h),
            json!({
                "port": 9000,
                "microvmImageHooks": {
                    "ready": "ENABLED", "readyTimeoutInSeconds": 120,
                    "validate": "DISABLED", "validateTimeoutInSeconds": 30,
                }
            })
        );
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(
            time(&DateTime::from_secs(1_790_000_000)),
            "2026-09-21T14:13:20Z"
        );
    }
}

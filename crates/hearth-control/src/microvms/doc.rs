//! What a microVM's store row keeps in its `doc`: the members the API
//! answers with (camelCase, as GetMicrovm names them) and, under `hearth`,
//! what the control plane needs to run it again after a restart (its
//! snapshot, its hooks, when it was suspended, its last activity). The run
//! hook's payload is sensitive and never stored. Plain data; read and
//! written by the microVM's task and by `run`.

use serde::{Deserialize, Serialize};

use crate::config::{HooksDoc, DEFAULT_HOOK_PORT};
use crate::ControlError;

/// The `idlePolicy` member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdlePolicyDoc {
    pub max_idle_duration_seconds: u32,
    pub suspended_duration_seconds: u32,
    pub auto_resume_enabled: bool,
}

impl IdlePolicyDoc {
    pub fn domain(&self) -> hearth_domain::IdlePolicy {
        hearth_domain::IdlePolicy {
            max_idle_secs: self.max_idle_duration_seconds,
            suspended_secs: self.suspended_duration_seconds,
            auto_resume: self.auto_resume_enabled,
        }
    }
}

/// A microVM's document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MicrovmDoc {
    pub endpoint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_role_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_policy: Option<IdlePolicyDoc>,
    pub maximum_duration_in_seconds: u32,
    pub started_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminated_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms_key_identifier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress_network_connectors: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_network_connectors: Option<Vec<String>>,
    pub hearth: EngineDoc,
}

/// The control plane's own part of a microVM's document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineDoc {
    /// [`EngineDoc::VERSION`]; another version is refused by name.
    pub version: u32,
    pub image_id: String,
    /// The catalog snapshot it was launched from.
    pub snapshot_id: String,
    pub hooks: MicrovmHooksConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspended_at: Option<i64>,
    /// Unix seconds of the last traffic through the proxy (written at suspend and on
    /// state changes; the running task keeps the live value in memory).
    pub last_activity_at: i64,
    /// How its shells run (from its image version's build; absent for
    /// versions built before profiles were kept: root in `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<hearth_builder::ShellProfile>,
}

impl EngineDoc {
    pub const VERSION: u32 = 1;
}

impl MicrovmDoc {
    /// Read a row's document, refusing another version by name.
    pub fn from_value(id: &str, v: &serde_json::Value) -> Result<Self, ControlError> {
        let version = v
            .pointer("/hearth/version")
            .and_then(serde_json::Value::as_u64);
        if version != Some(u64::from(EngineDoc::VERSION)) {
            return Err(ControlError::Corrupt(format!(
                "microVM {id}: document version {version:?}, this server reads version {}",
                EngineDoc::VERSION
            )));
        }
        serde_json::from_value(v.clone())
            .map_err(|e| ControlError::Corrupt(format!("microVM {id}: {e}")))
    }

    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a microVM document serializes")
    }
}

/// Which microVM lifecycle hooks run, on which guest port, with their
/// timeouts (from the image version's `hooks.microvmHooks`; each 1-60 s,
/// 10 s when enabled without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MicrovmHooksConfig {
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_timeout_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_timeout_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspend_timeout_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminate_timeout_secs: Option<u64>,
}

/// Timeout of an enabled microVM hook that names none.
pub const DEFAULT_MICROVM_HOOK_TIMEOUT_SECS: u64 = 10;
/// Longest a microVM hook may take.
pub const MAX_MICROVM_HOOK_TIMEOUT_SECS: u64 = 60;

impl MicrovmHooksConfig {
    /// The hooks of a version's `hooks` member (none enabled without one).
    pub fn from_version(hooks: Option<&HooksDoc>) -> Self {
        let Some(h) = hooks else {
            return Self {
                port: DEFAULT_HOOK_PORT,
                ..Self::default()
            };
        };
        let port = h
            .port
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(DEFAULT_HOOK_PORT);
        let m = h.microvm_hooks.as_ref();
        let hook = |state: Option<&String>, secs: Option<i64>| {
            (state.map(String::as_str) == Some("ENABLED")).then(|| {
                secs.map(|s| s.clamp(1, MAX_MICROVM_HOOK_TIMEOUT_SECS as i64) as u64)
                    .unwrap_or(DEFAULT_MICROVM_HOOK_TIMEOUT_SECS)
            })
        };
        Self {
            port,
            run_timeout_secs: m.and_then(|m| hook(m.run.as_ref(), m.run_timeout_in_seconds)),
            resume_timeout_secs: m
                .and_then(|m| hook(m.resume.as_ref(), m.resume_timeout_in_seconds)),
            suspend_timeout_secs: m
                .and_then(|m| hook(m.suspend.as_ref(), m.suspend_timeout_in_seconds)),
            terminate_timeout_secs: m
                .and_then(|m| hook(m.terminate.as_ref(), m.terminate_timeout_in_seconds)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> MicrovmDoc {
        MicrovmDoc {
            endpoint: "mvm-abc.localhost:8443".into(),
            execution_role_arn: None,
            idle_policy: Some(IdlePolicyDoc {
                max_idle_duration_seconds: 900,
                suspended_duration_seconds: 300,
                auto_resume_enabled: true,
            }),
            maximum_duration_in_seconds: 28800,
            started_at: 1_700_000_000,
            terminated_at: None,
            state_reason: None,
            kms_key_identifier: None,
            ingress_network_connectors: None,
            egress_network_connectors: None,
            hearth: EngineDoc {
                version: EngineDoc::VERSION,
                image_id: "img-1".into(),
                snapshot_id: "snap-0123456789ab".into(),
                hooks: MicrovmHooksConfig {
                    port: 8080,
                    run_timeout_secs: Some(10),
                    ..Default::default()
                },
                suspended_at: Some(1_700_000_100),
                last_activity_at: 1_700_000_050,
                shell: Some(hearth_builder::ShellProfile {
                    user: Some("app".into()),
                    workdir: "/srv".into(),
                    env: vec![("PATH".into(), "/usr/bin:/bin".into())],
                }),
            },
        }
    }

    #[test]
    fn a_document_round_trips_and_keeps_the_api_member_names() {
        let d = doc();
        let v = d.to_value();
        assert_eq!(v["idlePolicy"]["maxIdleDurationSeconds"], 900);
        assert_eq!(v["maximumDurationInSeconds"], 28800);
        assert_eq!(v["startedAt"], 1_700_000_000);
        assert_eq!(MicrovmDoc::from_value("mvm-abc", &v).unwrap(), d);
    }

    #[test]
    fn another_document_version_is_refused_by_name() {
        let mut v = doc().to_value();
        v["hearth"]["version"] = 2.into();
        let e = MicrovmDoc::from_value("mvm-abc", &v)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("version Some(2)") && e.contains("mvm-abc"),
            "{e}"
        );
    }

    #[test]
    fn hooks_are_enabled_one_by_one_with_bounded_timeouts() {
        let h: HooksDoc = serde_json::from_value(serde_json::json!({
            "port": 9000,
            "microvmHooks": {"run": "ENABLED", "runTimeoutInSeconds": 500,
                             "suspend": "ENABLED", "resume": "DISABLED", "resumeTimeoutInSeconds": 5}
        }))
        .unwrap();
        let c = MicrovmHooksConfig::from_version(Some(&h));
        assert_eq!(c.port, 9000);
        assert_eq!(c.run_timeout_secs, Some(60));
        assert_eq!(
            c.suspend_timeout_secs,
            Some(DEFAULT_MICROVM_HOOK_TIMEOUT_SECS)
        );
        assert_eq!(c.resume_timeout_secs, None);
        assert_eq!(c.terminate_timeout_secs, None);
        assert_eq!(MicrovmHooksConfig::from_version(None).port, 8080);
    }
}

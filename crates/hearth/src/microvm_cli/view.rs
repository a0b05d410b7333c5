//! A microVM as the CLI shows it: [`MicrovmView`] is built from the SDK's
//! RunMicrovm and GetMicrovm outputs (two types with the same members) and
//! written as JSON (the API's camelCase member names, absent members left
//! out, timestamps RFC 3339, as the aws CLI shows them) or as aligned
//! `name  value` lines. Also the list table. Pure.

use aws_sdk_lambdamicrovms::primitives::{DateTime, DateTimeFormat};
use aws_sdk_lambdamicrovms::types::{IdlePolicy, MicrovmItem};
use serde_json::{json, Map, Value};

/// RFC 3339 (`2026-05-01T12:00:00Z`), or the epoch seconds if the time
/// cannot be written so.
pub fn time(t: &DateTime) -> String {
    t.fmt(DateTimeFormat::DateTime)
        .unwrap_or_else(|_| t.secs().to_string())
}

/// The members of a RunMicrovm or GetMicrovm answer.
#[derive(Debug, Clone)]
pub struct MicrovmView {
    pub microvm_id: String,
    pub state: String,
    pub endpoint: String,
    pub image_arn: String,
    pub image_version: String,
    pub execution_role_arn: Option<String>,
    pub idle_policy: Option<IdlePolicy>,
    pub maximum_duration_secs: i32,
    pub started_at: DateTime,
    pub terminated_at: Option<DateTime>,
    pub state_reason: Option<String>,
    pub ingress_network_connectors: Vec<String>,
    pub egress_network_connectors: Vec<String>,
}

/// A [`MicrovmView`] of an SDK output that has the microVM's members
/// (`RunMicrovmOutput`, `GetMicrovmOutput`).
macro_rules! microvm_view {
    ($out:expr) => {{
        let o = $out;
        $crate::microvm_cli::view::MicrovmView {
            microvm_id: o.microvm_id().to_string(),
            state: o.state().as_str().to_string(),
            endpoint: o.endpoint().to_string(),
            image_arn: o.image_arn().to_string(),
            image_version: o.image_version().to_string(),
            execution_role_arn: o.execution_role_arn().map(str::to_string),
            idle_policy: o.idle_policy().cloned(),
            maximum_duration_secs: o.maximum_duration_in_seconds(),
            started_at: *o.started_at(),
            terminated_at: o.terminated_at().copied(),
            state_reason: o.state_reason().map(str::to_string),
            ingress_network_connectors: o.ingress_network_connectors().to_vec(),
            egress_network_connectors: o.egress_network_connectors().to_vec(),
        }
    }};
}
pub(crate) use microvm_view;

fn idle_policy_json(p: &IdlePolicy) -> Value {
    json!({
        "maxIdleDurationSeconds": p.max_idle_duration_seconds(),
        "suspendedDurationSeconds": p.suspended_duration_seconds(),
        "autoResumeEnabled": p.auto_resume_enabled(),
    })
}

impl MicrovmView {
    /// The API's JSON shape of the microVM.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        put("microvmId", self.microvm_id.clone().into());
        put("state", self.state.clone().into());
        put("endpoint", self.endpoint.clone().into());
        put("imageArn", self.image_arn.clone().into());
        put("imageVersion", self.image_version.clone().into());
        if let Some(r) = &self.execution_role_arn {
            put("executionRoleArn", r.clone().into());
        }
        if let Some(p) = &self.idle_policy {
            put("idlePolicy", idle_policy_json(p));
        }
        put(
            "maximumDurationInSeconds",
            self.maximum_duration_secs.into(),
        );
        put("startedAt", time(&self.started_at).into());
        if let Some(t) = &self.terminated_at {
            put("terminatedAt", time(t).into());
        }
        if let Some(r) = &self.state_reason {
            put("stateReason", r.clone().into());
        }
        if !self.ingress_network_connectors.is_empty() {
            put(
                "ingressNetworkConnectors",
                self.ingress_network_connectors.clone().into(),
            );
        }
        if !self.egress_network_connectors.is_empty() {
            put(
                "egressNetworkConnectors",
                self.egress_network_connectors.clone().into(),
            );
        }
        Value::Object(m)
    }

    /// `name  value` lines, names padded to one width.
    pub fn to_text(&self) -> String {
        let mut rows: Vec<(&str, String)> = vec![
            ("microvmId", self.microvm_id.clone()),
            ("state", self.state.clone()),
            ("endpoint", self.endpoint.clone()),
            ("imageArn", self.image_arn.clone()),
            ("imageVersion", self.image_version.clone()),
            ("startedAt", time(&self.started_at)),
        ];
        if let Some(t) = &self.terminated_at {
            rows.push(("terminatedAt", time(t)));
        }
        if let Some(r) = &self.state_reason {
            rows.push(("stateReason", r.clone()));
        }
        rows.push((
            "idlePolicy",
            match &self.idle_policy {
                None => "none (runs until its maximum duration)".to_string(),
                Some(p) => format!(
                    "suspend after {} s idle, terminate after {} s suspended, auto-resume {}",
                    p.max_idle_duration_seconds(),
                    p.suspended_duration_seconds(),
                    if p.auto_resume_enabled() { "on" } else { "off" }
                ),
            },
        ));
        rows.push((
            "maximumDuration",
            format!("{} s", self.maximum_duration_secs),
        ));
        if let Some(r) = &self.execution_role_arn {
            rows.push(("executionRoleArn", r.clone()));
        }
        if !self.ingress_network_connectors.is_empty() {
            rows.push((
                "ingressNetworkConnectors",
                self.ingress_network_connectors.join(", "),
            ));
        }
        if !self.egress_network_connectors.is_empty() {
            rows.push((
                "egressNetworkConnectors",
                self.egress_network_connectors.join(", "),
            ));
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("{k:<width$}  {v}\n"))
            .collect()
    }
}

/// A list item as JSON (the API's member names).
pub fn item_json(i: &MicrovmItem) -> Value {
    json!({
        "microvmId": i.microvm_id(),
        "state": i.state().as_str(),
        "imageArn": i.image_arn(),
        "imageVersion": i.image_version(),
        "startedAt": time(i.started_at()),
    })
}

/// The resource id at the end of an ARN (`...:microvm-image:img-x` gives
/// `img-x`), or the whole text if it is no ARN.
pub fn arn_resource(arn: &str) -> &str {
    arn.rsplit(':').next().unwrap_or(arn)
}

/// Left-aligned columns two spaces apart; the last column is not padded.
pub fn table<const N: usize>(head: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(head.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// A call's duration for people: `812 ms` below a second, else `1.23 s`.
pub fn elapsed_text(d: std::time::Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_lambdamicrovms::operation::get_microvm::GetMicrovmOutput;
    use aws_sdk_lambdamicrovms::types::MicrovmState;

    fn sample(idle: Option<IdlePolicy>) -> MicrovmView {
        let out = GetMicrovmOutput::builder()
            .microvm_id("mvm-abc")
            .state(MicrovmState::Running)
            .endpoint("mvm-abc.localhost:8443")
            .image_arn("arn:aws:lambda:us-east-1:123456789012:microvm-image:img-x")
            .image_version("2")
            .set_idle_policy(idle)
            .maximum_duration_in_seconds(28800)
            .started_at(DateTime::from_secs(1_790_000_000))
            .build()
            .unwrap();
        microvm_view!(&out)
    }

    fn policy(auto: bool) -> IdlePolicy {
        IdlePolicy::builder()
            .max_idle_duration_seconds(900)
            .suspended_duration_seconds(300)
            .auto_resume_enabled(auto)
            .build()
            .unwrap()
    }

    #[test]
    fn json_has_the_api_member_names_and_leaves_absent_members_out() {
        let v = sample(Some(policy(true))).to_json();
        assert_eq!(
            v,
            json!({
                "microvmId": "mvm-abc",
                "state": "RUNNING",
                "endpoint": "mvm-abc.localhost:8443",
                "imageArn": "arn:aws:lambda:us-east-1:123456789012:microvm-image:img-x",
                "imageVersion": "2",
                "idlePolicy": {
                    "maxIdleDurationSeconds": 900,
                    "suspendedDurationSeconds": 300,
                    "autoResumeEnabled": true,
                },
                "maximumDurationInSeconds": 28800,
                "startedAt": "2026-09-21T14:13:20Z",
            })
        );
        assert!(sample(None).to_json().get("idlePolicy").is_none());
    }

    #[test]
    fn text_lines_align_their_values_and_describe_the_idle_policy() {
        let t = sample(Some(policy(false))).to_text();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "microvmId        mvm-abc");
        assert_eq!(lines[2], "endpoint         mvm-abc.localhost:8443");
        assert!(
            t.contains("idlePolicy       suspend after 900 s idle, terminate after 300 s suspended, auto-resume off\n"),
            "{t}"
        );
        assert!(sample(None).to_text().contains("idlePolicy       none"));
    }

    #[test]
    fn arn_resources_and_durations_read_short() {
        assert_eq!(
            arn_resource("arn:aws:lambda:us-east-1:1:microvm-image:img-x"),
            "img-x"
        );
        assert_eq!(arn_resource("plain"), "plain");
        assert_eq!(
            elapsed_text(std::time::Duration::from_millis(812)),
            "812 ms"
        );
        assert_eq!(
            elapsed_text(std::time::Duration::from_millis(1234)),
            "1.23 s"
        );
    }

    #[test]
    fn a_table_pads_every_column_but_the_last() {
        let rows = [["mvm-a".to_string(), "RUNNING".to_string()]];
        assert_eq!(
            table(&["MICROVM", "STATE"], &rows),
            "MICROVM  STATE\nmvm-a    RUNNING\n"
        );
    }
}

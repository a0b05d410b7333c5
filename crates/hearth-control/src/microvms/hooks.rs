//! The microVM lifecycle hooks (`run`, `resume`, `suspend`, `terminate`)
//! as the control plane calls them, and the warm-up request a pooled clone
//! gets. Both are HTTP over the agent's TCP stream to a guest port
//! ([`hearth_builder::hooks`]), so no guest network is needed. Called on
//! the microVM's task (hooks) or the pool's refill task (warm-up).

use std::time::Duration;

use hearth_builder::hooks::{self as guest_http, HookAnswer};
use hearth_vmm::AgentClient;
use serde_json::json;

/// The body of the `resume`, `suspend` and `terminate` hooks.
pub fn microvm_body(microvm_id: &str) -> String {
    json!({ "microvmId": microvm_id }).to_string()
}

/// The body of the `run` hook.
pub fn run_body(microvm_id: &str, payload: Option<&str>) -> String {
    json!({ "microvmId": microvm_id, "runHookPayload": payload.unwrap_or("") }).to_string()
}

/// Call hook `name`; a 2xx answer within `timeout_secs` is success.
pub async fn call(
    agent: &AgentClient,
    port: u16,
    name: &str,
    body: &str,
    timeout_secs: u64,
) -> Result<(), String> {
    match guest_http::call(agent, port, name, body, Duration::from_secs(timeout_secs)).await {
        HookAnswer::Status { code, .. } if (200..300).contains(&code) => Ok(()),
        HookAnswer::Status { code, body } => Err(format!(
            "it answered {code}{}",
            if body.is_empty() {
                String::new()
            } else {
                format!(": {body}")
            }
        )),
        HookAnswer::NotListening(why) => Err(format!("no answer on port {port}: {why}")),
    }
}

/// Send one request to the app from inside the guest, so that the code
/// serving it is translated (TCG) or faulted in (KVM) before an end user's
/// request needs it: `POST` of the ready hook when the image has hooks,
/// else `GET /` on its port. Any HTTP answer counts.
pub async fn warm(
    agent: &AgentClient,
    target: WarmTarget,
    timeout: Duration,
) -> Result<(), String> {
    let answer = match target {
        WarmTarget::ReadyHook { port } => {
            guest_http::call(agent, port, "ready", "{}", timeout).await
        }
        WarmTarget::Get { port } => guest_http::get(agent, port, "/", timeout).await,
    };
    match answer {
        HookAnswer::Status { .. } => Ok(()),
        HookAnswer::NotListening(why) => Err(why),
    }
}

/// Where a warm-up request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarmTarget {
    ReadyHook { port: u16 },
    Get { port: u16 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_bodies_are_the_wire_format() {
        let v: serde_json::Value = serde_json::from_str(&run_body("mvm-1", Some("x\"y"))).unwrap();
        assert_eq!(v, json!({"microvmId": "mvm-1", "runHookPayload": "x\"y"}));
        let v: serde_json::Value = serde_json::from_str(&microvm_body("mvm-1")).unwrap();
        assert_eq!(v, json!({"microvmId": "mvm-1"}));
    }
}

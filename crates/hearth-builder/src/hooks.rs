//! The lifecycle hooks a build calls inside the guest (`ready`,
//! `validate`), and the port probe used when hooks are off: a minimal
//! HTTP/1.1 client over the agent's TCP stream to a guest port, so no guest
//! network is needed. Runs on the build's task.

use std::time::Duration;

use hearth_vmm::agent::stream::TcpStream;
use hearth_vmm::AgentClient;

/// Path prefix of every lifecycle hook.
pub const HOOK_PATH_PREFIX: &str = "/aws/lambda-microvms/runtime/v1/";
/// Most bytes read of a hook's answer.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What one call of a hook gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookAnswer {
    /// Nothing accepted the connection (or it closed before a status line).
    NotListening(String),
    /// An HTTP status, with the start of the body for messages.
    Status { code: u16, body: String },
}

/// POST `{HOOK_PATH_PREFIX}{hook}` with a JSON body to `port` in the guest.
pub async fn call(
    agent: &AgentClient,
    port: u16,
    hook: &str,
    body: &str,
    timeout: Duration,
) -> HookAnswer {
    let request = format!(
        "POST {HOOK_PATH_PREFIX}{hook} HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    match tokio::time::timeout(timeout, exchange(agent, port, request.as_bytes(), timeout)).await {
        Ok(answer) => answer,
        Err(_) => HookAnswer::NotListening(format!("no answer within {timeout:?}")),
    }
}

/// `GET path` on `port` in the guest (a warm-up request).
pub async fn get(agent: &AgentClient, port: u16, path: &str, timeout: Duration) -> HookAnswer {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n");
    match tokio::time::timeout(timeout, exchange(agent, port, request.as_bytes(), timeout)).await {
        Ok(answer) => answer,
        Err(_) => HookAnswer::NotListening(format!("no answer within {timeout:?}")),
    }
}

async fn exchange(agent: &AgentClient, port: u16, request: &[u8], timeout: Duration) -> HookAnswer {
    let mut stream: TcpStream = match agent.tcp_connect(port, timeout).await {
        Ok(s) => s,
        Err(e) => return HookAnswer::NotListening(e.to_string()),
    };
    if let Err(e) = stream.write(request).await {
        return HookAnswer::NotListening(e.to_string());
    }
    let _ = stream.shutdown_write().await;
    let answer = match stream.read_to_end(MAX_ANSWER_BYTES).await {
        Ok(a) => a,
        Err(e) => return HookAnswer::NotListening(e.to_string()),
    };
    parse_answer(&answer)
}

/// Status code and body start of a raw HTTP/1.x answer.
pub fn parse_answer(answer: &[u8]) -> HookAnswer {
    let text = String::from_utf8_lossy(answer);
    let Some(status_line) = text.lines().next().filter(|l| !l.is_empty()) else {
        return HookAnswer::NotListening("the connection closed without an answer".into());
    };
    let mut parts = status_line.split_whitespace();
    let code = match (
        parts.next(),
        parts.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") && (100..600).contains(&code) => code,
        _ => {
            return HookAnswer::NotListening(format!(
                "not an HTTP answer: {:?}",
                status_line.chars().take(80).collect::<String>()
            ))
        }
    };
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.chars().take(200).collect())
        .unwrap_or_default();
    HookAnswer::Status { code, body }
}

/// Whether something in the guest accepts TCP connections on `port`: the
/// agent connects and the connection stays up (a refused connect ends the
/// stream at once).
pub async fn port_accepts(agent: &AgentClient, port: u16, timeout: Duration) -> bool {
    match agent.tcp_connect(port, timeout).await {
        Ok(stream) => {
            drop(stream);
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_by_their_status_line() {
        assert_eq!(
            parse_answer(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nwait"),
            HookAnswer::Status {
                code: 503,
                body: "wait".into()
            }
        );
        assert_eq!(
            parse_answer(b"HTTP/1.0 200 OK\r\n\r\n"),
            HookAnswer::Status {
                code: 200,
                body: String::new()
            }
        );
        assert!(matches!(parse_answer(b""), HookAnswer::NotListening(_)));
        assert!(matches!(
            parse_answer(b"SSH-2.0-OpenSSH\r\n"),
            HookAnswer::NotListening(_)
        ));
        assert!(matches!(
            parse_answer(b"HTTP/1.1 999 Nope\r\n\r\n"),
            HookAnswer::NotListening(_)
        ));
    }
}

//! Commands in a build's guests, through the agent: one step with its
//! output streamed to the build log, short administrative commands, and
//! feeding a file to a command's stdin. Runs on the build's task.

use std::path::Path;
use std::time::Duration;

use hearth_proto::v2::ExecRequest;
use hearth_vmm::agent::stream::StreamEvent;
use hearth_vmm::AgentClient;
use tokio::io::AsyncReadExt;

use crate::error::Failure;
use crate::log::Logger;

/// `PATH` for steps and the app unless the Dockerfile's ENV sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long one agent request (not a whole step) may take.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Chunk of a file fed to stdin.
const STDIN_CHUNK_BYTES: usize = 256 * 1024;

/// Run `req` to its end, streaming its output into the log. A non-zero
/// exit or a signal is a [`Failure::StepExit`].
pub(crate) async fn run_streamed(
    agent: &AgentClient,
    req: ExecRequest,
    log: &Logger,
    stdin_file: Option<&Path>,
) -> Result<(), Failure> {
    let mut p = agent
        .exec(req, AGENT_TIMEOUT)
        .await
        .map_err(Failure::Agent)?;
    if let Some(path) = stdin_file {
        let mut f = tokio::fs::File::open(path)
            .await
            .map_err(|e| Failure::Io(format!("{}: {e}", path.display())))?;
        let mut buf = vec![0u8; STDIN_CHUNK_BYTES];
        loop {
            let n = f
                .read(&mut buf)
                .await
                .map_err(|e| Failure::Io(format!("{}: {e}", path.display())))?;
            if n == 0 {
                break;
            }
            p.write_stdin(&buf[..n]).await.map_err(Failure::Agent)?;
        }
        p.close_stdin().await.map_err(Failure::Agent)?;
    }
    loop {
        match p.events.recv().await {
            Some(StreamEvent::Output { data, .. }) => log.output(&data),
            Some(StreamEvent::Exited { status, .. }) => {
                if status.success() {
                    return Ok(());
                }
                let status = match (status.code, status.signal) {
                    (Some(c), _) => format!("exit code {c}"),
                    (None, Some(s)) => format!("signal {s}"),
                    (None, None) => "an unknown status".into(),
                };
                return Err(Failure::StepExit { status });
            }
            Some(StreamEvent::Closed { reason }) => {
                return Err(Failure::Agent(hearth_vmm::AgentClientError::StreamClosed {
                    stream: p.stream,
                    reason,
                }))
            }
            Some(_) => {}
            None => return Err(Failure::Agent(hearth_vmm::AgentClientError::Closed)),
        }
    }
}

/// An administrative command of the builder's own (as root, plain argv).
pub fn admin(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![("PATH".into(), DEFAULT_PATH.into())],
        clear_env: true,
        ..Default::default()
    }
}

/// `s` quoted for `/bin/sh`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}

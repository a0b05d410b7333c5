//! Why a build failed: the phase it failed in, what went wrong, and the
//! last lines of its output, ready to become the build's `stateReason`.

use std::fmt;

use crate::Phase;

/// What went wrong, by cause.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("the code artifact has no Dockerfile at its root")]
    NoDockerfile,
    #[error("the Dockerfile is not valid UTF-8 or is larger than {max_bytes} bytes")]
    DockerfileUnreadable { max_bytes: usize },
    #[error("Dockerfile {0}")]
    Dockerfile(String),
    #[error("FROM {from:?} does not name the base image {base:?} (use its name or ARN)")]
    FromMismatch { from: String, base: String },
    #[error("COPY on line {line}: {message}")]
    Copy { line: usize, message: String },
    #[error("the build context cannot be read: {0}")]
    Context(String),
    #[error("the command exited with {status}")]
    StepExit { status: String },
    #[error("no CMD or ENTRYPOINT: the image has no process to start")]
    NoProcess,
    #[error("the app did not become ready within {timeout_secs} s ({detail})")]
    ReadyTimeout { timeout_secs: u64, detail: String },
    #[error("the ready hook answered HTTP {code}{}", body_suffix(.body))]
    ReadyRefused { code: u16, body: String },
    #[error("the validate hook answered HTTP {code}{}", body_suffix(.body))]
    ValidateRefused { code: u16, body: String },
    #[error("the validate hook did not answer: {0}")]
    ValidateUnreachable(String),
    #[error("the build took longer than its limit of {limit_secs} s")]
    Deadline { limit_secs: u64 },
    #[error("the microVM failed: {0}")]
    Engine(#[source] hearth_vmm::VmError),
    #[error("the guest agent failed: {0}")]
    Agent(#[source] hearth_vmm::AgentClientError),
    #[error("host I/O failed: {0}")]
    Io(String),
}

fn body_suffix(body: &str) -> String {
    if body.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", body.trim())
    }
}

/// A failed build.
#[derive(Debug)]
pub struct BuildError {
    pub phase: Phase,
    pub failure: Failure,
    /// The last lines of output before the failure.
    pub tail: Vec<String>,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.phase, self.failure)
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.failure)
    }
}

impl BuildError {
    /// A one-paragraph reason naming the phase and quoting the last output
    /// lines, printable ASCII only, at most `max_chars` characters (the
    /// API's `stateReason` has a length limit and a pattern).
    pub fn state_reason(&self, max_chars: usize) -> String {
        let mut s = self.to_string();
        if !self.tail.is_empty() {
            s.push_str(". Last output: ");
            s.push_str(&self.tail.join(" | "));
        }
        printable(&s, max_chars)
    }
}

/// `s` with every character outside printable ASCII replaced by `?` and
/// cut to `max_chars` (ending in `...` when cut).
pub fn printable(s: &str, max_chars: usize) -> String {
    let clean: String = s
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect();
    if clean.len() <= max_chars {
        return clean;
    }
    let mut cut: String = clean.chars().take(max_chars.saturating_sub(3)).collect();
    cut.push_str("...");
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_names_the_phase_and_quotes_the_tail_within_its_limit() {
        let e = BuildError {
            phase: Phase::Step {
                index: 2,
                total: 3,
                description: "RUN false".into(),
            },
            failure: Failure::StepExit {
                status: "exit code 1".into(),
            },
            tail: vec!["bad thing\u{1b}[31m".into(), "worse".into()],
        };
        let r = e.state_reason(1000);
        assert_eq!(
            r,
            "step 2/3 (RUN false) failed: the command exited with exit code 1. Last output: bad thing?[31m | worse"
        );
        let short = e.state_reason(20);
        assert_eq!(short.len(), 20);
        assert!(short.ends_with("..."));
    }
}

//! Interactive shells in microVMs: a process on a new pseudo-terminal in
//! the guest, opened by the agent (PTY `Exec`), running the image's shell
//! as its USER, in its WORKDIR, with its environment. The proxy's glue
//! pumps it to and from the client; this module opens it (through the
//! microVM's task, which resumes a suspended microVM first) and hands out
//! the process's two halves and the microVM's end notices. Runs on the
//! caller's (proxy) task.

use std::sync::Arc;
use std::time::Duration;

use hearth_proto::v2::{ExecRequest, PtySize};
use hearth_vmm::agent::stream::{ProcessInput, StreamReceiver};
use tokio::sync::broadcast;

/// The shell started on the terminal: bash when the image has it, else sh.
pub const SHELL_SCRIPT: &str =
    "if command -v bash >/dev/null 2>&1; then exec bash; else exec sh; fi";
/// What `TERM` is when the image's environment sets none.
pub const DEFAULT_TERM: &str = "xterm-256color";
/// How long starting the shell may take.
pub const SHELL_START_TIMEOUT: Duration = Duration::from_secs(10);

/// An open shell.
pub struct ShellSession {
    /// Unique per session.
    pub session_id: String,
    /// Keystrokes and resizes.
    pub input: ProcessInput,
    /// Terminal output, then the exit. Dropping it hangs the terminal up
    /// (the agent closes the terminal; its session gets SIGHUP).
    pub events: StreamReceiver,
    /// The reason, when the microVM stops running (suspend, terminate, a
    /// failure): the session must end with it.
    pub ends: broadcast::Receiver<String>,
    /// Call on traffic either way (the idle policy's activity).
    pub activity: Arc<dyn Fn() + Send + Sync>,
}

/// Why a shell could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error(transparent)]
    Refused(#[from] super::OpenRefusal),
    /// The microVM's endpoint does not let shells in.
    #[error(
        "microVM {id} does not accept shell sessions: its ingress network connectors do not \
         include SHELL_INGRESS or ALL_INGRESS"
    )]
    NotAllowed { id: String },
    /// The agent could not start it.
    #[error("starting a shell in microVM {id}: {detail}")]
    Start { id: String, detail: String },
}

/// The `Exec` of a shell for `profile` on a terminal of `size`.
pub fn shell_exec(profile: &hearth_builder::ShellProfile, size: PtySize) -> ExecRequest {
    let mut env = profile.env.clone();
    if !env.iter().any(|(k, _)| k == "TERM") {
        env.push(("TERM".into(), DEFAULT_TERM.into()));
    }
    ExecRequest {
        argv: vec!["/bin/sh".into(), "-c".into(), SHELL_SCRIPT.into()],
        env,
        clear_env: true,
        cwd: Some(profile.workdir.clone()),
        user: profile.user.clone(),
        pty: Some(size),
        ..Default::default()
    }
}

/// A new session id (a random UUID, version 4).
pub fn new_session_id() -> String {
    let mut b = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shell_runs_as_the_image_user_in_its_workdir_with_its_env_and_a_term() {
        let p = hearth_builder::ShellProfile {
            user: Some("app".into()),
            workdir: "/srv/app".into(),
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("X".into(), "1".into()),
            ],
        };
        let r = shell_exec(
            &p,
            PtySize {
                cols: 100,
                rows: 30,
            },
        );
        assert_eq!(r.user.as_deref(), Some("app"));
        assert_eq!(r.cwd.as_deref(), Some("/srv/app"));
        assert!(r.clear_env);
        assert!(r.env.contains(&("X".into(), "1".into())));
        assert!(r.env.contains(&("TERM".into(), DEFAULT_TERM.into())));
        assert_eq!(
            r.pty,
            Some(PtySize {
                cols: 100,
                rows: 30
            })
        );
        let mut with_term = p.clone();
        with_term.env.push(("TERM".into(), "vt100".into()));
        let r = shell_exec(&with_term, PtySize { cols: 80, rows: 24 });
        assert_eq!(r.env.iter().filter(|(k, _)| k == "TERM").count(), 1);
    }

    #[test]
    fn session_ids_are_version_4_uuids() {
        let a = new_session_id();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!("89ab".contains(&a[19..20]));
        assert_ne!(a, new_session_id());
    }
}

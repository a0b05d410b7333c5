//! The endpoint proxy's way to microVMs: `hearth_proxy::Upstreams` on top
//! of the control plane's [`hearth_control::MicrovmControl`]: `connect`
//! (which resumes a suspended microVM when its idle policy says so, and
//! counts the traffic as activity), `ingress` and `open_shell`. A shell's
//! two directions are pumped between the proxy's channels and the agent's
//! terminal stream by two tasks of their own per session, so that a
//! terminal blocked on output never stops input and the other way round.
//! Runs on the proxy's connection tasks.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hearth_control::microvms::shell::{ShellError, ShellSession};
use hearth_control::{ConnectError, MicrovmControl, OpenRefusal};
use hearth_proto::v2::PtySize;
use hearth_proxy::{
    Ingress, OpenError, Shell, ShellInput, ShellOutput, TermSize, Upstream, Upstreams,
};
use hearth_store::AccountId;
use hearth_vmm::agent::stream::StreamEvent;
use tokio::sync::{broadcast, mpsc};

/// Messages queued each way between the proxy and a shell's pumps.
const SHELL_QUEUE: usize = 64;
/// How long a resize may take in the guest.
const RESIZE_TIMEOUT: Duration = Duration::from_secs(5);

/// The control plane, once it exists: the proxy is bound first (its port
/// is part of every endpoint), so requests that arrive before the control
/// plane is ready are answered 503.
pub struct ControlUpstreams(pub Arc<OnceLock<MicrovmControl>>);

impl ControlUpstreams {
    fn control(&self, account_id: &str) -> Result<(&MicrovmControl, AccountId), OpenError> {
        let control = self
            .0
            .get()
            .ok_or_else(|| OpenError::Unavailable("the server is starting; try again".into()))?;
        let account = AccountId::new(account_id).map_err(|_| OpenError::NotFound)?;
        Ok((control, account))
    }
}

fn refusal(e: OpenRefusal) -> OpenError {
    match e {
        OpenRefusal::NotFound(_) => OpenError::NotFound,
        OpenRefusal::NotRunning { state, hint, .. } => OpenError::NotRunning {
            state: state.as_str().to_string(),
            hint,
        },
        e @ OpenRefusal::ResumeFailed { .. } => OpenError::Unavailable(e.to_string()),
    }
}

#[async_trait::async_trait]
impl Upstreams for ControlUpstreams {
    async fn ingress(&self, account_id: &str, microvm_id: &str) -> Result<Ingress, OpenError> {
        let (control, account) = self.control(account_id)?;
        let r = control.ingress(&account, microvm_id).map_err(refusal)?;
        Ok(Ingress {
            http: r.http,
            shell: r.shell,
        })
    }

    async fn open(
        &self,
        account_id: &str,
        microvm_id: &str,
        port: u16,
    ) -> Result<Upstream, OpenError> {
        let (control, account) = self.control(account_id)?;
        match control.connect(&account, microvm_id, port).await {
            Ok(c) => Ok(Upstream {
                io: Box::new(c.io),
                activity: c.activity,
            }),
            Err(ConnectError::Refused(e)) => Err(refusal(e)),
            Err(ConnectError::NotListening { .. }) => Err(OpenError::Refused),
        }
    }

    async fn open_shell(
        &self,
        account_id: &str,
        microvm_id: &str,
        size: TermSize,
    ) -> Result<Shell, OpenError> {
        let (control, account) = self.control(account_id)?;
        let size = PtySize {
            cols: size.cols,
            rows: size.rows,
        };
        let session = match control.open_shell(&account, microvm_id, size).await {
            Ok(s) => s,
            Err(ShellError::Refused(e)) => return Err(refusal(e)),
            Err(e @ ShellError::NotAllowed { .. }) => {
                return Err(OpenError::Unavailable(e.to_string()))
            }
            Err(e @ ShellError::Start { .. }) => return Err(OpenError::Unavailable(e.to_string())),
        };
        Ok(pump_shell(session))
    }
}

/// Connect a control-plane shell session to the proxy's channels.
fn pump_shell(session: ShellSession) -> Shell {
    let ShellSession {
        session_id,
        input,
        mut events,
        mut ends,
        activity,
    } = session;
    let (in_tx, mut in_rx) = mpsc::channel::<ShellInput>(SHELL_QUEUE);
    let (out_tx, out_rx) = mpsc::channel::<ShellOutput>(SHELL_QUEUE);
    // Client to terminal. Ends when the client goes (the output pump sees
    // its channel close) or the terminal does.
    let writer = tokio::spawn(async move {
        while let Some(msg) = in_rx.recv().await {
            let r = match msg {
                ShellInput::Data(d) => input.write_stdin(&d).await,
                ShellInput::Resize(s) => {
                    input
                        .resize(
                            PtySize {
                                cols: s.cols,
                                rows: s.rows,
                            },
                            RESIZE_TIMEOUT,
                        )
                        .await
                }
            };
            if let Err(e) = r {
                tracing::debug!("shell input: {e}");
                break;
            }
        }
    });
    // Terminal to client; owns the events, so it ends the terminal when it
    // ends (dropping them hangs the terminal up).
    let sid = session_id.clone();
    tokio::spawn(async move {
        let end = loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(StreamEvent::Output { data, .. }) => {
                        if out_tx.send(ShellOutput::Data(data)).await.is_err() {
                            break None;
                        }
                    }
                    Some(StreamEvent::Exited { status, restarting: false }) => {
                        break Some(ShellOutput::Exited {
                            code: status.code,
                            signal: status.signal,
                        });
                    }
                    Some(StreamEvent::Closed { reason }) => {
                        break Some(ShellOutput::Closed {
                            reason: format!("the shell's stream closed: {reason:?}"),
                        });
                    }
                    Some(_) => {}
                    None => {
                        break Some(ShellOutput::Closed {
                            reason: "the microVM's agent went away".into(),
                        });
                    }
                },
                reason = ends.recv() => match reason {
                    Ok(r) => break Some(ShellOutput::Closed { reason: r }),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => {
                        break Some(ShellOutput::Closed { reason: "the microVM ended".into() });
                    }
                },
                () = out_tx.closed() => break None,
            }
        };
        if let Some(end) = end {
            let _ = out_tx.send(end).await;
        }
        writer.abort();
        tracing::debug!(session = %sid, "shell pumps ended");
    });
    Shell {
        session_id,
        input: in_tx,
        output: out_rx,
        activity,
    }
}

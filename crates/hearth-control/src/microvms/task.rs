//! One Tokio task per microVM: the only owner of its engine handle (a
//! running [`QemuVm`] or a [`SuspendedVm`]) and of its state machine
//! ([`hearth_domain::microvm`]). Everything else talks to it through its
//! [`Handle`]: requests arrive on a queue (the API's suspend, resume and
//! terminate; the proxy's "open a stream"), engine events arrive as futures
//! it selects on (the agent channel failing, QEMU gone), and its timers are
//! the idle policy's and the maximum duration's deadlines. Requests are
//! handled one at a time, so concurrent requests merge: every proxy
//! request that arrives during a resume waits on the queue and finds the
//! microVM RUNNING.
//!
//! Each state change is written to the store (conditional on the state it
//! was computed from) before the task acts on the next request, and the
//! observed state is published on a watch for cheap reads.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hearth_domain::{
    admit, microvm::transition, next_deadline, Admission, Deadline, MicrovmEvent, MicrovmRequest,
    MicrovmState,
};
use hearth_store::{AccountId, StateUpdate};
use hearth_vmm::agent::stream::StreamEvent;
use hearth_vmm::{AgentClient, MicroVm, QemuVm, SuspendedVm, VmBackend};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::doc::MicrovmDoc;
use super::hooks;
use super::Shared;
use crate::images::blocking;
use crate::logs::LogWriter;
use crate::writes::now_secs;
use crate::ControlError;

/// Requests waiting for one microVM's task; more wait for room.
const QUEUE_DEPTH: usize = 256;
/// The named process an image build starts the app as.
const APP_PROCESS: &str = "app";
/// How long attaching to the app's output may take.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after a failed idle suspend (a full disk, say) the next try is.
pub const SUSPEND_RETRY_SECS: i64 = 60;

/// Why a stream to a microVM could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenRefusal {
    #[error("microVM {0} was not found")]
    NotFound(String),
    /// Not RUNNING, and nothing will make it so for this request.
    #[error("microVM {id} is {state}: {hint}")]
    NotRunning {
        id: String,
        state: MicrovmState,
        hint: String,
    },
    /// Bringing it back failed.
    #[error("microVM {id} could not be resumed: {detail}")]
    ResumeFailed { id: String, detail: String },
}

/// What the task is asked.
pub(crate) enum Command {
    Request {
        request: MicrovmRequest,
        /// The state reason a terminate records.
        reason: Option<String>,
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    /// The agent of the running microVM (resumed first when it is
    /// SUSPENDED and its idle policy resumes automatically).
    Open {
        reply: oneshot::Sender<Result<AgentClient, OpenRefusal>>,
    },
}

/// The way in to a microVM's task. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Handle {
    pub account: AccountId,
    pub tx: mpsc::Sender<Command>,
    /// Unix seconds of the last traffic through the proxy.
    pub last_activity: Arc<AtomicI64>,
    pub state: watch::Receiver<MicrovmState>,
    /// The app's output log, while this server writes it.
    pub log: Option<Arc<LogWriter>>,
    /// What its endpoint lets in.
    pub ingress: crate::connectors::IngressRules,
    /// How its shells run.
    pub shell: Arc<hearth_builder::ShellProfile>,
    /// Sessions (shells) that must end when the microVM stops running
    /// subscribe here; the task sends the reason before it suspends,
    /// terminates or loses the microVM.
    pub ends: broadcast::Sender<String>,
}

impl Handle {
    pub fn touch(&self) {
        self.last_activity.fetch_max(now_secs(), Ordering::Relaxed);
    }
}

/// What the task holds of the engine. One per microVM, moved between
/// variants rarely: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Held {
    Running(QemuVm),
    Suspended(SuspendedVm),
    /// Terminated, or a launch that never produced a microVM.
    Nothing,
}

pub(crate) struct Task {
    shared: Arc<Shared>,
    account: AccountId,
    id: String,
    state: MicrovmState,
    doc: MicrovmDoc,
    held: Held,
    last_activity: Arc<AtomicI64>,
    state_tx: watch::Sender<MicrovmState>,
    rx: mpsc::Receiver<Command>,
    /// An idle suspend failed; not before this again.
    suspend_not_before: Option<i64>,
    /// The app's stdout and stderr go here while it runs.
    log: Option<Arc<LogWriter>>,
    /// The task copying the app's output into `log`.
    log_pump: Option<tokio::task::AbortHandle>,
    /// See [`Handle::ends`].
    ends: broadcast::Sender<String>,
}

/// Start a running microVM's task (`vm` RUNNING) or a suspended one's.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    account: AccountId,
    id: String,
    state: MicrovmState,
    doc: MicrovmDoc,
    held: Option<Result<QemuVm, SuspendedVm>>,
) -> Handle {
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let (state_tx, state_rx) = watch::channel(state);
    let last_activity = Arc::new(AtomicI64::new(doc.hearth.last_activity_at));
    let log = shared.app_log_path(&account, &id).and_then(|path| {
        LogWriter::append_to(&path)
            .map_err(|e| tracing::warn!(microvm = %id, "the app log {}: {e}", path.display()))
            .ok()
            .map(Arc::new)
    });
    let (ends, _) = broadcast::channel(4);
    let handle = Handle {
        account: account.clone(),
        tx,
        last_activity: last_activity.clone(),
        state: state_rx,
        log: log.clone(),
        ingress: crate::connectors::IngressRules::of(doc.ingress_network_connectors.as_deref()),
        shell: Arc::new(doc.hearth.shell.clone().unwrap_or_default()),
        ends: ends.clone(),
    };
    let task = Task {
        shared: shared.clone(),
        account,
        id: id.clone(),
        state,
        doc,
        held: match held {
            Some(Ok(vm)) => Held::Running(vm),
            Some(Err(s)) => Held::Suspended(s),
            None => Held::Nothing,
        },
        last_activity,
        state_tx,
        rx,
        suspend_not_before: None,
        log,
        log_pump: None,
        ends,
    };
    shared.handles.lock().unwrap().insert(id, handle.clone());
    tokio::spawn(task.run());
    handle
}

/// Sleep until a Unix second (at once when it has passed).
async fn sleep_until_secs(at_secs: i64) {
    let wait = at_secs.saturating_sub(now_secs()).max(0) as u64;
    tokio::time::sleep(Duration::from_secs(wait)).await;
}

impl Task {
    async fn run(mut self) {
        tracing::debug!(microvm = %self.id, state = %self.state.as_str(), "microVM task started");
        self.start_log_pump();
        while self.state != MicrovmState::Terminated {
            let deadline = self.deadline();
            let agent = match &self.held {
                Held::Running(vm) => Some(vm.agent().clone()),
                _ => None,
            };
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
                () = async {
                    match deadline.at_secs() {
                        Some(at) => sleep_until_secs(at).await,
                        None => std::future::pending().await,
                    }
                } => self.on_deadline(deadline).await,
                health = async {
                    match &agent {
                        Some(a) => a.wait_unhealthy().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let reason = format!("the microVM stopped unexpectedly ({health:?})");
                    tracing::warn!(microvm = %self.id, "{reason}");
                    if let Err(e) = self.lost(reason).await {
                        tracing::error!(microvm = %self.id, "recording a lost microVM: {e}");
                    }
                }
            }
        }
        self.stop_log_pump();
        if let Some(log) = &self.log {
            log.finish(&format!(
                "[hearth] microVM {} ended: {}",
                self.id,
                self.doc.state_reason.as_deref().unwrap_or("terminated")
            ));
        }
        self.shared.handles.lock().unwrap().remove(&self.id);
        // Requests still queued find the microVM gone.
        self.rx.close();
        while let Ok(cmd) = self.rx.try_recv() {
            self.refuse(cmd);
        }
        tracing::debug!(microvm = %self.id, "microVM task ended");
    }

    /// Copy the app's output into the log while the microVM runs: attach
    /// to the named process the image's build started (`app`).
    fn start_log_pump(&mut self) {
        self.stop_log_pump();
        let (Some(log), Held::Running(vm)) = (self.log.clone(), &self.held) else {
            return;
        };
        let agent = vm.agent().clone();
        let id = self.id.clone();
        let pump = tokio::spawn(async move {
            let mut attachment = match agent.attach(APP_PROCESS, ATTACH_TIMEOUT).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(microvm = %id, "attaching to the app's output: {e}");
                    return;
                }
            };
            while let Some(ev) = attachment.events.recv().await {
                match ev {
                    StreamEvent::Output { data, .. } => log.append(&data),
                    StreamEvent::Exited { status, restarting } => log.line(&format!(
                        "[hearth] the app exited ({status:?}){}",
                        if restarting { "; restarting it" } else { "" }
                    )),
                    StreamEvent::Started { pid } => {
                        log.line(&format!("[hearth] the app started again (pid {pid})"))
                    }
                    StreamEvent::Closed { .. } => break,
                    StreamEvent::Data(_) | StreamEvent::Eof => {}
                }
            }
        });
        self.log_pump = Some(pump.abort_handle());
    }

    fn stop_log_pump(&mut self) {
        if let Some(p) = self.log_pump.take() {
            p.abort();
        }
    }

    fn policy(&self) -> Option<hearth_domain::IdlePolicy> {
        self.doc.idle_policy.map(|p| p.domain())
    }

    fn deadline(&self) -> Deadline {
        let d = next_deadline(
            self.state,
            self.policy().as_ref(),
            self.doc.started_at,
            self.doc.maximum_duration_in_seconds,
            self.last_activity.load(Ordering::Relaxed),
            self.doc.hearth.suspended_at,
        );
        match (d, self.suspend_not_before) {
            (Deadline::SuspendAt(at), Some(not_before)) if at < not_before => {
                Deadline::SuspendAt(not_before)
            }
            _ => d,
        }
    }

    async fn on_deadline(&mut self, deadline: Deadline) {
        match deadline {
            Deadline::None => {}
            Deadline::SuspendAt(_) => {
                // Traffic may have come since the deadline was computed.
                if !matches!(self.deadline(), Deadline::SuspendAt(at) if at <= now_secs()) {
                    return;
                }
                tracing::info!(microvm = %self.id, "idle: suspending");
                if let Err(e) = self.suspend().await {
                    tracing::warn!(microvm = %self.id, "idle suspend failed, retrying in {SUSPEND_RETRY_SECS} s: {e}");
                    self.suspend_not_before = Some(now_secs() + SUSPEND_RETRY_SECS);
                }
            }
            Deadline::TerminateAt { reason, .. } => {
                tracing::info!(microvm = %self.id, "terminating: {}", reason.state_reason());
                if let Err(e) = self
                    .terminate(Some(reason.state_reason().to_string()))
                    .await
                {
                    tracing::error!(microvm = %self.id, "terminate failed: {e}");
                }
            }
        }
    }

    fn refuse(&self, cmd: Command) {
        match cmd {
            Command::Request { reply, .. } => {
                let _ = reply.send(Err(ControlError::NotFound {
                    kind: "microVM",
                    id: self.id.clone(),
                }));
            }
            Command::Open { reply } => {
                let _ = reply.send(Err(OpenRefusal::NotFound(self.id.clone())));
            }
        }
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Request {
                request,
                reason,
                reply,
            } => {
                let r = match admit(self.state, request) {
                    Admission::Conflict { reason } => Err(ControlError::MicrovmConflict {
                        id: self.id.clone(),
                        reason,
                    }),
                    // One request at a time: a request "under way" has
                    // already finished by the time this one is read.
                    Admission::Join => Ok(()),
                    Admission::Begin => match request {
                        MicrovmRequest::Suspend => self.suspend().await,
                        MicrovmRequest::Resume => self.resume().await,
                        MicrovmRequest::Terminate => self.terminate(reason).await,
                    },
                };
                let _ = reply.send(r);
            }
            Command::Open { reply } => {
                let r = self.open().await;
                let _ = reply.send(r);
            }
        }
    }

    async fn open(&mut self) -> Result<AgentClient, OpenRefusal> {
        self.last_activity.fetch_max(now_secs(), Ordering::Relaxed);
        let auto_resume = self.doc.idle_policy.is_some_and(|p| p.auto_resume_enabled);
        match (&self.held, self.state) {
            (Held::Running(vm), MicrovmState::Running) => Ok(vm.agent().clone()),
            (Held::Suspended(_), MicrovmState::Suspended) if auto_resume => {
                match self.resume().await {
                    Ok(()) => match &self.held {
                        Held::Running(vm) => Ok(vm.agent().clone()),
                        _ => Err(OpenRefusal::ResumeFailed {
                            id: self.id.clone(),
                            detail: "it did not come back".into(),
                        }),
                    },
                    Err(e) => Err(OpenRefusal::ResumeFailed {
                        id: self.id.clone(),
                        detail: e.to_string(),
                    }),
                }
            }
            (_, state) => Err(OpenRefusal::NotRunning {
                id: self.id.clone(),
                state,
                hint: match state {
                    MicrovmState::Suspended => {
                        "its idle policy does not resume it automatically; call ResumeMicrovm first"
                            .into()
                    }
                    MicrovmState::Terminated | MicrovmState::Terminating => "it has ended".into(),
                    _ => "try again shortly".into(),
                },
            }),
        }
    }

    /// Move to the state `event` leads to and write it, with the document
    /// as it is now.
    async fn record(&mut self, event: MicrovmEvent) -> Result<(), ControlError> {
        let to = transition(self.state, event)?;
        self.doc.hearth.last_activity_at = self.last_activity.load(Ordering::Relaxed);
        let update = StateUpdate {
            state: to.as_str().into(),
            doc: self.doc.to_value(),
            updated_at_secs: now_secs(),
            expected_state: Some(self.state.as_str().into()),
        };
        let (acct, id) = (self.account.clone(), self.id.clone());
        let res = blocking(&self.shared.store, move |st| {
            Ok(st.update_microvm(&acct, &id, &update)?)
        })
        .await;
        let begins = matches!(
            event,
            MicrovmEvent::SuspendBegan | MicrovmEvent::ResumeBegan | MicrovmEvent::TerminateBegan
        );
        if res.is_err() && begins {
            // An intent that could not be recorded is not acted on: the
            // microVM stays as it was.
            return res.map(|_| ());
        }
        // An observation follows the engine even when the write failed
        // (the next write carries the state forward).
        self.state = to;
        let _ = self.state_tx.send(to);
        res.map(|_| ())
    }

    async fn hook(&self, name: &str, timeout_secs: Option<u64>, body: String) {
        let (Some(secs), Held::Running(vm)) = (timeout_secs, &self.held) else {
            return;
        };
        let answer = hooks::call(vm.agent(), self.doc.hearth.hooks.port, name, &body, secs).await;
        if let Err(e) = answer {
            tracing::warn!(microvm = %self.id, "the {name} hook failed: {e}");
        }
    }

    /// Tell open sessions the microVM stops running, and why.
    fn end_sessions(&self, reason: &str) {
        let _ = self.ends.send(reason.to_string());
    }

    async fn suspend(&mut self) -> Result<(), ControlError> {
        self.record(MicrovmEvent::SuspendBegan).await?;
        self.end_sessions("the microVM was suspended");
        let timeout = self.doc.hearth.hooks.suspend_timeout_secs;
        self.hook("suspend", timeout, hooks::microvm_body(&self.id))
            .await;
        self.stop_log_pump();
        let Held::Running(mut vm) = std::mem::replace(&mut self.held, Held::Nothing) else {
            unreachable!("a RUNNING microVM's task holds its QEMU");
        };
        match vm.suspend().await {
            Ok(suspended) => {
                self.held = Held::Suspended(suspended);
                self.doc.hearth.suspended_at = Some(now_secs());
                self.suspend_not_before = None;
                self.record(MicrovmEvent::Suspended).await
            }
            Err(e) => {
                let still_running = vm.state() == hearth_vmm::VmState::Running;
                let err = ControlError::Engine {
                    what: format!("suspending microVM {}", self.id),
                    source: Box::new(e),
                };
                if still_running {
                    self.held = Held::Running(vm);
                    self.start_log_pump();
                    self.record(MicrovmEvent::SuspendFailed).await?;
                } else {
                    self.held = Held::Running(vm);
                    self.lost(format!("the microVM failed while suspending: {err}"))
                        .await?;
                }
                Err(err)
            }
        }
    }

    async fn resume(&mut self) -> Result<(), ControlError> {
        let backend = self.shared.backend()?;
        self.record(MicrovmEvent::ResumeBegan).await?;
        let Held::Suspended(suspended) = std::mem::replace(&mut self.held, Held::Nothing) else {
            unreachable!("a SUSPENDED microVM's task holds its files");
        };
        let dir = suspended.dir.clone();
        match backend.resume(suspended).await {
            Ok(vm) => {
                self.held = Held::Running(vm);
                self.start_log_pump();
                self.doc.hearth.suspended_at = None;
                self.last_activity.fetch_max(now_secs(), Ordering::Relaxed);
                self.record(MicrovmEvent::Started).await?;
                let timeout = self.doc.hearth.hooks.resume_timeout_secs;
                self.hook("resume", timeout, hooks::microvm_body(&self.id))
                    .await;
                self.shared.refill_prestarted(&self.doc.hearth.snapshot_id);
                Ok(())
            }
            Err(e) => {
                // A failed resume leaves the suspended files as they were.
                let err = ControlError::Engine {
                    what: format!("resuming microVM {}", self.id),
                    source: Box::new(e),
                };
                match SuspendedVm::load(&dir) {
                    Ok(s) => {
                        self.held = Held::Suspended(s);
                        self.record(MicrovmEvent::ResumeFailed).await?;
                    }
                    Err(load) => {
                        self.lost(format!("{err}; its suspended state is unreadable: {load}"))
                            .await?;
                    }
                }
                Err(err)
            }
        }
    }

    /// End the microVM: hooks, process, files; TERMINATED with `reason`.
    async fn terminate(&mut self, reason: Option<String>) -> Result<(), ControlError> {
        self.record(MicrovmEvent::TerminateBegan).await?;
        self.end_sessions("the microVM was terminated");
        let timeout = self.doc.hearth.hooks.terminate_timeout_secs;
        self.hook("terminate", timeout, hooks::microvm_body(&self.id))
            .await;
        self.stop_log_pump();
        let ended = match std::mem::replace(&mut self.held, Held::Nothing) {
            Held::Running(vm) => vm.terminate().await,
            Held::Suspended(s) => match self.shared.backend() {
                Ok(b) => b.discard_suspended(s).await,
                Err(_) => Ok(()),
            },
            Held::Nothing => Ok(()),
        };
        if let Err(e) = &ended {
            tracing::warn!(microvm = %self.id, "ending its engine state: {e}");
        }
        self.doc.terminated_at = Some(now_secs());
        self.doc.state_reason = Some(reason.unwrap_or_else(|| "terminated by request".into()));
        self.record(MicrovmEvent::Terminated).await
    }

    /// The microVM died under us: record it TERMINATED with `reason` and
    /// remove what is left of it.
    async fn lost(&mut self, reason: String) -> Result<(), ControlError> {
        self.end_sessions("the microVM stopped unexpectedly");
        if let Held::Running(vm) = std::mem::replace(&mut self.held, Held::Nothing) {
            let _ = vm.terminate().await;
        }
        self.doc.terminated_at = Some(now_secs());
        self.doc.state_reason = Some(reason);
        match transition(self.state, MicrovmEvent::Lost) {
            Ok(_) => self.record(MicrovmEvent::Lost).await,
            // SUSPENDED or already ending: go through TERMINATING.
            Err(_) => {
                self.record(MicrovmEvent::TerminateBegan).await?;
                self.record(MicrovmEvent::Terminated).await
            }
        }
    }
}

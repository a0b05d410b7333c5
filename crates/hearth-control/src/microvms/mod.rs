//! MicroVMs: `RunMicrovm` and every later change of a microVM.
//!
//! [`MicrovmControl`] is the API's and the proxy's way in. `run` picks the
//! image version, takes a warmed clone of its snapshot from the pool (or
//! launches one), gives it its identity, calls the `run` hook, writes the
//! row and starts the microVM's task ([`task`]), which from then on is the
//! only owner of the microVM's engine handle and state. Suspend, resume
//! and terminate are requests to that task; the proxy asks it for the
//! agent (resuming a suspended microVM first when its idle policy says so)
//! and opens its own stream to the guest port. At start-up
//! [`MicrovmControl::recover`] re-adopts what the engine still runs and
//! reconciles every row with it.
//!
//! Runs on the server's Tokio runtime: `run` and the requests on request
//! tasks, each microVM on its own task, pool refills on tasks of their own;
//! store calls on the blocking pool.

pub mod doc;
pub mod hooks;
mod pool;
mod recover;
pub mod shell;
pub mod task;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hearth_domain::{MicrovmRequest, MicrovmState, VersionState, VersionStatus};
use hearth_store::{AccountId, Image, ImageVersion, Microvm, NewMicrovm, PageRequest, Store};
use hearth_vmm::{
    LaunchSpec, Lifetime, MicroVm, QemuBackend, QemuVm, Snapshot, SnapshotId, VmBackend, VmId,
};
use tokio::sync::oneshot;

use hearth_builder::{GuestEgress, ShellProfile};

use crate::config::VersionConfig;
use crate::connectors;
use crate::images::blocking;
use crate::writes::now_secs;
use crate::ControlError;
use doc::{EngineDoc, IdlePolicyDoc, MicrovmDoc, MicrovmHooksConfig};
use hooks::WarmTarget;
pub use task::OpenRefusal;
use task::{Command, Handle};

/// Default and largest `maximumDurationInSeconds`.
pub const MAX_DURATION_SECS: u32 = 28_800;

/// How the server runs microVMs.
pub struct MicrovmSetup {
    /// `None` when this server has no engine: RunMicrovm is then refused.
    pub backend: Option<QemuBackend>,
    /// Endpoints are `<microvmId>.<endpoint_domain>[:<endpoint_port>]`.
    pub endpoint_domain: String,
    pub endpoint_port: Option<u16>,
    /// Warmed clones kept per image version's snapshot (0: no warming).
    pub warm_pool_depth: usize,
    /// QEMUs kept waiting per snapshot for launches and resumes.
    pub prestart_depth: usize,
    /// Running (or starting) microVMs this host takes before it answers
    /// InsufficientCapacity.
    pub max_running: usize,
    /// Where apps' output logs go (`<logs>/<account>/microvms/<id>.log`);
    /// `None`: not kept.
    pub logs_dir: Option<std::path::PathBuf>,
    /// The egress network microVMs with `INTERNET_EGRESS` use (the one
    /// image builds use); `None`: such a RunMicrovm is refused.
    pub egress: Option<GuestEgress>,
}

impl MicrovmSetup {
    /// A setup with no engine (servers and tests that only answer the rest
    /// of the API).
    pub fn without_engine() -> Self {
        Self {
            backend: None,
            endpoint_domain: "localhost".into(),
            endpoint_port: None,
            warm_pool_depth: 0,
            prestart_depth: 0,
            max_running: 0,
            logs_dir: None,
            egress: None,
        }
    }

    fn endpoint(&self, id: &str) -> String {
        match self.endpoint_port {
            Some(p) => format!("{id}.{}:{p}", self.endpoint_domain),
            None => format!("{id}.{}", self.endpoint_domain),
        }
    }
}

/// What RunMicrovm asks for, validated by the API.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub image: Image,
    pub image_version: Option<String>,
    pub idle_policy: Option<IdlePolicyDoc>,
    pub maximum_duration_secs: Option<u32>,
    /// Sensitive: given to the `run` hook, never stored or logged.
    pub run_hook_payload: Option<String>,
    pub execution_role_arn: Option<String>,
    pub kms_key_identifier: Option<String>,
    pub ingress_network_connectors: Option<Vec<String>>,
    pub egress_network_connectors: Option<Vec<String>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub setup: MicrovmSetup,
    pub handles: Mutex<HashMap<String, Handle>>,
    pub pool: pool::WarmPool,
}

impl Shared {
    /// Where a microVM's app log is kept.
    pub fn app_log_path(&self, account: &AccountId, id: &str) -> Option<std::path::PathBuf> {
        let root = self.setup.logs_dir.as_ref()?;
        Some(crate::logs::log_path(
            root,
            account.as_str(),
            "microvms",
            id,
        ))
    }

    pub fn backend(&self) -> Result<QemuBackend, ControlError> {
        self.setup.backend.clone().ok_or_else(|| {
            ControlError::Capacity(
                "this server runs no microVMs: it has no engine (run `hearth setup`, then restart `hearth serve`)".into(),
            )
        })
    }

    /// Top up the QEMUs waiting for `snapshot_id`, off the request path.
    pub fn refill_prestarted(&self, snapshot_id: &str) {
        let (Ok(backend), Ok(id)) = (self.backend(), SnapshotId::new(snapshot_id)) else {
            return;
        };
        let depth = self.setup.prestart_depth;
        if depth == 0 || self.pool.is_closed() {
            return;
        }
        tokio::spawn(async move {
            let Ok(snapshot) = backend.catalog().get(&id) else {
                return;
            };
            if let Err(e) = backend.prestart(&snapshot, depth).await {
                tracing::warn!(snapshot = %id, "pre-starting QEMUs: {e}");
            }
        });
    }
}

/// The control plane's handle on microVMs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MicrovmControl {
    pub(crate) shared: Arc<Shared>,
}

/// A stream to a guest port, for the proxy.
pub struct Connection {
    pub io: tokio::io::DuplexStream,
    /// Call on traffic through the proxy (either way): it resets the idle
    /// clock.
    pub activity: Arc<dyn Fn() + Send + Sync>,
}

/// Why the proxy could not reach a guest port.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Refused(#[from] OpenRefusal),
    /// The microVM runs, but nothing accepted the connection on the port.
    #[error("nothing accepts connections on port {port} in microVM {id}: {detail}")]
    NotListening {
        id: String,
        port: u16,
        detail: String,
    },
}

/// How long the proxy waits for the guest to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a warm-up request may take.
const WARM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long each step of bringing a clone's network up may take.
const NETWORK_SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a graceful stop waits for warm-pool refills under way.
const SHUTDOWN_REFILL_WAIT: Duration = Duration::from_secs(60);

impl MicrovmControl {
    pub fn new(store: Arc<dyn Store>, setup: MicrovmSetup) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                setup,
                handles: Mutex::new(HashMap::new()),
                pool: pool::WarmPool::default(),
            }),
        }
    }

    fn handle(&self, account: &AccountId, id: &str) -> Option<Handle> {
        self.shared
            .handles
            .lock()
            .unwrap()
            .get(id)
            .filter(|h| &h.account == account)
            .cloned()
    }

    /// Running or starting microVMs (the capacity count).
    fn active(&self) -> usize {
        self.shared
            .handles
            .lock()
            .unwrap()
            .values()
            .filter(|h| {
                matches!(
                    *h.state.borrow(),
                    MicrovmState::Pending | MicrovmState::Running | MicrovmState::Suspending
                )
            })
            .count()
    }

    /// RunMicrovm: a clone of the version's snapshot, app running, with
    /// its own identity; the `run` hook called. Returns its row.
    pub async fn run(&self, account: &AccountId, req: RunRequest) -> Result<Microvm, ControlError> {
        let version = pick_version(&self.shared.store, account, &req).await?;
        let launch = Launchable::of(&req.image, &version)?;
        let backend = self.shared.backend()?;
        let max = self.shared.setup.max_running;
        if self.active() >= max {
            return Err(ControlError::Capacity(format!(
                "this host runs {max} microVMs, its limit (--max-running-microvms); suspend or terminate some, or try again later"
            )));
        }
        let snapshot_id = SnapshotId::new(launch.snapshot_id.clone()).map_err(|e| {
            ControlError::Corrupt(format!("version {}: snapshot id: {e}", version.version))
        })?;
        let snapshot =
            backend
                .catalog()
                .get(&snapshot_id)
                .map_err(|source| ControlError::Engine {
                    what: format!(
                        "the snapshot of {} version {}",
                        req.image.name, version.version
                    ),
                    source: Box::new(source),
                })?;
        let egress = self.egress_for(&req, &snapshot, &version)?;
        self.shared
            .pool
            .set_owner(snapshot.id.as_str(), &req.image.image_id, &version.version);
        let vm = match &egress {
            None => self.take_or_launch(&backend, &snapshot).await?,
            Some(e) => launch_with_egress(&backend, &snapshot, e).await?,
        };
        let id = vm.id().to_string();
        let now = now_secs();
        let doc = MicrovmDoc {
            endpoint: self.shared.setup.endpoint(&id),
            execution_role_arn: req.execution_role_arn.clone(),
            idle_policy: req.idle_policy,
            maximum_duration_in_seconds: req.maximum_duration_secs.unwrap_or(MAX_DURATION_SECS),
            started_at: now,
            terminated_at: None,
            state_reason: None,
            kms_key_identifier: req.kms_key_identifier.clone(),
            ingress_network_connectors: req.ingress_network_connectors.clone(),
            egress_network_connectors: req.egress_network_connectors.clone(),
            hearth: EngineDoc {
                version: EngineDoc::VERSION,
                image_id: req.image.image_id.clone(),
                snapshot_id: launch.snapshot_id.clone(),
                hooks: launch.hooks,
                suspended_at: None,
                last_activity_at: now,
                shell: Some(launch.shell.clone()),
            },
        };
        if let Some(secs) = launch.hooks.run_timeout_secs {
            let body = hooks::run_body(&id, req.run_hook_payload.as_deref());
            if let Err(e) = hooks::call(vm.agent(), launch.hooks.port, "run", &body, secs).await {
                let _ = vm.terminate().await;
                let mut doc = doc;
                doc.terminated_at = Some(now_secs());
                doc.state_reason = Some(format!("the run hook failed: {e}"));
                return self
                    .insert(account, &req, &version, &id, MicrovmState::Terminated, &doc)
                    .await;
            }
        }
        let row = match self
            .insert(account, &req, &version, &id, MicrovmState::Running, &doc)
            .await
        {
            Ok(row) => row,
            Err(e) => {
                let _ = vm.terminate().await;
                return Err(e);
            }
        };
        task::spawn(
            self.shared.clone(),
            account.clone(),
            id,
            MicrovmState::Running,
            doc,
            Some(Ok(vm)),
        );
        self.refill(&snapshot, launch.warm);
        Ok(row)
    }

    /// The egress network a RunMicrovm asks for, if any: refused when this
    /// server has none or the version's snapshot has no network slot.
    fn egress_for(
        &self,
        req: &RunRequest,
        snapshot: &Snapshot,
        version: &ImageVersion,
    ) -> Result<Option<GuestEgress>, ControlError> {
        if !connectors::wants_internet(req.egress_network_connectors.as_deref()) {
            return Ok(None);
        }
        let Some(egress) = &self.shared.setup.egress else {
            return Err(ControlError::Invalid(
                "egressNetworkConnectors: this server has no egress network (it was started \
                 with --no-egress); run the microVM without INTERNET_EGRESS"
                    .into(),
            ));
        };
        if !snapshot.record.machine.nic_slot {
            return Err(ControlError::Invalid(format!(
                "egressNetworkConnectors: version {} of image {} was built before microVMs could \
                 have egress (its snapshot has no network slot); update the image to build a new \
                 version",
                version.version, req.image.name
            )));
        }
        Ok(Some(egress.clone()))
    }

    async fn insert(
        &self,
        account: &AccountId,
        req: &RunRequest,
        version: &ImageVersion,
        id: &str,
        state: MicrovmState,
        doc: &MicrovmDoc,
    ) -> Result<Microvm, ControlError> {
        let new = NewMicrovm {
            microvm_id: id.to_string(),
            image_arn: req.image.arn.clone(),
            image_version: version.version.clone(),
            state: state.as_str().into(),
            created_at_secs: doc.started_at,
            doc: doc.to_value(),
        };
        let acct = account.clone();
        blocking(&self.shared.store, move |st| {
            Ok(st.create_microvm(&acct, &new)?)
        })
        .await
    }

    /// A warmed clone of `snapshot` given a fresh identity, or a new clone.
    async fn take_or_launch(
        &self,
        backend: &QemuBackend,
        snapshot: &Snapshot,
    ) -> Result<QemuVm, ControlError> {
        while let Some(mut vm) = self.shared.pool.take(snapshot.id.as_str()) {
            match vm.reidentify().await {
                Ok(()) => return Ok(vm),
                Err(e) => {
                    tracing::warn!(microvm = %vm.id(), "a warmed clone failed at hand-out: {e}");
                    let _ = vm.terminate().await;
                }
            }
        }
        launch_clone(backend, snapshot, None).await
    }

    /// Keep the pool of warmed clones of `snapshot` full, off the request
    /// path, then the QEMUs waiting for it.
    fn refill(&self, snapshot: &Snapshot, warm: WarmTarget) {
        let depth = self.shared.setup.warm_pool_depth;
        let shared = self.shared.clone();
        let snapshot = snapshot.clone();
        if depth == 0 {
            shared.refill_prestarted(snapshot.id.as_str());
            return;
        }
        if !shared.pool.begin_refill(snapshot.id.as_str()) {
            return;
        }
        tokio::spawn(async move {
            let Ok(backend) = shared.backend() else {
                return;
            };
            while shared.pool.len(snapshot.id.as_str()) < depth {
                match warmed_clone(&backend, &snapshot, warm).await {
                    Ok(vm) => {
                        if let Some(vm) = shared.pool.put(snapshot.id.as_str(), vm) {
                            let _ = vm.terminate().await;
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(snapshot = %snapshot.id, "warming a clone: {e}");
                        break;
                    }
                }
            }
            shared.pool.end_refill(snapshot.id.as_str());
            shared.refill_prestarted(snapshot.id.as_str());
        });
    }

    /// Warm the pool of an image version ahead of its first RunMicrovm.
    pub async fn prepare(
        &self,
        account: &AccountId,
        image: &Image,
        version: &str,
    ) -> Result<(), ControlError> {
        let backend = self.shared.backend()?;
        let (acct, image_id, v) = (account.clone(), image.image_id.clone(), version.to_string());
        let version = blocking(&self.shared.store, move |st| {
            Ok(st.get_image_version(&acct, &image_id, &v)?)
        })
        .await?;
        let launch = Launchable::of(image, &version)?;
        let id = SnapshotId::new(launch.snapshot_id)
            .map_err(|e| ControlError::Corrupt(e.to_string()))?;
        let snapshot = backend
            .catalog()
            .get(&id)
            .map_err(|source| ControlError::Engine {
                what: "the version's snapshot".into(),
                source: Box::new(source),
            })?;
        self.refill(&snapshot, launch.warm);
        Ok(())
    }

    /// Stop the warmed clones and waiting QEMUs of an image's versions (of
    /// one version when given): the image or version is being deleted, and
    /// its snapshots can go only once nothing stands on them.
    pub async fn drain_image(&self, image_id: &str, version: Option<&str>) {
        for snapshot_id in self.shared.pool.snapshots_of(image_id, version) {
            self.drain(&snapshot_id).await;
        }
    }

    /// Stop the warmed clones and waiting QEMUs of a snapshot.
    pub async fn drain(&self, snapshot_id: &str) {
        for vm in self.shared.pool.drain(snapshot_id) {
            let _ = vm.terminate().await;
        }
        if let (Ok(b), Ok(id)) = (self.shared.backend(), SnapshotId::new(snapshot_id)) {
            if let Ok(s) = b.catalog().get(&id) {
                b.drain_pool(&s);
            }
        }
    }

    async fn request(
        &self,
        account: &AccountId,
        id: &str,
        request: MicrovmRequest,
        reason: Option<String>,
    ) -> Result<(), ControlError> {
        let Some(h) = self.handle(account, id) else {
            return self.not_running(account, id, request).await;
        };
        let (reply, rx) = oneshot::channel();
        let gone = || ControlError::NotFound {
            kind: "microVM",
            id: id.to_string(),
        };
        h.tx.send(Command::Request {
            request,
            reason,
            reply,
        })
        .await
        .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// A request for a microVM without a task: it is TERMINATED (a
    /// conflict) or not the caller's (not found).
    async fn not_running(
        &self,
        account: &AccountId,
        id: &str,
        request: MicrovmRequest,
    ) -> Result<(), ControlError> {
        let (acct, mid) = (account.clone(), id.to_string());
        let row = blocking(&self.shared.store, move |st| {
            Ok(st.get_microvm(&acct, &mid)?)
        })
        .await?;
        let mut state: MicrovmState = row.state.parse()?;
        if !state.is_final() {
            // A live row no task owns: the engine had no such microVM when
            // this server started (recovery gives every one it has a
            // task). It is lost, as recovery would have found it.
            tracing::warn!(microvm = %id, "{state:?} in the store but not in the engine: recording it lost");
            self.settle(&row, MicrovmState::Terminated, Some(recover::lost_reason()))
                .await?;
            state = MicrovmState::Terminated;
        }
        match hearth_domain::admit(state, request) {
            hearth_domain::Admission::Conflict { reason } => Err(ControlError::MicrovmConflict {
                id: id.to_string(),
                reason,
            }),
            _ => Err(ControlError::Internal {
                what: "microVM",
                detail: format!("{id} is {state:?} but no task owns it"),
            }),
        }
    }

    pub async fn suspend(&self, account: &AccountId, id: &str) -> Result<(), ControlError> {
        self.request(account, id, MicrovmRequest::Suspend, None)
            .await
    }

    pub async fn resume(&self, account: &AccountId, id: &str) -> Result<(), ControlError> {
        self.request(account, id, MicrovmRequest::Resume, None)
            .await
    }

    pub async fn terminate(&self, account: &AccountId, id: &str) -> Result<(), ControlError> {
        self.request(account, id, MicrovmRequest::Terminate, None)
            .await
    }

    /// Whether the microVM exists in the account with a live task (the
    /// proxy's check before it takes a token at its word).
    pub fn is_live(&self, account: &AccountId, id: &str) -> bool {
        self.handle(account, id).is_some()
    }

    /// Open a stream to `port` in the microVM, resuming it first when it is
    /// SUSPENDED and its idle policy resumes automatically. Counts as
    /// activity. Requests that arrive during a resume wait for it.
    pub async fn connect(
        &self,
        account: &AccountId,
        id: &str,
        port: u16,
    ) -> Result<Connection, ConnectError> {
        let h = self
            .handle(account, id)
            .ok_or_else(|| OpenRefusal::NotFound(id.to_string()))?;
        let agent = open_agent(&h, id).await?;
        let stream = agent
            .tcp_connect(port, CONNECT_TIMEOUT)
            .await
            .map_err(|e| ConnectError::NotListening {
                id: id.to_string(),
                port,
                detail: e.to_string(),
            })?;
        let activity_handle = h.clone();
        Ok(Connection {
            io: stream.into_io(),
            activity: Arc::new(move || activity_handle.touch()),
        })
    }

    /// What the microVM's endpoint lets in (its ingress connectors), without
    /// touching the microVM.
    pub fn ingress(
        &self,
        account: &AccountId,
        id: &str,
    ) -> Result<connectors::IngressRules, OpenRefusal> {
        self.handle(account, id)
            .map(|h| h.ingress)
            .ok_or_else(|| OpenRefusal::NotFound(id.to_string()))
    }

    /// Start an interactive shell on a terminal of `size`, resuming the
    /// microVM first when it is SUSPENDED and its idle policy resumes
    /// automatically. Counts as activity.
    pub async fn open_shell(
        &self,
        account: &AccountId,
        id: &str,
        size: hearth_proto::v2::PtySize,
    ) -> Result<shell::ShellSession, shell::ShellError> {
        let h = self
            .handle(account, id)
            .ok_or_else(|| OpenRefusal::NotFound(id.to_string()))?;
        if !h.ingress.shell {
            return Err(shell::ShellError::NotAllowed { id: id.to_string() });
        }
        // Subscribed before the microVM is known to run: a suspend that
        // follows is not missed.
        let ends = h.ends.subscribe();
        let agent = open_agent(&h, id).await?;
        let process = agent
            .exec(
                shell::shell_exec(&h.shell, size),
                shell::SHELL_START_TIMEOUT,
            )
            .await
            .map_err(|e| shell::ShellError::Start {
                id: id.to_string(),
                detail: e.to_string(),
            })?;
        let (input, mut events) = process.into_split();
        events.close_on_drop();
        let activity_handle = h.clone();
        Ok(shell::ShellSession {
            session_id: shell::new_session_id(),
            input,
            events,
            ends,
            activity: Arc::new(move || activity_handle.touch()),
        })
    }

    /// A microVM's app log: its file, and while the microVM lives, its
    /// progress (followers stop once it ends).
    pub async fn open_log(
        &self,
        account: &AccountId,
        id: &str,
    ) -> Result<crate::LogHandle, ControlError> {
        let (acct, mid) = (account.clone(), id.to_string());
        blocking(&self.shared.store, move |st| {
            Ok(st.get_microvm(&acct, &mid)?)
        })
        .await?;
        let path = self
            .shared
            .app_log_path(account, id)
            .ok_or_else(|| ControlError::NotFound {
                kind: "app log of microVM",
                id: id.to_string(),
            })?;
        let progress = self
            .handle(account, id)
            .and_then(|h| h.log.map(|l| l.subscribe()));
        Ok(crate::LogHandle { path, progress })
    }

    /// Stop every task (server shutdown): running microVMs keep running
    /// (they are persistent) and are adopted by the next server.
    pub fn detach_all(&self) {
        self.shared.handles.lock().unwrap().clear();
    }

    /// A graceful stop of the server: every microVM handed out is left as
    /// it is (persistent: the next server adopts it), but the warmed clones
    /// and the pre-started QEMUs, which belong to no microVM, end now
    /// rather than linger until the next start removes them.
    pub async fn shutdown(&self) {
        self.detach_all();
        self.shared.pool.close();
        // A refill under way holds a clone the pool does not know yet: let
        // it finish (it ends that clone, as the pool is closed) rather than
        // drop it with the runtime, which would leave it running.
        let waited = tokio::time::Instant::now();
        while self.shared.pool.refilling() && waited.elapsed() < SHUTDOWN_REFILL_WAIT {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for snapshot_id in self.shared.pool.snapshots() {
            self.drain(&snapshot_id).await;
        }
        if let Ok(b) = self.shared.backend() {
            b.drain_all_pools();
        }
    }
}

/// The agent of the running microVM of `h`, through its task (which
/// resumes it first when it is SUSPENDED and resumes automatically).
/// Counts as activity.
async fn open_agent(h: &Handle, id: &str) -> Result<hearth_vmm::AgentClient, OpenRefusal> {
    h.touch();
    let (reply, rx) = oneshot::channel();
    h.tx.send(Command::Open { reply })
        .await
        .map_err(|_| OpenRefusal::NotFound(id.to_string()))?;
    rx.await
        .map_err(|_| OpenRefusal::NotFound(id.to_string()))?
}

/// What a version needs to be launched.
struct Launchable {
    snapshot_id: String,
    hooks: MicrovmHooksConfig,
    warm: WarmTarget,
    shell: ShellProfile,
}

impl Launchable {
    fn of(image: &Image, version: &ImageVersion) -> Result<Self, ControlError> {
        let build = version
            .doc
            .get("hearthBuild")
            .ok_or_else(|| ControlError::NotFound {
                kind: "snapshot of MicroVM image version",
                id: format!("{} version {}", image.name, version.version),
            })?;
        let snapshot_id = build
            .get("snapshotId")
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                ControlError::Corrupt(format!(
                    "version {}: hearthBuild.snapshotId",
                    version.version
                ))
            })?
            .to_string();
        let app_port = build
            .get("appPort")
            .and_then(|v| v.as_u64())
            .and_then(|p| u16::try_from(p).ok());
        let shell = match build.get("shell") {
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                ControlError::Corrupt(format!(
                    "version {}: hearthBuild.shell: {e}",
                    version.version
                ))
            })?,
            None => ShellProfile::default(),
        };
        let cfg: VersionConfig = serde_json::from_value(version.doc.clone())
            .map_err(|e| ControlError::Corrupt(format!("version {}: {e}", version.version)))?;
        let hooks = MicrovmHooksConfig::from_version(cfg.hooks.as_ref());
        let warm = match cfg.image_hooks() {
            Some(h) if h.ready_timeout.is_some() => WarmTarget::ReadyHook { port: h.port },
            _ => WarmTarget::Get {
                port: app_port.unwrap_or(crate::config::DEFAULT_HOOK_PORT),
            },
        };
        Ok(Self {
            snapshot_id,
            hooks,
            warm,
            shell,
        })
    }
}

/// The version RunMicrovm launches: the one asked for, or the latest
/// ACTIVE one. An INACTIVE, unfinished or failed version is not found.
async fn pick_version(
    store: &Arc<dyn Store>,
    account: &AccountId,
    req: &RunRequest,
) -> Result<ImageVersion, ControlError> {
    let (acct, image_id, asked) = (
        account.clone(),
        req.image.image_id.clone(),
        req.image_version.clone(),
    );
    let name = req.image.name.clone();
    blocking(store, move |st| {
        let usable = |v: &ImageVersion| {
            v.state.parse::<VersionState>().ok() == Some(VersionState::Successful)
                && v.status.parse::<VersionStatus>().ok() == Some(VersionStatus::Active)
        };
        if let Some(asked) = asked {
            let v = st.get_image_version(&acct, &image_id, &asked)?;
            if usable(&v) {
                return Ok(v);
            }
            return Err(ControlError::NotFound {
                kind: "ACTIVE MicroVM image version",
                id: format!(
                    "{asked} of image {name} (it is {} and {})",
                    v.state, v.status
                ),
            });
        }
        let mut best: Option<(u64, ImageVersion)> = None;
        let mut page = PageRequest::first(50);
        loop {
            let p = st.list_image_versions(&acct, &image_id, &page)?;
            for v in p.items {
                if let (true, Ok(n)) = (usable(&v), v.version.parse::<u64>()) {
                    if best.as_ref().is_none_or(|(b, _)| n > *b) {
                        best = Some((n, v));
                    }
                }
            }
            match p.next {
                Some(c) => page = PageRequest::after(50, c),
                None => break,
            }
        }
        best.map(|(_, v)| v).ok_or_else(|| ControlError::NotFound {
            kind: "ACTIVE MicroVM image version",
            id: format!("of image {name} (no version is SUCCESSFUL and ACTIVE)"),
        })
    })
    .await
}

/// A new persistent clone of `snapshot`, named with a new microVM id, with
/// a network interface in `nic`'s namespace when given.
async fn launch_clone(
    backend: &QemuBackend,
    snapshot: &Snapshot,
    nic: Option<hearth_vmm::NicSpec>,
) -> Result<QemuVm, ControlError> {
    let id = hearth_store::ids::new_microvm_id();
    let vm_id = VmId::new(id.clone()).map_err(|e| ControlError::Internal {
        what: "microVM id",
        detail: e.to_string(),
    })?;
    backend
        .launch(
            snapshot,
            LaunchSpec {
                id: vm_id,
                lifetime: Lifetime::Persistent,
                nic,
            },
        )
        .await
        .map_err(|source| ControlError::Engine {
            what: format!("launching a clone of snapshot {}", snapshot.id),
            source: Box::new(source),
        })
}

/// A clone with internet egress: launched with a NIC (never from the warm
/// pool, whose clones have none), the guest's network slot bound with its
/// own MAC, addressed, routed and given the host's resolvers.
async fn launch_with_egress(
    backend: &QemuBackend,
    snapshot: &Snapshot,
    egress: &GuestEgress,
) -> Result<QemuVm, ControlError> {
    let vm = launch_clone(backend, snapshot, Some(egress.nic.clone())).await?;
    if let Err(detail) = configure_network(&vm, egress).await {
        let id = vm.id().to_string();
        let _ = vm.terminate().await;
        return Err(ControlError::Internal {
            what: "configuring a microVM's network",
            detail: format!("{id}: {detail}"),
        });
    }
    Ok(vm)
}

async fn configure_network(vm: &QemuVm, egress: &GuestEgress) -> Result<(), String> {
    let agent = vm.agent();
    let mut commands = vec![hearth_net::guest_attach_command(&hearth_net::guest_mac(
        vm.id().as_str(),
    ))];
    commands.extend(egress.setup_commands.iter().cloned());
    for argv in &commands {
        let words: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = agent
            .run(&words, NETWORK_SETUP_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "{:?} failed ({:?}): {}",
                words.first(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    agent
        .write_file(
            hearth_net::GUEST_RESOLV_CONF_PATH,
            egress.resolv_conf.as_bytes(),
            Some(0o644),
            NETWORK_SETUP_TIMEOUT,
        )
        .await
        .map_err(|e| format!("writing {}: {e}", hearth_net::GUEST_RESOLV_CONF_PATH))
}

/// A clone that has served one request from inside the guest.
async fn warmed_clone(
    backend: &QemuBackend,
    snapshot: &Snapshot,
    warm: WarmTarget,
) -> Result<QemuVm, ControlError> {
    let vm = launch_clone(backend, snapshot, None).await?;
    if let Err(e) = hooks::warm(vm.agent(), warm, WARM_TIMEOUT).await {
        let id = vm.id().to_string();
        let _ = vm.terminate().await;
        return Err(ControlError::Internal {
            what: "warming a clone",
            detail: format!("{id}: {e}"),
        });
    }
    Ok(vm)
}

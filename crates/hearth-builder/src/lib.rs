//! Hearth's image builder: from an unpacked code artifact to a snapshot of
//! the running app.
//!
//! A build runs in two microVMs, both on the engine ([`hearth_vmm`]):
//!
//! 1. **The builder** boots the managed base image with the build's egress
//!    interface, receives the build context as one tar stream, and runs the
//!    Dockerfile's steps through the guest agent: `RUN` as a process with
//!    the step's environment, working directory and user, its output
//!    streamed to the build log as it happens; `COPY`/`ADD` as copies out
//!    of the context; `WORKDIR` as `mkdir -p`. It is then powered off
//!    cleanly and what it wrote to its root disk is kept as one read-only
//!    qcow2 layer in the image version's directory.
//! 2. **The app microVM** boots the base disk with that layer beneath a
//!    layer of its own, and no network interface (a microVM has none
//!    unless it asks for egress), with the image's memory size. The agent
//!    starts CMD/ENTRYPOINT as the supervised process `app` (ENV, WORKDIR,
//!    USER, the image's environment variables), the builder waits until it
//!    is ready (the `ready` hook when enabled: 503 means wait, 200 means
//!    snapshot now, bounded by its timeout; otherwise until the first
//!    EXPOSEd port accepts connections), calls the `validate` hook when
//!    enabled, drops the guest's page cache, and snapshots memory and disk
//!    into the engine's catalog. Every clone of that snapshot starts with
//!    the app already running.
//!
//! Two microVMs rather than one keep the network interface the build
//! needed out of the image's snapshot, and let the snapshot have the
//! image's memory size rather than the builder's.
//!
//! A failure at any point ends both microVMs, removes the disk layer, and
//! returns a [`BuildError`] naming the phase and quoting the last lines of
//! output. Everything runs on the caller's task (the control plane's build
//! task); dropping the future cancels the build, and the microVMs, whose
//! lifetime is the Hearth process, end with their handles.

pub mod context;
pub mod error;
pub mod guest;
pub mod hooks;
pub mod log;
pub mod phase;
pub mod request;

mod app;
mod steps;

use std::sync::Arc;
use std::time::Instant;

pub use error::{BuildError, Failure};
pub use log::BuildLog;
pub use phase::Phase;
pub use request::{
    BaseImage, BuildOutput, BuildRequest, BuilderConfig, GuestEgress, ImageHooks, PhaseTiming,
    ShellProfile,
};

use hearth_vmm::QemuBackend;

use crate::log::Logger;

/// File name of the build's disk layer in `out_dir`.
pub const DISK_LAYER_FILE: &str = "build-layer.qcow2";

/// Builds images on one engine.
#[derive(Clone)]
pub struct Builder {
    backend: QemuBackend,
    cfg: Arc<BuilderConfig>,
}

impl Builder {
    pub fn new(backend: QemuBackend, cfg: BuilderConfig) -> Self {
        Self {
            backend,
            cfg: Arc::new(cfg),
        }
    }

    pub fn backend(&self) -> &QemuBackend {
        &self.backend
    }

    pub fn config(&self) -> &BuilderConfig {
        &self.cfg
    }

    /// Run one build to its end. `log` receives phases and output as they
    /// happen.
    pub async fn build(
        &self,
        req: &BuildRequest,
        log: Arc<dyn BuildLog>,
    ) -> Result<BuildOutput, BuildError> {
        let logger = Logger::new(log);
        let mut run = Run {
            builder: self,
            req,
            log: logger,
            phase: Phase::Prepare,
            phase_started: Instant::now(),
            timings: Vec::new(),
            ca_env: Vec::new(),
        };
        let limit = self.cfg.build_timeout;
        let result = match tokio::time::timeout(limit, run.run()).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Deadline {
                limit_secs: limit.as_secs(),
            }),
        };
        match result {
            Ok(out) => Ok(out),
            Err(failure) => {
                let _ = std::fs::remove_file(req.out_dir.join(DISK_LAYER_FILE));
                let e = BuildError {
                    phase: run.phase.clone(),
                    failure,
                    tail: run.log.tail.lines(),
                };
                run.log.line(&format!("build failed: {e}"));
                Err(e)
            }
        }
    }
}

/// One build in progress.
pub(crate) struct Run<'a> {
    pub builder: &'a Builder,
    pub req: &'a BuildRequest,
    pub log: Logger,
    pub phase: Phase,
    phase_started: Instant,
    pub timings: Vec<PhaseTiming>,
    /// Environment the builder adds to RUN steps (extra CA bundles).
    pub ca_env: Vec<(String, String)>,
}

impl Run<'_> {
    /// Enter a phase: time the one that ends, log the one that starts.
    pub fn enter(&mut self, phase: Phase) {
        self.close_phase();
        self.log.phase(&phase);
        self.phase = phase;
    }

    /// Cold-boot one of the build's microVMs (`<build id>-<role>`) on the
    /// base image, with `overlays` above it; it ends with this process.
    pub(crate) async fn boot(
        &self,
        role: &str,
        overlays: Vec<std::path::PathBuf>,
        nic: Option<hearth_vmm::NicSpec>,
        nic_slot: bool,
        mem_size_mib: u32,
    ) -> Result<hearth_vmm::QemuVm, Failure> {
        let cfg = &self.builder.cfg;
        let spec = hearth_vmm::BootSpec {
            id: hearth_vmm::VmId::new(format!("{}-{role}", self.req.build_id))
                .map_err(|e| Failure::Io(e.to_string()))?,
            kernel: cfg.kernel.clone(),
            initramfs: cfg.initramfs.clone(),
            root_disk: Some(self.req.base.root_disk.clone()),
            root_overlays: overlays,
            nic,
            nic_slot,
            mem_size_mib,
            vcpu_count: cfg.vcpu_count,
            extra_cmdline: vec![],
            lifetime: hearth_vmm::Lifetime::Process,
        };
        hearth_vmm::VmBackend::boot(&self.builder.backend, spec)
            .await
            .map_err(Failure::Engine)
    }

    fn close_phase(&mut self) {
        let now = Instant::now();
        self.timings.push(PhaseTiming {
            name: self.phase.name(),
            description: self.phase.to_string(),
            duration: now - self.phase_started,
        });
        self.phase_started = now;
    }

    async fn run(&mut self) -> Result<BuildOutput, Failure> {
        self.log.phase(&Phase::Prepare);
        let dir = self.req.context_dir.clone();
        let ctx = tokio::task::spawn_blocking(move || context::load(&dir))
            .await
            .map_err(|e| Failure::Io(e.to_string()))??;
        let plan = steps::plan(&ctx, &self.req.base)?;
        self.log.line(&format!(
            "{} files ({} bytes) in the build context; {} steps",
            ctx.entries.len(),
            ctx.total_bytes,
            plan.steps.len()
        ));
        let disk_layer = self.req.out_dir.join(DISK_LAYER_FILE);
        self.build_disk(&ctx, &plan, &disk_layer).await?;
        let (snapshot, app_port) = self.snapshot_app(&plan, &disk_layer).await?;
        self.close_phase();
        let layer_bytes = std::fs::metadata(&disk_layer).map(|m| m.len()).unwrap_or(0);
        self.log.line(&format!(
            "snapshot {} ready: {} bytes of memory, {} bytes of disk",
            snapshot.id,
            snapshot.record.memory_allocated_bytes,
            layer_bytes + snapshot.record.disk_bytes
        ));
        Ok(BuildOutput {
            memory_snapshot_size_bytes: snapshot.record.memory_allocated_bytes,
            disk_snapshot_size_bytes: layer_bytes + snapshot.record.disk_bytes,
            code_install_size_bytes: ctx.total_bytes,
            snapshot,
            disk_layer,
            app_port,
            shell: ShellProfile {
                user: plan.config.user.as_deref().map(steps::user_part),
                workdir: plan.config.workdir.clone(),
                env: steps::step_env(&plan.config.env, &self.req.environment),
            },
            timings: std::mem::take(&mut self.timings),
        })
    }
}

//! What a caller asks the builder for, and what a successful build gives.
//! Plain data.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use hearth_vmm::{NicSpec, Snapshot};

/// The managed base image a build starts from.
#[derive(Debug, Clone)]
pub struct BaseImage {
    /// Its name, e.g. `debian-12-python`.
    pub name: String,
    /// Its ARN; `FROM` may name the image by either.
    pub arn: String,
    /// The raw ext4 root disk.
    pub root_disk: PathBuf,
}

/// The guest side of egress: commands that configure the interface, and
/// the resolver configuration, applied through the agent before the first
/// step.
#[derive(Debug, Clone)]
pub struct GuestEgress {
    pub nic: NicSpec,
    pub setup_commands: Vec<Vec<String>>,
    pub resolv_conf: String,
    /// Extra CA certificates (PEM) that RUN steps trust besides the base
    /// image's own, for egress through a TLS-inspecting proxy: offered as
    /// a bundle in the build's tmpfs through `SSL_CERT_FILE`,
    /// `REQUESTS_CA_BUNDLE`, `PIP_CERT`, `CURL_CA_BUNDLE`, `GIT_SSL_CAINFO`
    /// and `NODE_EXTRA_CA_CERTS`; never written to the image.
    pub extra_ca_pem: Option<String>,
}

/// The build's lifecycle hooks (`hooks` of the image).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageHooks {
    /// The guest port hooks are served on.
    pub port: u16,
    /// `ready` enabled, with its timeout.
    pub ready_timeout: Option<Duration>,
    /// `validate` enabled, with its timeout.
    pub validate_timeout: Option<Duration>,
}

/// One build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// Names the build's microVMs (a hostname label: lowercase letters,
    /// digits, `-`).
    pub build_id: String,
    /// The unpacked code artifact.
    pub context_dir: PathBuf,
    pub base: BaseImage,
    /// The image's `environmentVariables`: given to every RUN step and to
    /// the app, over the Dockerfile's ENV.
    pub environment: BTreeMap<String, String>,
    pub hooks: Option<ImageHooks>,
    /// Memory of the microVM the app is snapshotted in (the image's
    /// `minimumMemoryInMiB`); its clones start with it.
    pub app_mem_size_mib: u32,
    /// Egress for RUN steps; `None` builds without network.
    pub egress: Option<GuestEgress>,
    /// Where the build's disk layer is written (the image version's own
    /// directory, which must exist).
    pub out_dir: PathBuf,
}

/// Limits and sizes of the builder itself.
#[derive(Debug, Clone)]
pub struct BuilderConfig {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// Memory of the builder microVM (RUN steps).
    pub builder_mem_size_mib: u32,
    pub vcpu_count: u32,
    /// Longest a whole build may take.
    pub build_timeout: Duration,
    /// How long the app may take to accept connections on its first
    /// EXPOSEd port when the ready hook is off.
    pub port_ready_timeout: Duration,
}

impl BuilderConfig {
    pub fn new(kernel: PathBuf, initramfs: PathBuf) -> Self {
        Self {
            kernel,
            initramfs,
            builder_mem_size_mib: 1024,
            vcpu_count: 1,
            build_timeout: Duration::from_secs(30 * 60),
            port_ready_timeout: Duration::from_secs(120),
        }
    }
}

/// How long a phase took.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseTiming {
    pub name: String,
    pub description: String,
    pub duration: Duration,
}

/// A successful build.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// The snapshot of the running app, in the engine's catalog.
    pub snapshot: Snapshot,
    /// The disk layer the RUN and COPY steps wrote (under `out_dir`), which
    /// the snapshot's disk chain names.
    pub disk_layer: PathBuf,
    /// Bytes of memory in the snapshot.
    pub memory_snapshot_size_bytes: u64,
    /// Bytes of disk the image adds to its base (build layer + snapshot layer).
    pub disk_snapshot_size_bytes: u64,
    /// Bytes of the unpacked build context.
    pub code_install_size_bytes: u64,
    /// Port the app listens on (the first EXPOSEd one), if any.
    pub app_port: Option<u16>,
    /// How an interactive shell in the image's microVMs runs.
    pub shell: ShellProfile,
    pub timings: Vec<PhaseTiming>,
}

/// How an interactive shell runs in an image's microVMs: as the app does,
/// with the image's USER, WORKDIR and environment (ENV and the image's
/// `environmentVariables`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShellProfile {
    /// User name or uid (the user part of USER); root when none.
    pub user: Option<String>,
    pub workdir: String,
    pub env: Vec<(String, String)>,
}

impl Default for ShellProfile {
    /// Root in `/` with the agent's default environment (versions built
    /// before shell profiles were kept).
    fn default() -> Self {
        Self {
            user: None,
            workdir: "/".into(),
            env: vec![
                ("PATH".into(), crate::guest::DEFAULT_PATH.into()),
                ("HOME".into(), "/root".into()),
            ],
        }
    }
}

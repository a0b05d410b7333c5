//! The intents the API sends about images, versions and builds, and the
//! state changes they make. Called on request tasks; store work runs on the
//! blocking pool; builds are spawned as tasks of their own
//! ([`crate::build_task`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hearth_builder::{Builder, GuestEgress};
use hearth_domain::{
    latest_versions, BuildState, ImageEvent, ImageState, Version, VersionEvent, VersionState,
    VersionStatus,
};
use hearth_store::{
    AccountId, Build, Image, ImageVersion, NewBuild, NewImage, NewImageVersion, PageRequest,
    StateUpdate, Store,
};
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};

use crate::config::{
    BaseImageFile, VersionConfig, DEFAULT_APP_MEM_MIB, MAX_APP_MEM_MIB, MIN_APP_MEM_MIB,
};
use crate::files::{self, Layout};
use crate::logs::{LogProgress, LogWriter};
use crate::writes::{self, now_secs};
use crate::ControlError;

/// How often `hearth serve` finishes image deletions that waited for
/// their microVMs ([`ImageControl::finish_deletions`]).
pub const DELETION_SWEEP: std::time::Duration = std::time::Duration::from_secs(30);

/// How the server builds images.
pub struct BuildSetup {
    pub data_dir: PathBuf,
    /// `None` when this server has no engine (no QEMU or guest artifacts):
    /// builds then fail at once, saying so.
    pub builder: Option<Builder>,
    pub base_images: Vec<BaseImageFile>,
    pub code: hearth_code::Fetcher,
    /// Egress for builds that ask for it; `None`: builds have no network.
    pub egress: Option<GuestEgress>,
    pub region: String,
    /// Builds that run at once; more wait, PENDING.
    pub max_concurrent_builds: usize,
}

impl BuildSetup {
    /// A setup with no engine, no base images and no artifact sources:
    /// every create is refused as invalid input (no base image matches).
    /// For servers and tests that only answer the rest of the API.
    pub fn without_engine(data_dir: PathBuf, region: String) -> Self {
        Self {
            code: hearth_code::Fetcher::new(
                hearth_code::SourceConfig::default(),
                hearth_code::Uploads::new(data_dir.join("uploads")),
            ),
            data_dir,
            builder: None,
            base_images: Vec::new(),
            egress: None,
            region,
            max_concurrent_builds: 1,
        }
    }
}

/// A created image or version and its first build.
#[derive(Debug, Clone)]
pub struct Created {
    pub image: Image,
    pub version: ImageVersion,
    pub build: Build,
}

/// A build's log: its file, and while the build runs, its progress.
pub struct LogHandle {
    pub path: PathBuf,
    pub progress: Option<watch::Receiver<LogProgress>>,
}

/// A build whose task runs.
pub(crate) struct Running {
    pub account: AccountId,
    pub image_id: String,
    pub version: String,
    pub task: tokio::task::AbortHandle,
    pub log: Arc<LogWriter>,
    pub log_path: PathBuf,
}

pub(crate) struct Inner {
    pub store: Arc<dyn Store>,
    pub setup: BuildSetup,
    pub layout: Layout,
    pub slots: Semaphore,
    pub running: Mutex<HashMap<String, Running>>,
}

/// The control plane's handle on images. Cheap to clone.
#[derive(Clone)]
pub struct ImageControl {
    pub(crate) inner: Arc<Inner>,
}

/// Architecture and chipset every build of this server reports.
pub const ARCHITECTURE: &str = "X86_64";
pub const CHIPSET: &str = "INTEL";
pub const CHIPSET_GENERATION: &str = "generic";
/// Longest state reason written.
pub const MAX_REASON_CHARS: usize = 1024;

/// Run store work on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    store: &Arc<dyn Store>,
    f: impl FnOnce(&dyn Store) -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ControlError> {
    let st = store.clone();
    tokio::task::spawn_blocking(move || f(st.as_ref()))
        .await
        .map_err(|e| ControlError::Internal {
            what: "store task",
            detail: e.to_string(),
        })?
}

impl ImageControl {
    /// The egress network builds use (microVMs with `INTERNET_EGRESS` use
    /// the same one).
    pub fn egress(&self) -> Option<GuestEgress> {
        self.inner.setup.egress.clone()
    }

    pub fn new(store: Arc<dyn Store>, setup: BuildSetup) -> Self {
        let layout = Layout::new(&setup.data_dir);
        let slots = Semaphore::new(setup.max_concurrent_builds.max(1));
        Self {
            inner: Arc::new(Inner {
                store,
                setup,
                layout,
                slots,
                running: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn region(&self) -> &str {
        &self.inner.setup.region
    }

    /// Check a version's configuration before anything is written.
    pub fn check_config(&self, account: &AccountId, config: &Value) -> Result<(), ControlError> {
        let cfg: VersionConfig = serde_json::from_value(config.clone())
            .map_err(|e| ControlError::Invalid(format!("invalid image configuration: {e}")))?;
        self.base_image(&cfg)?;
        let code = &self.inner.setup.code;
        let invalid =
            |e: hearth_code::CodeError| ControlError::Invalid(format!("codeArtifact: {e}"));
        let source = code.parse(&cfg.code_artifact.uri).map_err(invalid)?;
        if let hearth_code::CodeSource::Upload { id } = &source {
            code.uploads().path(account.as_str(), id).map_err(invalid)?;
        }
        let mem = cfg.memory_mib(DEFAULT_APP_MEM_MIB);
        if !(MIN_APP_MEM_MIB..=MAX_APP_MEM_MIB).contains(&mem) {
            return Err(ControlError::Invalid(format!(
                "resources.minimumMemoryInMiB must be between {MIN_APP_MEM_MIB} and {MAX_APP_MEM_MIB} on this server, got {mem}"
            )));
        }
        Ok(())
    }

    /// The managed base image a configuration names.
    pub(crate) fn base_image(&self, cfg: &VersionConfig) -> Result<&BaseImageFile, ControlError> {
        let region = &self.inner.setup.region;
        let version = cfg.base_image_version.clone().unwrap_or_else(|| "1".into());
        self.inner
            .setup
            .base_images
            .iter()
            .find(|b| {
                cfg.base_image_arn == crate::config::managed_image_arn(region, &b.name)
                    && version == b.version
            })
            .ok_or_else(|| ControlError::UnknownBaseImage {
                arn: cfg.base_image_arn.clone(),
                version,
            })
    }

    /// CreateMicrovmImage: the image (CREATING), version 1 (PENDING) and
    /// its build, then the build's task.
    pub async fn create_image(
        &self,
        account: &AccountId,
        name: String,
        arn: String,
        image_id: String,
        config: Value,
        tags: BTreeMap<String, String>,
    ) -> Result<Created, ControlError> {
        self.check_config(account, &config)?;
        let now = now_secs();
        let acct = account.clone();
        let (image, version, build) = blocking(&self.inner.store, move |st| {
            let image = st.create_image(
                &acct,
                &NewImage {
                    image_id,
                    name,
                    arn,
                    state: ImageState::INITIAL.as_str().into(),
                    created_at_secs: now,
                    doc: json!({}),
                    tags,
                },
            )?;
            let (version, build) = new_version(st, &acct, &image.image_id, config, now)?;
            Ok((image, version, build))
        })
        .await?;
        self.spawn_build(account, &image, &version, &build);
        Ok(Created {
            image,
            version,
            build,
        })
    }

    /// UpdateMicrovmImage: a new version and its build; the image is
    /// UPDATING until it ends.
    pub async fn update_image(
        &self,
        account: &AccountId,
        image: Image,
        config: Value,
    ) -> Result<Created, ControlError> {
        self.check_config(account, &config)?;
        let state: ImageState = image.state.parse()?;
        let next = state.transition(&ImageEvent::UpdateRequested)?;
        let now = now_secs();
        let acct = account.clone();
        let (image, version, build) = blocking(&self.inner.store, move |st| {
            let image = writes::image(st, &acct, &image, next)?;
            let (version, build) = new_version(st, &acct, &image.image_id, config, now)?;
            Ok((image, version, build))
        })
        .await?;
        self.spawn_build(account, &image, &version, &build);
        Ok(Created {
            image,
            version,
            build,
        })
    }

    /// DeleteMicrovmImage: cancel its builds, remove its snapshots and
    /// files, then its records.
    /// Answers DELETED, or DELETING while a microVM still stands on one of
    /// its snapshots.
    pub async fn delete_image(
        &self,
        account: &AccountId,
        image: Image,
    ) -> Result<ImageState, ControlError> {
        let state: ImageState = image.state.parse()?;
        let next = state.transition(&ImageEvent::DeleteRequested)?;
        let (acct, img) = (account.clone(), image.clone());
        blocking(&self.inner.store, move |st| {
            writes::image(st, &acct, &img, next)
        })
        .await?;
        self.cancel_builds(|r| r.account == *account && r.image_id == image.image_id);
        let dir = self.inner.layout.image_dir(&image.image_id);
        let catalog = self.catalog();
        let kept = tokio::task::spawn_blocking(move || files::remove_owned(catalog.as_ref(), &dir))
            .await
            .unwrap_or_default();
        if !kept.is_empty() {
            // A microVM still stands on it: the image stays DELETING and its
            // files stay until the last one ends ([`Self::finish_deletions`]).
            tracing::warn!(image = %image.image_id, ?kept, "image snapshots still in use");
            return Ok(next);
        }
        self.remove_image_records(account, &image.image_id).await?;
        Ok(ImageState::Deleted)
    }

    /// The records of a deleted image, and its build logs.
    async fn remove_image_records(
        &self,
        account: &AccountId,
        image_id: &str,
    ) -> Result<(), ControlError> {
        let (acct, id, logs) = (
            account.clone(),
            image_id.to_string(),
            self.inner.layout.logs.clone(),
        );
        blocking(&self.inner.store, move |st| {
            let log_files = build_logs(st, &logs, &acct, &id, None)?;
            match st.delete_image(&acct, &id) {
                // The API's delete and the deletion sweep can both get
                // here; whichever is second finds the work done.
                Err(e) if e.is_not_found() => return Ok(()),
                r => r?,
            }
            remove_files(&log_files);
            Ok(())
        })
        .await
    }

    /// Finish deleting the images left DELETING because microVMs stood on
    /// their snapshots: each whose last microVM has ended loses its files
    /// and records now; the others wait for the next call. `hearth serve`
    /// calls it at start and then every [`DELETION_SWEEP`]. Answers
    /// how many images went.
    pub async fn finish_deletions(&self) -> Result<usize, ControlError> {
        let deleting = blocking(&self.inner.store, |st| {
            let states = [ImageState::Deleting.as_str().to_string()];
            writes::all_pages(|page| st.list_images_all_accounts(&states, page))
        })
        .await?;
        let mut gone = 0;
        for image in deleting {
            let dir = self.inner.layout.image_dir(&image.image_id);
            let catalog = self.catalog();
            let kept =
                tokio::task::spawn_blocking(move || files::remove_owned(catalog.as_ref(), &dir))
                    .await
                    .unwrap_or_default();
            if !kept.is_empty() {
                continue;
            }
            match self
                .remove_image_records(&image.account_id, &image.image_id)
                .await
            {
                Ok(()) => {
                    tracing::info!(image = %image.image_id, "image deleted: its last microVM has ended");
                    gone += 1;
                }
                Err(e) => {
                    tracing::warn!(image = %image.image_id, "finishing an image's deletion: {e}")
                }
            }
        }
        Ok(gone)
    }

    /// DeleteMicrovmImageVersion.
    pub async fn delete_version(
        &self,
        account: &AccountId,
        image: Image,
        version: ImageVersion,
    ) -> Result<(), ControlError> {
        let v = Version {
            state: version.state.parse()?,
            status: version.status.parse()?,
        };
        v.transition(&VersionEvent::DeleteRequested)?;
        self.cancel_builds(|r| {
            r.account == *account && r.image_id == image.image_id && r.version == version.version
        });
        let dir = self
            .inner
            .layout
            .version_dir(&image.image_id, &version.version);
        let catalog = self.catalog();
        let kept = tokio::task::spawn_blocking(move || files::remove_owned(catalog.as_ref(), &dir))
            .await
            .unwrap_or_default();
        if !kept.is_empty() {
            return Err(ControlError::Invalid(format!(
                "version {} is in use by microVMs; terminate them first",
                version.version
            )));
        }
        let (acct, id, ver) = (
            account.clone(),
            image.image_id.clone(),
            version.version.clone(),
        );
        let was_building = matches!(v.state, VersionState::Pending | VersionState::InProgress);
        let logs = self.inner.layout.logs.clone();
        blocking(&self.inner.store, move |st| {
            let log_files = build_logs(st, &logs, &acct, &id, Some(&ver))?;
            st.delete_image_version(&acct, &id, &ver)?;
            remove_files(&log_files);
            if was_building {
                // Its build was cancelled: the image's create or update failed.
                writes::image_event_if_allowed(st, &acct, &id, &ImageEvent::BuildFailed)?;
            }
            refresh_latest(st, &acct, &id)?;
            Ok(())
        })
        .await
    }

    /// UpdateMicrovmImageVersion: ACTIVE or INACTIVE, on a SUCCESSFUL version.
    pub async fn set_version_status(
        &self,
        account: &AccountId,
        image: &Image,
        version: ImageVersion,
        status: &str,
    ) -> Result<ImageVersion, ControlError> {
        let status: VersionStatus = status
            .parse()
            .map_err(|e: hearth_domain::ParseError| ControlError::Invalid(e.to_string()))?;
        let v = Version {
            state: version.state.parse()?,
            status: version.status.parse()?,
        }
        .transition(&VersionEvent::SetStatus(status))?;
        let (acct, id) = (account.clone(), image.image_id.clone());
        blocking(&self.inner.store, move |st| {
            let doc = version.doc.clone();
            let out = writes::version(st, &acct, &version, v, doc)?;
            refresh_latest(st, &acct, &id)?;
            Ok(out)
        })
        .await
    }

    /// A build's log, for reading or following.
    pub async fn open_log(
        &self,
        account: &AccountId,
        image_id: &str,
        version: &str,
        build_id: &str,
    ) -> Result<LogHandle, ControlError> {
        let (acct, id, ver, bid) = (
            account.clone(),
            image_id.to_string(),
            version.to_string(),
            build_id.to_string(),
        );
        let build = blocking(&self.inner.store, move |st| {
            Ok(st.get_build(&acct, &id, &ver, &bid)?)
        })
        .await?;
        let rel = build
            .doc
            .get("logFile")
            .and_then(Value::as_str)
            .ok_or_else(|| ControlError::NoLog {
                build_id: build_id.into(),
            })?;
        let path = self.inner.layout.logs.join(rel);
        let progress = self
            .inner
            .running
            .lock()
            .expect("running")
            .get(build_id)
            .map(|r| r.log.subscribe());
        if progress.is_none() && !path.exists() {
            return Err(ControlError::NoLog {
                build_id: build_id.into(),
            });
        }
        Ok(LogHandle { path, progress })
    }

    /// Abort the tasks of matching builds (their microVMs end with them).
    fn cancel_builds(&self, matches: impl Fn(&Running) -> bool) {
        let mut running = self.inner.running.lock().expect("running");
        let ids: Vec<String> = running
            .iter()
            .filter(|(_, r)| matches(r))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            if let Some(r) = running.remove(&id) {
                r.task.abort();
                r.log
                    .finish("build cancelled: its image or version was deleted");
                // The image or version it belonged to is going: so is its log.
                let _ = std::fs::remove_file(&r.log_path);
                let _ = std::fs::remove_dir_all(self.inner.layout.build_dir(&id));
            }
        }
    }

    pub(crate) fn catalog(&self) -> Option<hearth_vmm::Catalog> {
        self.inner
            .setup
            .builder
            .as_ref()
            .map(|b| b.backend().catalog().clone())
    }

    /// Builds running now (for tests and shutdown).
    pub fn running_builds(&self) -> usize {
        self.inner.running.lock().expect("running").len()
    }
}

/// The log files of an image's builds (of one version, or all).
fn build_logs(
    st: &dyn Store,
    logs_root: &std::path::Path,
    account: &AccountId,
    image_id: &str,
    only_version: Option<&str>,
) -> Result<Vec<PathBuf>, ControlError> {
    let mut versions = Vec::new();
    match only_version {
        Some(v) => versions.push(v.to_string()),
        None => {
            let mut page = PageRequest::first(100);
            loop {
                let p = st.list_image_versions(account, image_id, &page)?;
                versions.extend(p.items.into_iter().map(|v| v.version));
                match p.next {
                    Some(c) => page = PageRequest::after(100, c),
                    None => break,
                }
            }
        }
    }
    let mut out = Vec::new();
    for v in versions {
        let mut page = PageRequest::first(100);
        loop {
            let p = st.list_builds(account, image_id, &v, &Default::default(), &page)?;
            out.extend(p.items.iter().filter_map(|b| {
                b.doc
                    .get("logFile")
                    .and_then(Value::as_str)
                    .map(|rel| logs_root.join(rel))
            }));
            match p.next {
                Some(c) => page = PageRequest::after(100, c),
                None => break,
            }
        }
    }
    Ok(out)
}

fn remove_files(paths: &[PathBuf]) {
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
}

/// A new version (PENDING, INACTIVE) and its build (PENDING).
fn new_version(
    st: &dyn Store,
    account: &AccountId,
    image_id: &str,
    config: Value,
    now: i64,
) -> Result<(ImageVersion, Build), ControlError> {
    let v = Version::INITIAL;
    let version = st.create_image_version(
        account,
        image_id,
        &NewImageVersion {
            state: v.state.as_str().into(),
            status: v.status.as_str().into(),
            created_at_secs: now,
            doc: config,
        },
    )?;
    let build = st.create_build(
        account,
        &NewBuild {
            image_id: image_id.into(),
            version: version.version.clone(),
            build_id: hearth_store::ids::new_build_id(),
            state: BuildState::INITIAL.as_str().into(),
            created_at_secs: now,
            doc: json!({
                "architecture": ARCHITECTURE,
                "chipset": CHIPSET,
                "chipsetGeneration": CHIPSET_GENERATION,
            }),
        },
    )?;
    Ok((version, build))
}

/// Recompute the image's latest active and failed versions into its doc.
pub(crate) fn refresh_latest(
    st: &dyn Store,
    account: &AccountId,
    image_id: &str,
) -> Result<Image, ControlError> {
    let mut all = Vec::new();
    let mut page = PageRequest::first(100);
    loop {
        let p = st.list_image_versions(account, image_id, &page)?;
        for v in &p.items {
            if let (Ok(n), Ok(state), Ok(status)) = (
                v.version.parse::<u64>(),
                v.state.parse::<VersionState>(),
                v.status.parse::<VersionStatus>(),
            ) {
                all.push((n, state, status));
            }
        }
        match p.next {
            Some(c) => page = PageRequest::after(100, c),
            None => break,
        }
    }
    let latest = latest_versions(all);
    let image = st.get_image(account, image_id)?;
    let mut doc = image.doc.clone();
    let obj = doc
        .as_object_mut()
        .ok_or_else(|| ControlError::Corrupt("image doc".into()))?;
    let mut set = |k: &str, v: Option<u64>| match v {
        Some(n) => {
            obj.insert(k.into(), json!(n.to_string()));
        }
        None => {
            obj.remove(k);
        }
    };
    set("latestActiveImageVersion", latest.active);
    set("latestFailedImageVersion", latest.failed);
    Ok(st.update_image(
        account,
        image_id,
        &StateUpdate {
            state: image.state.clone(),
            doc,
            updated_at_secs: now_secs(),
            expected_state: None,
        },
    )?)
}

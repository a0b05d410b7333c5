//! One build's task: from PENDING to SUCCESSFUL or FAILED. It is the only
//! writer of its build's state, and of its version's and image's states
//! while it runs. Runs on the server's runtime; aborted when its image or
//! version is deleted.

use std::path::PathBuf;
use std::sync::Arc;

use hearth_builder::{BuildError, BuildOutput, BuildRequest, Failure, Phase};
use hearth_domain::{BuildEvent, BuildState, ImageEvent, ImageState, Version, VersionEvent};
use hearth_store::{AccountId, Build, Image, ImageVersion};
use serde_json::{json, Value};

use crate::config::{VersionConfig, DEFAULT_APP_MEM_MIB};
use crate::images::{blocking, refresh_latest, ImageControl, Running, MAX_REASON_CHARS};
use crate::logs::{log_path, LogWriter};
use crate::writes;
use crate::ControlError;

/// What a build's task carries.
struct Job {
    account: AccountId,
    image: Image,
    version: ImageVersion,
    build: Build,
    config: VersionConfig,
    log: Arc<LogWriter>,
    log_rel: String,
}

impl ImageControl {
    /// Start the task of a PENDING build.
    pub(crate) fn spawn_build(
        &self,
        account: &AccountId,
        image: &Image,
        version: &ImageVersion,
        build: &Build,
    ) {
        let config: VersionConfig = match serde_json::from_value(version.doc.clone()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(build = %build.build_id, "unreadable version config: {e}");
                return;
            }
        };
        let (group, stream) = config.log_names(&image.name, &version.version, &build.build_id);
        let logs_root = &self.inner.layout.logs;
        let path = log_path(logs_root, account.as_str(), &group, &stream);
        let log_rel = path
            .strip_prefix(logs_root)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let log = match LogWriter::create(&path, config.keeps_log_output()) {
            Ok(l) => Arc::new(l),
            Err(e) => {
                tracing::error!(build = %build.build_id, "cannot create the build log: {e}");
                return;
            }
        };
        let job = Job {
            account: account.clone(),
            image: image.clone(),
            version: version.clone(),
            build: build.clone(),
            config,
            log: log.clone(),
            log_rel,
        };
        let this = self.clone();
        // Registered before the task can end (it removes itself at its end).
        let mut running = self.inner.running.lock().expect("running");
        let task = tokio::spawn(async move { this.run(job).await });
        running.insert(
            build.build_id.clone(),
            Running {
                account: account.clone(),
                image_id: image.image_id.clone(),
                version: version.version.clone(),
                task: task.abort_handle(),
                log,
                log_path: path,
            },
        );
    }

    async fn run(self, job: Job) {
        let build_id = job.build.build_id.clone();
        let _permit = self.inner.slots.acquire().await;
        let result = self.run_job(&job).await;
        let outcome = match &result {
            Ok(out) => self.succeed(&job, out).await,
            Err(e) => self.fail(&job, e).await,
        };
        if let Err(e) = &outcome {
            tracing::error!(build = %build_id, "recording the build's end failed: {e}");
        }
        let line = match &result {
            Ok(_) => "result: SUCCESSFUL".to_string(),
            Err(e) => format!("result: FAILED: {e}"),
        };
        let _ = std::fs::remove_dir_all(self.inner.layout.build_dir(&build_id));
        self.inner
            .running
            .lock()
            .expect("running")
            .remove(&build_id);
        job.log.finish(&line);
    }

    async fn run_job(&self, job: &Job) -> Result<BuildOutput, BuildError> {
        let started = self.mark_started(job).await;
        let fail = |phase: Phase, failure: Failure| BuildError {
            phase,
            failure,
            tail: vec![],
        };
        started.map_err(|e| fail(Phase::Prepare, Failure::Io(e.to_string())))?;
        let Some(builder) = self.inner.setup.builder.clone() else {
            return Err(fail(
                Phase::Prepare,
                Failure::Io("this server has no VM engine (QEMU or the guest artifacts are missing: run `hearth setup`)".into()),
            ));
        };
        let base = self
            .base_image(&job.config)
            .map_err(|e| fail(Phase::Prepare, Failure::Io(e.to_string())))?
            .clone();
        let work = self.inner.layout.build_dir(&job.build.build_id);
        let out_dir = self
            .inner
            .layout
            .version_dir(&job.image.image_id, &job.version.version);
        let fetch_started = std::time::Instant::now();
        let context_dir = self
            .fetch(job, &work, &out_dir)
            .await
            .map_err(|f| fail(Phase::Prepare, f))?;
        let fetch_took = fetch_started.elapsed();
        let mem = job.config.memory_mib(DEFAULT_APP_MEM_MIB) as u32;
        let req = BuildRequest {
            build_id: job.build.build_id.clone(),
            context_dir,
            base: hearth_builder::BaseImage {
                arn: crate::config::managed_image_arn(&self.inner.setup.region, &base.name),
                name: base.name.clone(),
                root_disk: base.root_disk.clone(),
            },
            environment: job.config.environment_variables.clone(),
            hooks: job.config.image_hooks(),
            app_mem_size_mib: mem,
            egress: if job.config.wants_egress() {
                self.inner.setup.egress.clone()
            } else {
                None
            },
            out_dir,
        };
        let mut out = builder.build(&req, job.log.clone()).await?;
        out.timings.insert(
            0,
            hearth_builder::PhaseTiming {
                name: "fetch".into(),
                description: "fetching and unpacking the code artifact".into(),
                duration: fetch_took,
            },
        );
        Ok(out)
    }

    /// Fetch and unpack the code artifact into `work`; create `out_dir`.
    async fn fetch(
        &self,
        job: &Job,
        work: &std::path::Path,
        out_dir: &std::path::Path,
    ) -> Result<PathBuf, Failure> {
        job.log.line("==> fetching the code artifact");
        for d in [work, out_dir] {
            std::fs::create_dir_all(d).map_err(|e| Failure::Io(format!("{}: {e}", d.display())))?;
        }
        let zip = work.join("code.zip");
        let uri = job.config.code_artifact.uri.clone();
        let code = &self.inner.setup.code;
        let bad = |e: hearth_code::CodeError| Failure::Context(format!("code artifact {uri}: {e}"));
        let source = code.parse(&uri).map_err(bad)?;
        let fetched = code
            .fetch(
                &source,
                job.account.as_str(),
                &zip,
                &hearth_code::FetchLimits::default(),
            )
            .await
            .map_err(bad)?;
        job.log.line(&format!(
            "fetched {uri}: {} bytes, sha256 {}",
            fetched.size_bytes, fetched.sha256_hex
        ));
        let context = work.join("context");
        let (z, c) = (zip.clone(), context.clone());
        let summary = tokio::task::spawn_blocking(move || {
            hearth_code::unpack_zip(&z, &c, &hearth_code::UnpackLimits::default())
        })
        .await
        .map_err(|e| Failure::Io(e.to_string()))?
        .map_err(|e| Failure::Context(e.to_string()))?;
        let _ = std::fs::remove_file(&zip);
        job.log.line(&format!(
            "unpacked {} files, {} directories, {} bytes",
            summary.file_count, summary.dir_count, summary.total_bytes
        ));
        Ok(context)
    }

    /// PENDING -> IN_PROGRESS for the build and its version.
    async fn mark_started(&self, job: &Job) -> Result<(), ControlError> {
        let b_state: BuildState = job.build.state.parse()?;
        let b_next = b_state.transition(&BuildEvent::Started)?;
        let v = Version {
            state: job.version.state.parse()?,
            status: job.version.status.parse()?,
        };
        let v_next = v.transition(&VersionEvent::BuildStarted)?;
        let mut doc = job.build.doc.clone();
        if let Some(o) = doc.as_object_mut() {
            o.insert("logFile".into(), json!(job.log_rel));
        }
        let (acct, build, version) = (job.account.clone(), job.build.clone(), job.version.clone());
        blocking(&self.inner.store, move |st| {
            writes::build(st, &acct, &build, b_next, doc)?;
            let doc = version.doc.clone();
            writes::version(st, &acct, &version, v_next, doc)?;
            Ok(())
        })
        .await
    }

    async fn succeed(&self, job: &Job, out: &BuildOutput) -> Result<(), ControlError> {
        let snapshot_build = json!({
            "memorySnapshotSizeInBytes": out.memory_snapshot_size_bytes,
            "diskSnapshotSizeInBytes": out.disk_snapshot_size_bytes,
            "codeInstallSizeInBytes": out.code_install_size_bytes,
        });
        let timings: Vec<Value> = out
            .timings
            .iter()
            .map(|t| json!({"phase": t.name, "description": t.description, "ms": t.duration.as_millis() as u64}))
            .collect();
        let engine = json!({
            "snapshotId": out.snapshot.id.to_string(),
            "diskLayer": out.disk_layer,
            "appPort": out.app_port,
            "shell": out.shell,
        });
        self.finish(
            job,
            BuildEvent::Succeeded,
            move |build_doc, version_doc| {
                build_doc.insert("snapshotBuild".into(), snapshot_build);
                build_doc.insert("phases".into(), Value::Array(timings));
                version_doc.insert("hearthBuild".into(), engine);
            },
            None,
        )
        .await
    }

    async fn fail(&self, job: &Job, e: &BuildError) -> Result<(), ControlError> {
        let reason = e.state_reason(MAX_REASON_CHARS);
        let out_dir = self
            .inner
            .layout
            .version_dir(&job.image.image_id, &job.version.version);
        let catalog = self.catalog();
        let _ = tokio::task::spawn_blocking(move || {
            crate::files::remove_owned(catalog.as_ref(), &out_dir)
        })
        .await;
        self.finish(job, BuildEvent::Failed, |_, _| {}, Some(reason))
            .await
    }

    /// Write the end of a build: the build, its version, and its image.
    async fn finish(
        &self,
        job: &Job,
        event: BuildEvent,
        fill: impl FnOnce(&mut serde_json::Map<String, Value>, &mut serde_json::Map<String, Value>)
            + Send
            + 'static,
        reason: Option<String>,
    ) -> Result<(), ControlError> {
        let ok = matches!(event, BuildEvent::Succeeded);
        let (acct, image_id, ver, build_id) = ids(job);
        let log_rel = job.log_rel.clone();
        blocking(&self.inner.store, move |st| {
            let build = st.get_build(&acct, &image_id, &ver, &build_id)?;
            let b_next = build.state.parse::<BuildState>()?.transition(&event)?;
            let version = st.get_image_version(&acct, &image_id, &ver)?;
            let v_next = Version {
                state: version.state.parse()?,
                status: version.status.parse()?,
            }
            .transition(if ok {
                &VersionEvent::BuildSucceeded
            } else {
                &VersionEvent::BuildFailed
            })?;
            let image = st.get_image(&acct, &image_id)?;
            let i_next = image.state.parse::<ImageState>()?.transition(if ok {
                &ImageEvent::BuildSucceeded
            } else {
                &ImageEvent::BuildFailed
            })?;
            let mut b_doc = build.doc.as_object().cloned().unwrap_or_default();
            let mut v_doc = version.doc.as_object().cloned().unwrap_or_default();
            b_doc.insert("logFile".into(), json!(log_rel));
            if let Some(r) = &reason {
                b_doc.insert("stateReason".into(), json!(r));
                v_doc.insert("stateReason".into(), json!(r));
            }
            fill(&mut b_doc, &mut v_doc);
            writes::build(st, &acct, &build, b_next, Value::Object(b_doc))?;
            writes::version(st, &acct, &version, v_next, Value::Object(v_doc))?;
            writes::image(st, &acct, &image, i_next)?;
            refresh_latest(st, &acct, &image_id)?;
            Ok(())
        })
        .await
    }
}

fn ids(job: &Job) -> (AccountId, String, String, String) {
    (
        job.account.clone(),
        job.image.image_id.clone(),
        job.version.version.clone(),
        job.build.build_id.clone(),
    )
}

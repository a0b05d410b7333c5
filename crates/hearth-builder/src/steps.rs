//! The builder microVM: the Dockerfile's plan checked against the base
//! image, the build context sent in, each step run through the agent, and
//! the disk kept. Runs on the build's task.

use std::time::Duration;

use hearth_dockerfile::{BuildPlan, CopyOp, EntryKind, Step};
use hearth_proto::v2::ExecRequest;
use hearth_vmm::MicroVm;

use crate::context::Context;
use crate::error::Failure;
use crate::guest::{admin, run_streamed, sh_quote, DEFAULT_PATH};
use crate::{BaseImage, Phase, Run};

/// Where the build context is unpacked in the builder (a tmpfs, so it never
/// reaches the kept disk).
const GUEST_CONTEXT_DIR: &str = "/.hearth-build/context";
const GUEST_BUILD_DIR: &str = "/.hearth-build";
/// The guest's resolver configuration, replaced for the build and put back.
const RESOLV_CONF: &str = "/etc/resolv.conf";
const RESOLV_CONF_SAVED: &str = "/etc/.resolv.conf.hearth-build";
/// How long the builder may take to power off.
const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(60);

/// Parse and plan the Dockerfile; FROM must name the base image.
pub fn plan(ctx: &Context, base: &BaseImage) -> Result<BuildPlan, Failure> {
    let df = hearth_dockerfile::parse(&ctx.dockerfile)
        .map_err(|e| Failure::Dockerfile(e.to_string()))?;
    let plan = hearth_dockerfile::plan(&df, &Default::default())
        .map_err(|e| Failure::Dockerfile(e.to_string()))?;
    if !from_names_base(&plan.from, base) {
        return Err(Failure::FromMismatch {
            from: plan.from.clone(),
            base: base.name.clone(),
        });
    }
    Ok(plan)
}

/// FROM names the base image by its name or its ARN (an optional
/// `:latest` tag on the name is accepted).
fn from_names_base(from: &str, base: &BaseImage) -> bool {
    from == base.name || from == base.arn || from.strip_suffix(":latest") == Some(&base.name)
}

impl Run<'_> {
    /// Run the plan's steps in a builder microVM and keep its disk at
    /// `disk_layer`.
    pub(crate) async fn build_disk(
        &mut self,
        ctx: &Context,
        plan: &BuildPlan,
        disk_layer: &std::path::Path,
    ) -> Result<(), Failure> {
        self.enter(Phase::BuilderStart);
        let nic = self.req.egress.as_ref().map(|e| e.nic.clone());
        let mem = self.builder.cfg.builder_mem_size_mib;
        let vm = self.boot("builder", vec![], nic, false, mem).await?;
        let agent = vm.agent().clone();
        if let Some(egress) = &self.req.egress {
            for argv in &egress.setup_commands {
                let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                run_streamed(&agent, admin(&argv), &self.log, None).await?;
            }
            // The image keeps its own resolver configuration: the builder's
            // is put back before its disk is kept.
            let save = format!("if [ -e {RESOLV_CONF} ] || [ -L {RESOLV_CONF} ]; then mv {RESOLV_CONF} {RESOLV_CONF_SAVED}; fi");
            run_streamed(&agent, admin(&["/bin/sh", "-c", &save]), &self.log, None).await?;
            agent
                .write_file(
                    RESOLV_CONF,
                    egress.resolv_conf.as_bytes(),
                    Some(0o644),
                    crate::guest::AGENT_TIMEOUT,
                )
                .await
                .map_err(Failure::Agent)?;
        } else {
            self.log.line("no egress: RUN steps have no network");
        }
        // The context, as one tar stream into a tmpfs.
        let tar_path = self.req.out_dir.join("context.tar");
        let (c, t) = (ctx.clone(), tar_path.clone());
        let tar_bytes = tokio::task::spawn_blocking(move || crate::context::pack(&c, &t))
            .await
            .map_err(|e| Failure::Io(e.to_string()))?;
        let sent = match tar_bytes {
            Ok(n) => {
                let script = format!(
                    "mkdir -p {GUEST_BUILD_DIR} && mount -t tmpfs -o mode=0700,size=75% hearth-build {GUEST_BUILD_DIR} && mkdir {GUEST_CONTEXT_DIR} && tar -x -C {GUEST_CONTEXT_DIR} --no-same-owner"
                );
                let mut req = admin(&["/bin/sh", "-c", &script]);
                req.stdin = true;
                self.log
                    .line(&format!("sending the build context ({n} bytes of tar)"));
                run_streamed(&agent, req, &self.log, Some(&tar_path)).await
            }
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&tar_path);
        sent?;
        if let Some(pem) = self
            .req
            .egress
            .as_ref()
            .and_then(|e| e.extra_ca_pem.as_ref())
        {
            self.trust_extra_cas(&agent, pem).await?;
        }

        let total = plan.steps.len();
        for (i, step) in plan.steps.iter().enumerate() {
            self.enter(Phase::Step {
                index: i + 1,
                total,
                description: step.description().to_string(),
            });
            let req = self.step_request(ctx, step)?;
            run_streamed(&agent, req, &self.log, None).await?;
        }

        self.enter(Phase::BuilderStop);
        run_streamed(
            &agent,
            admin(&[
                "/bin/sh",
                "-c",
                &format!(
                    "umount {GUEST_BUILD_DIR} && rmdir {GUEST_BUILD_DIR} && {restore} && sync",
                    restore = if self.req.egress.is_some() {
                        format!("rm -f {RESOLV_CONF} && if [ -e {RESOLV_CONF_SAVED} ] || [ -L {RESOLV_CONF_SAVED} ]; then mv {RESOLV_CONF_SAVED} {RESOLV_CONF}; fi")
                    } else {
                        "true".to_string()
                    }
                ),
            ]),
            &self.log,
            None,
        )
        .await?;
        let kept = vm
            .power_off_keeping_disk(POWER_OFF_TIMEOUT, disk_layer)
            .await
            .map_err(Failure::Engine)?;
        self.log
            .line(&format!("the build wrote {kept} bytes of disk layer"));
        Ok(())
    }

    /// Offer RUN steps a CA bundle with `pem` added (in the tmpfs only).
    async fn trust_extra_cas(
        &mut self,
        agent: &hearth_vmm::AgentClient,
        pem: &str,
    ) -> Result<(), Failure> {
        let extra = format!("{GUEST_BUILD_DIR}/extra-ca.pem");
        let bundle = format!("{GUEST_BUILD_DIR}/ca-bundle.pem");
        agent
            .write_file(
                &extra,
                pem.as_bytes(),
                Some(0o644),
                crate::guest::AGENT_TIMEOUT,
            )
            .await
            .map_err(Failure::Agent)?;
        let script = format!(
            "chmod 0755 {GUEST_BUILD_DIR}; cat /etc/ssl/certs/ca-certificates.crt {extra} > {bundle} 2>/dev/null || cp {extra} {bundle}; chmod 0644 {bundle}"
        );
        run_streamed(agent, admin(&["/bin/sh", "-c", &script]), &self.log, None).await?;
        self.ca_env = [
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "PIP_CERT",
            "CURL_CA_BUNDLE",
            "GIT_SSL_CAINFO",
        ]
        .iter()
        .map(|k| (k.to_string(), bundle.clone()))
        .chain([("NODE_EXTRA_CA_CERTS".to_string(), extra.clone())])
        .collect();
        self.log
            .line("RUN steps trust the server's extra CA certificates (not kept in the image)");
        Ok(())
    }

    /// The agent request that performs one step.
    fn step_request(&self, ctx: &Context, step: &Step) -> Result<ExecRequest, Failure> {
        match step {
            Step::Run {
                argv_or_shell,
                env,
                workdir,
                user,
                ..
            } => Ok(ExecRequest {
                argv: argv_or_shell.argv(),
                env: step_env(
                    &[self.ca_env.clone(), env.clone()].concat(),
                    &self.req.environment,
                ),
                clear_env: true,
                cwd: Some(workdir.clone()),
                user: user.as_deref().map(user_part),
                ..Default::default()
            }),
            Step::Copy {
                line,
                sources,
                dest,
                chown,
                chmod,
                is_add,
                ..
            } => {
                let copy_err = |message: String| Failure::Copy {
                    line: *line,
                    message,
                };
                let ops = hearth_dockerfile::resolve_copy(sources, dest, &ctx.entries)
                    .map_err(|e| copy_err(e.to_string()))?;
                if *is_add {
                    for op in ops.iter().filter(|o| o.kind == EntryKind::File) {
                        let header = read_header(&ctx.dir.join(&op.src));
                        hearth_dockerfile::check_add_file(&op.src, &header)
                            .map_err(|e| copy_err(e.to_string()))?;
                    }
                }
                let script = copy_script(&ops, chown.as_deref(), *chmod);
                Ok(admin(&["/bin/sh", "-ec", &script]))
            }
            Step::Workdir { path, user, .. } => {
                let mut script = format!("mkdir -p {}\n", sh_quote(path));
                if let Some(u) = user {
                    script.push_str(&format!("chown {} {}\n", sh_quote(u), sh_quote(path)));
                }
                Ok(admin(&["/bin/sh", "-ec", &script]))
            }
        }
    }
}

/// The first bytes of a context file (to recognise archives).
fn read_header(path: &std::path::Path) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0u8; hearth_dockerfile::ARCHIVE_SNIFF_BYTES];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut buf))
        .unwrap_or(0);
    buf.truncate(n);
    buf
}

/// The environment of a step or the app: a default `PATH` and `HOME`, the
/// Dockerfile's, then the image's `environmentVariables` over them.
pub(crate) fn step_env(
    dockerfile_env: &[(String, String)],
    image_env: &std::collections::BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), "/root".into()),
    ];
    let mut set = |k: &str, v: &str| {
        if let Some(slot) = env.iter_mut().find(|(ek, _)| ek == k) {
            slot.1 = v.to_string();
        } else {
            env.push((k.to_string(), v.to_string()));
        }
    };
    for (k, v) in dockerfile_env {
        set(k, v);
    }
    for (k, v) in image_env {
        set(k, v);
    }
    env
}

/// The user of `user[:group]` (the agent runs a process as a user, with
/// that user's groups).
pub(crate) fn user_part(spec: &str) -> String {
    spec.split(':').next().unwrap_or(spec).to_string()
}

/// One shell script that performs a COPY's operations, in order.
fn copy_script(ops: &[CopyOp], chown: Option<&str>, chmod: Option<u32>) -> String {
    let mut s = String::new();
    for op in ops {
        let src = sh_quote(&format!("{GUEST_CONTEXT_DIR}/{}", op.src));
        let dest = sh_quote(&op.dest);
        match op.kind {
            EntryKind::Dir => s.push_str(&format!("mkdir -p {dest}\n")),
            EntryKind::File => {
                let parent = std::path::Path::new(&op.dest)
                    .parent()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "/".into());
                let copy = format!("mkdir -p {}; cp -a -- {src} {dest}", sh_quote(&parent));
                if op.into_existing_dir {
                    s.push_str(&format!(
                        "if [ -d {dest} ]; then cp -a -- {src} {dest}/; else {copy}; fi\n"
                    ));
                } else {
                    s.push_str(&format!("{copy}\n"));
                }
            }
        }
        if let Some(owner) = chown {
            s.push_str(&format!("chown {} {dest}\n", sh_quote(owner)));
        }
        if let Some(mode) = chmod {
            s.push_str(&format!("chmod {mode:o} {dest}\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_accepts_the_name_or_the_arn_only() {
        let base = BaseImage {
            name: "debian-12-python".into(),
            arn: "arn:aws:lambda:us-east-1:aws:microvm-image:debian-12-python".into(),
            root_disk: "/x".into(),
        };
        assert!(from_names_base("debian-12-python", &base));
        assert!(from_names_base("debian-12-python:latest", &base));
        assert!(from_names_base(&base.arn, &base));
        assert!(!from_names_base("python:3.12", &base));
        assert!(!from_names_base("debian-12-minimal", &base));
    }

    #[test]
    fn the_image_environment_overrides_the_dockerfile() {
        let mut image = std::collections::BTreeMap::new();
        image.insert("MODE".to_string(), "prod".to_string());
        let env = step_env(
            &[
                ("MODE".into(), "dev".into()),
                ("PATH".into(), "/opt/bin".into()),
            ],
            &image,
        );
        assert!(env.contains(&("MODE".into(), "prod".into())));
        assert!(env.contains(&("PATH".into(), "/opt/bin".into())));
        assert_eq!(env.iter().filter(|(k, _)| k == "PATH").count(), 1);
    }
}

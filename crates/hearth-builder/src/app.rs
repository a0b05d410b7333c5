//! The app microVM: the image's disk booted without a network interface,
//! CMD/ENTRYPOINT started as the supervised process `app`, readiness
//! awaited, the validate hook called, and the snapshot taken. Runs on the
//! build's task; the app's output is drained into the build log by a task
//! of its own until the snapshot.

use std::path::Path;
use std::time::{Duration, Instant};

use hearth_dockerfile::{BuildPlan, Proto};
use hearth_proto::v2::{ExecRequest, RestartPolicy};
use hearth_vmm::agent::stream::StreamEvent;
use hearth_vmm::{MicroVm, Snapshot, SnapshotMode};

use crate::error::Failure;
use crate::guest::{admin, run_streamed, AGENT_TIMEOUT};
use crate::hooks::{self, HookAnswer};
use crate::steps::{step_env, user_part};
use crate::{Phase, Run};

/// Name of the supervised app process in the guest.
pub const APP_PROCESS: &str = "app";
/// Pause between readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Settling time when the app has neither a ready hook nor an EXPOSEd port.
const SETTLE: Duration = Duration::from_secs(2);

impl Run<'_> {
    /// Boot the built disk, start the app, wait for it, snapshot it.
    pub(crate) async fn snapshot_app(
        &mut self,
        plan: &BuildPlan,
        disk_layer: &Path,
    ) -> Result<(Snapshot, Option<u16>), Failure> {
        self.enter(Phase::AppStart);
        let argv = plan.config.process_argv().ok_or(Failure::NoProcess)?;
        let mut vm = self
            .boot(
                "app",
                vec![disk_layer.to_path_buf()],
                None,
                true,
                self.req.app_mem_size_mib,
            )
            .await?;
        let agent = vm.agent().clone();
        self.log.line(&format!("starting {argv:?}"));
        let process = agent
            .exec(
                ExecRequest {
                    argv,
                    env: step_env(&plan.config.env, &self.req.environment),
                    clear_env: true,
                    cwd: Some(plan.config.workdir.clone()),
                    user: plan.config.user.as_deref().map(user_part),
                    restart: RestartPolicy::OnFailure,
                    name: Some(APP_PROCESS.into()),
                    ..Default::default()
                },
                AGENT_TIMEOUT,
            )
            .await
            .map_err(Failure::Agent)?;
        let log = self.log.clone();
        let drain = tokio::spawn(async move {
            let mut events = process.events;
            while let Some(ev) = events.recv().await {
                match ev {
                    StreamEvent::Output { data, .. } => log.output(&data),
                    StreamEvent::Exited { status, restarting } => log.line(&format!(
                        "the app exited ({status:?}){}",
                        if restarting { "; restarting it" } else { "" }
                    )),
                    StreamEvent::Closed { .. } => break,
                    _ => {}
                }
            }
        });
        let result = self.await_app(plan, &mut vm).await;
        drain.abort();
        let port = result?;
        // The snapshot keeps an unplugged network slot with no driver on
        // it: a clone without egress has no interface, one with egress
        // binds it (hearth_net::guest_attach_command).
        let release = hearth_net::guest_release_command();
        let argv: Vec<&str> = release.iter().map(String::as_str).collect();
        let out = agent
            .run(&argv, AGENT_TIMEOUT)
            .await
            .map_err(Failure::Agent)?;
        if !out.status.success() {
            return Err(Failure::Io(format!(
                "releasing the network slot before the snapshot failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok((
            vm.snapshot(SnapshotMode::Consume)
                .await
                .map_err(Failure::Engine)?,
            port,
        ))
    }

    async fn await_app(
        &mut self,
        plan: &BuildPlan,
        vm: &mut hearth_vmm::QemuVm,
    ) -> Result<Option<u16>, Failure> {
        let agent = vm.agent().clone();
        let port = plan
            .config
            .exposed_ports
            .iter()
            .find(|(_, proto)| *proto == Proto::Tcp)
            .map(|(p, _)| *p);
        self.enter(Phase::Ready);
        let hooks = self.req.hooks.clone();
        match hooks
            .as_ref()
            .and_then(|h| h.ready_timeout.map(|t| (h.port, t)))
        {
            Some((hook_port, timeout)) => {
                self.log.line(&format!(
                    "waiting up to {} s for the ready hook on port {hook_port} to answer 200",
                    timeout.as_secs()
                ));
                wait_ready_hook(&agent, hook_port, timeout).await?;
            }
            None => match port {
                Some(p) => {
                    let timeout = self.builder.cfg.port_ready_timeout;
                    self.log.line(&format!(
                        "waiting up to {} s for port {p} to accept connections",
                        timeout.as_secs()
                    ));
                    wait_port(&agent, p, timeout).await?;
                }
                None => {
                    self.log.line(&format!(
                        "no ready hook and no EXPOSEd TCP port: waiting {} s",
                        SETTLE.as_secs()
                    ));
                    tokio::time::sleep(SETTLE).await;
                }
            },
        }
        self.log.line("the app is ready");
        if let Some((hook_port, timeout)) = hooks
            .as_ref()
            .and_then(|h| h.validate_timeout.map(|t| (h.port, t)))
        {
            self.enter(Phase::Validate);
            match hooks::call(&agent, hook_port, "validate", "{}", timeout).await {
                HookAnswer::Status { code: 200, .. } => self.log.line("validate hook: 200"),
                HookAnswer::Status { code, body } => {
                    return Err(Failure::ValidateRefused { code, body })
                }
                HookAnswer::NotListening(why) => return Err(Failure::ValidateUnreachable(why)),
            }
        }
        self.enter(Phase::Snapshot);
        run_streamed(
            &agent,
            admin(&["/bin/sh", "-c", "sync && echo 3 > /proc/sys/vm/drop_caches"]),
            &self.log,
            None,
        )
        .await?;
        Ok(port)
    }
}

/// Call `ready` until it answers 200: 503 (or nothing listening yet) means
/// wait; any other status fails the build.
async fn wait_ready_hook(
    agent: &hearth_vmm::AgentClient,
    port: u16,
    timeout: Duration,
) -> Result<(), Failure> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match hooks::call(agent, port, "ready", "{}", PROBE_TIMEOUT.min(left)).await {
            HookAnswer::Status { code: 200, .. } => return Ok(()),
            HookAnswer::Status { code: 503, .. } => last = "the ready hook answered 503".into(),
            HookAnswer::Status { code, body } => return Err(Failure::ReadyRefused { code, body }),
            HookAnswer::NotListening(why) => {
                last = format!("nothing answered on port {port}: {why}")
            }
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
    Err(Failure::ReadyTimeout {
        timeout_secs: timeout.as_secs(),
        detail: last,
    })
}

async fn wait_port(
    agent: &hearth_vmm::AgentClient,
    port: u16,
    timeout: Duration,
) -> Result<(), Failure> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if hooks::port_accepts(agent, port, PROBE_TIMEOUT).await {
            return Ok(());
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
    Err(Failure::ReadyTimeout {
        timeout_secs: timeout.as_secs(),
        detail: format!("port {port} never accepted a connection"),
    })
}

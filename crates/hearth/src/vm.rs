//! `hearth vm ...`: ad-hoc microVMs from the command line (boot, list,
//! exec, stop). Persistent ones outlive the command; later commands adopt
//! them. Runs on the CLI's Tokio runtime.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hearth_vmm::{Lifetime, MicroVm, QemuVm, VmBackend, VmId};
use serde_json::json;

use crate::Global;

const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

pub struct BootOpts {
    pub image: String,
    pub mem_mib: u32,
    pub vcpus: u32,
    pub count: u32,
    pub hold: bool,
    pub persist: bool,
}

async fn run(vm: &QemuVm, command: &[String]) -> Result<hearth_vmm::agent::Output> {
    let argv: Vec<&str> = command.iter().map(String::as_str).collect();
    Ok(vm.agent().run(&argv, COMMAND_TIMEOUT).await?)
}

fn exit_code(out: &hearth_vmm::agent::Output) -> i32 {
    out.status
        .code
        .unwrap_or(128 + out.status.signal.unwrap_or(0))
}

pub async fn boot(g: &Global, o: BootOpts, command: Vec<String>) -> Result<()> {
    anyhow::ensure!(o.count >= 1, "--count must be at least 1");
    let backend = g.backend()?;
    let lifetime = if o.persist {
        Lifetime::Persistent
    } else {
        Lifetime::Process
    };
    let mut vms = Vec::new();
    for _ in 0..o.count {
        let id = VmId::random("vm");
        let spec = g.boot_spec(id.clone(), Some(&o.image), o.mem_mib, o.vcpus, lifetime)?;
        let t0 = Instant::now();
        let vm = backend.boot(spec).await?;
        eprintln!(
            "booted {id} in {} ms (QEMU pid {})",
            t0.elapsed().as_millis(),
            vm.pid()
        );
        vms.push(vm);
    }
    if !o.hold && !o.persist {
        // Run the command in each, then stop them.
        let mut code = 0;
        for vm in vms {
            if !command.is_empty() {
                let out = run(&vm, &command).await?;
                std::io::stdout().write_all(&out.stdout)?;
                std::io::stderr().write_all(&out.stderr)?;
                code = code.max(exit_code(&out));
            }
            vm.terminate().await?;
        }
        std::process::exit(code);
    }
    for vm in &vms {
        let output = if command.is_empty() {
            None
        } else {
            Some(run(vm, &command).await?.stdout_str())
        };
        println!(
            "{}",
            json!({ "id": vm.id().as_str(), "qemu_pid": vm.pid(), "dir": vm.dir(), "output": output })
        );
    }
    std::io::stdout().flush()?;
    if o.hold {
        tokio::signal::ctrl_c().await?;
        if o.persist {
            return Ok(()); // they go on running
        }
    }
    if !o.persist {
        for vm in vms {
            vm.terminate().await?;
        }
    }
    Ok(())
}

pub async fn list(g: &Global) -> Result<()> {
    let backend = g.backend()?;
    let found = backend.adopt().await?;
    let running: Vec<_> = found
        .running
        .iter()
        .map(|vm| json!({ "id": vm.id().as_str(), "qemu_pid": vm.pid(), "uid": vm.uid() }))
        .collect();
    let suspended: Vec<_> = found
        .suspended
        .iter()
        .map(|s| json!({ "id": s.id().as_str(), "bytes": s.allocated_bytes() }))
        .collect();
    let lost: Vec<_> = found
        .lost
        .iter()
        .map(|(id, why)| json!({ "id": id.as_str(), "reason": why }))
        .collect();
    let busy: Vec<_> = found
        .busy
        .iter()
        .map(|(id, why)| json!({ "id": id.as_str(), "reason": why }))
        .collect();
    println!(
        "{}",
        json!({ "running": running, "suspended": suspended, "lost": lost, "busy": busy })
    );
    Ok(())
}

async fn adopt_one(g: &Global, id: &str) -> Result<QemuVm> {
    let backend = g.backend()?;
    let found = backend.adopt().await?;
    if let Some((_, why)) = found.busy.iter().find(|(v, _)| v.as_str() == id) {
        bail!("microVM {id} is held by another Hearth process: {why}");
    }
    found
        .running
        .into_iter()
        .find(|vm| vm.id().as_str() == id)
        .with_context(|| format!("no running microVM {id} in {}", g.state_dir.display()))
}

pub async fn exec(g: &Global, id: &str, command: Vec<String>) -> Result<()> {
    let vm = adopt_one(g, id).await?;
    let out = run(&vm, &command).await?;
    std::io::stdout().write_all(&out.stdout)?;
    std::io::stderr().write_all(&out.stderr)?;
    drop(vm); // a persistent microVM goes on running
    std::process::exit(exit_code(&out));
}

pub async fn stop(g: &Global, id: &str) -> Result<()> {
    let vm = adopt_one(g, id).await?;
    vm.terminate().await?;
    println!("{}", json!({ "stopped": id }));
    Ok(())
}

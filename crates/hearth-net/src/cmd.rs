//! Running `ip` (iproute2) and `nft` (nftables): a command, its stdin, and
//! its failure as a [`NetError`] quoting the command line and its stderr.
//! Blocking; runs on the caller's thread.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::error::NetError;

/// Where the tools are looked up (they live in `sbin` on Debian, which a
/// non-login environment may not have on its `PATH`).
const TOOLS_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// What a finished command printed.
pub(crate) struct Finished {
    pub stdout: String,
    pub success: bool,
    pub status: std::process::ExitStatus,
    pub stderr: String,
}

fn describe(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run `program args`, feeding it `stdin`; any exit status is returned.
pub(crate) fn run_any(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<Finished, NetError> {
    let command = describe(program, args);
    let mut child = Command::new(program)
        .args(args)
        .env("PATH", TOOLS_PATH)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetError::Spawn {
            command: command.clone(),
            source,
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|source| NetError::Spawn {
                command: command.clone(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| NetError::Spawn { command, source })?;
    Ok(Finished {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        success: out.status.success(),
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Run `program args`; it must succeed. Returns its stdout.
pub(crate) fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, NetError> {
    let f = run_any(program, args, stdin)?;
    if !f.success {
        return Err(NetError::Command {
            command: describe(program, args),
            status: f.status,
            stderr: f.stderr,
        });
    }
    Ok(f.stdout)
}

/// `ip args` (in the host's namespace unless the args say `-n NAME`).
pub(crate) fn ip(args: &[&str]) -> Result<String, NetError> {
    run("ip", args, None)
}

/// `ip -j args`, parsed.
pub(crate) fn ip_json<T: serde::de::DeserializeOwned>(args: &[&str]) -> Result<T, NetError> {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    let out = run("ip", &all, None)?;
    // `ip -j` prints nothing at all (not `[]`) for some empty answers.
    let text = if out.trim().is_empty() { "[]" } else { &out };
    serde_json::from_str(text).map_err(|source| NetError::Parse {
        command: describe("ip", &all),
        source,
    })
}

/// Load an nftables script in one transaction, in the host's namespace or
/// in the named one (`ip netns exec NAME nft -f -`).
pub(crate) fn nft_script(netns: Option<&str>, script: &str) -> Result<(), NetError> {
    match netns {
        None => run("nft", &["-f", "-"], Some(script)).map(drop),
        Some(ns) => run("ip", &["netns", "exec", ns, "nft", "-f", "-"], Some(script)).map(drop),
    }
}

//! A build's log and outcome: which build to show (the latest of a
//! version), its stored or live log from
//! `GET /hearth/v1/images/{imageId}/versions/{version}/builds/{buildId}/logs`
//! with phase lines (`==> ...`) highlighted, and its final state from
//! GetMicrovmImageBuild. Runs on the command's task.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use aws_sdk_lambdamicrovms::operation::get_microvm_image_build::GetMicrovmImageBuildOutput;
use aws_sdk_lambdamicrovms::types::{
    BuildState, MicrovmImageBuildSummary, MicrovmImageVersionSummary,
};

use crate::client::raw::RawBody;
use crate::client::{Api, ApiCallError};

/// How often the state of a build is read while waiting for its end.
const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// How long a just-created version may take to show its first build.
pub const FIRST_BUILD_WAIT: Duration = Duration::from_secs(30);

/// One build of one image version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRef {
    pub image_arn: String,
    pub version: String,
    pub build_id: String,
}

/// The image id in an image ARN (`...:microvm-image:<id>`).
pub fn image_id(image_arn: &str) -> &str {
    image_arn
        .rsplit_once(":microvm-image:")
        .map(|(_, id)| id)
        .unwrap_or(image_arn)
}

/// Percent-encode a path label (everything but RFC 3986 unreserved).
fn label(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The log endpoint's path and query for a build.
pub fn logs_path(b: &BuildRef, follow: bool) -> String {
    format!(
        "/hearth/v1/images/{}/versions/{}/builds/{}/logs{}",
        label(image_id(&b.image_arn)),
        label(&b.version),
        label(&b.build_id),
        if follow { "?follow=1" } else { "" }
    )
}

/// The newest version of an image (by number), whatever its state.
pub async fn latest_version(
    api: &Api,
    image: &str,
) -> Result<Option<MicrovmImageVersionSummary>, ApiCallError> {
    let mut pages = api
        .sdk
        .list_microvm_image_versions()
        .image_identifier(image)
        .into_paginator()
        .send();
    let mut best: Option<MicrovmImageVersionSummary> = None;
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| api.error("ListMicrovmImageVersions", e))?;
        for v in page.items() {
            if best
                .as_ref()
                .is_none_or(|b| version_key(v.image_version()) > version_key(b.image_version()))
            {
                best = Some(v.clone());
            }
        }
    }
    Ok(best)
}

/// Versions are decimal numbers; anything else sorts first, by text.
fn version_key(v: &str) -> (u64, String) {
    (v.parse().unwrap_or(0), v.to_string())
}

/// The newest build of a version, waiting up to `wait` for one to appear.
pub async fn latest_build(
    api: &Api,
    image: &str,
    version: &str,
    wait: Duration,
) -> Result<Option<MicrovmImageBuildSummary>, ApiCallError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let mut pages = api
            .sdk
            .list_microvm_image_builds()
            .image_identifier(image)
            .image_version(version)
            .into_paginator()
            .send();
        let mut best: Option<MicrovmImageBuildSummary> = None;
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| api.error("ListMicrovmImageBuilds", e))?;
            for b in page.items() {
                // Later in the list wins a tie on the creation time.
                if best
                    .as_ref()
                    .is_none_or(|x| b.created_at().secs() >= x.created_at().secs())
                {
                    best = Some(b.clone());
                }
            }
        }
        if best.is_some() || tokio::time::Instant::now() >= deadline {
            return Ok(best);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Writes a log as it arrives, a line at a time, phase lines in bold when
/// the output is a terminal.
pub struct LinePrinter {
    out: Box<dyn Write + Send>,
    bold: bool,
    pending: Vec<u8>,
}

impl LinePrinter {
    /// To stdout, or to stderr when stdout is kept for JSON.
    pub fn new(to_stderr: bool) -> LinePrinter {
        let (out, bold): (Box<dyn Write + Send>, bool) = if to_stderr {
            (Box::new(std::io::stderr()), std::io::stderr().is_terminal())
        } else {
            (Box::new(std::io::stdout()), std::io::stdout().is_terminal())
        };
        LinePrinter {
            out,
            bold,
            pending: Vec::new(),
        }
    }

    #[cfg(test)]
    fn into_vec(bold: bool) -> (LinePrinter, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        (
            LinePrinter {
                out: Box::new(Shared(buf.clone())),
                bold,
                pending: Vec::new(),
            },
            buf,
        )
    }

    /// Take more of the log; whole lines are written at once.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        while let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=i).collect();
            self.write_line(&line);
        }
        let _ = self.out.flush();
    }

    /// Write what is left of an unterminated last line.
    pub fn finish(&mut self) {
        if !self.pending.is_empty() {
            let mut line = std::mem::take(&mut self.pending);
            line.push(b'\n');
            self.write_line(&line);
        }
        let _ = self.out.flush();
    }

    fn write_line(&mut self, line: &[u8]) {
        if self.bold && line.starts_with(b"==> ") {
            let body = line.strip_suffix(b"\n").unwrap_or(line);
            let _ = self.out.write_all(b"\x1b[1m");
            let _ = self.out.write_all(body);
            let _ = self.out.write_all(b"\x1b[0m\n");
        } else {
            let _ = self.out.write_all(line);
        }
    }
}

/// Print a build's log (stored, or live until the build ends with
/// `follow`).
pub async fn print_log(
    api: &Api,
    b: &BuildRef,
    follow: bool,
    out: &mut LinePrinter,
) -> Result<(), ApiCallError> {
    let operation = "GetMicrovmImageBuildLogs";
    let mut r = api
        .raw(operation, "GET", &logs_path(b, follow), RawBody::Empty)
        .await?;
    loop {
        match r.next_chunk().await {
            Ok(Some(bytes)) => out.feed(&bytes),
            Ok(None) => break,
            Err(e) => {
                out.finish();
                return Err(ApiCallError::Transport {
                    operation,
                    endpoint: api.endpoint.url.clone(),
                    detail: crate::client::error_chain(&e),
                });
            }
        }
    }
    out.finish();
    Ok(())
}

pub fn is_done(s: &BuildState) -> bool {
    match s {
        BuildState::Successful | BuildState::Failed => true,
        BuildState::Pending | BuildState::InProgress => false,
        // A state this client does not know: not an end it can report on.
        _ => false,
    }
}

/// Read the build every `poll` until it has ended; with `show_states`,
/// say each state it passes through on stderr.
pub async fn wait_for_end(
    api: &Api,
    b: &BuildRef,
    show_states: bool,
    poll: Duration,
) -> Result<GetMicrovmImageBuildOutput, ApiCallError> {
    let mut last: Option<BuildState> = None;
    loop {
        let got = api
            .sdk
            .get_microvm_image_build()
            .image_identifier(&b.image_arn)
            .image_version(&b.version)
            .build_id(&b.build_id)
            .send()
            .await
            .map_err(|e| api.error("GetMicrovmImageBuild", e))?;
        if show_states && last.as_ref() != Some(got.build_state()) {
            eprintln!("build {}: {}", b.build_id, got.build_state().as_str());
            last = Some(got.build_state().clone());
        }
        if is_done(got.build_state()) {
            return Ok(got);
        }
        tokio::time::sleep(poll).await;
    }
}

/// Follow a build to its end: its live log when the server streams logs,
/// else its states; then its final state.
pub async fn follow(
    api: &Api,
    b: &BuildRef,
    out: &mut LinePrinter,
) -> Result<GetMicrovmImageBuildOutput, ApiCallError> {
    let streamed = match print_log(api, b, true, out).await {
        Ok(()) => true,
        Err(e) if e.code() == Some("UnknownOperationException") => {
            eprintln!("(this server does not stream build logs; following the build's state)");
            false
        }
        Err(e) => {
            eprintln!("warning: the build log stream stopped: {e}; following the build's state");
            false
        }
    };
    wait_for_end(api, b, !streamed, POLL_INTERVAL).await
}

/// `12.3 MiB`.
pub fn size(bytes: i64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes.unsigned_abs() < 1024 * 1024 {
        format!("{bytes} bytes")
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB)
    }
}

/// The human summary of a finished build.
pub fn final_state_text(b: &GetMicrovmImageBuildOutput) -> String {
    let mut s = format!(
        "build {} of version {}: {}",
        b.build_id(),
        b.image_version(),
        b.build_state().as_str()
    );
    if let Some(r) = b.state_reason() {
        s.push_str(&format!(" ({r})"));
    }
    if let Some(sb) = b.snapshot_build() {
        let parts: Vec<String> = [
            ("memory snapshot", sb.memory_snapshot_size_in_bytes()),
            ("disk snapshot", sb.disk_snapshot_size_in_bytes()),
            ("code install", sb.code_install_size_in_bytes()),
        ]
        .iter()
        .filter_map(|(what, n)| n.map(|n| format!("{what} {}", size(n))))
        .collect();
        if !parts.is_empty() {
            s.push_str(&format!("\n  {}", parts.join(", ")));
        }
    }
    s
}

/// Poll every `poll` until build `b` is SUCCESSFUL and its image CREATED
/// (the benches wait so). A FAILED build, an image that leaves CREATING
/// for anything but CREATED, or `timeout` past `since` is an error naming
/// `name`.
pub async fn wait_created(
    api: &Api,
    b: &BuildRef,
    name: &str,
    since: Instant,
    timeout: Duration,
    poll: Duration,
) -> anyhow::Result<()> {
    let late = || since.elapsed() > timeout;
    let left = timeout.saturating_sub(since.elapsed());
    let build = tokio::time::timeout(left, wait_for_end(api, b, false, poll))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the build {} of {name} has not ended after {} s",
                b.build_id,
                timeout.as_secs()
            )
        })??;
    if *build.build_state() != BuildState::Successful {
        anyhow::bail!(
            "the build {} of {name} FAILED: {}",
            b.build_id,
            build.state_reason().unwrap_or("(no reason given)")
        );
    }
    loop {
        let image = api
            .sdk
            .get_microvm_image()
            .image_identifier(&b.image_arn)
            .send()
            .await
            .map_err(|e| api.error("GetMicrovmImage", e))?;
        match image.state().as_str() {
            "CREATED" => return Ok(()),
            "CREATING" if late() => {
                anyhow::bail!("{name} is not CREATED after {} s", timeout.as_secs())
            }
            "CREATING" => tokio::time::sleep(poll).await,
            other => anyhow::bail!("{name}: its build succeeded but the image is {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_lambdamicrovms::primitives::DateTime;
    use aws_sdk_lambdamicrovms::types::{Architecture, Chipset, SnapshotBuild};

    #[test]
    fn phase_lines_are_bold_on_a_terminal_and_plain_elsewhere() {
        let (mut p, buf) = LinePrinter::into_vec(true);
        p.feed(b"==> step 2/4 (RUN pip ins");
        assert!(buf.lock().unwrap().is_empty(), "a partial line was written");
        p.feed(b"tall -r requirements.txt)\nCollecting flask\n  ==> not a phase\nlast");
        p.finish();
        assert_eq!(
            String::from_utf8(buf.lock().unwrap().clone()).unwrap(),
            "\x1b[1m==> step 2/4 (RUN pip install -r requirements.txt)\x1b[0m\nCollecting flask\n  ==> not a phase\nlast\n"
        );
        let (mut p, buf) = LinePrinter::into_vec(false);
        p.feed(b"==> step 1/1 (FROM base)\nok\n");
        p.finish();
        assert_eq!(
            String::from_utf8(buf.lock().unwrap().clone()).unwrap(),
            "==> step 1/1 (FROM base)\nok\n"
        );
    }

    #[test]
    fn the_log_path_names_the_image_id_version_and_build() {
        let b = BuildRef {
            image_arn: "arn:aws:lambda:us-east-1:123456789012:microvm-image:img-abc".into(),
            version: "3".into(),
            build_id: "bld-x y".into(),
        };
        assert_eq!(
            logs_path(&b, true),
            "/hearth/v1/images/img-abc/versions/3/builds/bld-x%20y/logs?follow=1"
        );
        assert_eq!(
            logs_path(&b, false),
            "/hearth/v1/images/img-abc/versions/3/builds/bld-x%20y/logs"
        );
    }

    #[test]
    fn versions_compare_as_numbers() {
        assert!(version_key("10") > version_key("9"));
        assert!(version_key("2") > version_key("1"));
    }

    #[test]
    fn the_final_state_shows_reason_and_sizes() {
        let b = GetMicrovmImageBuildOutput::builder()
            .image_arn("arn:aws:lambda:us-east-1:123456789012:microvm-image:img-abc")
            .image_version("1")
            .build_id("bld-1")
            .build_state(BuildState::Successful)
            .architecture(Architecture::Arm64)
            .chipset(Chipset::Graviton)
            .chipset_generation("any")
            .created_at(DateTime::from_secs(0))
            .snapshot_build(
                SnapshotBuild::builder()
                    .memory_snapshot_size_in_bytes(256 * 1024 * 1024)
                    .disk_snapshot_size_in_bytes(3 * 1024 * 1024 / 2)
                    .code_install_size_in_bytes(900)
                    .build(),
            )
            .build()
            .unwrap();
        assert_eq!(
            final_state_text(&b),
            "build bld-1 of version 1: SUCCESSFUL\n  memory snapshot 256.0 MiB, disk snapshot 1.5 MiB, code install 900 bytes"
        );
        assert!(is_done(b.build_state()));
        assert!(!is_done(&BuildState::InProgress));
    }
}

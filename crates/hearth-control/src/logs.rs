//! Build logs: one append-only file per build, and a watch of its length so
//! that followers see output as it is written. The build's task writes;
//! any number of request tasks follow.
//!
//! A log lives at `<data>/logs/<account>/<group>/<stream>.log`, where group
//! and stream are the image's `logging.cloudWatch` names (defaults
//! `/aws/lambda-microvms/<image name>` and `<version>/<build id>`), made
//! safe as path components. With `logging.disabled` only the phase lines
//! and the result are written, never the output of steps or the app.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hearth_builder::{BuildLog, Phase};
use tokio::sync::watch;

/// What a follower learns: bytes written so far, and whether the build ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogProgress {
    pub len_bytes: u64,
    pub finished: bool,
}

/// Largest build log kept; output beyond it is dropped with one notice.
pub const MAX_LOG_BYTES: u64 = 64 << 20;

/// The writing side, given to the builder.
pub struct LogWriter {
    /// The open file (`None` once finished, cut or failed) and the bytes
    /// written to it.
    file: Mutex<(Option<File>, u64)>,
    progress: watch::Sender<LogProgress>,
    keep_output: bool,
}

impl LogWriter {
    /// Create (truncate) the log at `path`.
    pub fn create(path: &Path, keep_output: bool) -> std::io::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        let (progress, _) = watch::channel(LogProgress::default());
        Ok(Self {
            file: Mutex::new((Some(file), 0)),
            progress,
            keep_output,
        })
    }

    /// Open the log at `path` for appending (created when missing): a
    /// microVM's app log goes on across suspends and server restarts.
    pub fn append_to(path: &Path) -> std::io::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        let (progress, _) = watch::channel(LogProgress {
            len_bytes: len,
            finished: false,
        });
        Ok(Self {
            file: Mutex::new((Some(file), len)),
            progress,
            keep_output: true,
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<LogProgress> {
        self.progress.subscribe()
    }

    /// Append bytes (bounded by [`MAX_LOG_BYTES`]).
    pub fn append(&self, bytes: &[u8]) {
        let mut guard = self.file.lock().expect("log file");
        let (file, len) = &mut *guard;
        let Some(f) = file.as_mut() else { return };
        let room = MAX_LOG_BYTES.saturating_sub(*len);
        let (take, cut) = if (bytes.len() as u64) > room {
            (room as usize, true)
        } else {
            (bytes.len(), false)
        };
        if f.write_all(&bytes[..take]).is_err() {
            *file = None;
            return;
        }
        *len += take as u64;
        if cut {
            let note = b"\n[hearth: the log reached its limit; further output is dropped]\n";
            let _ = f.write_all(note);
            *len += note.len() as u64;
            *file = None;
        }
        let l = *len;
        self.progress.send_modify(|p| p.len_bytes = l);
    }

    /// A line of Hearth's own (always kept).
    pub fn line(&self, text: &str) {
        self.append(format!("{text}\n").as_bytes());
    }

    /// The build ended: followers stop at the end of the file.
    pub fn finish(&self, result_line: &str) {
        self.line(result_line);
        if let Some(f) = self.file.lock().expect("log file").0.take() {
            let _ = f.sync_all();
        }
        self.progress.send_modify(|p| p.finished = true);
    }
}

impl BuildLog for LogWriter {
    fn phase(&self, phase: &Phase) {
        self.line(&format!("==> {phase}"));
    }

    fn output(&self, bytes: &[u8]) {
        if self.keep_output {
            self.append(bytes);
        }
    }
}

/// The path of a build's log.
pub fn log_path(logs_root: &Path, account: &str, group: &str, stream: &str) -> PathBuf {
    logs_root
        .join(safe_component(account))
        .join(safe_component(group))
        .join(format!("{}.log", safe_component(stream)))
}

/// `s` as one path component: `/` becomes `_`, anything outside
/// `[A-Za-z0-9._-]` is %-escaped, and a leading `.` is escaped too.
pub fn safe_component(s: &str) -> String {
    let mut out = String::new();
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'/' => out.push('_'),
            b'.' if i == 0 => out.push_str("%2E"),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_escape_the_logs_root() {
        for s in ["..", ".", "/etc/passwd", "a/../../b", "", "x\0y"] {
            let c = safe_component(s);
            assert!(
                !c.contains('/') && c != ".." && c != "." && !c.is_empty(),
                "{s:?} -> {c}"
            );
        }
        assert_eq!(
            safe_component("/aws/lambda-microvms/app"),
            "_aws_lambda-microvms_app"
        );
    }

    #[test]
    fn followers_see_the_length_grow_and_the_end() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b.log");
        let w = LogWriter::create(&p, false).unwrap();
        let rx = w.subscribe();
        w.phase(&Phase::Prepare);
        w.output(b"secret output\n");
        assert_eq!(
            rx.borrow().len_bytes,
            "==> preparing the build context\n".len() as u64
        );
        w.finish("result: ok");
        assert!(rx.borrow().finished);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            !text.contains("secret"),
            "logging disabled keeps no output: {text}"
        );
        assert!(text.ends_with("result: ok\n"));
    }
}

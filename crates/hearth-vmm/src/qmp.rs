//! A minimal QMP (QEMU Machine Protocol) client.
//!
//! Owns one QMP connection to the listening socket QEMU serves in the
//! microVM's directory (`qmp.sock`), so a restarted `hearth` can connect
//! again. Commands run one at a time from the task that drives the VM;
//! asynchronous events that arrive in between are skipped. Every read is
//! bounded (line length) and every command has a deadline, so a wedged QEMU
//! turns into an error instead of a hang. A command that timed out may
//! still be answered, or its answer half-read: the session is then dead
//! (every later command fails at once with [`QmpError::Dead`]) and the owner
//! connects a new one. Descriptors (disk layers, device state) travel with
//! a command as `SCM_RIGHTS` ([`Qmp::execute_with_fd`]) for `add-fd` and
//! `getfd`.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Longest QMP line accepted (QMP replies here are small).
const MAX_LINE_BYTES: usize = 1 << 20;

/// QMP failures.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP I/O error during {during}")]
    Io {
        during: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP connection closed by QEMU during {during}")]
    Closed { during: String },
    #[error("QMP command {command} timed out after {timeout_ms} ms")]
    Timeout { command: String, timeout_ms: u64 },
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("malformed QMP message during {during}: {detail}")]
    Protocol { during: String, detail: String },
    #[error("QMP session is dead after an earlier command ({after}) timed out; reconnect")]
    Dead { after: String },
}

/// One QMP session.
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
    /// Set when a command timed out: the stream may be mid-answer.
    dead: Option<String>,
}

impl Qmp {
    /// Connect to QEMU's QMP socket and negotiate (see [`Qmp::handshake`]).
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let s = crate::sockets::connect(path).map_err(|source| QmpError::Io {
            during: format!("connect {}", path.display()),
            source,
        })?;
        Self::handshake(s.into(), timeout).await
    }

    /// Take over a connected QMP socket, read the greeting and negotiate
    /// capabilities.
    pub async fn handshake(fd: OwnedFd, timeout: Duration) -> Result<Self, QmpError> {
        let std_stream = std::os::unix::net::UnixStream::from(fd);
        std_stream
            .set_nonblocking(true)
            .map_err(|source| QmpError::Io {
                during: "setup".into(),
                source,
            })?;
        let stream = UnixStream::from_std(std_stream).map_err(|source| QmpError::Io {
            during: "setup".into(),
            source,
        })?;
        let (r, w) = stream.into_split();
        let mut qmp = Self {
            reader: BufReader::new(r),
            writer: w,
            next_id: 1,
            dead: None,
        };
        let greeting = tokio::time::timeout(timeout, qmp.read_message("greeting"))
            .await
            .map_err(|_| QmpError::Timeout {
                command: "greeting".into(),
                timeout_ms: timeout.as_millis() as u64,
            })??;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol {
                during: "greeting".into(),
                detail: greeting.to_string(),
            });
        }
        qmp.execute("qmp_capabilities", json!({}), timeout).await?;
        Ok(qmp)
    }

    async fn read_message(&mut self, during: &str) -> Result<Value, QmpError> {
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = (&mut self.reader)
                .take(MAX_LINE_BYTES as u64)
                .read_until(b'\n', &mut line)
                .await
                .map_err(|source| QmpError::Io {
                    during: during.into(),
                    source,
                })?;
            if n == 0 {
                return Err(QmpError::Closed {
                    during: during.into(),
                });
            }
            if line.last() != Some(&b'\n') {
                return Err(QmpError::Protocol {
                    during: during.into(),
                    detail: format!("line longer than {MAX_LINE_BYTES} bytes"),
                });
            }
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            return serde_json::from_slice(&line).map_err(|e| QmpError::Protocol {
                during: during.into(),
                detail: e.to_string(),
            });
        }
    }

    /// Run one command and return its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Value,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.execute_inner(command, arguments, None, timeout).await
    }

    /// Run one command that takes a descriptor (`add-fd`, `getfd`): the
    /// descriptor travels with the command's bytes.
    pub async fn execute_with_fd(
        &mut self,
        command: &str,
        arguments: Value,
        fd: BorrowedFd<'_>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.execute_inner(command, arguments, Some(fd), timeout)
            .await
    }

    async fn execute_inner(
        &mut self,
        command: &str,
        arguments: Value,
        fd: Option<BorrowedFd<'_>>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        if let Some(after) = &self.dead {
            return Err(QmpError::Dead {
                after: after.clone(),
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if arguments.as_object().is_some_and(|o| !o.is_empty()) {
            msg["arguments"] = arguments;
        }
        let mut bytes = serde_json::to_vec(&msg).expect("serialize QMP command");
        bytes.push(b'\n');
        let fut = async {
            match fd {
                Some(fd) => send_with_fd(&self.writer, &bytes, fd).await,
                None => self.writer.write_all(&bytes).await,
            }
            .map_err(|source| QmpError::Io {
                during: command.into(),
                source,
            })?;
            loop {
                let reply = self.read_message(command).await?;
                if reply.get("event").is_some() {
                    continue;
                }
                if reply.get("id").and_then(Value::as_u64) != Some(id) {
                    continue;
                }
                if let Some(ret) = reply.get("return") {
                    return Ok(ret.clone());
                }
                if let Some(err) = reply.get("error") {
                    return Err(QmpError::Command {
                        command: command.into(),
                        class: err["class"].as_str().unwrap_or("?").into(),
                        desc: err["desc"].as_str().unwrap_or("?").into(),
                    });
                }
                return Err(QmpError::Protocol {
                    during: command.into(),
                    detail: reply.to_string(),
                });
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => {
                self.dead = Some(command.to_string());
                Err(QmpError::Timeout {
                    command: command.into(),
                    timeout_ms: timeout.as_millis() as u64,
                })
            }
        }
    }

    /// Is the session still usable?
    pub fn is_dead(&self) -> bool {
        self.dead.is_some()
    }

    /// `query-status` -> the run state string (`running`, `paused`, `inmigrate`, ...).
    pub async fn status(&mut self, timeout: Duration) -> Result<String, QmpError> {
        let v = self.execute("query-status", json!({}), timeout).await?;
        v.get("status")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| QmpError::Protocol {
                during: "query-status".into(),
                detail: v.to_string(),
            })
    }
}

/// Write `bytes` in one `sendmsg` carrying `fd` as `SCM_RIGHTS`.
async fn send_with_fd(w: &OwnedWriteHalf, bytes: &[u8], fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let sock: &UnixStream = w.as_ref();
    loop {
        sock.writable().await?;
        match sock.try_io(tokio::io::Interest::WRITABLE, || {
            crate::sockets::send_with_fd(sock.as_raw_fd(), bytes, fd.as_raw_fd())
        }) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(n) => {
                return Err(std::io::Error::other(format!(
                    "short sendmsg: {n} of {} bytes",
                    bytes.len()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A scripted fake QEMU on the other end of a socket pair.
    async fn fake_qemu(fd: OwnedFd, replies: Vec<&'static str>) {
        let s = std::os::unix::net::UnixStream::from(fd);
        s.set_nonblocking(true).unwrap();
        let mut s = UnixStream::from_std(s).unwrap();
        s.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        for r in replies {
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(r.as_bytes()).await.unwrap();
        }
        // Keep the socket open until the client is done.
        let _ = s.read(&mut buf).await;
    }

    #[tokio::test]
    async fn handshake_skips_events_and_maps_errors() {
        let (a, b) = crate::process::socketpair().unwrap();
        let server = tokio::spawn(fake_qemu(
            b,
            vec![
                "{\"return\": {}, \"id\": 1}\n",
                "{\"event\": \"STOP\"}\n{\"return\": {\"status\": \"paused\"}, \"id\": 2}\n",
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}, \"id\": 3}\n",
            ],
        ));
        let t = Duration::from_secs(2);
        let mut q = Qmp::handshake(a, t).await.unwrap();
        assert_eq!(q.status(t).await.unwrap(), "paused");
        let err = q.execute("cont", json!({}), t).await.unwrap_err();
        assert!(
            matches!(err, QmpError::Command { ref desc, .. } if desc == "nope"),
            "{err}"
        );
        drop(q);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn closed_connection_is_an_error_not_a_hang() {
        let (a, b) = crate::process::socketpair().unwrap();
        drop(b);
        let err = Qmp::handshake(a, Duration::from_secs(2))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, QmpError::Closed { .. }), "{err}");
    }
}

//! The agent protocol versions the host speaks, behind one internal message
//! set (version 2's types).
//!
//! Owns the translation between the current messages and the frozen
//! [`hearth_proto::v1`] ones: a guest restored from a snapshot taken while a
//! version-1 agent ran still gets its requests in version-1 frames, and its
//! answers arrive as current messages. What version 1 cannot express
//! (PTYs, named processes, `Attach`, `Reattach`, `PowerOff`, `Resize`) is
//! refused here with [`Unsupported`] before anything is sent; flow-control
//! credit is simply not sent (version 1 has none). Pure functions, called
//! from the channel's reader task and from callers' tasks.

use hearth_proto::{
    encode_frame_version, v1, AgentError, AgentErrorKind, AgentInfo, CloseReason, ExecRequest,
    ExitStatus, FrameDecoder, FrameError, GuestMessage, Hello, HostMessage, OutputFd, Request,
    Response, RestartPolicy, DEFAULT_FILE_MODE, MIN_PROTO_VERSION, PROTO_VERSION,
};

/// A request the agent's protocol version cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("agent protocol {version} does not support {what}")]
pub struct Unsupported {
    pub version: u8,
    pub what: &'static str,
}

/// Why a message could not be framed.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// One protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    version: u8,
}

impl Codec {
    /// The codec for `version`, if the host speaks it.
    pub fn new(version: u8) -> Option<Codec> {
        (MIN_PROTO_VERSION..=PROTO_VERSION)
            .contains(&version)
            .then_some(Codec { version })
    }

    pub fn version(&self) -> u8 {
        self.version
    }

    /// Does this version have per-stream credit windows?
    pub fn has_credit(&self) -> bool {
        self.version >= 2
    }

    pub fn decoder(&self) -> FrameDecoder {
        FrameDecoder::for_version(self.version)
    }

    /// Frame `msg` for this version; `Ok(None)` when this version has no
    /// such message and nothing needs to be sent (credit in version 1).
    pub fn encode(&self, msg: &HostMessage) -> Result<Option<Vec<u8>>, EncodeError> {
        if self.version == PROTO_VERSION {
            return Ok(Some(encode_frame_version(self.version, msg)?));
        }
        let old = match msg {
            HostMessage::Request { id, body } => v1::HostMessage::Request {
                id: *id,
                body: request_v1(body)?,
            },
            HostMessage::StreamData { stream, data } => v1::HostMessage::StreamData {
                stream: *stream,
                data: data.clone(),
            },
            HostMessage::StreamEof { stream } => v1::HostMessage::StreamEof { stream: *stream },
            HostMessage::StreamClose { stream } => v1::HostMessage::StreamClose { stream: *stream },
            HostMessage::StreamCredit { .. } => return Ok(None),
        };
        Ok(Some(encode_frame_version(self.version, &old)?))
    }

    /// Take the next whole message out of `dec` (a decoder of this version).
    pub fn decode(&self, dec: &mut FrameDecoder) -> Result<Option<GuestMessage>, FrameError> {
        if self.version == PROTO_VERSION {
            return dec.decode_next::<GuestMessage>();
        }
        Ok(dec.decode_next::<v1::GuestMessage>()?.map(guest_from_v1))
    }

    /// Check, without encoding, that `req` can be sent to this version.
    pub fn supports(&self, req: &Request) -> Result<(), Unsupported> {
        if self.version == PROTO_VERSION {
            return Ok(());
        }
        request_v1(req).map(|_| ())
    }
}

fn unsupported(what: &'static str) -> Unsupported {
    Unsupported {
        version: v1::VERSION,
        what,
    }
}

fn request_v1(r: &Request) -> Result<v1::Request, Unsupported> {
    Ok(match r {
        Request::Ping { nonce } => v1::Request::Ping { nonce: *nonce },
        Request::Exec(e) => v1::Request::Exec(exec_v1(e)?),
        Request::WriteFile(w) => v1::Request::WriteFile(v1::WriteFileRequest {
            path: w.path.clone(),
            data: w.data.clone(),
            offset: w.offset,
            truncate: w.truncate,
            mode: w.mode.unwrap_or(DEFAULT_FILE_MODE),
            create_parents: w.create_parents,
            owner: w.owner,
        }),
        Request::ReadFile(r) => v1::Request::ReadFile(v1::ReadFileRequest {
            path: r.path.clone(),
            offset: r.offset,
            max_len: r.max_len,
        }),
        Request::TcpConnect { port } => v1::Request::TcpConnect { port: *port },
        Request::Signal { stream, signal } => v1::Request::Signal {
            stream: *stream,
            signal: *signal,
        },
        Request::Quiesce { drop_caches } => v1::Request::Quiesce {
            drop_caches: *drop_caches,
        },
        Request::Thaw => v1::Request::Thaw,
        Request::Restore(r) => v1::Request::Restore(v1::RestoreRequest {
            unix_time_ns: r.unix_time_ns,
            entropy: r.entropy.clone(),
            hostname: r.hostname.clone(),
            machine_id: r.machine_id.clone(),
        }),
        Request::Resize { .. } => return Err(unsupported("terminal resize")),
        Request::Reattach => return Err(unsupported("re-attaching a new host connection")),
        Request::Attach { .. } => return Err(unsupported("attaching to a named process")),
        Request::PowerOff => return Err(unsupported("power-off")),
    })
}

fn exec_v1(e: &ExecRequest) -> Result<v1::ExecRequest, Unsupported> {
    if e.pty.is_some() {
        return Err(unsupported("PTY exec"));
    }
    if e.name.is_some() {
        return Err(unsupported("named processes"));
    }
    Ok(v1::ExecRequest {
        argv: e.argv.clone(),
        env: e.env.clone(),
        clear_env: e.clear_env,
        cwd: e.cwd.clone(),
        user: e.user.clone(),
        stdin: e.stdin,
        restart: match e.restart {
            RestartPolicy::Never => v1::RestartPolicy::Never,
            RestartPolicy::OnFailure => v1::RestartPolicy::OnFailure,
            RestartPolicy::Always => v1::RestartPolicy::Always,
        },
    })
}

fn status_from_v1(s: v1::ExitStatus) -> ExitStatus {
    ExitStatus {
        code: s.code,
        signal: s.signal,
    }
}

fn fd_from_v1(fd: v1::OutputFd) -> OutputFd {
    match fd {
        v1::OutputFd::Stdout => OutputFd::Stdout,
        v1::OutputFd::Stderr => OutputFd::Stderr,
    }
}

fn error_from_v1(e: v1::AgentError) -> AgentError {
    let kind = match e.kind {
        v1::AgentErrorKind::NotFound => AgentErrorKind::NotFound,
        v1::AgentErrorKind::PermissionDenied => AgentErrorKind::PermissionDenied,
        v1::AgentErrorKind::InvalidRequest => AgentErrorKind::InvalidRequest,
        v1::AgentErrorKind::ConnectionRefused => AgentErrorKind::ConnectionRefused,
        v1::AgentErrorKind::Io => AgentErrorKind::Io,
    };
    AgentError::new(kind, e.message)
}

/// What a version-1 agent is known to be after a restore (it says nothing
/// about itself there).
pub fn v1_agent_info() -> AgentInfo {
    AgentInfo {
        proto_version: v1::VERSION,
        agent_version: "unknown (protocol 1)".into(),
        capabilities: Vec::new(),
        closed_streams: Vec::new(),
    }
}

fn response_from_v1(r: v1::Response) -> Response {
    match r {
        v1::Response::Pong { nonce } => Response::Pong { nonce },
        v1::Response::Exec { pid } => Response::Exec { pid },
        v1::Response::WriteFile { bytes_written } => Response::WriteFile { bytes_written },
        v1::Response::ReadFile { data, eof } => Response::ReadFile { data, eof },
        v1::Response::TcpConnect => Response::TcpConnect,
        v1::Response::Signal => Response::Signal,
        v1::Response::Quiesced => Response::Quiesced,
        v1::Response::Thawed => Response::Thawed,
        v1::Response::Restored => Response::Restored(v1_agent_info()),
    }
}

fn guest_from_v1(m: v1::GuestMessage) -> GuestMessage {
    match m {
        v1::GuestMessage::Hello(h) => GuestMessage::Hello(Hello {
            proto_version: h.proto_version,
            agent_version: h.agent_version,
            kernel_release: h.kernel_release,
            uptime_ms: h.uptime_ms,
            capabilities: Vec::new(),
        }),
        v1::GuestMessage::Response { id, body } => GuestMessage::Response {
            id,
            body: body.map(response_from_v1).map_err(error_from_v1),
        },
        v1::GuestMessage::Output { stream, fd, data } => GuestMessage::Output {
            stream,
            fd: fd_from_v1(fd),
            data,
        },
        v1::GuestMessage::Started { stream, pid } => GuestMessage::Started { stream, pid },
        v1::GuestMessage::Exited {
            stream,
            status,
            restarting,
        } => GuestMessage::Exited {
            stream,
            status: status_from_v1(status),
            restarting,
        },
        v1::GuestMessage::StreamData { stream, data } => GuestMessage::StreamData { stream, data },
        v1::GuestMessage::StreamEof { stream } => GuestMessage::StreamEof { stream },
        v1::GuestMessage::StreamClosed { stream, reason } => GuestMessage::StreamClosed {
            stream,
            reason: reason.map_or(CloseReason::Done, CloseReason::Error),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_proto::{encode_frame_version, PtySize, WriteFileRequest};

    #[test]
    fn version_1_requests_are_translated_or_refused() {
        let c = Codec::new(1).unwrap();
        assert!(!c.has_credit());
        let frame = c
            .encode(&HostMessage::Request {
                id: 5,
                body: Request::Ping { nonce: 77 },
            })
            .unwrap()
            .unwrap();
        assert_eq!(frame, b"HR\x01\x00\x04\x00\x00\x00\x00\x05\x00\x4d");
        // WriteFile without a mode gets the default in version 1.
        let frame = c
            .encode(&HostMessage::Request {
                id: 1,
                body: Request::WriteFile(WriteFileRequest {
                    path: "/x".into(),
                    ..Default::default()
                }),
            })
            .unwrap()
            .unwrap();
        let mut dec = FrameDecoder::for_version(1);
        dec.push(&frame);
        match dec.decode_next::<v1::HostMessage>().unwrap().unwrap() {
            v1::HostMessage::Request {
                body: v1::Request::WriteFile(w),
                ..
            } => assert_eq!(w.mode, 0o644),
            other => panic!("{other:?}"),
        }
        let pty = Request::Exec(ExecRequest {
            pty: Some(PtySize { cols: 80, rows: 24 }),
            ..Default::default()
        });
        assert_eq!(
            c.supports(&pty),
            Err(Unsupported {
                version: 1,
                what: "PTY exec"
            })
        );
        assert!(c.supports(&Request::PowerOff).is_err());
        assert!(c
            .encode(&HostMessage::StreamCredit {
                stream: 1,
                bytes: 10
            })
            .unwrap()
            .is_none());
        assert!(Codec::new(0).is_none() && Codec::new(3).is_none());
    }

    #[test]
    fn version_1_answers_become_current_messages() {
        let c = Codec::new(1).unwrap();
        let mut dec = c.decoder();
        for m in [
            v1::GuestMessage::Response {
                id: 3,
                body: Ok(v1::Response::Restored),
            },
            v1::GuestMessage::StreamClosed {
                stream: 4,
                reason: Some("reset".into()),
            },
            v1::GuestMessage::Response {
                id: 4,
                body: Err(v1::AgentError::new(v1::AgentErrorKind::NotFound, "gone")),
            },
        ] {
            dec.push(&encode_frame_version(1, &m).unwrap());
        }
        assert_eq!(
            c.decode(&mut dec).unwrap(),
            Some(GuestMessage::Response {
                id: 3,
                body: Ok(Response::Restored(v1_agent_info()))
            })
        );
        assert_eq!(
            c.decode(&mut dec).unwrap(),
            Some(GuestMessage::StreamClosed {
                stream: 4,
                reason: CloseReason::Error("reset".into())
            })
        );
        assert!(matches!(
            c.decode(&mut dec).unwrap(),
            Some(GuestMessage::Response { body: Err(e), .. }) if e.kind == AgentErrorKind::NotFound
        ));
        assert_eq!(c.decode(&mut dec).unwrap(), None);
    }
}

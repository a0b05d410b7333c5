//! Black-box tests of `serve` over a socket pair, with a real hearth-proto
//! encoder/decoder on the host side. Nothing here needs to be PID 1; clock,
//! entropy and identity effects go through a recording fake.

use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hearth_agent::{serve, ServeConfig, SystemOps};
use hearth_proto::{
    encode_frame, AgentErrorKind, ExecRequest, ExitStatus, FrameDecoder, GuestMessage, HostMessage,
    OutputFd, ReadFileRequest, Request, Response, RestartPolicy, RestoreRequest, WriteFileRequest,
    MAX_CHUNK_BYTES, PROTO_VERSION, RESTORE_ENTROPY_BYTES,
};

const WAIT: Duration = Duration::from_secs(10);

/// Records effects instead of touching the host.
#[derive(Default)]
struct FakeSystem {
    calls: Mutex<Vec<String>>,
}

impl SystemOps for FakeSystem {
    fn set_wall_clock(&self, ns: u64) -> io::Result<()> {
        self.calls.lock().unwrap().push(format!("clock {ns}"));
        Ok(())
    }
    fn add_entropy(&self, entropy: &[u8]) -> io::Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("entropy {}", entropy.len()));
        Ok(())
    }
    fn set_hostname(&self, name: &str) -> io::Result<()> {
        self.calls.lock().unwrap().push(format!("hostname {name}"));
        Ok(())
    }
    fn persist_identity(&self, name: Option<&str>, id: Option<&str>) -> io::Result<()> {
        self.calls.lock().unwrap().push(format!(
            "persist {} {}",
            name.unwrap_or("-"),
            id.unwrap_or("-")
        ));
        Ok(())
    }
    fn quiesce_filesystems(&self, drop_caches: bool) -> io::Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("quiesce {drop_caches}"));
        Ok(())
    }
}

/// The host end of a served socket pair.
struct Host {
    sock: UnixStream,
    decoder: FrameDecoder,
    next_id: u64,
    system: Arc<FakeSystem>,
    agent: Option<thread::JoinHandle<io::Result<()>>>,
}

impl Host {
    fn start() -> Host {
        let (host, agent) = UnixStream::pair().unwrap();
        let system = Arc::new(FakeSystem::default());
        let config = ServeConfig::socket(system.clone());
        let agent_writer = agent.try_clone().unwrap();
        let handle = thread::spawn(move || serve(agent, agent_writer, config));
        let mut h = Host {
            sock: host,
            decoder: FrameDecoder::new(),
            next_id: 1,
            system,
            agent: Some(handle),
        };
        match h.recv() {
            GuestMessage::Hello(hello) => {
                assert_eq!(hello.proto_version, PROTO_VERSION);
                assert_eq!(hello.agent_version, env!("CARGO_PKG_VERSION"));
                assert!(!hello.kernel_release.is_empty());
                assert!(hello.uptime_ms > 0);
            }
            other => panic!("first frame is not Hello: {other:?}"),
        }
        h
    }

    fn send(&mut self, msg: &HostMessage) {
        self.sock.write_all(&encode_frame(msg).unwrap()).unwrap();
    }

    fn request(&mut self, body: Request) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&HostMessage::Request { id, body });
        id
    }

    /// The next frame within `timeout`, or None.
    fn try_recv(&mut self, timeout: Duration) -> Option<GuestMessage> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(msg) = self
                .decoder
                .decode_next::<GuestMessage>()
                .expect("agent sent a bad frame")
            {
                return Some(msg);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            let mut buf = vec![0u8; self.decoder.room().max(1)];
            match self.sock.read(&mut buf) {
                Ok(0) => panic!("agent closed the channel"),
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    fn recv(&mut self) -> GuestMessage {
        self.try_recv(WAIT)
            .expect("no frame from the agent in time")
    }

    /// The response to `id`, asserting nothing else arrives first.
    fn response(&mut self, id: u64) -> Result<Response, hearth_proto::AgentError> {
        match self.recv() {
            GuestMessage::Response { id: got, body } if got == id => body,
            other => panic!("expected the response to {id}, got {other:?}"),
        }
    }

    /// Frames up to and including the first one matching `last`.
    fn until(&mut self, last: impl Fn(&GuestMessage) -> bool) -> Vec<GuestMessage> {
        let mut out = Vec::new();
        loop {
            let msg = self.recv();
            let done = last(&msg);
            out.push(msg);
            if done {
                return out;
            }
        }
    }

    fn exec(&mut self, req: ExecRequest) -> (u64, u32) {
        let id = self.request(Request::Exec(req));
        match self.response(id) {
            Ok(Response::Exec { pid }) => (id, pid),
            other => panic!("exec failed: {other:?}"),
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        if let Some(agent) = self.agent.take() {
            if !thread::panicking() {
                agent.join().unwrap().unwrap();
            }
        }
    }
}

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest {
        argv: argv(&["sh", "-c", script]),
        ..Default::default()
    }
}

/// Concatenated output of `fd` on `stream`.
fn output(frames: &[GuestMessage], stream: u64, which: OutputFd) -> String {
    let mut out = Vec::new();
    for f in frames {
        if let GuestMessage::Output {
            stream: s,
            fd,
            data,
        } = f
        {
            if *s == stream && *fd == which {
                out.extend_from_slice(data);
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn is_exited(stream: u64) -> impl Fn(&GuestMessage) -> bool {
    move |m| matches!(m, GuestMessage::Exited { stream: s, .. } if *s == stream)
}

fn exited_status(frames: &[GuestMessage]) -> (ExitStatus, bool) {
    match frames.last() {
        Some(GuestMessage::Exited {
            status, restarting, ..
        }) => (*status, *restarting),
        other => panic!("last frame is not Exited: {other:?}"),
    }
}

fn tmp_path(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("hearth-agent-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name).to_string_lossy().into_owned()
}

#[test]
fn ping_pongs() {
    let mut h = Host::start();
    let id = h.request(Request::Ping { nonce: 0xfeed });
    assert_eq!(h.response(id), Ok(Response::Pong { nonce: 0xfeed }));
}

#[test]
fn exec_streams_both_fds_then_exits_with_the_code() {
    let mut h = Host::start();
    let (id, pid) = h.exec(sh("echo out; echo err >&2; exit 3"));
    assert!(pid > 1);
    let frames = h.until(is_exited(id));
    assert_eq!(output(&frames, id, OutputFd::Stdout), "out\n");
    assert_eq!(output(&frames, id, OutputFd::Stderr), "err\n");
    let (status, restarting) = exited_status(&frames);
    assert_eq!(
        status,
        ExitStatus {
            code: Some(3),
            signal: None
        }
    );
    assert!(!restarting);
    // Nothing follows the final Exited.
    assert_eq!(h.try_recv(Duration::from_millis(300)), None);
}

#[test]
fn exited_follows_all_output_even_when_large() {
    let mut h = Host::start();
    // 300 KiB of output written just before exit.
    let (id, _) = h.exec(sh("head -c 307200 /dev/zero | tr '\\0' x; exit 0"));
    let frames = h.until(is_exited(id));
    assert_eq!(output(&frames, id, OutputFd::Stdout).len(), 307_200);
    for f in &frames {
        if let GuestMessage::Output { data, .. } = f {
            assert!(data.len() <= MAX_CHUNK_BYTES);
        }
    }
}

#[test]
fn exec_env_cwd_and_user() {
    let mut h = Host::start();
    let (id, _) = h.exec(ExecRequest {
        argv: argv(&["sh", "-c", "echo $FOO:$HOME:$(pwd):$(id -u):$(id -g)"]),
        env: vec![("FOO".into(), "bar".into())],
        cwd: Some("/tmp".into()),
        // A uid without a passwd entry: gid 0, HOME /.
        user: Some("4242".into()),
        ..Default::default()
    });
    let frames = h.until(is_exited(id));
    assert_eq!(output(&frames, id, OutputFd::Stdout), "bar:/:/tmp:4242:0\n");

    let (id, _) = h.exec(ExecRequest {
        argv: argv(&["/usr/bin/env"]),
        env: vec![("ONLY".into(), "this".into())],
        clear_env: true,
        ..Default::default()
    });
    let frames = h.until(is_exited(id));
    assert_eq!(output(&frames, id, OutputFd::Stdout), "ONLY=this\n");
}

#[test]
fn exec_stdin_is_forwarded_and_eof_ends_it() {
    let mut h = Host::start();
    let (id, _) = h.exec(ExecRequest {
        argv: argv(&["cat"]),
        stdin: true,
        ..Default::default()
    });
    h.send(&HostMessage::StreamData {
        stream: id,
        data: b"hello\n".to_vec(),
    });
    match h.recv() {
        GuestMessage::Output {
            stream,
            fd: OutputFd::Stdout,
            data,
        } => {
            assert_eq!((stream, data.as_slice()), (id, &b"hello\n"[..]));
        }
        other => panic!("expected echoed output, got {other:?}"),
    }
    h.send(&HostMessage::StreamData {
        stream: id,
        data: b"more".to_vec(),
    });
    h.send(&HostMessage::StreamEof { stream: id });
    let frames = h.until(is_exited(id));
    assert_eq!(output(&frames, id, OutputFd::Stdout), "more");
    assert_eq!(
        exited_status(&frames).0,
        ExitStatus {
            code: Some(0),
            signal: None
        }
    );
}

#[test]
fn exec_without_stdin_reads_dev_null() {
    let mut h = Host::start();
    let (id, _) = h.exec(ExecRequest {
        argv: argv(&["cat"]),
        ..Default::default()
    });
    let frames = h.until(is_exited(id));
    assert_eq!(exited_status(&frames).0.code, Some(0));
    assert_eq!(output(&frames, id, OutputFd::Stdout), "");
}

#[test]
fn exec_errors_are_reported() {
    let mut h = Host::start();
    let id = h.request(Request::Exec(ExecRequest {
        argv: argv(&["definitely-not-a-program-hearth"]),
        ..Default::default()
    }));
    let e = h.response(id).unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::NotFound);
    assert!(
        e.message.contains("definitely-not-a-program-hearth"),
        "{}",
        e.message
    );

    let id = h.request(Request::Exec(ExecRequest {
        argv: argv(&["/nonexistent/prog"]),
        ..Default::default()
    }));
    let e = h.response(id).unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::NotFound);
    assert!(e.message.contains("/nonexistent/prog"), "{}", e.message);

    let id = h.request(Request::Exec(ExecRequest {
        argv: vec![],
        ..Default::default()
    }));
    assert_eq!(
        h.response(id).unwrap_err().kind,
        AgentErrorKind::InvalidRequest
    );

    let id = h.request(Request::Exec(ExecRequest {
        argv: argv(&["true"]),
        cwd: Some("/nonexistent-dir-hearth".into()),
        ..Default::default()
    }));
    let e = h.response(id).unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::NotFound);
    assert!(
        e.message.contains("chdir /nonexistent-dir-hearth"),
        "{}",
        e.message
    );

    let id = h.request(Request::Exec(ExecRequest {
        argv: argv(&["true"]),
        user: Some("no-such-user-hearth".into()),
        ..Default::default()
    }));
    assert_eq!(h.response(id).unwrap_err().kind, AgentErrorKind::NotFound);
}

#[test]
fn signal_reaches_the_process_group() {
    let mut h = Host::start();
    let (id, _) = h.exec(sh("sleep 30; echo never"));
    let sig = h.request(Request::Signal {
        stream: id,
        signal: libc::SIGTERM,
    });
    assert_eq!(h.response(sig), Ok(Response::Signal));
    let frames = h.until(is_exited(id));
    assert_eq!(output(&frames, id, OutputFd::Stdout), "");
    assert_eq!(
        exited_status(&frames).0,
        ExitStatus {
            code: None,
            signal: Some(libc::SIGTERM)
        }
    );
    let sig = h.request(Request::Signal {
        stream: id,
        signal: libc::SIGTERM,
    });
    assert_eq!(h.response(sig).unwrap_err().kind, AgentErrorKind::NotFound);
    let sig = h.request(Request::Signal {
        stream: 999,
        signal: 1000,
    });
    assert!(h.response(sig).is_err());
}

#[test]
fn stream_close_kills_and_forgets() {
    let mut h = Host::start();
    let (id, pid) = h.exec(sh("echo started; exec sleep 30"));
    match h.recv() {
        GuestMessage::Output { data, .. } => assert_eq!(data, b"started\n"),
        other => panic!("{other:?}"),
    }
    h.send(&HostMessage::StreamClose { stream: id });
    assert_eq!(
        h.try_recv(Duration::from_millis(500)),
        None,
        "nothing after close"
    );
    // The process is gone (killed and reaped, not a zombie).
    let deadline = Instant::now() + WAIT;
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "pid {pid} still exists");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn restart_policy_restarts_with_started_and_restarting_flag() {
    let mut h = Host::start();
    let (id, first_pid) = h.exec(ExecRequest {
        restart: RestartPolicy::OnFailure,
        ..sh("echo run; exit 1")
    });
    let frames = h.until(is_exited(id));
    assert_eq!(output(&frames, id, OutputFd::Stdout), "run\n");
    assert_eq!(
        exited_status(&frames),
        (
            ExitStatus {
                code: Some(1),
                signal: None
            },
            true
        )
    );
    let before_restart = Instant::now();
    let pid = match h.recv() {
        GuestMessage::Started { stream, pid } => {
            assert_eq!(stream, id);
            pid
        }
        other => panic!("expected Started, got {other:?}"),
    };
    assert_ne!(pid, first_pid);
    assert!(
        before_restart.elapsed() >= Duration::from_millis(700),
        "back-off too short"
    );
    let frames = h.until(is_exited(id));
    assert_eq!(output(&frames, id, OutputFd::Stdout), "run\n");
    assert!(exited_status(&frames).1);
    h.send(&HostMessage::StreamClose { stream: id });
    // The second back-off is 2 s: closing during it ends supervision.
    assert_eq!(h.try_recv(Duration::from_millis(2500)), None);
}

#[test]
fn on_failure_does_not_restart_a_success() {
    let mut h = Host::start();
    let (id, _) = h.exec(ExecRequest {
        restart: RestartPolicy::OnFailure,
        ..sh("exit 0")
    });
    let frames = h.until(is_exited(id));
    assert_eq!(
        exited_status(&frames),
        (
            ExitStatus {
                code: Some(0),
                signal: None
            },
            false
        )
    );
    assert_eq!(h.try_recv(Duration::from_millis(1500)), None);
}

#[test]
fn daemonised_grandchild_does_not_hold_exited_back_and_is_reaped() {
    // Orphans re-parent to this test process (as they would to PID 1), so
    // the agent's reaper must reap them.
    // SAFETY: prctl with integer arguments only.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    let mut h = Host::start();
    let start = Instant::now();
    let (id, _) = h.exec(sh("sleep 2 & echo $!"));
    let frames = h.until(is_exited(id));
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "Exited waited for the grandchild"
    );
    let orphan: u32 = output(&frames, id, OutputFd::Stdout)
        .trim()
        .parse()
        .unwrap();
    assert_eq!(exited_status(&frames).0.code, Some(0));
    let deadline = Instant::now() + WAIT;
    while std::path::Path::new(&format!("/proc/{orphan}")).exists() {
        assert!(Instant::now() < deadline, "orphan {orphan} was not reaped");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn write_then_read_with_offsets_and_eof() {
    let mut h = Host::start();
    let path = tmp_path("dir/sub/file.txt");
    let _ = std::fs::remove_file(&path);
    let id = h.request(Request::WriteFile(WriteFileRequest {
        path: path.clone(),
        data: b"hello world".to_vec(),
        truncate: true,
        mode: 0o640,
        create_parents: true,
        ..Default::default()
    }));
    assert_eq!(
        h.response(id),
        Ok(Response::WriteFile { bytes_written: 11 })
    );
    let id = h.request(Request::WriteFile(WriteFileRequest {
        path: path.clone(),
        data: b"WORLD!".to_vec(),
        offset: 6,
        mode: 0o600,
        ..Default::default()
    }));
    assert_eq!(h.response(id), Ok(Response::WriteFile { bytes_written: 6 }));
    assert_eq!(std::fs::read(&path).unwrap(), b"hello WORLD!");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o640
    );

    let read = |h: &mut Host, offset, max_len| {
        let id = h.request(Request::ReadFile(ReadFileRequest {
            path: path.clone(),
            offset,
            max_len,
        }));
        h.response(id)
    };
    assert_eq!(
        read(&mut h, 0, 5),
        Ok(Response::ReadFile {
            data: b"hello".to_vec(),
            eof: false
        })
    );
    assert_eq!(
        read(&mut h, 6, 6),
        Ok(Response::ReadFile {
            data: b"WORLD!".to_vec(),
            eof: true
        })
    );
    assert_eq!(
        read(&mut h, 6, 100),
        Ok(Response::ReadFile {
            data: b"WORLD!".to_vec(),
            eof: true
        })
    );
    assert_eq!(
        read(&mut h, 50, 10),
        Ok(Response::ReadFile {
            data: vec![],
            eof: true
        })
    );

    let id = h.request(Request::WriteFile(WriteFileRequest {
        path: path.clone(),
        data: b"x".to_vec(),
        truncate: true,
        ..Default::default()
    }));
    assert_eq!(h.response(id), Ok(Response::WriteFile { bytes_written: 1 }));
    assert_eq!(std::fs::read(&path).unwrap(), b"x");
}

#[test]
fn file_request_errors() {
    let mut h = Host::start();
    let id = h.request(Request::ReadFile(ReadFileRequest {
        path: tmp_path("whatever"),
        offset: 0,
        max_len: MAX_CHUNK_BYTES as u32 + 1,
    }));
    assert_eq!(
        h.response(id).unwrap_err().kind,
        AgentErrorKind::InvalidRequest
    );
    let id = h.request(Request::ReadFile(ReadFileRequest {
        path: "/nonexistent-hearth/file".into(),
        offset: 0,
        max_len: 1,
    }));
    let e = h.response(id).unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::NotFound);
    assert!(
        e.message.contains("/nonexistent-hearth/file"),
        "{}",
        e.message
    );
    let id = h.request(Request::WriteFile(WriteFileRequest {
        path: "relative/path".into(),
        ..Default::default()
    }));
    assert_eq!(
        h.response(id).unwrap_err().kind,
        AgentErrorKind::InvalidRequest
    );
    let id = h.request(Request::WriteFile(WriteFileRequest {
        path: "/nonexistent-hearth/dir/file".into(),
        ..Default::default()
    }));
    assert_eq!(h.response(id).unwrap_err().kind, AgentErrorKind::NotFound);
}

fn echo_server() -> (u16, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => conn.write_all(&buf[..n]).unwrap(),
            }
        }
        // Echo done: close our side too.
    });
    (port, handle)
}

#[test]
fn tcp_stream_echoes_and_closes_once() {
    let mut h = Host::start();
    let (port, server) = echo_server();
    let id = h.request(Request::TcpConnect { port });
    assert_eq!(h.response(id), Ok(Response::TcpConnect));
    h.send(&HostMessage::StreamData {
        stream: id,
        data: b"ping over tcp".to_vec(),
    });
    let mut echoed = Vec::new();
    while echoed.len() < 13 {
        match h.recv() {
            GuestMessage::StreamData { stream, data } => {
                assert_eq!(stream, id);
                echoed.extend(data);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(echoed, b"ping over tcp");
    h.send(&HostMessage::StreamEof { stream: id });
    assert_eq!(h.recv(), GuestMessage::StreamEof { stream: id });
    assert_eq!(
        h.recv(),
        GuestMessage::StreamClosed {
            stream: id,
            reason: None
        }
    );
    assert_eq!(h.try_recv(Duration::from_millis(300)), None);
    server.join().unwrap();
}

#[test]
fn tcp_stream_close_from_host_closes_the_socket() {
    let mut h = Host::start();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let id = h.request(Request::TcpConnect { port });
    assert_eq!(h.response(id), Ok(Response::TcpConnect));
    let (mut conn, _) = listener.accept().unwrap();
    conn.write_all(b"hi").unwrap();
    assert_eq!(
        h.recv(),
        GuestMessage::StreamData {
            stream: id,
            data: b"hi".to_vec()
        }
    );
    h.send(&HostMessage::StreamClose { stream: id });
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(conn.read(&mut buf).unwrap(), 0, "guest socket not closed");
    assert_eq!(h.try_recv(Duration::from_millis(300)), None);
}

#[test]
fn tcp_connect_to_a_closed_port_is_refused() {
    let mut h = Host::start();
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let id = h.request(Request::TcpConnect { port });
    let e = h.response(id).unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::ConnectionRefused);
    assert!(
        e.message.contains(&format!("127.0.0.1:{port}")),
        "{}",
        e.message
    );
    let id = h.request(Request::TcpConnect { port: 0 });
    assert_eq!(
        h.response(id).unwrap_err().kind,
        AgentErrorKind::InvalidRequest
    );
}

#[test]
fn quiesce_holds_output_until_thaw_then_delivers_it_in_order() {
    let mut h = Host::start();
    let (id, _) = h.exec(sh(
        "i=0; while [ $i -lt 20 ]; do echo line$i; i=$((i+1)); sleep 0.05; done",
    ));
    // Wait for the first output so the process is surely producing.
    let mut before = vec![h.recv()];
    let q = h.request(Request::Quiesce { drop_caches: true });
    before.extend(h.until(|m| matches!(m, GuestMessage::Response { id, .. } if *id == q)));
    assert_eq!(
        before.last(),
        Some(&GuestMessage::Response {
            id: q,
            body: Ok(Response::Quiesced)
        })
    );
    // Quiesced is the last frame: nothing while the process keeps writing.
    assert_eq!(
        h.try_recv(Duration::from_millis(1500)),
        None,
        "a frame escaped the quiesce"
    );
    assert_eq!(*h.system.calls.lock().unwrap(), ["quiesce true"]);

    let t = h.request(Request::Thaw);
    let mut after = Vec::new();
    let thawed = GuestMessage::Response {
        id: t,
        body: Ok(Response::Thawed),
    };
    while !(after.contains(&thawed) && after.iter().any(is_exited(id))) {
        after.push(h.recv());
    }
    // The held output came first, the Thawed response after it.
    let thawed_at = after
        .iter()
        .position(|m| {
            *m == GuestMessage::Response {
                id: t,
                body: Ok(Response::Thawed),
            }
        })
        .expect("no Thawed response");
    assert!(
        after[..thawed_at]
            .iter()
            .any(|m| matches!(m, GuestMessage::Output { .. })),
        "no held output was delivered before Thawed: {after:?}"
    );
    let mut all = before.clone();
    all.extend(after.iter().cloned());
    let expected: String = (0..20).map(|i| format!("line{i}\n")).collect();
    assert_eq!(output(&all, id, OutputFd::Stdout), expected);
    assert!(after.contains(&GuestMessage::Exited {
        stream: id,
        status: ExitStatus {
            code: Some(0),
            signal: None
        },
        restarting: false
    }));
}

#[test]
fn output_held_by_a_quiesce_survives_the_process_exiting_meanwhile() {
    let mut h = Host::start();
    // Starts writing only after the quiesce, in more separate chunks than
    // the agent's writer queue holds, then exits while output is held.
    let (id, _) = h.exec(sh(
        "sleep 0.5; i=0; while [ $i -lt 60 ]; do echo line$i; i=$((i+1)); sleep 0.01; done",
    ));
    let q = h.request(Request::Quiesce { drop_caches: false });
    assert_eq!(h.response(q), Ok(Response::Quiesced));
    assert_eq!(h.try_recv(Duration::from_millis(2500)), None);
    let t = h.request(Request::Thaw);
    let thawed = GuestMessage::Response {
        id: t,
        body: Ok(Response::Thawed),
    };
    let mut after = Vec::new();
    while !(after.contains(&thawed) && after.iter().any(is_exited(id))) {
        after.push(h.recv());
    }
    let expected: String = (0..60).map(|i| format!("line{i}\n")).collect();
    assert_eq!(output(&after, id, OutputFd::Stdout), expected);
    let exited_at = after.iter().position(is_exited(id)).unwrap();
    assert!(
        !after[exited_at..]
            .iter()
            .any(|m| matches!(m, GuestMessage::Output { .. })),
        "output after Exited"
    );
}

#[test]
fn restore_validates_then_applies_and_resumes() {
    let mut h = Host::start();
    let good = RestoreRequest {
        unix_time_ns: 1_700_000_000_123_456_789,
        entropy: vec![0xaa; RESTORE_ENTROPY_BYTES],
        hostname: Some("vm-abc".into()),
        machine_id: Some("0123456789abcdef0123456789abcdef".into()),
    };
    let id = h.request(Request::Restore(RestoreRequest {
        entropy: vec![1; 63],
        ..good.clone()
    }));
    let e = h.response(id).unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::InvalidRequest);
    assert!(e.message.contains("entropy"), "{}", e.message);
    let id = h.request(Request::Restore(RestoreRequest {
        hostname: Some("-bad-".into()),
        ..good.clone()
    }));
    assert_eq!(
        h.response(id).unwrap_err().kind,
        AgentErrorKind::InvalidRequest
    );
    let id = h.request(Request::Restore(RestoreRequest {
        machine_id: Some("XYZ".into()),
        ..good.clone()
    }));
    assert_eq!(
        h.response(id).unwrap_err().kind,
        AgentErrorKind::InvalidRequest
    );
    assert!(
        h.system.calls.lock().unwrap().is_empty(),
        "invalid restore had effects"
    );

    // A valid restore after a quiesce applies everything and resumes output.
    let q = h.request(Request::Quiesce { drop_caches: false });
    assert_eq!(h.response(q), Ok(Response::Quiesced));
    let r = h.request(Request::Restore(good));
    assert_eq!(h.response(r), Ok(Response::Restored));
    // The identity files are persisted after the answer but before the
    // next request is served.
    let p = h.request(Request::Ping { nonce: 1 });
    assert_eq!(h.response(p), Ok(Response::Pong { nonce: 1 }));
    assert_eq!(
        *h.system.calls.lock().unwrap(),
        [
            "quiesce false",
            "clock 1700000000123456789",
            "entropy 64",
            "hostname vm-abc",
            "persist vm-abc 0123456789abcdef0123456789abcdef",
        ]
    );
}

#[test]
fn garbage_from_the_host_is_survived() {
    let mut h = Host::start();
    h.sock.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    // A well-framed but undecodable payload.
    let mut bad = encode_frame(&HostMessage::StreamEof { stream: 1 }).unwrap();
    bad[8] = 0xff;
    h.sock.write_all(&bad).unwrap();
    // Give the agent time to drop the garbage before the next real frame.
    thread::sleep(Duration::from_millis(100));
    let id = h.request(Request::Ping { nonce: 5 });
    assert_eq!(h.response(id), Ok(Response::Pong { nonce: 5 }));
}

#[test]
fn duplicate_stream_ids_are_rejected() {
    let mut h = Host::start();
    let (id, _) = h.exec(sh("sleep 5"));
    h.send(&HostMessage::Request {
        id,
        body: Request::TcpConnect { port: 1 },
    });
    assert_eq!(
        h.response(id).unwrap_err().kind,
        AgentErrorKind::InvalidRequest
    );
    h.send(&HostMessage::StreamClose { stream: id });
}

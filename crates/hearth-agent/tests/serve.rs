//! Black-box tests of `serve` over a socket pair, with a real hearth-proto
//! encoder/decoder on the host side. Nothing here needs to be PID 1; clock,
//! entropy, identity and power-off effects go through a recording fake.
//!
//! The host side returns output credit as it reads (like a real host whose
//! consumer keeps up) unless a test takes credit into its own hands for a
//! stream ([`Host::manual_credit`]); the agent's `StreamCredit` frames are
//! counted, not returned by [`Host::recv`].

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hearth_agent::{serve, ServeConfig, SystemOps};
use hearth_proto::{
    capabilities, encode_frame, AgentErrorKind, AgentInfo, CloseReason, ClosedStream, ExecRequest,
    ExitStatus, FrameDecoder, GuestMessage, HostMessage, OutputFd, PtySize, ReadFileRequest,
    Request, Response, RestartPolicy, RestoreRequest, StreamKind, WriteFileRequest,
    DETACHED_OUTPUT_BYTES, MAX_CHUNK_BYTES, PROTO_VERSION, RESTORE_ENTROPY_BYTES,
    STREAM_WINDOW_BYTES,
};

const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(500);
const WINDOW: usize = STREAM_WINDOW_BYTES as usize;

/// Records effects instead of touching the host.
#[derive(Default)]
struct FakeSystem {
    calls: Mutex<Vec<String>>,
    /// Pretend not to be PID 1.
    not_pid1: bool,
}

impl FakeSystem {
    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
}

impl SystemOps for FakeSystem {
    fn set_wall_clock(&self, ns: u64) -> io::Result<()> {
        self.record(format!("clock {ns}"));
        Ok(())
    }
    fn add_entropy(&self, entropy: &[u8]) -> io::Result<()> {
        self.record(format!("entropy {}", entropy.len()));
        Ok(())
    }
    fn set_hostname(&self, name: &str) -> io::Result<()> {
        self.record(format!("hostname {name}"));
        Ok(())
    }
    fn persist_identity(&self, name: Option<&str>, id: Option<&str>) -> io::Result<()> {
        self.record(format!(
            "persist {} {}",
            name.unwrap_or("-"),
            id.unwrap_or("-")
        ));
        Ok(())
    }
    fn quiesce_filesystems(&self, drop_caches: bool) -> io::Result<()> {
        self.record(format!("quiesce {drop_caches}"));
        Ok(())
    }
    fn can_power_off(&self) -> bool {
        !self.not_pid1
    }
    fn power_off(&self) -> io::Result<()> {
        self.record("power-off".into());
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
    /// Streams whose output credit the test returns itself.
    manual: HashSet<u64>,
    /// Credit the agent returned for host data, per stream.
    credited: HashMap<u64, u64>,
}

impl Host {
    fn start() -> Host {
        Host::start_with(FakeSystem::default())
    }

    fn start_with(system: FakeSystem) -> Host {
        let (host, agent) = UnixStream::pair().unwrap();
        let system = Arc::new(system);
        let config = ServeConfig::socket(system.clone());
        let agent_writer = agent.try_clone().unwrap();
        let handle = thread::spawn(move || serve(agent, agent_writer, config));
        let mut h = Host {
            sock: host,
            decoder: FrameDecoder::new(),
            next_id: 1,
            system,
            agent: Some(handle),
            manual: HashSet::new(),
            credited: HashMap::new(),
        };
        match h.recv() {
            GuestMessage::Hello(hello) => {
                assert_eq!(hello.proto_version, PROTO_VERSION);
                assert_eq!(hello.agent_version, env!("CARGO_PKG_VERSION"));
                assert!(!hello.kernel_release.is_empty());
                assert!(hello.uptime_ms > 0);
                assert_eq!(hello.capabilities, capabilities());
            }
            other => panic!("first frame is not Hello: {other:?}"),
        }
        h
    }

    fn send(&mut self, msg: &HostMessage) {
        self.sock.write_all(&encode_frame(msg).unwrap()).unwrap();
    }

    /// The id the next request gets.
    fn peek_id(&self) -> u64 {
        self.next_id
    }

    /// The test returns output credit of stream `id` itself.
    fn manual_credit(&mut self, id: u64) {
        self.manual.insert(id);
    }

    fn grant(&mut self, stream: u64, bytes: usize) {
        self.send(&HostMessage::StreamCredit {
            stream,
            bytes: bytes as u32,
        });
    }

    fn request(&mut self, body: Request) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&HostMessage::Request { id, body });
        id
    }

    /// The next frame within `timeout`, or None; every frame, as it came.
    fn try_recv_raw(&mut self, timeout: Duration) -> Option<GuestMessage> {
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

    /// The next frame that is not a `StreamCredit` (those are counted);
    /// output is credited back unless the stream's credit is manual.
    fn try_recv(&mut self, timeout: Duration) -> Option<GuestMessage> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = self.try_recv_raw(left)?;
            match &msg {
                GuestMessage::StreamCredit { stream, bytes } => {
                    *self.credited.entry(*stream).or_default() += u64::from(*bytes);
                    continue;
                }
                GuestMessage::Output { stream, data, .. }
                | GuestMessage::StreamData { stream, data }
                    if !self.manual.contains(stream) =>
                {
                    let (stream, n) = (*stream, data.len());
                    self.grant(stream, n);
                }
                _ => {}
            }
            return Some(msg);
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

    /// Frames up to and including the response to `id`.
    fn until_response(&mut self, id: u64) -> Vec<GuestMessage> {
        self.until(move |m| matches!(m, GuestMessage::Response { id: got, .. } if *got == id))
    }

    fn exec(&mut self, req: ExecRequest) -> (u64, u32) {
        let id = self.request(Request::Exec(req));
        match self.response(id) {
            Ok(Response::Exec { pid }) => (id, pid),
            other => panic!("exec failed: {other:?}"),
        }
    }

    fn ping(&mut self) {
        let nonce = self.next_id;
        let id = self.request(Request::Ping { nonce });
        let frames = self.until_response(id);
        assert_eq!(
            frames.last(),
            Some(&GuestMessage::Response {
                id,
                body: Ok(Response::Pong { nonce })
            })
        );
    }

    /// Assert that no frame at all arrives for a while.
    fn assert_quiet(&mut self, why: &str) {
        if let Some(m) = self.try_recv_raw(QUIET) {
            panic!("{why}: unexpected {m:?}");
        }
    }

    /// Assert that nothing arrives for `streams` for a while (other
    /// frames are ignored).
    fn assert_silent(&mut self, streams: &[u64]) {
        let deadline = Instant::now() + QUIET;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(m) = self.try_recv_raw(left) else {
                return;
            };
            if let Some(s) = stream_of(&m) {
                assert!(!streams.contains(&s), "a frame for an ended stream: {m:?}");
            }
        }
    }

    fn quiesce_and_restore(&mut self) -> AgentInfo {
        let q = self.request(Request::Quiesce { drop_caches: false });
        let frames = self.until_response(q);
        assert_eq!(
            frames.last(),
            Some(&GuestMessage::Response {
                id: q,
                body: Ok(Response::Quiesced)
            })
        );
        let r = self.request(Request::Restore(good_restore()));
        match self.response(r) {
            Ok(Response::Restored(info)) => info,
            other => panic!("restore failed: {other:?}"),
        }
    }

    fn attach(&mut self, name: &str) -> (u64, Option<u32>) {
        let id = self.request(Request::Attach { name: name.into() });
        let frames = self.until_response(id);
        match frames.last() {
            Some(GuestMessage::Response {
                body: Ok(Response::Attached { pid }),
                ..
            }) => (id, *pid),
            other => panic!("attach {name} failed: {other:?}"),
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

fn stream_of(m: &GuestMessage) -> Option<u64> {
    match m {
        GuestMessage::Response { id, .. } => Some(*id),
        GuestMessage::Output { stream, .. }
        | GuestMessage::Started { stream, .. }
        | GuestMessage::Exited { stream, .. }
        | GuestMessage::StreamData { stream, .. }
        | GuestMessage::StreamEof { stream }
        | GuestMessage::StreamClosed { stream, .. }
        | GuestMessage::StreamCredit { stream, .. } => Some(*stream),
        GuestMessage::Hello(_) => None,
    }
}

fn good_restore() -> RestoreRequest {
    RestoreRequest {
        unix_time_ns: 1_700_000_000_123_456_789,
        entropy: vec![0xaa; RESTORE_ENTROPY_BYTES],
        hostname: Some("vm-abc".into()),
        machine_id: Some("0123456789abcdef0123456789abcdef".into()),
    }
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_gone(pid: u32) {
    let deadline = Instant::now() + WAIT;
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "pid {pid} still exists");
        thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_file(path: &str) {
    let deadline = Instant::now() + WAIT;
    while !std::path::Path::new(path).exists() {
        assert!(Instant::now() < deadline, "{path} never appeared");
        thread::sleep(Duration::from_millis(10));
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

/// Signal the process of `stream` and receive up to its `Exited`. The
/// `Signal` answer and the exit it causes may come in either order; the
/// answer is checked and left out of the frames returned.
fn signal_until_exited(h: &mut Host, stream: u64, signal: i32) -> Vec<GuestMessage> {
    let sig = h.request(Request::Signal { stream, signal });
    let mut frames = h.until(is_exited(stream));
    let answered = GuestMessage::Response {
        id: sig,
        body: Ok(Response::Signal),
    };
    if !frames.contains(&answered) {
        assert_eq!(h.recv(), answered);
    }
    frames.retain(|f| *f != answered);
    frames
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
    // Every byte written on was credited back, before the Exited.
    assert_eq!(h.credited.get(&id), Some(&10));
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
    let frames = signal_until_exited(&mut h, id, libc::SIGTERM);
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
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0);
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
        mode: Some(0o640),
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
        mode: Some(0o600),
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
            reason: CloseReason::Done
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
    let good = good_restore();
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
    assert_eq!(
        h.response(r),
        Ok(Response::Restored(AgentInfo {
            proto_version: PROTO_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            capabilities: capabilities(),
            closed_streams: vec![],
        }))
    );
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
    assert_eq!(h.response(id).unwrap_err().kind, AgentErrorKind::Conflict);
    h.send(&HostMessage::StreamClose { stream: id });
}

// ----- protocol 2 -----

#[test]
fn reattach_answers_with_the_agent_info() {
    let mut h = Host::start();
    let id = h.request(Request::Reattach);
    assert_eq!(
        h.response(id),
        Ok(Response::Reattached(AgentInfo {
            proto_version: PROTO_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            capabilities: capabilities(),
            closed_streams: vec![],
        }))
    );
    h.ping();
}

#[test]
fn files_without_a_mode_are_created_0644() {
    use std::os::unix::fs::PermissionsExt;
    let mut h = Host::start();
    let path = tmp_path("default-mode.txt");
    let _ = std::fs::remove_file(&path);
    let id = h.request(Request::WriteFile(WriteFileRequest {
        path: path.clone(),
        data: b"x".to_vec(),
        ..Default::default()
    }));
    assert_eq!(h.response(id), Ok(Response::WriteFile { bytes_written: 1 }));
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
        0o644
    );
}

/// Output bytes of `stream` in `frames`.
fn output_len(frames: &[GuestMessage], stream: u64) -> usize {
    frames
        .iter()
        .map(|f| match f {
            GuestMessage::Output {
                stream: s, data, ..
            } if *s == stream => data.len(),
            _ => 0,
        })
        .sum()
}

/// Receive until `want` bytes of output of `stream` arrived; returns the
/// other frames.
fn take_output(h: &mut Host, stream: u64, want: usize) -> Vec<GuestMessage> {
    let mut got = 0;
    let mut others = Vec::new();
    while got < want {
        match h.recv() {
            GuestMessage::Output {
                stream: s, data, ..
            } if s == stream => got += data.len(),
            other => others.push(other),
        }
    }
    assert_eq!(got, want, "more output than asked for");
    others
}

#[test]
fn guest_output_stops_at_the_window_and_resumes_with_credit() {
    let mut h = Host::start();
    let id = h.peek_id();
    h.manual_credit(id);
    let total = 3 * WINDOW + 1000;
    let (_, _) = h.exec(sh(&format!("head -c {total} /dev/zero")));
    assert!(take_output(&mut h, id, WINDOW).is_empty());
    // The window is used up: nothing more of this stream, while other
    // streams and control requests go on.
    h.assert_quiet("output beyond the window");
    h.ping();
    let (other, _) = h.exec(sh("echo other"));
    let frames = h.until(is_exited(other));
    assert_eq!(output(&frames, other, OutputFd::Stdout), "other\n");
    h.assert_quiet("output beyond the window");
    // Some credit: exactly that much more.
    h.grant(id, 1000);
    assert!(take_output(&mut h, id, 1000).is_empty());
    h.assert_quiet("output beyond the granted credit");
    // The rest, then the exit: the host returns everything it consumed,
    // and keeps doing so.
    h.grant(id, WINDOW);
    h.manual.remove(&id);
    let frames = h.until(is_exited(id));
    assert_eq!(output_len(&frames, id), total - WINDOW - 1000);
    assert_eq!(exited_status(&frames).0.code, Some(0));
}

#[test]
fn credit_persists_across_restarts_of_a_supervised_process() {
    let mut h = Host::start();
    let id = h.peek_id();
    h.manual_credit(id);
    let per_run = 200_000;
    h.exec(ExecRequest {
        restart: RestartPolicy::OnFailure,
        ..sh(&format!("head -c {per_run} /dev/zero; exit 1"))
    });
    let others = take_output(&mut h, id, per_run);
    assert!(others.is_empty(), "{others:?}");
    assert!(matches!(
        h.recv(),
        GuestMessage::Exited {
            restarting: true,
            ..
        }
    ));
    assert!(matches!(h.recv(), GuestMessage::Started { stream, .. } if stream == id));
    // The second incarnation gets only what is left of the same window.
    take_output(&mut h, id, WINDOW - per_run);
    h.assert_quiet("a restart got a fresh window");
    h.grant(id, per_run);
    take_output(&mut h, id, 2 * per_run - WINDOW);
    h.send(&HostMessage::StreamClose { stream: id });
}

#[test]
fn stdin_that_is_never_read_stalls_only_its_own_stream() {
    let mut h = Host::start();
    let (stalled, pid) = h.exec(ExecRequest {
        stdin: true,
        ..sh("exec sleep 30")
    });
    // The host's whole window, in chunks: the pipe takes ~64 KiB, the agent
    // queues the rest, and the reader thread goes on.
    for _ in 0..4 {
        h.send(&HostMessage::StreamData {
            stream: stalled,
            data: vec![b'x'; WINDOW / 4],
        });
    }
    h.ping();
    let (other, _) = h.exec(ExecRequest {
        stdin: true,
        ..sh("cat")
    });
    h.send(&HostMessage::StreamData {
        stream: other,
        data: b"through\n".to_vec(),
    });
    h.send(&HostMessage::StreamEof { stream: other });
    let frames = h.until(is_exited(other));
    assert_eq!(output(&frames, other, OutputFd::Stdout), "through\n");
    // Only what the pipe took was credited.
    let credited = *h.credited.get(&stalled).unwrap_or(&0) as usize;
    assert!(credited < WINDOW, "credited {credited}");
    // Going over the window ends the stream (and its process), nothing else.
    h.send(&HostMessage::StreamData {
        stream: stalled,
        data: vec![b'y'; WINDOW - credited + 1],
    });
    match h.recv() {
        GuestMessage::StreamClosed {
            stream,
            reason: CloseReason::Error(reason),
        } => {
            assert_eq!(stream, stalled);
            assert!(reason.contains("window"), "{reason}");
        }
        other => panic!("expected StreamClosed, got {other:?}"),
    }
    wait_gone(pid);
    h.assert_silent(&[stalled]);
    h.ping();
}

#[test]
fn a_host_exceeding_the_window_ends_only_that_stream() {
    let mut h = Host::start();
    let (cat, _) = h.exec(ExecRequest {
        stdin: true,
        ..sh("cat")
    });
    h.send(&HostMessage::StreamData {
        stream: cat,
        data: vec![0; WINDOW + 1],
    });
    let frames = h.until(|m| matches!(m, GuestMessage::StreamClosed { .. }));
    assert!(matches!(
        frames.last(),
        Some(GuestMessage::StreamClosed { stream, reason: CloseReason::Error(_) }) if *stream == cat
    ));
    assert_eq!(output_len(&frames, cat), 0, "data over the window was used");

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let tcp = h.request(Request::TcpConnect { port });
    assert_eq!(h.response(tcp), Ok(Response::TcpConnect));
    let (mut conn, _) = listener.accept().unwrap();
    h.send(&HostMessage::StreamData {
        stream: tcp,
        data: vec![1; WINDOW + 1],
    });
    assert!(matches!(
        h.recv(),
        GuestMessage::StreamClosed { stream, reason: CloseReason::Error(_) } if stream == tcp
    ));
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(conn.read(&mut buf).unwrap(), 0, "socket not closed");
    h.assert_silent(&[cat, tcp]);
    h.ping();
}

#[test]
fn tcp_data_stops_at_the_window_and_resumes_with_credit() {
    let mut h = Host::start();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let id = h.peek_id();
    h.manual_credit(id);
    let tcp = h.request(Request::TcpConnect { port });
    assert_eq!(h.response(tcp), Ok(Response::TcpConnect));
    let (conn, _) = listener.accept().unwrap();
    let total = 2 * WINDOW + 10;
    let peer = thread::spawn(move || {
        let mut conn = conn;
        conn.write_all(&vec![7u8; total]).unwrap();
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).unwrap();
        rest
    });
    let mut got = 0;
    while got < WINDOW {
        match h.recv() {
            GuestMessage::StreamData { stream, data } if stream == id => got += data.len(),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, WINDOW);
    h.assert_quiet("socket data beyond the window");
    h.ping();
    h.grant(id, WINDOW);
    h.manual.remove(&id);
    let mut frames = Vec::new();
    while !frames.contains(&GuestMessage::StreamEof { stream: id }) {
        let m = h.recv();
        if let GuestMessage::StreamData { data, .. } = &m {
            got += data.len();
        }
        frames.push(m);
    }
    assert_eq!(got, total);
    h.send(&HostMessage::StreamData {
        stream: id,
        data: b"bye".to_vec(),
    });
    h.send(&HostMessage::StreamEof { stream: id });
    assert_eq!(
        h.recv(),
        GuestMessage::StreamClosed {
            stream: id,
            reason: CloseReason::Done
        }
    );
    assert_eq!(peer.join().unwrap(), b"bye");
    assert_eq!(h.credited.get(&id), Some(&3));
}

fn pty(cols: u16, rows: u16) -> Option<PtySize> {
    Some(PtySize { cols, rows })
}

#[test]
fn pty_exec_runs_on_a_terminal_that_resizes() {
    let mut h = Host::start();
    let (id, _) = h.exec(ExecRequest {
        pty: pty(80, 24),
        ..sh("stty size; read l; stty size; echo \"got:$l\"; [ -t 0 ] && [ -t 2 ] && exit 7")
    });
    let mut frames = Vec::new();
    while !output(&frames, id, OutputFd::Stdout).contains("24 80\r\n") {
        frames.push(h.recv());
    }
    let r = h.request(Request::Resize {
        stream: id,
        size: PtySize {
            cols: 100,
            rows: 30,
        },
    });
    assert_eq!(h.response(r), Ok(Response::Resized));
    h.send(&HostMessage::StreamData {
        stream: id,
        data: b"hello\n".to_vec(),
    });
    frames.extend(h.until(is_exited(id)));
    let out = output(&frames, id, OutputFd::Stdout);
    assert!(out.contains("hello\r\n"), "no echo: {out:?}");
    assert!(out.contains("30 100\r\n"), "no resize: {out:?}");
    assert!(out.contains("got:hello\r\n"), "{out:?}");
    assert_eq!(output(&frames, id, OutputFd::Stderr), "");
    assert_eq!(exited_status(&frames).0.code, Some(7));
}

#[test]
fn pty_eof_types_the_eof_character() {
    let mut h = Host::start();
    let (id, _) = h.exec(ExecRequest {
        pty: pty(80, 24),
        argv: argv(&["cat"]),
        ..Default::default()
    });
    h.send(&HostMessage::StreamData {
        stream: id,
        data: b"abc\n".to_vec(),
    });
    h.send(&HostMessage::StreamEof { stream: id });
    let frames = h.until(is_exited(id));
    assert_eq!(exited_status(&frames).0.code, Some(0));
    assert_eq!(output(&frames, id, OutputFd::Stdout), "abc\r\nabc\r\n");
    // Credited once written to the terminal (before the EOF that ended cat).
    assert_eq!(h.credited.get(&id), Some(&4));
}

#[test]
fn resize_needs_a_terminal() {
    let mut h = Host::start();
    let (id, _) = h.exec(sh("exec sleep 30"));
    let size = PtySize { cols: 10, rows: 10 };
    let r = h.request(Request::Resize { stream: id, size });
    assert_eq!(
        h.response(r).unwrap_err().kind,
        AgentErrorKind::InvalidRequest
    );
    let r = h.request(Request::Resize { stream: 999, size });
    assert_eq!(h.response(r).unwrap_err().kind, AgentErrorKind::NotFound);
    let (tty, _) = h.exec(ExecRequest {
        pty: pty(80, 24),
        ..sh("exec sleep 30")
    });
    let r = h.request(Request::Resize {
        stream: tty,
        size: PtySize { cols: 0, rows: 10 },
    });
    assert_eq!(
        h.response(r).unwrap_err().kind,
        AgentErrorKind::InvalidRequest
    );
    let r = h.request(Request::Exec(ExecRequest {
        pty: pty(0, 0),
        ..sh("true")
    }));
    assert_eq!(
        h.response(r).unwrap_err().kind,
        AgentErrorKind::InvalidRequest
    );
    h.send(&HostMessage::StreamClose { stream: id });
    h.send(&HostMessage::StreamClose { stream: tty });
}

/// A TCP stream with its accepted guest-side connection.
fn tcp_stream(h: &mut Host) -> (u64, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let id = h.request(Request::TcpConnect { port });
    assert_eq!(h.response(id), Ok(Response::TcpConnect));
    let (conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    (id, conn)
}

/// Streams of every kind: (exec with stdin, pty, tcp, exec without stdin).
struct Streams {
    stdin: (u64, u32),
    pty: (u64, u32),
    tcp: (u64, TcpStream),
    idle: (u64, u32),
}

fn open_streams(h: &mut Host) -> Streams {
    let stdin = h.exec(ExecRequest {
        stdin: true,
        ..sh("cat; echo after-eof")
    });
    let pty = h.exec(ExecRequest {
        pty: pty(80, 24),
        argv: argv(&["cat"]),
        ..Default::default()
    });
    let tcp = tcp_stream(h);
    let idle = h.exec(sh("exec sleep 30"));
    Streams {
        stdin,
        pty,
        tcp,
        idle,
    }
}

/// After a restore or reattach: sockets closed, stdin at EOF, terminals
/// hung up, the idle process still running, nothing more on any stream.
fn assert_streams_ended(h: &mut Host, s: Streams, closed: &[ClosedStream]) {
    let mut expected = vec![
        ClosedStream {
            stream: s.stdin.0,
            kind: StreamKind::Exec,
        },
        ClosedStream {
            stream: s.pty.0,
            kind: StreamKind::Pty,
        },
        ClosedStream {
            stream: s.tcp.0,
            kind: StreamKind::Tcp,
        },
        ClosedStream {
            stream: s.idle.0,
            kind: StreamKind::Exec,
        },
    ];
    expected.sort_by_key(|c| c.stream);
    assert_eq!(closed, expected);
    let mut conn = s.tcp.1;
    let mut buf = [0u8; 8];
    assert_eq!(conn.read(&mut buf).unwrap(), 0, "guest socket not closed");
    wait_gone(s.stdin.1);
    wait_gone(s.pty.1);
    assert!(
        alive(s.idle.1),
        "an unnamed process without stdin was stopped"
    );
    h.assert_silent(&[s.stdin.0, s.pty.0, s.tcp.0, s.idle.0]);
    h.ping();
    // The old ids are gone.
    let r = h.request(Request::Signal {
        stream: s.idle.0,
        signal: libc::SIGTERM,
    });
    assert_eq!(h.response(r).unwrap_err().kind, AgentErrorKind::NotFound);
}

#[test]
fn restore_ends_every_stream_of_the_snapshot() {
    let mut h = Host::start();
    let s = open_streams(&mut h);
    let info = h.quiesce_and_restore();
    assert_eq!(info.proto_version, PROTO_VERSION);
    assert_eq!(info.capabilities, capabilities());
    assert_streams_ended(&mut h, s, &info.closed_streams);
}

#[test]
fn reattach_ends_every_stream_of_the_old_connection() {
    let mut h = Host::start();
    let s = open_streams(&mut h);
    let r = h.request(Request::Reattach);
    let frames = h.until_response(r);
    let info = match frames.last() {
        Some(GuestMessage::Response {
            body: Ok(Response::Reattached(info)),
            ..
        }) => info.clone(),
        other => panic!("reattach failed: {other:?}"),
    };
    assert_streams_ended(&mut h, s, &info.closed_streams);
}

#[test]
fn a_named_process_survives_restore_and_is_attached_again() {
    let mut h = Host::start();
    let (go, done, go2) = (
        tmp_path("named-go"),
        tmp_path("named-done"),
        tmp_path("named-go2"),
    );
    for f in [&go, &done, &go2] {
        let _ = std::fs::remove_file(f);
    }
    let script = format!(
        "echo before; while [ ! -e {go} ]; do sleep 0.01; done; echo during; touch {done}; \
         while [ ! -e {go2} ]; do sleep 0.01; done; echo after; exec sleep 30"
    );
    let (id, pid) = h.exec(ExecRequest {
        name: Some("app".into()),
        restart: RestartPolicy::Always,
        ..sh(&script)
    });
    let frames = h.until(|m| matches!(m, GuestMessage::Output { .. }));
    assert_eq!(output(&frames, id, OutputFd::Stdout), "before\n");
    let info = h.quiesce_and_restore();
    assert_eq!(
        info.closed_streams,
        [ClosedStream {
            stream: id,
            kind: StreamKind::Exec
        }]
    );
    assert!(alive(pid));
    // Written while detached.
    std::fs::write(&go, "").unwrap();
    wait_for_file(&done);
    let (attach, attached_pid) = h.attach("app");
    assert_eq!(attached_pid, Some(pid));
    let mut frames = Vec::new();
    while !output(&frames, attach, OutputFd::Stdout).contains("during\n") {
        frames.push(h.recv());
    }
    std::fs::write(&go2, "").unwrap();
    while !output(&frames, attach, OutputFd::Stdout).contains("after\n") {
        frames.push(h.recv());
    }
    assert_eq!(output(&frames, attach, OutputFd::Stdout), "during\nafter\n");
    assert!(
        frames.iter().all(|f| stream_of(f) == Some(attach)),
        "{frames:?}"
    );
    // Closing the attach stream only detaches.
    h.send(&HostMessage::StreamClose { stream: attach });
    h.ping();
    assert!(alive(pid));
    h.assert_silent(&[id, attach]);
    // So does a restore that ends an attach stream.
    let (again, attached_pid) = h.attach("app");
    assert_eq!(attached_pid, Some(pid));
    let info = h.quiesce_and_restore();
    assert_eq!(
        info.closed_streams,
        [ClosedStream {
            stream: again,
            kind: StreamKind::Attach
        }]
    );
    assert!(alive(pid));
    let (_, attached_pid) = h.attach("app");
    assert_eq!(attached_pid, Some(pid));
}

#[test]
fn detached_output_is_bounded_and_an_ended_process_reports_its_exit() {
    let mut h = Host::start();
    let go = tmp_path("bounded-go");
    let _ = std::fs::remove_file(&go);
    let script = format!(
        "while [ ! -e {go} ]; do sleep 0.01; done; \
         head -c 1000000 /dev/zero | tr '\\0' a; echo END; exit 4"
    );
    let (id, _) = h.exec(ExecRequest {
        name: Some("big".into()),
        ..sh(&script)
    });
    let r = h.request(Request::Reattach);
    let frames = h.until_response(r);
    assert!(matches!(
        frames.last(),
        Some(GuestMessage::Response { body: Ok(Response::Reattached(info)), .. })
            if info.closed_streams == [ClosedStream { stream: id, kind: StreamKind::Exec }]
    ));
    std::fs::write(&go, "").unwrap();
    // Wait until it ended for good: the name is then free (an Exec with
    // the name and no argv fails on the argv, not on the name).
    let deadline = Instant::now() + WAIT;
    loop {
        let probe = h.request(Request::Exec(ExecRequest {
            name: Some("big".into()),
            ..Default::default()
        }));
        match h.response(probe).unwrap_err().kind {
            AgentErrorKind::Conflict => {
                assert!(Instant::now() < deadline, "the process never ended");
                thread::sleep(Duration::from_millis(20));
            }
            AgentErrorKind::InvalidRequest => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let (attach, pid) = h.attach("big");
    assert_eq!(pid, None);
    let frames = h.until(is_exited(attach));
    let out = output(&frames, attach, OutputFd::Stdout);
    assert_eq!(out.len(), DETACHED_OUTPUT_BYTES);
    assert!(out.ends_with("aaaaEND\n"));
    assert_eq!(
        exited_status(&frames),
        (
            ExitStatus {
                code: Some(4),
                signal: None
            },
            false
        )
    );
    h.assert_silent(&[attach, id]);
    // Attached again: the kept output was delivered; only the exit is left.
    let (again, pid) = h.attach("big");
    assert_eq!(pid, None);
    let frames = h.until(is_exited(again));
    assert_eq!(frames.len(), 1, "{frames:?}");
}

#[test]
fn attach_replaces_the_previous_route_and_signals_the_process() {
    let mut h = Host::start();
    let (id, pid) = h.exec(ExecRequest {
        name: Some("ticker".into()),
        ..sh("i=0; while :; do echo tick$i; i=$((i+1)); sleep 0.05; done")
    });
    h.until(|m| matches!(m, GuestMessage::Output { .. }));
    // Attaching while the Exec stream is open replaces it.
    let (a, attached) = h.attach("ticker");
    assert_eq!(attached, Some(pid));
    let replaced = |stream| GuestMessage::StreamClosed {
        stream,
        reason: CloseReason::Replaced,
    };
    let frames = h.until(|m| matches!(m, GuestMessage::Output { stream, .. } if *stream == a));
    assert!(frames.iter().all(|f| stream_of(f) == Some(a)), "{frames:?}");
    let b = h.request(Request::Attach {
        name: "ticker".into(),
    });
    let frames = h.until_response(b);
    let closed_at = frames
        .iter()
        .position(|f| *f == replaced(a))
        .expect("the first attach was not replaced");
    assert!(frames[closed_at + 1..]
        .iter()
        .all(|f| stream_of(f) != Some(a)));
    assert_eq!(
        frames.last(),
        Some(&GuestMessage::Response {
            id: b,
            body: Ok(Response::Attached { pid: Some(pid) })
        })
    );
    let frames = h.until(|m| matches!(m, GuestMessage::Output { stream, .. } if *stream == b));
    assert!(frames.iter().all(|f| stream_of(f) == Some(b)), "{frames:?}");
    // The exec stream was replaced before the first attach answered.
    h.assert_silent(&[id, a]);
    let frames = signal_until_exited(&mut h, b, libc::SIGTERM);
    assert_eq!(
        exited_status(&frames),
        (
            ExitStatus {
                code: None,
                signal: Some(libc::SIGTERM)
            },
            false
        )
    );
    wait_gone(pid);
}

#[test]
fn the_exec_stream_is_replaced_by_an_attach() {
    let mut h = Host::start();
    let (id, pid) = h.exec(ExecRequest {
        name: Some("quiet".into()),
        ..sh("exec sleep 30")
    });
    let a = h.request(Request::Attach {
        name: "quiet".into(),
    });
    assert_eq!(
        h.recv(),
        GuestMessage::StreamClosed {
            stream: id,
            reason: CloseReason::Replaced
        }
    );
    assert_eq!(h.response(a), Ok(Response::Attached { pid: Some(pid) }));
    // The exec stream is gone: a close of it is ignored, the process lives.
    h.send(&HostMessage::StreamClose { stream: id });
    h.ping();
    assert!(alive(pid));
    h.send(&HostMessage::StreamClose { stream: a });
    h.ping();
    assert!(alive(pid));
}

#[test]
fn attach_errors() {
    let mut h = Host::start();
    let id = h.request(Request::Attach {
        name: "nobody".into(),
    });
    assert_eq!(h.response(id).unwrap_err().kind, AgentErrorKind::NotFound);
    let id = h.request(Request::Attach {
        name: "bad/name".into(),
    });
    assert_eq!(
        h.response(id).unwrap_err().kind,
        AgentErrorKind::InvalidRequest
    );
    // An unnamed process cannot be attached.
    let (exec, _) = h.exec(sh("exec sleep 30"));
    let id = h.request(Request::Attach {
        name: exec.to_string(),
    });
    assert_eq!(h.response(id).unwrap_err().kind, AgentErrorKind::NotFound);
    h.send(&HostMessage::StreamClose { stream: exec });
}

#[test]
fn attach_to_an_ended_process_gets_its_exit() {
    let mut h = Host::start();
    let (id, _) = h.exec(ExecRequest {
        name: Some("once".into()),
        ..sh("echo hi; exit 3")
    });
    let frames = h.until(is_exited(id));
    assert_eq!(output(&frames, id, OutputFd::Stdout), "hi\n");
    let (a, pid) = h.attach("once");
    assert_eq!(pid, None);
    assert_eq!(
        h.recv(),
        GuestMessage::Exited {
            stream: a,
            status: ExitStatus {
                code: Some(3),
                signal: None
            },
            restarting: false
        }
    );
    h.assert_quiet("frames after the final Exited");
}

#[test]
fn process_names_are_unique_until_the_process_ended() {
    let mut h = Host::start();
    let (first, pid) = h.exec(ExecRequest {
        name: Some("dup".into()),
        ..sh("exec sleep 30")
    });
    let id = h.request(Request::Exec(ExecRequest {
        name: Some("dup".into()),
        ..sh("true")
    }));
    assert_eq!(h.response(id).unwrap_err().kind, AgentErrorKind::Conflict);
    for bad in ["", "a/b", "x y", &"n".repeat(65)] {
        let id = h.request(Request::Exec(ExecRequest {
            name: Some(bad.to_string()),
            ..sh("true")
        }));
        assert_eq!(
            h.response(id).unwrap_err().kind,
            AgentErrorKind::InvalidRequest,
            "{bad:?}"
        );
    }
    // A host close kills it; once it ended for good the name is free.
    h.send(&HostMessage::StreamClose { stream: first });
    wait_gone(pid);
    let deadline = Instant::now() + WAIT;
    let second = loop {
        let id = h.request(Request::Exec(ExecRequest {
            name: Some("dup".into()),
            ..sh("echo second")
        }));
        match h.response(id) {
            Ok(Response::Exec { .. }) => break id,
            Err(e) if e.kind == AgentErrorKind::Conflict && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20))
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    let frames = h.until(is_exited(second));
    assert_eq!(output(&frames, second, OutputFd::Stdout), "second\n");
    // Ended for good: the name can be reused right after its Exited.
    let (third, _) = h.exec(ExecRequest {
        name: Some("dup".into()),
        ..sh("true")
    });
    h.until(is_exited(third));
}

#[test]
fn a_named_terminal_survives_restore_and_takes_input_through_attach() {
    let mut h = Host::start();
    let (id, pid) = h.exec(ExecRequest {
        name: Some("shell".into()),
        pty: pty(80, 24),
        ..sh("while read l; do echo \"got:$l\"; stty size; done")
    });
    let info = h.quiesce_and_restore();
    assert_eq!(
        info.closed_streams,
        [ClosedStream {
            stream: id,
            kind: StreamKind::Pty
        }]
    );
    assert!(alive(pid), "a named terminal was hung up");
    let (a, attached) = h.attach("shell");
    assert_eq!(attached, Some(pid));
    let r = h.request(Request::Resize {
        stream: a,
        size: PtySize {
            cols: 120,
            rows: 40,
        },
    });
    assert_eq!(h.response(r), Ok(Response::Resized));
    h.send(&HostMessage::StreamData {
        stream: a,
        data: b"hello\n".to_vec(),
    });
    let mut frames = Vec::new();
    while !output(&frames, a, OutputFd::Stdout).contains("40 120\r\n") {
        frames.push(h.recv());
    }
    assert!(output(&frames, a, OutputFd::Stdout).contains("got:hello\r\n"));
    assert!(frames.iter().all(|f| stream_of(f) == Some(a)), "{frames:?}");
    // EOF through the attach stream ends the shell's loop.
    h.send(&HostMessage::StreamEof { stream: a });
    let frames = h.until(is_exited(a));
    assert_eq!(exited_status(&frames).0.code, Some(0));
}

#[test]
fn power_off_answers_stops_supervision_and_calls_the_system() {
    let mut h = Host::start();
    let (id, _) = h.exec(ExecRequest {
        restart: RestartPolicy::Always,
        ..sh("exec sleep 30")
    });
    let p = h.request(Request::PowerOff);
    assert_eq!(h.response(p), Ok(Response::PoweringOff));
    h.ping();
    assert_eq!(*h.system.calls.lock().unwrap(), ["power-off"]);
    // No restart any more: the fake did not kill it, a signal does.
    let frames = signal_until_exited(&mut h, id, libc::SIGTERM);
    assert!(!exited_status(&frames).1, "restarting after power-off");
    h.assert_silent(&[id]);
}

#[test]
fn power_off_is_unsupported_outside_pid_1() {
    let mut h = Host::start_with(FakeSystem {
        not_pid1: true,
        ..Default::default()
    });
    let p = h.request(Request::PowerOff);
    assert_eq!(h.response(p).unwrap_err().kind, AgentErrorKind::Unsupported);
    assert!(h.system.calls.lock().unwrap().is_empty());
}

#[test]
fn reattach_drops_what_was_held_for_the_old_connection() {
    let mut h = Host::start();
    let q = h.request(Request::Quiesce { drop_caches: false });
    assert_eq!(h.response(q), Ok(Response::Quiesced));
    // The old host asks more after quiescing; the answers are held.
    let ping = h.request(Request::Ping { nonce: 7 });
    let exec = h.request(Request::Exec(sh("echo held")));
    let r = h.request(Request::Reattach);
    match h.try_recv_raw(WAIT) {
        Some(GuestMessage::Response {
            id,
            body: Ok(Response::Reattached(info)),
        }) => {
            assert_eq!(id, r);
            // The exec stream is listed if it had not ended by itself.
            assert!(info.closed_streams.iter().all(|c| c.stream == exec));
        }
        other => panic!("something of the old connection came first: {other:?}"),
    }
    h.assert_silent(&[ping, exec]);
    h.ping();
}

#[test]
fn an_attach_pipelined_behind_its_exec_never_loses_the_exec_answer() {
    let mut h = Host::start();
    for round in 0..20 {
        let name = format!("piped-{round}");
        let exec = h.peek_id();
        let attach = exec + 1;
        h.next_id += 2;
        let mut bytes = encode_frame(&HostMessage::Request {
            id: exec,
            body: Request::Exec(ExecRequest {
                name: Some(name.clone()),
                ..sh("exec sleep 30")
            }),
        })
        .unwrap();
        bytes.extend(
            encode_frame(&HostMessage::Request {
                id: attach,
                body: Request::Attach { name },
            })
            .unwrap(),
        );
        h.sock.write_all(&bytes).unwrap();
        let mut frames = Vec::new();
        let answered = |frames: &[GuestMessage], id| {
            frames
                .iter()
                .position(|f| matches!(f, GuestMessage::Response { id: got, .. } if *got == id))
        };
        while answered(&frames, exec).is_none() || answered(&frames, attach).is_none() {
            frames.push(h.recv());
        }
        let exec_at = answered(&frames, exec).unwrap();
        let pid = match &frames[exec_at] {
            GuestMessage::Response {
                body: Ok(Response::Exec { pid }),
                ..
            } => *pid,
            other => panic!("exec failed: {other:?}"),
        };
        match &frames[answered(&frames, attach).unwrap()] {
            GuestMessage::Response {
                body: Ok(Response::Attached { pid: got }),
                ..
            } => {
                assert_eq!(*got, Some(pid));
                // The exec stream was answered, then replaced.
                let replaced = GuestMessage::StreamClosed {
                    stream: exec,
                    reason: CloseReason::Replaced,
                };
                let closed_at = frames.iter().position(|f| *f == replaced);
                assert!(closed_at.is_some_and(|at| at > exec_at), "{frames:?}");
                h.send(&HostMessage::StreamClose { stream: attach });
            }
            GuestMessage::Response { body: Err(e), .. } => {
                assert_eq!(e.kind, AgentErrorKind::NotFound, "{e:?}");
                h.send(&HostMessage::StreamClose { stream: exec });
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    h.ping();
}

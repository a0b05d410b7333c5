//! Network connectors end to end, black-box: a real `hearth serve`, images
//! built from the test apps, boto3 for the API (clients/connectors.py), a
//! Rust WebSocket shell client through the endpoint proxy
//! (support_e2e/shell.rs), and guests probed from inside through their
//! shells. Egress targets only addresses of this machine and of network
//! namespaces these tests create (and the host's resolvers and Debian
//! mirror).
//!
//! Every test boots microVMs: all are named `e2e_*` (one at a time, see
//! .config/nextest.toml) and hold the shared e2e lock for their whole run.

mod support_e2e;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hearth_net::testing::{primary_address, serve_greeting, Peer};
use hearth_token::{Claims, TokenKind};
use serde_json::Value;
use support_e2e::shell::{open, refused_status, shell_protocols, ShellClient};
use support_e2e::*;

const MINUTE: Duration = Duration::from_secs(60);

fn scenario(w: &Work, s: &Serve, name: &str, args: &[(&str, &str)]) -> Value {
    client_scenario(w, s, "connectors.py", name, args)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Shells through the proxy, from Rust: two at once on one microVM, each
/// as the image's USER in its WORKDIR with its ENV; a resize seen by
/// `stty size`; `exit 7` ends with an exit frame of 7 and close 1000 "shell
/// exited". A shell token (signed by the server) for a NO_INGRESS microVM
/// is refused. `hearth shell` under a pseudo-terminal sees the terminal's
/// size and its change, exits with the shell's code and restores the
/// terminal. A shell open at suspend is closed (1001) with the reason,
/// and the next shell resumes the microVM (auto-resume) with its memory
/// intact. Typing counts as activity: a shell typed into for longer than
/// the idle limit keeps the microVM RUNNING; once typing stops the
/// microVM suspends and the shell is closed saying so. (What the API and
/// the proxy refuse by connector and token kind is checked by the
/// `ingress` scenario first.)
#[test]
fn e2e_shells_run_as_the_image_user_resize_exit_and_follow_suspend_resume_and_idle() {
    let _lock = e2e_lock();
    let w = Work::new();
    let _cleanup = Cleanup(&w);
    let s = Serve::start(&w);
    let r = scenario(&w, &s, "ingress", &[("name", "shell-user"), ("idle", "60")]);
    let (id, endpoint, token) = (
        str_of(&r, "shell").to_string(),
        str_of(&r, "shellEndpoint").to_string(),
        str_of(&r, "shellToken").to_string(),
    );
    let rt = runtime();
    let (proxy, ca) = (s.proxy_addr.clone(), s.proxy_ca.clone());
    let connect = || ShellClient::connect(&proxy, &ca, &endpoint, &token);

    let a = rt.block_on(async {
        let mut a = connect().await;
        let mut b = connect().await;
        assert_ne!(a.session_id, b.session_id);
        a.send("echo \"who=$(id -un) dir=$(pwd) g=$GREETING\"\n")
            .await;
        a.expect("who=appuser dir=/srv/app g=hello from the image", MINUTE)
            .await;
        a.resize(123, 45).await;
        a.send("echo \"size=$(stty size)\"\n").await;
        a.expect("size=45 123", MINUTE).await;
        b.send("echo \"b-$((6 * 7))\"\n").await;
        b.expect("b-42", MINUTE).await;
        b.send("exit 7\n").await;
        let end = b.end(MINUTE).await;
        assert_eq!(
            end.exit.as_ref().map(|v| v["exit_code"].clone()),
            Some(7.into()),
            "{end:?}"
        );
        assert_eq!(end.close, Some((1000, "shell exited".into())));
        // Memory the resume must bring back.
        a.send("echo kept-$((40 + 2)) > /tmp/marker\n").await;
        a.send("cat /tmp/marker\n").await;
        a.expect("kept-42", MINUTE).await;
        a
    });

    // A shell token for a NO_INGRESS microVM: the API never mints one
    // (checked by the scenario); one signed with the server's key is
    // refused by the proxy all the same.
    let forged = mint(
        &w,
        &Claims {
            account_id: str_of(&r, "account").into(),
            microvm_id: str_of(&r, "none").into(),
            kind: TokenKind::Shell,
            ports: vec![],
            expires_at_secs: now_secs() + 600,
        },
    );
    let refused = rt.block_on(open(
        &proxy,
        &ca,
        str_of(&r, "noneEndpoint"),
        &shell_protocols(&forged),
    ));
    assert_eq!(refused.as_ref().err().and_then(refused_status), Some(403));

    // `hearth shell` under a pseudo-terminal, as a user types into it.
    cli_shell_under_a_pty(&w, &s, str_of(&r, "both"));

    // Suspend with the shell open: closed with the reason.
    let v = scenario(&w, &s, "suspend", &[("id", &id)]);
    assert_eq!(str_of(&v, "state"), "SUSPENDED");
    let end = rt.block_on(a.end(MINUTE));
    let (code, reason) = end.close.clone().expect("a close frame");
    assert_eq!(code, 1001, "{end:?}");
    assert!(reason.contains("suspended"), "{reason}");

    // The next shell resumes it; its memory came back.
    let mut c = rt.block_on(async {
        let mut c = connect().await;
        c.send("cat /tmp/marker\n").await;
        c.expect("kept-42", MINUTE).await;
        c
    });
    assert_eq!(
        str_of(&scenario(&w, &s, "state", &[("id", &id)]), "state"),
        "RUNNING"
    );

    // Typing for longer than the idle limit (60 s) keeps it running.
    let typed_from = Instant::now();
    rt.block_on(async {
        let mut n = 0;
        while typed_from.elapsed() < Duration::from_secs(80) {
            n += 1;
            c.send(&format!("echo \"tick-$(({n} + 1000))\"\n")).await;
            c.expect(&format!("tick-{}", n + 1000), MINUTE).await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    });
    assert_eq!(
        str_of(&scenario(&w, &s, "state", &[("id", &id)]), "state"),
        "RUNNING",
        "a shell in use for 80 s kept the microVM running"
    );
    // Then idle: suspended, and the shell is told.
    let end = rt.block_on(c.end(Duration::from_secs(150)));
    let (code, reason) = end.close.clone().expect("a close frame");
    assert_eq!(code, 1001, "{end:?}");
    assert!(reason.contains("suspended"), "{reason}");
    assert_eq!(
        str_of(&scenario(&w, &s, "state", &[("id", &id)]), "state"),
        "SUSPENDED"
    );
}

/// A pseudo-terminal pair; the child side becomes `hearth shell`'s
/// controlling terminal.
struct Pty {
    master: std::fs::File,
    slave: std::fs::File,
}

fn open_pty(cols: u16, rows: u16) -> Pty {
    use std::os::fd::FromRawFd;
    let (mut m, mut sl) = (0, 0);
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two new fds into m and sl; the name and
    // termios pointers may be null, the winsize is read.
    let rc = unsafe { libc::openpty(&mut m, &mut sl, std::ptr::null_mut(), std::ptr::null(), &ws) };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just opened and are owned by nothing else.
    unsafe {
        Pty {
            master: std::fs::File::from_raw_fd(m),
            slave: std::fs::File::from_raw_fd(sl),
        }
    }
}

fn set_size(pty: &Pty, cols: u16, rows: u16) {
    use std::os::fd::AsRawFd;
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize; the kernel signals SIGWINCH to
    // the terminal's foreground process group.
    let rc = unsafe { libc::ioctl(pty.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    assert_eq!(rc, 0);
}

fn local_flags(pty: &Pty) -> libc::tcflag_t {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed termios is a valid out-parameter for tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr fills `t` for an open terminal fd.
    let rc = unsafe { libc::tcgetattr(pty.slave.as_raw_fd(), &mut t) };
    assert_eq!(rc, 0);
    t.c_lflag
}

/// Run `hearth shell ID` on a pseudo-terminal of 100x30: it sees the
/// size (`stty size`), follows a resize to 140x50 (SIGWINCH), runs
/// commands, exits with the shell's code (3), and leaves the terminal as
/// it found it (canonical mode and echo back on).
fn cli_shell_under_a_pty(w: &Work, s: &Serve, id: &str) {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    let pty = open_pty(100, 30);
    let before = local_flags(&pty);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"));
    cmd.arg("--data-dir")
        .arg(w.data())
        .args(["shell", "--endpoint-url", &s.api, id])
        .stdin(pty.slave.try_clone().unwrap())
        .stdout(pty.slave.try_clone().unwrap())
        .stderr(pty.slave.try_clone().unwrap());
    // SAFETY: between fork and exec only async-signal-safe calls: a new
    // session, and the terminal on stdin as its controlling terminal.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("start hearth shell");
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let mut reader = pty.master.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let mut wait_for = |needle: &str| {
        let deadline = Instant::now() + MINUTE;
        while !seen.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(b) => seen.push_str(&String::from_utf8_lossy(&b)),
                Err(_) => panic!("hearth shell never showed {needle:?}; it showed {seen:?}"),
            }
        }
        seen.clear();
    };
    let mut master = pty.master.try_clone().unwrap();
    let mut type_in = |keys: &str| master.write_all(keys.as_bytes()).unwrap();
    wait_for("appuser@");
    type_in("echo \"size=$(stty size)\"\n");
    wait_for("size=30 100");
    set_size(&pty, 140, 50);
    std::thread::sleep(Duration::from_millis(500));
    type_in("echo \"size=$(stty size) user=$(id -un)\"\n");
    wait_for("size=50 140 user=appuser");
    type_in("exit 3\n");
    let deadline = Instant::now() + MINUTE;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "hearth shell did not end after exit"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        status.code(),
        Some(3),
        "hearth shell exits with the shell's code"
    );
    let after = local_flags(&pty);
    assert_eq!(
        after & (libc::ICANON | libc::ECHO),
        before & (libc::ICANON | libc::ECHO),
        "the terminal is restored"
    );
}

/// What the probe prints: the outcome of connecting to each target and
/// reading a 5-byte greeting, and of resolving a name.
const PROBE: &str = r#"
import json, socket, sys
req = json.loads(sys.argv[1])
out = {}
def attempt(h, p):
    try:
        s = socket.create_connection((h, p), timeout=3)
        s.settimeout(3)
        d = s.recv(5)
        s.close()
        return "ok:" + d.decode()
    except Exception as e:
        return "error:" + type(e).__name__
try:
    out["resolve"] = "ok:" + socket.gethostbyname(req["name"])
except Exception as e:
    out["resolve"] = "error:" + type(e).__name__
for k, (h, p) in req["targets"].items():
    out[k] = attempt(h, p)
print("PROBE-RESULT " + json.dumps(out, sort_keys=True))
"#;

/// Run the probe in the shell (as a file, so the typed command line stays
/// short); its result.
async fn probe(sh: &mut ShellClient, request: &Value) -> Value {
    let request = request.to_string();
    assert!(
        !request.contains('\''),
        "the request goes in single quotes: {request}"
    );
    sh.send(&format!(
        "cat > /tmp/probe.py <<'PROBE_EOF'{PROBE}PROBE_EOF\n"
    ))
    .await;
    sh.send(&format!(
        "python3 /tmp/probe.py '{request}'; echo \"probe-$((1 + 1))-done\"\n"
    ))
    .await;
    let out = sh.expect("probe-2-done", Duration::from_secs(120)).await;
    // The result line (the typed script has the marker too, followed by a
    // quote rather than a brace).
    let json = out
        .lines()
        .rev()
        .find_map(|l| l.split_once("PROBE-RESULT {").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no probe result in {out:?}"));
    serde_json::from_str(&format!("{{{}", json.trim())).unwrap()
}

/// INTERNET_EGRESS end to end. Two microVMs with egress run at once (two
/// clones of one snapshot): each resolves a name and reaches a public
/// address (a namespace this test creates), and neither reaches the host's
/// loopback services through the slirp gateway, the Hearth API or proxy on
/// the host's own address, a private or a link-local address (namespaces
/// this test creates), or another microVM's listener. One installs a
/// package from the Debian mirror with apt-get. The microVM without egress
/// has no network interface, resolves nothing and reaches nothing. After
/// a suspend and resume, egress still works.
#[test]
fn e2e_internet_egress_reaches_the_internet_but_not_the_host_private_networks_or_other_microvms() {
    let _lock = e2e_lock();
    let w = Work::new();
    let _cleanup = Cleanup(&w);
    let netns = "hearth-test-conn-eg";
    let _ = hearth_net::teardown(netns);
    let _guard = hearth_net::testing::EgressGuard(netns.into());
    let s = Serve::start_with(
        &w,
        &Egress::Namespace {
            netns,
            link_net: "10.213.0.204",
        },
    );
    let public = Peer::create(
        "hearth-test-conn-pub",
        "hxc-pub",
        Ipv4Addr::new(198, 51, 100, 12),
    );
    let private = Peer::create(
        "hearth-test-conn-prv",
        "hxc-prv",
        Ipv4Addr::new(10, 254, 7, 0),
    );
    let link_local = Peer::create(
        "hearth-test-conn-ll",
        "hxc-ll",
        Ipv4Addr::new(169, 254, 77, 0),
    );
    let public_srv = serve_greeting(Some(&public.path()), public.addr, 0);
    let private_srv = serve_greeting(Some(&private.path()), private.addr, 0);
    let link_local_srv = serve_greeting(Some(&link_local.path()), link_local.addr, 0);
    let loopback_srv = serve_greeting(None, Ipv4Addr::LOCALHOST, 0);
    let primary = primary_address();
    let api_port: u16 = s.api_addr().rsplit_once(':').unwrap().1.parse().unwrap();
    let proxy_port: u16 = s.proxy_addr.rsplit_once(':').unwrap().1.parse().unwrap();

    let r = scenario(&w, &s, "egress-setup", &[("name", "probe")]);
    let vms = r["egress"].as_array().unwrap().clone();
    let plain = r["plain"].clone();
    let rt = runtime();
    let (proxy, ca) = (s.proxy_addr.clone(), s.proxy_ca.clone());
    let shell_of = |v: &Value| {
        let (e, t) = (
            v["endpoint"].as_str().unwrap().to_string(),
            v["token"].as_str().unwrap().to_string(),
        );
        let (proxy, ca) = (proxy.clone(), ca.clone());
        async move { ShellClient::connect(&proxy, &ca, &e, &t).await }
    };
    let t = |a: SocketAddr| serde_json::json!([a.ip().to_string(), a.port()]);
    let on = |ip: Ipv4Addr, port: u16| serde_json::json!([ip.to_string(), port]);
    let request = serde_json::json!({
        "name": "deb.debian.org",
        "targets": {
            "public": t(public_srv),
            "host loopback via the slirp gateway": on(Ipv4Addr::new(10, 0, 2, 2), loopback_srv.port()),
            "Hearth API via the slirp gateway": on(Ipv4Addr::new(10, 0, 2, 2), api_port),
            "Hearth API on the host address": on(primary, api_port),
            "Hearth proxy on the host address": on(primary, proxy_port),
            "private": t(private_srv),
            "link-local": t(link_local_srv),
            "the other microVM listener": on(Ipv4Addr::new(10, 0, 2, 15), 7000),
        },
    });

    let (mut a, mut b) = rt.block_on(async {
        let a = shell_of(&vms[0]).await;
        let mut b = shell_of(&vms[1]).await;
        // b listens (greets) on 7000; a must not reach it.
        b.send("python3 -c \"import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',7000));s.listen();[c.sendall(b'hello') for c,_ in iter(s.accept, None)]\" &\n").await;
        b.send("sleep 1; echo \"listening-$((1 + 1))\"\n").await;
        b.expect("listening-2", MINUTE).await;
        (a, b)
    });
    for (name, sh) in [("first", &mut a), ("second", &mut b)] {
        let out = rt.block_on(probe(sh, &request));
        eprintln!("{name} microVM with egress: {out:#}");
        assert!(out["resolve"].as_str().unwrap().starts_with("ok:"), "{out}");
        assert_eq!(out["public"], "ok:hello", "{out}");
        for k in request["targets"].as_object().unwrap().keys() {
            if k != "public" && !(name == "second" && k == "the other microVM listener") {
                assert!(
                    out[k].as_str().unwrap().starts_with("error:"),
                    "{name} microVM reached {k}: {out}"
                );
            }
        }
    }
    // apt-get through the egress network.
    rt.block_on(async {
        a.send("(apt-get update -qq && apt-get install -y -qq --no-install-recommends hello) >/tmp/apt.log 2>&1; echo \"apt-rc=$?\"; hello\n").await;
        let out = a.expect("Hello, world!", Duration::from_secs(600)).await;
        assert!(out.contains("apt-rc=0"), "{out}");
    });

    // Without egress: no interface, no name, no connection.
    rt.block_on(async {
        let mut p = shell_of(&plain).await;
        p.send("echo \"ifaces=$(ls /sys/class/net | tr '\\n' ' ')end\"\n")
            .await;
        p.expect("ifaces=lo end", MINUTE).await;
        let out = probe(&mut p, &request).await;
        eprintln!("microVM without egress: {out:#}");
        assert!(
            out["resolve"].as_str().unwrap().starts_with("error:"),
            "{out}"
        );
        assert!(
            out["public"].as_str().unwrap().starts_with("error:"),
            "{out}"
        );
        p.close().await;
    });

    // Suspend and resume the first: egress comes back with it.
    let first = vms[0]["id"].as_str().unwrap();
    rt.block_on(a.close());
    assert_eq!(
        str_of(&scenario(&w, &s, "suspend", &[("id", first)]), "state"),
        "SUSPENDED"
    );
    assert_eq!(
        str_of(&scenario(&w, &s, "resume", &[("id", first)]), "state"),
        "RUNNING"
    );
    rt.block_on(async {
        let mut a2 = shell_of(&vms[0]).await;
        let out = probe(&mut a2, &request).await;
        eprintln!("first microVM after suspend and resume: {out:#}");
        assert_eq!(out["public"], "ok:hello", "{out}");
        assert!(out["host loopback via the slirp gateway"]
            .as_str()
            .unwrap()
            .starts_with("error:"));
        a2.close().await;
        b.close().await;
    });
}

//! Running microVMs end to end, black-box: a real `hearth serve` (its own
//! data dir, state dir and `--artifact-root`), images built from
//! `examples/hello-stdlib` or from the test apps in `tests/apps/`, and
//! real clients: the aws CLI and boto3 for the API, curl, Python
//! `requests` (HTTPS_PROXY with REQUESTS_CA_BUNDLE) and a WebSocket client
//! for the endpoint proxy (clients/microvms.py, one scenario per call).
//! What a client cannot see (the server's files, its QEMU processes, its
//! memory, a SIGKILL and a restart, tokens minted with the server's key
//! that the API would never mint) is done and checked here.
//!
//! Every test boots microVMs: all are named `e2e_*` (one at a time, see
//! .config/nextest.toml) and hold the shared e2e lock for their whole run.

mod support_e2e;

use std::process::Command;
use std::time::{Duration, Instant};

use hearth_token::{Claims, TokenKind};
use serde_json::Value;
use support_e2e::*;

/// An account made with `hearth account create` on the server's data dir.
struct Account {
    id: String,
    access_key_id: String,
    secret: String,
}

fn create_account(w: &Work, name: &str) -> Account {
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .arg("--data-dir")
        .arg(w.data())
        .args(["account", "create", name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    Account {
        id: v["accountId"].as_str().unwrap().into(),
        access_key_id: v["accessKeyId"].as_str().unwrap().into(),
        secret: v["secretAccessKey"].as_str().unwrap().into(),
    }
}

/// Run a scenario of clients/microvms.py against `s`.
fn scenario(w: &Work, s: &Serve, name: &str, args: &[(&str, &str)]) -> Value {
    client_scenario(w, s, "microvms.py", name, args)
}

/// The 12-digit account of an ARN.
fn account_of(arn: &str) -> &str {
    arn.split(':')
        .nth(4)
        .unwrap_or_else(|| panic!("not an ARN: {arn}"))
}

// --- tests -------------------------------------------------------------------

/// The announcement's walk-through, with the real `aws lambda-microvms`
/// CLI (credentials from `<data>/credentials`) and curl through the proxy:
/// build hello-stdlib, run it with an idle policy, mint a token, GET
/// /state, suspend-microvm (SUSPENDED), GET again: auto-resumed with its
/// memory (same process, counter + 1), terminate-microvm: get-microvm
/// says TERMINATED and the engine keeps no directory for it.
#[test]
fn e2e_reference_scenario_through_the_aws_cli() {
    let _lock = e2e_lock();
    let w = Work::new();
    let _cleanup = Cleanup(&w);
    let s = Serve::start(&w);
    let r = scenario(&w, &s, "reference-cli", &[("name", "hello")]);
    let id = str_of(&r, "microvmId");
    assert!(
        !w.microvm_files(id).exists(),
        "a terminated microVM's files remain: {}",
        w.microvm_files(id).display()
    );
    // Stopped right after a RunMicrovm (the warm pool refills behind the
    // clone it handed out, and may still be at it): that microVM stays
    // (the next server adopts it); no other QEMU does.
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .arg("--data-dir")
        .arg(w.data())
        .args(["run", "hello", "--json"])
        .env("HEARTH_ENDPOINT", &s.api)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hearth run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    let kept = qemu_of(&w, str_of(&run, "microvmId")).expect("the new microVM's QEMU");
    s.stop(&w);
    let qemus_left = || -> Vec<u32> {
        all_procs()
            .into_iter()
            .filter(|p| is_qemu(p) && holds_file_under(p.pid, &w.data()))
            .map(|p| p.pid)
            .collect()
    };
    // Killed ones take a moment to go.
    let deadline = Instant::now() + Duration::from_secs(15);
    while qemus_left() != [kept.pid] && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        qemus_left(),
        [kept.pid],
        "after SIGTERM only the handed-out microVM keeps a QEMU\n{}",
        w.log_tail()
    );
}

/// Python `requests` through HTTPS_PROXY with REQUESTS_CA_BUNDLE reaches
/// the app: its state, 3 MiB up, 1 MB down, the request headers it sees
/// (no X-aws-proxy-auth or X-aws-proxy-port, no token anywhere, Host is
/// the endpoint), X-aws-proxy-port 9090 reaching its second port and 502
/// where nothing listens; a WebSocket authenticated by subprotocols
/// echoes text, binary and ping, on 8080 and on 9090, and the app never
/// sees the `lambda-microvms` subprotocols; without a token, with a
/// tampered one or on a port it does not allow, the upgrade is 403.
#[test]
fn e2e_python_requests_and_websockets_reach_the_app_through_the_proxy_without_its_credentials() {
    let _lock = e2e_lock();
    let w = Work::new();
    let _cleanup = Cleanup(&w);
    let s = Serve::start(&w);
    scenario(&w, &s, "data-plane", &[("name", "probe")]);
}

/// A token opens only its microVM, on its ports, in its account, until
/// it expires: missing, malformed, re-signed-less (MAC changed, claims
/// widened to all ports, claims moved to another microVM), another
/// microVM's, a port outside it, expired or shell tokens are 403; a
/// correctly signed token naming another account, or a microVM that does
/// not exist, is 404; none reaches the app. Ranges and allPorts open what
/// they say. Account B gets 404 for every call on A's microVM (so it can
/// never mint a token for it), lists nothing and cannot run A's image.
#[test]
fn e2e_tokens_open_only_their_own_microvm_on_their_ports_in_their_account() {
    let _lock = e2e_lock();
    let w = Work::new();
    let _cleanup = Cleanup(&w);
    let s = Serve::start(&w);
    let b = create_account(&w, "tenant-b");
    let r = scenario(&w, &s, "token-setup", &[("name", "probe")]);
    let (image, a_id) = (str_of(&r, "imageArn"), str_of(&r, "a"));
    let account_a = account_of(image);
    assert_ne!(account_a, b.id);
    let claims = |account: &str, microvm: &str, kind, expires_at_secs| Claims {
        account_id: account.into(),
        microvm_id: microvm.into(),
        kind,
        ports: if kind == TokenKind::Http {
            vec![(8080, 8080)]
        } else {
            vec![]
        },
        expires_at_secs,
    };
    let expired = mint(
        &w,
        &claims(account_a, a_id, TokenKind::Http, now_secs() - 5),
    );
    let foreign = mint(&w, &claims(&b.id, a_id, TokenKind::Http, now_secs() + 600));
    let ghost = "mvm-doesnotexist0000";
    let ghost_token = mint(
        &w,
        &claims(account_a, ghost, TokenKind::Http, now_secs() + 600),
    );
    let shell = mint(
        &w,
        &claims(account_a, a_id, TokenKind::Shell, now_secs() + 600),
    );
    scenario(
        &w,
        &s,
        "token-scope",
        &[
            ("a", a_id),
            ("b", str_of(&r, "b")),
            ("expired", &expired),
            ("foreign", &foreign),
            ("ghost", ghost),
            ("ghost_token", &ghost_token),
            ("shell", &shell),
        ],
    );
    scenario(
        &w,
        &s,
        "cross-account",
        &[
            ("a", a_id),
            ("imageArn", image),
            ("b_key", &b.access_key_id),
            ("b_secret", &b.secret),
        ],
    );
}

/// The idle policy for real, its deadlines overlapped: a microVM with
/// maxIdleDurationSeconds 60 and no traffic is still RUNNING at 55 s and
/// SUSPENDED by ~75 s, and five requests at once resume it (once: one
/// process answers all, each counted once); one whose only traffic is
/// a WebSocket message every 10 s stays RUNNING, and so does one serving a
/// single 75 s download (a chunk every 5 s); suspendedDurationSeconds
/// 5 after an explicit suspend ends TERMINATED within ~10 s with the
/// retention reason and its files deleted; maximumDurationInSeconds 8 ends
/// TERMINATED with "maximum duration of the microVM elapsed". Without
/// autoResume a SUSPENDED microVM answers 409 through the proxy (and stays
/// SUSPENDED) until ResumeMicrovm brings it back with its memory. Suspend
/// of a SUSPENDED or TERMINATED microVM, resume of a RUNNING or
/// TERMINATED one and terminate of a TERMINATED one are ConflictExceptions.
#[test]
fn e2e_idle_policy_deadlines_and_manual_lifecycle_requests_act_on_time_and_refuse_bad_transitions()
{
    let _lock = e2e_lock();
    let w = Work::new();
    let _cleanup = Cleanup(&w);
    let s = Serve::start(&w);
    let r = scenario(&w, &s, "build", &[("name", "probe"), ("app", "probe")]);
    let r = scenario(&w, &s, "lifecycle", &[("imageArn", str_of(&r, "imageArn"))]);
    eprintln!("lifecycle timings: {r}");
    for id in r["ids"].as_array().unwrap() {
        let dir = w.microvm_files(id.as_str().unwrap());
        assert!(!dir.exists(), "terminated, yet {} remains", dir.display());
    }
}

/// 100 MiB up and 100 MiB down through the proxy at once, both intact,
/// while a third client's GET /state every 0.5 s answers within 2 s; the
/// server's RSS grows by less than 64 MiB (bodies stream, nothing is
/// buffered whole).
#[test]
fn e2e_100_mib_each_way_streams_through_the_proxy_with_prompt_side_requests_and_bounded_memory() {
    let _lock = e2e_lock();
    let w = Work::new();
    let _cleanup = Cleanup(&w);
    let s = Serve::start(&w);
    let r = scenario(&w, &s, "streaming", &[("name", "probe")]);
    eprintln!("streaming: {r}");
}

/// SIGKILL `hearth serve` while one microVM runs and one is suspended,
/// start it again on the same directories and ports: the running one's
/// QEMU lived on and is the same process, both are listed RUNNING and
/// SUSPENDED, the running one answers with its memory (same hostname and
/// process, counter + 1), the suspended one resumes on request with its
/// memory, and the tokens minted before the kill still work. A third,
/// idle limit 60 s without auto-resume, requested every 5 s for 65 s up to
/// the kill, keeps its idle clock: it stays RUNNING after the restart and
/// answers.
#[test]
fn e2e_a_sigkilled_server_restarts_with_its_microvms_intact_and_a_stopped_one_leaves_only_them() {
    let _lock = e2e_lock();
    let w = Work::new();
    let _cleanup = Cleanup(&w);
    let s = Serve::start(&w);
    let before = scenario(&w, &s, "restart-before", &[("name", "hello")]);
    let running = str_of(&before["running"], "id").to_string();
    let suspended = str_of(&before["suspended"], "id").to_string();
    let qemu = qemu_of(&w, &running).expect("the running microVM's QEMU");
    assert!(
        qemu_of(&w, &suspended).is_none(),
        "a suspended microVM has no QEMU"
    );
    let (api, proxy) = (s.api_addr().to_string(), s.proxy_addr.clone());
    s.kill9();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        still_alive(&qemu),
        "the running microVM's QEMU died with the server"
    );
    let s = Serve::start_on(&w, &api, &proxy);
    // The server prints its line once recovery is done.
    assert!(
        still_alive(&qemu),
        "the running microVM was re-adopted, not relaunched: its QEMU is the same process"
    );
    scenario(&w, &s, "restart-after", &[("before", &before.to_string())]);
    assert!(still_alive(&qemu), "the re-adopted QEMU still runs");
    let resumed = wait_for("the resumed microVM's QEMU", Duration::from_secs(5), || {
        qemu_of(&w, &suspended)
    });
    assert_ne!(resumed.pid, qemu.pid);
    // A graceful stop leaves the microVMs it handed out running (the next
    // server adopts them) and ends the warmed clones and pre-started QEMUs,
    // which belong to none.
    let busy = qemu_of(&w, str_of(&before["busy"], "id")).expect("the busy microVM's QEMU");
    s.stop(&w);
    let mut want = vec![qemu.pid, resumed.pid, busy.pid];
    want.sort_unstable();
    let qemus_left = || {
        let mut left: Vec<u32> = all_procs()
            .into_iter()
            .filter(|p| is_qemu(p) && holds_file_under(p.pid, &w.data()))
            .map(|p| p.pid)
            .collect();
        left.sort_unstable();
        left
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while qemus_left() != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        qemus_left(),
        want,
        "after SIGTERM only the three handed-out microVMs (running, busy, resumed) keep a QEMU\n{}",
        w.log_tail()
    );
    assert!(still_alive(&qemu) && still_alive(&resumed) && still_alive(&busy));
}

/// Many microVMs of one image at once: SUSPENDED ones, each having
/// answered, then RUNNING ones beside them, each answering with its own
/// hostname (its microVM id) and counter; ListMicrovms pages through all
/// with their states, and suspended ones picked at random resume with
/// their own memory.
#[test]
fn e2e_twenty_running_beside_a_hundred_suspended_microvms_each_keep_their_own_state() {
    let _lock = e2e_lock();
    let w = Work::new();
    let _cleanup = Cleanup(&w);
    let s = Serve::start(&w);
    let started = Instant::now();
    let r = scenario(&w, &s, "build", &[("name", "hello")]);
    let (suspended, running) = (
        std::env::var("HEARTH_MANY_SUSPENDED").unwrap_or_else(|_| "100".into()),
        std::env::var("HEARTH_MANY_RUNNING").unwrap_or_else(|_| "20".into()),
    );
    let r = scenario(
        &w,
        &s,
        "many",
        &[
            ("imageArn", str_of(&r, "imageArn")),
            ("suspended", &suspended),
            ("running", &running),
        ],
    );
    eprintln!(
        "many: {} s, RunMicrovm p50 {} s, suspend p50 {} s ({:.0} s with the build)",
        r["totalSecs"],
        r["runP50Secs"],
        r["suspendP50Secs"],
        started.elapsed().as_secs_f64()
    );
    for id in r["running"].as_array().unwrap() {
        assert!(
            qemu_of(&w, id.as_str().unwrap()).is_some(),
            "{id} RUNNING has a QEMU"
        );
    }
    drop(s);
    drop(_cleanup);
    let checked = Instant::now();
    drop(w);
    eprintln!(
        "{:.0} s in all; removing the test's directory took {:.0} s of it",
        started.elapsed().as_secs_f64(),
        checked.elapsed().as_secs_f64()
    );
}

//! `hearth run|ls|get|suspend|resume|terminate|token|curl` against a live
//! `hearth serve` that has no built image: API errors read as the aws CLI
//! prints them (exit 255), microVM rows seeded into the store are listed,
//! shown and get tokens, and `hearth curl` reaches the real endpoint proxy
//! over TLS with the CA from the data directory (the proxy refuses, as the
//! seeded microVM runs nowhere: exit 22). The scenario with a booted
//! microVM is the end-to-end tests' job.

mod support_api;

use std::process::Output;

use hearth_store::{AccountId, NewImage, Store};
use serde_json::Value;
use support_api::*;

/// `hearth ARGS` against `s`, with no AWS variables: credentials come from
/// the data directory's `credentials` file.
fn cli(s: &Server, args: &[&str]) -> Output {
    hearth()
        .arg("--data-dir")
        .arg(s.data.path())
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", s.data.path())
        .env("HEARTH_ENDPOINT", &s.api)
        .output()
        .expect("run hearth")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The proxy's `host:port` from serve's `https://host:port`.
fn proxy_addr(s: &Server) -> String {
    s.proxy
        .strip_prefix("https://")
        .unwrap_or_else(|| panic!("the proxy speaks TLS: {}", s.proxy))
        .to_string()
}

/// An image with no version (and so no microVM), straight into the store.
fn seed_bare_image(s: &Server, name: &str) {
    let id = format!("img-{name}");
    s.store()
        .create_image(
            &AccountId::new(&s.admin.account_id).unwrap(),
            &NewImage {
                image_id: id.clone(),
                name: name.into(),
                arn: format!(
                    "arn:aws:lambda:us-east-1:{}:microvm-image:{id}",
                    s.admin.account_id
                ),
                state: "CREATED".into(),
                created_at_secs: 1_790_000_000,
                doc: serde_json::json!({}),
                tags: Default::default(),
            },
        )
        .unwrap();
}

#[track_caller]
fn assert_api_error(out: &Output, expected: &str) {
    assert_eq!(
        out.status.code(),
        Some(255),
        "stdout {} stderr {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(text(&out.stderr).trim(), expected);
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
}

#[test]
fn get_of_a_missing_microvm_is_resource_not_found_and_exits_255() {
    let s = Server::start();
    for args in [&["get", "mvm-nope"][..], &["get", "mvm-nope", "--json"]] {
        let out = cli(&s, args);
        assert_api_error(
            &out,
            "An error occurred (ResourceNotFoundException) when calling the GetMicrovm operation: MicroVM mvm-nope not found",
        );
    }
}

#[test]
fn run_of_a_missing_image_is_resource_not_found_and_exits_255() {
    let s = Server::start();
    let out = cli(&s, &["run", "nope", "--idle-seconds", "60"]);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "An error occurred (ResourceNotFoundException) when calling the RunMicrovm operation: "
        ),
        "{err}"
    );
    assert!(err.contains("nope"), "{err}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
}

#[test]
fn lifecycle_commands_on_a_missing_microvm_name_their_operation_and_exit_255() {
    let s = Server::start();
    for (cmd, op) in [
        ("suspend", "SuspendMicrovm"),
        ("resume", "ResumeMicrovm"),
        ("terminate", "TerminateMicrovm"),
    ] {
        let out = cli(&s, &[cmd, "mvm-nope"]);
        assert_api_error(
            &out,
            &format!("An error occurred (ResourceNotFoundException) when calling the {op} operation: MicroVM mvm-nope not found"),
        );
    }
}

#[test]
fn token_for_a_missing_microvm_is_resource_not_found_and_exits_255() {
    let s = Server::start();
    let out = cli(&s, &["token", "mvm-nope", "--port", "9000"]);
    assert_api_error(
        &out,
        "An error occurred (ResourceNotFoundException) when calling the CreateMicrovmAuthToken operation: MicroVM mvm-nope not found",
    );
}

#[test]
fn curl_to_a_missing_microvm_fails_at_get_microvm_and_sends_nothing() {
    let s = Server::start();
    let out = cli(&s, &["curl", "mvm-nope", "/state", "-i"]);
    assert_api_error(
        &out,
        "An error occurred (ResourceNotFoundException) when calling the GetMicrovm operation: MicroVM mvm-nope not found",
    );
}

#[test]
fn ls_lists_microvms_with_their_image_names_and_filters_by_image() {
    let s = Server::start();
    let out = cli(&s, &["ls"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "MICROVM  STATE  IMAGE  VERSION  STARTED\n"
    );

    let web = s.seed_image(&s.admin, "web");
    let ids = s.seed_microvms(&s.admin, &web, 2);
    seed_bare_image(&s, "other");
    let out = cli(&s, &["ls"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{table}");
    for r in &rows {
        assert!(ids.iter().any(|id| id == r[0]), "{table}");
        assert_eq!(r[1..4], ["RUNNING", "web", "1"], "{table}");
        assert!(r[4].starts_with("2026-"), "{table}");
    }

    let out = cli(&s, &["ls", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), 2, "{v}");
    assert_eq!(items[0]["imageArn"], web.as_str());
    assert_eq!(items[0]["state"], "RUNNING");

    let out = cli(&s, &["ls", "--image", "web", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    let out = cli(&s, &["ls", "--image", "other", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
    let out = cli(&s, &["ls", "--image", "missing-image"]);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("when calling the ListMicrovms operation"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn get_shows_a_microvm_as_text_and_as_the_apis_json() {
    let s = Server::start();
    let web = s.seed_image(&s.admin, "web");
    let id = s.seed_microvms(&s.admin, &web, 1).remove(0);
    let out = cli(&s, &["get", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    let first: Vec<&str> = t.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(first, ["microvmId", id.as_str()], "{t}");
    assert!(
        t.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["state", "RUNNING"]),
        "{t}"
    );
    assert!(t.contains(&format!("{id}.localhost")), "{t}");

    let out = cli(&s, &["get", &id, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["microvmId"], id.as_str());
    assert_eq!(v["state"], "RUNNING");
    assert_eq!(v["endpoint"], format!("{id}.localhost"));
    assert_eq!(v["imageArn"], web.as_str());
    assert_eq!(v["maximumDurationInSeconds"], 28800);
}

#[test]
fn token_prints_the_token_alone_or_the_header_map_as_json() {
    let s = Server::start();
    let web = s.seed_image(&s.admin, "web");
    let id = s.seed_microvms(&s.admin, &web, 1).remove(0);
    let out = cli(&s, &["token", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tok = text(&out.stdout);
    let tok = tok.trim_end();
    assert!(
        !tok.is_empty() && !tok.contains(char::is_whitespace),
        "{tok:?}"
    );

    let out = cli(
        &s,
        &[
            "token",
            &id,
            "--port",
            "9000",
            "--port",
            "8000-8100",
            "--minutes",
            "60",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let map = v.as_object().unwrap();
    assert_eq!(map.len(), 1, "{v}");
    assert!(map["X-aws-proxy-auth"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));

    let out = cli(&s, &["token", &id, "--all-ports", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn curl_reaches_the_proxy_over_tls_with_the_data_dir_ca_and_exits_22_on_its_refusal() {
    let s = Server::start();
    let web = s.seed_image(&s.admin, "web");
    // A row in the store, run by no task: the proxy has nothing to reach.
    let id = s.seed_microvms(&s.admin, &web, 1).remove(0);
    let proxy = proxy_addr(&s);
    let out = cli(
        &s,
        &["curl", &id, "/state", "-i", "--connect-to", &proxy, "-v"],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(22), "{stdout}\n{stderr}");
    let status_line = stdout.lines().next().unwrap_or_default();
    let code: u16 = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {stdout}"));
    assert!((400..600).contains(&code), "{stdout}");
    // The proxy's refusal is its JSON message, printed as the body.
    let body = stdout.split("\r\n\r\n").nth(1).unwrap_or_default();
    let msg: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert!(msg["message"].is_string(), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "hearth curl: {id}.localhost:443 answered HTTP {code}"
        )),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("via {proxy}")), "{stderr}");
}

#[test]
fn curl_refuses_a_proxy_certificate_its_ca_did_not_sign() {
    let s = Server::start();
    let web = s.seed_image(&s.admin, "web");
    let id = s.seed_microvms(&s.admin, &web, 1).remove(0);
    // A CA file that is valid but not the proxy's: the system bundle.
    let other_ca = s.data.path().join("other-ca.pem");
    let bundle = std::path::Path::new("/etc/ssl/certs/ca-certificates.crt");
    assert!(bundle.is_file(), "this test needs the system CA bundle");
    std::fs::copy(bundle, &other_ca).unwrap();
    let proxy = proxy_addr(&s);
    let out = cli(
        &s,
        &[
            "curl",
            &id,
            "--connect-to",
            &proxy,
            "--ca",
            other_ca.to_str().unwrap(),
        ],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("TLS with the endpoint proxy"), "{stderr}");
    assert!(
        stderr.contains(&format!("only the CA in {}", other_ca.display())),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
}

#[test]
fn bad_arguments_are_refused_before_any_call() {
    // No server at all: the arguments fail first (clap exits 2), and a
    // bad header or path is refused before the API is asked anything.
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        hearth()
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HEARTH_ENDPOINT", "http://127.0.0.1:9")
            .env("AWS_ACCESS_KEY_ID", "AKIAX")
            .env("AWS_SECRET_ACCESS_KEY", "s")
            .output()
            .unwrap()
    };
    for args in [
        &["token", "mvm-a", "--minutes", "61"][..],
        &["token", "mvm-a", "--port", "70000"],
        &["token", "mvm-a", "--port", "1", "--all-ports"],
        &["run", "hello", "--max-duration", "0"],
        &["curl", "mvm-a", "--port", "0"],
        &["get"],
    ] {
        let out = run(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let out = run(&["curl", "mvm-a", "-H", "no colon"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("-H \"no colon\" is not `Name: value`"),
        "{}",
        text(&out.stderr)
    );
    // Nothing listens on port 9: the transport error names the endpoint.
    let out = run(&["get", "mvm-a"]);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(
            "Could not reach the endpoint URL \"http://127.0.0.1:9\" for the GetMicrovm operation"
        ),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn without_credentials_the_cli_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let out = hearth()
        .arg("--data-dir")
        .arg(dir.path())
        .args(["ls"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HEARTH_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("no credentials"), "{err}");
    assert!(
        err.contains(&dir.path().join("credentials").display().to_string()),
        "{err}"
    );
}

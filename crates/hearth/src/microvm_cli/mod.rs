//! `hearth run|ls|get|suspend|resume|terminate|token|curl|shell`: microVMs
//! through the API of a running `hearth serve`, and HTTP and shells to them
//! through its endpoint proxy.
//!
//! The commands own nothing but their arguments and output; the API client
//! is [`crate::client`] (endpoint, region, credentials as for
//! `hearth image`), the proxy transport of `hearth curl` is [`curl`], the
//! interactive session of `hearth shell` is [`shell`]. Each
//! runs on the CLI's Tokio runtime, on the main task. An API error is
//! printed as the aws CLI prints it and exits 255; `hearth curl` exits 22
//! (as `curl --fail`) when the endpoint answers a status other than 2xx;
//! `hearth shell` exits as ssh does (the shell's exit code, 255 for its own
//! failures).

pub(crate) mod curl;
pub(crate) mod shell;
pub(crate) mod view;

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Result;
use aws_sdk_lambdamicrovms::types::{IdlePolicy, PortRange, PortSpecification};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::client::{finish, Api, ApiCallError, ClientArgs};
use crate::Global;
use view::{microvm_view, MicrovmView};

/// The exit code of `hearth curl` when the endpoint answered, but not 2xx.
pub const HTTP_ERROR_EXIT_CODE: i32 = 22;
/// The idle policy's members when only some are given (`--idle-seconds`,
/// `--suspended-seconds`, `--no-auto-resume`).
pub const DEFAULT_IDLE_SECS: i32 = 900;
pub const DEFAULT_SUSPENDED_SECS: i32 = 300;
/// The port a token allows and `hearth curl` reaches by default.
pub const DEFAULT_APP_PORT: u16 = 8080;

/// The microVM commands; flattened into the binary's top-level commands.
#[derive(Subcommand)]
pub enum MicrovmCmd {
    /// Run a microVM of an image (RunMicrovm); prints it and how long the
    /// call took.
    Run(RunArgs),
    /// List microVMs (ListMicrovms).
    Ls(LsArgs),
    /// Show a microVM (GetMicrovm).
    Get(GetArgs),
    /// Suspend a running microVM; prints its state after, and how long
    /// the call took.
    Suspend(LifecycleArgs),
    /// Resume a suspended microVM; prints its state after, and how long
    /// the call took.
    Resume(LifecycleArgs),
    /// Terminate a microVM; prints its state after, and how long the call
    /// took.
    Terminate(LifecycleArgs),
    /// Mint an auth token for a microVM's endpoint (CreateMicrovmAuthToken);
    /// prints the token.
    Token(TokenArgs),
    /// Send an HTTP request to a microVM through the endpoint proxy and
    /// print the answer's body (a token is minted for it); exits 22 on a
    /// status other than 2xx.
    Curl(CurlArgs),
    /// Open an interactive shell in a microVM, like ssh (the microVM needs
    /// the SHELL_INGRESS or ALL_INGRESS connector).
    ///
    /// Mints a shell token (CreateMicrovmShellAuthToken) and opens a
    /// WebSocket to the microVM's endpoint through the endpoint proxy
    /// (`wss://<endpoint>/`, trusting the data directory's proxy CA, as
    /// `hearth curl`). When standard input is a terminal it is put in raw
    /// mode for the session (every key, ^C included, goes to the shell) and
    /// the window's size follows it. When it is not (a pipe or a file), the
    /// input is sent as it comes, and at its end the output is still read
    /// until the shell ends (end the input with `exit`):
    /// `printf 'uname -a; exit 3\n' | hearth shell ID`.
    ///
    /// Exits with the shell's exit code, or 128+N when signal N ended it
    /// (or ended `hearth shell`: SIGHUP, SIGTERM, SIGINT); 255 when the
    /// session could not be set up (an API error, the proxy refusing it, a
    /// connection failure), the connection was lost, or the platform ended
    /// the session (e.g. `shell ended: microVM suspended (idle)`).
    Shell(shell::ShellArgs),
    /// Print the app's stdout and stderr in a microVM (kept across its
    /// suspends); with -f, follow it until the microVM ends.
    Logs(LogsArgs),
}

#[derive(Args)]
pub struct LogsArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The microVM id.
    id: String,
    /// Keep printing output as the app writes it, until the microVM ends.
    #[arg(short = 'f', long)]
    follow: bool,
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The image (name, id or ARN).
    image: String,
    /// The image version (default: the latest active one).
    #[arg(long)]
    version: Option<String>,
    /// Suspend the microVM after this many seconds without a request
    /// (gives it an idle policy; default 900 when another idle flag is
    /// given).
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
    idle_seconds: Option<i32>,
    /// Terminate a suspended microVM after this many seconds (gives it an
    /// idle policy; default 300 when another idle flag is given).
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
    suspended_seconds: Option<i32>,
    /// Do not resume the suspended microVM on the next request (gives it
    /// an idle policy, with the defaults above for what is not given).
    #[arg(long)]
    no_auto_resume: bool,
    /// Terminate the microVM after this many seconds whatever it does
    /// (default: the server's).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(i32).range(1..))]
    max_duration: Option<i32>,
    /// The run hook's payload (what the app's run hook receives).
    #[arg(long)]
    payload: Option<String>,
    /// What the endpoint lets in (ingress network connectors; repeat or
    /// separate with commas). Default: the server's, HTTP only.
    #[arg(long, value_enum, value_delimiter = ',')]
    ingress: Vec<IngressArg>,
    /// Give the microVM the internet (the INTERNET_EGRESS connector):
    /// outbound connections through the server's filtered egress network.
    #[arg(long)]
    egress: bool,
    /// Print JSON: the microVM with `elapsedMs`, the call's duration.
    #[arg(long)]
    json: bool,
}

/// The ingress network connectors, by their short names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IngressArg {
    /// HTTP and the shell (ALL_INGRESS).
    All,
    /// Nothing (NO_INGRESS).
    No,
    /// HTTP and WebSocket requests to the app (HTTP_INGRESS).
    Http,
    /// The interactive shell (SHELL_INGRESS).
    Shell,
}

impl IngressArg {
    fn connector(self) -> &'static str {
        match self {
            IngressArg::All => "ALL_INGRESS",
            IngressArg::No => "NO_INGRESS",
            IngressArg::Http => "HTTP_INGRESS",
            IngressArg::Shell => "SHELL_INGRESS",
        }
    }
}

/// A network connector's ARN in `region`.
fn connector_arn(region: &str, name: &str) -> String {
    format!("arn:aws:lambda:{region}:aws:network-connector:aws-network-connector:{name}")
}

impl RunArgs {
    /// The idle policy: none unless an idle flag is given; the defaults
    /// fill what is not.
    fn idle_policy(&self) -> Result<Option<IdlePolicy>> {
        if self.idle_seconds.is_none() && self.suspended_seconds.is_none() && !self.no_auto_resume {
            return Ok(None);
        }
        let p = IdlePolicy::builder()
            .max_idle_duration_seconds(self.idle_seconds.unwrap_or(DEFAULT_IDLE_SECS))
            .suspended_duration_seconds(self.suspended_seconds.unwrap_or(DEFAULT_SUSPENDED_SECS))
            .auto_resume_enabled(!self.no_auto_resume)
            .build()?;
        Ok(Some(p))
    }
}

#[derive(Args)]
pub struct LsArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Only the microVMs of this image (name, id or ARN).
    #[arg(long)]
    image: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct GetArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The microVM id.
    id: String,
    /// Print JSON (the API's GetMicrovm answer).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct LifecycleArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The microVM id.
    id: String,
    /// Print JSON: the microVM after the call, with `elapsedMs`, the
    /// call's duration.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct TokenArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The microVM id.
    id: String,
    /// A port the token allows, N or FIRST-LAST (repeatable; default 8080).
    #[arg(long = "port", value_name = "PORT|FIRST-LAST", value_parser = parse_ports)]
    ports: Vec<Ports>,
    /// Allow every port.
    #[arg(long, conflicts_with = "ports")]
    all_ports: bool,
    /// How long the token is valid, minutes.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(i32).range(1..=60))]
    minutes: i32,
    /// Print the headers to send as a JSON map (`{"X-aws-proxy-auth": ...}`).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct CurlArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The microVM id.
    id: String,
    /// The path (and query) to request.
    #[arg(default_value = "/")]
    path: String,
    /// The method (default: GET, or POST with -d).
    #[arg(short = 'X', long = "request", value_name = "METHOD")]
    method: Option<String>,
    /// The request body: text, @FILE, or @- for standard input (sent as is).
    #[arg(short = 'd', long = "data", value_name = "DATA")]
    data: Option<String>,
    /// A request header, 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// The microVM's port to reach.
    #[arg(long, default_value_t = DEFAULT_APP_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// Print the answer's status line and headers before its body.
    #[arg(short = 'i', long = "include")]
    include: bool,
    #[command(flatten)]
    proxy: curl::ProxyArgs,
    /// Print the steps and their durations to standard error.
    #[arg(short = 'v', long)]
    verbose: bool,
}

/// A `--port` of `hearth token`: one port or an inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    One(u16),
    Range(u16, u16),
}

fn parse_ports(s: &str) -> Result<Ports, String> {
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p >= 1)
            .ok_or_else(|| format!("{p:?} is not a port (1-65535)"))
    };
    match s.split_once('-') {
        None => port(s).map(Ports::One),
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            if a > b {
                return Err(format!("the range {a}-{b} ends before it starts"));
            }
            Ok(Ports::Range(a, b))
        }
    }
}

impl Ports {
    fn spec(self) -> Result<PortSpecification> {
        Ok(match self {
            Ports::One(p) => PortSpecification::Port(i32::from(p)),
            Ports::Range(a, b) => PortSpecification::Range(
                PortRange::builder()
                    .start_port(i32::from(a))
                    .end_port(i32::from(b))
                    .build()?,
            ),
        })
    }
}

/// The `allowedPorts` of a token.
fn allowed_ports(ports: &[Ports], all: bool) -> Result<Vec<PortSpecification>> {
    if all {
        return Ok(vec![PortSpecification::AllPorts]);
    }
    if ports.is_empty() {
        return Ok(vec![PortSpecification::Port(i32::from(DEFAULT_APP_PORT))]);
    }
    ports.iter().map(|p| p.spec()).collect()
}

/// Run a microVM command; exits the process with 255 on an API error and
/// with 22 when `hearth curl` got a status other than 2xx.
pub async fn run(g: &Global, cmd: MicrovmCmd) -> Result<()> {
    finish(dispatch(g, cmd).await)
}

async fn dispatch(g: &Global, cmd: MicrovmCmd) -> Result<i32> {
    let client = match &cmd {
        MicrovmCmd::Run(a) => &a.client,
        MicrovmCmd::Ls(a) => &a.client,
        MicrovmCmd::Get(a) => &a.client,
        MicrovmCmd::Suspend(a) | MicrovmCmd::Resume(a) | MicrovmCmd::Terminate(a) => &a.client,
        MicrovmCmd::Token(a) => &a.client,
        MicrovmCmd::Curl(a) => &a.client,
        MicrovmCmd::Shell(a) => &a.client,
        MicrovmCmd::Logs(a) => &a.client,
    };
    let api = Api::new(client, &g.data_dir)?;
    match cmd {
        MicrovmCmd::Run(a) => run_microvm(&api, a).await.map(|()| 0),
        MicrovmCmd::Ls(a) => ls(&api, a).await.map(|()| 0),
        MicrovmCmd::Get(a) => get(&api, a).await.map(|()| 0),
        MicrovmCmd::Suspend(a) => lifecycle(&api, Lifecycle::Suspend, a).await.map(|()| 0),
        MicrovmCmd::Resume(a) => lifecycle(&api, Lifecycle::Resume, a).await.map(|()| 0),
        MicrovmCmd::Terminate(a) => lifecycle(&api, Lifecycle::Terminate, a).await.map(|()| 0),
        MicrovmCmd::Token(a) => token(&api, a).await.map(|()| 0),
        MicrovmCmd::Curl(a) => curl_microvm(&api, g, a).await,
        MicrovmCmd::Shell(a) => shell::shell(&api, g, a).await,
        MicrovmCmd::Logs(a) => app_logs(&api, a).await.map(|()| 0),
    }
}

/// `GET /hearth/v1/microvms/{id}/logs[?follow=1]`, streamed to stdout.
async fn app_logs(api: &Api, a: LogsArgs) -> Result<()> {
    let operation = "GetMicrovmLogs";
    let path = format!(
        "/hearth/v1/microvms/{}/logs{}",
        a.id,
        if a.follow { "?follow=1" } else { "" }
    );
    let mut r = api
        .raw(operation, "GET", &path, crate::client::raw::RawBody::Empty)
        .await?;
    let mut out = std::io::stdout();
    loop {
        match r.next_chunk().await {
            Ok(Some(bytes)) => {
                out.write_all(&bytes)?;
                out.flush()?;
            }
            Ok(None) => return Ok(()),
            Err(e) => {
                return Err(ApiCallError::Transport {
                    operation,
                    endpoint: api.endpoint.url.clone(),
                    detail: crate::client::error_chain(&e),
                }
                .into())
            }
        }
    }
}

/// A microVM and a call's duration: JSON with `elapsedMs`, or the
/// microVM's id, state and endpoint on one tab-separated line and
/// `<Operation> took <duration>` on the next.
fn print_timed(m: &MicrovmView, operation: &str, took: Duration, as_json: bool) -> Result<()> {
    if as_json {
        let mut v = m.to_json();
        v["elapsedMs"] = json!(took.as_millis() as u64);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{}\t{}\t{}", m.microvm_id, m.state, m.endpoint);
        if let Some(r) = &m.state_reason {
            println!("stateReason: {r}");
        }
        println!("{operation} took {}", view::elapsed_text(took));
    }
    Ok(())
}

async fn run_microvm(api: &Api, a: RunArgs) -> Result<()> {
    let req = api
        .sdk
        .run_microvm()
        .image_identifier(&a.image)
        .set_image_version(a.version.clone())
        .set_idle_policy(a.idle_policy()?)
        .set_maximum_duration_in_seconds(a.max_duration)
        .set_run_hook_payload(a.payload.clone())
        .set_ingress_network_connectors((!a.ingress.is_empty()).then(|| {
            a.ingress
                .iter()
                .map(|i| connector_arn(&api.region, i.connector()))
                .collect()
        }))
        .set_egress_network_connectors(
            a.egress
                .then(|| vec![connector_arn(&api.region, "INTERNET_EGRESS")]),
        );
    let started = Instant::now();
    let out = req.send().await.map_err(|e| api.error("RunMicrovm", e))?;
    let took = started.elapsed();
    print_timed(&microvm_view!(&out), "RunMicrovm", took, a.json)
}

async fn get_view(api: &Api, id: &str) -> Result<MicrovmView, ApiCallError> {
    let out = api
        .sdk
        .get_microvm()
        .microvm_identifier(id)
        .send()
        .await
        .map_err(|e| api.error("GetMicrovm", e))?;
    Ok(microvm_view!(&out))
}

async fn get(api: &Api, a: GetArgs) -> Result<()> {
    let m = get_view(api, &a.id).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&m.to_json())?);
    } else {
        print!("{}", m.to_text());
    }
    Ok(())
}

async fn ls(api: &Api, a: LsArgs) -> Result<()> {
    let mut pages = api
        .sdk
        .list_microvms()
        .set_image_identifier(a.image.clone())
        .into_paginator()
        .send();
    let mut items = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| api.error("ListMicrovms", e))?;
        items.extend(page.items().iter().cloned());
    }
    if a.json {
        let v: Vec<_> = items.iter().map(view::item_json).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    // Image names for the table; an image gone since shows its id.
    let mut names = std::collections::HashMap::new();
    if !items.is_empty() {
        let mut pages = api.sdk.list_microvm_images().into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| api.error("ListMicrovmImages", e))?;
            for i in page.items() {
                names.insert(i.image_arn().to_string(), i.name().to_string());
            }
        }
    }
    let rows: Vec<[String; 5]> = items
        .iter()
        .map(|i| {
            let image = names
                .get(i.image_arn())
                .cloned()
                .unwrap_or_else(|| view::arn_resource(i.image_arn()).to_string());
            [
                i.microvm_id().to_string(),
                i.state().as_str().to_string(),
                image,
                i.image_version().to_string(),
                view::time(i.started_at()),
            ]
        })
        .collect();
    print!(
        "{}",
        view::table(&["MICROVM", "STATE", "IMAGE", "VERSION", "STARTED"], &rows)
    );
    Ok(())
}

/// The lifecycle operations.
#[derive(Debug, Clone, Copy)]
enum Lifecycle {
    Suspend,
    Resume,
    Terminate,
}

impl Lifecycle {
    fn operation(self) -> &'static str {
        match self {
            Lifecycle::Suspend => "SuspendMicrovm",
            Lifecycle::Resume => "ResumeMicrovm",
            Lifecycle::Terminate => "TerminateMicrovm",
        }
    }
}

/// Call the operation (the server answers once the microVM got there),
/// then read the microVM back with GetMicrovm; the duration printed is the
/// operation's alone.
async fn lifecycle(api: &Api, op: Lifecycle, a: LifecycleArgs) -> Result<()> {
    let name = op.operation();
    let started = Instant::now();
    match op {
        Lifecycle::Suspend => api
            .sdk
            .suspend_microvm()
            .microvm_identifier(&a.id)
            .send()
            .await
            .map(drop)
            .map_err(|e| api.error(name, e))?,
        Lifecycle::Resume => api
            .sdk
            .resume_microvm()
            .microvm_identifier(&a.id)
            .send()
            .await
            .map(drop)
            .map_err(|e| api.error(name, e))?,
        Lifecycle::Terminate => api
            .sdk
            .terminate_microvm()
            .microvm_identifier(&a.id)
            .send()
            .await
            .map(drop)
            .map_err(|e| api.error(name, e))?,
    }
    let took = started.elapsed();
    let m = get_view(api, &a.id).await?;
    print_timed(&m, name, took, a.json)
}

/// Mint a token; the headers it is sent in, sorted by name.
async fn mint(
    api: &Api,
    id: &str,
    ports: Vec<PortSpecification>,
    minutes: i32,
) -> Result<Vec<(String, String)>, ApiCallError> {
    let out = api
        .sdk
        .create_microvm_auth_token()
        .microvm_identifier(id)
        .expiration_in_minutes(minutes)
        .set_allowed_ports(Some(ports))
        .send()
        .await
        .map_err(|e| api.error("CreateMicrovmAuthToken", e))?;
    let mut headers: Vec<(String, String)> = out
        .auth_token()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    headers.sort();
    Ok(headers)
}

async fn token(api: &Api, a: TokenArgs) -> Result<()> {
    let headers = mint(api, &a.id, allowed_ports(&a.ports, a.all_ports)?, a.minutes).await?;
    if a.json {
        let map: serde_json::Map<String, serde_json::Value> = headers
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        println!("{}", serde_json::to_string_pretty(&map)?);
        return Ok(());
    }
    match headers.as_slice() {
        [(_, token)] => println!("{token}"),
        many => {
            for (k, v) in many {
                println!("{k}: {v}");
            }
        }
    }
    Ok(())
}

/// How long the token `hearth curl` mints lives (the proxy checks it when
/// the request arrives).
const CURL_TOKEN_MINUTES: i32 = 5;

async fn curl_microvm(api: &Api, g: &Global, a: CurlArgs) -> Result<i32> {
    let verbose = |what: &str, took: Duration| {
        if a.verbose {
            eprintln!("* {what}: {}", view::elapsed_text(took));
        }
    };
    // Everything the arguments alone decide, before any call.
    let path = curl::request_path(Some(&a.path))?;
    let user_headers = a
        .headers
        .iter()
        .map(|h| curl::parse_header(h))
        .collect::<Result<Vec<_>, _>>()?;
    let body = a.data.as_deref().map(curl::request_body).transpose()?;
    let spec = curl::RequestSpec {
        method: curl::request_method(a.method.as_deref(), body.is_some())?,
        path_and_query: path,
        headers: user_headers,
        body,
    };
    let trust = a.proxy.trust(&g.data_dir)?;

    let t0 = Instant::now();
    let m = get_view(api, &a.id).await?;
    verbose(
        &format!("GetMicrovm ({}, {})", m.state, m.endpoint),
        t0.elapsed(),
    );
    let (target, transport) = a.proxy.reach(&m.endpoint, trust.as_ref())?;
    let t1 = Instant::now();
    let token_headers = mint(
        api,
        &a.id,
        vec![PortSpecification::Port(i32::from(a.port))],
        CURL_TOKEN_MINUTES,
    )
    .await?;
    verbose("CreateMicrovmAuthToken", t1.elapsed());
    let headers = curl::request_headers(&spec, &target, &token_headers, a.port)?;
    let mut stdout = tokio::io::stdout();
    let answer =
        curl::exchange(&transport, &target, &spec, headers, a.include, &mut stdout).await?;
    if a.verbose {
        eprintln!(
            "* {} {} via {} (port {}): HTTP {}",
            spec.method,
            spec.path_and_query,
            answer.peer,
            a.port,
            answer.status.as_u16()
        );
        verbose("connect", answer.timings.connect);
        verbose("first byte", answer.timings.first_byte);
        verbose("total", answer.timings.total);
    }
    if answer.status.is_success() {
        return Ok(0);
    }
    // The body (on the same terminal, often) may end mid-line.
    let newline = if answer.last_byte.is_some_and(|b| b != b'\n') {
        "\n"
    } else {
        ""
    };
    eprintln!(
        "{newline}hearth curl: {} answered HTTP {}{}",
        target.authority,
        answer.status.as_u16(),
        answer
            .status
            .canonical_reason()
            .map(|r| format!(" {r}"))
            .unwrap_or_default()
    );
    Ok(HTTP_ERROR_EXIT_CODE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        cmd: MicrovmCmd,
    }

    fn parse(args: &[&str]) -> Result<MicrovmCmd, clap::Error> {
        T::try_parse_from(std::iter::once("hearth").chain(args.iter().copied())).map(|t| t.cmd)
    }

    #[test]
    fn the_commands_are_well_formed() {
        T::command().debug_assert();
    }

    fn run_args(args: &[&str]) -> RunArgs {
        match parse(&[&["run"], args].concat()).unwrap() {
            MicrovmCmd::Run(r) => r,
            _ => panic!("not run"),
        }
    }

    #[test]
    fn an_idle_policy_is_sent_only_with_an_idle_flag_and_defaults_fill_the_rest() {
        assert!(run_args(&["hello"]).idle_policy().unwrap().is_none());
        let p = run_args(&["hello", "--idle-seconds", "60"])
            .idle_policy()
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                p.max_idle_duration_seconds(),
                p.suspended_duration_seconds(),
                p.auto_resume_enabled()
            ),
            (60, 300, true)
        );
        let p = run_args(&["hello", "--suspended-seconds", "10", "--no-auto-resume"])
            .idle_policy()
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                p.max_idle_duration_seconds(),
                p.suspended_duration_seconds(),
                p.auto_resume_enabled()
            ),
            (900, 10, false)
        );
        let r = run_args(&[
            "hello",
            "--version",
            "3",
            "--max-duration",
            "600",
            "--payload",
            "{\"a\":1}",
        ]);
        assert_eq!(r.version.as_deref(), Some("3"));
        assert_eq!(r.max_duration, Some(600));
        assert_eq!(r.payload.as_deref(), Some("{\"a\":1}"));
        assert!(r.ingress.is_empty() && !r.egress);
        let r = run_args(&["hello", "--ingress", "shell,http", "--egress"]);
        assert_eq!(r.ingress, vec![IngressArg::Shell, IngressArg::Http]);
        assert!(r.egress);
        assert_eq!(
            connector_arn("eu-west-1", IngressArg::Shell.connector()),
            "arn:aws:lambda:eu-west-1:aws:network-connector:aws-network-connector:SHELL_INGRESS"
        );
        assert!(parse(&["run", "hello", "--ingress", "ftp"]).is_err());
        assert!(parse(&["run", "hello", "--idle-seconds", "-1"]).is_err());
        assert!(parse(&["run", "hello", "--max-duration", "0"]).is_err());
        assert!(parse(&["run"]).is_err(), "the image is required");
    }

    #[test]
    fn token_ports_are_single_ports_ranges_or_all() {
        let MicrovmCmd::Token(t) =
            parse(&["token", "mvm-a", "--port", "9000", "--port", "8000-8100"]).unwrap()
        else {
            panic!("not token")
        };
        assert_eq!(t.ports, [Ports::One(9000), Ports::Range(8000, 8100)]);
        assert_eq!(t.minutes, 15);
        assert_eq!(
            allowed_ports(&t.ports, false).unwrap()[1],
            PortSpecification::Range(
                PortRange::builder()
                    .start_port(8000)
                    .end_port(8100)
                    .build()
                    .unwrap()
            )
        );
        assert_eq!(
            allowed_ports(&[], false).unwrap(),
            [PortSpecification::Port(8080)]
        );
        assert_eq!(
            allowed_ports(&[], true).unwrap(),
            [PortSpecification::AllPorts]
        );
        for bad in [
            &["token", "mvm-a", "--port", "0"][..],
            &["token", "mvm-a", "--port", "9-1"],
            &["token", "mvm-a", "--port", "65536"],
            &["token", "mvm-a", "--port", "1", "--all-ports"],
            &["token", "mvm-a", "--minutes", "61"],
            &["token", "mvm-a", "--minutes", "0"],
            &["token"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn curl_takes_curl_like_flags() {
        let MicrovmCmd::Curl(c) = parse(&[
            "curl", "mvm-a", "/state", "-X", "PUT", "-d", "x=1", "-H", "A: 1", "-H", "B: 2", "-i",
            "--port", "9000",
        ])
        .unwrap() else {
            panic!("not curl")
        };
        assert_eq!(
            (c.path.as_str(), c.method.as_deref(), c.data.as_deref()),
            ("/state", Some("PUT"), Some("x=1"))
        );
        assert_eq!(c.headers, ["A: 1", "B: 2"]);
        assert!(c.include && !c.proxy.plain_http);
        assert_eq!(c.port, 9000);
        let MicrovmCmd::Curl(c) = parse(&["curl", "mvm-a"]).unwrap() else {
            panic!("not curl")
        };
        assert_eq!((c.path.as_str(), c.port), ("/", 8080));
        assert!(parse(&["curl", "mvm-a", "--port", "0"]).is_err());
        assert!(parse(&["curl", "mvm-a", "--plain-http", "--ca", "x.pem"]).is_err());
    }
}

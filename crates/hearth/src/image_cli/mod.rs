//! `hearth image ...`: microVM images through the API of a running
//! `hearth serve`, as the aws CLI would manage them (create from a local
//! directory or zip, update, ls, get, rm, logs, and following a build live).
//!
//! The command owns nothing but its arguments and output; the API client
//! is [`crate::client`]. Runs on the CLI's Tokio runtime, on the main task.
//! An API error is printed as the aws CLI prints it and exits 255; a
//! followed build that fails exits 1.

pub(crate) mod code;
pub(crate) mod follow;
mod json;

use std::collections::HashMap;

use anyhow::{Context, Result};
use aws_sdk_lambdamicrovms::types::{CodeArtifact, HookState, Hooks, MicrovmImageHooks, Resources};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::client::{finish, Api, ClientArgs};
use crate::Global;
use code::CodeArg;
use follow::{BuildRef, LinePrinter};

#[derive(Args)]
pub struct ImageArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    cmd: ImageCmd,
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Create an image from a Dockerfile app (a directory, a zip, or a
    /// file://, s3:// or upload:// URI); its first version starts building.
    Create {
        /// The image name (letters, digits, - and _).
        name: String,
        #[command(flatten)]
        spec: VersionArgs,
    },
    /// Build a new version of an image, with a full new configuration.
    Update {
        /// The image (name, id or ARN).
        name: String,
        #[command(flatten)]
        spec: VersionArgs,
    },
    /// List images.
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show an image and its versions as JSON.
    Get {
        /// The image (name, id or ARN).
        name: String,
    },
    /// Delete an image and its versions.
    Rm {
        /// The image (name, id or ARN).
        name: String,
        /// Print the API's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the log of a build (by default the latest build of the newest
    /// version).
    Logs {
        /// The image (name, id or ARN).
        name: String,
        #[arg(long)]
        version: Option<String>,
        #[arg(long)]
        build: Option<String>,
        /// Keep printing until the build ends.
        #[arg(long)]
        follow: bool,
    },
}

/// The configuration of a new image version (create and update).
#[derive(Args, Debug, Clone)]
struct VersionArgs {
    /// The app: a directory (zipped here, honouring .dockerignore), a zip,
    /// or a file://, s3:// or upload:// URI the server fetches.
    #[arg(long)]
    code: String,
    /// Managed base image name, or a base image ARN.
    #[arg(long, default_value = "debian-12-python")]
    base: String,
    /// An environment variable of the app, K=V (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Memory of the microVMs (and the build), MiB.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    memory_mib: Option<u32>,
    /// Snapshot only once the app's ready hook answers 200.
    #[arg(long)]
    ready_hook: bool,
    /// How long the ready hook may take, seconds (default: the server's).
    #[arg(long, requires = "ready_hook", value_parser = clap::value_parser!(u32).range(1..=3600))]
    ready_timeout: Option<u32>,
    /// Fail the version unless the app's validate hook answers 200.
    #[arg(long)]
    validate_hook: bool,
    /// The port the app serves its lifecycle hooks on.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    hook_port: Option<u16>,
    /// No internet access during the build (an empty egressNetworkConnectors).
    #[arg(long)]
    no_egress: bool,
    /// A description of the version.
    #[arg(long)]
    description: Option<String>,
    /// The build role ARN the API requires (Hearth assumes no role).
    #[arg(long)]
    build_role_arn: Option<String>,
    /// Stream the build's log until it ends; exit 0 if it succeeds, 1 if not.
    #[arg(long)]
    follow: bool,
    /// Print JSON (the log of --follow then goes to stderr).
    #[arg(long)]
    json: bool,
}

/// `K=V` of `--env`: a key without whitespace, any value (also with `=`).
fn parse_env(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not K=V"))?;
    if k.is_empty() || k.chars().any(char::is_whitespace) {
        return Err(format!(
            "{k:?} is not an environment variable name (non-empty, no whitespace)"
        ));
    }
    if k.len() > 256 || v.len() > 4096 {
        return Err(format!(
            "{k}: names are at most 256 bytes and values 4096 bytes"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

/// `--env` as a map; a name given twice is an error, not a silent choice.
fn env_map(pairs: &[(String, String)]) -> Result<HashMap<String, String>> {
    let mut m = HashMap::new();
    for (k, v) in pairs {
        if m.insert(k.clone(), v.clone()).is_some() {
            anyhow::bail!("--env {k} is given twice");
        }
    }
    Ok(m)
}

/// `--base`: an ARN as is, else a managed image of the region.
pub(crate) fn base_image_arn(base: &str, region: &str) -> String {
    if base.starts_with("arn:") {
        base.to_string()
    } else {
        format!("arn:aws:lambda:{region}:aws:microvm-image:{base}")
    }
}

/// A role ARN in `account` (the API requires one; Hearth assumes none).
pub(crate) fn default_build_role_arn(account: &str) -> String {
    format!("arn:aws:iam::{account}:role/hearth-build")
}

/// The account in an ARN (`arn:aws:lambda:<region>:<account>:...`).
fn arn_account(arn: &str) -> Option<&str> {
    arn.split(':')
        .nth(4)
        .filter(|a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()))
}

/// The account used in the default role ARN when none is known. The API
/// checks the role ARN's syntax only.
const PLACEHOLDER_ACCOUNT: &str = "000000000000";

/// The members of a create or update request, built from the arguments.
struct VersionRequest {
    base_image_arn: String,
    build_role_arn: String,
    code_uri: String,
    env: HashMap<String, String>,
    resources: Option<Resources>,
    hooks: Option<Hooks>,
    egress: Option<Vec<String>>,
    description: Option<String>,
}

impl VersionArgs {
    /// Everything but the code URI, which may need an upload.
    fn hooks(&self) -> Option<Hooks> {
        if !self.ready_hook && !self.validate_hook && self.hook_port.is_none() {
            return None;
        }
        let mut h = Hooks::builder().set_port(self.hook_port.map(i32::from));
        if self.ready_hook || self.validate_hook {
            let state = |on| {
                if on {
                    HookState::Enabled
                } else {
                    HookState::Disabled
                }
            };
            h = h.microvm_image_hooks(
                MicrovmImageHooks::builder()
                    .ready(state(self.ready_hook))
                    .set_ready_timeout_in_seconds(self.ready_timeout.map(|s| s as i32))
                    .validate(state(self.validate_hook))
                    .build(),
            );
        }
        Some(h.build())
    }

    fn resources(&self) -> Result<Option<Resources>> {
        self.memory_mib
            .map(|m| {
                Resources::builder()
                    .minimum_memory_in_mib(m as i32)
                    .build()
                    .context("--memory-mib")
            })
            .transpose()
    }

    async fn request(&self, api: &Api, account: Option<&str>) -> Result<VersionRequest> {
        let env = env_map(&self.env)?;
        let resources = self.resources()?;
        let code = CodeArg::parse(&self.code)?;
        let code_uri = code::code_uri(api, code).await.map_err(|e| match e {
            code::CodeArgError::Api(api) => anyhow::Error::from(api),
            other => anyhow::Error::from(other),
        })?;
        Ok(VersionRequest {
            base_image_arn: base_image_arn(&self.base, &api.region),
            build_role_arn: self
                .build_role_arn
                .clone()
                .unwrap_or_else(|| default_build_role_arn(account.unwrap_or(PLACEHOLDER_ACCOUNT))),
            code_uri,
            env,
            resources,
            hooks: self.hooks(),
            // No member: the server's default, a build with internet access.
            egress: self.no_egress.then(Vec::new),
            description: self.description.clone(),
        })
    }
}

/// Run `hearth image ...`; exits the process with 255 on an API error and
/// with 1 when a followed build fails.
pub async fn run(g: &Global, a: ImageArgs) -> Result<()> {
    finish(dispatch(g, a).await)
}

async fn dispatch(g: &Global, a: ImageArgs) -> Result<i32> {
    let api = Api::new(&a.client, &g.data_dir)?;
    match a.cmd {
        ImageCmd::Create { name, spec } => create(&api, name, spec).await,
        ImageCmd::Update { name, spec } => update(&api, name, spec).await,
        ImageCmd::Ls { json } => ls(&api, json).await.map(|()| 0),
        ImageCmd::Get { name } => get(&api, &name).await.map(|()| 0),
        ImageCmd::Rm { name, json } => rm(&api, &name, json).await.map(|()| 0),
        ImageCmd::Logs {
            name,
            version,
            build,
            follow,
        } => logs(&api, &name, version, build, follow).await,
    }
}

/// The version configuration members of `r` set on a CreateMicrovmImage
/// or UpdateMicrovmImage request builder (the SDK's two builders are
/// different types with the same setters).
macro_rules! with_version_request {
    ($builder:expr, $r:expr) => {
        $builder
            .base_image_arn($r.base_image_arn)
            .build_role_arn($r.build_role_arn)
            .code_artifact(CodeArtifact::Uri($r.code_uri))
            .set_environment_variables((!$r.env.is_empty()).then_some($r.env))
            .set_resources($r.resources.map(|r| vec![r]))
            .set_hooks($r.hooks)
            .set_egress_network_connectors($r.egress)
            .set_description($r.description)
    };
}

async fn create(api: &Api, name: String, spec: VersionArgs) -> Result<i32> {
    let r = spec.request(api, None).await?;
    let req = api.sdk.create_microvm_image().name(&name);
    let out = with_version_request!(req, r)
        .send()
        .await
        .map_err(|e| api.error("CreateMicrovmImage", e))?;
    let created = json!({
        "imageArn": out.image_arn(),
        "name": out.name(),
        "state": out.state().as_str(),
        "imageVersion": out.image_version(),
    });
    finish_new_version(api, &spec, created, out.image_arn(), out.image_version()).await
}

async fn update(api: &Api, name: String, spec: VersionArgs) -> Result<i32> {
    let image = api
        .sdk
        .get_microvm_image()
        .image_identifier(&name)
        .send()
        .await
        .map_err(|e| api.error("GetMicrovmImage", e))?;
    let r = spec.request(api, arn_account(image.image_arn())).await?;
    let req = api
        .sdk
        .update_microvm_image()
        .image_identifier(image.image_arn());
    let out = with_version_request!(req, r)
        .send()
        .await
        .map_err(|e| api.error("UpdateMicrovmImage", e))?;
    let updated = json!({
        "imageArn": out.image_arn(),
        "name": out.name(),
        "state": out.state().as_str(),
        "imageVersion": out.image_version(),
    });
    finish_new_version(api, &spec, updated, out.image_arn(), out.image_version()).await
}

/// Print a new version, and follow its build with `--follow`.
async fn finish_new_version(
    api: &Api,
    spec: &VersionArgs,
    mut created: serde_json::Value,
    image_arn: &str,
    version: &str,
) -> Result<i32> {
    if !spec.json {
        println!("{image_arn}\tversion {version}");
    }
    if !spec.follow {
        if spec.json {
            println!("{}", serde_json::to_string_pretty(&created)?);
        }
        return Ok(0);
    }
    let Some(build) =
        follow::latest_build(api, image_arn, version, follow::FIRST_BUILD_WAIT).await?
    else {
        anyhow::bail!("version {version} of {image_arn} shows no build to follow");
    };
    let b = BuildRef {
        image_arn: image_arn.to_string(),
        version: version.to_string(),
        build_id: build.build_id().to_string(),
    };
    let mut printer = LinePrinter::new(spec.json);
    let end = follow::follow(api, &b, &mut printer).await?;
    if spec.json {
        created["build"] = json::build(&end);
        println!("{}", serde_json::to_string_pretty(&created)?);
    } else {
        println!("{}", follow::final_state_text(&end));
    }
    Ok(build_exit_code(end.build_state()))
}

fn build_exit_code(s: &aws_sdk_lambdamicrovms::types::BuildState) -> i32 {
    match s {
        aws_sdk_lambdamicrovms::types::BuildState::Successful => 0,
        _ => 1,
    }
}

async fn ls(api: &Api, as_json: bool) -> Result<()> {
    let mut pages = api.sdk.list_microvm_images().into_paginator().send();
    let mut items = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| api.error("ListMicrovmImages", e))?;
        items.extend(page.items().iter().cloned());
    }
    if as_json {
        let v: Vec<_> = items.iter().map(json::image_summary).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let rows: Vec<[String; 4]> = items
        .iter()
        .map(|i| {
            [
                i.name().to_string(),
                i.state().as_str().to_string(),
                i.latest_active_image_version().unwrap_or("-").to_string(),
                json::time(i.created_at()),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["NAME", "STATE", "LATEST-ACTIVE", "CREATED"], &rows)
    );
    Ok(())
}

/// Left-aligned columns two spaces apart; the last column is not padded.
fn table<const N: usize>(head: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(head.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

async fn get(api: &Api, name: &str) -> Result<()> {
    let image = api
        .sdk
        .get_microvm_image()
        .image_identifier(name)
        .send()
        .await
        .map_err(|e| api.error("GetMicrovmImage", e))?;
    let mut pages = api
        .sdk
        .list_microvm_image_versions()
        .image_identifier(image.image_arn())
        .into_paginator()
        .send();
    let mut versions = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| api.error("ListMicrovmImageVersions", e))?;
        versions.extend(page.items().iter().map(json::version));
    }
    let mut v = json::image(&image);
    v["versions"] = versions.into();
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

async fn rm(api: &Api, name: &str, as_json: bool) -> Result<()> {
    let out = api
        .sdk
        .delete_microvm_image()
        .image_identifier(name)
        .send()
        .await
        .map_err(|e| api.error("DeleteMicrovmImage", e))?;
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "imageIdentifier": out.image_identifier(),
                "state": out.state().as_str(),
            }))?
        );
    } else {
        println!("{}\t{}", out.image_identifier(), out.state().as_str());
    }
    Ok(())
}

async fn logs(
    api: &Api,
    name: &str,
    version: Option<String>,
    build: Option<String>,
    follow_it: bool,
) -> Result<i32> {
    let image = api
        .sdk
        .get_microvm_image()
        .image_identifier(name)
        .send()
        .await
        .map_err(|e| api.error("GetMicrovmImage", e))?;
    let image_arn = image.image_arn().to_string();
    let version = match version {
        Some(v) => v,
        None => follow::latest_version(api, &image_arn)
            .await?
            .map(|v| v.image_version().to_string())
            .with_context(|| format!("image {name} has no versions"))?,
    };
    let build_id = match build {
        Some(b) => b,
        None => follow::latest_build(api, &image_arn, &version, std::time::Duration::ZERO)
            .await?
            .map(|b| b.build_id().to_string())
            .with_context(|| format!("version {version} of image {name} has no builds"))?,
    };
    let b = BuildRef {
        image_arn,
        version,
        build_id,
    };
    let mut printer = LinePrinter::new(false);
    if !follow_it {
        follow::print_log(api, &b, false, &mut printer).await?;
        return Ok(0);
    }
    let end = follow::follow(api, &b, &mut printer).await?;
    println!("{}", follow::final_state_text(&end));
    Ok(build_exit_code(end.build_state()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        v: VersionArgs,
    }

    fn parse(args: &[&str]) -> Result<VersionArgs, clap::Error> {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|t| t.v)
    }

    #[test]
    fn env_pairs_split_at_the_first_equals_and_refuse_bad_names() {
        assert_eq!(parse_env("A=1").unwrap(), ("A".into(), "1".into()));
        assert_eq!(
            parse_env("URL=postgres://u:p@h/db?x=y").unwrap(),
            ("URL".into(), "postgres://u:p@h/db?x=y".into())
        );
        assert_eq!(parse_env("EMPTY=").unwrap(), ("EMPTY".into(), "".into()));
        for bad in ["NOEQUALS", "=v", "A B=c", "\tX=1"] {
            assert!(parse_env(bad).is_err(), "{bad:?}");
        }
        assert!(parse_env(&format!("{}=v", "K".repeat(257))).is_err());
        let twice = [
            ("A".to_string(), "1".to_string()),
            ("A".to_string(), "2".to_string()),
        ];
        assert!(env_map(&twice).is_err());
    }

    #[test]
    fn version_flags_become_the_api_members() {
        let v = parse(&[
            "--code",
            "app",
            "--env",
            "A=1",
            "--env",
            "B=x=y",
            "--memory-mib",
            "1024",
            "--ready-hook",
            "--ready-timeout",
            "120",
            "--hook-port",
            "9000",
        ])
        .unwrap();
        assert_eq!(v.env.len(), 2);
        assert_eq!(
            v.resources().unwrap().unwrap().minimum_memory_in_mib(),
            1024
        );
        assert_eq!(
            json::hooks(&v.hooks().unwrap()),
            json!({
                "port": 9000,
                "microvmImageHooks": {
                    "ready": "ENABLED", "readyTimeoutInSeconds": 120,
                    "validate": "DISABLED", "validateTimeoutInSeconds": 30,
                }
            })
        );
        // No hook flags: no hooks member at all.
        let v = parse(&["--code", "app"]).unwrap();
        assert!(v.hooks().is_none());
        assert!(v.resources().unwrap().is_none());
        assert_eq!(v.base, "debian-12-python");
        // A timeout without the hook, and out-of-range values, are refused.
        assert!(parse(&["--code", "a", "--ready-timeout", "5"]).is_err());
        assert!(parse(&["--code", "a", "--ready-hook", "--ready-timeout", "0"]).is_err());
        assert!(parse(&["--code", "a", "--hook-port", "0"]).is_err());
        assert!(parse(&["--env", "A=1"]).is_err(), "--code is required");
    }

    #[test]
    fn base_names_become_managed_image_arns_and_arns_pass_through() {
        assert_eq!(
            base_image_arn("debian-12-python", "eu-west-1"),
            "arn:aws:lambda:eu-west-1:aws:microvm-image:debian-12-python"
        );
        let arn = "arn:aws:lambda:us-east-1:123456789012:microvm-image:img-x";
        assert_eq!(base_image_arn(arn, "eu-west-1"), arn);
        assert_eq!(arn_account(arn), Some("123456789012"));
        assert_eq!(
            arn_account("arn:aws:lambda:us-east-1:aws:microvm-image:b"),
            None
        );
    }

    #[test]
    fn a_table_pads_every_column_but_the_last() {
        let rows = [
            [
                "web".to_string(),
                "CREATED".to_string(),
                "2".to_string(),
                "t1".to_string(),
            ],
            [
                "a-longer-name".to_string(),
                "CREATING".to_string(),
                "-".to_string(),
                "t2".to_string(),
            ],
        ];
        assert_eq!(
            table(&["NAME", "STATE", "LATEST-ACTIVE", "CREATED"], &rows),
            "NAME           STATE     LATEST-ACTIVE  CREATED\n\
             web            CREATED   2              t1\n\
             a-longer-name  CREATING  -              t2\n"
        );
    }
}

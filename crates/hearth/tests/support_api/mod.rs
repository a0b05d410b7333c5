//! A live `hearth serve` for client tests, plus the Python client venv.
//!
//! The server runs as a child process on loopback ports it picks itself; its
//! data directory is a temp dir. Resources that only later issues can create
//! (images, versions, builds, microVMs) are seeded straight into its SQLite
//! store, as the builder and the RunMicrovm path will; SQLite's WAL lets the
//! test and the server share it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use hearth_store::{
    AccountId, NewBuild, NewImage, NewImageVersion, NewMicrovm, SqliteStore, Store,
};
use serde_json::{json, Value};

pub struct Server {
    pub child: Child,
    pub api: String,
    pub proxy: String,
    pub data: tempfile::TempDir,
    pub admin: Creds,
}

#[derive(Clone, Debug)]
pub struct Creds {
    pub account_id: String,
    pub access_key_id: String,
    pub secret: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn hearth() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hearth"))
}

impl Server {
    pub fn start() -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut child = hearth()
            .arg("--data-dir")
            .arg(data.path())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--proxy-listen",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start hearth serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let info: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        let creds = std::fs::read_to_string(data.path().join("credentials")).unwrap();
        let field = |k: &str| {
            creds
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k} = ")))
                .unwrap()
                .to_string()
        };
        let store = SqliteStore::open_in_dir(data.path()).unwrap();
        let access_key_id = field("aws_access_key_id");
        let (acct, _) = store.secret_for(&access_key_id).unwrap().unwrap();
        let admin = Creds {
            account_id: acct.to_string(),
            access_key_id,
            secret: field("aws_secret_access_key"),
        };
        Server {
            child,
            api: info["api"].as_str().unwrap().to_string(),
            proxy: info["proxy"].as_str().unwrap().to_string(),
            data,
            admin,
        }
    }

    pub fn store(&self) -> SqliteStore {
        SqliteStore::open_in_dir(self.data.path()).unwrap()
    }

    /// `hearth account create NAME` against this server's data dir.
    pub fn create_account(&self, name: &str) -> Creds {
        let out = hearth()
            .arg("--data-dir")
            .arg(self.data.path())
            .args(["account", "create", name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        Creds {
            account_id: v["accountId"].as_str().unwrap().into(),
            access_key_id: v["accessKeyId"].as_str().unwrap().into(),
            secret: v["secretAccessKey"].as_str().unwrap().into(),
        }
    }

    /// Seed an image with one version and one build; returns its ARN.
    pub fn seed_image(&self, creds: &Creds, name: &str) -> String {
        let st = self.store();
        let acct = AccountId::new(&creds.account_id).unwrap();
        let id = format!("img-{name}");
        let arn = format!(
            "arn:aws:lambda:us-east-1:{}:microvm-image:{id}",
            creds.account_id
        );
        st.create_image(
            &acct,
            &NewImage {
                image_id: id.clone(),
                name: name.into(),
                arn: arn.clone(),
                state: "CREATED".into(),
                created_at_secs: 1_790_000_000,
                doc: json!({ "latestActiveImageVersion": "1" }),
                tags: Default::default(),
            },
        )
        .unwrap();
        let base = "arn:aws:lambda:us-east-1:aws:microvm-image:debian-12-python";
        st.create_image_version(
            &acct,
            &id,
            &NewImageVersion {
                state: "SUCCESSFUL".into(),
                status: "ACTIVE".into(),
                created_at_secs: 1_790_000_001,
                doc: json!({
                    "baseImageArn": base,
                    "buildRoleArn": format!("arn:aws:iam::{}:role/build", creds.account_id),
                    "codeArtifact": { "uri": "s3://bucket/app.zip" },
                }),
            },
        )
        .unwrap();
        st.create_build(
            &acct,
            &NewBuild {
                image_id: id.clone(),
                version: "1".into(),
                build_id: "bld-1".into(),
                state: "SUCCESSFUL".into(),
                created_at_secs: 1_790_000_002,
                doc: json!({ "architecture": "X86_64", "chipset": "INTEL", "chipsetGeneration": "any" }),
            },
        )
        .unwrap();
        arn
    }

    /// Seed `n` running microVMs of an image.
    pub fn seed_microvms(&self, creds: &Creds, image_arn: &str, n: usize) -> Vec<String> {
        let st = self.store();
        let acct = AccountId::new(&creds.account_id).unwrap();
        (0..n)
            .map(|i| {
                let id = format!("mvm-{:05}{}", i, &creds.account_id[..4]);
                st.create_microvm(
                    &acct,
                    &NewMicrovm {
                        microvm_id: id.clone(),
                        image_arn: image_arn.into(),
                        image_version: "1".into(),
                        state: "RUNNING".into(),
                        created_at_secs: 1_790_000_100 + i as i64,
                        doc: json!({
                            "endpoint": format!("{id}.localhost"),
                            "maximumDurationInSeconds": 28800,
                            "startedAt": 1_790_000_100 + i as i64,
                        }),
                    },
                )
                .unwrap();
                id
            })
            .collect()
    }
}

/// The Python venv with awscli, boto3 and capo-lambda-microvms
/// (`scripts/test.sh` creates it). Missing = failure, never a skip.
pub fn pyenv() -> PathBuf {
    let p = std::env::var_os("HEARTH_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/pyenv"));
    assert!(
        p.join("bin/aws").is_file(),
        "client tests need the Python venv with awscli, boto3 and capo-lambda-microvms at {} (scripts/test.sh creates it)",
        p.display()
    );
    p
}

/// Run the aws CLI as `creds`; returns (exit code, stdout, stderr).
pub fn aws(server: &Server, creds: &Creds, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(pyenv().join("bin/aws"))
        .arg("--endpoint-url")
        .arg(&server.api)
        .arg("--region")
        .arg("us-east-1")
        .arg("--output")
        .arg("json")
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", server.data.path())
        .env("AWS_ACCESS_KEY_ID", &creds.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &creds.secret)
        .env("AWS_MAX_ATTEMPTS", "1")
        .output()
        .expect("run aws");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run a Python client script from tests/clients with the server's details.
pub fn python(server: &Server, script: &str, extra_env: &[(&str, &str)]) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let mut cmd = Command::new(pyenv().join("bin/python"));
    cmd.arg(path)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", server.data.path())
        .env("HEARTH_ENDPOINT", &server.api)
        .env("ADMIN_ACCOUNT", &server.admin.account_id)
        .env("AWS_ACCESS_KEY_ID", &server.admin.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &server.admin.secret)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_MAX_ATTEMPTS", "1");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed:\n--- stdout\n{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

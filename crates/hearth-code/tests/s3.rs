//! s3:// artifacts against a real S3-compatible server: moto's server mode,
//! started by the test from the project's Python venv (scripts/test.sh
//! installs it). A missing moto fails the test; it never skips.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use hearth_code::{
    unpack_zip, CodeError, CodeSource, FetchLimits, Fetcher, S3Config, SourceConfig, UnpackLimits,
    Uploads,
};
use sha2::{Digest, Sha256};
use support::*;

/// The Python venv with moto (`scripts/test.sh` creates it).
fn pyenv() -> PathBuf {
    std::env::var_os("HEARTH_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/pyenv"))
}

const MOTO: &str = r#"
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # until the test ends and its end of the pipe closes
"#;

/// moto's S3 server on a free loopback port; killed when dropped.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start() -> Moto {
        let python = pyenv().join("bin/python");
        assert!(
            python.is_file(),
            "the s3:// tests need the Python venv with moto[server] at {} (scripts/test.sh creates it)",
            pyenv().display()
        );
        let mut child = Command::new(&python)
            .arg("-c")
            .arg(MOTO)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start python");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_default();
        let Ok(port) = line.trim().parse::<u16>() else {
            let _ = child.kill();
            let mut stderr = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
            let _ = child.wait();
            panic!(
                "moto's S3 server did not start (is moto[server] installed in {}? scripts/test.sh installs it):\n{stderr}",
                pyenv().display()
            );
        };
        Moto { child, port }
    }

    fn config(&self) -> S3Config {
        S3Config {
            endpoint_url: Some(format!("http://127.0.0.1:{}", self.port)),
            region: "us-east-1".into(),
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
            force_path_style: true,
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client of our own, to put the test's objects in place.
fn client(cfg: &S3Config) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(cfg.region.clone()))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            &cfg.access_key_id,
            &cfg.secret_access_key,
            None,
            None,
            "test",
        ))
        .endpoint_url(cfg.endpoint_url.clone().unwrap())
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

fn fetcher(s3: S3Config, data: &std::path::Path) -> Fetcher {
    Fetcher::new(
        SourceConfig {
            artifact_roots: Vec::new(),
            s3: Some(s3),
        },
        Uploads::new(data.join("uploads")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_artifact_is_downloaded_whole_with_its_sha256_and_a_missing_one_is_not_found() {
    let moto = Moto::start();
    let cfg = moto.config();
    let s3 = client(&cfg);
    s3.create_bucket()
        .bucket("code-bucket")
        .send()
        .await
        .unwrap();

    // A few hundred KiB of poorly compressible data: many body pieces.
    let payload: Vec<u8> = (0..400_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let zip = zip_bytes(&[
        Item::File("Dockerfile", b"FROM debian-12-python\n"),
        Item::Stored("app/blob.bin", &payload),
    ]);
    s3.put_object()
        .bucket("code-bucket")
        .key("apps/app v1.zip")
        .body(ByteStream::from(zip.clone()))
        .send()
        .await
        .unwrap();

    let data = tempfile::tempdir().unwrap();
    let fetcher = fetcher(cfg.clone(), data.path());
    let source = fetcher.parse("s3://code-bucket/apps/app v1.zip").unwrap();
    assert_eq!(
        source,
        CodeSource::S3 {
            bucket: "code-bucket".into(),
            key: "apps/app v1.zip".into()
        }
    );
    let dest = data.path().join("artifact.zip");
    let fetched = fetcher
        .fetch(&source, "111122223333", &dest, &FetchLimits::default())
        .await
        .unwrap();
    assert_eq!(fetched.size_bytes, zip.len() as u64);
    assert_eq!(fetched.sha256_hex, hex::encode(Sha256::digest(&zip)));
    assert_eq!(std::fs::read(&dest).unwrap(), zip);
    let summary = unpack_zip(&dest, &data.path().join("ctx"), &UnpackLimits::default()).unwrap();
    assert_eq!(summary.file_count, 2);

    // A missing key and a missing bucket: NotFound, and no file left.
    for uri in [
        "s3://code-bucket/apps/missing.zip",
        "s3://no-such-bucket/app.zip",
    ] {
        let source = fetcher.parse(uri).unwrap();
        let dest = data.path().join("missing.zip");
        let err = fetcher
            .fetch(&source, "111122223333", &dest, &FetchLimits::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, CodeError::S3NotFound { .. }),
            "{uri}: {err:?}"
        );
        assert!(err.to_string().ends_with("was not found"), "{err}");
        assert!(
            !err.to_string().contains("127.0.0.1"),
            "the endpoint is not shown: {err}"
        );
        assert!(!dest.exists());
    }

    // Over the size limit: refused, nothing left.
    let dest = data.path().join("big.zip");
    let err = fetcher
        .fetch(
            &source,
            "111122223333",
            &dest,
            &FetchLimits {
                max_archive_bytes: 100_000,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, CodeError::TooLarge { max_bytes: 100_000 }),
        "{err:?}"
    );
    assert!(!dest.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_reported_without_its_address() {
    // A port nobody listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let cfg = S3Config {
        endpoint_url: Some(format!("http://127.0.0.1:{port}")),
        region: "us-east-1".into(),
        access_key_id: "testing".into(),
        secret_access_key: "testing".into(),
        force_path_style: true,
    };
    let data = tempfile::tempdir().unwrap();
    let fetcher = fetcher(cfg, data.path());
    let source = fetcher.parse("s3://code-bucket/app.zip").unwrap();
    let dest = data.path().join("a.zip");
    let err = fetcher
        .fetch(&source, "111122223333", &dest, &FetchLimits::default())
        .await
        .unwrap_err();
    assert!(matches!(err, CodeError::S3Unreachable { .. }), "{err:?}");
    assert!(!err.to_string().contains(&port.to_string()), "{err}");
    assert!(!dest.exists());
}

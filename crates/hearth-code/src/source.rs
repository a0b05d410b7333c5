//! Code URIs: which artifact a build names, and whether it may.
//!
//! [`CodeSource::parse`] turns a `codeUri` into a [`CodeSource`] or refuses
//! it; it touches the file system only for `file://` URIs under an artifact
//! root (so a refused path never says whether something exists elsewhere
//! on the host). Pure and quick: called on the API handler's task.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use crate::error::CodeError;
use crate::names::ShownName;
use crate::uploads::UploadId;

/// Where the server may take artifacts from.
#[derive(Debug, Clone, Default)]
pub struct SourceConfig {
    /// Directories `file://` artifacts may be under (`--artifact-root`).
    /// None: `file://` is disabled.
    pub artifact_roots: Vec<PathBuf>,
    /// The S3-compatible endpoint for `s3://` artifacts. None: disabled.
    pub s3: Option<S3Config>,
}

/// An S3-compatible object store and the static credentials to read it.
#[derive(Clone)]
pub struct S3Config {
    /// `http(s)://host:port` of an S3-compatible server; None for AWS S3.
    pub endpoint_url: Option<String>,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Address buckets as `endpoint/bucket/key` rather than
    /// `bucket.endpoint/key` (most self-hosted servers need this).
    pub force_path_style: bool,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint_url", &self.endpoint_url)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("force_path_style", &self.force_path_style)
            .finish()
    }
}

/// A code artifact a build may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeSource {
    /// A zip on the server's disk, under an artifact root.
    File {
        /// The path as the caller wrote it (shown in messages).
        path: String,
        /// Its canonical form, checked to be under a root.
        canonical: PathBuf,
    },
    /// An object in the configured S3-compatible store.
    S3 { bucket: String, key: String },
    /// An artifact uploaded to this server by the caller's account.
    Upload { id: UploadId },
}

impl fmt::Display for CodeSource {
    /// The URI, as it would be written in a request.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodeSource::File { path, .. } => write!(f, "file://{path}"),
            CodeSource::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
            CodeSource::Upload { id } => write!(f, "upload://{id}"),
        }
    }
}

/// Longest S3 object key S3 accepts, in bytes.
const MAX_S3_KEY_BYTES: usize = 1024;

impl CodeSource {
    /// Parse and check a code URI against what `cfg` allows.
    pub fn parse(uri: &str, cfg: &SourceConfig) -> Result<CodeSource, CodeError> {
        if let Some(rest) = uri.strip_prefix("file://") {
            return parse_file(rest, cfg);
        }
        if let Some(rest) = uri.strip_prefix("s3://") {
            if cfg.s3.is_none() {
                return Err(CodeError::S3Disabled);
            }
            return parse_s3(rest);
        }
        if let Some(rest) = uri.strip_prefix("upload://") {
            return Ok(CodeSource::Upload {
                id: UploadId::parse(rest)?,
            });
        }
        let scheme = match uri.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://"),
            None => uri.to_owned(),
        };
        Err(CodeError::UnsupportedScheme {
            scheme: ShownName::new(&scheme),
        })
    }
}

fn parse_file(rest: &str, cfg: &SourceConfig) -> Result<CodeSource, CodeError> {
    if cfg.artifact_roots.is_empty() {
        return Err(CodeError::FileDisabled);
    }
    let shown = ShownName::new(rest);
    let bad = |reason| CodeError::FileBadPath {
        path: shown.clone(),
        reason,
    };
    if rest.is_empty() {
        return Err(bad("it is empty (write file:///path/to/code.zip)"));
    }
    if !rest.starts_with('/') {
        return Err(bad(
            "it must be absolute, with no host (write file:///path/to/code.zip)",
        ));
    }
    if rest.chars().any(char::is_control) {
        return Err(bad("it contains a control character"));
    }
    let path = Path::new(rest);
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(bad("it has a `..` component"));
    }
    // Lexically under a root first: a path elsewhere is refused without
    // looking at it, so the answer never says what exists on the host.
    let roots = canonical_roots(&cfg.artifact_roots);
    let lexically_under = cfg
        .artifact_roots
        .iter()
        .chain(roots.iter())
        .any(|root| path.starts_with(root) && path != root);
    if !lexically_under {
        return Err(CodeError::FileOutsideRoots { path: shown });
    }
    let canonical = match path.canonicalize() {
        Ok(p) => p,
        Err(_) => return Err(CodeError::FileNotFound { path: shown }),
    };
    // Symbolic links inside a root may not lead out of every root.
    if !under_any(&canonical, &roots) {
        return Err(CodeError::FileOutsideRoots { path: shown });
    }
    match std::fs::metadata(&canonical) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Err(CodeError::FileNotRegular { path: shown }),
        Err(_) => return Err(CodeError::FileNotFound { path: shown }),
    }
    Ok(CodeSource::File {
        path: rest.to_owned(),
        canonical,
    })
}

/// The configured roots that exist, canonicalized.
pub(crate) fn canonical_roots(roots: &[PathBuf]) -> Vec<PathBuf> {
    roots.iter().filter_map(|r| r.canonicalize().ok()).collect()
}

/// Whether canonical `path` is strictly below one of the canonical `roots`.
pub(crate) fn under_any(path: &Path, roots: &[PathBuf]) -> bool {
    roots
        .iter()
        .any(|root| path.starts_with(root) && path != root)
}

fn parse_s3(rest: &str) -> Result<CodeSource, CodeError> {
    let invalid = |reason: String| CodeError::InvalidS3Uri { reason };
    let Some((bucket, key)) = rest.split_once('/') else {
        return Err(invalid("write it as s3://bucket/key".into()));
    };
    check_bucket(bucket).map_err(|why| invalid(format!("bucket name {why}")))?;
    if key.is_empty() {
        return Err(invalid(
            "the object key is empty (write s3://bucket/key)".into(),
        ));
    }
    if key.len() > MAX_S3_KEY_BYTES {
        return Err(invalid(format!(
            "the object key is {} bytes, more than {MAX_S3_KEY_BYTES}",
            key.len()
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(invalid(
            "the object key contains a control character".into(),
        ));
    }
    Ok(CodeSource::S3 {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
    })
}

/// S3's bucket naming rules (general purpose buckets).
fn check_bucket(bucket: &str) -> Result<(), String> {
    let shown = ShownName::new(bucket);
    if !(3..=63).contains(&bucket.len()) {
        return Err(format!("{shown} must be 3 to 63 characters long"));
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return Err(format!(
            "{shown} may only contain lowercase letters, digits, `.` and `-`"
        ));
    }
    let bytes = bucket.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(format!("{shown} must start and end with a letter or digit"));
    }
    if bucket.contains("..") {
        return Err(format!("{shown} may not contain `..`"));
    }
    if bucket.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(format!("{shown} may not be an IP address"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(roots: &[&Path]) -> SourceConfig {
        SourceConfig {
            artifact_roots: roots.iter().map(|r| r.to_path_buf()).collect(),
            s3: None,
        }
    }

    fn with_s3() -> SourceConfig {
        SourceConfig {
            artifact_roots: Vec::new(),
            s3: Some(S3Config {
                endpoint_url: Some("http://127.0.0.1:9".into()),
                region: "us-east-1".into(),
                access_key_id: "k".into(),
                secret_access_key: "s".into(),
                force_path_style: true,
            }),
        }
    }

    #[test]
    fn file_uris_are_refused_when_no_root_is_configured() {
        let dir = tempfile::tempdir().unwrap();
        let zip = dir.path().join("a.zip");
        std::fs::write(&zip, b"x").unwrap();
        let err = CodeSource::parse(&format!("file://{}", zip.display()), &cfg(&[])).unwrap_err();
        assert!(matches!(err, CodeError::FileDisabled));
        assert_eq!(
            err.to_string(),
            "file:// artifacts are disabled: start the server with --artifact-root DIR"
        );
    }

    #[test]
    fn a_file_under_a_root_is_accepted_in_canonical_form() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("sub")).unwrap();
        let zip = root.path().join("sub/app.zip");
        std::fs::write(&zip, b"x").unwrap();
        let uri = format!("file://{}", zip.display());
        let source = CodeSource::parse(&uri, &cfg(&[root.path()])).unwrap();
        let CodeSource::File { path, canonical } = &source else {
            panic!("{source:?}")
        };
        assert_eq!(path, &zip.display().to_string());
        assert_eq!(canonical, &zip.canonicalize().unwrap());
        assert_eq!(source.to_string(), uri);
    }

    #[test]
    fn file_paths_outside_roots_relative_or_with_dotdot_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let outside = other.path().join("x.zip");
        std::fs::write(&outside, b"x").unwrap();
        let c = cfg(&[root.path()]);

        let err = CodeSource::parse(&format!("file://{}", outside.display()), &c).unwrap_err();
        assert!(matches!(err, CodeError::FileOutsideRoots { .. }), "{err}");
        assert!(err.to_string().contains("is not under an artifact root"));

        let dotdot = format!("file://{}/../{}", root.path().display(), "x.zip");
        let err = CodeSource::parse(&dotdot, &c).unwrap_err();
        assert!(matches!(err, CodeError::FileBadPath { .. }), "{err}");
        assert!(err.to_string().contains("`..`"));

        for relative in ["file://x.zip", "file://host/x.zip", "file://"] {
            let err = CodeSource::parse(relative, &c).unwrap_err();
            assert!(
                matches!(err, CodeError::FileBadPath { .. }),
                "{relative}: {err}"
            );
        }
        let err = CodeSource::parse(&format!("file://{}", root.path().display()), &c).unwrap_err();
        assert!(
            matches!(err, CodeError::FileOutsideRoots { .. }),
            "the root itself: {err}"
        );
    }

    #[test]
    fn a_missing_path_outside_roots_does_not_say_it_is_missing() {
        let root = tempfile::tempdir().unwrap();
        let err =
            CodeSource::parse("file:///nonexistent/secret.zip", &cfg(&[root.path()])).unwrap_err();
        assert!(matches!(err, CodeError::FileOutsideRoots { .. }), "{err}");
        let missing = format!("file://{}/missing.zip", root.path().display());
        let err = CodeSource::parse(&missing, &cfg(&[root.path()])).unwrap_err();
        assert!(matches!(err, CodeError::FileNotFound { .. }), "{err}");
        assert!(err.to_string().ends_with("does not exist"));
    }

    #[test]
    fn a_symlink_out_of_the_root_and_a_directory_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let target = other.path().join("secret.zip");
        std::fs::write(&target, b"x").unwrap();
        let link = root.path().join("link.zip");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let c = cfg(&[root.path()]);
        let err = CodeSource::parse(&format!("file://{}", link.display()), &c).unwrap_err();
        assert!(matches!(err, CodeError::FileOutsideRoots { .. }), "{err}");
        assert!(
            !err.to_string()
                .contains(&other.path().display().to_string()),
            "the message does not reveal where the link points: {err}"
        );

        std::fs::create_dir(root.path().join("d.zip")).unwrap();
        let dir = format!("file://{}/d.zip", root.path().display());
        let err = CodeSource::parse(&dir, &c).unwrap_err();
        assert!(matches!(err, CodeError::FileNotRegular { .. }), "{err}");

        // A link that stays inside the root is fine.
        let inside = root.path().join("real.zip");
        std::fs::write(&inside, b"x").unwrap();
        std::os::unix::fs::symlink(&inside, root.path().join("alias.zip")).unwrap();
        let alias = format!("file://{}/alias.zip", root.path().display());
        let source = CodeSource::parse(&alias, &c).unwrap();
        assert!(
            matches!(&source, CodeSource::File { canonical, .. } if *canonical == inside.canonicalize().unwrap())
        );
    }

    #[test]
    fn s3_uris_need_a_configured_endpoint_and_valid_names() {
        let err = CodeSource::parse("s3://bucket/key.zip", &cfg(&[])).unwrap_err();
        assert!(matches!(err, CodeError::S3Disabled));
        assert!(err.to_string().contains("s3:// artifacts are disabled"));

        let c = with_s3();
        assert_eq!(
            CodeSource::parse("s3://my-bucket.1/dir/app.zip", &c).unwrap(),
            CodeSource::S3 {
                bucket: "my-bucket.1".into(),
                key: "dir/app.zip".into()
            }
        );
        for bad in [
            "s3://bucket",
            "s3://bucket/",
            "s3://b/key",
            "s3://Bucket/key",
            "s3://my_bucket/key",
            "s3://-bucket/key",
            "s3://bucket-/key",
            "s3://my..bucket/key",
            "s3://192.168.1.1/key",
            "s3:///key",
            "s3://bucket/a\nb",
        ] {
            let err = CodeSource::parse(bad, &c).unwrap_err();
            assert!(
                matches!(err, CodeError::InvalidS3Uri { .. }),
                "{bad}: {err}"
            );
        }
        let long = format!("s3://bucket/{}", "k".repeat(1025));
        assert!(matches!(
            CodeSource::parse(&long, &c),
            Err(CodeError::InvalidS3Uri { .. })
        ));
    }

    #[test]
    fn upload_uris_carry_a_valid_id() {
        let id = UploadId::generate();
        assert_eq!(
            CodeSource::parse(&format!("upload://{id}"), &cfg(&[])).unwrap(),
            CodeSource::Upload { id: id.clone() }
        );
        assert!(matches!(
            CodeSource::parse("upload://upl-../../etc", &cfg(&[])),
            Err(CodeError::InvalidUploadId)
        ));
    }

    #[test]
    fn other_schemes_are_refused_naming_the_accepted_ones() {
        for uri in [
            "http://example.com/a.zip",
            "https://example.com/a.zip",
            "ftp://x/a.zip",
            "/abs/a.zip",
            "a.zip",
            "FILE:///a.zip",
        ] {
            let err = CodeSource::parse(uri, &with_s3()).unwrap_err();
            assert!(matches!(err, CodeError::UnsupportedScheme { .. }), "{uri}");
            let msg = err.to_string();
            assert!(
                msg.contains("file://") && msg.contains("s3://") && msg.contains("upload://"),
                "{msg}"
            );
        }
    }

    #[test]
    fn s3_config_debug_hides_the_secret() {
        let c = with_s3();
        let shown = format!("{:?}", c.s3.unwrap());
        assert!(!shown.contains("secret_access_key: \"s\""), "{shown}");
        assert!(shown.contains("<redacted>"));
    }
}

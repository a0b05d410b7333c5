//! Where an API client's static credentials come from, in this order:
//!
//! 1. `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (both, or neither);
//! 2. the profile `AWS_PROFILE` (default `default`) of the file named by
//!    `AWS_SHARED_CREDENTIALS_FILE`;
//! 3. the `[default]` profile of `<data-dir>/credentials`, the file
//!    `hearth serve` writes on its first start.
//!
//! `~/.aws/credentials` is not read: keys for AWS itself are no use against
//! a Hearth server. Session tokens are not used either (Hearth issues none,
//! and refuses a request that carries one). Plain blocking file reads, on
//! the command's task, once per command.

use std::path::{Path, PathBuf};

/// An access key pair and where it was found.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub source: CredentialSource,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("source", &self.source)
            .finish()
    }
}

/// Where [`resolve`] found the credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    Environment,
    File { path: PathBuf, profile: String },
}

/// Why no credentials could be found.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not (or the other way round)")]
    HalfEnvironment,
    #[error("could not read the credentials file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the credentials file {path} has no profile [{profile}] with aws_access_key_id and aws_secret_access_key")]
    NoProfile { path: PathBuf, profile: String },
    #[error("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_SHARED_CREDENTIALS_FILE, or start `hearth serve` with this --data-dir ({path} does not exist)")]
    Nothing { path: PathBuf },
}

/// Find credentials; `env` reads an environment variable (empty counts as
/// unset).
pub fn resolve(
    env: &dyn Fn(&str) -> Option<String>,
    data_dir: &Path,
) -> Result<StaticCredentials, CredentialsError> {
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
    match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(access_key_id), Some(secret_access_key)) => {
            return Ok(StaticCredentials {
                access_key_id,
                secret_access_key,
                source: CredentialSource::Environment,
            })
        }
        (None, None) => {}
        _ => return Err(CredentialsError::HalfEnvironment),
    }
    if let Some(path) = var("AWS_SHARED_CREDENTIALS_FILE") {
        let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
        return from_file(Path::new(&path), &profile);
    }
    let path = data_dir.join("credentials");
    if !path.exists() {
        return Err(CredentialsError::Nothing { path });
    }
    from_file(&path, "default")
}

fn from_file(path: &Path, profile: &str) -> Result<StaticCredentials, CredentialsError> {
    let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let (access_key_id, secret_access_key) =
        parse_profile(&text, profile).ok_or_else(|| CredentialsError::NoProfile {
            path: path.to_path_buf(),
            profile: profile.to_string(),
        })?;
    Ok(StaticCredentials {
        access_key_id,
        secret_access_key,
        source: CredentialSource::File {
            path: path.to_path_buf(),
            profile: profile.to_string(),
        },
    })
}

/// The key pair of `[profile]` in an AWS shared-credentials INI text: lines
/// `key = value` under `[name]` headers, `#` and `;` comment lines, key
/// names case-insensitive, the last value of a repeated key wins (as in
/// botocore). A repeated section adds to the first.
pub fn parse_profile(text: &str, profile: &str) -> Option<(String, String)> {
    let mut in_profile = false;
    let (mut akid, mut secret) = (None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest.strip_suffix(']').map(str::trim);
            in_profile = name == Some(profile);
            continue;
        }
        if !in_profile {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().to_string();
        match k.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => akid = Some(v),
            "aws_secret_access_key" => secret = Some(v),
            _ => {}
        }
    }
    match (akid, secret) {
        (Some(a), Some(s)) if !a.is_empty() && !s.is_empty() => Some((a, s)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const SERVE_FILE: &str = "# Hearth admin account 123456789012; created by `hearth serve` on first start.\n[default]\naws_access_key_id = AKIAHEARTH\naws_secret_access_key = s3cr3t/+=\n";

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn parses_the_file_hearth_serve_writes() {
        assert_eq!(
            parse_profile(SERVE_FILE, "default"),
            Some(("AKIAHEARTH".into(), "s3cr3t/+=".into()))
        );
        assert_eq!(parse_profile(SERVE_FILE, "other"), None);
    }

    #[test]
    fn picks_the_named_profile_among_several_with_comments_and_odd_spacing() {
        let text = "[default]\naws_access_key_id=A1\naws_secret_access_key=S1\n\n; note\n[ work ]\n  AWS_ACCESS_KEY_ID   =   A2  \n# c\nregion = eu-west-1\naws_secret_access_key= S2\n[later]\naws_access_key_id = A3\n";
        assert_eq!(
            parse_profile(text, "work"),
            Some(("A2".into(), "S2".into()))
        );
        assert_eq!(
            parse_profile(text, "default"),
            Some(("A1".into(), "S1".into()))
        );
        // A profile with only one half of the pair is no profile.
        assert_eq!(parse_profile(text, "later"), None);
    }

    #[test]
    fn environment_wins_over_every_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("credentials"), SERVE_FILE).unwrap();
        let c = resolve(
            &env_of(&[("AWS_ACCESS_KEY_ID", "E"), ("AWS_SECRET_ACCESS_KEY", "ES")]),
            d.path(),
        )
        .unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.secret_access_key.as_str()),
            ("E", "ES")
        );
        assert_eq!(c.source, CredentialSource::Environment);
    }

    #[test]
    fn half_an_environment_pair_is_an_error_not_a_fallback() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("credentials"), SERVE_FILE).unwrap();
        let e = resolve(&env_of(&[("AWS_ACCESS_KEY_ID", "E")]), d.path()).unwrap_err();
        assert!(matches!(e, CredentialsError::HalfEnvironment), "{e}");
    }

    #[test]
    fn shared_credentials_file_and_profile_come_before_the_data_dir() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("credentials"), SERVE_FILE).unwrap();
        let shared = d.path().join("shared");
        std::fs::write(
            &shared,
            "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n[dev]\naws_access_key_id = V\naws_secret_access_key = VS\n",
        )
        .unwrap();
        let s = shared.to_str().unwrap();
        let c = resolve(&env_of(&[("AWS_SHARED_CREDENTIALS_FILE", s)]), d.path()).unwrap();
        assert_eq!(c.access_key_id, "D");
        let c = resolve(
            &env_of(&[("AWS_SHARED_CREDENTIALS_FILE", s), ("AWS_PROFILE", "dev")]),
            d.path(),
        )
        .unwrap();
        assert_eq!(c.access_key_id, "V");
        assert_eq!(
            c.source,
            CredentialSource::File {
                path: shared.clone(),
                profile: "dev".into()
            }
        );
        // A named profile that is missing is an error, not a silent fallback.
        let e = resolve(
            &env_of(&[("AWS_SHARED_CREDENTIALS_FILE", s), ("AWS_PROFILE", "nope")]),
            d.path(),
        )
        .unwrap_err();
        assert!(matches!(e, CredentialsError::NoProfile { .. }), "{e}");
    }

    #[test]
    fn falls_back_to_the_data_dir_file_and_says_when_there_is_none() {
        let d = tempfile::tempdir().unwrap();
        let e = resolve(&env_of(&[]), d.path()).unwrap_err();
        assert!(matches!(e, CredentialsError::Nothing { .. }), "{e}");
        std::fs::write(d.path().join("credentials"), SERVE_FILE).unwrap();
        // Empty variables count as unset.
        let c = resolve(&env_of(&[("AWS_ACCESS_KEY_ID", "")]), d.path()).unwrap();
        assert_eq!(c.access_key_id, "AKIAHEARTH");
        assert!(
            !format!("{c:?}").contains("s3cr3t"),
            "Debug shows the secret"
        );
    }
}

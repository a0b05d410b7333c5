//! The `hearth` CLI as an API client of a running `hearth serve`, like the
//! aws CLI: where the server is (`--endpoint-url`, `HEARTH_ENDPOINT`), the
//! region and credentials ([`creds`]), the official Rust SDK client built
//! from them, signed requests to Hearth's own `/hearth/v1/...` endpoints
//! ([`raw`]), and API errors printed as the aws CLI prints them (exit 255).
//!
//! Shared by the commands that talk to the API (`hearth image ...`, and
//! later `run`, `ls`, `get`, `curl`). Everything runs on the command's
//! Tokio task.

pub mod creds;
pub mod raw;

use std::path::Path;

use aws_sdk_lambdamicrovms::config::{Credentials, Region};
use aws_sdk_lambdamicrovms::error::{ProvideErrorMetadata, SdkError};
use clap::Args;

use creds::StaticCredentials;

/// Where the API server is; flattened into each API command's arguments.
#[derive(Args, Clone, Debug)]
pub struct ClientArgs {
    /// The Hearth API server.
    #[arg(
        long,
        global = true,
        env = "HEARTH_ENDPOINT",
        default_value = "http://127.0.0.1:9800"
    )]
    pub endpoint_url: String,
    /// The region requests are signed for (default: $AWS_REGION, then
    /// $AWS_DEFAULT_REGION, then us-east-1); must be the server's.
    #[arg(long, global = true)]
    pub region: Option<String>,
}

/// The exit code of a command that failed with an API error, as the aws CLI.
pub const API_ERROR_EXIT_CODE: i32 = 255;

/// End a client command: an API error is printed (after whatever the
/// command printed) and exits with [`API_ERROR_EXIT_CODE`]; any other
/// nonzero code the command asked for exits with that code once stdout is
/// flushed; other errors are returned to `main`.
pub fn finish(outcome: anyhow::Result<i32>) -> anyhow::Result<()> {
    let code = match outcome {
        Ok(code) => code,
        Err(e) => match e.downcast_ref::<ApiCallError>() {
            Some(api) => {
                eprintln!("\n{api}");
                API_ERROR_EXIT_CODE
            }
            None => return Err(e),
        },
    };
    if code != 0 {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        std::process::exit(code);
    }
    Ok(())
}

/// An API call that failed; printed as the aws CLI prints it.
#[derive(Debug, thiserror::Error)]
pub enum ApiCallError {
    /// The server answered with an error shape.
    #[error("An error occurred ({code}) when calling the {operation} operation: {message}")]
    Service {
        operation: &'static str,
        code: String,
        message: String,
    },
    /// No answer: connection refused, timeout, a broken connection.
    #[error(
        "Could not reach the endpoint URL {endpoint:?} for the {operation} operation: {detail}"
    )]
    Transport {
        operation: &'static str,
        endpoint: String,
        detail: String,
    },
}

impl ApiCallError {
    /// The error shape's name, when the server answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            ApiCallError::Service { code, .. } => Some(code),
            ApiCallError::Transport { .. } => None,
        }
    }
}

/// Why the client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientSetupError {
    #[error("--endpoint-url {url:?}: {problem}")]
    Endpoint { url: String, problem: &'static str },
    #[error(transparent)]
    Credentials(#[from] creds::CredentialsError),
}

/// The endpoint URL, split for raw requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// As given (the SDK takes it as is).
    pub url: String,
    /// `host:port` (the scheme's port added when absent).
    pub authority: String,
    /// `https://`: the SDK speaks it, the raw client does not.
    pub tls: bool,
    /// A path prefix without a trailing slash (usually empty).
    pub path_prefix: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, ClientSetupError> {
        let bad = |problem| ClientSetupError::Endpoint {
            url: url.to_string(),
            problem,
        };
        let (rest, tls) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (rest, false),
            (None, Some(rest)) => (rest, true),
            (None, None) => return Err(bad("it must start with http:// or https://")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("no host, or credentials in the URL"));
        }
        if path.contains('?') || path.contains('#') {
            return Err(bad("a query or fragment is not allowed"));
        }
        let has_port = match authority.rsplit_once(':') {
            // `[::1]` alone has colons but no port.
            Some((host, port)) => {
                let bracketed_or_plain = !host.starts_with('[') || host.ends_with(']');
                bracketed_or_plain && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
            }
            None => false,
        };
        let authority = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:{}", if tls { 443 } else { 80 })
        };
        Ok(Endpoint {
            url: url.to_string(),
            authority,
            tls,
            path_prefix: path.trim_end_matches('/').to_string(),
        })
    }
}

/// A ready API client.
pub struct Api {
    pub sdk: aws_sdk_lambdamicrovms::Client,
    pub endpoint: Endpoint,
    pub region: String,
    pub creds: StaticCredentials,
}

impl Api {
    /// Build the client from the arguments, the process environment and the
    /// server's data directory (for its credentials file).
    pub fn new(args: &ClientArgs, data_dir: &Path) -> Result<Api, ClientSetupError> {
        let env = |k: &str| std::env::var(k).ok();
        let endpoint = Endpoint::parse(&args.endpoint_url)?;
        let region = args
            .region
            .clone()
            .or_else(|| env("AWS_REGION").filter(|r| !r.is_empty()))
            .or_else(|| env("AWS_DEFAULT_REGION").filter(|r| !r.is_empty()))
            .unwrap_or_else(|| "us-east-1".to_string());
        let creds = creds::resolve(&env, data_dir)?;
        let conf = aws_sdk_lambdamicrovms::Config::builder()
            .endpoint_url(&endpoint.url)
            .region(Region::new(region.clone()))
            .credentials_provider(Credentials::new(
                &creds.access_key_id,
                &creds.secret_access_key,
                None,
                None,
                "hearth-cli",
            ))
            .behavior_version_latest()
            .build();
        Ok(Api {
            sdk: aws_sdk_lambdamicrovms::Client::from_conf(conf),
            endpoint,
            region,
            creds,
        })
    }

    /// Turn an SDK error into what the aws CLI would print.
    pub fn error<E, R>(&self, operation: &'static str, err: SdkError<E, R>) -> ApiCallError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        sdk_error(&self.endpoint.url, operation, err)
    }

    /// One signed request to an extension endpoint; a non-2xx answer is
    /// returned as the API error it carries.
    pub async fn raw(
        &self,
        operation: &'static str,
        method: &'static str,
        path_and_query: &str,
        body: raw::RawBody,
    ) -> Result<raw::RawResponse, ApiCallError> {
        let r = raw::send(
            &self.endpoint,
            &self.region,
            &self.creds,
            method,
            path_and_query,
            body,
        )
        .await
        .map_err(|e| ApiCallError::Transport {
            operation,
            endpoint: self.endpoint.url.clone(),
            detail: error_chain(&e),
        })?;
        if (200..300).contains(&r.status) {
            Ok(r)
        } else {
            Err(r.into_api_error(operation).await)
        }
    }
}

/// See [`Api::error`].
pub fn sdk_error<E, R>(endpoint: &str, operation: &'static str, err: SdkError<E, R>) -> ApiCallError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    if let SdkError::ServiceError(se) = &err {
        let e = se.err();
        if let Some(code) = e.code() {
            return ApiCallError::Service {
                operation,
                code: code.to_string(),
                message: e.message().unwrap_or("").to_string(),
            };
        }
    }
    ApiCallError::Transport {
        operation,
        endpoint: endpoint.to_string(),
        detail: error_chain(&err),
    }
}

/// An error and its sources, `: `-separated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls_split_into_authority_and_prefix() {
        let e = Endpoint::parse("http://127.0.0.1:9800").unwrap();
        assert_eq!(
            (e.authority.as_str(), e.path_prefix.as_str()),
            ("127.0.0.1:9800", "")
        );
        let e = Endpoint::parse("http://hearth.local/api/").unwrap();
        assert_eq!(
            (e.authority.as_str(), e.path_prefix.as_str()),
            ("hearth.local:80", "/api")
        );
        let e = Endpoint::parse("http://[::1]:9800/").unwrap();
        assert_eq!(e.authority, "[::1]:9800");
        let e = Endpoint::parse("http://[::1]").unwrap();
        assert_eq!(e.authority, "[::1]:80");
        let e = Endpoint::parse("https://h").unwrap();
        assert_eq!((e.authority.as_str(), e.tls), ("h:443", true));
        for bad in [
            "ftp://x:1",
            "127.0.0.1:9800",
            "http://",
            "http://u:p@h:1",
            "http://h:1/?q",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn api_errors_read_like_the_aws_cli() {
        let e = ApiCallError::Service {
            operation: "CreateMicrovmImage",
            code: "ValidationException".into(),
            message: "bad base".into(),
        };
        assert_eq!(
            e.to_string(),
            "An error occurred (ValidationException) when calling the CreateMicrovmImage operation: bad base"
        );
        assert_eq!(e.code(), Some("ValidationException"));
    }
}

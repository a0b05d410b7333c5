//! Server-side verification of AWS Signature Version 4 (`AWS4-HMAC-SHA256` in the
//! `Authorization` header) for the Hearth Lambda MicroVMs API.
//!
//! This crate owns everything between "an HTTP request arrived" and "this request was
//! signed by the holder of access key X": parsing the `Authorization` header, rebuilding
//! the canonical request exactly as the real AWS clients build it (aws CLI / botocore,
//! boto3, the JavaScript SDK v3 and the Rust SDK via `aws-sigv4`), checking the clock,
//! and comparing signatures in constant time. It does not own key storage (the caller
//! passes a [`KeyLookup`]), session-token validation (the token is handed back in
//! [`Verified`]), authorisation, or routing.
//!
//! What the clients do for this API, and therefore what [`verify`] expects:
//!
//! * The credential scope is `<key>/<yyyymmdd>/<region>/lambda/aws4_request`. The region
//!   must be a region name ([`is_valid_region`]: `us-east-1`, not `local` or `a:b`, since
//!   it ends up in ARNs), and the server's own when [`VerifyOptions::region`] is set.
//! * The path arrives already percent-encoded per label (an ARN label arrives as one
//!   segment with `%3A` and `%2F`). The canonical URI is that raw path with dot segments
//!   and empty segments removed, then URI-encoded *once more* (`%3A` becomes `%253A`).
//! * The canonical query is every `key=value` pair percent-decoded, re-encoded with the
//!   RFC 3986 unreserved set (`A-Z a-z 0-9 - _ . ~`; space is `%20`, a literal `+` is
//!   `%2B`), sorted by encoded key then encoded value. Repeated keys are kept. Every
//!   parameter is covered: a query with more than [`MAX_QUERY_PARAMS`] parameters is
//!   refused, never verified over a part of it.
//! * Signed header values are signed as the raw bytes received (obs-text 0x80-0xFF
//!   included, never converted to text), trimmed with inner runs of spaces/tabs
//!   collapsed; repeated headers are joined with `,`. A signed value with a control byte
//!   other than tab is refused.
//! * botocore and the Rust SDK send no `x-amz-content-sha256`: the payload hash is the
//!   SHA-256 of the body as received. The JavaScript SDK v3 does send it; when present it
//!   must be `UNSIGNED-PAYLOAD` or equal the body hash, and it is then the payload line.
//! * `X-Amz-Date` (`YYYYMMDDTHHMMSSZ`) must be within [`MAX_CLOCK_SKEW`] of the server
//!   clock, and its date must equal the scope date.
//! * `host` and `x-amz-date` must be signed, and so must `x-amz-security-token` when sent.
//!
//! The `Host` header must reach [`verify`] as the client sent it (for HTTP/2, supply the
//! `:authority` value as `host`); a reverse proxy that rewrites it breaks every signature.
//! Header values must reach it as the raw bytes received ([`Request::headers`]).
//!
//! # What a signature does not fix, and the server must
//!
//! * **The path the router sees.** The signature covers the *normalised* path (the
//!   clients remove `.`, `..` and empty segments before signing, and the Rust SDK signs
//!   `/a/.` as `/a/`), so `/x/versions/..` carries a valid signature for `/x`. Whatever
//!   routes the request must therefore see the same path as the signature: route only
//!   raw paths that [`normalize_path`] leaves unchanged, and treat percent-encoded dot
//!   segments (`%2e`, `%2E%2e`) as dot segments too, since a router decodes them.
//!   `hearth_api_model::Model::route` refuses every path with a `.`/`..` segment (encoded
//!   or not) or an empty segment, so for every path it routes the canonical URI is the
//!   raw path encoded once more.
//! * **The order of repeated query keys.** The canonical query is sorted, so
//!   `?k=1&k=2` and `?k=2&k=1` carry the same signature: a reader must not let order
//!   decide (`hearth_api_model` refuses a repeated key for a single-valued member).
//! * **What is parsed from the query** must be cut into parameters exactly as here:
//!   [`query_params`] is the one definition.
//!
//! # Reading the body last
//!
//! [`precheck`] refuses everything that can be refused from the request head (method,
//! path, query and headers) before the body is read: the `Authorization` syntax,
//! `X-Amz-Date` and the clock, the credential scope, the signed headers, and every size
//! limit. The server calls it, looks the returned access key up, reads the body (within
//! its own size limit) and then calls [`verify`], which runs the same checks again and
//! then the payload hash and the signature.
//!
//! A body too large to hold in memory is verified the other way round:
//! [`verify_declared_payload`] checks the signature over the SHA-256 the request
//! declares in a signed `x-amz-content-sha256`, before the body is read; the server
//! hashes the body as it streams it and refuses the request at the end unless the
//! hashes match ([`DeclaredPayload::matches`]).
//!
//! Every failure maps to HTTP 403 with an AWS error code ([`SigV4Error::error_code`]);
//! messages never contain the expected signature, the canonical request or the secret.

#![forbid(unsafe_code)]

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The only signing algorithm accepted.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far `X-Amz-Date` may be from the server clock, either way.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);
/// Longest accepted `Authorization` header value, in bytes.
pub const MAX_AUTHORIZATION_LEN: usize = 4096;
/// Most headers a request may carry.
pub const MAX_HEADERS: usize = 256;
/// Most headers that may be listed in `SignedHeaders`.
pub const MAX_SIGNED_HEADERS: usize = 64;
/// Longest value of a signed header (and of `X-Amz-Security-Token`), in bytes.
pub const MAX_HEADER_VALUE_LEN: usize = 16 * 1024;
/// Longest raw path, in bytes.
pub const MAX_PATH_LEN: usize = 8 * 1024;
/// Longest raw query string, in bytes.
pub const MAX_QUERY_LEN: usize = 16 * 1024;
/// Most query parameters (non-empty `&`-separated pieces, see [`query_params`]); a
/// request with more is refused, never verified over a truncated query.
pub const MAX_QUERY_PARAMS: usize = 256;
/// The `x-amz-content-sha256` value that leaves the body out of the signature.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// Longest accepted region name in a credential scope (see [`is_valid_region`]).
pub const MAX_REGION_LEN: usize = 32;

const MAX_METHOD_LEN: usize = 32;
const TOO_MANY_QUERY_PARAMS: &str = "Too many query parameters: at most 256 are accepted.";
const MAX_ACCESS_KEY_LEN: usize = 128;
const MAX_SCOPE_PART_LEN: usize = 64;

type HmacSha256 = Hmac<Sha256>;

/// A received HTTP request, as seen by the server before any decoding.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// HTTP method as received (`GET`, `POST`, ...).
    pub method: &'a str,
    /// Path as received on the request line, still percent-encoded, without the query.
    pub raw_path: &'a str,
    /// Query string as received, without the leading `?` (empty when there is none).
    pub raw_query: &'a str,
    /// Every header as received: `(name, raw value bytes)`, names in any case, repeats
    /// allowed. Values are the bytes on the wire, never a lossy text conversion: a
    /// signed value may hold obs-text (0x80-0xFF) and is canonicalised as bytes.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// The complete body.
    pub body: &'a [u8],
}

impl<'a> Request<'a> {
    /// Splits a request target (`/path?query`) into `raw_path` and `raw_query`.
    pub fn split_target(target: &str) -> (&str, &str) {
        match target.split_once('?') {
            Some((p, q)) => (p, q),
            None => (target, ""),
        }
    }
}

/// Request headers as [`Request::headers`] holds them.
type Headers<'a> = &'a [(&'a str, &'a [u8])];

/// All values of header `name` (case-insensitive), in order.
fn header_values<'a>(headers: Headers<'a>, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

/// The one value of header `name`; an error when it is repeated.
fn single_header<'a>(
    headers: Headers<'a>,
    name: &'a str,
    repeated: &'static str,
) -> Result<Option<&'a [u8]>, SigV4Error> {
    let mut it = header_values(headers, name);
    let first = it.next();
    if it.next().is_some() {
        return Err(SigV4Error::Incomplete(repeated));
    }
    Ok(first)
}

/// `value` without leading and trailing spaces and tabs.
fn trim_blanks(value: &[u8]) -> &[u8] {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !blank(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !blank(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// The value of header `name` as ASCII text, blanks trimmed; `None` when absent.
fn single_text_header<'a>(
    headers: Headers<'a>,
    name: &'a str,
    repeated: &'static str,
    not_text: &'static str,
) -> Result<Option<&'a str>, SigV4Error> {
    match single_header(headers, name, repeated)? {
        None => Ok(None),
        Some(v) => std::str::from_utf8(trim_blanks(v))
            .ok()
            .filter(|s| s.is_ascii())
            .map(Some)
            .ok_or(SigV4Error::Incomplete(not_text)),
    }
}

/// Checks every value of signed header `name`: at least one, none longer than
/// [`MAX_HEADER_VALUE_LEN`], none with a control byte other than tab (what HTTP allows
/// in a field value: visible ASCII, space, tab and obs-text 0x80-0xFF).
fn check_signed_header(headers: Headers<'_>, name: &str) -> Result<(), SigV4Error> {
    let mut any = false;
    for value in header_values(headers, name) {
        any = true;
        if value.len() > MAX_HEADER_VALUE_LEN {
            return Err(SigV4Error::Incomplete("A signed header value is too long."));
        }
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(SigV4Error::Incomplete(
                "A signed header value contains a control character.",
            ));
        }
    }
    if !any {
        return Err(SigV4Error::Incomplete(
            "A header listed in SignedHeaders is missing from the request.",
        ));
    }
    Ok(())
}

/// A secret access key. Zeroed on drop and never printed by `Debug`.
#[derive(Clone)]
pub struct SecretKey(Zeroizing<String>);

impl SecretKey {
    /// Wraps a secret access key.
    pub fn new(secret: impl Into<String>) -> Self {
        SecretKey(Zeroizing::new(secret.into()))
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SecretKey {
    fn from(s: &str) -> Self {
        SecretKey::new(s)
    }
}

impl From<String> for SecretKey {
    fn from(s: String) -> Self {
        SecretKey::new(s)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(**redacted**)")
    }
}

/// Finds the secret for an access key id; `None` when the key is unknown or revoked.
///
/// Implemented for closures `Fn(&str) -> Option<SecretKey>` and for
/// `HashMap<String, SecretKey>`.
pub trait KeyLookup {
    /// The secret access key of `access_key_id`, if the key exists and is active.
    fn secret_for(&self, access_key_id: &str) -> Option<SecretKey>;
}

impl<F: Fn(&str) -> Option<SecretKey>> KeyLookup for F {
    fn secret_for(&self, access_key_id: &str) -> Option<SecretKey> {
        self(access_key_id)
    }
}

impl<S: std::hash::BuildHasher> KeyLookup for std::collections::HashMap<String, SecretKey, S> {
    fn secret_for(&self, access_key_id: &str) -> Option<SecretKey> {
        self.get(access_key_id).cloned()
    }
}

/// The identity established by a valid signature.
#[derive(Clone, PartialEq, Eq)]
pub struct Verified {
    /// The access key that signed the request.
    pub access_key_id: String,
    /// Region from the credential scope: a valid region name ([`is_valid_region`]), the
    /// expected one when [`VerifyOptions::region`] is set.
    pub region: String,
    /// Scope date, `YYYYMMDD`.
    pub date: String,
    /// The instant in `X-Amz-Date`.
    pub request_time: SystemTime,
    /// `X-Amz-Security-Token`, when sent: the caller must check it belongs to the key.
    pub session_token: Option<String>,
    /// `SignedHeaders`, lower-case and sorted.
    pub signed_headers: Vec<String>,
    /// False when the client sent `x-amz-content-sha256: UNSIGNED-PAYLOAD`, i.e. the
    /// body is not covered by the signature. The AWS clients for this API never do.
    pub payload_signed: bool,
}

impl fmt::Debug for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verified")
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .field("date", &self.date)
            .field("request_time", &self.request_time)
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "**redacted**"),
            )
            .field("signed_headers", &self.signed_headers)
            .field("payload_signed", &self.payload_signed)
            .finish()
    }
}

/// Why a request is not authenticated. Every variant answers HTTP 403.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SigV4Error {
    /// No `Authorization` header.
    #[error("Missing Authentication Token")]
    MissingAuthentication,
    /// Malformed or oversized `Authorization`/`X-Amz-Date`, `host` not signed, a signed
    /// header absent or holding a control byte, a method that is not an HTTP token, a
    /// request too large to verify (headers, path, query, more than
    /// [`MAX_QUERY_PARAMS`] query parameters).
    #[error("{0}")]
    Incomplete(&'static str),
    /// `X-Amz-Date` more than 15 minutes in the past.
    #[error("Signature expired: {request} is now earlier than {earliest} ({now} - 15 min.)")]
    Expired {
        /// `X-Amz-Date` as sent.
        request: String,
        /// Earliest accepted time.
        earliest: String,
        /// Server time.
        now: String,
    },
    /// `X-Amz-Date` more than 15 minutes in the future.
    #[error("Signature not yet current: {request} is still later than {latest} ({now} + 15 min.)")]
    NotYetCurrent {
        /// `X-Amz-Date` as sent.
        request: String,
        /// Latest accepted time.
        latest: String,
        /// Server time.
        now: String,
    },
    /// Credential scope names another service, a region that is not a region name or
    /// not the expected one, or a date other than `X-Amz-Date`'s.
    #[error("{0}")]
    WrongScope(String),
    /// The access key is unknown or revoked.
    #[error("The security token included in the request is invalid.")]
    UnrecognizedClient,
    /// `x-amz-content-sha256` was sent and does not match the body.
    #[error("The provided x-amz-content-sha256 header does not match what was computed.")]
    PayloadHashMismatch,
    /// The signature does not match.
    #[error(
        "The request signature we calculated does not match the signature you provided. \
         Check your AWS Secret Access Key and signing method. \
         Consult the service documentation for details."
    )]
    SignatureMismatch,
}

impl SigV4Error {
    /// HTTP status to answer with: 403 for every variant.
    pub fn http_status(&self) -> u16 {
        403
    }

    /// AWS error code, for the `x-amzn-errortype` header.
    pub fn error_code(&self) -> &'static str {
        match self {
            SigV4Error::MissingAuthentication => "MissingAuthenticationTokenException",
            SigV4Error::Incomplete(_) => "IncompleteSignatureException",
            SigV4Error::UnrecognizedClient => "UnrecognizedClientException",
            SigV4Error::Expired { .. }
            | SigV4Error::NotYetCurrent { .. }
            | SigV4Error::WrongScope(_)
            | SigV4Error::PayloadHashMismatch
            | SigV4Error::SignatureMismatch => "InvalidSignatureException",
        }
    }
}

/// A parsed `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization<'a> {
    /// Access key id from the credential.
    pub access_key_id: &'a str,
    /// Scope date, `YYYYMMDD`.
    pub date: &'a str,
    /// Scope region.
    pub region: &'a str,
    /// Scope service.
    pub service: &'a str,
    /// `SignedHeaders`, lower-case, strictly ascending.
    pub signed_headers: Vec<&'a str>,
    /// The 32-byte signature.
    pub signature: [u8; 32],
}

impl Authorization<'_> {
    /// `<yyyymmdd>/<region>/<service>/aws4_request`.
    pub fn scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }
}

/// Parses `AWS4-HMAC-SHA256 Credential=<key>/<date>/<region>/<service>/aws4_request,
/// SignedHeaders=<a;b;c>, Signature=<64 hex>` (spaces after the commas optional).
pub fn parse_authorization(value: &str) -> Result<Authorization<'_>, SigV4Error> {
    use SigV4Error::Incomplete;
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Err(Incomplete("Authorization header is too long."));
    }
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    let rest = value
        .strip_prefix(ALGORITHM)
        .ok_or(Incomplete("Unsupported Authorization scheme or algorithm."))?;
    if !rest.starts_with([' ', '\t']) {
        return Err(Incomplete("Unsupported Authorization scheme or algorithm."));
    }
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim_matches(|c| c == ' ' || c == '\t');
        let (k, v) = part.split_once('=').ok_or(Incomplete(
            "Authorization header parameters must be key=value pairs.",
        ))?;
        let slot = match k {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut signature,
            _ => return Err(Incomplete("Unknown Authorization header parameter.")),
        };
        if slot.replace(v).is_some() {
            return Err(Incomplete("Repeated Authorization header parameter."));
        }
    }
    let credential = credential.ok_or(Incomplete(
        "Authorization header requires 'Credential' parameter.",
    ))?;
    let signed = signed.ok_or(Incomplete(
        "Authorization header requires 'SignedHeaders' parameter.",
    ))?;
    let signature = signature.ok_or(Incomplete(
        "Authorization header requires 'Signature' parameter.",
    ))?;

    let bad_credential = Incomplete(
        "Credential must have the form <key>/<yyyymmdd>/<region>/<service>/aws4_request.",
    );
    let mut parts = credential.split('/');
    let (Some(akid), Some(date), Some(region), Some(service), Some(term), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad_credential);
    };
    let graphic = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic() && b != b',')
    };
    if !graphic(akid, MAX_ACCESS_KEY_LEN)
        || date.len() != 8
        || !date.bytes().all(|b| b.is_ascii_digit())
        || !graphic(region, MAX_SCOPE_PART_LEN)
        || !graphic(service, MAX_SCOPE_PART_LEN)
        || term != "aws4_request"
    {
        return Err(bad_credential);
    }

    let signed_headers: Vec<&str> = signed.split(';').collect();
    if signed_headers.len() > MAX_SIGNED_HEADERS {
        return Err(Incomplete("Too many signed headers."));
    }
    let token_char =
        |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b);
    if signed_headers
        .iter()
        .any(|h| h.is_empty() || h.len() > 128 || !h.bytes().all(token_char))
        || signed_headers.windows(2).any(|w| w[0] >= w[1])
    {
        return Err(Incomplete(
            "SignedHeaders must be lower-case header names, sorted, separated by ';'.",
        ));
    }

    let mut sig = [0u8; 32];
    if signature.len() != 64 || hex::decode_to_slice(signature, &mut sig).is_err() {
        return Err(Incomplete("Signature must be 64 hexadecimal characters."));
    }
    Ok(Authorization {
        access_key_id: akid,
        date,
        region,
        service,
        signed_headers,
        signature: sig,
    })
}

/// What the credential scope must name, for [`precheck`] and [`verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyOptions<'a> {
    /// The signing name: `"lambda"` for this API.
    pub service: &'a str,
    /// The region the server answers for; `None` accepts any valid region name
    /// ([`is_valid_region`]). A server should set it: the scope region ends up in ARNs.
    pub region: Option<&'a str>,
}

impl<'a> VerifyOptions<'a> {
    /// Requires `service` and a valid region name, any region.
    pub fn new(service: &'a str) -> Self {
        VerifyOptions {
            service,
            region: None,
        }
    }

    /// Also requires the scope region to be `region`.
    pub fn with_region(self, region: &'a str) -> Self {
        VerifyOptions {
            region: Some(region),
            ..self
        }
    }
}

/// Whether `s` is an AWS-style region name: `^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$`, at most
/// [`MAX_REGION_LEN`] bytes (`us-east-1`, `eu-central-2`, `us-gov-west-1`, `cn-north-1`;
/// not `local`, not `us-east-1:x`).
pub fn is_valid_region(s: &str) -> bool {
    if s.len() > MAX_REGION_LEN {
        return false;
    }
    let parts: Vec<&str> = s.split('-').collect();
    let [country, middle @ .., number] = parts.as_slice() else {
        return false;
    };
    country.len() == 2
        && country.bytes().all(|b| b.is_ascii_lowercase())
        && !middle.is_empty()
        && middle
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && (1..=2).contains(&number.len())
        && number.bytes().all(|b| b.is_ascii_digit())
}

/// The outcome of the header-only checks: what [`verify`] goes on with.
struct Head<'a> {
    auth: Authorization<'a>,
    amz_date: &'a str,
    request_secs: i64,
    session_token: Option<&'a str>,
}

/// Everything that can be refused from the request head alone, before the body is read:
/// every check of [`verify`] except the payload hash and the signature.
///
/// Checks the header count, path/query length and [`MAX_QUERY_PARAMS`]; that
/// `Authorization` is present, not too long, well formed and `AWS4-HMAC-SHA256`; that
/// `X-Amz-Date` is present, well formed and within [`MAX_CLOCK_SKEW`] of `now`; that the
/// credential scope names `X-Amz-Date`'s date, a valid region (the expected one when
/// `opts.region` is set), `opts.service` and `aws4_request`; that `host` and
/// `x-amz-date` (and `x-amz-security-token` when sent) are signed; that every signed
/// header is present, within [`MAX_HEADER_VALUE_LEN`] and free of control bytes; and
/// that the method is an HTTP token.
///
/// Returns the parsed `Authorization` (borrowing from `headers`), so the server can
/// look the access key up and only then read the body and call [`verify`], which runs
/// these same checks again (they are cheap) before the body hash and the signature.
/// Errors are the ones [`verify`] would give.
pub fn precheck<'a>(
    method: &str,
    raw_path: &str,
    raw_query: &str,
    headers: &'a [(&'a str, &'a [u8])],
    now: SystemTime,
    opts: VerifyOptions<'_>,
) -> Result<Authorization<'a>, SigV4Error> {
    check_head(method, raw_path, raw_query, headers, now, opts).map(|h| h.auth)
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_METHOD_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_head<'a>(
    method: &str,
    raw_path: &str,
    raw_query: &str,
    headers: Headers<'a>,
    now: SystemTime,
    opts: VerifyOptions<'_>,
) -> Result<Head<'a>, SigV4Error> {
    use SigV4Error::Incomplete;
    if headers.len() > MAX_HEADERS {
        return Err(Incomplete("Too many request headers."));
    }
    if raw_path.len() > MAX_PATH_LEN || raw_query.len() > MAX_QUERY_LEN {
        return Err(Incomplete("Request URI is too long to verify."));
    }
    if query_params(raw_query).nth(MAX_QUERY_PARAMS).is_some() {
        return Err(Incomplete(TOO_MANY_QUERY_PARAMS));
    }
    let auth = single_header(headers, "authorization", "Repeated Authorization header.")?
        .ok_or(SigV4Error::MissingAuthentication)?;
    if auth.len() > MAX_AUTHORIZATION_LEN {
        return Err(Incomplete("Authorization header is too long."));
    }
    let auth = std::str::from_utf8(auth)
        .map_err(|_| Incomplete("Unsupported Authorization scheme or algorithm."))?;
    let auth = parse_authorization(auth)?;

    let bad_date = "X-Amz-Date must have the form YYYYMMDDTHHMMSSZ.";
    let amz_date = single_text_header(
        headers,
        "x-amz-date",
        "Repeated X-Amz-Date header.",
        bad_date,
    )?
    .ok_or(Incomplete(
        "Authorization header requires existence of a 'X-Amz-Date' header.",
    ))?;
    let request_secs = parse_amz_date(amz_date).ok_or(Incomplete(bad_date))?;

    if auth.service != opts.service {
        return Err(SigV4Error::WrongScope(format!(
            "Credential should be scoped to correct service: '{}'.",
            opts.service
        )));
    }
    if !is_valid_region(auth.region) {
        return Err(SigV4Error::WrongScope(
            "Credential should be scoped to a valid region.".to_owned(),
        ));
    }
    if let Some(expected) = opts.region {
        if auth.region != expected {
            return Err(SigV4Error::WrongScope(format!(
                "Credential should be scoped to region '{expected}', not '{}'.",
                auth.region
            )));
        }
    }
    if auth.date != &amz_date[..8] {
        return Err(SigV4Error::WrongScope(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date \
             from HTTP: '{}' != '{}', from 'X-Amz-Date'.",
            auth.date,
            &amz_date[..8]
        )));
    }
    if !auth.signed_headers.contains(&"host") {
        return Err(Incomplete("'Host' must be a signed header."));
    }
    if !auth.signed_headers.contains(&"x-amz-date") {
        return Err(Incomplete("'X-Amz-Date' must be a signed header."));
    }
    let session_token = single_header(
        headers,
        "x-amz-security-token",
        "Repeated X-Amz-Security-Token header.",
    )?;
    if let Some(token) = session_token {
        if token.len() > MAX_HEADER_VALUE_LEN {
            return Err(Incomplete("X-Amz-Security-Token is too long."));
        }
        if !auth.signed_headers.contains(&"x-amz-security-token") {
            return Err(Incomplete(
                "'X-Amz-Security-Token' must be a signed header.",
            ));
        }
    }
    let session_token = session_token
        .map(|t| {
            std::str::from_utf8(t).map_err(|_| Incomplete("X-Amz-Security-Token is not text."))
        })
        .transpose()?;
    for name in &auth.signed_headers {
        check_signed_header(headers, name)?;
    }
    if !is_token(method) {
        return Err(Incomplete("The HTTP method is not a valid token."));
    }

    check_clock(amz_date, request_secs, now)?;
    Ok(Head {
        auth,
        amz_date,
        request_secs,
        session_token,
    })
}

/// Verifies the SigV4 signature of `req` against the server clock `now`, with the
/// credential scope required by `opts`. Returns who signed it.
///
/// Runs [`precheck`] (so everything it refuses, `verify` refuses the same way), then
/// looks up the key, checks `x-amz-content-sha256` against the body and compares the
/// signature in constant time.
pub fn verify(
    req: &Request<'_>,
    keys: &(impl KeyLookup + ?Sized),
    now: SystemTime,
    opts: VerifyOptions<'_>,
) -> Result<Verified, SigV4Error> {
    let Head {
        auth,
        amz_date,
        request_secs,
        session_token,
    } = check_head(
        req.method,
        req.raw_path,
        req.raw_query,
        req.headers,
        now,
        opts,
    )?;

    let secret = keys
        .secret_for(auth.access_key_id)
        .ok_or(SigV4Error::UnrecognizedClient)?;
    let (payload_hash, payload_signed) = payload_hash(req)?;
    check_signature(req, &secret, &auth, amz_date, &payload_hash)?;
    Ok(verified(auth, request_secs, session_token, payload_signed))
}

/// The `x-amz-content-sha256` a request declares, checked by
/// [`verify_declared_payload`] before the body is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredPayload {
    /// Who signed the request.
    pub verified: Verified,
    /// The SHA-256 the body must have: the caller hashes the body as it reads it and
    /// refuses the request unless the two are equal ([`DeclaredPayload::matches`]).
    pub sha256: [u8; 32],
}

impl DeclaredPayload {
    /// Whether `body_sha256` (the hash of the body as received) is the one declared;
    /// in constant time.
    pub fn matches(&self, body_sha256: &[u8; 32]) -> bool {
        bool::from(self.sha256.ct_eq(body_sha256))
    }
}

/// Verifies the signature of a request whose body is not read yet, over the payload
/// hash it declares: for bodies too large to hold in memory, which the server hashes
/// as it streams them somewhere and must refuse at the end unless the hash is the one
/// declared ([`DeclaredPayload::matches`]). Until then the body is unverified.
///
/// The request must carry `x-amz-content-sha256` with the body's SHA-256 as 64
/// lower-case hex digits, listed in `SignedHeaders` (the Rust SDK's
/// `PayloadChecksumKind::XAmzSha256`, the JavaScript SDK, S3 clients);
/// `UNSIGNED-PAYLOAD`, a missing or malformed value, or one not signed is refused
/// with [`SigV4Error::Incomplete`] (403 `IncompleteSignatureException`) saying so.
/// Everything else is checked as by [`verify`].
pub fn verify_declared_payload(
    method: &str,
    raw_path: &str,
    raw_query: &str,
    headers: &[(&str, &[u8])],
    keys: &(impl KeyLookup + ?Sized),
    now: SystemTime,
    opts: VerifyOptions<'_>,
) -> Result<DeclaredPayload, SigV4Error> {
    use SigV4Error::Incomplete;
    let Head {
        auth,
        amz_date,
        request_secs,
        session_token,
    } = check_head(method, raw_path, raw_query, headers, now, opts)?;
    let secret = keys
        .secret_for(auth.access_key_id)
        .ok_or(SigV4Error::UnrecognizedClient)?;
    let declared = single_header(
        headers,
        "x-amz-content-sha256",
        "Repeated X-Amz-Content-SHA256 header.",
    )?
    .map(trim_blanks)
    .ok_or(Incomplete(
        "This request requires an x-amz-content-sha256 header with the SHA-256 of the body \
         (64 lower-case hex digits), and it must be signed.",
    ))?;
    if declared == UNSIGNED_PAYLOAD.as_bytes() {
        return Err(Incomplete(
            "UNSIGNED-PAYLOAD is not accepted for this request: x-amz-content-sha256 must be \
             the SHA-256 of the body (64 lower-case hex digits).",
        ));
    }
    let is_lower_hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
    if declared.len() != 64 || !declared.iter().all(is_lower_hex) {
        return Err(Incomplete(
            "x-amz-content-sha256 must be the SHA-256 of the body as 64 lower-case hex digits.",
        ));
    }
    if !auth.signed_headers.contains(&"x-amz-content-sha256") {
        return Err(Incomplete(
            "'X-Amz-Content-SHA256' must be a signed header.",
        ));
    }
    let payload_hash = std::str::from_utf8(declared).expect("checked: ASCII hex");
    let mut sha256 = [0u8; 32];
    hex::decode_to_slice(payload_hash, &mut sha256).expect("checked: 64 hex digits");
    let req = Request {
        method,
        raw_path,
        raw_query,
        headers,
        body: &[],
    };
    check_signature(&req, &secret, &auth, amz_date, payload_hash)?;
    Ok(DeclaredPayload {
        verified: verified(auth, request_secs, session_token, true),
        sha256,
    })
}

/// Compares the signature of `req` under `secret` (its body is not used: the payload
/// line is `payload_hash`) in constant time.
fn check_signature(
    req: &Request<'_>,
    secret: &SecretKey,
    auth: &Authorization<'_>,
    amz_date: &str,
    payload_hash: &str,
) -> Result<(), SigV4Error> {
    let scope = auth.scope();
    let key = signing_key(secret.expose(), auth.date, auth.region, auth.service);
    let canonical_uris = canonical_uri_candidates(req.raw_path);
    let mut ok = subtle::Choice::from(0u8);
    for uri in canonical_uris.iter().flatten() {
        let creq = build_canonical_request(req, uri, &auth.signed_headers, payload_hash)?;
        let sts = string_to_sign(amz_date, &scope, &creq);
        ok |= signature(&key, &sts).ct_eq(&auth.signature);
    }
    if !bool::from(ok) {
        return Err(SigV4Error::SignatureMismatch);
    }
    Ok(())
}

fn verified(
    auth: Authorization<'_>,
    request_secs: i64,
    session_token: Option<&str>,
    payload_signed: bool,
) -> Verified {
    Verified {
        access_key_id: auth.access_key_id.to_owned(),
        region: auth.region.to_owned(),
        date: auth.date.to_owned(),
        request_time: UNIX_EPOCH + Duration::from_secs(request_secs.max(0) as u64),
        session_token: session_token.map(str::to_owned),
        signed_headers: auth
            .signed_headers
            .iter()
            .map(|h| (*h).to_owned())
            .collect(),
        payload_signed,
    }
}

/// Signs `req` the way botocore does and returns the `Authorization` header value.
///
/// `req` must already carry `host` and `x-amz-date` (and `x-amz-security-token` when a
/// session token is used, which must then be listed too); `signed_headers` names the
/// headers to sign (any case, any order).
/// Meant for tests and for Hearth's own clients.
pub fn sign(
    req: &Request<'_>,
    access_key_id: &str,
    secret: &SecretKey,
    region: &str,
    service: &str,
    signed_headers: &[&str],
) -> Result<String, SigV4Error> {
    let bad_date = "X-Amz-Date must have the form YYYYMMDDTHHMMSSZ.";
    let amz_date = single_text_header(
        req.headers,
        "x-amz-date",
        "Repeated X-Amz-Date header.",
        bad_date,
    )?
    .ok_or(SigV4Error::Incomplete("X-Amz-Date header is required."))?;
    if parse_amz_date(amz_date).is_none() {
        return Err(SigV4Error::Incomplete(bad_date));
    }
    let mut names: Vec<String> = signed_headers
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    names.sort();
    names.dedup();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (payload_hash, _) = payload_hash(req)?;
    let date = &amz_date[..8];
    let creq = canonical_request(req, &names, &payload_hash)?;
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let sts = string_to_sign(amz_date, &scope, &creq);
    let key = signing_key(secret.expose(), date, region, service);
    Ok(format!(
        "{ALGORITHM} Credential={access_key_id}/{scope}, SignedHeaders={}, Signature={}",
        names.join(";"),
        hex::encode(signature(&key, &sts))
    ))
}

/// The payload line of the canonical request, and whether it covers the body.
fn payload_hash(req: &Request<'_>) -> Result<(String, bool), SigV4Error> {
    let body_hash = hex::encode(Sha256::digest(req.body));
    match single_header(
        req.headers,
        "x-amz-content-sha256",
        "Repeated X-Amz-Content-SHA256 header.",
    )? {
        None => Ok((body_hash, true)),
        Some(v) => {
            let v = trim_blanks(v);
            if v == UNSIGNED_PAYLOAD.as_bytes() {
                Ok((UNSIGNED_PAYLOAD.to_owned(), false))
            } else if v == body_hash.as_bytes() {
                Ok((body_hash, true))
            } else {
                Err(SigV4Error::PayloadHashMismatch)
            }
        }
    }
}

/// The canonical request: method, canonical URI, canonical query, canonical headers,
/// signed headers and payload hash, joined by `\n`.
///
/// `signed_headers` must be lower-case and sorted (as in `SignedHeaders`); each must be
/// present in `req`. `payload_hash` is the hex SHA-256 of the body (or `UNSIGNED-PAYLOAD`).
/// Bytes, not text: signed header values go in as received (obs-text included), only
/// trimmed and with runs of spaces and tabs collapsed.
pub fn canonical_request(
    req: &Request<'_>,
    signed_headers: &[&str],
    payload_hash: &str,
) -> Result<Vec<u8>, SigV4Error> {
    build_canonical_request(
        req,
        &canonical_uri(req.raw_path),
        signed_headers,
        payload_hash,
    )
}

fn build_canonical_request(
    req: &Request<'_>,
    canonical_uri: &str,
    signed_headers: &[&str],
    payload_hash: &str,
) -> Result<Vec<u8>, SigV4Error> {
    let mut out = Vec::with_capacity(256 + canonical_uri.len() + req.raw_query.len());
    out.extend_from_slice(req.method.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(canonical_uri.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(canonical_query(req.raw_query).as_bytes());
    out.push(b'\n');
    for name in signed_headers {
        check_signed_header(req.headers, name)?;
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        for (i, value) in header_values(req.headers, name).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_trimmed(&mut out, value);
        }
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(signed_headers.join(";").as_bytes());
    out.push(b'\n');
    out.extend_from_slice(payload_hash.as_bytes());
    Ok(out)
}

/// Appends `value` with leading/trailing spaces and tabs removed and inner runs of spaces
/// and tabs collapsed to one space, on the raw bytes: botocore's `' '.join(value.split())`
/// and the JavaScript SDK's `trim().replace(/\s+/g, " ")`, for the only whitespace HTTP
/// lets into a field value (space and tab). Every other byte, obs-text (0x80-0xFF)
/// included, is kept as is.
fn push_trimmed(out: &mut Vec<u8>, value: &[u8]) {
    let mut first = true;
    for word in value
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|w| !w.is_empty())
    {
        if !first {
            out.push(b' ');
        }
        first = false;
        out.extend_from_slice(word);
    }
}

/// `AWS4-HMAC-SHA256\n<amz_date>\n<scope>\n<hex sha256(canonical_request)>`.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &[u8]) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request))
    )
}

fn hmac(key: &[u8], msg: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(msg);
    Zeroizing::new(mac.finalize().into_bytes().into())
}

/// The SigV4 signing key: HMAC chain over date (`YYYYMMDD`), region, service and
/// `aws4_request`, keyed with `"AWS4" + secret`.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Zeroizing<[u8; 32]> {
    let k_secret = Zeroizing::new(format!("AWS4{secret}"));
    let k_date = hmac(k_secret.as_bytes(), date.as_bytes());
    let k_region = hmac(&*k_date, region.as_bytes());
    let k_service = hmac(&*k_region, service.as_bytes());
    hmac(&*k_service, b"aws4_request")
}

/// The raw signature: HMAC-SHA256 of the string to sign under the signing key.
pub fn signature(signing_key: &[u8; 32], string_to_sign: &str) -> [u8; 32] {
    *hmac(signing_key, string_to_sign.as_bytes())
}

const fn unreserved_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' || b == b'~';
        i += 1;
    }
    t
}
static UNRESERVED: [bool; 256] = unreserved_table();

/// Appends `bytes` URI-encoded: unreserved bytes as-is, every other byte as `%XX`
/// (upper-case hex); `/` kept as-is when `keep_slash`.
fn uri_encode_into(out: &mut String, bytes: &[u8], keep_slash: bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if UNRESERVED[b as usize] || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
}

/// URI-encodes `bytes` with the AWS unreserved set (`A-Z a-z 0-9 - _ . ~`).
pub fn uri_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    uri_encode_into(&mut out, bytes, false);
    out
}

/// Percent-decodes `s`. `%` not followed by two hex digits stays literal; `+` stays `+`.
pub fn percent_decode(s: &str) -> Vec<u8> {
    fn hexval(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hexval(b[i + 1]), hexval(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Removes empty and `.` segments and resolves `..`, as botocore and the JavaScript SDK
/// do before signing (a trailing `/` is kept when anything remains).
pub fn normalize_path(raw_path: &str) -> String {
    if raw_path.is_empty() {
        return "/".to_owned();
    }
    let mut segs: Vec<&str> = Vec::new();
    for s in raw_path.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let mut out = String::with_capacity(raw_path.len());
    if raw_path.starts_with('/') {
        out.push('/');
    }
    out.push_str(&segs.join("/"));
    if raw_path.ends_with('/') && !segs.is_empty() {
        out.push('/');
    }
    out
}

/// The canonical URI of a raw (still percent-encoded) path: [`normalize_path`], then
/// URI-encoded once more with `/` kept (so `%3A` becomes `%253A`).
pub fn canonical_uri(raw_path: &str) -> String {
    let norm = normalize_path(raw_path);
    let mut out = String::with_capacity(norm.len() + 16);
    uri_encode_into(&mut out, norm.as_bytes(), true);
    out
}

/// The canonical URIs to try: botocore's, plus the Rust SDK's when it differs. The Rust
/// SDK (`aws-sigv4`) keeps a trailing `/` for paths ending in `/.` or `/..`, where
/// botocore and the JavaScript SDK drop it.
fn canonical_uri_candidates(raw_path: &str) -> [Option<String>; 2] {
    let primary = canonical_uri(raw_path);
    let alt = if (raw_path.ends_with("/.") || raw_path.ends_with("/..")) && !primary.ends_with('/')
    {
        Some(format!("{primary}/"))
    } else {
        None
    };
    [Some(primary), alt]
}

/// The parameters of a raw query, still percent-encoded: `&`-separated pieces, empty
/// pieces skipped, each split at its first `=` (no `=` means an empty value).
///
/// This is the one definition of "a query parameter" for both the signature
/// ([`canonical_query`], the [`MAX_QUERY_PARAMS`] limit) and whatever later reads the
/// query, so that what is parsed is exactly what was signed. A leading `?` is not
/// stripped: it belongs to the first key.
pub fn query_params(raw_query: &str) -> impl Iterator<Item = (&str, &str)> + '_ {
    raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// The canonical query string of a raw query: every parameter of [`query_params`], key
/// and value percent-decoded and re-encoded with the unreserved set, sorted by encoded key
/// then encoded value, joined with `&`. Nothing is left out: [`verify`] refuses a query
/// with more than [`MAX_QUERY_PARAMS`] parameters instead of signing part of it.
pub fn canonical_query(raw_query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query_params(raw_query)
        .map(|(k, v)| {
            (
                uri_encode(&percent_decode(k)),
                uri_encode(&percent_decode(v)),
            )
        })
        .collect();
    pairs.sort_unstable();
    let mut out = String::with_capacity(raw_query.len() + 16);
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// Parses basic ISO 8601 `YYYYMMDDTHHMMSSZ` into seconds since the Unix epoch.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b[r].iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, sec) = (num(9..11)?, num(11..13)?, num(13..15)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let mdays = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo)
        || d < 1
        || d > mdays[(mo - 1) as usize]
        || h > 23
        || mi > 59
        || sec > 59
    {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec)
}

/// Formats seconds since the Unix epoch as `YYYYMMDDTHHMMSSZ`.
pub fn format_amz_date(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn check_clock(amz_date: &str, request_secs: i64, now: SystemTime) -> Result<(), SigV4Error> {
    let now_secs = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    let skew = MAX_CLOCK_SKEW.as_secs() as i64;
    if request_secs < now_secs - skew {
        return Err(SigV4Error::Expired {
            request: amz_date.to_owned(),
            earliest: format_amz_date(now_secs - skew),
            now: format_amz_date(now_secs),
        });
    }
    if request_secs > now_secs + skew {
        return Err(SigV4Error::NotYetCurrent {
            request: amz_date.to_owned(),
            latest: format_amz_date(now_secs + skew),
            now: format_amz_date(now_secs),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        for s in [
            "19700101T000000Z",
            "20000229T235959Z",
            "20251129T123456Z",
            "21000101T010203Z",
        ] {
            let secs = parse_amz_date(s).unwrap();
            assert_eq!(format_amz_date(secs), s);
        }
        assert_eq!(parse_amz_date("20251129T123456Z"), Some(1_764_419_696));
        for bad in [
            "20251129T123456",
            "2025-11-29T12:34:56Z",
            "20251329T123456Z",
            "20250229T123456Z",
            "20251129T243456Z",
            "20251129T126056Z",
            "2025112xT123456Z",
            "+0251129T123456Z",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn region_names() {
        for ok in [
            "us-east-1",
            "eu-central-2",
            "us-gov-west-1",
            "ap-southeast-5",
            "cn-north-1",
            "us-isob-east-1",
            "mx-central-1",
            "ab-c-99",
            "ab-cdefghijklmnopqrstuvwxyzab-12",
        ] {
            assert!(is_valid_region(ok), "{ok}");
        }
        for bad in [
            "",
            "local",
            "us",
            "us-1",
            "us-east",
            "us-east-",
            "us-east-123",
            "us-east-1a",
            "us-east-1:123456789012",
            "US-east-1",
            "us-East-1",
            "u-east-1",
            "usa-east-1",
            "us--east-1",
            "-us-east-1",
            "us-east-1-",
            "us-east1-1",
            "us east-1",
            "us-east-\u{661}",
            "ab-cdefghijklmnopqrstuvwxyzabc-12",
        ] {
            assert!(!is_valid_region(bad), "{bad}");
        }
        assert_eq!("ab-cdefghijklmnopqrstuvwxyzab-12".len(), MAX_REGION_LEN);
    }

    #[test]
    fn header_values_are_trimmed_and_collapsed_as_bytes() {
        let canon = |v: &[u8]| {
            let mut out = Vec::new();
            push_trimmed(&mut out, v);
            out
        };
        assert_eq!(canon(b""), b"");
        assert_eq!(canon(b" \t \t"), b"");
        assert_eq!(canon(b"\ta  \t b "), b"a b");
        assert_eq!(canon(b"\xa0x\x85 \xff"), b"\xa0x\x85 \xff");
        assert_eq!(trim_blanks(b" \t\xe9 \t"), b"\xe9");
        assert_eq!(trim_blanks(b"  "), b"");
    }

    #[test]
    fn path_normalisation_matches_botocore() {
        for (raw, want) in [
            ("", "/"),
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("//a//b//", "/a/b/"),
            ("/a/./b/../c", "/a/c"),
            ("/a/b/.", "/a/b"),
            ("/..", "/"),
            ("/a/%2E%2E/b", "/a/%2E%2E/b"),
        ] {
            assert_eq!(normalize_path(raw), want, "{raw}");
        }
        assert_eq!(
            canonical_uri("/2017-03-31/tags/arn%3Aaws%3Alambda%3Aus-east-1%3A1%3Amicrovm%2Fx"),
            "/2017-03-31/tags/arn%253Aaws%253Alambda%253Aus-east-1%253A1%253Amicrovm%252Fx"
        );
        assert_eq!(canonical_uri("/a b/é~"), "/a%20b/%C3%A9~");
    }

    #[test]
    fn query_canonicalisation() {
        assert_eq!(canonical_query(""), "");
        assert_eq!(
            canonical_query("tagKeys=b&tagKeys=a&tagKeys=a-b&tagKeys=a%3Ab&tagKeys=a%20b"),
            "tagKeys=a&tagKeys=a%20b&tagKeys=a%3Ab&tagKeys=a-b&tagKeys=b"
        );
        assert_eq!(
            canonical_query("b=1&a&c=%7e+%zz%3a"),
            "a=&b=1&c=~%2B%25zz%3A"
        );
        assert_eq!(canonical_query("&&x=1&"), "x=1");
        // Every parameter counts, however many there are.
        let many: Vec<String> = (0..=MAX_QUERY_PARAMS).map(|i| format!("k={i}")).collect();
        assert_eq!(
            canonical_query(&many.join("&")).matches("k=").count(),
            MAX_QUERY_PARAMS + 1
        );
        assert!(TOO_MANY_QUERY_PARAMS.contains(&MAX_QUERY_PARAMS.to_string()));
    }

    #[test]
    fn authorization_parsing() {
        let sig = "a".repeat(64);
        let hdr = format!(
            "AWS4-HMAC-SHA256 Credential=AKID/20251129/us-east-1/lambda/aws4_request,SignedHeaders=host;x-amz-date,Signature={sig}"
        );
        let a = parse_authorization(&hdr).unwrap();
        assert_eq!(a.access_key_id, "AKID");
        assert_eq!(a.scope(), "20251129/us-east-1/lambda/aws4_request");
        assert_eq!(a.signed_headers, vec!["host", "x-amz-date"]);
        for bad in [
            format!("AWS4-HMAC-SHA256Credential=A/20251129/r/s/aws4_request, SignedHeaders=host, Signature={sig}"),
            format!("AWS4-HMAC-SHA1 Credential=A/20251129/r/s/aws4_request, SignedHeaders=host, Signature={sig}"),
            "AWS4-HMAC-SHA256 Credential=A/20251129/r/s/aws4_request, SignedHeaders=host".to_owned(),
            format!("AWS4-HMAC-SHA256 Credential=A/20251129/r/s/aws4_request, SignedHeaders=x-amz-date;host, Signature={sig}"),
            format!("AWS4-HMAC-SHA256 Credential=A/20251129/r/s/aws4_request, SignedHeaders=Host, Signature={sig}"),
            format!("AWS4-HMAC-SHA256 Credential=A/20251129/r/s/aws4_request, SignedHeaders=host;host, Signature={sig}"),
            format!("AWS4-HMAC-SHA256 Credential=A/2025112/r/s/aws4_request, SignedHeaders=host, Signature={sig}"),
            format!("AWS4-HMAC-SHA256 Credential=A/20251129/r/s/aws4, SignedHeaders=host, Signature={sig}"),
            format!("AWS4-HMAC-SHA256 Credential=A/20251129/r/s/aws4_request/x, SignedHeaders=host, Signature={sig}"),
            format!("AWS4-HMAC-SHA256 Credential=/20251129/r/s/aws4_request, SignedHeaders=host, Signature={sig}"),
            format!("AWS4-HMAC-SHA256 Credential=A/20251129/r/s/aws4_request, SignedHeaders=host, Signature={sig}, Signature={sig}"),
            format!("AWS4-HMAC-SHA256 Credential=A/20251129/r/s/aws4_request, SignedHeaders=host, Signature={sig}, Extra=1"),
            "AWS4-HMAC-SHA256 Credential=A/20251129/r/s/aws4_request, SignedHeaders=host, Signature=abc".to_owned(),
            format!("AWS4-HMAC-SHA256 Credential=A/20251129/r/s/aws4_request, SignedHeaders=host, Signature={}", "g".repeat(64)),
            format!("AWS4-HMAC-SHA256 Credential={}/20251129/r/s/aws4_request, SignedHeaders=host, Signature={sig}", "A".repeat(4096)),
            String::new(),
        ] {
            let e = parse_authorization(&bad).unwrap_err();
            assert_eq!(e.error_code(), "IncompleteSignatureException", "{bad}");
        }
    }
}

//! Auth tokens for Hearth's microVM endpoints.
//!
//! Owns the token format and the key that signs it. A token is
//! `hv1.<payload>.<mac>`: `payload` is the JSON of [`Claims`] and `mac` the
//! HMAC-SHA256 of the text `hv1.<payload>` under the [`TokenKey`], both in
//! unpadded base64url. Every character of a token is an HTTP token character,
//! so it travels as a header value and as a `Sec-WebSocket-Protocol` value.
//!
//! The API mints tokens (CreateMicrovmAuthToken) and the proxy verifies them;
//! both load the same key file with [`TokenKey::load_or_create`]. Verifying
//! checks the MAC in constant time before a byte of the claims is parsed,
//! then the expiry. Nothing here does I/O except the key file; everything is
//! synchronous and runs on the caller's thread or task.
//!
//! Neither tokens nor the key appear in any error message or `Debug` output.

#![forbid(unsafe_code)]

mod key;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::path::PathBuf;

pub use key::{TokenKey, KEY_SIZE_BYTES};

/// The version prefix of every token this crate mints.
pub const TOKEN_PREFIX: &str = "hv1";

/// The longest token [`TokenKey::verify`] looks at; longer input is
/// [`TokenError::Malformed`] without being decoded.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// What a token lets its bearer do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// HTTP and WebSocket requests to the microVM's endpoint, on the ports in
    /// [`Claims::ports`].
    Http,
    /// An interactive shell in the microVM (no ports).
    Shell,
}

/// What a token asserts: who may reach which microVM, how, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The 12-digit account that owns the microVM.
    pub account_id: String,
    /// The microVM the token is bound to.
    pub microvm_id: String,
    /// HTTP or shell.
    pub kind: TokenKind,
    /// For [`TokenKind::Http`]: the ports the bearer may reach, as
    /// inclusive ranges (`(8080, 8080)` is one port; `(1, 65535)` all).
    /// Empty for [`TokenKind::Shell`].
    pub ports: Vec<(u16, u16)>,
    /// Unix time (seconds) from which the token is no longer accepted.
    pub expires_at_secs: i64,
}

impl Claims {
    /// Whether `port` is in one of the token's ranges.
    pub fn allows_port(&self, port: u16) -> bool {
        self.ports
            .iter()
            .any(|&(first, last)| first <= port && port <= last)
    }
}

/// Why a token was refused or the key could not be loaded. Messages never
/// contain the token or the key.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not of the shape `hv1.<base64url>.<base64url>` with JSON claims, or
    /// longer than [`MAX_TOKEN_BYTES`].
    #[error("the auth token is malformed")]
    Malformed,
    /// The MAC does not match: tampered with, or signed by another key.
    #[error("the auth token's signature is not valid")]
    BadSignature,
    /// Valid, but its time is up.
    #[error("the auth token expired at {expired_at_secs} (Unix seconds)")]
    Expired {
        /// [`Claims::expires_at_secs`] of the token.
        expired_at_secs: i64,
    },
    /// The key file could not be read, created or synced.
    #[error("token key file {path}: {source}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The key file exists but does not hold exactly [`KEY_SIZE_BYTES`] bytes.
    #[error("token key file {path} holds {size_bytes} bytes, expected {expected_bytes}")]
    KeyWrongSize {
        /// The key file.
        path: PathBuf,
        /// Its size.
        size_bytes: u64,
        /// [`KEY_SIZE_BYTES`].
        expected_bytes: usize,
    },
    /// The key file is readable or writable by group or others.
    #[error("token key file {path} has mode {mode:o}; it must not be accessible to group or others (chmod 600)")]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key path exists but is not a regular file.
    #[error("token key file {path} is not a regular file")]
    KeyNotAFile {
        /// The key path.
        path: PathBuf,
    },
}

type HmacSha256 = Hmac<Sha256>;

impl TokenKey {
    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length; 32 bytes is never refused.
        <HmacSha256 as Mac>::new_from_slice(self.bytes()).expect("HMAC takes keys of any length")
    }

    /// Signs `claims`: `hv1.<base64url(json claims)>.<base64url(mac)>`.
    pub fn mint(&self, claims: &Claims) -> String {
        let json = serde_json::to_vec(claims).expect("claims always serialize");
        let mut token = String::with_capacity(TOKEN_PREFIX.len() + 2 + json.len() * 4 / 3 + 44);
        token.push_str(TOKEN_PREFIX);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&json, &mut token);
        let mut mac = self.mac();
        mac.update(token.as_bytes());
        let tag = mac.finalize().into_bytes();
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut token);
        token
    }

    /// Checks `token`'s MAC in constant time, then parses its claims, then
    /// checks its expiry against `now_secs` (a token is refused from its
    /// `expires_at_secs` on). The caller checks what the claims allow.
    pub fn verify(&self, token: &str, now_secs: i64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let (signed, mac_b64) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (prefix, payload_b64) = signed.split_once('.').ok_or(TokenError::Malformed)?;
        if prefix != TOKEN_PREFIX || payload_b64.is_empty() || payload_b64.contains('.') {
            return Err(TokenError::Malformed);
        }
        // A MAC that is not even base64 is as wrong as one that does not
        // match: both are a bad signature.
        let tag = URL_SAFE_NO_PAD
            .decode(mac_b64)
            .map_err(|_| TokenError::BadSignature)?;
        let mut mac = self.mac();
        mac.update(signed.as_bytes());
        mac.verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        // Only authenticated bytes are parsed from here on.
        let json = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if now_secs >= claims.expires_at_secs {
            return Err(TokenError::Expired {
                expired_at_secs: claims.expires_at_secs,
            });
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            account_id: "123456789012".into(),
            microvm_id: "mvm-abcdefghijklmnopq".into(),
            kind: TokenKind::Http,
            ports: vec![(8080, 8080), (9000, 9100)],
            expires_at_secs: 2_000,
        }
    }

    #[test]
    fn token_characters_are_all_http_token_characters() {
        let token = TokenKey::generate().mint(&claims());
        assert!(token.starts_with("hv1."));
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'));
        assert_eq!(token.matches('.').count(), 2);
    }

    #[test]
    fn claims_json_uses_lowercase_kind_and_refuses_unknown_fields() {
        let json = serde_json::to_string(&claims()).unwrap();
        assert!(json.contains(r#""kind":"http""#), "{json}");
        let extra = json.replacen('{', r#"{"admin":true,"#, 1);
        assert!(serde_json::from_str::<Claims>(&extra).is_err());
    }
}

//! Opaque, tamper-proof `nextToken`s.
//!
//! Owns the sealing of a store cursor into the string clients echo back. A
//! token is `base64url(payload) "." base64url(HMAC-SHA256(key, payload))`
//! where the payload names the account and the operation, so a token can be
//! used only by the account and listing that produced it. Pure functions,
//! called on the request task.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::Sha256;

use crate::error::ApiError;

/// Longest token accepted (they are far shorter).
const MAX_TOKEN_LEN: usize = 2048;

#[derive(Serialize, Deserialize)]
struct Envelope<C> {
    /// Account and operation the token belongs to.
    a: String,
    o: String,
    c: C,
}

/// Seals and opens pagination tokens with one server key.
#[derive(Clone)]
pub struct TokenSealer {
    key: [u8; 32],
}

impl TokenSealer {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    fn mac(&self, payload: &[u8]) -> Vec<u8> {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        m.update(payload);
        m.finalize().into_bytes().to_vec()
    }

    pub fn seal<C: Serialize>(&self, account: &str, operation: &str, cursor: &C) -> String {
        let env = Envelope {
            a: account.into(),
            o: operation.into(),
            c: cursor,
        };
        let payload = serde_json::to_vec(&env).expect("serialize cursor");
        format!(
            "{}.{}",
            B64.encode(&payload),
            B64.encode(self.mac(&payload))
        )
    }

    /// Open a token; any tampering, or use by another account or operation,
    /// is a ValidationException that says only that the token is invalid.
    pub fn open<C: DeserializeOwned>(
        &self,
        account: &str,
        operation: &str,
        token: &str,
    ) -> Result<C, ApiError> {
        let invalid = || ApiError::Validation("Invalid nextToken".into());
        if token.len() > MAX_TOKEN_LEN {
            return Err(invalid());
        }
        let (p, m) = token.split_once('.').ok_or_else(invalid)?;
        let payload = B64.decode(p).map_err(|_| invalid())?;
        let mac = B64.decode(m).map_err(|_| invalid())?;
        let mut verifier =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        verifier.update(&payload);
        verifier.verify_slice(&mac).map_err(|_| invalid())?;
        let env: Envelope<C> = serde_json::from_slice(&payload).map_err(|_| invalid())?;
        if env.a != account || env.o != operation {
            return Err(invalid());
        }
        Ok(env.c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Cur {
        t: u64,
        id: String,
    }

    #[test]
    fn round_trip_and_binding() {
        let s = TokenSealer::new([7; 32]);
        let c = Cur {
            t: 5,
            id: "x".into(),
        };
        let tok = s.seal("111111111111", "ListMicrovms", &c);
        assert_eq!(
            s.open::<Cur>("111111111111", "ListMicrovms", &tok).unwrap(),
            c
        );
        assert!(s.open::<Cur>("222222222222", "ListMicrovms", &tok).is_err());
        assert!(s
            .open::<Cur>("111111111111", "ListMicrovmImages", &tok)
            .is_err());
        assert!(TokenSealer::new([8; 32])
            .open::<Cur>("111111111111", "ListMicrovms", &tok)
            .is_err());
    }

    #[test]
    fn tampering_is_rejected() {
        let s = TokenSealer::new([7; 32]);
        let tok = s.seal(
            "111111111111",
            "Op",
            &Cur {
                t: 5,
                id: "x".into(),
            },
        );
        let (p, m) = tok.split_once('.').unwrap();
        let mut payload = B64.decode(p).unwrap();
        payload[10] ^= 1;
        let forged = format!("{}.{m}", B64.encode(&payload));
        assert!(s.open::<Cur>("111111111111", "Op", &forged).is_err());
        for junk in ["", ".", "abc", "a.b", &"x".repeat(5000)] {
            assert!(s.open::<Cur>("111111111111", "Op", junk).is_err());
        }
    }
}

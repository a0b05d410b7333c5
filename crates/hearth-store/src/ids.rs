//! Identifiers: validated newtypes for account ids and names, and generators
//! for every random id and secret the control plane hands out.
//!
//! All randomness comes from the operating system's CSPRNG ([`OsRng`]).
//! Nothing here does I/O besides reading that RNG.

use std::fmt;
use std::str::FromStr;

use rand::rngs::OsRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

const DIGITS: &[u8] = b"0123456789";
const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const UPPER_ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const BASE64ISH: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn random_string(charset: &[u8], len: usize) -> String {
    let mut rng = OsRng;
    (0..len)
        .map(|_| char::from(charset[rng.gen_range(0..charset.len())]))
        .collect()
}

/// A value that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {reason}")]
pub struct InvalidId {
    pub what: &'static str,
    pub reason: &'static str,
}

/// A 12-digit account id, e.g. `"123456789012"` (leading zeros allowed).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccountId(String);

impl AccountId {
    /// Validates `s` as exactly 12 ASCII digits.
    pub fn new(s: &str) -> Result<Self, InvalidId> {
        if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(AccountId(s.to_owned()))
        } else {
            Err(InvalidId {
                what: "account id",
                reason: "must be exactly 12 digits",
            })
        }
    }

    /// A fresh random account id (callers must still handle a collision).
    pub fn generate() -> Self {
        AccountId(random_string(DIGITS, 12))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for AccountId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AccountId::new(s)
    }
}

impl TryFrom<String> for AccountId {
    type Error = InvalidId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        AccountId::new(&s)
    }
}

impl From<AccountId> for String {
    fn from(id: AccountId) -> String {
        id.0
    }
}

/// An account name: 1 to 64 characters from `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccountName(String);

impl AccountName {
    pub const MAX_LEN: usize = 64;

    pub fn new(s: &str) -> Result<Self, InvalidId> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(InvalidId {
                what: "account name",
                reason: "must be 1 to 64 characters long",
            });
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(InvalidId {
                what: "account name",
                reason: "may only contain A-Z, a-z, 0-9, '_', '.' and '-'",
            });
        }
        Ok(AccountName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for AccountName {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AccountName::new(s)
    }
}

impl TryFrom<String> for AccountName {
    type Error = InvalidId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        AccountName::new(&s)
    }
}

impl From<AccountName> for String {
    fn from(n: AccountName) -> String {
        n.0
    }
}

/// A secret access key. `Debug` is redacted so it never lands in a log by
/// accident; use [`SecretAccessKey::expose`] where the raw value is needed
/// (SigV4 verification, showing a freshly created key once).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretAccessKey(String);

impl SecretAccessKey {
    pub fn new(s: String) -> Self {
        SecretAccessKey(s)
    }

    /// 40 characters from the base64 alphabet, from the OS CSPRNG (~238 bits).
    pub fn generate() -> Self {
        SecretAccessKey(random_string(BASE64ISH, 40))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretAccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretAccessKey(<redacted>)")
    }
}

/// `AKIA` followed by 16 uppercase alphanumerics, like an AWS access key id.
pub fn new_access_key_id() -> String {
    format!("AKIA{}", random_string(UPPER_ALNUM, 16))
}

/// True if `s` has the shape of [`new_access_key_id`]'s output.
pub fn is_access_key_id(s: &str) -> bool {
    s.len() == 20
        && s.starts_with("AKIA")
        && s[4..]
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// `img-` + 17 lowercase alphanumerics.
pub fn new_image_id() -> String {
    format!("img-{}", random_string(LOWER_ALNUM, 17))
}

/// `mvm-` + 17 lowercase alphanumerics.
pub fn new_microvm_id() -> String {
    format!("mvm-{}", random_string(LOWER_ALNUM, 17))
}

/// `bld-` + 17 lowercase alphanumerics. Build ids are unique across the whole
/// store, not only within their image version.
pub fn new_build_id() -> String {
    format!("bld-{}", random_string(LOWER_ALNUM, 17))
}

/// Parses an image version string in canonical form (`"1"`, `"2"`, ...: a
/// positive decimal without sign or leading zeros). `None` for anything else,
/// which the store reports as "not found".
pub fn parse_version(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 18 || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn account_id_validation() {
        assert!(AccountId::new("012345678901").is_ok());
        assert!(AccountId::new("01234567890").is_err());
        assert!(AccountId::new("0123456789012").is_err());
        assert!(AccountId::new("01234567890a").is_err());
        assert!(AccountId::new("").is_err());
        for _ in 0..100 {
            let id = AccountId::generate();
            assert!(AccountId::new(id.as_str()).is_ok(), "{id}");
        }
    }

    #[test]
    fn account_id_serde_validates() {
        let id: AccountId = serde_json::from_str("\"123456789012\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"123456789012\"");
        assert!(serde_json::from_str::<AccountId>("\"12345\"").is_err());
    }

    #[test]
    fn generated_ids_have_expected_shape() {
        for _ in 0..100 {
            let k = new_access_key_id();
            assert!(is_access_key_id(&k), "{k}");
            let s = SecretAccessKey::generate();
            assert_eq!(s.expose().len(), 40);
            assert!(s.expose().bytes().all(|b| BASE64ISH.contains(&b)));
            for (id, prefix) in [
                (new_image_id(), "img-"),
                (new_microvm_id(), "mvm-"),
                (new_build_id(), "bld-"),
            ] {
                assert_eq!(id.len(), 21, "{id}");
                assert!(id.starts_with(prefix));
                assert!(id[4..].bytes().all(|b| LOWER_ALNUM.contains(&b)), "{id}");
            }
        }
        assert!(!is_access_key_id("AKIAabcdefghijklmnop"));
        assert!(!is_access_key_id("ASIA0123456789ABCDEF"));
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = SecretAccessKey::new("hunter2-very-secret".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn version_parsing() {
        assert_eq!(parse_version("1"), Some(1));
        assert_eq!(parse_version("42"), Some(42));
        for bad in [
            "",
            "0",
            "01",
            "-1",
            "+1",
            "1.0",
            " 1",
            "a",
            "1234567890123456789",
        ] {
            assert_eq!(parse_version(bad), None, "{bad:?}");
        }
    }

    fn reference_valid(s: &str) -> bool {
        let n = s.chars().count();
        (1..=64).contains(&n)
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
    }

    proptest! {
        #[test]
        fn account_name_accepts_exactly_the_allowed_alphabet(s in "[A-Za-z0-9_.-]{1,64}") {
            let name = AccountName::new(&s);
            prop_assert!(name.is_ok());
            prop_assert_eq!(String::from(name.unwrap()), s);
        }

        #[test]
        fn account_name_rejects_too_long(s in "[A-Za-z0-9_.-]{65,100}") {
            prop_assert!(AccountName::new(&s).is_err());
        }

        #[test]
        fn account_name_matches_reference(s in "\\PC{0,70}") {
            prop_assert_eq!(AccountName::new(&s).is_ok(), reference_valid(&s));
        }

        #[test]
        fn account_name_rejects_any_bad_char(
            prefix in "[A-Za-z0-9_.-]{0,30}",
            bad in "[^A-Za-z0-9_.-]",
            suffix in "[A-Za-z0-9_.-]{0,30}",
        ) {
            let s = format!("{prefix}{bad}{suffix}");
            prop_assert!(AccountName::new(&s).is_err());
        }

        #[test]
        fn account_name_serde_round_trip(s in "[A-Za-z0-9_.-]{1,64}") {
            let n = AccountName::new(&s).unwrap();
            let json = serde_json::to_string(&n).unwrap();
            let back: AccountName = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back, n);
        }
    }
}

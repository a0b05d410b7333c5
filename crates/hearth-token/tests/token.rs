//! Tokens minted and verified for real, and key files on a real file system.

use hearth_token::{Claims, TokenError, TokenKey, TokenKind, KEY_SIZE_BYTES, MAX_TOKEN_BYTES};
use proptest::prelude::*;
use std::os::unix::fs::PermissionsExt;

const NOW: i64 = 1_800_000_000;

fn http_claims() -> Claims {
    Claims {
        account_id: "123456789012".into(),
        microvm_id: "mvm-abcdefghijklmnopq".into(),
        kind: TokenKind::Http,
        ports: vec![(8080, 8080), (9000, 9001)],
        expires_at_secs: NOW + 900,
    }
}

#[test]
fn minted_token_verifies_to_the_same_claims() {
    let key = TokenKey::generate();
    for claims in [
        http_claims(),
        Claims {
            kind: TokenKind::Shell,
            ports: vec![],
            ..http_claims()
        },
    ] {
        let token = key.mint(&claims);
        assert_eq!(key.verify(&token, NOW).unwrap(), claims);
    }
}

#[test]
fn changing_any_character_of_payload_or_mac_is_a_bad_signature() {
    let key = TokenKey::generate();
    let token = key.mint(&http_claims());
    let first_b64 = "hv1.".len();
    let mut checked = 0;
    for i in first_b64..token.len() {
        let original = token.as_bytes()[i];
        if original == b'.' {
            continue;
        }
        // Other base64url characters: a tampering, not a parse error.
        for &replacement in [b'A', b'z', b'-', b'_', b'0'].iter() {
            if replacement == original {
                continue;
            }
            let mut tampered = token.clone().into_bytes();
            tampered[i] = replacement;
            let tampered = String::from_utf8(tampered).unwrap();
            match key.verify(&tampered, NOW) {
                Err(TokenError::BadSignature) => checked += 1,
                other => panic!("byte {i} changed to {replacement}: {other:?}"),
            }
        }
    }
    assert!(checked > 100, "checked only {checked} tamperings");
}

#[test]
fn appending_or_dropping_mac_characters_is_a_bad_signature() {
    let key = TokenKey::generate();
    let token = key.mint(&http_claims());
    for tampered in [
        format!("{token}A"),
        token[..token.len() - 1].to_string(),
        format!("{}.", &token[..token.rfind('.').unwrap()]),
    ] {
        assert!(
            matches!(key.verify(&tampered, NOW), Err(TokenError::BadSignature)),
            "{tampered}"
        );
    }
}

#[test]
fn token_from_another_key_is_a_bad_signature() {
    let token = TokenKey::generate().mint(&http_claims());
    assert!(matches!(
        TokenKey::generate().verify(&token, NOW),
        Err(TokenError::BadSignature)
    ));
}

#[test]
fn token_is_refused_from_its_expiry_second_on() {
    let key = TokenKey::generate();
    let claims = http_claims();
    let token = key.mint(&claims);
    assert!(key.verify(&token, claims.expires_at_secs - 1).is_ok());
    for now in [claims.expires_at_secs, claims.expires_at_secs + 1_000_000] {
        match key.verify(&token, now) {
            Err(TokenError::Expired { expired_at_secs }) => {
                assert_eq!(expired_at_secs, claims.expires_at_secs)
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn expired_token_with_a_bad_mac_is_reported_as_a_bad_signature() {
    // The MAC is checked before the claims are even decoded.
    let key = TokenKey::generate();
    let token = TokenKey::generate().mint(&Claims {
        expires_at_secs: 0,
        ..http_claims()
    });
    assert!(matches!(
        key.verify(&token, NOW),
        Err(TokenError::BadSignature)
    ));
}

#[test]
fn malformed_shapes_are_refused_as_malformed() {
    let key = TokenKey::generate();
    let good = key.mint(&http_claims());
    let (_, rest) = good.split_once('.').unwrap();
    let long = format!("{good}{}", "A".repeat(MAX_TOKEN_BYTES));
    for bad in [
        "".to_string(),
        "hv1".to_string(),
        "hv1.".to_string(),
        "hv1..".to_string(),
        "hv1.abc".to_string(),
        format!("hv2.{rest}"),
        format!("HV1.{rest}"),
        format!(".{rest}"),
        format!("hv1.x.{rest}"),
        "no dots at all".to_string(),
        long,
    ] {
        assert!(
            matches!(key.verify(&bad, NOW), Err(TokenError::Malformed)),
            "{bad:?} -> {:?}",
            key.verify(&bad, NOW)
        );
    }
}

#[test]
fn correctly_signed_payload_that_is_not_claims_json_is_malformed() {
    // Sign a payload by hand with the real format, to reach the parse step.
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let key_dir = tempfile::tempdir().unwrap();
    let path = key_dir.path().join("token.key");
    let key = TokenKey::load_or_create(&path).unwrap();
    let raw: [u8; KEY_SIZE_BYTES] = std::fs::read(&path).unwrap().try_into().unwrap();
    for payload in [
        &b"not json"[..],
        br#"{"account_id":"1"}"#,
        br#"{"account_id":"1","microvm_id":"m","kind":"root","ports":[],"expires_at_secs":1}"#,
    ] {
        let signed = format!("hv1.{}", URL_SAFE_NO_PAD.encode(payload));
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&raw).unwrap();
        mac.update(signed.as_bytes());
        let token = format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        assert!(matches!(
            key.verify(&token, NOW),
            Err(TokenError::Malformed)
        ));
    }
}

#[test]
fn error_messages_and_debug_never_contain_token_or_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.key");
    let key = TokenKey::load_or_create(&path).unwrap();
    let raw = std::fs::read(&path).unwrap();
    let token = key.mint(&http_claims());
    let debug = format!("{key:?}");
    assert!(!debug.contains(&format!("{:?}", &raw[..4])) && debug.contains("redacted"));
    let (signed, mac) = token.rsplit_once('.').unwrap();
    let mut msgs = vec![];
    for bad in [
        format!("{signed}.{}", &mac[1..]),
        format!("{token}x"),
        token.replace("hv1", "hv9"),
    ] {
        msgs.push(key.verify(&bad, NOW).unwrap_err().to_string());
    }
    msgs.push(key.verify(&token, i64::MAX).unwrap_err().to_string());
    for m in msgs {
        assert!(!m.contains(mac) && !m.contains(&signed[4..20]), "{m}");
    }
}

#[test]
fn key_file_is_created_0600_with_32_bytes_and_reloaded_identically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.key");
    let key = TokenKey::load_or_create(&path).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), KEY_SIZE_BYTES as u64);
    let again = TokenKey::load_or_create(&path).unwrap();
    let token = key.mint(&http_claims());
    assert!(again.verify(&token, NOW).is_ok());
    // No temporary file is left beside it.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("token.key")]);
}

#[test]
fn key_files_created_concurrently_agree_on_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.key");
    let keys: Vec<TokenKey> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| TokenKey::load_or_create(&path).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let token = keys[0].mint(&http_claims());
    for k in &keys {
        assert!(k.verify(&token, NOW).is_ok());
    }
}

#[test]
fn key_file_readable_by_group_or_others_is_refused_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token.key");
    TokenKey::load_or_create(&path).unwrap();
    for mode in [0o640, 0o604, 0o620, 0o660] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = TokenKey::load_or_create(&path).unwrap_err();
        assert!(
            matches!(err, TokenError::KeyPermissions { mode: m, .. } if m == mode),
            "{err:?}"
        );
        assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert!(TokenKey::load_or_create(&path).is_ok());
}

#[test]
fn key_file_of_the_wrong_size_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    for size in [0usize, 31, 33, 64] {
        let path = dir.path().join(format!("k{size}"));
        std::fs::write(&path, vec![7u8; size]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = TokenKey::load_or_create(&path).unwrap_err();
        assert!(
            matches!(err, TokenError::KeyWrongSize { size_bytes, .. } if size_bytes == size as u64),
            "{err:?}"
        );
        assert!(err.to_string().contains(path.to_str().unwrap()));
        assert_eq!(std::fs::read(&path).unwrap().len(), size);
    }
}

#[test]
fn key_path_in_a_missing_directory_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope").join("token.key");
    let err = TokenKey::load_or_create(&path).unwrap_err();
    assert!(matches!(err, TokenError::Key { .. }), "{err:?}");
    assert!(err.to_string().contains(path.to_str().unwrap()));
}

#[test]
fn key_path_that_is_a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = TokenKey::load_or_create(dir.path()).unwrap_err();
    assert!(
        matches!(err, TokenError::KeyNotAFile { .. } | TokenError::Key { .. }),
        "{err:?}"
    );
}

proptest! {
    #[test]
    fn arbitrary_strings_never_panic_and_never_verify(s in ".{0,5000}") {
        let key = TokenKey::generate();
        prop_assert!(key.verify(&s, NOW).is_err());
    }

    #[test]
    fn token_shaped_strings_never_panic_and_never_verify(
        payload in "[A-Za-z0-9_-]{0,300}",
        mac in "[A-Za-z0-9_-]{0,60}",
    ) {
        let key = TokenKey::generate();
        let token = format!("hv1.{payload}.{mac}");
        prop_assert!(key.verify(&token, NOW).is_err());
    }

    #[test]
    fn any_claims_round_trip(
        account in "[0-9]{12}",
        id in "[a-z0-9-]{1,40}",
        ports in proptest::collection::vec((any::<u16>(), any::<u16>()), 0..20),
        expires in (NOW + 1)..i64::MAX,
        shell in any::<bool>(),
    ) {
        let key = TokenKey::generate();
        let claims = Claims {
            account_id: account,
            microvm_id: id,
            kind: if shell { TokenKind::Shell } else { TokenKind::Http },
            ports,
            expires_at_secs: expires,
        };
        prop_assert_eq!(key.verify(&key.mint(&claims), NOW).unwrap(), claims);
    }
}

//! Handlers of the tag operations (TagResource, UntagResource, ListTags) and
//! the tag rules every operation that takes tags applies ([`check_new`]).
//!
//! The rules are AWS Lambda's: at most [`MAX_TAGS_PER_RESOURCE`] tags on a
//! resource (the ones it has plus the new keys; overwriting a key does not
//! count twice), keys 1 to 128 characters, values at most 256, keys
//! beginning with `aws:` (any case) reserved, at most
//! [`MAX_UNTAG_KEYS`] keys in one UntagResource. Each refusal is a
//! ValidationException naming the limit, and changes nothing. The
//! per-resource limit is enforced by the store inside the transaction that
//! writes, so concurrent TagResource calls cannot pass it together. Tags
//! apply to the caller's own image ARNs. Runs on the request task.

use std::collections::BTreeMap;

use super::{handler, lookup, Registration};
use crate::context::RequestContext;
use crate::error::ApiError;
use crate::ops::{self, shapes::Empty, tags::*};

pub(super) const OPERATIONS: &[Registration] = &[
    handler!(ops::TagResource => tag),
    handler!(ops::UntagResource => untag),
    handler!(ops::ListTags => list),
];

/// Most tags one resource can have.
pub(crate) const MAX_TAGS_PER_RESOURCE: usize = 50;
/// Most keys one UntagResource can name.
pub(crate) const MAX_UNTAG_KEYS: usize = 50;
/// Tag key length, in characters.
pub(crate) const MAX_KEY_CHARS: usize = 128;
/// Tag value length, in characters.
pub(crate) const MAX_VALUE_CHARS: usize = 256;
/// Keys with this prefix (any case) are AWS's.
const RESERVED_PREFIX: &str = "aws:";

/// A tag request broke one of the rules (400 ValidationException).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TagError {
    #[error(
        "A resource can have at most {max} tags; it has {existing} and this request adds {added}"
    )]
    TooManyOnResource {
        max: usize,
        existing: usize,
        added: usize,
    },
    #[error("A resource can have at most {max} tags; this request sets {count}")]
    TooManyInRequest { max: usize, count: usize },
    #[error("Tag keys must be 1 to {max} characters long; key '{key}' has {chars}")]
    KeyLength {
        max: usize,
        key: String,
        chars: usize,
    },
    #[error("Tag values can be at most {max} characters long; the value of '{key}' has {chars}")]
    ValueLength {
        max: usize,
        key: String,
        chars: usize,
    },
    #[error("Tag keys beginning with 'aws:' are reserved for AWS use: '{key}'")]
    ReservedKey { key: String },
    #[error("UntagResource can remove at most {max} tag keys at once; this request names {count}")]
    TooManyKeys { max: usize, count: usize },
}

impl From<hearth_store::store::TooManyTags> for TagError {
    fn from(e: hearth_store::store::TooManyTags) -> Self {
        TagError::TooManyOnResource {
            max: e.max,
            existing: e.existing,
            added: e.added,
        }
    }
}

/// A key as a message shows it: at most 64 characters.
fn shown(key: &str) -> String {
    let mut s: String = key.chars().take(64).collect();
    if key.chars().nth(64).is_some() {
        s.push_str("...");
    }
    s
}

fn check_key(key: &str) -> Result<(), TagError> {
    let chars = key.chars().count();
    if chars == 0 || chars > MAX_KEY_CHARS {
        return Err(TagError::KeyLength {
            max: MAX_KEY_CHARS,
            key: shown(key),
            chars,
        });
    }
    Ok(())
}

/// The rules for tags a request sets (TagResource, and the `tags` member of
/// any operation that creates a resource), short of the per-resource count,
/// which only the store can check against the tags already there.
pub(crate) fn check_new(tags: &BTreeMap<String, String>) -> Result<(), TagError> {
    if tags.len() > MAX_TAGS_PER_RESOURCE {
        return Err(TagError::TooManyInRequest {
            max: MAX_TAGS_PER_RESOURCE,
            count: tags.len(),
        });
    }
    for (key, value) in tags {
        check_key(key)?;
        if key
            .get(..RESERVED_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_PREFIX))
        {
            return Err(TagError::ReservedKey { key: shown(key) });
        }
        let chars = value.chars().count();
        if chars > MAX_VALUE_CHARS {
            return Err(TagError::ValueLength {
                max: MAX_VALUE_CHARS,
                key: shown(key),
                chars,
            });
        }
    }
    Ok(())
}

/// The rules for the keys an UntagResource names.
fn check_removed(keys: &[String]) -> Result<(), TagError> {
    if keys.len() > MAX_UNTAG_KEYS {
        return Err(TagError::TooManyKeys {
            max: MAX_UNTAG_KEYS,
            count: keys.len(),
        });
    }
    keys.iter().try_for_each(|k| check_key(k))
}

/// Tags apply to image ARNs of the caller's own account.
async fn target(ctx: &RequestContext<'_>, resource: &str) -> Result<String, ApiError> {
    Ok(lookup::find(ctx, resource).await?.arn)
}

async fn tag(ctx: &RequestContext<'_>, input: TagResourceInput) -> Result<Empty, ApiError> {
    check_new(&input.tags)?;
    let arn = target(ctx, &input.resource).await?;
    let (acct, tags) = (ctx.account(), input.tags);
    ctx.store("tagging", move |st| {
        st.put_tags(&acct, &arn, &tags, MAX_TAGS_PER_RESOURCE)
    })
    .await?
    .map_err(TagError::from)?;
    Ok(Empty {})
}

async fn untag(ctx: &RequestContext<'_>, input: UntagResourceInput) -> Result<Empty, ApiError> {
    check_removed(&input.tag_keys)?;
    let arn = target(ctx, &input.resource).await?;
    let (acct, keys) = (ctx.account(), input.tag_keys);
    ctx.store("untagging", move |st| st.remove_tags(&acct, &arn, &keys))
        .await?;
    Ok(Empty {})
}

async fn list(ctx: &RequestContext<'_>, input: ListTagsInput) -> Result<ListTagsOutput, ApiError> {
    let arn = target(ctx, &input.resource).await?;
    let acct = ctx.account();
    let tags = ctx
        .store("reading tags", move |st| st.list_tags(&acct, &arn))
        .await?;
    Ok(ListTagsOutput { tags: Some(tags) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n_tags(n: usize) -> BTreeMap<String, String> {
        (0..n).map(|i| (format!("k{i}"), "v".into())).collect()
    }

    #[test]
    fn new_tags_within_the_limits_pass() {
        check_new(&n_tags(50)).unwrap();
        let edge = BTreeMap::from([
            ("k".repeat(128), "v".repeat(256)),
            ("é".repeat(128), "é".repeat(256)),
            ("x".into(), String::new()),
            ("awsx:y".into(), "v".into()),
            ("aw".into(), "v".into()),
        ]);
        check_new(&edge).unwrap();
        check_removed(&(0..50).map(|i| format!("k{i}")).collect::<Vec<_>>()).unwrap();
    }

    #[test]
    fn each_rule_refuses_with_its_limit_named() {
        let e = check_new(&n_tags(51)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "A resource can have at most 50 tags; this request sets 51"
        );
        let e = check_new(&BTreeMap::from([("k".repeat(129), "v".into())])).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Tag keys must be 1 to 128 characters long; key 'kkk")
                && e.to_string().ends_with("...' has 129"),
            "{e}"
        );
        let e = check_new(&BTreeMap::from([(String::new(), "v".into())])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Tag keys must be 1 to 128 characters long; key '' has 0"
        );
        let e = check_new(&BTreeMap::from([("k".into(), "v".repeat(257))])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Tag values can be at most 256 characters long; the value of 'k' has 257"
        );
        for key in ["aws:x", "AWS:x", "Aws:", "aWs:name"] {
            let e = check_new(&BTreeMap::from([(key.into(), "v".into())])).unwrap_err();
            assert_eq!(e, TagError::ReservedKey { key: key.into() }, "{key}");
            assert!(e.to_string().contains("'aws:'"), "{e}");
        }
        let e = check_removed(&(0..51).map(|i| format!("k{i}")).collect::<Vec<_>>()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "UntagResource can remove at most 50 tag keys at once; this request names 51"
        );
        let e = check_removed(&["k".repeat(129)]).unwrap_err();
        assert!(matches!(e, TagError::KeyLength { chars: 129, .. }), "{e}");
    }
}

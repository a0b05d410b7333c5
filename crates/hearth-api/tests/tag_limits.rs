//! Tag limits, driven through `handlers::dispatch` in-process: at most 50
//! tags per resource (atomic against concurrent TagResource calls), keys of
//! 1 to 128 characters, values of at most 256, `aws:` keys reserved, at most
//! 50 keys per UntagResource. Every refusal is a 400 ValidationException
//! that names the limit and changes nothing; CreateMicrovmImage checks its
//! tags before its build configuration.

use std::collections::BTreeMap;
use std::sync::Arc;

use hearth_api::error::ApiError;
use hearth_api::handlers::dispatch;
use hearth_api::{AppState, Caller, DataDir};
use hearth_store::{AccountName, NewImage};
use serde_json::{json, Value};

struct Env {
    _dir: tempfile::TempDir,
    state: Arc<AppState>,
    caller: Caller,
    arn: String,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let dd = DataDir::open(dir.path()).unwrap();
    let acct = dd
        .store
        .create_account(&AccountName::new("t").unwrap(), false)
        .unwrap();
    let arn = format!(
        "arn:aws:lambda:us-east-1:{}:microvm-image:img-t",
        acct.account_id
    );
    dd.store
        .create_image(
            &acct.account_id,
            &NewImage {
                image_id: "img-t".into(),
                name: "t".into(),
                arn: arn.clone(),
                state: "CREATED".into(),
                created_at_secs: 1,
                doc: json!({}),
                tags: Default::default(),
            },
        )
        .unwrap();
    let state = Arc::new(AppState {
        store: dd.store.clone(),
        sealer: hearth_api::paging::TokenSealer::new(dd.token_key),
        managed_images: vec![],
        region: "us-east-1".into(),
        images: hearth_control::ImageControl::new(
            dd.store.clone(),
            hearth_control::images::BuildSetup::without_engine(dd.path.clone(), "us-east-1".into()),
        ),
        microvms: hearth_control::MicrovmControl::new(
            dd.store.clone(),
            hearth_control::MicrovmSetup::without_engine(),
        ),
        proxy_tokens: None,
    });
    Env {
        _dir: dir,
        state,
        caller: Caller {
            account_id: acct.account_id,
            region: "us-east-1".into(),
        },
        arn,
    }
}

fn tags(prefix: &str, n: usize) -> BTreeMap<String, String> {
    (0..n)
        .map(|i| (format!("{prefix}{i}"), "v".into()))
        .collect()
}

async fn tag(e: &Env, tags: &BTreeMap<String, String>) -> Result<Vec<u8>, ApiError> {
    dispatch(
        &e.state,
        &e.caller,
        "TagResource",
        json!({ "Resource": e.arn, "Tags": tags }),
    )
    .await
}

async fn list(e: &Env) -> BTreeMap<String, String> {
    let v = dispatch(
        &e.state,
        &e.caller,
        "ListTags",
        json!({ "Resource": e.arn }),
    )
    .await
    .unwrap();
    let v: Value = serde_json::from_slice(&v).unwrap();
    serde_json::from_value(v["Tags"].clone()).unwrap()
}

/// A 400 ValidationException with exactly this message.
fn assert_refused(r: Result<Vec<u8>, ApiError>, message: &str) {
    let e = r.expect_err("refused");
    assert_eq!(e.status().as_u16(), 400, "{e:?}");
    assert_eq!(e.shape(), "ValidationException", "{e:?}");
    assert_eq!(e.to_string(), message);
}

#[tokio::test]
async fn a_resource_has_at_most_50_tags_counting_overwrites_once() {
    let e = env();
    tag(&e, &tags("k", 48)).await.unwrap();
    let mut req = tags("k", 10); // overwrites
    req.extend(tags("new", 5));
    assert_refused(
        tag(&e, &req).await,
        "A resource can have at most 50 tags; it has 48 and this request adds 5",
    );
    assert_eq!(list(&e).await, tags("k", 48), "a refusal changes nothing");
    let mut req = tags("k", 10);
    req.extend(tags("new", 2));
    tag(&e, &req).await.unwrap();
    assert_eq!(list(&e).await.len(), 50);
    assert_refused(
        tag(&e, &tags("more", 1)).await,
        "A resource can have at most 50 tags; it has 50 and this request adds 1",
    );
    // Untagging makes room.
    dispatch(
        &e.state,
        &e.caller,
        "UntagResource",
        json!({ "Resource": e.arn, "TagKeys": ["k0"] }),
    )
    .await
    .unwrap();
    tag(&e, &tags("more", 1)).await.unwrap();
    assert_eq!(list(&e).await.len(), 50);
}

#[tokio::test]
async fn one_huge_request_is_refused_whole() {
    // What used to store 15,000 tags in a 5.85 MB body.
    let e = env();
    let huge: BTreeMap<String, String> = (0..15_000)
        .map(|i| (format!("key-{i:05}"), "v".repeat(256)))
        .collect();
    assert_refused(
        tag(&e, &huge).await,
        "A resource can have at most 50 tags; this request sets 15000",
    );
    assert!(list(&e).await.is_empty());
}

#[tokio::test]
async fn keys_values_and_reserved_prefixes() {
    let e = env();
    let long_key = "k".repeat(129);
    assert_refused(
        tag(&e, &BTreeMap::from([(long_key, "v".into())])).await,
        &format!(
            "Tag keys must be 1 to 128 characters long; key '{}...' has 129",
            "k".repeat(64)
        ),
    );
    assert_refused(
        tag(&e, &BTreeMap::from([(String::new(), "v".into())])).await,
        "Tag keys must be 1 to 128 characters long; key '' has 0",
    );
    assert_refused(
        tag(&e, &BTreeMap::from([("k".into(), "v".repeat(257))])).await,
        "Tag values can be at most 256 characters long; the value of 'k' has 257",
    );
    for key in ["aws:owner", "AWS:owner", "Aws:"] {
        let mut req = tags("ok", 3);
        req.insert(key.into(), "v".into());
        assert_refused(
            tag(&e, &req).await,
            &format!("Tag keys beginning with 'aws:' are reserved for AWS use: '{key}'"),
        );
    }
    assert!(list(&e).await.is_empty(), "refusals change nothing");
    // The limits themselves are allowed; lengths are in characters.
    tag(
        &e,
        &BTreeMap::from([
            ("k".repeat(128), "v".repeat(256)),
            ("é".repeat(128), "é".repeat(256)),
            ("awsome:x".into(), String::new()),
        ]),
    )
    .await
    .unwrap();
    assert_eq!(list(&e).await.len(), 3);
}

#[tokio::test]
async fn untag_names_at_most_50_keys() {
    let e = env();
    tag(&e, &tags("k", 50)).await.unwrap();
    let keys: Vec<String> = (0..51).map(|i| format!("k{i}")).collect();
    assert_refused(
        dispatch(
            &e.state,
            &e.caller,
            "UntagResource",
            json!({ "Resource": e.arn, "TagKeys": keys }),
        )
        .await,
        "UntagResource can remove at most 50 tag keys at once; this request names 51",
    );
    assert_eq!(list(&e).await.len(), 50, "a refusal removes nothing");
    dispatch(
        &e.state,
        &e.caller,
        "UntagResource",
        json!({ "Resource": e.arn, "TagKeys": keys[..50] }),
    )
    .await
    .unwrap();
    assert!(list(&e).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tag_requests_cannot_pass_the_limit_together() {
    let e = Arc::new(env());
    let calls: Vec<_> = (0..12)
        .map(|i| {
            let e = e.clone();
            tokio::spawn(async move { tag(&e, &tags(&format!("w{i}-"), 10)).await })
        })
        .collect();
    let mut ok = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => ok += 1,
            Err(err) => assert_eq!(
                err.to_string(),
                "A resource can have at most 50 tags; it has 50 and this request adds 10"
            ),
        }
    }
    assert_eq!(ok, 5);
    assert_eq!(list(&e).await.len(), 50);
}

#[tokio::test]
async fn create_image_checks_its_tags_before_its_build_configuration() {
    let e = env();
    // A base image this server does not offer: the request is refused
    // either way, and which refusal comes first shows the order.
    let create = |tags: BTreeMap<String, String>| {
        json!({
            "name": "img",
            "baseImageArn": "arn:aws:lambda:us-east-1:aws:microvm-image:no-such-image",
            "buildRoleArn": "arn:aws:iam::123456789012:role/b",
            "codeArtifact": { "uri": "s3://b/k" },
            "tags": tags,
        })
    };
    assert_refused(
        dispatch(
            &e.state,
            &e.caller,
            "CreateMicrovmImage",
            create(tags("k", 51)),
        )
        .await,
        "A resource can have at most 50 tags; this request sets 51",
    );
    let mut reserved = tags("k", 2);
    reserved.insert("aws:x".into(), "v".into());
    assert_refused(
        dispatch(&e.state, &e.caller, "CreateMicrovmImage", create(reserved)).await,
        "Tag keys beginning with 'aws:' are reserved for AWS use: 'aws:x'",
    );
    // 50 tags pass; the base image is what is refused then.
    let err = dispatch(
        &e.state,
        &e.caller,
        "CreateMicrovmImage",
        create(tags("k", 50)),
    )
    .await
    .unwrap_err();
    assert_eq!(err.shape(), "ValidationException");
    assert!(err.to_string().contains("no-such-image"), "{err}");
}

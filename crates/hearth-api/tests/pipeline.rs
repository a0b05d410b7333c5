//! The pipeline in-process: every answer conforms to the service model,
//! carries a request id, and errors carry their AWS type.

use std::sync::Arc;

use hearth_api::{Api, AppState, DataDir, ManagedImage};
use hearth_api_model::Model;
use hearth_http::{Body, Service};
use hearth_sigv4::SecretKey;
use hearth_store::{AccountName, NewBuild, NewImage, NewImageVersion, NewMicrovm};
use http::Request;
use serde_json::{json, Value};

struct Env {
    _dir: tempfile::TempDir,
    api: Api,
    akid: String,
    secret: SecretKey,
    image_arn: String,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let dd = DataDir::open(dir.path()).unwrap();
    let acct = dd
        .store
        .create_account(&AccountName::new("t").unwrap(), false)
        .unwrap();
    let key = dd.store.create_access_key(&acct.account_id).unwrap();
    let image_arn = format!(
        "arn:aws:lambda:us-east-1:{}:microvm-image:img-t",
        acct.account_id
    );
    let st = &dd.store;
    st.create_image(
        &acct.account_id,
        &NewImage {
            image_id: "img-t".into(),
            name: "t".into(),
            arn: image_arn.clone(),
            state: "CREATED".into(),
            created_at_secs: 1,
            doc: json!({ "latestActiveImageVersion": "1" }),
            tags: Default::default(),
        },
    )
    .unwrap();
    st.create_image_version(
        &acct.account_id,
        "img-t",
        &NewImageVersion {
            state: "SUCCESSFUL".into(),
            status: "ACTIVE".into(),
            created_at_secs: 2,
            doc: json!({
                "baseImageArn": "arn:aws:lambda:us-east-1:aws:microvm-image:debian-12-minimal",
                "buildRoleArn": "arn:aws:iam::123456789012:role/b",
                "codeArtifact": { "uri": "s3://b/k" },
            }),
        },
    )
    .unwrap();
    st.create_build(
        &acct.account_id,
        &NewBuild {
            image_id: "img-t".into(),
            version: "1".into(),
            build_id: "bld-t".into(),
            state: "SUCCESSFUL".into(),
            created_at_secs: 3,
            doc: json!({ "architecture": "X86_64", "chipset": "INTEL", "chipsetGeneration": "any" }),
        },
    )
    .unwrap();
    st.create_microvm(
        &acct.account_id,
        &NewMicrovm {
            microvm_id: "mvm-t".into(),
            image_arn: image_arn.clone(),
            image_version: "1".into(),
            state: "RUNNING".into(),
            created_at_secs: 4,
            doc: json!({ "endpoint": "mvm-t.localhost", "maximumDurationInSeconds": 60, "startedAt": 4 }),
        },
    )
    .unwrap();
    let state = Arc::new(AppState {
        store: dd.store.clone(),
        sealer: hearth_api::paging::TokenSealer::new(dd.token_key),
        managed_images: vec![ManagedImage {
            name: "debian-12-minimal".into(),
            version: "1".into(),
            created_at_secs: 5,
        }],
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
        api: Api::new(state),
        akid: key.key.access_key_id.clone(),
        secret: SecretKey::new(key.secret_access_key.expose().to_string()),
        image_arn,
    }
}

/// Send a signed request; returns (status, headers, JSON body or Null).
async fn call(
    e: &Env,
    method: &str,
    path: &str,
    query: &str,
    body: &str,
) -> (u16, http::HeaderMap, Value) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let date = hearth_sigv4::format_amz_date(now);
    let mut hdrs = vec![("host", "localhost"), ("x-amz-date", date.as_str())];
    if !body.is_empty() {
        hdrs.push(("content-type", "application/json"));
    }
    let raw: Vec<(&str, &[u8])> = hdrs.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    let req = hearth_sigv4::Request {
        method,
        raw_path: path,
        raw_query: query,
        headers: &raw,
        body: body.as_bytes(),
    };
    let names: Vec<&str> = hdrs.iter().map(|(k, _)| *k).collect();
    let auth = hearth_sigv4::sign(&req, &e.akid, &e.secret, "us-east-1", "lambda", &names).unwrap();
    let uri = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", auth);
    for (k, v) in &hdrs {
        b = b.header(*k, *v);
    }
    let resp = e
        .api
        .call(b.body(Body::from_bytes(body.to_string())).unwrap())
        .await;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().into_full().expect("a whole body");
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, headers, v)
}

fn enc(s: &str) -> String {
    hearth_sigv4::uri_encode(s.as_bytes())
}

#[tokio::test]
async fn every_success_conforms_to_the_model() {
    let e = env();
    let model = Model::get();
    let img = enc(&e.image_arn);
    let cases: Vec<(&str, &str, String, &str, &str)> = vec![
        (
            "ListManagedMicrovmImages",
            "GET",
            "/2025-09-09/managed-microvm-images".into(),
            "",
            "",
        ),
        (
            "ListManagedMicrovmImageVersions",
            "GET",
            "/2025-09-09/managed-microvm-images/debian-12-minimal/versions".into(),
            "",
            "",
        ),
        (
            "GetMicrovmImage",
            "GET",
            format!("/2025-09-09/microvm-images/{img}"),
            "",
            "",
        ),
        (
            "ListMicrovmImages",
            "GET",
            "/2025-09-09/microvm-images".into(),
            "maxResults=1",
            "",
        ),
        (
            "GetMicrovmImageVersion",
            "GET",
            format!("/2025-09-09/microvm-images/{img}/versions/1"),
            "",
            "",
        ),
        (
            "ListMicrovmImageVersions",
            "GET",
            format!("/2025-09-09/microvm-images/{img}/versions"),
            "",
            "",
        ),
        (
            "GetMicrovmImageBuild",
            "GET",
            format!("/2025-09-09/microvm-images/{img}/versions/1/builds/bld-t"),
            "",
            "",
        ),
        (
            "ListMicrovmImageBuilds",
            "GET",
            format!("/2025-09-09/microvm-images/{img}/versions/1/builds"),
            "",
            "",
        ),
        (
            "GetMicrovm",
            "GET",
            "/2025-09-09/microvms/mvm-t".into(),
            "",
            "",
        ),
        ("ListMicrovms", "GET", "/2025-09-09/microvms".into(), "", ""),
        (
            "TagResource",
            "POST",
            format!("/2017-03-31/tags/{img}"),
            "",
            r#"{"Tags":{"a":"b"}}"#,
        ),
        ("ListTags", "GET", format!("/2017-03-31/tags/{img}"), "", ""),
        (
            "UntagResource",
            "DELETE",
            format!("/2017-03-31/tags/{img}"),
            "tagKeys=a",
            "",
        ),
        (
            "UpdateMicrovmImageVersion",
            "PATCH",
            format!("/2025-09-09/microvm-images/{img}/versions/1"),
            "",
            r#"{"status":"INACTIVE"}"#,
        ),
    ];
    for (op, method, path, query, body) in cases {
        let (status, headers, v) = call(&e, method, &path, query, body).await;
        let expected = model.operation(op).unwrap().response_code;
        assert_eq!(status, expected, "{op}: {v}");
        assert!(
            headers.contains_key("x-amzn-requestid"),
            "{op}: no request id"
        );
        model
            .check_output(model.operation(op).unwrap(), &v)
            .unwrap_or_else(|err| panic!("{op} answered off-model: {err}\n{v}"));
    }
}

#[tokio::test]
async fn errors_carry_type_message_and_request_id() {
    let e = env();
    for (method, path, query, body, status, etype) in [
        (
            "GET",
            "/2025-09-09/microvms/mvm-absent",
            "",
            "",
            404,
            "ResourceNotFoundException",
        ),
        (
            "GET",
            "/2025-09-09/microvms",
            "maxResults=0",
            "",
            400,
            "ValidationException",
        ),
        (
            "GET",
            "/2025-09-09/microvms",
            "nextToken=forged",
            "",
            400,
            "ValidationException",
        ),
        (
            "POST",
            "/2025-09-09/microvms",
            "",
            r#"{"imageIdentifier":"x"}"#,
            404,
            "ResourceNotFoundException",
        ),
        (
            "POST",
            "/2025-09-09/microvms/mvm-t/suspend",
            "",
            "",
            // Seeded RUNNING, but no such microVM in the engine: found lost.
            409,
            "ConflictException",
        ),
        ("GET", "/nope", "", "", 404, "UnknownOperationException"),
    ] {
        let (st, headers, v) = call(&e, method, path, query, body).await;
        assert_eq!(st, status, "{method} {path}: {v}");
        assert_eq!(headers["x-amzn-errortype"], etype, "{method} {path}");
        assert!(headers.contains_key("x-amzn-requestid"));
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    // Unsigned: 403 with the AWS type, and a request id too.
    let resp = e
        .api
        .call(
            Request::get("/2025-09-09/microvms")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.headers()["x-amzn-errortype"],
        "MissingAuthenticationTokenException"
    );
    assert!(resp.headers().contains_key("x-amzn-requestid"));
}

#[tokio::test]
async fn client_token_retries_of_a_refused_create_are_not_conflicts() {
    // A CreateMicrovmImage naming a base image the server does not offer is
    // refused (400) before anything is written: its token is released, so a
    // retry with the same token (even with another body) gets the same
    // answer rather than a ConflictException.
    let e = env();
    let body = |name: &str| {
        format!(
            r#"{{"name":"{name}","baseImageArn":"arn:aws:lambda:us-east-1:aws:microvm-image:no-such-image","buildRoleArn":"arn:aws:iam::123456789012:role/b","codeArtifact":{{"uri":"s3://b/k"}},"clientToken":"tok-1"}}"#
        )
    };
    for name in ["a", "a", "b"] {
        let (st, h, v) = call(&e, "POST", "/2025-09-09/microvm-images", "", &body(name)).await;
        assert_eq!(st, 400, "{v}");
        assert_eq!(h["x-amzn-errortype"], "ValidationException", "{v}");
    }
    let (_, _, v) = call(&e, "GET", "/2025-09-09/microvm-images", "", "").await;
    assert_eq!(
        v["items"].as_array().unwrap().len(),
        1,
        "only the seeded image: {v}"
    );
}

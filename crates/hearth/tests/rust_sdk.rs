//! The official Rust SDK (`aws-sdk-lambdamicrovms`) against a live server:
//! static credentials + `endpoint_url`, exactly what the `hearth` CLI and
//! Rust integrations will use.

mod support_api;

use aws_sdk_lambdamicrovms::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_lambdamicrovms::error::ProvideErrorMetadata;
use support_api::*;

fn client(s: &Server, c: &Creds) -> aws_sdk_lambdamicrovms::Client {
    let conf = aws_sdk_lambdamicrovms::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(&s.api)
        .credentials_provider(Credentials::new(
            &c.access_key_id,
            &c.secret,
            None,
            None,
            "test",
        ))
        .build();
    aws_sdk_lambdamicrovms::Client::from_conf(conf)
}

#[tokio::test]
async fn rust_sdk_lists_gets_pages_and_maps_errors() {
    let s = Server::start();
    let arn = s.seed_image(&s.admin, "sdk");
    let ids = s.seed_microvms(&s.admin, &arn, 55);
    let c = client(&s, &s.admin);

    let img = c
        .get_microvm_image()
        .image_identifier(&arn)
        .send()
        .await
        .expect("get image");
    assert_eq!(img.name(), "sdk");
    // The SDK's paginator crosses the 50-item page boundary.
    let mut seen = Vec::new();
    let mut pages = c.list_microvms().into_paginator().send();
    while let Some(page) = pages.next().await {
        seen.extend(
            page.expect("page")
                .items()
                .iter()
                .map(|i| i.microvm_id().to_string()),
        );
    }
    assert_eq!(seen, ids);

    let err = c
        .get_microvm()
        .microvm_identifier("mvm-missing")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ResourceNotFoundException"), "{err:?}");
    let err = c
        .run_microvm()
        .image_identifier(&arn)
        .send()
        .await
        .unwrap_err();
    // The seeded version has no snapshot to launch.
    assert_eq!(err.code(), Some("ResourceNotFoundException"), "{err:?}");

    // Another account's key: the image does not exist for it.
    let b = s.create_account("sdk-b");
    let err = client(&s, &b)
        .get_microvm_image()
        .image_identifier(&arn)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ResourceNotFoundException"), "{err:?}");
    // A wrong secret is refused.
    let mut bad = s.admin.clone();
    bad.secret = "y".repeat(40);
    let err = client(&s, &bad).list_microvms().send().await.unwrap_err();
    assert_eq!(err.code(), Some("InvalidSignatureException"), "{err:?}");
}

//! Routing of all 24 operations from their own templates, with labels
//! percent-encoded the way the AWS clients send them.

use hearth_api_model::sample::{sample_request, AWS_ENCODE_SET};
use hearth_api_model::{Model, RouteError};
use percent_encoding::utf8_percent_encode;

const ARN: &str = "arn:aws:lambda:us-east-1:123456789012:microvm-image:img/v 1";
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// Fill a template's labels with `value`, percent-encoded like the clients.
fn fill(template: &str, value: &str) -> (String, Vec<(String, String)>) {
    let mut labels = Vec::new();
    let path = template
        .split('/')
        .map(
            |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => {
                    labels.push((name.to_string(), value.to_string()));
                    utf8_percent_encode(value, AWS_ENCODE_SET).to_string()
                }
                None => seg.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("/");
    (path, labels)
}

#[test]
fn every_operation_routes_from_its_template() {
    let m = Model::get();
    let mut n = 0;
    for op in m.operations() {
        n += 1;
        for value in ["mvm-0123", ARN, "é%/?#"] {
            let (path, labels) = fill(&op.request_uri, value);
            if value == ARN && !labels.is_empty() {
                assert!(path.contains("arn%3Aaws%3Alambda%3A"), "{path}");
                assert!(path.contains("img%2Fv%201"), "{path}");
            }
            let r = m
                .route(&op.http_method, &path)
                .unwrap_or_else(|e| panic!("{} {path}: {e}", op.name));
            assert_eq!(r.operation.name, op.name, "{path}");
            assert_eq!(r.labels, labels, "{path}");
        }
        // The sample request (as a client renders it) routes too.
        let req = sample_request(m, op, true).unwrap();
        let r = m.route(&req.method, &req.path).unwrap();
        assert_eq!(r.operation.name, op.name);
        assert_eq!(r.labels, req.labels);
    }
    assert_eq!(n, 24);
}

#[test]
fn wrong_method_is_method_not_allowed() {
    let m = Model::get();
    for op in m.operations() {
        let (path, _) = fill(&op.request_uri, "x");
        // Methods that some operation accepts on this path.
        let allowed: Vec<String> = METHODS
            .iter()
            .filter(|meth| m.route(meth, &path).is_ok())
            .map(|s| s.to_string())
            .collect();
        assert!(allowed.contains(&op.http_method));
        for meth in METHODS.iter().filter(|x| !allowed.iter().any(|a| a == *x)) {
            match m.route(meth, &path) {
                Err(RouteError::MethodNotAllowed { allowed: got }) => {
                    let mut want = allowed.clone();
                    want.sort();
                    assert_eq!(got, want, "{meth} {path}");
                }
                other => panic!("{meth} {path}: {other:?}"),
            }
        }
    }
}

#[test]
fn tags_live_under_the_lambda_prefix() {
    let m = Model::get();
    let path = format!(
        "/2017-03-31/tags/{}",
        utf8_percent_encode(
            "arn:aws:lambda:us-east-1:123456789012:microvm-image:img",
            AWS_ENCODE_SET
        )
    );
    for (meth, name) in [
        ("GET", "ListTags"),
        ("POST", "TagResource"),
        ("DELETE", "UntagResource"),
    ] {
        let r = m.route(meth, &path).unwrap();
        assert_eq!(r.operation.name, name);
        assert_eq!(
            r.label("Resource"),
            Some("arn:aws:lambda:us-east-1:123456789012:microvm-image:img")
        );
    }
    assert_eq!(
        m.route("PUT", &path).unwrap_err(),
        RouteError::MethodNotAllowed {
            allowed: vec!["DELETE".into(), "GET".into(), "POST".into()]
        }
    );
    assert_eq!(
        m.route("GET", "/2025-09-09/tags/x").unwrap_err(),
        RouteError::NotFound
    );
}

#[test]
fn collections_and_items() {
    let m = Model::get();
    let name = |meth, path| m.route(meth, path).map(|r| r.operation.name.clone());
    assert_eq!(name("GET", "/2025-09-09/microvms").unwrap(), "ListMicrovms");
    assert_eq!(name("POST", "/2025-09-09/microvms").unwrap(), "RunMicrovm");
    assert_eq!(name("GET", "/2025-09-09/microvms/m").unwrap(), "GetMicrovm");
    assert_eq!(
        name("DELETE", "/2025-09-09/microvms/m").unwrap(),
        "TerminateMicrovm"
    );
    assert_eq!(
        m.route("DELETE", "/2025-09-09/microvms").unwrap_err(),
        RouteError::MethodNotAllowed {
            allowed: vec!["GET".into(), "POST".into()]
        }
    );
    assert_eq!(
        m.route("POST", "/2025-09-09/microvms/m").unwrap_err(),
        RouteError::MethodNotAllowed {
            allowed: vec!["DELETE".into(), "GET".into()]
        }
    );
    // Label values that look like literals are still labels.
    let r = m
        .route(
            "GET",
            "/2025-09-09/microvm-images/versions/versions/builds/builds/builds",
        )
        .unwrap();
    assert_eq!(r.operation.name, "GetMicrovmImageBuild");
    assert_eq!(
        r.labels,
        vec![
            ("imageIdentifier".to_string(), "versions".to_string()),
            ("imageVersion".to_string(), "builds".to_string()),
            ("buildId".to_string(), "builds".to_string()),
        ]
    );
    let r = m
        .route(
            "GET",
            "/2025-09-09/microvm-images/versions/versions/builds/builds",
        )
        .unwrap();
    assert_eq!(r.operation.name, "ListMicrovmImageBuilds");
    assert_eq!(r.label("imageVersion"), Some("builds"));
}

#[test]
fn unknown_paths_are_not_found() {
    let m = Model::get();
    // (Paths with empty segments are refused before matching: see
    // dot_and_empty_segments_are_invalid_paths.)
    for path in [
        "/2025-09-09/microvms/m/bogus",
        "/2025-09-09/microvms/m/suspend/x",
        "/2025-09-10/microvms",
        "/2025-09-09",
        "/2017-03-31/tags",
        "/",
        "",
        "2025-09-09/microvms",
        "/2025-09-09/Microvms",
        // A label that is not UTF-8 once decoded.
        "/2025-09-09/microvms/%FF%FE",
    ] {
        for meth in METHODS {
            assert_eq!(
                m.route(meth, path).unwrap_err(),
                RouteError::NotFound,
                "{meth} {path:?}"
            );
        }
    }
}

#[test]
fn query_and_encoding_details() {
    let m = Model::get();
    // A query string left on the path is refused, not cut off: the
    // signature would cover it as path text.
    assert!(matches!(
        m.route("GET", "/2025-09-09/microvms?maxResults=5"),
        Err(RouteError::InvalidPath { .. })
    ));
    // An encoded `?` is label text.
    let r = m.route("GET", "/2025-09-09/microvms/a%3Fb").unwrap();
    assert_eq!(r.label("microvmIdentifier"), Some("a?b"));
    // Literal segments match after decoding.
    let r = m.route("GET", "/2025-09-09/micro%76ms").unwrap();
    assert_eq!(r.operation.name, "ListMicrovms");
    // An encoded slash inside a label does not split it.
    let r = m.route("GET", "/2025-09-09/microvms/a%2Fsuspend").unwrap();
    assert_eq!(r.operation.name, "GetMicrovm");
    assert_eq!(r.label("microvmIdentifier"), Some("a/suspend"));
    // `+` in a path is not a space.
    let r = m.route("GET", "/2025-09-09/microvms/a+b").unwrap();
    assert_eq!(r.label("microvmIdentifier"), Some("a+b"));
    // Methods are case-sensitive.
    assert!(matches!(
        m.route("get", "/2025-09-09/microvms"),
        Err(RouteError::MethodNotAllowed { .. })
    ));
}

/// The SigV4 canonical URI is the path with dot segments and empty segments
/// removed: `/x/versions/..` carries a valid signature for `/x`. Routing must
/// not see a different path than the signature, so such paths are refused.
#[test]
fn dot_and_empty_segments_are_invalid_paths() {
    let m = Model::get();
    let dots = "the path has a '.' or '..' segment (percent-encoded or not)";
    let empty = "the path has an empty segment ('//' or a trailing '/')";
    let mark = "the path contains '?' or '#'; pass the query string apart";
    for (path, reason) in [
        ("/2025-09-09/microvm-images/x/versions/..", dots),
        ("/2025-09-09/microvm-images/x/versions/.", dots),
        ("/2025-09-09/microvm-images/x/versions/%2e%2e", dots),
        ("/2025-09-09/microvm-images/x/versions/%2E%2e", dots),
        ("/2025-09-09/microvm-images/x/versions/.%2E", dots),
        ("/2025-09-09/microvm-images/x/versions/%2e", dots),
        ("/2025-09-09/microvm-images/../microvms", dots),
        ("/2025-09-09/./microvms", dots),
        ("/./2025-09-09/microvms", dots),
        ("/..", dots),
        ("/2025-09-09/microvms/", empty),
        ("/2025-09-09/microvms//suspend", empty),
        ("/2025-09-09//microvms", empty),
        ("//2025-09-09/microvms", empty),
        ("/2025-09-09/microvms/m/", empty),
        ("/2025-09-09/microvms/m/suspend/", empty),
        ("/2025-09-09/", empty),
        ("/2017-03-31/tags/", empty),
        ("//", empty),
        ("/2025-09-09/microvms?maxResults=5", mark),
        ("/2025-09-09/microvms#top", mark),
        ("/2025-09-09/microvms/m?/../x", mark),
    ] {
        for meth in METHODS {
            let e = m.route(meth, path).unwrap_err();
            assert_eq!(
                e,
                RouteError::InvalidPath {
                    reason: reason.to_string()
                },
                "{meth} {path}"
            );
            assert_eq!(e.to_string(), format!("invalid request path: {reason}"));
        }
    }
    // Dots that are not a whole segment are ordinary label text.
    for label in ["1.2", "...", ".x", "x..", "%2e%2e%2e", "a%2F..", "%252e"] {
        let path = format!("/2025-09-09/microvm-images/img/versions/{label}");
        let r = m.route("GET", &path).unwrap();
        assert_eq!(r.operation.name, "GetMicrovmImageVersion", "{path}");
    }
    // The root is not an empty segment, just not an operation.
    assert_eq!(m.route("GET", "/").unwrap_err(), RouteError::NotFound);
}

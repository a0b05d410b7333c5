//! Header rules: where the token and port come from, what is forwarded to
//! the app and what is answered to the client. Pure functions over header
//! maps, called from request tasks.
//!
//! Plain requests carry `X-aws-proxy-auth` and `X-aws-proxy-port`.
//! WebSocket clients cannot set headers in browsers, so a WebSocket upgrade
//! may carry them as `Sec-WebSocket-Protocol` values instead:
//! `lambda-microvms` (a marker), `lambda-microvms.authentication.<token>`
//! and `lambda-microvms.port.<port>`. Those values (and both headers) are
//! never forwarded; other subprotocols are.

use crate::body::Reject;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};
use std::net::IpAddr;

pub(crate) const AUTH_HEADER: HeaderName = HeaderName::from_static("x-aws-proxy-auth");
pub(crate) const PORT_HEADER: HeaderName = HeaderName::from_static("x-aws-proxy-port");
pub(crate) const WS_MARKER: &str = "lambda-microvms";
const WS_AUTH_PREFIX: &str = "lambda-microvms.authentication.";
const WS_PORT_PREFIX: &str = "lambda-microvms.port.";
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that belong to one hop and are never forwarded as they came.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// What a request says about who it is and where it goes.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Credentials {
    /// The token, from the subprotocol or the header.
    pub(crate) token: Option<String>,
    /// The raw port value, from the subprotocol or the header.
    pub(crate) port: Option<String>,
    /// The client offered the `lambda-microvms` subprotocol.
    pub(crate) offered_marker: bool,
    /// Subprotocols offered for the app, in order.
    pub(crate) app_protocols: Vec<String>,
}

/// True for an HTTP/1.1 WebSocket opening handshake.
pub(crate) fn is_websocket_upgrade(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && has_token(headers, &header::CONNECTION, "upgrade")
        && has_token(headers, &header::UPGRADE, "websocket")
}

fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    comma_values(headers, name).any(|v| v.eq_ignore_ascii_case(token))
}

/// Every comma-separated value of every `name` header, trimmed, skipping
/// values that are not visible ASCII.
fn comma_values<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Gathers the token and port from the subprotocols (WebSocket) and the
/// headers (subprotocol values win).
pub(crate) fn credentials(headers: &HeaderMap, websocket: bool) -> Credentials {
    let mut c = Credentials::default();
    if websocket {
        for value in comma_values(headers, &header::SEC_WEBSOCKET_PROTOCOL) {
            if value == WS_MARKER {
                c.offered_marker = true;
            } else if let Some(token) = value.strip_prefix(WS_AUTH_PREFIX) {
                c.token.get_or_insert_with(|| token.to_string());
            } else if let Some(port) = value.strip_prefix(WS_PORT_PREFIX) {
                c.port.get_or_insert_with(|| port.to_string());
            } else {
                c.app_protocols.push(value.to_string());
            }
        }
    }
    if c.token.is_none() {
        c.token = headers
            .get(AUTH_HEADER)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    if c.port.is_none() {
        c.port = headers
            .get(PORT_HEADER)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    c
}

/// A port number 1..=65535 in plain decimal.
pub(crate) fn parse_port(raw: &str) -> Result<u16, Reject> {
    let bad = || {
        Reject::new(
            StatusCode::BAD_REQUEST,
            "X-aws-proxy-port must be a port number from 1 to 65535",
        )
    };
    let raw = raw.trim();
    if raw.is_empty() || raw.len() > 5 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match raw.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(p) => Ok(p),
    }
}

/// Removes hop-by-hop headers, and any header the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = comma_values(headers, &header::CONNECTION)
        .filter_map(|v| HeaderName::from_bytes(v.as_bytes()).ok())
        .collect();
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// How the request reached the proxy, for the forwarded headers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin {
    pub(crate) peer_ip: IpAddr,
    pub(crate) https: bool,
}

/// The headers the app gets: the client's, minus hop-by-hop headers, the
/// proxy's own headers and subprotocol values, with `Host`, and with
/// `X-Forwarded-For` (the client address appended) and `X-Forwarded-Proto`.
/// `websocket` keeps the upgrade and the app's own subprotocols.
pub(crate) fn forward_request_headers(
    mut headers: HeaderMap,
    version: Version,
    host: &str,
    websocket: Option<&Credentials>,
    origin: Origin,
) -> Result<HeaderMap, Reject> {
    strip_hop_by_hop(&mut headers);
    headers.remove(header::UPGRADE);
    // The proxy already answered `100 Continue` when it began reading the
    // body; the app must not send another.
    headers.remove(header::EXPECT);
    headers.remove(AUTH_HEADER);
    headers.remove(PORT_HEADER);
    headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
    headers.remove(X_FORWARDED_PROTO);
    let bad_host = || {
        Reject::new(
            StatusCode::BAD_REQUEST,
            "the Host is not a valid header value",
        )
    };
    headers.insert(
        header::HOST,
        HeaderValue::from_str(host).map_err(|_| bad_host())?,
    );
    if version == Version::HTTP_2 {
        // HTTP/2 may split cookies across fields; HTTP/1.1 wants one.
        let cookies: Vec<&[u8]> = headers
            .get_all(header::COOKIE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        if cookies.len() > 1 {
            let joined = cookies.join(&b"; "[..]);
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                headers.insert(header::COOKIE, v);
            }
        }
    }
    if let Some(ws) = websocket {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if !ws.app_protocols.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&ws.app_protocols.join(", ")) {
                headers.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
            }
        }
    }
    let prior: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let mut xff = prior.join(", ");
    if !xff.is_empty() {
        xff.push_str(", ");
    }
    xff.push_str(&origin.peer_ip.to_canonical().to_string());
    headers.insert(
        X_FORWARDED_FOR,
        HeaderValue::from_str(&xff).unwrap_or_else(|_| {
            HeaderValue::from_str(&origin.peer_ip.to_string()).expect("an IP is a header value")
        }),
    );
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if origin.https { "https" } else { "http" }),
    );
    Ok(headers)
}

/// The headers of an app's answer, minus hop-by-hop headers (hyper frames
/// the body itself).
pub(crate) fn response_headers(mut headers: HeaderMap) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    headers.remove(header::UPGRADE);
    headers
}

/// The headers of a WebSocket `101`: the app's, with the upgrade restated,
/// and `Sec-WebSocket-Protocol: lambda-microvms` when the app chose no
/// subprotocol but the client offered the marker (a client that offers
/// subprotocols requires the server to pick one).
pub(crate) fn websocket_101_headers(headers: HeaderMap, creds: &Credentials) -> HeaderMap {
    let mut headers = response_headers(headers);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if !headers.contains_key(header::SEC_WEBSOCKET_PROTOCOL) && creds.offered_marker {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(WS_MARKER),
        );
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const ORIGIN: Origin = Origin {
        peer_ip: IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 2, 3)),
        https: true,
    };

    #[test]
    fn websocket_needs_both_connection_upgrade_and_upgrade_websocket() {
        let yes = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ]);
        assert!(is_websocket_upgrade(Version::HTTP_11, &yes));
        assert!(!is_websocket_upgrade(Version::HTTP_2, &yes));
        assert!(!is_websocket_upgrade(
            Version::HTTP_11,
            &map(&[("upgrade", "websocket")])
        ));
        assert!(!is_websocket_upgrade(
            Version::HTTP_11,
            &map(&[("connection", "upgrade"), ("upgrade", "h2c")])
        ));
    }

    #[test]
    fn websocket_subprotocols_carry_token_and_port_and_the_rest_is_for_the_app() {
        let h = map(&[
            (
                "sec-websocket-protocol",
                "chat, lambda-microvms, lambda-microvms.authentication.hv1.a.b",
            ),
            ("sec-websocket-protocol", "lambda-microvms.port.9000, mqtt"),
            ("x-aws-proxy-auth", "from-header"),
        ]);
        let c = credentials(&h, true);
        assert_eq!(c.token.as_deref(), Some("hv1.a.b"));
        assert_eq!(c.port.as_deref(), Some("9000"));
        assert!(c.offered_marker);
        assert_eq!(c.app_protocols, vec!["chat", "mqtt"]);
        // Not a WebSocket: the subprotocol header means nothing.
        let c = credentials(&h, false);
        assert_eq!(c.token.as_deref(), Some("from-header"));
        assert_eq!(c.port, None);
    }

    #[test]
    fn websocket_falls_back_to_headers() {
        let h = map(&[("x-aws-proxy-auth", "t"), ("x-aws-proxy-port", "81")]);
        let c = credentials(&h, true);
        assert_eq!(
            (c.token.as_deref(), c.port.as_deref()),
            (Some("t"), Some("81"))
        );
        assert!(!c.offered_marker);
    }

    #[test]
    fn ports_are_plain_decimals_from_1_to_65535() {
        assert_eq!(parse_port("8080").unwrap(), 8080);
        assert_eq!(parse_port(" 1 ").unwrap(), 1);
        assert_eq!(parse_port("65535").unwrap(), 65535);
        for bad in ["", "0", "65536", "-1", "+80", "80a", "0x50", "100000", "٣"] {
            assert_eq!(parse_port(bad).unwrap_err().status, 400, "{bad}");
        }
    }

    #[test]
    fn forwarded_headers_drop_hop_by_hop_and_proxy_headers_and_add_forwarding_ones() {
        let h = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("proxy-authorization", "Basic abc"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-aws-proxy-auth", "hv1.secret.mac"),
            ("x-aws-proxy-port", "9000"),
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-proto", "http"),
            ("host", "MVM-1.localhost:8443"),
            ("accept", "text/plain"),
            ("expect", "100-continue"),
            ("content-length", "5"),
        ]);
        let out =
            forward_request_headers(h, Version::HTTP_11, "mvm-1.localhost:8443", None, ORIGIN)
                .unwrap();
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            vec![
                "accept",
                "content-length",
                "host",
                "x-forwarded-for",
                "x-forwarded-proto"
            ]
        );
        assert_eq!(out["host"], "mvm-1.localhost:8443");
        assert_eq!(out["x-forwarded-for"], "192.0.2.1, 10.1.2.3");
        assert_eq!(out["x-forwarded-proto"], "https");
    }

    #[test]
    fn forwarded_websocket_keeps_the_upgrade_and_only_the_apps_subprotocols() {
        let h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
            (
                "sec-websocket-protocol",
                "lambda-microvms, lambda-microvms.authentication.hv1.x.y, chat",
            ),
        ]);
        let creds = credentials(&h, true);
        let out = forward_request_headers(h, Version::HTTP_11, "m.localhost", Some(&creds), ORIGIN)
            .unwrap();
        assert_eq!(out["connection"], "upgrade");
        assert_eq!(out["upgrade"], "websocket");
        assert_eq!(out["sec-websocket-protocol"], "chat");
        assert_eq!(out["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");

        let only_ours = map(&[(
            "sec-websocket-protocol",
            "lambda-microvms, lambda-microvms.port.1",
        )]);
        let creds = credentials(&only_ours, true);
        let out = forward_request_headers(
            only_ours,
            Version::HTTP_11,
            "m.localhost",
            Some(&creds),
            ORIGIN,
        )
        .unwrap();
        assert!(!out.contains_key("sec-websocket-protocol"));
    }

    #[test]
    fn http2_cookies_are_joined_for_http1() {
        let h = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
        let out = forward_request_headers(h, Version::HTTP_2, "m.localhost", None, ORIGIN).unwrap();
        assert_eq!(out.get_all("cookie").iter().count(), 1);
        assert_eq!(out["cookie"], "a=1; b=2");
    }

    #[test]
    fn websocket_101_names_the_marker_only_when_the_app_chose_nothing_and_it_was_offered() {
        let offered = Credentials {
            offered_marker: true,
            ..Credentials::default()
        };
        let out = websocket_101_headers(map(&[("sec-websocket-accept", "x")]), &offered);
        assert_eq!(out["sec-websocket-protocol"], "lambda-microvms");
        let out = websocket_101_headers(map(&[("sec-websocket-protocol", "chat")]), &offered);
        assert_eq!(out["sec-websocket-protocol"], "chat");
        let out = websocket_101_headers(HeaderMap::new(), &Credentials::default());
        assert!(!out.contains_key("sec-websocket-protocol"));
        assert_eq!(out["upgrade"], "websocket");
    }

    #[test]
    fn response_headers_lose_hop_by_hop_but_keep_the_rest() {
        let out = response_headers(map(&[
            ("transfer-encoding", "chunked"),
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("set-cookie", "a=1"),
            ("content-type", "text/plain"),
        ]));
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["content-type", "set-cookie"]);
    }
}

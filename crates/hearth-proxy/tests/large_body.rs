//! A 100 MiB upload streamed through the proxy and echoed back, while the
//! process' memory stays bounded. In its own test binary so that nothing
//! else runs in the process while its RSS is measured.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::sync::atomic::Ordering;
use support::*;

const TOTAL_BYTES: u64 = 100 * 1024 * 1024;
const CHUNK_BYTES: usize = 256 * 1024;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mib_upload_is_streamed_through_and_echoed_without_buffering() {
    let rig = Rig::start(Tls::SelfSigned, |_| {}).await;
    let host = Rig::host(VM);
    let token = rig.token(VM, &[8080]);
    let tls = tls_connect(rig.addr, &rig.ca_pem(), &host, &[b"http/1.1"]).await;
    let mut s = h1(tls).await;

    // Warm up (TLS, certificate, allocator) before the baseline.
    let (status, _, _) = read(
        s.go(get(&host, "/whoami", &[("x-aws-proxy-auth", &token)]))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let baseline = rss_bytes();

    let chunk = Bytes::from(vec![b'u'; CHUNK_BYTES]);
    let chunks = (TOTAL_BYTES as usize) / CHUNK_BYTES;
    let stream = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(Frame::data(chunk.clone()))),
    );
    let req = Request::post("/echo")
        .header("host", &host)
        .header("x-aws-proxy-auth", &token)
        .header("content-length", TOTAL_BYTES.to_string())
        .body(StreamBody::new(stream).boxed())
        .unwrap();
    let resp = s.go(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = 0u64;
    let mut peak = baseline;
    let mut frames = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(d) = frame.data_ref() {
            assert!(d.iter().all(|&b| b == b'u'));
            received += d.len() as u64;
            frames += 1;
            if frames.is_multiple_of(64) {
                peak = peak.max(rss_bytes());
            }
        }
    }
    peak = peak.max(rss_bytes());
    assert_eq!(received, TOTAL_BYTES);
    assert_eq!(rig.app.echo_bytes.load(Ordering::Relaxed), TOTAL_BYTES);
    let app_frames = rig.app.echo_frames.load(Ordering::Relaxed);
    let max_frame = rig.app.max_echo_frame_bytes.load(Ordering::Relaxed);
    assert!(
        app_frames >= 100,
        "the app got the body in {app_frames} pieces"
    );
    assert!(
        max_frame <= 4 * 1024 * 1024,
        "the app got a {max_frame}-byte piece"
    );
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < 32 * 1024 * 1024,
        "RSS grew by {} MiB while 100 MiB went through",
        growth / (1024 * 1024)
    );
    eprintln!(
        "100 MiB echoed: app got {app_frames} pieces (largest {max_frame} bytes), RSS grew {} KiB",
        growth / 1024
    );
}

//! The channel against a scripted guest on the other end of a socket pair.

use super::*;
use hearth_proto::{
    encode_frame, encode_frame_version, v1, ExitStatus, FrameDecoder, OutputFd, PtySize, HEADER_LEN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A scripted guest end: reads host frames and answers.
struct FakeGuest {
    stream: UnixStream,
    dec: FrameDecoder,
}

impl FakeGuest {
    fn new(s: std::os::unix::net::UnixStream, version: u8) -> Self {
        s.set_nonblocking(true).unwrap();
        Self {
            stream: UnixStream::from_std(s).unwrap(),
            dec: FrameDecoder::for_version(version),
        }
    }

    async fn recv(&mut self) -> HostMessage {
        let mut buf = [0u8; 65536];
        loop {
            if let Some(m) = self.dec.decode_next().unwrap() {
                return m;
            }
            let n = self.stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "host closed");
            self.dec.push(&buf[..n]);
        }
    }

    async fn recv_v1(&mut self) -> v1::HostMessage {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(m) = self.dec.decode_next().unwrap() {
                return m;
            }
            let n = self.stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "host closed");
            self.dec.push(&buf[..n]);
        }
    }

    /// Nothing arrives within `ms`.
    async fn silent_for(&mut self, ms: u64) -> bool {
        let mut buf = [0u8; 1];
        tokio::time::timeout(Duration::from_millis(ms), self.stream.read(&mut buf))
            .await
            .is_err()
    }

    async fn send(&mut self, m: &GuestMessage) {
        self.stream
            .write_all(&encode_frame(m).unwrap())
            .await
            .unwrap();
    }

    async fn hello(&mut self) {
        self.send(&GuestMessage::Hello(Hello {
            proto_version: 2,
            agent_version: "test".into(),
            kernel_release: "x".into(),
            uptime_ms: 1,
            capabilities: hearth_proto::capabilities(),
        }))
        .await;
    }

    /// Answer the next request, which must open a process stream.
    async fn accept_exec(&mut self) -> u64 {
        let HostMessage::Request {
            id,
            body: Request::Exec(_),
        } = self.recv().await
        else {
            panic!("expected exec")
        };
        self.send(&GuestMessage::Response {
            id,
            body: Ok(Response::Exec { pid: 7 }),
        })
        .await;
        id
    }

    async fn output(&mut self, stream: u64, len: usize) {
        self.send(&GuestMessage::Output {
            stream,
            fd: OutputFd::Stdout,
            data: vec![b'x'; len],
        })
        .await;
    }
}

async fn booted() -> (AgentClient, FakeGuest) {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let client = AgentClient::start(a, ChannelStart::Boot).unwrap();
    let mut guest = FakeGuest::new(b, 2);
    guest.hello().await;
    client.wait_hello(T).await.unwrap();
    (client, guest)
}

const T: Duration = Duration::from_secs(5);
const WINDOW: usize = STREAM_WINDOW_BYTES as usize;

#[tokio::test]
async fn exec_collects_output_in_order() {
    let (client, mut guest) = booted().await;
    assert_eq!(client.version(), Some(2));
    let g = tokio::spawn(async move {
        let id = guest.accept_exec().await;
        for chunk in [&b"h"[..], b"i\n"] {
            guest
                .send(&GuestMessage::Output {
                    stream: id,
                    fd: OutputFd::Stdout,
                    data: chunk.to_vec(),
                })
                .await;
        }
        guest
            .send(&GuestMessage::Exited {
                stream: id,
                status: ExitStatus {
                    code: Some(0),
                    signal: None,
                },
                restarting: false,
            })
            .await;
        guest
    });
    let out = client.run(&["echo", "hi"], T).await.unwrap();
    assert_eq!(out.stdout, b"hi\n");
    assert!(out.status.success());
    g.await.unwrap();
}

#[tokio::test]
async fn garbage_fails_the_channel_and_pending_requests() {
    let (client, mut guest) = booted().await;
    let c2 = client.clone();
    let pending = tokio::spawn(async move { c2.ping(T).await });
    let _ = guest.recv().await;
    guest
        .stream
        .write_all(b"\x00garbage that is not a frame")
        .await
        .unwrap();
    let err = pending.await.unwrap().unwrap_err();
    assert!(matches!(err, AgentClientError::ChannelFailed(_)), "{err}");
    assert!(matches!(client.health(), ChannelHealth::Failed(r) if r.contains("magic")));
    let err = client.ping(T).await.unwrap_err();
    assert!(matches!(err, AgentClientError::ChannelFailed(_)));
}

#[tokio::test]
async fn garbage_before_a_booting_guests_first_frame_fails_the_channel() {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let client = AgentClient::start(a, ChannelStart::Boot).unwrap();
    let mut guest = FakeGuest::new(b, 2);
    // Not a header: the version cannot be learned, and waiting for more
    // bytes would hang the boot until its timeout.
    guest
        .stream
        .write_all(b"login: root\r\nPassword:")
        .await
        .unwrap();
    let err = client.wait_hello(T).await.unwrap_err();
    assert!(matches!(err, AgentClientError::ChannelFailed(_)), "{err}");
    assert!(
        matches!(client.health(), ChannelHealth::Failed(ref r) if r.contains("first frame")),
        "{:?}",
        client.health()
    );
}

#[tokio::test]
async fn a_booting_guest_with_an_unknown_protocol_version_is_refused() {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let client = AgentClient::start(a, ChannelStart::Boot).unwrap();
    let mut guest = FakeGuest::new(b, 2);
    let mut header = [0u8; HEADER_LEN];
    header[..2].copy_from_slice(&hearth_proto::MAGIC);
    header[2] = 9;
    guest.stream.write_all(&header).await.unwrap();
    let err = client.wait_hello(T).await.unwrap_err();
    assert!(matches!(err, AgentClientError::ChannelFailed(_)), "{err}");
    assert!(
        matches!(client.health(), ChannelHealth::Failed(ref r) if r.contains("protocol 9")),
        "{:?}",
        client.health()
    );
}

#[tokio::test]
async fn oversized_frame_header_fails_without_buffering() {
    let (client, mut guest) = booted().await;
    let mut header = [0u8; HEADER_LEN];
    header[..2].copy_from_slice(&hearth_proto::MAGIC);
    header[2] = hearth_proto::PROTO_VERSION;
    header[4..8].copy_from_slice(&(512u32 << 20).to_le_bytes());
    guest.stream.write_all(&header).await.unwrap();
    let h = client.wait_unhealthy().await;
    assert!(
        matches!(h, ChannelHealth::Failed(ref r) if r.contains("exceeds")),
        "{h:?}"
    );
}

#[tokio::test]
async fn quiesce_blocks_writers_until_thaw() {
    let (client, mut guest) = booted().await;
    let c = client.clone();
    let q = tokio::spawn(async move { c.quiesce(false, T).await });
    let HostMessage::Request {
        id,
        body: Request::Quiesce { .. },
    } = guest.recv().await
    else {
        panic!()
    };
    guest
        .send(&GuestMessage::Response {
            id,
            body: Ok(Response::Quiesced),
        })
        .await;
    q.await.unwrap().unwrap();
    let c = client.clone();
    let ping = tokio::spawn(async move { c.ping(T).await });
    assert!(guest.silent_for(100).await, "a write went through the gate");
    let c = client.clone();
    let thaw = tokio::spawn(async move { c.thaw(T).await });
    let HostMessage::Request {
        id,
        body: Request::Thaw,
    } = guest.recv().await
    else {
        panic!("the first message after quiesce must be the thaw")
    };
    guest
        .send(&GuestMessage::Response {
            id,
            body: Ok(Response::Thawed),
        })
        .await;
    thaw.await.unwrap().unwrap();
    let HostMessage::Request {
        id,
        body: Request::Ping { nonce },
    } = guest.recv().await
    else {
        panic!()
    };
    guest
        .send(&GuestMessage::Response {
            id,
            body: Ok(Response::Pong { nonce }),
        })
        .await;
    ping.await.unwrap().unwrap();
}

#[tokio::test]
async fn messages_for_unknown_streams_are_dropped() {
    let (client, mut guest) = booted().await;
    guest.output(999, 10).await;
    guest
        .send(&GuestMessage::Response {
            id: 12345,
            body: Ok(Response::Thawed),
        })
        .await;
    let c = client.clone();
    let ping = tokio::spawn(async move { c.ping(T).await });
    let HostMessage::Request {
        id,
        body: Request::Ping { nonce },
    } = guest.recv().await
    else {
        panic!()
    };
    guest
        .send(&GuestMessage::Response {
            id,
            body: Ok(Response::Pong { nonce }),
        })
        .await;
    ping.await.unwrap().unwrap();
    assert_eq!(client.health(), ChannelHealth::Up);
}

#[tokio::test]
async fn a_version_1_guest_is_spoken_to_in_version_1() {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let client = AgentClient::start(a, ChannelStart::Restored { version: 1 }).unwrap();
    let mut guest = FakeGuest::new(b, 1);
    let c = client.clone();
    let restore = tokio::spawn(async move {
        c.restore(
            RestoreRequest {
                unix_time_ns: 1,
                entropy: vec![0; 64],
                hostname: None,
                machine_id: None,
            },
            T,
        )
        .await
    });
    let v1::HostMessage::Request {
        id,
        body: v1::Request::Restore(_),
    } = guest.recv_v1().await
    else {
        panic!("expected a version-1 restore")
    };
    guest
        .stream
        .write_all(
            &encode_frame_version(
                1,
                &v1::GuestMessage::Response {
                    id,
                    body: Ok(v1::Response::Restored),
                },
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let info = restore.await.unwrap().unwrap();
    assert_eq!(info.proto_version, 1);
    // What version 1 cannot say is refused before anything is sent.
    let err = client
        .exec(
            ExecRequest {
                argv: vec!["sh".into()],
                pty: Some(PtySize { cols: 80, rows: 24 }),
                ..Default::default()
            },
            T,
        )
        .await
        .err()
        .unwrap();
    assert!(matches!(err, AgentClientError::Unsupported(_)), "{err}");
    assert!(client.power_off(T).await.is_err());
    assert!(guest.silent_for(100).await);
    // The rest works, with version-1 frames.
    let c = client.clone();
    let ping = tokio::spawn(async move { c.ping(T).await });
    let v1::HostMessage::Request {
        id,
        body: v1::Request::Ping { nonce },
    } = guest.recv_v1().await
    else {
        panic!()
    };
    guest
        .stream
        .write_all(
            &encode_frame_version(
                1,
                &v1::GuestMessage::Response {
                    id,
                    body: Ok(v1::Response::Pong { nonce }),
                },
            )
            .unwrap(),
        )
        .await
        .unwrap();
    ping.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_booting_guest_is_recognised_by_its_first_frame() {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let client = AgentClient::start(a, ChannelStart::Boot).unwrap();
    let mut guest = FakeGuest::new(b, 1);
    guest
        .stream
        .write_all(
            &encode_frame_version(
                1,
                &v1::GuestMessage::Hello(v1::Hello {
                    proto_version: 1,
                    agent_version: "0.1.0".into(),
                    kernel_release: "6.1".into(),
                    uptime_ms: 5,
                }),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let hello = client.wait_hello(T).await.unwrap();
    assert_eq!((hello.proto_version, client.version()), (1, Some(1)));
    // A guest announcing a version the host does not speak fails the channel.
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let client = AgentClient::start(a, ChannelStart::Boot).unwrap();
    let mut guest = FakeGuest::new(b, 1);
    guest
        .stream
        .write_all(b"HR\x09\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    assert!(client.wait_hello(T).await.is_err());
    assert!(matches!(client.health(), ChannelHealth::Failed(r) if r.contains('9')));
}

#[tokio::test]
async fn output_beyond_the_window_fails_the_channel() {
    let (client, mut guest) = booted().await;
    let c = client.clone();
    let p = tokio::spawn(async move { c.exec(ExecRequest::default(), T).await });
    let id = guest.accept_exec().await;
    let _p = p.await.unwrap().unwrap();
    guest.output(id, WINDOW).await;
    guest.output(id, 1).await;
    let h = client.wait_unhealthy().await;
    assert!(
        matches!(h, ChannelHealth::Failed(ref r) if r.contains("window")),
        "{h:?}"
    );
}

#[tokio::test]
async fn a_stalled_consumer_stops_only_its_own_stream() {
    let (client, mut guest) = booted().await;
    let c = client.clone();
    let a = tokio::spawn(async move { c.exec(ExecRequest::default(), T).await });
    let ida = guest.accept_exec().await;
    let mut a = a.await.unwrap().unwrap();
    let c = client.clone();
    let b = tokio::spawn(async move { c.exec(ExecRequest::default(), T).await });
    let idb = guest.accept_exec().await;
    let mut b = b.await.unwrap().unwrap();
    // A's consumer reads nothing while its guest fills the window.
    guest.output(ida, WINDOW).await;
    guest.output(idb, 10).await;
    match tokio::time::timeout(T, b.events.recv()).await.unwrap() {
        Some(StreamEvent::Output { data, .. }) => assert_eq!(data.len(), 10),
        other => panic!("{other:?}"),
    }
    let c = client.clone();
    let ping = tokio::spawn(async move { c.ping(T).await });
    let HostMessage::Request {
        id,
        body: Request::Ping { nonce },
    } = guest.recv().await
    else {
        panic!("no credit may be sent for A before its consumer reads")
    };
    guest
        .send(&GuestMessage::Response {
            id,
            body: Ok(Response::Pong { nonce }),
        })
        .await;
    ping.await.unwrap().unwrap();
    // When A's consumer reads, the guest gets its credit back.
    assert!(matches!(
        a.events.recv().await,
        Some(StreamEvent::Output { .. })
    ));
    assert_eq!(
        guest.recv().await,
        HostMessage::StreamCredit {
            stream: ida,
            bytes: STREAM_WINDOW_BYTES
        }
    );
    assert_eq!(client.health(), ChannelHealth::Up);
}

#[tokio::test]
async fn writes_wait_for_the_guests_credit() {
    let (client, mut guest) = booted().await;
    let c = client.clone();
    let p = tokio::spawn(async move { c.exec(ExecRequest::default(), T).await });
    let id = guest.accept_exec().await;
    let p = p.await.unwrap().unwrap();
    let writer = tokio::spawn(async move {
        p.write_stdin(&vec![1u8; WINDOW + 1000]).await.unwrap();
        p
    });
    let mut got = 0;
    while got < WINDOW {
        match guest.recv().await {
            HostMessage::StreamData { stream, data } => {
                assert_eq!(stream, id);
                got += data.len();
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, WINDOW);
    assert!(guest.silent_for(150).await, "sent past the window");
    guest
        .send(&GuestMessage::StreamCredit {
            stream: id,
            bytes: 4096,
        })
        .await;
    match guest.recv().await {
        HostMessage::StreamData { data, .. } => assert_eq!(data.len(), 1000),
        other => panic!("{other:?}"),
    }
    writer.await.unwrap();
}

#[tokio::test]
async fn a_dropped_handle_is_drained_and_credited() {
    let (client, mut guest) = booted().await;
    let c = client.clone();
    let p = tokio::spawn(async move { c.exec(ExecRequest::default(), T).await });
    let id = guest.accept_exec().await;
    drop(p.await.unwrap().unwrap());
    guest.output(id, 1000).await;
    assert_eq!(
        guest.recv().await,
        HostMessage::StreamCredit {
            stream: id,
            bytes: 1000
        }
    );
    // More than a window over time is fine: it is all credited back.
    for _ in 0..5 {
        guest.output(id, WINDOW / 2).await;
        let _ = guest.recv().await;
    }
    assert_eq!(client.health(), ChannelHealth::Up);
}

#[tokio::test]
async fn closing_streams_tells_their_consumers_why() {
    let (client, mut guest) = booted().await;
    let c = client.clone();
    let p = tokio::spawn(async move { c.exec(ExecRequest::default(), T).await });
    guest.accept_exec().await;
    let mut p = p.await.unwrap().unwrap();
    client.close_streams("microVM suspended");
    let err = p.wait_output().await.unwrap_err();
    assert!(
        matches!(err, AgentClientError::StreamClosed { reason: CloseReason::Error(ref r), .. } if r == "microVM suspended"),
        "{err}"
    );
}

/// Answer a quiesce the host sends.
async fn quiesced(client: &AgentClient, guest: &mut FakeGuest) {
    let c = client.clone();
    let q = tokio::spawn(async move { c.quiesce(false, T).await });
    let HostMessage::Request {
        id,
        body: Request::Quiesce { .. },
    } = guest.recv().await
    else {
        panic!("expected quiesce")
    };
    guest
        .send(&GuestMessage::Response {
            id,
            body: Ok(Response::Quiesced),
        })
        .await;
    q.await.unwrap().unwrap();
}

/// Answer the next request, which must be a thaw.
async fn thawed(guest: &mut FakeGuest) {
    let HostMessage::Request {
        id,
        body: Request::Thaw,
    } = guest.recv().await
    else {
        panic!("the first message after quiesce must be the thaw")
    };
    guest
        .send(&GuestMessage::Response {
            id,
            body: Ok(Response::Thawed),
        })
        .await;
}

#[tokio::test]
async fn closing_an_abandoned_stream_waits_for_the_gate() {
    let (client, mut guest) = booted().await;
    let c = client.clone();
    let t = tokio::spawn(async move { c.tcp_connect(80, T).await });
    let HostMessage::Request {
        id,
        body: Request::TcpConnect { .. },
    } = guest.recv().await
    else {
        panic!("expected tcp_connect")
    };
    guest
        .send(&GuestMessage::Response {
            id,
            body: Ok(Response::TcpConnect),
        })
        .await;
    let tcp = t.await.unwrap().unwrap();
    quiesced(&client, &mut guest).await;
    drop(tcp);
    assert!(
        guest.silent_for(150).await,
        "a stream was closed through the quiesce gate"
    );
    let c = client.clone();
    let thaw = tokio::spawn(async move { c.thaw(T).await });
    thawed(&mut guest).await;
    thaw.await.unwrap().unwrap();
    assert_eq!(guest.recv().await, HostMessage::StreamClose { stream: id });
}

#[tokio::test]
async fn a_receive_never_waits_for_the_gate_and_its_credit_follows_the_thaw() {
    let (client, mut guest) = booted().await;
    let c = client.clone();
    let p = tokio::spawn(async move { c.exec(ExecRequest::default(), T).await });
    let id = guest.accept_exec().await;
    let mut p = p.await.unwrap().unwrap();
    quiesced(&client, &mut guest).await;
    // Output that earns the guest credit arrives while the gate is closed:
    // the consumer gets it at once (a receive that waited for the gate to
    // send the credit could be cancelled there, losing event and credit).
    guest.output(id, WINDOW / 4).await;
    match tokio::time::timeout(Duration::from_millis(500), p.events.recv()).await {
        Ok(Some(StreamEvent::Output { data, .. })) => assert_eq!(data.len(), WINDOW / 4),
        other => panic!("the receive did not return its event: {other:?}"),
    }
    assert!(guest.silent_for(150).await, "credit went through the gate");
    let c = client.clone();
    let thaw = tokio::spawn(async move { c.thaw(T).await });
    thawed(&mut guest).await;
    thaw.await.unwrap().unwrap();
    assert_eq!(
        guest.recv().await,
        HostMessage::StreamCredit {
            stream: id,
            bytes: STREAM_WINDOW_BYTES / 4
        }
    );
}

/// Open an exec stream the guest answers; returns its handle and id.
async fn opened(client: &AgentClient, guest: &mut FakeGuest) -> (Process, u64) {
    let c = client.clone();
    let p = tokio::spawn(async move { c.exec(ExecRequest::default(), T).await });
    let id = guest.accept_exec().await;
    (p.await.unwrap().unwrap(), id)
}

#[tokio::test]
async fn an_empty_data_frame_is_a_protocol_violation() {
    for fd_output in [true, false] {
        let (client, mut guest) = booted().await;
        let (_p, id) = opened(&client, &mut guest).await;
        let empty = if fd_output {
            GuestMessage::Output {
                stream: id,
                fd: OutputFd::Stdout,
                data: Vec::new(),
            }
        } else {
            GuestMessage::StreamData {
                stream: id,
                data: Vec::new(),
            }
        };
        guest.send(&empty).await;
        let h = tokio::time::timeout(T, client.wait_unhealthy())
            .await
            .expect("an empty data frame was accepted");
        assert!(
            matches!(h, ChannelHealth::Failed(ref r) if r.contains("empty")),
            "{h:?}"
        );
    }
}

#[tokio::test]
async fn many_small_chunks_within_the_window_are_queued() {
    let (client, mut guest) = booted().await;
    let (mut p, id) = opened(&client, &mut guest).await;
    // More one-byte chunks than any fixed message count would hold, all
    // within the window: the consumer reads nothing meanwhile.
    const CHUNKS: usize = 70_000;
    let mut frames = Vec::new();
    for _ in 0..CHUNKS {
        frames.extend(
            encode_frame(&GuestMessage::Output {
                stream: id,
                fd: OutputFd::Stdout,
                data: vec![b'x'],
            })
            .unwrap(),
        );
    }
    guest.stream.write_all(&frames).await.unwrap();
    let c = client.clone();
    let ping = tokio::spawn(async move { c.ping(T).await });
    let HostMessage::Request {
        id: ping_id,
        body: Request::Ping { nonce },
    } = guest.recv().await
    else {
        panic!("expected ping")
    };
    guest
        .send(&GuestMessage::Response {
            id: ping_id,
            body: Ok(Response::Pong { nonce }),
        })
        .await;
    ping.await.unwrap().unwrap();
    assert_eq!(client.health(), ChannelHealth::Up);
    let mut got = 0;
    while got < CHUNKS {
        match tokio::time::timeout(T, p.events.recv()).await.unwrap() {
            Some(StreamEvent::Output { data, .. }) => got += data.len(),
            other => panic!("{other:?} after {got} bytes"),
        }
    }
    assert_eq!(client.health(), ChannelHealth::Up);
}

#[tokio::test]
async fn unread_events_without_data_are_bounded() {
    let (client, mut guest) = booted().await;
    let (_p, id) = opened(&client, &mut guest).await;
    let mut frames = Vec::new();
    for pid in 0..(stream::MAX_QUEUED_CONTROL_EVENTS + 1) as u32 {
        frames.extend(encode_frame(&GuestMessage::Started { stream: id, pid }).unwrap());
    }
    guest.stream.write_all(&frames).await.unwrap();
    let h = tokio::time::timeout(T, client.wait_unhealthy())
        .await
        .expect("unbounded messages without data were accepted");
    assert!(
        matches!(h, ChannelHealth::Failed(ref r) if r.contains("unread")),
        "{h:?}"
    );
}

#[tokio::test]
async fn reattach_to_a_version_2_agent_sends_only_reattach() {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let client = AgentClient::start(a, ChannelStart::Reattach { version: 2 }).unwrap();
    let mut guest = FakeGuest::new(b, 2);
    let c = client.clone();
    let reattach = tokio::spawn(async move { c.reattach(T).await });
    // Reattach releases a quiesce itself: no Thaw first.
    let HostMessage::Request {
        id,
        body: Request::Reattach,
    } = guest.recv().await
    else {
        panic!("the first request to a version-2 agent must be Reattach")
    };
    guest
        .send(&GuestMessage::Response {
            id,
            body: Ok(Response::Reattached(AgentInfo {
                proto_version: 2,
                agent_version: "test".into(),
                capabilities: hearth_proto::capabilities(),
                closed_streams: Vec::new(),
            })),
        })
        .await;
    assert_eq!(reattach.await.unwrap().unwrap().proto_version, 2);
    // The gate is open.
    let c = client.clone();
    let ping = tokio::spawn(async move { c.ping(T).await });
    let HostMessage::Request {
        id,
        body: Request::Ping { nonce },
    } = guest.recv().await
    else {
        panic!()
    };
    guest
        .send(&GuestMessage::Response {
            id,
            body: Ok(Response::Pong { nonce }),
        })
        .await;
    ping.await.unwrap().unwrap();
}

#[tokio::test]
async fn reattach_to_a_version_1_agent_thaws() {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let client = AgentClient::start(a, ChannelStart::Reattach { version: 1 }).unwrap();
    let mut guest = FakeGuest::new(b, 1);
    let c = client.clone();
    let reattach = tokio::spawn(async move { c.reattach(T).await });
    let v1::HostMessage::Request {
        id,
        body: v1::Request::Thaw,
    } = guest.recv_v1().await
    else {
        panic!("a version-1 agent has no Reattach: it gets a Thaw")
    };
    guest
        .stream
        .write_all(
            &encode_frame_version(
                1,
                &v1::GuestMessage::Response {
                    id,
                    body: Ok(v1::Response::Thawed),
                },
            )
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(reattach.await.unwrap().unwrap().proto_version, 1);
}

/// The next host message, which must come within [`T`].
async fn next(guest: &mut FakeGuest) -> HostMessage {
    tokio::time::timeout(T, guest.recv())
        .await
        .expect("the host sent nothing")
}

/// Stream slots the host still holds.
fn slots(client: &AgentClient) -> usize {
    client.shared.streams.lock().unwrap().len()
}

/// Answer the next request, which must open a stream with `resp`.
async fn accept(guest: &mut FakeGuest, resp: Response) -> u64 {
    let HostMessage::Request { id, .. } = guest.recv().await else {
        panic!("expected a request")
    };
    guest
        .send(&GuestMessage::Response { id, body: Ok(resp) })
        .await;
    id
}

#[tokio::test]
async fn dropped_tcp_streams_and_attachments_are_closed_and_forgotten() {
    let (client, mut guest) = booted().await;
    let c = client.clone();
    let t = tokio::spawn(async move { c.tcp_connect(80, T).await });
    let tcp_id = accept(&mut guest, Response::TcpConnect).await;
    let tcp = t.await.unwrap().unwrap();
    let c = client.clone();
    let a = tokio::spawn(async move { c.attach("app", T).await });
    let attach_id = accept(&mut guest, Response::Attached { pid: Some(9) }).await;
    let attachment = a.await.unwrap().unwrap();
    assert_eq!(slots(&client), 2);
    // The guest side never ends them on its own: the host must let go.
    drop(tcp);
    assert_eq!(
        guest.recv().await,
        HostMessage::StreamClose { stream: tcp_id }
    );
    drop(attachment);
    assert_eq!(
        next(&mut guest).await,
        HostMessage::StreamClose { stream: attach_id }
    );
    assert_eq!(slots(&client), 0, "a dropped stream's slot is kept");
    // Their late output is dropped like any unknown stream's.
    guest.output(attach_id, 10).await;
    assert!(guest.silent_for(100).await, "credit for a forgotten stream");
    assert_eq!(client.health(), ChannelHealth::Up);
}

#[tokio::test]
async fn a_timed_out_exec_is_cancelled_in_the_guest() {
    let (client, mut guest) = booted().await;
    let c = client.clone();
    let p = tokio::spawn(async move {
        c.exec(ExecRequest::default(), Duration::from_millis(200))
            .await
    });
    let HostMessage::Request {
        id,
        body: Request::Exec(_),
    } = guest.recv().await
    else {
        panic!("expected exec")
    };
    // The guest answers too late.
    let err = p.await.unwrap().err().expect("timed out");
    assert!(matches!(err, AgentClientError::Timeout { .. }), "{err}");
    assert_eq!(
        next(&mut guest).await,
        HostMessage::StreamClose { stream: id }
    );
    assert_eq!(slots(&client), 0);
    guest
        .send(&GuestMessage::Response {
            id,
            body: Ok(Response::Exec { pid: 7 }),
        })
        .await;
    guest.output(id, 10).await;
    assert!(guest.silent_for(100).await);
    assert_eq!(client.health(), ChannelHealth::Up);
}

#[tokio::test]
async fn a_timed_out_run_kills_its_process() {
    let (client, mut guest) = booted().await;
    let c = client.clone();
    let run = tokio::spawn(async move { c.run(&["sleep", "9"], Duration::from_millis(300)).await });
    let id = guest.accept_exec().await;
    let err = run.await.unwrap().unwrap_err();
    assert!(matches!(err, AgentClientError::Timeout { .. }), "{err}");
    assert_eq!(
        next(&mut guest).await,
        HostMessage::StreamClose { stream: id }
    );
    assert_eq!(slots(&client), 0);
}

/// An open TCP stream to the fake guest, as a byte stream.
async fn tcp_io(client: &AgentClient, guest: &mut FakeGuest) -> (tokio::io::DuplexStream, u64) {
    let c = client.clone();
    let t = tokio::spawn(async move { c.tcp_connect(80, T).await });
    let id = accept(guest, Response::TcpConnect).await;
    (t.await.unwrap().unwrap().into_io(), id)
}

#[tokio::test]
async fn a_tcp_stream_as_io_carries_bytes_and_half_closes_both_ways() {
    let (client, mut guest) = booted().await;
    let (mut io, id) = tcp_io(&client, &mut guest).await;
    io.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut sent = Vec::new();
    while sent.len() < 18 {
        match next(&mut guest).await {
            HostMessage::StreamData { stream, data } => {
                assert_eq!(stream, id);
                sent.extend(data);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(sent, b"GET / HTTP/1.1\r\n\r\n");
    guest
        .send(&GuestMessage::StreamData {
            stream: id,
            data: b"HTTP/1.1 200 OK\r\n\r\nhi".to_vec(),
        })
        .await;
    guest.send(&GuestMessage::StreamEof { stream: id }).await;
    let mut got = Vec::new();
    tokio::time::timeout(T, io.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got, b"HTTP/1.1 200 OK\r\n\r\nhi",
        "the guest's EOF is the caller's"
    );
    // The guest said EOF, but the caller may still send: not closed yet.
    assert!(guest.silent_for(100).await);
    io.write_all(b"more").await.unwrap();
    io.shutdown().await.unwrap();
    assert_eq!(
        next(&mut guest).await,
        HostMessage::StreamData {
            stream: id,
            data: b"more".to_vec()
        }
    );
    assert_eq!(
        next(&mut guest).await,
        HostMessage::StreamEof { stream: id }
    );
    assert_eq!(
        next(&mut guest).await,
        HostMessage::StreamClose { stream: id },
        "both directions done: the connection is closed"
    );
}

#[tokio::test]
async fn dropping_the_io_closes_the_guest_connection() {
    let (client, mut guest) = booted().await;
    let (io, id) = tcp_io(&client, &mut guest).await;
    drop(io);
    assert_eq!(
        next(&mut guest).await,
        HostMessage::StreamEof { stream: id }
    );
    assert_eq!(
        next(&mut guest).await,
        HostMessage::StreamClose { stream: id }
    );
    assert_eq!(slots(&client), 0);
}

#[tokio::test]
async fn an_io_reader_that_stops_reading_holds_back_the_guest_by_credit() {
    let (client, mut guest) = booted().await;
    let (io, id) = tcp_io(&client, &mut guest).await;
    // Send more than the window plus the pipe; nobody reads.
    let chunk = 16 * 1024;
    let mut sent = 0;
    while sent < WINDOW {
        guest
            .send(&GuestMessage::StreamData {
                stream: id,
                data: vec![7u8; chunk],
            })
            .await;
        sent += chunk;
    }
    // The pump moved what fits in the pipe and credited only that back.
    let mut credited = 0usize;
    while let Ok(m) = tokio::time::timeout(Duration::from_millis(300), guest.recv()).await {
        match m {
            HostMessage::StreamCredit { stream, bytes } => {
                assert_eq!(stream, id);
                credited += bytes as usize;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        credited <= super::tcpio::PIPE_BYTES + WINDOW / 4,
        "credited {credited} bytes nobody read"
    );
    assert_eq!(client.health(), ChannelHealth::Up);
    drop(io);
}

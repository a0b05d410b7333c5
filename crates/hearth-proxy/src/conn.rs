//! Connections: the accept loop, one task per accepted connection, protocol
//! sniffing, TLS, hyper's HTTP/1.1 and HTTP/2 servers, and shutdown.
//!
//! [`run`] accepts on the caller's task. Each connection gets a slot of the
//! connection semaphore (none left: the socket is closed at once) and a task
//! running [`serve_tcp`]. That task reads the first byte: 0x16 is a TLS
//! ClientHello (refused when TLS is off); anything else is plain HTTP, which
//! with TLS on is served only to CONNECT (see [`crate::forward`]). A CONNECT
//! tunnel runs [`serve_stream`] again over the upgraded stream, on a task
//! spawned by [`spawn_guarded`]; so does each WebSocket pipe and upstream
//! connection. A guarded task holds the connection's slot and ends with the
//! connection: when no byte has crossed the client socket for the idle
//! timeout, or at hard stop.
//!
//! Shutdown: the listener is dropped, every connection is told to finish
//! gracefully (HTTP/1.1 closes after the request in flight, HTTP/2 sends
//! GOAWAY), and after [`SHUTDOWN_GRACE`] whatever remains is dropped.

use crate::body::{empty, ProxyBody};
use crate::ctx::{spawn_guarded, stopped, ConnCtx, Shared, Stop};
use crate::forward;
use crate::io::{IdleClock, Prefixed, Tapped};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A client must send its first byte within this.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);
/// A TLS handshake must finish within this.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// An HTTP/1.1 request head must arrive within this.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 pings this often, and drops the connection when one is not
/// answered within [`H2_PING_TIMEOUT`].
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Streams one HTTP/2 connection may have open at once.
const H2_MAX_STREAMS: u32 = 128;
/// How long requests in flight get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Accepts until `shutdown` completes, then drains (see the module docs).
pub(crate) async fn run<F: Future>(listener: TcpListener, shared: Arc<Shared>, shutdown: F) {
    let max = shared.cfg.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tokio::spawn(serve_tcp(shared.clone(), stream, peer, permit));
                    }
                    Err(_) => {
                        tracing::warn!(%peer, max_connections = max, "connection limit reached; connection closed");
                        drop(stream);
                    }
                },
                Err(e) => {
                    // Out of file descriptors and the like: back off a little.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    shared.stop.send_replace(Stop::Draining);
    if tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::info!("closing connections still open after the shutdown grace period");
        shared.stop.send_replace(Stop::Now);
        let _ = tokio::time::timeout(Duration::from_secs(2), slots.acquire_many(all)).await;
    }
}

/// One accepted TCP connection, on its own task.
async fn serve_tcp(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let clock = IdleClock::new();
    let ctx = ConnCtx {
        peer,
        https: false,
        plain_only_connect: false,
        outer: true,
        clock: clock.clone(),
        permit: Arc::new(permit),
    };
    let io = Tapped::watched(stream, clock.clone());
    let stop = stopped(shared.stop.subscribe(), Stop::Now);
    let idle = shared.idle_timeout();
    tokio::select! {
        _ = serve_stream(shared, io, ctx) => {}
        _ = clock.expired(idle) => tracing::debug!(%peer, "idle connection closed"),
        _ = stop => {}
    }
}

/// Serves a CONNECT tunnel's stream like a new connection (without
/// CONNECT). Boxed: it is spawned from inside a request handler, which is
/// itself inside [`serve_stream`].
fn serve_tunnel(
    shared: Arc<Shared>,
    io: TokioIo<hyper::upgrade::Upgraded>,
    ctx: ConnCtx,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    let ctx = ConnCtx {
        outer: false,
        ..ctx
    };
    Box::pin(serve_stream(shared, io, ctx))
}

/// Sniffs the first byte, does TLS if it is a ClientHello, and serves HTTP.
async fn serve_stream<IO>(shared: Arc<Shared>, mut io: IO, ctx: ConnCtx)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut first = [0u8; 1];
    match tokio::time::timeout(FIRST_BYTE_TIMEOUT, io.read(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return,
    }
    let io = Prefixed::new(first.to_vec(), io);
    if first[0] == 0x16 {
        let Some(acceptor) = shared.tls.clone() else {
            tracing::debug!(peer = %ctx.peer, "TLS ClientHello on a plain-HTTP proxy; closed");
            return;
        };
        let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(peer = %ctx.peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %ctx.peer, "TLS handshake timed out");
                return;
            }
        };
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        let ctx = ConnCtx {
            https: true,
            plain_only_connect: false,
            ..ctx
        };
        serve_http(shared, tls, ctx, if h2 { Proto::H2 } else { Proto::H1 }).await
    } else {
        let tls_on = shared.tls_on();
        let ctx = ConnCtx {
            https: false,
            plain_only_connect: tls_on,
            ..ctx
        };
        serve_http(
            shared,
            io,
            ctx,
            if tls_on { Proto::H1 } else { Proto::Auto },
        )
        .await
    }
}

#[derive(Debug, Clone, Copy)]
enum Proto {
    H1,
    H2,
    /// HTTP/1.1, or HTTP/2 with prior knowledge (plain HTTP only).
    Auto,
}

async fn serve_http<IO>(shared: Arc<Shared>, io: IO, ctx: ConnCtx, proto: Proto)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT)
        .max_concurrent_streams(H2_MAX_STREAMS);
    let builder = match proto {
        Proto::H1 => builder.http1_only(),
        Proto::H2 => builder.http2_only(),
        Proto::Auto => builder,
    };
    let peer = ctx.peer;
    let svc_shared = shared.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let shared = svc_shared.clone();
        let ctx = ctx.clone();
        async move {
            let resp = if req.method() == hyper::Method::CONNECT {
                connect(&shared, &ctx, req)
            } else {
                forward::handle(shared, ctx, req).await
            };
            Ok::<hyper::Response<ProxyBody>, Infallible>(resp)
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let draining = stopped(shared.stop.subscribe(), Stop::Draining);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = draining => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// CONNECT `<microvmId>.<domain>:<port>` ([`forward::check_connect`]):
/// answers 200 and serves the tunnel like a new connection, on a task tied
/// to this one.
fn connect(
    shared: &Arc<Shared>,
    ctx: &ConnCtx,
    req: hyper::Request<Incoming>,
) -> hyper::Response<ProxyBody> {
    if let Err(reject) = forward::check_connect(shared, ctx, &req) {
        tracing::debug!(peer = %ctx.peer, status = reject.status.as_u16(), message = %reject.message, "CONNECT refused");
        return reject.into_response();
    }
    let on_upgrade = hyper::upgrade::on(req);
    let tunnel_shared = shared.clone();
    let tunnel_ctx = ctx.clone();
    spawn_guarded(shared, ctx, async move {
        match on_upgrade.await {
            Ok(upgraded) => serve_tunnel(tunnel_shared, TokioIo::new(upgraded), tunnel_ctx).await,
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
        }
    });
    hyper::Response::new(empty())
}

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

use crate::body::ProxyBody;
use crate::io::{IdleClock, Prefixed, Watched};
use crate::ratelimit::RateLimiter;
use crate::{forward, ProxyConfig, Upstreams};
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
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

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

/// Where the proxy is in its life; connections watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Stop {
    Running,
    /// Finish what is in flight, take nothing new.
    Draining,
    /// Drop everything.
    Now,
}

/// What every connection task shares.
pub(crate) struct Shared {
    pub(crate) cfg: ProxyConfig,
    /// `cfg.domain`, normalized.
    pub(crate) domain: String,
    pub(crate) upstreams: Arc<dyn Upstreams>,
    pub(crate) key: hearth_token::TokenKey,
    pub(crate) limiter: RateLimiter,
    tls: Option<TlsAcceptor>,
    stop: watch::Sender<Stop>,
}

impl Shared {
    pub(crate) fn new(
        cfg: ProxyConfig,
        domain: String,
        upstreams: Arc<dyn Upstreams>,
        key: hearth_token::TokenKey,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        Self {
            limiter: RateLimiter::new(cfg.max_requests_per_sec_per_microvm),
            cfg,
            domain,
            upstreams,
            key,
            tls: tls.map(TlsAcceptor::from),
            stop: watch::channel(Stop::Running).0,
        }
    }

    pub(crate) fn tls_on(&self) -> bool {
        self.tls.is_some()
    }

    fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.idle_timeout_secs)
    }
}

/// Completes once the proxy's stop level reaches `level`.
async fn stopped(mut rx: watch::Receiver<Stop>, level: Stop) {
    // An error means the sender is gone, which only happens once every
    // connection is gone too.
    let _ = rx.wait_for(|s| *s >= level).await;
}

/// One connection (or a tunnel inside one) as request handlers see it.
#[derive(Clone)]
pub(crate) struct ConnCtx {
    pub(crate) peer: SocketAddr,
    /// Requests arrived over TLS.
    pub(crate) https: bool,
    /// Plain HTTP while TLS is on: only CONNECT is served.
    pub(crate) plain_only_connect: bool,
    /// The client's own connection to the proxy (CONNECT is allowed), not a
    /// tunnel.
    pub(crate) outer: bool,
    clock: Arc<IdleClock>,
    permit: Arc<OwnedSemaphorePermit>,
}

/// Spawns `fut` for the connection `ctx`: it holds the connection's slot
/// and is dropped when the connection goes idle or at hard stop.
pub(crate) fn spawn_guarded<F>(shared: &Shared, ctx: &ConnCtx, fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let clock = ctx.clock.clone();
    let permit = ctx.permit.clone();
    let stop = stopped(shared.stop.subscribe(), Stop::Now);
    let idle = shared.idle_timeout();
    tokio::spawn(async move {
        let _permit = permit;
        tokio::select! {
            _ = fut => {}
            _ = clock.expired(idle) => tracing::debug!("idle connection's task ended"),
            _ = stop => {}
        }
    });
}

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
    let io = Watched::new(stream, clock.clone());
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
pub(crate) fn serve_tunnel(
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
            Ok::<hyper::Response<ProxyBody>, Infallible>(forward::handle(shared, ctx, req).await)
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

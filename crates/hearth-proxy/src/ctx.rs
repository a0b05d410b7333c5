//! What every connection task of the proxy shares ([`Shared`]), what a
//! request handler knows of its connection ([`ConnCtx`]), and how tasks
//! tied to a connection are spawned ([`spawn_guarded`]). Plain state; used
//! by the connection tasks ([`crate::conn`]) and the request handlers
//! ([`crate::forward`]) alike.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_rustls::TlsAcceptor;

use crate::io::IdleClock;
use crate::ratelimit::RateLimiter;
use crate::{ProxyConfig, Upstreams};

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
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) stop: watch::Sender<Stop>,
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

    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.idle_timeout_secs)
    }
}

/// Completes once the proxy's stop level reaches `level`.
pub(crate) async fn stopped(mut rx: watch::Receiver<Stop>, level: Stop) {
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
    pub(crate) clock: Arc<IdleClock>,
    pub(crate) permit: Arc<OwnedSemaphorePermit>,
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

//! The accept loop: one task per connection, at most
//! [`crate::Limits::max_connections`] at once, and a graceful end. Runs on
//! the caller's Tokio runtime.

use std::future::Future;
use std::io;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::service::Service;
use crate::{conn, Limits};

/// Most connections beyond the cap that are answered 503 at once; beyond
/// that they are closed unanswered.
const MAX_REFUSALS: usize = 64;

/// Serve `listener` until `shutdown` resolves, then stop accepting, let
/// in-flight requests finish (up to [`Limits::shutdown_grace`]) and return.
pub async fn serve<S: Service>(
    listener: TcpListener,
    limits: Limits,
    service: Arc<S>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let limits = Arc::new(limits);
    let conns = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    match conns.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let (limits, service, stop) =
                                (limits.clone(), service.clone(), stop_rx.clone());
                            tokio::spawn(async move {
                                conn::run(stream, peer, limits, service, stop).await;
                                drop(permit);
                            });
                        }
                        Err(_) => {
                            if let Ok(p) = refusals.clone().try_acquire_owned() {
                                let max = limits.max_connections;
                                tokio::spawn(async move {
                                    conn::refuse_busy(stream, max).await;
                                    drop(p);
                                });
                            }
                        }
                    }
                }
                Err(e) => {
                    // Out of descriptors and the like: do not spin.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
        }
    }
    let _ = stop_tx.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(limits.shutdown_grace, conns.acquire_many(all)).await;
    Ok(())
}

//! What every request handler shares: the server's state, the
//! authenticated caller, and the way blocking store work is run off the
//! request task. Plain data and one helper; used on the request tasks.

use std::sync::Arc;
use std::time::SystemTime;

use hearth_store::{AccountId, Store};

use crate::error::{store_error, ApiError};
use crate::paging::TokenSealer;

/// A managed base image offered to every account.
#[derive(Debug, Clone)]
pub struct ManagedImage {
    pub name: String,
    pub version: String,
    pub created_at_secs: i64,
}

/// Shared server state.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub sealer: TokenSealer,
    pub managed_images: Vec<ManagedImage>,
    /// The server's own region (`hearth serve --region`): requests must be
    /// signed for it, and ARNs are minted in it.
    pub region: String,
}

/// Who is calling, established by SigV4.
#[derive(Debug, Clone)]
pub struct Caller {
    pub account_id: AccountId,
    /// Region of the credential scope; ARNs are minted in it.
    pub region: String,
}

/// Run blocking store work off the request task; store failures become
/// API errors.
pub(crate) async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, hearth_store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| store_error(what, e)),
        Err(e) => Err(ApiError::internal(what, e)),
    }
}

/// Seconds since the Unix epoch.
pub fn unix_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

//! What every request handler shares: the server's state, the
//! authenticated caller, the per-request context handed to operation
//! handlers ([`RequestContext`]), and the way blocking store work is run off
//! the request task. Plain data and small helpers; used on the request tasks.

use std::sync::Arc;
use std::time::SystemTime;

use hearth_store::{AccountId, Store, StoreError};
use serde::de::DeserializeOwned;
use serde::Serialize;

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
    /// The control plane's image side: every image, version and build
    /// state change goes through it.
    pub images: hearth_control::ImageControl,
    /// The control plane's microVM side: run, suspend, resume, terminate.
    pub microvms: hearth_control::MicrovmControl,
    /// The key the endpoint proxy verifies auth tokens with; `None` when
    /// this server runs no proxy (tokens are then refused).
    pub proxy_tokens: Option<hearth_token::TokenKey>,
}

/// Who is calling, established by SigV4.
#[derive(Debug, Clone)]
pub struct Caller {
    pub account_id: AccountId,
    /// The region ARNs are minted in: the server's own (a request signed
    /// for another is refused before it gets here).
    pub region: String,
}

/// What an operation handler gets besides its input: the server, who is
/// calling, and which operation runs. Borrowed for one request.
#[derive(Clone, Copy)]
pub struct RequestContext<'a> {
    pub state: &'a Arc<AppState>,
    pub caller: &'a Caller,
    /// The operation's model name, e.g. `ListMicrovms`.
    pub operation: &'static str,
}

impl RequestContext<'_> {
    /// The caller's account (every store call takes it).
    pub fn account(&self) -> AccountId {
        self.caller.account_id.clone()
    }

    /// Run blocking store work off the request task; store failures become
    /// API errors (`what` names the work in the log).
    pub async fn store<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let store = self.state.store.clone();
        blocking(what, move || f(store.as_ref())).await
    }

    /// Seal a `nextToken` for this account and operation.
    pub fn seal_token<C: Serialize>(&self, cursor: &C) -> String {
        self.state
            .sealer
            .seal(self.caller.account_id.as_str(), self.operation, cursor)
    }

    /// Open a `nextToken` sealed by [`RequestContext::seal_token`] for this
    /// account and operation (anything else is a ValidationException).
    pub fn open_token<C: DeserializeOwned>(&self, token: &str) -> Result<C, ApiError> {
        self.state
            .sealer
            .open(self.caller.account_id.as_str(), self.operation, token)
    }
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

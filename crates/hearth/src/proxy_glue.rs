//! The endpoint proxy's way to microVMs: `hearth_proxy::Upstreams` on top
//! of the control plane's [`hearth_control::MicrovmControl::connect`]
//! (which resumes a suspended microVM when its idle policy says so, and
//! counts the traffic as activity). Runs on the proxy's connection tasks.

use std::sync::{Arc, OnceLock};

use hearth_control::{ConnectError, MicrovmControl, OpenRefusal};
use hearth_proxy::{OpenError, Upstream, Upstreams};
use hearth_store::AccountId;

/// The control plane, once it exists: the proxy is bound first (its port
/// is part of every endpoint), so requests that arrive before the control
/// plane is ready are answered 503.
pub struct ControlUpstreams(pub Arc<OnceLock<MicrovmControl>>);

#[async_trait::async_trait]
impl Upstreams for ControlUpstreams {
    async fn open(
        &self,
        account_id: &str,
        microvm_id: &str,
        port: u16,
    ) -> Result<Upstream, OpenError> {
        let control = self
            .0
            .get()
            .ok_or_else(|| OpenError::Unavailable("the server is starting; try again".into()))?;
        let account = AccountId::new(account_id).map_err(|_| OpenError::NotFound)?;
        match control.connect(&account, microvm_id, port).await {
            Ok(c) => Ok(Upstream {
                io: Box::new(c.io),
                activity: c.activity,
            }),
            Err(ConnectError::Refused(OpenRefusal::NotFound(_))) => Err(OpenError::NotFound),
            Err(ConnectError::Refused(OpenRefusal::NotRunning { state, hint, .. })) => {
                Err(OpenError::NotRunning {
                    state: state.as_str().to_string(),
                    hint,
                })
            }
            Err(ConnectError::Refused(e @ OpenRefusal::ResumeFailed { .. })) => {
                Err(OpenError::Unavailable(e.to_string()))
            }
            Err(ConnectError::NotListening { .. }) => Err(OpenError::Refused),
        }
    }
}

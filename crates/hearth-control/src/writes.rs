//! The state writes of the control plane, each conditional on the state it
//! was computed from (a concurrent change is a store conflict, never a lost
//! update). Blocking store calls, run on the blocking pool by callers.

use hearth_domain::{BuildState, ImageEvent, ImageState, Version};
use hearth_store::{
    AccountId, Build, Image, ImageVersion, Page, PageRequest, StateUpdate, Store, StoreError,
    VersionUpdate,
};
use serde_json::Value;

use crate::ControlError;

/// Now, in Unix seconds (the store's timestamps).
pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Every item of a paged store listing, 100 at a time.
pub(crate) fn all_pages<T>(
    mut list: impl FnMut(&PageRequest) -> Result<Page<T>, StoreError>,
) -> Result<Vec<T>, ControlError> {
    let mut items = Vec::new();
    let mut page = PageRequest::first(100);
    loop {
        let p = list(&page)?;
        items.extend(p.items);
        match p.next {
            Some(c) => page = PageRequest::after(100, c),
            None => return Ok(items),
        }
    }
}

/// Move a build from its current state to `to`, with `doc`.
pub(crate) fn build(
    st: &dyn Store,
    acct: &AccountId,
    b: &Build,
    to: BuildState,
    doc: Value,
) -> Result<Build, ControlError> {
    Ok(st.update_build(
        acct,
        &b.image_id,
        &b.version,
        &b.build_id,
        &StateUpdate {
            state: to.as_str().into(),
            doc,
            updated_at_secs: now_secs(),
            expected_state: Some(b.state.clone()),
        },
    )?)
}

/// Move a version from its current state to `to`, with `doc`.
pub(crate) fn version(
    st: &dyn Store,
    acct: &AccountId,
    v: &ImageVersion,
    to: Version,
    doc: Value,
) -> Result<ImageVersion, ControlError> {
    Ok(st.update_image_version(
        acct,
        &v.image_id,
        &v.version,
        &VersionUpdate {
            state: to.state.as_str().into(),
            status: to.status.as_str().into(),
            doc,
            updated_at_secs: now_secs(),
            expected_state: Some(v.state.clone()),
        },
    )?)
}

/// Move an image from its current state to `to` (its document kept).
pub(crate) fn image(
    st: &dyn Store,
    acct: &AccountId,
    i: &Image,
    to: ImageState,
) -> Result<Image, ControlError> {
    Ok(st.update_image(
        acct,
        &i.image_id,
        &StateUpdate {
            state: to.as_str().into(),
            doc: i.doc.clone(),
            updated_at_secs: now_secs(),
            expected_state: Some(i.state.clone()),
        },
    )?)
}

/// Apply `event` to the image if its state machine allows it now; an event
/// it does not allow leaves the image as it is (e.g. a failed build of an
/// image already being deleted).
pub(crate) fn image_event_if_allowed(
    st: &dyn Store,
    acct: &AccountId,
    image_id: &str,
    event: &ImageEvent,
) -> Result<(), ControlError> {
    let i = st.get_image(acct, image_id)?;
    if let Ok(next) = i.state.parse::<ImageState>()?.transition(event) {
        image(st, acct, &i, next)?;
    }
    Ok(())
}

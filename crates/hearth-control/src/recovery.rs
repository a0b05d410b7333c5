//! Start-up: builds a previous server left PENDING or IN_PROGRESS end
//! FAILED, with a reason, their versions FAILED and their images
//! CREATE_FAILED or UPDATE_FAILED; their half-made files are removed. Runs
//! once, before the server accepts requests.

use hearth_domain::{BuildEvent, BuildState, ImageEvent, Version, VersionEvent};
use hearth_store::{PageRequest, Store};
use serde_json::json;

use crate::images::{refresh_latest, ImageControl};
use crate::writes;
use crate::ControlError;

/// The reason an interrupted build is given.
pub const INTERRUPTED: &str =
    "the build was interrupted: hearth serve stopped before it finished; start a new version with UpdateMicrovmImage";

impl ImageControl {
    /// End every unfinished build (see the module docs). Returns how many.
    pub fn recover(&self) -> Result<usize, ControlError> {
        let st = self.inner.store.as_ref();
        let states = vec![
            BuildState::Pending.as_str().to_string(),
            BuildState::InProgress.as_str().to_string(),
        ];
        let mut builds = Vec::new();
        let mut page = PageRequest::first(100);
        loop {
            let p = st.list_builds_all_accounts(&states, &page)?;
            builds.extend(p.items);
            match p.next {
                Some(c) => page = PageRequest::after(100, c),
                None => break,
            }
        }
        let catalog = self.catalog();
        for b in &builds {
            let _ = std::fs::remove_dir_all(self.inner.layout.build_dir(&b.build_id));
            crate::files::remove_owned(
                catalog.as_ref(),
                &self.inner.layout.version_dir(&b.image_id, &b.version),
            );
            if let Err(e) = end_interrupted(st, b) {
                tracing::error!(build = %b.build_id, "cannot end an interrupted build: {e}");
            }
        }
        Ok(builds.len())
    }
}

fn end_interrupted(st: &dyn Store, b: &hearth_store::Build) -> Result<(), ControlError> {
    let acct = &b.account_id;
    let next = b
        .state
        .parse::<BuildState>()?
        .transition(&BuildEvent::Interrupted)?;
    writes::build(st, acct, b, next, with_reason(&b.doc))?;
    let v = st.get_image_version(acct, &b.image_id, &b.version)?;
    let cur = Version {
        state: v.state.parse()?,
        status: v.status.parse()?,
    };
    if let Ok(vn) = cur.transition(&VersionEvent::BuildFailed) {
        writes::version(st, acct, &v, vn, with_reason(&v.doc))?;
    }
    writes::image_event_if_allowed(st, acct, &b.image_id, &ImageEvent::BuildFailed)?;
    refresh_latest(st, acct, &b.image_id)?;
    Ok(())
}

/// `doc` with the interrupted build's reason.
fn with_reason(doc: &serde_json::Value) -> serde_json::Value {
    let mut doc = doc.clone();
    if let Some(o) = doc.as_object_mut() {
        o.insert("stateReason".into(), json!(INTERRUPTED));
    }
    doc
}

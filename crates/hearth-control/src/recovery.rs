//! Start-up: builds a previous server left PENDING or IN_PROGRESS end
//! FAILED, with a reason, their versions FAILED and their images
//! CREATE_FAILED or UPDATE_FAILED; their half-made files are removed. Then,
//! since no build runs yet, any image still CREATING or UPDATING was left
//! between two of its creation's writes (the server ended after the image
//! or its version was written, before its build was): it fails the same
//! way, with its unfinished versions. Runs once, before the server accepts
//! requests.

use hearth_domain::{
    BuildEvent, BuildState, ImageEvent, ImageState, Version, VersionEvent, VersionState,
};
use hearth_store::{PageRequest, Store};
use serde_json::json;

use crate::images::{refresh_latest, ImageControl};
use crate::writes::{self, all_pages};
use crate::ControlError;

/// The reason an interrupted build is given.
pub const INTERRUPTED: &str =
    "the build was interrupted: hearth serve stopped before it finished; start a new version with UpdateMicrovmImage";

impl ImageControl {
    /// End every unfinished build and image (see the module docs). Returns
    /// how many.
    pub fn recover(&self) -> Result<usize, ControlError> {
        let st = self.inner.store.as_ref();
        let states = vec![
            BuildState::Pending.as_str().to_string(),
            BuildState::InProgress.as_str().to_string(),
        ];
        let builds = all_pages(|page| st.list_builds_all_accounts(&states, page))?;
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
        let states = vec![
            ImageState::Creating.as_str().to_string(),
            ImageState::Updating.as_str().to_string(),
        ];
        let images = all_pages(|page| st.list_images_all_accounts(&states, page))?;
        for i in &images {
            if let Err(e) = self.end_stuck_image(st, i) {
                tracing::error!(image = %i.image_id, "cannot end an interrupted image: {e}");
            }
        }
        Ok(builds.len() + images.len())
    }

    /// Fail an image left CREATING/UPDATING without a build, and its
    /// versions that never got one.
    fn end_stuck_image(&self, st: &dyn Store, i: &hearth_store::Image) -> Result<(), ControlError> {
        let acct = &i.account_id;
        let mut page = PageRequest::first(100);
        loop {
            let p = st.list_image_versions(acct, &i.image_id, &page)?;
            for v in &p.items {
                let cur = Version {
                    state: v.state.parse()?,
                    status: v.status.parse()?,
                };
                if matches!(cur.state, VersionState::Pending | VersionState::InProgress) {
                    crate::files::remove_owned(
                        self.catalog().as_ref(),
                        &self.inner.layout.version_dir(&i.image_id, &v.version),
                    );
                    let next = cur.transition(&VersionEvent::BuildFailed)?;
                    writes::version(st, acct, v, next, with_reason(&v.doc))?;
                }
            }
            match p.next {
                Some(c) => page = PageRequest::after(100, c),
                None => break,
            }
        }
        writes::image_event_if_allowed(st, acct, &i.image_id, &ImageEvent::BuildFailed)?;
        refresh_latest(st, acct, &i.image_id)?;
        Ok(())
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

//! Start-up: builds a previous server left PENDING or IN_PROGRESS end
//! FAILED, with a reason, their versions FAILED and their images
//! CREATE_FAILED or UPDATE_FAILED; their half-made files are removed. Runs
//! once, before the server accepts requests.

use hearth_domain::{BuildEvent, BuildState, ImageEvent, ImageState, Version, VersionEvent};
use hearth_store::{PageRequest, StateUpdate, Store, VersionUpdate};
use serde_json::json;

use crate::images::{now_secs, refresh_latest, ImageControl};
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
    let now = now_secs();
    let next = b
        .state
        .parse::<BuildState>()?
        .transition(&BuildEvent::Interrupted)?;
    let mut doc = b.doc.clone();
    if let Some(o) = doc.as_object_mut() {
        o.insert("stateReason".into(), json!(INTERRUPTED));
    }
    st.update_build(
        acct,
        &b.image_id,
        &b.version,
        &b.build_id,
        &StateUpdate {
            state: next.as_str().into(),
            doc,
            updated_at_secs: now,
            expected_state: Some(b.state.clone()),
        },
    )?;
    let v = st.get_image_version(acct, &b.image_id, &b.version)?;
    let cur = Version {
        state: v.state.parse()?,
        status: v.status.parse()?,
    };
    if let Ok(vn) = cur.transition(&VersionEvent::BuildFailed) {
        let mut vdoc = v.doc.clone();
        if let Some(o) = vdoc.as_object_mut() {
            o.insert("stateReason".into(), json!(INTERRUPTED));
        }
        st.update_image_version(
            acct,
            &b.image_id,
            &b.version,
            &VersionUpdate {
                state: vn.state.as_str().into(),
                status: vn.status.as_str().into(),
                doc: vdoc,
                updated_at_secs: now,
                expected_state: Some(v.state.clone()),
            },
        )?;
    }
    let image = st.get_image(acct, &b.image_id)?;
    if let Ok(next) = image
        .state
        .parse::<ImageState>()?
        .transition(&ImageEvent::BuildFailed)
    {
        st.update_image(
            acct,
            &b.image_id,
            &StateUpdate {
                state: next.as_str().into(),
                doc: image.doc.clone(),
                updated_at_secs: now,
                expected_state: Some(image.state.clone()),
            },
        )?;
    }
    refresh_latest(st, acct, &b.image_id)?;
    Ok(())
}

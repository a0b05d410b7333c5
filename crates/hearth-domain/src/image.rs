//! The state machine of a MicroVM image (`MicrovmImageState`).
//!
//! An image's state follows the build of its newest version: `CreateMicrovmImage`
//! makes the image CREATING with version 1 building; `UpdateMicrovmImage` starts
//! the build of a new version and makes it UPDATING. One build at a time: an
//! update is refused while a build runs (CREATING, UPDATING) and while the image
//! is being deleted.
//!
//! ```text
//!   CreateMicrovmImage
//!          |
//!          v          BuildSucceeded
//!      CREATING ----------------------> CREATED
//!          |                               |
//!          | BuildFailed                   | UpdateRequested
//!          v           UpdateRequested     v
//!    CREATE_FAILED ------------------->  UPDATING <--------------------+
//!                                        |      |                      |
//!                         BuildSucceeded |      | BuildFailed          |
//!                                        v      v                      |
//!                                   UPDATED    UPDATE_FAILED           |
//!                                      |           |   UpdateRequested |
//!                                      +-----------+-------------------+
//!
//!   any state but DELETING, DELETED
//!          | DeleteRequested
//!          v          DeleteFinished
//!      DELETING ----------------------> DELETED
//! ```
//!
//! Deletion is allowed at any time, including while a build runs: the caller
//! cancels that build, and its late outcome (`BuildSucceeded`/`BuildFailed` on a
//! DELETING image) is refused, so the caller drops it. A build that ends for
//! any other reason than success (a failure, a cancellation because its version
//! was deleted, a server restart) is a `BuildFailed` for the image, so an image
//! never stays CREATING or UPDATING without a running build. A second delete
//! of a DELETING image is refused; whether to answer it as a success is the
//! API's decision.
//!
//! Pure functions: called by the API handlers and by the build task before
//! they write the new state.

use crate::error::{InvalidTransition, ResourceKind};

api_enum! {
    /// The API's `MicrovmImageState`, except DELETE_FAILED, which this machine
    /// never reaches: a delete that cannot finish leaves the image DELETING.
    pub enum ImageState("image state") {
        Creating = "CREATING",
        Created = "CREATED",
        CreateFailed = "CREATE_FAILED",
        Updating = "UPDATING",
        Updated = "UPDATED",
        UpdateFailed = "UPDATE_FAILED",
        Deleting = "DELETING",
        Deleted = "DELETED",
    }
}

/// What happens to an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageEvent {
    /// The build of the newest version succeeded.
    BuildSucceeded,
    /// The build of the newest version failed, was cancelled or was interrupted.
    BuildFailed,
    /// `UpdateMicrovmImage`: a new version starts building.
    UpdateRequested,
    /// `DeleteMicrovmImage`: any running build is cancelled.
    DeleteRequested,
    /// Every version, build and file of the image is gone.
    DeleteFinished,
}

impl ImageEvent {
    /// Every event.
    pub const ALL: &'static [ImageEvent] = &[
        ImageEvent::BuildSucceeded,
        ImageEvent::BuildFailed,
        ImageEvent::UpdateRequested,
        ImageEvent::DeleteRequested,
        ImageEvent::DeleteFinished,
    ];

    /// The event as a verb phrase, for [`InvalidTransition`].
    pub const fn name(self) -> &'static str {
        match self {
            ImageEvent::BuildSucceeded => "complete a build of",
            ImageEvent::BuildFailed => "fail a build of",
            ImageEvent::UpdateRequested => "update",
            ImageEvent::DeleteRequested => "delete",
            ImageEvent::DeleteFinished => "finish deleting",
        }
    }
}

impl ImageState {
    /// The state `CreateMicrovmImage` gives a new image.
    pub const INITIAL: ImageState = ImageState::Creating;

    /// No event moves the image out of this state.
    pub const fn is_terminal(self) -> bool {
        match self {
            ImageState::Deleted => true,
            ImageState::Creating
            | ImageState::Created
            | ImageState::CreateFailed
            | ImageState::Updating
            | ImageState::Updated
            | ImageState::UpdateFailed
            | ImageState::Deleting => false,
        }
    }

    /// The state after `event`, or why the image refuses it.
    pub fn transition(self, event: &ImageEvent) -> Result<ImageState, InvalidTransition> {
        use ImageEvent as E;
        use ImageState as S;
        match (self, *event) {
            (S::Creating, E::BuildSucceeded) => Ok(S::Created),
            (S::Creating, E::BuildFailed) => Ok(S::CreateFailed),
            (S::Updating, E::BuildSucceeded) => Ok(S::Updated),
            (S::Updating, E::BuildFailed) => Ok(S::UpdateFailed),
            (S::Created | S::CreateFailed | S::Updated | S::UpdateFailed, E::UpdateRequested) => {
                Ok(S::Updating)
            }
            (
                S::Creating
                | S::Created
                | S::CreateFailed
                | S::Updating
                | S::Updated
                | S::UpdateFailed,
                E::DeleteRequested,
            ) => Ok(S::Deleting),
            (S::Deleting, E::DeleteFinished) => Ok(S::Deleted),

            // No build runs in these states (a DELETING image's build was cancelled).
            (
                S::Created
                | S::CreateFailed
                | S::Updated
                | S::UpdateFailed
                | S::Deleting
                | S::Deleted,
                E::BuildSucceeded | E::BuildFailed,
            )
            // A build runs already, or the image is going away.
            | (S::Creating | S::Updating | S::Deleting | S::Deleted, E::UpdateRequested)
            | (S::Deleting | S::Deleted, E::DeleteRequested)
            | (
                S::Creating
                | S::Created
                | S::CreateFailed
                | S::Updating
                | S::Updated
                | S::UpdateFailed
                | S::Deleted,
                E::DeleteFinished,
            ) => Err(InvalidTransition {
                kind: ResourceKind::Image,
                from: self.as_str(),
                event: event.name(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ImageEvent as E, ImageState as S};

    /// Every allowed transition, written out independently of `transition`.
    const ALLOWED: &[(S, E, S)] = &[
        (S::Creating, E::BuildSucceeded, S::Created),
        (S::Creating, E::BuildFailed, S::CreateFailed),
        (S::Updating, E::BuildSucceeded, S::Updated),
        (S::Updating, E::BuildFailed, S::UpdateFailed),
        (S::Created, E::UpdateRequested, S::Updating),
        (S::CreateFailed, E::UpdateRequested, S::Updating),
        (S::Updated, E::UpdateRequested, S::Updating),
        (S::UpdateFailed, E::UpdateRequested, S::Updating),
        (S::Creating, E::DeleteRequested, S::Deleting),
        (S::Created, E::DeleteRequested, S::Deleting),
        (S::CreateFailed, E::DeleteRequested, S::Deleting),
        (S::Updating, E::DeleteRequested, S::Deleting),
        (S::Updated, E::DeleteRequested, S::Deleting),
        (S::UpdateFailed, E::DeleteRequested, S::Deleting),
        (S::Deleting, E::DeleteFinished, S::Deleted),
    ];

    #[test]
    fn every_listed_transition_is_allowed_and_every_other_pair_refused() {
        for &from in S::ALL {
            for event in E::ALL {
                let expected = ALLOWED
                    .iter()
                    .find(|(f, e, _)| *f == from && e == event)
                    .map(|(_, _, to)| *to);
                match (from.transition(event), expected) {
                    (Ok(to), Some(want)) => assert_eq!(to, want, "{from} + {event:?}"),
                    (Err(err), None) => {
                        assert_eq!(err.from, from.as_str());
                        assert_eq!(err.event, event.name());
                    }
                    (got, want) => panic!("{from} + {event:?}: got {got:?}, want {want:?}"),
                }
            }
        }
    }

    #[test]
    fn update_while_a_build_runs_is_refused_with_a_conflict_message() {
        let err = S::Creating.transition(&E::UpdateRequested).unwrap_err();
        assert_eq!(err.to_string(), "cannot update an image that is CREATING");
        let err = S::Updating.transition(&E::UpdateRequested).unwrap_err();
        assert_eq!(err.to_string(), "cannot update an image that is UPDATING");
    }

    #[test]
    fn delete_is_allowed_while_a_build_runs_and_its_late_outcome_is_refused() {
        let deleting = S::Updating.transition(&E::DeleteRequested).unwrap();
        assert_eq!(deleting, S::Deleting);
        assert!(deleting.transition(&E::BuildSucceeded).is_err());
        assert!(deleting.transition(&E::BuildFailed).is_err());
    }

    #[test]
    fn a_failed_image_can_be_updated_and_succeed() {
        let mut state = S::INITIAL;
        for event in [E::BuildFailed, E::UpdateRequested, E::BuildSucceeded] {
            state = state.transition(&event).unwrap();
        }
        assert_eq!(state, S::Updated);
    }

    #[test]
    fn only_deleted_is_terminal() {
        for &state in S::ALL {
            assert_eq!(state.is_terminal(), state == S::Deleted, "{state}");
        }
    }
}

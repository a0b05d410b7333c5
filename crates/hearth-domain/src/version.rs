//! The state machine of a MicroVM image version (`MicrovmImageVersionState`),
//! its status (`MicrovmImageVersionStatus`) and the image's latest versions.
//!
//! ```text
//!             BuildStarted                BuildSucceeded
//!   PENDING --------------> IN_PROGRESS ----------------> SUCCESSFUL --+
//!      |                         |                  (status := ACTIVE) |
//!      | BuildFailed             | BuildFailed                 ^       | SetStatus(ACTIVE | INACTIVE)
//!      +---------> FAILED <------+                             +-------+
//!
//!   PENDING, IN_PROGRESS, SUCCESSFUL, FAILED
//!          | DeleteRequested (a running build is cancelled)
//!          v          DeleteFinished
//!      DELETING ----------------------> DELETED
//! ```
//!
//! A version is PENDING from its creation until its builder starts, and can
//! fail from there directly (its code artifact could not be fetched, the server
//! restarted). Its status is INACTIVE until its build succeeds, which makes it
//! ACTIVE; after that `UpdateMicrovmImageVersion` may switch it either way
//! (`SetStatus`), in no other state. Only a SUCCESSFUL and ACTIVE version runs
//! microVMs ([`Version::is_runnable`]).
//!
//! Pure functions: called by the API handlers and by the build task before
//! they write the new state.

use crate::error::{InvalidTransition, ResourceKind};

api_enum! {
    /// The API's `MicrovmImageVersionState`, except DELETE_FAILED, which this
    /// machine never reaches: a delete that cannot finish leaves it DELETING.
    pub enum VersionState("image version state") {
        Pending = "PENDING",
        InProgress = "IN_PROGRESS",
        Successful = "SUCCESSFUL",
        Failed = "FAILED",
        Deleting = "DELETING",
        Deleted = "DELETED",
    }
}

api_enum! {
    /// The API's `MicrovmImageVersionStatus`.
    pub enum VersionStatus("image version status") {
        Active = "ACTIVE",
        Inactive = "INACTIVE",
    }
}

/// What happens to a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VersionEvent {
    /// The builder of this version's build started.
    BuildStarted,
    /// The build produced the version's snapshot.
    BuildSucceeded,
    /// The build failed, was cancelled or was interrupted.
    BuildFailed,
    /// `UpdateMicrovmImageVersion` sets the status.
    SetStatus(VersionStatus),
    /// `DeleteMicrovmImageVersion` (or the image's delete): a running build is
    /// cancelled.
    DeleteRequested,
    /// The version's snapshot and files are gone.
    DeleteFinished,
}

impl VersionEvent {
    /// Every event.
    pub const ALL: &'static [VersionEvent] = &[
        VersionEvent::BuildStarted,
        VersionEvent::BuildSucceeded,
        VersionEvent::BuildFailed,
        VersionEvent::SetStatus(VersionStatus::Active),
        VersionEvent::SetStatus(VersionStatus::Inactive),
        VersionEvent::DeleteRequested,
        VersionEvent::DeleteFinished,
    ];

    /// The event as a verb phrase, for [`InvalidTransition`].
    pub const fn name(self) -> &'static str {
        match self {
            VersionEvent::BuildStarted => "start the build of",
            VersionEvent::BuildSucceeded => "complete the build of",
            VersionEvent::BuildFailed => "fail the build of",
            VersionEvent::SetStatus(_) => "change the status of",
            VersionEvent::DeleteRequested => "delete",
            VersionEvent::DeleteFinished => "finish deleting",
        }
    }
}

impl VersionState {
    /// The state of a new version.
    pub const INITIAL: VersionState = VersionState::Pending;

    /// No event moves the version out of this state.
    pub const fn is_terminal(self) -> bool {
        match self {
            VersionState::Deleted => true,
            VersionState::Pending
            | VersionState::InProgress
            | VersionState::Successful
            | VersionState::Failed
            | VersionState::Deleting => false,
        }
    }

    /// The state after `event`, or why the version refuses it.
    pub fn transition(self, event: &VersionEvent) -> Result<VersionState, InvalidTransition> {
        use VersionEvent as E;
        use VersionState as S;
        match (self, *event) {
            (S::Pending, E::BuildStarted) => Ok(S::InProgress),
            (S::InProgress, E::BuildSucceeded) => Ok(S::Successful),
            (S::Pending | S::InProgress, E::BuildFailed) => Ok(S::Failed),
            (S::Successful, E::SetStatus(_)) => Ok(S::Successful),
            (S::Pending | S::InProgress | S::Successful | S::Failed, E::DeleteRequested) => {
                Ok(S::Deleting)
            }
            (S::Deleting, E::DeleteFinished) => Ok(S::Deleted),

            // A build starts once, and only a running build ends.
            (S::InProgress | S::Successful | S::Failed | S::Deleting | S::Deleted, E::BuildStarted)
            | (S::Pending | S::Successful | S::Failed | S::Deleting | S::Deleted, E::BuildSucceeded)
            | (S::Successful | S::Failed | S::Deleting | S::Deleted, E::BuildFailed)
            // Only a version with a snapshot has a status to change.
            | (S::Pending | S::InProgress | S::Failed | S::Deleting | S::Deleted, E::SetStatus(_))
            | (S::Deleting | S::Deleted, E::DeleteRequested)
            | (
                S::Pending | S::InProgress | S::Successful | S::Failed | S::Deleted,
                E::DeleteFinished,
            ) => Err(InvalidTransition {
                kind: ResourceKind::ImageVersion,
                from: self.as_str(),
                event: event.name(),
            }),
        }
    }
}

impl VersionStatus {
    /// The status of a new version.
    pub const INITIAL: VersionStatus = VersionStatus::Inactive;

    /// The status after `event`, which the version's state accepted.
    pub const fn after(self, event: &VersionEvent) -> VersionStatus {
        match *event {
            VersionEvent::BuildSucceeded => VersionStatus::Active,
            VersionEvent::SetStatus(status) => status,
            VersionEvent::BuildStarted
            | VersionEvent::BuildFailed
            | VersionEvent::DeleteRequested
            | VersionEvent::DeleteFinished => self,
        }
    }
}

/// A version's state and status, which move together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version {
    pub state: VersionState,
    pub status: VersionStatus,
}

impl Version {
    /// A new version: PENDING and INACTIVE.
    pub const INITIAL: Version = Version {
        state: VersionState::INITIAL,
        status: VersionStatus::INITIAL,
    };

    /// The state and status after `event`, or why the version refuses it.
    pub fn transition(self, event: &VersionEvent) -> Result<Version, InvalidTransition> {
        Ok(Version {
            state: self.state.transition(event)?,
            status: self.status.after(event),
        })
    }

    /// The version can run microVMs: SUCCESSFUL and ACTIVE.
    pub fn is_runnable(self) -> bool {
        self.state == VersionState::Successful && self.status == VersionStatus::Active
    }
}

/// An image's `latestActiveImageVersion` and `latestFailedImageVersion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LatestVersions {
    /// The highest-numbered SUCCESSFUL and ACTIVE version.
    pub active: Option<u64>,
    /// The highest-numbered FAILED version.
    pub failed: Option<u64>,
}

/// The latest active and failed versions among an image's
/// `(version number, state, status)` triples, in any order.
pub fn latest_versions(
    versions: impl IntoIterator<Item = (u64, VersionState, VersionStatus)>,
) -> LatestVersions {
    let mut latest = LatestVersions::default();
    for (number, state, status) in versions {
        if (Version { state, status }).is_runnable() {
            latest.active = latest.active.max(Some(number));
        }
        if state == VersionState::Failed {
            latest.failed = latest.failed.max(Some(number));
        }
    }
    latest
}

#[cfg(test)]
mod tests {
    use super::*;
    use VersionEvent as E;
    use VersionState as S;

    /// Every allowed state transition, written out independently of `transition`.
    const ALLOWED: &[(S, E, S)] = &[
        (S::Pending, E::BuildStarted, S::InProgress),
        (S::InProgress, E::BuildSucceeded, S::Successful),
        (S::Pending, E::BuildFailed, S::Failed),
        (S::InProgress, E::BuildFailed, S::Failed),
        (
            S::Successful,
            E::SetStatus(VersionStatus::Active),
            S::Successful,
        ),
        (
            S::Successful,
            E::SetStatus(VersionStatus::Inactive),
            S::Successful,
        ),
        (S::Pending, E::DeleteRequested, S::Deleting),
        (S::InProgress, E::DeleteRequested, S::Deleting),
        (S::Successful, E::DeleteRequested, S::Deleting),
        (S::Failed, E::DeleteRequested, S::Deleting),
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
    fn a_version_becomes_active_when_its_build_succeeds() {
        let v = Version::INITIAL
            .transition(&E::BuildStarted)
            .and_then(|v| v.transition(&E::BuildSucceeded))
            .unwrap();
        assert_eq!(
            v,
            Version {
                state: S::Successful,
                status: VersionStatus::Active
            }
        );
        assert!(v.is_runnable());
    }

    #[test]
    fn a_successful_version_can_be_deactivated_and_reactivated() {
        let successful = Version {
            state: S::Successful,
            status: VersionStatus::Active,
        };
        let inactive = successful
            .transition(&E::SetStatus(VersionStatus::Inactive))
            .unwrap();
        assert_eq!(inactive.status, VersionStatus::Inactive);
        assert!(!inactive.is_runnable());
        let active = inactive
            .transition(&E::SetStatus(VersionStatus::Active))
            .unwrap();
        assert_eq!(active, successful);
    }

    #[test]
    fn setting_the_status_of_an_unbuilt_version_is_a_conflict() {
        let err = Version::INITIAL
            .transition(&E::SetStatus(VersionStatus::Active))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot change the status of an image version that is PENDING"
        );
        let failed = Version {
            state: S::Failed,
            status: VersionStatus::Inactive,
        };
        assert!(failed
            .transition(&E::SetStatus(VersionStatus::Active))
            .is_err());
    }

    #[test]
    fn a_failed_build_leaves_the_version_inactive() {
        let v = Version::INITIAL.transition(&E::BuildFailed).unwrap();
        assert_eq!(v.state, S::Failed);
        assert_eq!(v.status, VersionStatus::Inactive);
    }

    #[test]
    fn only_deleted_is_terminal() {
        for &state in S::ALL {
            assert_eq!(state.is_terminal(), state == S::Deleted, "{state}");
        }
    }

    #[test]
    fn latest_versions_pick_the_highest_active_and_failed_numbers() {
        use VersionStatus::{Active, Inactive};
        let versions = [
            (1, S::Successful, Active),
            (2, S::Failed, Inactive),
            (3, S::Successful, Inactive),
            (4, S::Deleting, Active),
            (5, S::Failed, Inactive),
            (6, S::InProgress, Inactive),
            (10, S::Successful, Active),
            (9, S::Successful, Active),
        ];
        assert_eq!(
            latest_versions(versions),
            LatestVersions {
                active: Some(10),
                failed: Some(5)
            }
        );
        assert_eq!(latest_versions([]), LatestVersions::default());
    }
}

//! The state machine of an image build (`BuildState`).
//!
//! ```text
//!             Started                 Succeeded
//!   PENDING ----------> IN_PROGRESS -----------> SUCCESSFUL
//!      |                     |
//!      | Failed              | Failed
//!      | Cancelled           | Cancelled
//!      | Interrupted         | Interrupted
//!      +------> FAILED <-----+
//! ```
//!
//! A build is PENDING until its builder starts. It can fail before that (its
//! code artifact could not be fetched), be cancelled (its version or image is
//! being deleted) or be interrupted (the server restarted under it) in either
//! PENDING or IN_PROGRESS. SUCCESSFUL and FAILED are final; a retry is a new
//! build of a new version.
//!
//! Pure functions: called by the build task before it writes the new state,
//! and by start-up recovery for builds a restart interrupted.

use crate::error::{InvalidTransition, ResourceKind};

api_enum! {
    /// The API's `BuildState`.
    pub enum BuildState("image build state") {
        Pending = "PENDING",
        InProgress = "IN_PROGRESS",
        Successful = "SUCCESSFUL",
        Failed = "FAILED",
    }
}

/// What happens to a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuildEvent {
    /// The builder started.
    Started,
    /// The snapshot is written.
    Succeeded,
    /// The build failed (artifact, Dockerfile step, app start, validation, snapshot).
    Failed,
    /// The build's version or image is being deleted.
    Cancelled,
    /// The server stopped while the build was unfinished.
    Interrupted,
}

impl BuildEvent {
    /// Every event.
    pub const ALL: &'static [BuildEvent] = &[
        BuildEvent::Started,
        BuildEvent::Succeeded,
        BuildEvent::Failed,
        BuildEvent::Cancelled,
        BuildEvent::Interrupted,
    ];

    /// The event as a verb, for [`InvalidTransition`].
    pub const fn name(self) -> &'static str {
        match self {
            BuildEvent::Started => "start",
            BuildEvent::Succeeded => "complete",
            BuildEvent::Failed => "fail",
            BuildEvent::Cancelled => "cancel",
            BuildEvent::Interrupted => "interrupt",
        }
    }
}

impl BuildState {
    /// The state of a new build.
    pub const INITIAL: BuildState = BuildState::Pending;

    /// No event moves the build out of this state: it has ended.
    pub const fn is_terminal(self) -> bool {
        match self {
            BuildState::Successful | BuildState::Failed => true,
            BuildState::Pending | BuildState::InProgress => false,
        }
    }

    /// The state after `event`, or why the build refuses it.
    pub fn transition(self, event: &BuildEvent) -> Result<BuildState, InvalidTransition> {
        use BuildEvent as E;
        use BuildState as S;
        match (self, *event) {
            (S::Pending, E::Started) => Ok(S::InProgress),
            (S::InProgress, E::Succeeded) => Ok(S::Successful),
            (S::Pending | S::InProgress, E::Failed | E::Cancelled | E::Interrupted) => {
                Ok(S::Failed)
            }

            (S::InProgress | S::Successful | S::Failed, E::Started)
            | (S::Pending | S::Successful | S::Failed, E::Succeeded)
            | (S::Successful | S::Failed, E::Failed | E::Cancelled | E::Interrupted) => {
                Err(InvalidTransition {
                    kind: ResourceKind::ImageBuild,
                    from: self.as_str(),
                    event: event.name(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{BuildEvent as E, BuildState as S};

    /// Every allowed transition, written out independently of `transition`.
    const ALLOWED: &[(S, E, S)] = &[
        (S::Pending, E::Started, S::InProgress),
        (S::InProgress, E::Succeeded, S::Successful),
        (S::Pending, E::Failed, S::Failed),
        (S::Pending, E::Cancelled, S::Failed),
        (S::Pending, E::Interrupted, S::Failed),
        (S::InProgress, E::Failed, S::Failed),
        (S::InProgress, E::Cancelled, S::Failed),
        (S::InProgress, E::Interrupted, S::Failed),
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
    fn a_finished_build_cannot_be_cancelled() {
        let err = S::Successful.transition(&E::Cancelled).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot cancel an image build that is SUCCESSFUL"
        );
    }

    #[test]
    fn successful_and_failed_are_terminal() {
        for &state in S::ALL {
            let ended = matches!(state, S::Successful | S::Failed);
            assert_eq!(state.is_terminal(), ended, "{state}");
        }
    }
}

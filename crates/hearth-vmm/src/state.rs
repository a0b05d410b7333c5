//! The lifecycle of one running microVM, as a pure state machine.
//!
//! Owns the legal transitions; no I/O. The backend task that drives a
//! [`crate::QemuVm`] feeds it events and refuses operations the current state
//! does not allow.
//!
//! ```text
//!            Ready                 BeginSnapshot
//!  Starting -------> Running <-------------------> Snapshotting
//!     |                 |        EndSnapshot            |
//!     |                 | BeginSuspend  ^ AbortSuspend  |
//!     |                 v               |               |
//!     |            Suspending --EndSuspend--> Suspended (process gone;
//!     |                 |                      a SuspendedVm holds the files)
//!     +--------+--------+---------------------------+
//!              | Fail(reason)                        | Terminate (from any state)
//!              v                                     v
//!           Failed ------------Terminate-------> Terminated
//! ```

use std::fmt;

/// Where a microVM is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmState {
    Starting,
    Running,
    Snapshotting,
    Suspending,
    Suspended,
    Failed { reason: String },
    Terminated,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    Ready,
    BeginSnapshot,
    EndSnapshot,
    BeginSuspend,
    EndSuspend,
    /// A suspend failed before the process ended and the guest was thawed.
    AbortSuspend,
    Fail {
        reason: String,
    },
    Terminate,
}

/// An event the current state does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("microVM is {state}; cannot {event:?}")]
pub struct InvalidTransition {
    pub state: VmState,
    pub event: VmEvent,
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmState::Starting => f.write_str("starting"),
            VmState::Running => f.write_str("running"),
            VmState::Snapshotting => f.write_str("snapshotting"),
            VmState::Suspending => f.write_str("suspending"),
            VmState::Suspended => f.write_str("suspended"),
            VmState::Failed { reason } => write!(f, "failed ({reason})"),
            VmState::Terminated => f.write_str("terminated"),
        }
    }
}

/// The one transition function.
pub fn transition(state: &VmState, event: &VmEvent) -> Result<VmState, InvalidTransition> {
    use VmEvent as E;
    use VmState as S;
    let next = match (state, event) {
        (S::Terminated, _) => None,
        (_, E::Terminate) => Some(S::Terminated),
        (S::Failed { .. }, _) => None,
        (S::Suspended, _) => None,
        (_, E::Fail { reason }) => Some(S::Failed {
            reason: reason.clone(),
        }),
        (S::Starting, E::Ready) => Some(S::Running),
        (S::Running, E::BeginSnapshot) => Some(S::Snapshotting),
        (S::Snapshotting, E::EndSnapshot) => Some(S::Running),
        (S::Running, E::BeginSuspend) => Some(S::Suspending),
        (S::Suspending, E::EndSuspend) => Some(S::Suspended),
        (S::Suspending, E::AbortSuspend) => Some(S::Running),
        (S::Starting | S::Running | S::Snapshotting | S::Suspending, _) => None,
    };
    next.ok_or_else(|| InvalidTransition {
        state: state.clone(),
        event: event.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(events: &[VmEvent]) -> Result<VmState, InvalidTransition> {
        events
            .iter()
            .try_fold(VmState::Starting, |s, e| transition(&s, e))
    }

    #[test]
    fn happy_paths() {
        use VmEvent::*;
        assert_eq!(
            run(&[Ready, BeginSnapshot, EndSnapshot]).unwrap(),
            VmState::Running
        );
        assert_eq!(
            run(&[Ready, BeginSuspend, EndSuspend]).unwrap(),
            VmState::Suspended
        );
        assert_eq!(run(&[Ready, Terminate]).unwrap(), VmState::Terminated);
        assert_eq!(
            run(&[Ready, BeginSuspend, AbortSuspend]).unwrap(),
            VmState::Running
        );
        assert!(run(&[Ready, AbortSuspend]).is_err());
    }

    #[test]
    fn failures_and_illegal_moves() {
        use VmEvent::*;
        let failed = run(&[
            Ready,
            Fail {
                reason: "garbage".into(),
            },
        ])
        .unwrap();
        assert!(matches!(failed, VmState::Failed { .. }));
        assert!(transition(&failed, &BeginSnapshot).is_err());
        assert_eq!(
            transition(&failed, &Terminate).unwrap(),
            VmState::Terminated
        );
        assert!(run(&[BeginSnapshot]).is_err());
        assert!(run(&[Ready, BeginSuspend, BeginSnapshot]).is_err());
        assert!(run(&[Ready, Terminate, Ready]).is_err());
        assert_eq!(
            run(&[Ready, BeginSuspend, EndSuspend, Terminate]).unwrap(),
            VmState::Terminated
        );
        assert!(run(&[Ready, BeginSuspend, EndSuspend, Ready]).is_err());
    }
}

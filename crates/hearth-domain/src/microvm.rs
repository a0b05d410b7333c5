//! The state machine of a microVM (`MicrovmState`), the admission of API
//! requests against it, and the idle policy's deadlines.
//!
//! ```text
//!   RunMicrovm
//!       |
//!       v               Started
//!    PENDING ---------------------------> RUNNING
//!     ^   |                                |    ^
//!     |   | ResumeFailed      SuspendBegan |    | SuspendFailed
//!     |   v                                v    |
//!     |  SUSPENDED <------------------- SUSPENDING
//!     |   |             Suspended
//!     +---+
//!   ResumeBegan
//!
//!   PENDING (StartFailed, Lost), RUNNING (Lost), SUSPENDING (Lost)
//!          |
//!          v
//!      TERMINATED
//!
//!   PENDING, RUNNING, SUSPENDING, SUSPENDED
//!          | TerminateBegan
//!          v             Terminated
//!     TERMINATING --------------------> TERMINATED
//! ```
//!
//! A microVM is PENDING while its QEMU is launched from the version's snapshot
//! and again while it is resumed from its own suspended files; `Started` ends
//! both. A launch that fails leaves nothing to keep (`StartFailed`: TERMINATED);
//! a resume that fails leaves the suspended files intact (`ResumeFailed`: back
//! to SUSPENDED). A suspension the engine cannot finish thaws the guest
//! (`SuspendFailed`: back to RUNNING). `Lost` is a QEMU that died or an agent
//! channel that failed while the microVM had a QEMU (PENDING, RUNNING,
//! SUSPENDING): nothing is left to terminate, so it goes straight to
//! TERMINATED. Termination may begin in any state but TERMINATING and
//! TERMINATED, including in the middle of a launch, resume or suspension: the
//! owner abandons that work. TERMINATED is final.
//!
//! Events are what the microVM's owner (the one task that runs it) observes or
//! begins, applied with [`transition`]. Requests are what an API caller or the
//! proxy asks for; [`admit`] says whether the current state begins the work,
//! joins work already under way toward the same goal, or refuses it with a
//! message for a `ConflictException`. [`next_deadline`] is the idle policy's
//! and the maximum duration's arithmetic for the reconciler.
//!
//! Pure functions: called by the microVM's owner task, the API handlers and
//! the reconciler before they act or write the new state. Nothing here reads a
//! clock: every time is a unix time in seconds passed in by the caller.

use crate::error::{InvalidTransition, ResourceKind};

api_enum! {
    /// The API's `MicrovmState`.
    pub enum MicrovmState("microVM state") {
        Pending = "PENDING",
        Running = "RUNNING",
        Suspending = "SUSPENDING",
        Suspended = "SUSPENDED",
        Terminating = "TERMINATING",
        Terminated = "TERMINATED",
    }
}

/// What the owner of a microVM (one task) observes or begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MicrovmEvent {
    /// A launch or a resume completed: the app runs (PENDING -> RUNNING).
    Started,
    /// A launch failed; there is nothing to keep (PENDING -> TERMINATED).
    StartFailed,
    /// A resume failed; the suspended files are intact (PENDING -> SUSPENDED).
    ResumeFailed,
    /// The owner starts suspending (RUNNING -> SUSPENDING).
    SuspendBegan,
    /// The memory and disk are saved and QEMU is gone (SUSPENDING -> SUSPENDED).
    Suspended,
    /// The suspension failed and the engine thawed the guest
    /// (SUSPENDING -> RUNNING).
    SuspendFailed,
    /// The owner starts resuming from the suspended files (SUSPENDED -> PENDING).
    ResumeBegan,
    /// The owner starts terminating (PENDING, RUNNING, SUSPENDING,
    /// SUSPENDED -> TERMINATING).
    TerminateBegan,
    /// QEMU is gone and the microVM's files are deleted
    /// (TERMINATING -> TERMINATED).
    Terminated,
    /// QEMU died or the agent channel failed (PENDING, RUNNING,
    /// SUSPENDING -> TERMINATED).
    Lost,
}

impl MicrovmEvent {
    /// Every event.
    pub const ALL: &'static [MicrovmEvent] = &[
        MicrovmEvent::Started,
        MicrovmEvent::StartFailed,
        MicrovmEvent::ResumeFailed,
        MicrovmEvent::SuspendBegan,
        MicrovmEvent::Suspended,
        MicrovmEvent::SuspendFailed,
        MicrovmEvent::ResumeBegan,
        MicrovmEvent::TerminateBegan,
        MicrovmEvent::Terminated,
        MicrovmEvent::Lost,
    ];

    /// The event as a verb phrase, for [`InvalidTransition`].
    pub const fn name(self) -> &'static str {
        match self {
            MicrovmEvent::Started => "complete the start of",
            MicrovmEvent::StartFailed => "fail the launch of",
            MicrovmEvent::ResumeFailed => "fail the resume of",
            MicrovmEvent::SuspendBegan => "suspend",
            MicrovmEvent::Suspended => "complete the suspension of",
            MicrovmEvent::SuspendFailed => "fail the suspension of",
            MicrovmEvent::ResumeBegan => "resume",
            MicrovmEvent::TerminateBegan => "terminate",
            MicrovmEvent::Terminated => "finish terminating",
            MicrovmEvent::Lost => "report the loss of",
        }
    }
}

impl MicrovmState {
    /// The state `RunMicrovm` gives a new microVM.
    pub const INITIAL: MicrovmState = MicrovmState::Pending;

    /// No event moves the microVM out of this state: it is TERMINATED.
    pub const fn is_final(self) -> bool {
        match self {
            MicrovmState::Terminated => true,
            MicrovmState::Pending
            | MicrovmState::Running
            | MicrovmState::Suspending
            | MicrovmState::Suspended
            | MicrovmState::Terminating => false,
        }
    }

    /// The state after `event`, or why the microVM refuses it.
    pub fn transition(self, event: &MicrovmEvent) -> Result<MicrovmState, InvalidTransition> {
        use MicrovmEvent as E;
        use MicrovmState as S;
        match (self, *event) {
            (S::Pending, E::Started) => Ok(S::Running),
            (S::Pending, E::StartFailed) => Ok(S::Terminated),
            (S::Pending, E::ResumeFailed) => Ok(S::Suspended),
            (S::Running, E::SuspendBegan) => Ok(S::Suspending),
            (S::Suspending, E::Suspended) => Ok(S::Suspended),
            (S::Suspending, E::SuspendFailed) => Ok(S::Running),
            (S::Suspended, E::ResumeBegan) => Ok(S::Pending),
            (S::Pending | S::Running | S::Suspending | S::Suspended, E::TerminateBegan) => {
                Ok(S::Terminating)
            }
            (S::Terminating, E::Terminated) => Ok(S::Terminated),
            (S::Pending | S::Running | S::Suspending, E::Lost) => Ok(S::Terminated),

            // Only a launch or a resume (PENDING) completes or fails.
            (
                S::Running | S::Suspending | S::Suspended | S::Terminating | S::Terminated,
                E::Started | E::StartFailed | E::ResumeFailed,
            )
            // Only a RUNNING microVM begins a suspension, only a SUSPENDING one ends it.
            | (
                S::Pending | S::Suspending | S::Suspended | S::Terminating | S::Terminated,
                E::SuspendBegan,
            )
            | (
                S::Pending | S::Running | S::Suspended | S::Terminating | S::Terminated,
                E::Suspended | E::SuspendFailed,
            )
            // Only a SUSPENDED microVM has files to resume from.
            | (
                S::Pending | S::Running | S::Suspending | S::Terminating | S::Terminated,
                E::ResumeBegan,
            )
            | (S::Terminating | S::Terminated, E::TerminateBegan)
            | (
                S::Pending | S::Running | S::Suspending | S::Suspended | S::Terminated,
                E::Terminated,
            )
            // No QEMU to lose: suspended (its files stay), terminating (the
            // owner finishes) or terminated.
            | (S::Suspended | S::Terminating | S::Terminated, E::Lost) => Err(InvalidTransition {
                kind: ResourceKind::Microvm,
                from: self.as_str(),
                event: event.name(),
            }),
        }
    }
}

/// The state after `event`, or why the microVM refuses it: the same as
/// [`MicrovmState::transition`].
pub fn transition(
    from: MicrovmState,
    event: MicrovmEvent,
) -> Result<MicrovmState, InvalidTransition> {
    from.transition(&event)
}

/// What an API caller (or the proxy, for an automatic resume) asks of a
/// microVM: a change of intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MicrovmRequest {
    /// `SuspendMicrovm`.
    Suspend,
    /// `ResumeMicrovm`, or a request through the proxy to a suspended microVM.
    Resume,
    /// `TerminateMicrovm`.
    Terminate,
}

impl MicrovmRequest {
    /// Every request.
    pub const ALL: &'static [MicrovmRequest] = &[
        MicrovmRequest::Suspend,
        MicrovmRequest::Resume,
        MicrovmRequest::Terminate,
    ];

    /// The state the request aims at: SUSPENDED, RUNNING or TERMINATED.
    pub const fn target(self) -> MicrovmState {
        match self {
            MicrovmRequest::Suspend => MicrovmState::Suspended,
            MicrovmRequest::Resume => MicrovmState::Running,
            MicrovmRequest::Terminate => MicrovmState::Terminated,
        }
    }

    /// The event the owner applies when [`admit`] answers [`Admission::Begin`].
    pub const fn begin_event(self) -> MicrovmEvent {
        match self {
            MicrovmRequest::Suspend => MicrovmEvent::SuspendBegan,
            MicrovmRequest::Resume => MicrovmEvent::ResumeBegan,
            MicrovmRequest::Terminate => MicrovmEvent::TerminateBegan,
        }
    }
}

/// Whether a request is accepted in a state, and what it does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Admission {
    /// Start the work: apply [`MicrovmRequest::begin_event`].
    Begin,
    /// The work toward the request's goal is already under way (a suspension
    /// while SUSPENDING, a resume or launch while PENDING, a termination while
    /// TERMINATING): wait for it instead of starting another.
    Join,
    /// Refused; `reason` is the body of a `ConflictException`, e.g. "the
    /// microVM is RUNNING; only a SUSPENDED microVM can be resumed" (naming the
    /// microVM is the caller's job).
    Conflict { reason: String },
}

/// Whether `state` accepts `request`, and what it does.
pub fn admit(state: MicrovmState, request: MicrovmRequest) -> Admission {
    use MicrovmRequest as R;
    use MicrovmState as S;
    let conflict = |reason: String| Admission::Conflict { reason };
    match (state, request) {
        (S::Running, R::Suspend) => Admission::Begin,
        (S::Suspending, R::Suspend) => Admission::Join,
        (S::Suspended, R::Suspend) => conflict("the microVM is already SUSPENDED".to_string()),
        (S::Pending, R::Suspend) => conflict(
            "the microVM is PENDING (starting or resuming); only a RUNNING microVM can be \
             suspended"
                .to_string(),
        ),
        (S::Terminating | S::Terminated, R::Suspend) => conflict(format!(
            "the microVM is {state}; only a RUNNING microVM can be suspended"
        )),

        (S::Suspended, R::Resume) => Admission::Begin,
        (S::Pending, R::Resume) => Admission::Join,
        (S::Suspending, R::Resume) => {
            conflict("the microVM is SUSPENDING; resume it once SUSPENDED".to_string())
        }
        (S::Running | S::Terminating | S::Terminated, R::Resume) => conflict(format!(
            "the microVM is {state}; only a SUSPENDED microVM can be resumed"
        )),

        (S::Pending | S::Running | S::Suspending | S::Suspended, R::Terminate) => Admission::Begin,
        (S::Terminating, R::Terminate) => Admission::Join,
        (S::Terminated, R::Terminate) => conflict("the microVM is already TERMINATED".to_string()),
    }
}

/// A microVM's `idlePolicy`.
///
/// A microVM without one (`RunMicrovm` with no `idlePolicy`) is never
/// suspended for idleness: it runs until it is terminated or its maximum
/// duration elapses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdlePolicy {
    /// `maxIdleDurationSeconds`: a RUNNING microVM with no traffic through
    /// the proxy (requests in, responses out) for this long is suspended. 0 means never suspend for
    /// idleness (the API requires at least 60).
    pub max_idle_secs: u32,
    /// `suspendedDurationSeconds`: a microVM SUSPENDED for this long is
    /// terminated. 0 means no such limit: a suspended microVM is kept until it
    /// is terminated or its maximum duration elapses.
    pub suspended_secs: u32,
    /// `autoResumeEnabled`: a request through the proxy resumes a SUSPENDED
    /// microVM. No effect on deadlines.
    pub auto_resume: bool,
}

/// Why the reconciler terminates a microVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TerminateReason {
    /// `maximumDurationInSeconds` elapsed since the microVM started.
    MaximumDuration,
    /// The microVM stayed SUSPENDED for `suspendedDurationSeconds`.
    SuspendedRetention,
}

impl TerminateReason {
    /// Every reason.
    pub const ALL: &'static [TerminateReason] = &[
        TerminateReason::MaximumDuration,
        TerminateReason::SuspendedRetention,
    ];

    /// The microVM's `stateReason` once it is terminated for this reason.
    pub const fn state_reason(self) -> &'static str {
        match self {
            TerminateReason::MaximumDuration => "maximum duration of the microVM elapsed",
            TerminateReason::SuspendedRetention => "suspended longer than suspendedDurationSeconds",
        }
    }
}

/// What the reconciler does next to a microVM, and when (unix seconds).
///
/// A deadline may already have passed; the reconciler then acts at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Deadline {
    /// Nothing to do: the microVM is TERMINATED.
    None,
    /// Suspend the RUNNING microVM for idleness at this time.
    SuspendAt(i64),
    /// Terminate the microVM at this time.
    TerminateAt {
        at_secs: i64,
        reason: TerminateReason,
    },
}

impl Deadline {
    /// When the reconciler acts, if ever.
    pub const fn at_secs(self) -> Option<i64> {
        match self {
            Deadline::None => None,
            Deadline::SuspendAt(at_secs) | Deadline::TerminateAt { at_secs, .. } => Some(at_secs),
        }
    }
}

/// The reconciler's next action on a microVM in `state`, and when.
///
/// - The maximum duration counts from `started_at_secs` (when `RunMicrovm`
///   created the microVM), whatever the microVM did since, suspensions
///   included: it terminates the microVM at `started_at_secs +
///   max_duration_secs` in every state but TERMINATED. `max_duration_secs` is
///   the effective maximum (the caller applies the API's default); 0 makes the
///   deadline `started_at_secs` itself.
/// - RUNNING: with a policy whose `max_idle_secs` is not 0, suspend at
///   `last_activity_secs + max_idle_secs`.
/// - SUSPENDED: with a policy whose `suspended_secs` is not 0, terminate at
///   `suspended_at_secs + suspended_secs` ([`TerminateReason::SuspendedRetention`]).
///   Without `suspended_at_secs` (not recorded) only the maximum duration
///   applies.
/// - PENDING, SUSPENDING, TERMINATING: only the maximum duration (the idle
///   clock does not run while a launch, resume or suspension is under way).
/// - TERMINATED: [`Deadline::None`].
///
/// The earliest deadline wins; on a tie the maximum duration wins, since it
/// ends the microVM either way. No deadline is earlier than `started_at_secs`:
/// one that would be (a clock that stepped back) is `started_at_secs`.
/// Sums saturate at `i64::MAX`.
pub fn next_deadline(
    state: MicrovmState,
    policy: Option<&IdlePolicy>,
    started_at_secs: i64,
    max_duration_secs: u32,
    last_activity_secs: i64,
    suspended_at_secs: Option<i64>,
) -> Deadline {
    use MicrovmState as S;
    let not_before_start = |at_secs: i64| at_secs.max(started_at_secs);
    let maximum_at_secs = started_at_secs.saturating_add(i64::from(max_duration_secs));
    let own = match state {
        S::Running => match policy {
            Some(policy) if policy.max_idle_secs > 0 => {
                Some(Deadline::SuspendAt(not_before_start(
                    last_activity_secs.saturating_add(i64::from(policy.max_idle_secs)),
                )))
            }
            Some(_) | None => None,
        },
        S::Suspended => match (policy, suspended_at_secs) {
            (Some(policy), Some(suspended_at_secs)) if policy.suspended_secs > 0 => {
                Some(Deadline::TerminateAt {
                    at_secs: not_before_start(
                        suspended_at_secs.saturating_add(i64::from(policy.suspended_secs)),
                    ),
                    reason: TerminateReason::SuspendedRetention,
                })
            }
            (Some(_) | None, _) => None,
        },
        S::Pending | S::Suspending | S::Terminating => None,
        S::Terminated => return Deadline::None,
    };
    match own {
        Some(deadline) if deadline.at_secs() < Some(maximum_at_secs) => deadline,
        Some(_) | None => Deadline::TerminateAt {
            at_secs: maximum_at_secs,
            reason: TerminateReason::MaximumDuration,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MicrovmEvent as E;
    use MicrovmRequest as R;
    use MicrovmState as S;

    /// Every allowed transition, written out independently of `transition`.
    const ALLOWED: &[(S, E, S)] = &[
        (S::Pending, E::Started, S::Running),
        (S::Pending, E::StartFailed, S::Terminated),
        (S::Pending, E::ResumeFailed, S::Suspended),
        (S::Running, E::SuspendBegan, S::Suspending),
        (S::Suspending, E::Suspended, S::Suspended),
        (S::Suspending, E::SuspendFailed, S::Running),
        (S::Suspended, E::ResumeBegan, S::Pending),
        (S::Pending, E::TerminateBegan, S::Terminating),
        (S::Running, E::TerminateBegan, S::Terminating),
        (S::Suspending, E::TerminateBegan, S::Terminating),
        (S::Suspended, E::TerminateBegan, S::Terminating),
        (S::Terminating, E::Terminated, S::Terminated),
        (S::Pending, E::Lost, S::Terminated),
        (S::Running, E::Lost, S::Terminated),
        (S::Suspending, E::Lost, S::Terminated),
    ];

    #[test]
    fn every_listed_transition_is_allowed_and_every_other_pair_refused() {
        for &from in S::ALL {
            for &event in E::ALL {
                let expected = ALLOWED
                    .iter()
                    .find(|(f, e, _)| *f == from && *e == event)
                    .map(|(_, _, to)| *to);
                match (transition(from, event), expected) {
                    (Ok(to), Some(want)) => assert_eq!(to, want, "{from} + {event:?}"),
                    (Err(err), None) => {
                        assert_eq!(err.kind, ResourceKind::Microvm);
                        assert_eq!(err.from, from.as_str());
                        assert_eq!(err.event, event.name());
                    }
                    (got, want) => panic!("{from} + {event:?}: got {got:?}, want {want:?}"),
                }
                assert_eq!(transition(from, event), from.transition(&event));
            }
        }
    }

    #[test]
    fn a_refused_event_reads_as_a_conflict_about_a_microvm() {
        let err = transition(S::Suspended, E::Lost).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot report the loss of a microVM that is SUSPENDED"
        );
        let err = transition(S::Pending, E::SuspendBegan).unwrap_err();
        assert_eq!(err.to_string(), "cannot suspend a microVM that is PENDING");
    }

    #[test]
    fn a_suspend_resume_cycle_returns_to_running() {
        let mut state = S::INITIAL;
        for event in [
            E::Started,
            E::SuspendBegan,
            E::Suspended,
            E::ResumeBegan,
            E::Started,
        ] {
            state = transition(state, event).unwrap();
        }
        assert_eq!(state, S::Running);
    }

    #[test]
    fn a_failed_resume_keeps_the_microvm_suspended_and_a_failed_launch_ends_it() {
        let resuming = transition(S::Suspended, E::ResumeBegan).unwrap();
        assert_eq!(transition(resuming, E::ResumeFailed), Ok(S::Suspended));
        assert_eq!(transition(S::INITIAL, E::StartFailed), Ok(S::Terminated));
    }

    #[test]
    fn only_terminated_is_final() {
        for &state in S::ALL {
            assert_eq!(state.is_final(), state == S::Terminated, "{state}");
        }
    }

    /// What a test expects of `admit`; a conflict's reason contains the text.
    #[derive(Debug, Clone, Copy)]
    enum Want {
        Begin,
        Join,
        Conflict(&'static str),
    }

    /// Every (state, request) pair, written out independently of `admit`.
    const ADMISSIONS: &[(S, R, Want)] = &[
        (
            S::Pending,
            R::Suspend,
            Want::Conflict(
                "is PENDING (starting or resuming); only a RUNNING microVM can be suspended",
            ),
        ),
        (S::Running, R::Suspend, Want::Begin),
        (S::Suspending, R::Suspend, Want::Join),
        (
            S::Suspended,
            R::Suspend,
            Want::Conflict("is already SUSPENDED"),
        ),
        (
            S::Terminating,
            R::Suspend,
            Want::Conflict("is TERMINATING; only a RUNNING microVM can be suspended"),
        ),
        (
            S::Terminated,
            R::Suspend,
            Want::Conflict("is TERMINATED; only a RUNNING microVM can be suspended"),
        ),
        (S::Pending, R::Resume, Want::Join),
        (
            S::Running,
            R::Resume,
            Want::Conflict("is RUNNING; only a SUSPENDED microVM can be resumed"),
        ),
        (
            S::Suspending,
            R::Resume,
            Want::Conflict("is SUSPENDING; resume it once SUSPENDED"),
        ),
        (S::Suspended, R::Resume, Want::Begin),
        (
            S::Terminating,
            R::Resume,
            Want::Conflict("is TERMINATING; only a SUSPENDED microVM can be resumed"),
        ),
        (
            S::Terminated,
            R::Resume,
            Want::Conflict("is TERMINATED; only a SUSPENDED microVM can be resumed"),
        ),
        (S::Pending, R::Terminate, Want::Begin),
        (S::Running, R::Terminate, Want::Begin),
        (S::Suspending, R::Terminate, Want::Begin),
        (S::Suspended, R::Terminate, Want::Begin),
        (S::Terminating, R::Terminate, Want::Join),
        (
            S::Terminated,
            R::Terminate,
            Want::Conflict("is already TERMINATED"),
        ),
    ];

    #[test]
    fn every_state_and_request_is_admitted_as_listed() {
        for &state in S::ALL {
            for &request in R::ALL {
                let want = ADMISSIONS
                    .iter()
                    .find(|(s, r, _)| *s == state && *r == request)
                    .map(|(_, _, want)| *want)
                    .unwrap_or_else(|| panic!("{state} {request:?} is not listed"));
                let got = admit(state, request);
                match (&got, want) {
                    (Admission::Begin, Want::Begin) | (Admission::Join, Want::Join) => {}
                    (Admission::Conflict { reason }, Want::Conflict(text)) => {
                        assert_eq!(
                            reason,
                            &format!("the microVM {text}"),
                            "{state} {request:?}"
                        );
                    }
                    _ => panic!("{state} {request:?}: got {got:?}, want {want:?}"),
                }
            }
        }
    }

    #[test]
    fn resuming_a_running_microvm_names_its_state() {
        assert_eq!(
            admit(S::Running, R::Resume),
            Admission::Conflict {
                reason: "the microVM is RUNNING; only a SUSPENDED microVM can be resumed"
                    .to_string()
            }
        );
    }

    #[test]
    fn a_begun_request_is_an_event_the_state_accepts() {
        for &state in S::ALL {
            for &request in R::ALL {
                if admit(state, request) == Admission::Begin {
                    let next = transition(state, request.begin_event());
                    assert!(next.is_ok(), "{state} {request:?}: {next:?}");
                }
            }
        }
    }

    const POLICY: IdlePolicy = IdlePolicy {
        max_idle_secs: 60,
        suspended_secs: 300,
        auto_resume: true,
    };

    fn terminate(at_secs: i64, reason: TerminateReason) -> Deadline {
        Deadline::TerminateAt { at_secs, reason }
    }

    #[test]
    fn a_running_microvm_suspends_after_its_idle_time() {
        let d = next_deadline(S::Running, Some(&POLICY), 1000, 3600, 1500, None);
        assert_eq!(d, Deadline::SuspendAt(1560));
    }

    #[test]
    fn a_running_microvm_without_a_policy_or_idle_limit_runs_to_its_maximum_duration() {
        let max = terminate(4600, TerminateReason::MaximumDuration);
        assert_eq!(next_deadline(S::Running, None, 1000, 3600, 1500, None), max);
        let never_idle = IdlePolicy {
            max_idle_secs: 0,
            ..POLICY
        };
        assert_eq!(
            next_deadline(S::Running, Some(&never_idle), 1000, 3600, 1500, None),
            max
        );
    }

    #[test]
    fn the_maximum_duration_wins_when_it_is_earlier_or_equal() {
        // Idle at 4560 + 60 = 4620 > 4600.
        let d = next_deadline(S::Running, Some(&POLICY), 1000, 3600, 4560, None);
        assert_eq!(d, terminate(4600, TerminateReason::MaximumDuration));
        // Idle at 4540 + 60 = 4600: a tie.
        let d = next_deadline(S::Running, Some(&POLICY), 1000, 3600, 4540, None);
        assert_eq!(d, terminate(4600, TerminateReason::MaximumDuration));
    }

    #[test]
    fn a_suspended_microvm_is_terminated_after_its_retention() {
        let d = next_deadline(S::Suspended, Some(&POLICY), 1000, 3600, 1500, Some(1560));
        assert_eq!(d, terminate(1860, TerminateReason::SuspendedRetention));
    }

    #[test]
    fn a_retention_of_zero_keeps_a_suspended_microvm_until_its_maximum_duration() {
        let keep = IdlePolicy {
            suspended_secs: 0,
            ..POLICY
        };
        let max = terminate(4600, TerminateReason::MaximumDuration);
        let d = next_deadline(S::Suspended, Some(&keep), 1000, 3600, 1500, Some(1560));
        assert_eq!(d, max);
        assert_eq!(
            next_deadline(S::Suspended, None, 1000, 3600, 1500, Some(1560)),
            max
        );
        assert_eq!(
            next_deadline(S::Suspended, Some(&POLICY), 1000, 3600, 1500, None),
            max
        );
    }

    #[test]
    fn transient_states_have_only_the_maximum_duration_and_terminated_has_none() {
        for state in [S::Pending, S::Suspending, S::Terminating] {
            let d = next_deadline(state, Some(&POLICY), 1000, 3600, 0, Some(0));
            assert_eq!(
                d,
                terminate(4600, TerminateReason::MaximumDuration),
                "{state}"
            );
        }
        let d = next_deadline(S::Terminated, Some(&POLICY), 1000, 3600, 1000, None);
        assert_eq!(d, Deadline::None);
        assert_eq!(d.at_secs(), None);
    }

    #[test]
    fn activity_before_the_start_does_not_move_a_deadline_before_it() {
        let d = next_deadline(S::Running, Some(&POLICY), 1000, 3600, 100, None);
        assert_eq!(d, Deadline::SuspendAt(1000));
    }

    #[test]
    fn every_reason_has_a_distinct_state_reason() {
        let texts: std::collections::HashSet<_> = TerminateReason::ALL
            .iter()
            .map(|r| r.state_reason())
            .collect();
        assert_eq!(texts.len(), TerminateReason::ALL.len());
        assert_eq!(
            TerminateReason::MaximumDuration.state_reason(),
            "maximum duration of the microVM elapsed"
        );
    }
}

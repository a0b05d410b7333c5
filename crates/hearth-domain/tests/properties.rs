//! Properties of the machines (and of microVM admission and deadlines) on
//! random inputs, through the public API.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;
use std::str::FromStr;

use hearth_domain::microvm::transition as microvm_transition;
use hearth_domain::{
    admit, latest_versions, next_deadline, Admission, BuildEvent, BuildState, Deadline, IdlePolicy,
    ImageEvent, ImageState, InvalidTransition, LatestVersions, MicrovmEvent, MicrovmRequest,
    MicrovmState, TerminateReason, Version, VersionEvent, VersionState, VersionStatus,
};
use proptest::prelude::*;
use proptest::sample::select;

/// Applies `events` from `start`, keeping the state on a refusal, and checks
/// what must hold at every step: a refusal names the current state, and a
/// terminal state refuses everything. Returns the final state.
fn run<S, E>(
    start: S,
    events: &[E],
    transition: impl Fn(S, &E) -> Result<S, InvalidTransition>,
    as_str: impl Fn(S) -> &'static str,
    is_terminal: impl Fn(S) -> bool,
) -> S
where
    S: Copy + PartialEq + std::fmt::Debug,
{
    let mut state = start;
    for event in events {
        match transition(state, event) {
            Ok(next) => {
                assert!(!is_terminal(state), "{state:?} accepted an event");
                state = next;
            }
            Err(err) => {
                assert_eq!(err.from, as_str(state));
                assert!(err.to_string().starts_with("cannot "), "{err}");
                assert!(err.to_string().ends_with(as_str(state)), "{err}");
            }
        }
    }
    state
}

/// The states reachable from `start` (breadth-first over every event).
fn reachable<S: Copy + Eq + Hash, E>(
    start: S,
    events: &[E],
    transition: impl Fn(S, &E) -> Result<S, InvalidTransition>,
) -> HashSet<S> {
    let mut seen = HashSet::from([start]);
    let mut queue = VecDeque::from([start]);
    while let Some(state) = queue.pop_front() {
        for event in events {
            if let Ok(next) = transition(state, event) {
                if seen.insert(next) {
                    queue.push_back(next);
                }
            }
        }
    }
    seen
}

#[test]
fn every_state_is_reachable_from_the_initial_one() {
    let images = reachable(ImageState::INITIAL, ImageEvent::ALL, |s, e| s.transition(e));
    assert_eq!(images.len(), ImageState::ALL.len(), "{images:?}");
    let versions = reachable(Version::INITIAL, VersionEvent::ALL, |v, e| v.transition(e));
    let version_states: HashSet<VersionState> = versions.iter().map(|v| v.state).collect();
    assert_eq!(
        version_states.len(),
        VersionState::ALL.len(),
        "{versions:?}"
    );
    let builds = reachable(BuildState::INITIAL, BuildEvent::ALL, |s, e| s.transition(e));
    assert_eq!(builds.len(), BuildState::ALL.len(), "{builds:?}");
    let microvms = microvm_reachable();
    assert_eq!(microvms.len(), MicrovmState::ALL.len(), "{microvms:?}");
}

/// The microVM states reachable from PENDING.
fn microvm_reachable() -> HashSet<MicrovmState> {
    reachable(MicrovmState::INITIAL, MicrovmEvent::ALL, |s, e| {
        microvm_transition(s, *e)
    })
}

#[test]
fn a_state_is_terminal_exactly_when_it_accepts_no_event() {
    for &s in ImageState::ALL {
        let accepts = ImageEvent::ALL.iter().any(|e| s.transition(e).is_ok());
        assert_eq!(s.is_terminal(), !accepts, "{s}");
    }
    for &s in VersionState::ALL {
        let accepts = VersionEvent::ALL.iter().any(|e| s.transition(e).is_ok());
        assert_eq!(s.is_terminal(), !accepts, "{s}");
    }
    for &s in BuildState::ALL {
        let accepts = BuildEvent::ALL.iter().any(|e| s.transition(e).is_ok());
        assert_eq!(s.is_terminal(), !accepts, "{s}");
    }
    for &s in MicrovmState::ALL {
        let accepts = MicrovmEvent::ALL.iter().any(|e| s.transition(e).is_ok());
        assert_eq!(s.is_final(), !accepts, "{s}");
    }
}

/// One step a microVM's owner takes: apply an event it observed, or a request
/// an API caller made (applying its begin event when admitted).
#[derive(Debug, Clone, Copy)]
enum MicrovmStep {
    Event(MicrovmEvent),
    Request(MicrovmRequest),
}

fn microvm_step() -> impl Strategy<Value = MicrovmStep> {
    prop_oneof![
        select(MicrovmEvent::ALL).prop_map(MicrovmStep::Event),
        select(MicrovmRequest::ALL).prop_map(MicrovmStep::Request),
    ]
}

/// An idle policy, or none, with durations below `bound_secs`.
fn idle_policy(bound_secs: u32) -> impl Strategy<Value = Option<IdlePolicy>> {
    prop::option::of((0..bound_secs, 0..bound_secs, any::<bool>()).prop_map(
        |(max_idle_secs, suspended_secs, auto_resume)| IdlePolicy {
            max_idle_secs,
            suspended_secs,
            auto_resume,
        },
    ))
}

/// The reconciler's next deadline found by letting a clock tick one second at
/// a time from the start until some limit is reached (the maximum duration is
/// checked first, so it wins a tie).
fn deadline_by_ticking(
    state: MicrovmState,
    policy: Option<&IdlePolicy>,
    started_at_secs: i64,
    max_duration_secs: u32,
    last_activity_secs: i64,
    suspended_at_secs: Option<i64>,
) -> Deadline {
    if state == MicrovmState::Terminated {
        return Deadline::None;
    }
    let mut now = started_at_secs;
    loop {
        if now - started_at_secs >= i64::from(max_duration_secs) {
            return Deadline::TerminateAt {
                at_secs: now,
                reason: TerminateReason::MaximumDuration,
            };
        }
        if let Some(policy) = policy {
            let idle_for = now - last_activity_secs;
            if state == MicrovmState::Running
                && policy.max_idle_secs != 0
                && idle_for >= i64::from(policy.max_idle_secs)
            {
                return Deadline::SuspendAt(now);
            }
            if let (MicrovmState::Suspended, Some(suspended_at_secs)) = (state, suspended_at_secs) {
                let suspended_for = now - suspended_at_secs;
                if policy.suspended_secs != 0 && suspended_for >= i64::from(policy.suspended_secs) {
                    return Deadline::TerminateAt {
                        at_secs: now,
                        reason: TerminateReason::SuspendedRetention,
                    };
                }
            }
        }
        now += 1;
    }
}

/// `value` survives as_str -> FromStr and serde, and serde writes the API string.
fn round_trips<T>(value: T)
where
    T: Copy + PartialEq + std::fmt::Debug + std::fmt::Display + FromStr,
    T: serde::Serialize + serde::de::DeserializeOwned,
    <T as FromStr>::Err: std::fmt::Debug,
{
    let text = value.to_string();
    assert_eq!(text.parse::<T>().unwrap(), value);
    let json = serde_json::to_string(&value).unwrap();
    assert_eq!(json, format!("\"{text}\""));
    assert_eq!(serde_json::from_str::<T>(&json).unwrap(), value);
}

/// `text` is refused by FromStr (with an error quoting it) and by serde.
fn refuses<T>(text: &str)
where
    T: FromStr<Err = hearth_domain::ParseError> + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let err = text.parse::<T>().unwrap_err();
    assert_eq!(err.value, text);
    assert!(err.to_string().contains(text), "{err}");
    let json = serde_json::to_string(text).unwrap();
    assert!(serde_json::from_str::<T>(&json).is_err());
}

proptest! {
    #[test]
    fn random_image_event_sequences_never_panic(
        events in prop::collection::vec(select(ImageEvent::ALL), 0..40),
    ) {
        run(ImageState::INITIAL, &events, |s, e| s.transition(e), ImageState::as_str, ImageState::is_terminal);
    }

    #[test]
    fn random_version_event_sequences_never_panic_and_an_unbuilt_version_stays_inactive(
        events in prop::collection::vec(select(VersionEvent::ALL), 0..40),
    ) {
        let mut version = Version::INITIAL;
        for event in &events {
            version = run(version, std::slice::from_ref(event), |v, e| v.transition(e), |v| v.state.as_str(), |v| v.state.is_terminal());
            if matches!(version.state, VersionState::Pending | VersionState::InProgress | VersionState::Failed) {
                prop_assert_eq!(version.status, VersionStatus::Inactive, "{:?}", version);
            }
        }
    }

    #[test]
    fn random_build_event_sequences_never_panic(
        events in prop::collection::vec(select(BuildEvent::ALL), 0..40),
    ) {
        run(BuildState::INITIAL, &events, |s, e| s.transition(e), BuildState::as_str, BuildState::is_terminal);
    }

    #[test]
    fn deleted_images_and_versions_and_ended_builds_accept_no_event(
        image_event in select(ImageEvent::ALL),
        version_event in select(VersionEvent::ALL),
        build_event in select(BuildEvent::ALL),
        ended in select(vec![BuildState::Successful, BuildState::Failed]),
    ) {
        prop_assert!(ImageState::Deleted.transition(&image_event).is_err());
        prop_assert!(VersionState::Deleted.transition(&version_event).is_err());
        prop_assert!(ended.transition(&build_event).is_err());
    }

    #[test]
    fn random_microvm_steps_stay_among_the_states_reachable_from_pending(
        steps in prop::collection::vec(microvm_step(), 0..60),
    ) {
        let reachable = microvm_reachable();
        let mut state = MicrovmState::INITIAL;
        for step in steps {
            let before = state;
            match step {
                MicrovmStep::Event(event) => {
                    state = run(state, &[event], |s, e| microvm_transition(s, *e), MicrovmState::as_str, MicrovmState::is_final);
                }
                MicrovmStep::Request(request) => {
                    if admit(state, request) == Admission::Begin {
                        state = microvm_transition(state, request.begin_event())
                            .map_err(|e| TestCaseError::fail(format!("{before} {request:?}: {e}")))?;
                    }
                }
            }
            prop_assert!(reachable.contains(&state), "{:?} -> {:?}", step, state);
            if before == MicrovmState::Terminated {
                prop_assert_eq!(state, MicrovmState::Terminated, "{:?}", step);
            }
        }
    }

    #[test]
    fn terminated_absorbs_every_event_and_request(
        event in select(MicrovmEvent::ALL),
        request in select(MicrovmRequest::ALL),
        policy in idle_policy(u32::MAX),
        clocks in any::<(i64, u32, i64, Option<i64>)>(),
    ) {
        let terminated = MicrovmState::Terminated;
        let err = microvm_transition(terminated, event).unwrap_err();
        prop_assert_eq!(err.to_string(), format!("cannot {} a microVM that is TERMINATED", event.name()));
        let admitted = admit(terminated, request);
        prop_assert!(matches!(admitted, Admission::Conflict { .. }), "{:?}", admitted);
        let (started, max_duration, activity, suspended_at) = clocks;
        prop_assert_eq!(
            next_deadline(terminated, policy.as_ref(), started, max_duration, activity, suspended_at),
            Deadline::None
        );
    }

    #[test]
    fn admit_begins_only_work_that_changes_the_state_and_the_state_accepts(
        state in select(MicrovmState::ALL),
        request in select(MicrovmRequest::ALL),
    ) {
        match admit(state, request) {
            Admission::Begin => {
                prop_assert_ne!(state, request.target());
                let next = microvm_transition(state, request.begin_event());
                prop_assert!(next.is_ok(), "{} {:?}: {:?}", state, request, next);
            }
            Admission::Join => {
                // Joined work is under way: the state is between the begin
                // event and the target.
                prop_assert_ne!(state, request.target());
                let under_way = match request {
                    MicrovmRequest::Suspend => MicrovmState::Suspending,
                    MicrovmRequest::Resume => MicrovmState::Pending,
                    MicrovmRequest::Terminate => MicrovmState::Terminating,
                };
                prop_assert_eq!(state, under_way);
            }
            Admission::Conflict { reason } => {
                prop_assert!(reason.starts_with("the microVM "), "{}", reason);
                prop_assert!(reason.contains(state.as_str()), "{}", reason);
            }
        }
    }

    #[test]
    fn no_deadline_is_earlier_than_the_start(
        state in select(MicrovmState::ALL),
        policy in idle_policy(u32::MAX),
        clocks in any::<(i64, u32, i64, Option<i64>)>(),
    ) {
        let (started, max_duration, activity, suspended_at) = clocks;
        let deadline = next_deadline(state, policy.as_ref(), started, max_duration, activity, suspended_at);
        match deadline.at_secs() {
            Some(at_secs) => prop_assert!(at_secs >= started, "{:?} < {}", deadline, started),
            None => prop_assert_eq!(state, MicrovmState::Terminated),
        }
    }

    #[test]
    fn every_state_string_round_trips(
        image in select(ImageState::ALL),
        version in select(VersionState::ALL),
        status in select(VersionStatus::ALL),
        build in select(BuildState::ALL),
        microvm in select(MicrovmState::ALL),
    ) {
        round_trips(image);
        round_trips(version);
        round_trips(status);
        round_trips(build);
        round_trips(microvm);
    }

    #[test]
    fn any_other_string_is_refused(text in "[A-Za-z_ ]{0,16}") {
        let known = |all: &[&str]| all.contains(&text.as_str());
        if !known(&ImageState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()) {
            refuses::<ImageState>(&text);
        }
        if !known(&VersionState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()) {
            refuses::<VersionState>(&text);
        }
        if !known(&VersionStatus::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()) {
            refuses::<VersionStatus>(&text);
        }
        if !known(&BuildState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()) {
            refuses::<BuildState>(&text);
        }
        if !known(&MicrovmState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()) {
            refuses::<MicrovmState>(&text);
        }
    }

    #[test]
    fn latest_versions_equal_a_brute_force_search(
        versions in prop::collection::vec(
            (0u64..30, select(VersionState::ALL), select(VersionStatus::ALL)),
            0..20,
        ),
    ) {
        // Reference: try every number from the highest down.
        let highest = |wanted: &dyn Fn(VersionState, VersionStatus) -> bool| {
            (0..30u64).rev().find(|n| {
                versions.iter().any(|&(m, state, status)| m == *n && wanted(state, status))
            })
        };
        let expected = LatestVersions {
            active: highest(&|state, status| {
                state == VersionState::Successful && status == VersionStatus::Active
            }),
            failed: highest(&|state, _| state == VersionState::Failed),
        };
        prop_assert_eq!(latest_versions(versions.iter().copied()), expected);
    }
}

proptest! {
    // Small ranges and many cases, so that ties between deadlines and clocks
    // before the start are common.
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn the_earliest_deadline_wins_as_a_ticking_clock_finds_it(
        state in select(MicrovmState::ALL),
        policy in idle_policy(20),
        started in -1_000i64..1_000,
        max_duration in 0u32..20,
        activity_offset in -5i64..20,
        suspended_offset in prop::option::of(-5i64..20),
    ) {
        let activity = started + activity_offset;
        let suspended_at = suspended_offset.map(|offset| started + offset);
        let expected = deadline_by_ticking(state, policy.as_ref(), started, max_duration, activity, suspended_at);
        let got = next_deadline(state, policy.as_ref(), started, max_duration, activity, suspended_at);
        prop_assert_eq!(got, expected);
    }
}

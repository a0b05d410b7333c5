//! Properties of the three machines on random inputs, through the public API.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;
use std::str::FromStr;

use hearth_domain::{
    latest_versions, BuildEvent, BuildState, ImageEvent, ImageState, InvalidTransition,
    LatestVersions, Version, VersionEvent, VersionState, VersionStatus,
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
    fn every_state_string_round_trips(
        image in select(ImageState::ALL),
        version in select(VersionState::ALL),
        status in select(VersionStatus::ALL),
        build in select(BuildState::ALL),
    ) {
        round_trips(image);
        round_trips(version);
        round_trips(status);
        round_trips(build);
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

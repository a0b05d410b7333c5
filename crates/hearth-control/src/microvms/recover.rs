//! Start-up reconciliation: what the store says of each microVM against
//! what the engine really has. Runs once, on the server's start-up task,
//! before the API and the proxy accept anything.
//!
//! The engine is the truth about processes and files; the store about
//! intent. A row whose microVM still runs gets a task and RUNNING (an
//! interrupted suspend or launch ends RUNNING); one whose microVM is
//! suspended gets SUSPENDED (an interrupted resume ends there too); a row
//! whose microVM is gone is TERMINATED with the reason; a row that was
//! TERMINATING is finished. What the engine has that no row claims (a warm
//! pool's clones, a launch cut before its row was written) is removed.

use std::collections::HashMap;

use hearth_domain::microvm::transition;
use hearth_domain::{MicrovmEvent, MicrovmState};
use hearth_store::{AccountId, Microvm, PageRequest, StateUpdate};
use hearth_vmm::{MicroVm, QemuVm, SuspendedVm};

use super::doc::MicrovmDoc;
use super::{task, MicrovmControl};
use crate::images::blocking;
use crate::writes::now_secs;
use crate::ControlError;

/// What recovery found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MicrovmRecovery {
    pub running: usize,
    pub suspended: usize,
    /// Rows whose microVM was gone, now TERMINATED.
    pub lost: usize,
    /// Engine microVMs no row claimed, removed.
    pub orphans_removed: usize,
}

/// The state the engine's observation leads a row to, as the events of
/// the state machine that get there (empty when it is there already).
fn events_to(from: MicrovmState, observed: MicrovmState) -> Option<Vec<MicrovmEvent>> {
    use MicrovmEvent as E;
    use MicrovmState as S;
    let path: &[MicrovmEvent] = match (from, observed) {
        (a, b) if a == b => &[],
        (S::Pending, S::Running) => &[E::Started],
        (S::Suspending, S::Running) => &[E::SuspendFailed],
        (S::Suspending, S::Suspended) => &[E::Suspended],
        (S::Pending, S::Suspended) => &[E::ResumeFailed],
        (S::Running, S::Suspended) => &[E::SuspendBegan, E::Suspended],
        (S::Suspended, S::Running) => &[E::ResumeBegan, E::Started],
        (S::Pending | S::Running | S::Suspending, S::Terminated) => &[E::Lost],
        (S::Suspended, S::Terminated) => &[E::TerminateBegan, E::Terminated],
        (S::Terminating, S::Terminated) => &[E::Terminated],
        _ => return None,
    };
    let mut s = from;
    for e in path {
        s = transition(s, *e).ok()?;
    }
    (s == observed).then(|| path.to_vec())
}

impl MicrovmControl {
    /// Reconcile the store with the engine and start a task per live
    /// microVM ([module docs](self)).
    pub async fn recover(&self) -> Result<MicrovmRecovery, ControlError> {
        let mut report = MicrovmRecovery::default();
        let rows = self.live_rows().await?;
        let Ok(backend) = self.shared.backend() else {
            // No engine: nothing can be running; every live row is lost.
            for row in rows {
                self.settle(&row, MicrovmState::Terminated, Some(lost_reason()))
                    .await?;
                report.lost += 1;
            }
            return Ok(report);
        };
        let adopted = backend
            .adopt()
            .await
            .map_err(|source| ControlError::Engine {
                what: "adopting the engine's microVMs".into(),
                source: Box::new(source),
            })?;
        for (id, why) in &adopted.lost {
            tracing::warn!(microvm = %id, "lost while no server watched: {why}");
        }
        let mut running: HashMap<String, QemuVm> = adopted
            .running
            .into_iter()
            .map(|vm| (vm.id().to_string(), vm))
            .collect();
        let mut suspended: HashMap<String, SuspendedVm> = adopted
            .suspended
            .into_iter()
            .map(|s| (s.id().to_string(), s))
            .collect();
        for row in rows {
            let state: MicrovmState = row.state.parse()?;
            let doc = MicrovmDoc::from_value(&row.microvm_id, &row.doc)?;
            let vm = running.remove(&row.microvm_id);
            let sus = suspended.remove(&row.microvm_id);
            if state == MicrovmState::Terminating {
                if let Some(vm) = vm {
                    let _ = vm.terminate().await;
                }
                if let Some(s) = sus {
                    let _ = backend.discard_suspended(s).await;
                }
                let reason = doc.state_reason.clone();
                self.settle(
                    &row,
                    MicrovmState::Terminated,
                    reason.or(Some("terminated".into())),
                )
                .await?;
                continue;
            }
            let (observed, held) = match (vm, sus) {
                (Some(vm), _) => (MicrovmState::Running, Some(Ok(vm))),
                (None, Some(s)) => (MicrovmState::Suspended, Some(Err(s))),
                (None, None) => (MicrovmState::Terminated, None),
            };
            let row = match observed {
                MicrovmState::Terminated => {
                    self.settle(&row, observed, Some(lost_reason())).await?;
                    report.lost += 1;
                    continue;
                }
                _ => self.settle(&row, observed, None).await?,
            };
            let mut doc = MicrovmDoc::from_value(&row.microvm_id, &row.doc)?;
            if observed == MicrovmState::Running {
                // The last activity is written only at state changes, so
                // the stored one may be long before the traffic a running
                // microVM had until the server stopped: its idle clock
                // starts again now (it never suspends early; at most one
                // idle period late).
                doc.hearth.last_activity_at = doc.hearth.last_activity_at.max(now_secs());
            }
            match observed {
                MicrovmState::Running => report.running += 1,
                _ => report.suspended += 1,
            }
            task::spawn(
                self.shared.clone(),
                row.account_id.clone(),
                row.microvm_id.clone(),
                observed,
                doc,
                held,
            );
        }
        for (id, vm) in running {
            tracing::info!(microvm = %id, "removing a microVM no row claims");
            let _ = vm.terminate().await;
            report.orphans_removed += 1;
        }
        for (id, s) in suspended {
            tracing::info!(microvm = %id, "removing a suspended microVM no row claims");
            let _ = backend.discard_suspended(s).await;
            report.orphans_removed += 1;
        }
        Ok(report)
    }

    /// Every row that is not TERMINATED, across accounts.
    async fn live_rows(&self) -> Result<Vec<Microvm>, ControlError> {
        let states: Vec<String> = [
            MicrovmState::Pending,
            MicrovmState::Running,
            MicrovmState::Suspending,
            MicrovmState::Suspended,
            MicrovmState::Terminating,
        ]
        .iter()
        .map(|s| s.as_str().to_string())
        .collect();
        blocking(&self.shared.store, move |st| {
            let mut out = Vec::new();
            let mut page = PageRequest::first(50);
            loop {
                let p = st.list_microvms_all_accounts(&states, &page)?;
                out.extend(p.items);
                match p.next {
                    Some(c) => page = PageRequest::after(50, c),
                    None => break,
                }
            }
            Ok(out)
        })
        .await
    }

    /// Write `observed` for a row, through the state machine's events when
    /// they lead there (else directly: the engine is the truth).
    pub(super) async fn settle(
        &self,
        row: &Microvm,
        observed: MicrovmState,
        reason: Option<String>,
    ) -> Result<Microvm, ControlError> {
        let from: MicrovmState = row.state.parse()?;
        if from == observed && reason.is_none() {
            return Ok(row.clone());
        }
        if events_to(from, observed).is_none() {
            tracing::warn!(microvm = %row.microvm_id, "recorded {from:?}, found {observed:?}: recording what was found");
        }
        // Edited as JSON, so that a row whose document this server cannot
        // read (written by another version) can still be settled.
        let mut doc = row.doc.clone();
        let now = now_secs();
        if let Some(obj) = doc.as_object_mut() {
            let hearth = obj.entry("hearth").or_insert_with(|| serde_json::json!({}));
            match observed {
                MicrovmState::Terminated => {
                    obj.insert("terminatedAt".into(), now.into());
                    match reason {
                        Some(r) => obj.insert("stateReason".into(), r.into()),
                        None => obj.remove("stateReason"),
                    };
                }
                MicrovmState::Suspended if hearth.get("suspendedAt").is_none() => {
                    hearth["suspendedAt"] = now.into();
                }
                MicrovmState::Running => {
                    if let Some(h) = hearth.as_object_mut() {
                        h.remove("suspendedAt");
                        h.insert("lastActivityAt".into(), now.into());
                    }
                }
                _ => {}
            }
        }
        let update = StateUpdate {
            state: observed.as_str().into(),
            doc,
            updated_at_secs: now,
            expected_state: Some(row.state.clone()),
        };
        let acct: AccountId = row.account_id.clone();
        let id = row.microvm_id.clone();
        blocking(&self.shared.store, move |st| {
            Ok(st.update_microvm(&acct, &id, &update)?)
        })
        .await
    }
}

pub(super) fn lost_reason() -> String {
    "lost: its microVM was no longer there when hearth serve started again".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_observation_from_every_live_state_is_reached_by_valid_events_or_refused() {
        use MicrovmState as S;
        let live = [
            S::Pending,
            S::Running,
            S::Suspending,
            S::Suspended,
            S::Terminating,
        ];
        for from in live {
            for observed in [S::Running, S::Suspended, S::Terminated] {
                if let Some(events) = events_to(from, observed) {
                    let mut s = from;
                    for e in events {
                        s = transition(s, e).unwrap();
                    }
                    assert_eq!(s, observed, "{from:?} -> {observed:?}");
                }
            }
        }
        assert_eq!(
            events_to(S::Suspending, S::Running),
            Some(vec![MicrovmEvent::SuspendFailed])
        );
        assert_eq!(
            events_to(S::Pending, S::Suspended),
            Some(vec![MicrovmEvent::ResumeFailed])
        );
        assert_eq!(
            events_to(S::Running, S::Terminated),
            Some(vec![MicrovmEvent::Lost])
        );
    }
}

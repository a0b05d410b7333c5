//! The reaper: the only code in the agent that waits for processes.
//!
//! One thread (named `reaper`) calls `waitpid(-1)` forever. As PID 1 that
//! reaps every zombie: the agent's own children and orphans the kernel
//! re-parents to init. A spawner registers a callback for its child's pid;
//! the reaper calls it (on the reaper thread, so callbacks must not block)
//! with the exit status. Statuses of pids nobody registered are orphans and
//! are dropped.
//!
//! The "child exits before its pid is registered" race cannot happen: a
//! spawner holds the registry lock from *before* `fork` until the pid is
//! registered ([`Registry::lock_for_spawn`]), and the reaper takes the same
//! lock to look a reaped pid up, so the lookup always sees the registration.
//!
//! With no children at all `waitpid` fails with `ECHILD`; the reaper then
//! sleeps on a condition variable until a spawn bumps `spawn_gen`.

use std::collections::HashMap;
use std::io;
use std::sync::{Condvar, Mutex, MutexGuard, Once, OnceLock};
use std::thread;
use std::time::Duration;

use hearth_proto::ExitStatus;

use crate::{agent_log, lock};

/// Called with the exit status of a registered pid (on the reaper thread).
pub(crate) type ExitCallback = Box<dyn FnOnce(ExitStatus) + Send>;

/// Longest sleep while there are no children (a safety net; spawns wake it).
const IDLE_RECHECK_MS: u64 = 1000;

#[derive(Default)]
struct Waiters {
    callbacks: HashMap<libc::pid_t, ExitCallback>,
    /// Bumped by every spawn, so an idle reaper knows to call waitpid again.
    spawn_gen: u64,
}

/// The process-wide registry of pids the agent waits for.
pub(crate) struct Registry {
    waiters: Mutex<Waiters>,
    spawned: Condvar,
}

/// The registry lock, held across `fork` by a spawner.
pub(crate) struct SpawnGuard<'a> {
    registry: &'a Registry,
    guard: MutexGuard<'a, Waiters>,
}

impl SpawnGuard<'_> {
    /// Register `pid` (just forked) and wake an idle reaper.
    pub(crate) fn register(&mut self, pid: libc::pid_t, on_exit: ExitCallback) {
        self.guard.callbacks.insert(pid, on_exit);
        self.guard.spawn_gen = self.guard.spawn_gen.wrapping_add(1);
        self.registry.spawned.notify_all();
    }
}

impl Registry {
    /// Take the lock a spawner must hold from before `fork` until
    /// [`SpawnGuard::register`].
    pub(crate) fn lock_for_spawn(&self) -> SpawnGuard<'_> {
        SpawnGuard {
            registry: self,
            guard: lock(&self.waiters),
        }
    }

    /// Forget `pid` (its exec failed; nobody wants its status any more).
    pub(crate) fn unregister(&self, pid: libc::pid_t) {
        lock(&self.waiters).callbacks.remove(&pid);
    }

    fn run(&self) -> ! {
        loop {
            let gen_before = lock(&self.waiters).spawn_gen;
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid only writes the status through the valid,
            // exclusively borrowed pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
            if pid > 0 {
                let callback = lock(&self.waiters).callbacks.remove(&pid);
                if let Some(callback) = callback {
                    callback(decode_status(status));
                }
                continue;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::ECHILD) => {
                    let guard = lock(&self.waiters);
                    let _ = self.spawned.wait_timeout_while(
                        guard,
                        Duration::from_millis(IDLE_RECHECK_MS),
                        |w| w.spawn_gen == gen_before,
                    );
                }
                _ => {
                    agent_log!("waitpid failed: {err}");
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

/// The registry, with its reaper thread started on first use.
pub(crate) fn global() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    static STARTED: Once = Once::new();
    let registry = REGISTRY.get_or_init(|| Registry {
        waiters: Mutex::new(Waiters::default()),
        spawned: Condvar::new(),
    });
    STARTED.call_once(|| {
        if let Err(e) = thread::Builder::new()
            .name("reaper".into())
            .stack_size(64 * 1024)
            .spawn(move || registry.run())
        {
            agent_log!("cannot start the reaper thread: {e}; zombies will pile up");
        }
    });
    registry
}

/// Translate a raw wait status.
pub(crate) fn decode_status(status: libc::c_int) -> ExitStatus {
    if libc::WIFEXITED(status) {
        ExitStatus {
            code: Some(libc::WEXITSTATUS(status)),
            signal: None,
        }
    } else if libc::WIFSIGNALED(status) {
        ExitStatus {
            code: None,
            signal: Some(libc::WTERMSIG(status)),
        }
    } else {
        ExitStatus {
            code: None,
            signal: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses_decode() {
        // Exit code 3: status word 0x0300; killed by SIGKILL: 9.
        assert_eq!(
            decode_status(3 << 8),
            ExitStatus {
                code: Some(3),
                signal: None
            }
        );
        assert_eq!(
            decode_status(libc::SIGKILL),
            ExitStatus {
                code: None,
                signal: Some(libc::SIGKILL)
            }
        );
    }
}

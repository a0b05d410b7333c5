//! Running as PID 1 (main thread): init duties, then serve the port forever.
//!
//! PID 1 must never exit (the kernel panics) and never panic: every failure
//! is logged to the console and the agent keeps going. If `serve` ever
//! returns or panics, it is started again on the same open port.

use std::panic::{self, AssertUnwindSafe};
use std::thread;
use std::time::Duration;

use crate::spawn::{DEFAULT_HOME, DEFAULT_PATH};
use crate::{agent_log, channel, init, reaper, serve, ServeConfig};

/// Pause before serving again after `serve` ended.
const RESERVE_DELAY_MS: u64 = 1000;

/// Be init and the agent. Never returns.
pub fn run() -> ! {
    // Environment for the agent itself; children get theirs explicitly.
    // Set while the process is still single-threaded.
    std::env::set_var("PATH", DEFAULT_PATH);
    std::env::set_var("HOME", DEFAULT_HOME);
    // Reap zombies from the very start.
    reaper::global();
    agent_log!("starting (version {})", env!("CARGO_PKG_VERSION"));
    init::run();

    let port = loop {
        match channel::open_agent_port(channel::PORT_WAIT_MS) {
            Ok((path, port)) => {
                agent_log!("serving on {}", path.display());
                break port;
            }
            Err(e) => {
                agent_log!("{e}; still trying");
                thread::sleep(Duration::from_millis(RESERVE_DELAY_MS));
            }
        }
    };
    loop {
        let served = panic::catch_unwind(AssertUnwindSafe(|| {
            let reader = port.try_clone()?;
            let writer = port.try_clone()?;
            serve(reader, writer, ServeConfig::port())
        }));
        match served {
            Ok(Ok(())) => agent_log!("serve ended; serving again"),
            Ok(Err(e)) => agent_log!("serve failed: {e}; serving again"),
            Err(_) => agent_log!("serve panicked; serving again"),
        }
        thread::sleep(Duration::from_millis(RESERVE_DELAY_MS));
    }
}

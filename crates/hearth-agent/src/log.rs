//! Console logging, usable from any thread.
//!
//! As PID 1 the agent's stderr is the kernel console (the serial port QEMU
//! captures into the VM's log), so one line per event on stderr is the log.
//! Write failures are ignored: logging must never take PID 1 down.

use std::io::Write;

/// Write one `hearth-agent: ...` line to stderr.
#[macro_export]
macro_rules! agent_log {
    ($($arg:tt)*) => {
        $crate::log::write_line(format_args!($($arg)*))
    };
}

/// Write one prefixed line to stderr, ignoring errors.
pub fn write_line(args: std::fmt::Arguments<'_>) {
    let line = format!("hearth-agent: {args}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

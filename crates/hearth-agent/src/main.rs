//! Entry point: PID 1 in a Hearth microVM, or a plain server elsewhere.
//!
//! As PID 1 the agent does the init duties and serves the virtio-serial
//! port forever. Anywhere else it serves only the channel it is given:
//! `--port <path>` (a virtio-serial port device) or `--stdio`.

use std::fs::OpenOptions;
use std::process::ExitCode;
use std::sync::Arc;

use hearth_agent::{serve, RealSystem, ServeConfig};

const USAGE: &str = "usage: hearth-agent [--port <device> | --stdio | --version]\n\
    As PID 1 it initialises the microVM and serves the hearth.agent port.";

fn main() -> ExitCode {
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } == 1 {
        hearth_agent::pid1::run();
    }
    hearth_agent::init::ensure_stdio();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["--version"] => {
            println!("hearth-agent {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        ["--port", path] => OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .and_then(|port| {
                let writer = port.try_clone()?;
                serve(port, writer, ServeConfig::port())
            }),
        ["--stdio"] => serve(
            std::io::stdin(),
            std::io::stdout(),
            ServeConfig::socket(Arc::new(RealSystem)),
        ),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hearth-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

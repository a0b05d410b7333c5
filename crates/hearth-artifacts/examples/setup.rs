//! Runs the real provisioning end to end, printing progress.
//!
//! ```text
//! HEARTH_CACHE=/root/.cache/hearth cargo run -p hearth-artifacts --example setup -- [AGENT] [IMAGE...]
//! ```
//!
//! AGENT defaults to `/bin/busybox` (static, from busybox-static) as a
//! stand-in for the real agent; IMAGE defaults to every managed image.
//! `hearth setup` is the real front end; this exists to exercise the library.

use std::path::PathBuf;
use std::time::Instant;

use hearth_artifacts::{cache_dir, setup, Progress, SetupOptions, Status};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let agent = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| "/bin/busybox".into());
    let mut opts = SetupOptions::new(cache_dir(), agent);
    let images: Vec<String> = args.collect();
    if !images.is_empty() {
        opts.images = images;
    }
    opts.mirror = std::env::var("HEARTH_MIRROR").ok();
    let verbose = std::env::var_os("VERBOSE").is_some();
    let start = Instant::now();
    let progress = |p: Progress| {
        let t = start.elapsed().as_secs_f64();
        match p.status {
            Status::Started => println!("[{t:7.2}s] {}: started", p.step),
            Status::Cached => println!("[{t:7.2}s] {}: cached", p.step),
            Status::Done { elapsed_ms } => {
                println!(
                    "[{t:7.2}s] {}: done in {:.2} s",
                    p.step,
                    elapsed_ms as f64 / 1000.0
                )
            }
            Status::Info(line) if verbose || !line.starts_with("I: ") => {
                println!("[{t:7.2}s] {}: {line}", p.step)
            }
            Status::Info(_) => {}
        }
    };
    match setup(&opts, &progress) {
        Ok(m) => {
            println!("{}", serde_json::to_string_pretty(&m)?);
            println!("total {:.2} s", start.elapsed().as_secs_f64());
            Ok(())
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            Err(msg.into())
        }
    }
}

//! Running the external tools setup relies on (apt, dpkg, mmdebstrap, mke2fs),
//! turning their failures into [`SetupError`]s that carry the command line and
//! the tail of its standard error.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, ExitStatus, Output, Stdio};

use crate::{SetupError, Step};

/// Lines of standard error kept for an error message.
const TAIL_LINES: usize = 25;
/// Characters of standard error kept for an error message.
const TAIL_CHARS: usize = 4000;

/// The command line, quoted as a shell would need it.
pub(crate) fn command_line(cmd: &Command) -> String {
    let mut parts = vec![quote(&cmd.get_program().to_string_lossy())];
    parts.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy())));
    parts.join(" ")
}

fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Characters kept of one overlong stderr line (head and tail).
const LINE_KEEP_CHARS: usize = 160;

/// `line` with its middle elided if it is overlong (tools print whole
/// command lines with hundreds of paths).
fn shorten(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    if chars.len() <= 3 * LINE_KEEP_CHARS {
        return line.to_string();
    }
    let head: String = chars[..LINE_KEEP_CHARS].iter().collect();
    let tail: String = chars[chars.len() - LINE_KEEP_CHARS..].iter().collect();
    format!("{head} [...] {tail}")
}

/// The last lines of `text`, bounded in size.
pub(crate) fn tail_of(text: &str) -> String {
    let lines: Vec<String> = text.lines().map(shorten).collect();
    let start = lines.len().saturating_sub(TAIL_LINES);
    let joined = lines[start..].join("\n");
    if joined.len() <= TAIL_CHARS {
        return joined;
    }
    let mut cut = joined.len() - TAIL_CHARS;
    while !joined.is_char_boundary(cut) {
        cut += 1;
    }
    format!("...{}", &joined[cut..])
}

fn failed(step: &Step, cmd: &Command, status: ExitStatus, stderr: &str) -> SetupError {
    SetupError::CommandFailed {
        step: step.clone(),
        command: command_line(cmd),
        status: status.to_string(),
        stderr_tail: tail_of(stderr),
    }
}

fn spawn_error(step: &Step, cmd: &Command) -> impl FnOnce(std::io::Error) -> SetupError {
    let step = step.clone();
    let command = command_line(cmd);
    move |source| SetupError::CommandSpawn {
        step,
        command,
        source,
    }
}

/// Runs `cmd` with stdin from `/dev/null`, capturing its output; a non-zero
/// exit is an error.
pub(crate) fn run(step: &Step, cmd: &mut Command) -> Result<Output, SetupError> {
    let out = run_unchecked(step, cmd)?;
    if !out.status.success() {
        return Err(failed(
            step,
            cmd,
            out.status,
            &String::from_utf8_lossy(&out.stderr),
        ));
    }
    Ok(out)
}

/// Like [`run`], but returns the output whatever the exit status.
pub(crate) fn run_unchecked(step: &Step, cmd: &mut Command) -> Result<Output, SetupError> {
    tracing::debug!(command = %command_line(cmd), "running");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.output().map_err(spawn_error(step, cmd))
}

/// Runs `cmd` with stdin from `/dev/null`, handing each line of its standard
/// error to `on_line` as it arrives; standard output is collected and
/// returned. A non-zero exit is an error carrying the stderr tail.
pub(crate) fn run_streaming(
    step: &Step,
    cmd: &mut Command,
    on_line: &mut dyn FnMut(&str),
) -> Result<Vec<u8>, SetupError> {
    tracing::debug!(command = %command_line(cmd), "running");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(spawn_error(step, cmd))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    // Drain stdout on a thread so neither pipe can fill up and block the tool.
    let stdout_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let mut recent: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES + 1);
    let mut reader = BufReader::new(stderr);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        match reader.read_until(b'\n', &mut raw) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&raw);
                let line = line.trim_end_matches(['\n', '\r']);
                on_line(line);
                if recent.len() == TAIL_LINES {
                    recent.pop_front();
                }
                recent.push_back(line.to_string());
            }
        }
    }
    let status = child.wait().map_err(spawn_error(step, cmd))?;
    let out = stdout_reader.join().unwrap_or_default();
    if !status.success() {
        let stderr: Vec<String> = recent.into_iter().collect();
        return Err(failed(step, cmd, status, &stderr.join("\n")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_what_needs_it() {
        let mut c = Command::new("mke2fs");
        c.args(["-t", "ext4", "-L", "hearth root", "it's"]);
        assert_eq!(
            command_line(&c),
            r"mke2fs -t ext4 -L 'hearth root' 'it'\''s'"
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let t = tail_of(&text);
        assert!(t.starts_with("line 75"));
        assert!(t.ends_with("line 99"));
        let long = format!("E: {} failed", "x".repeat(5000));
        let t = tail_of(&format!("first\n{long}\nlast\n"));
        assert!(t.len() < 400, "{}", t.len());
        assert!(t.starts_with("first\nE: xxx"));
        assert!(t.contains(" [...] "));
        assert!(t.ends_with("xxx failed\nlast"));
    }

    #[test]
    fn failed_command_carries_stderr_tail() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo out; echo oops >&2; exit 3"]);
        let err = run(&Step::Kernel, &mut c).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("kernel: `sh -c"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(msg.ends_with("oops"), "{msg}");
    }

    #[test]
    fn streaming_hands_out_stderr_lines_and_returns_stdout() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo a >&2; echo out; echo b >&2"]);
        let mut lines = Vec::new();
        let out = run_streaming(&Step::Kernel, &mut c, &mut |l| lines.push(l.to_string())).unwrap();
        assert_eq!(lines, ["a", "b"]);
        assert_eq!(out, b"out\n");

        let mut c = Command::new("sh");
        c.args(["-c", "echo bad >&2; exit 1"]);
        let err = run_streaming(&Step::Kernel, &mut c, &mut |_| {}).unwrap_err();
        assert!(err.to_string().ends_with("bad"), "{err}");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let mut c = Command::new("/nonexistent/tool");
        let err = run(&Step::Kernel, &mut c).unwrap_err();
        assert!(matches!(err, SetupError::CommandSpawn { .. }), "{err}");
    }
}

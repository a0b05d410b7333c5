//! The Dockerfile parser: text to a list of [`Instruction`]s with raw (not yet substituted)
//! arguments. It owns Docker's line rules (parser directives, comments, continuations,
//! JSON exec form, flags) and refuses everything Hearth's builder does not run, with the
//! line of the instruction. Pure; runs on the caller's task.

use crate::lex::{extract_flags, parse_words};
use crate::ParseError;

/// A parsed Dockerfile: the escape character in force and the instructions in order.
/// Exactly one FROM, preceded only by ARGs (checked by [`parse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// `\` unless a `# escape=` directive chose the backtick.
    pub escape: char,
    pub instructions: Vec<Instruction>,
}

/// One instruction, with the lines it spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// 1-based line of the instruction's first line.
    pub line: usize,
    /// 1-based line of its last line (continuations).
    pub end_line: usize,
    /// The keyword in capitals and its arguments as written, continuations joined and runs
    /// of whitespace collapsed; used for log descriptions.
    pub text: String,
    pub kind: InstructionKind,
}

/// The instructions Hearth's builder runs. Arguments are raw: quotes, escapes and
/// variables are processed by [`crate::plan`], where Docker processes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstructionKind {
    Arg(Vec<ArgDecl>),
    From {
        image: String,
        /// The `AS name`, lower-cased as Docker does.
        stage_name: Option<String>,
    },
    Run(Command),
    Cmd(Command),
    /// An empty exec form (`ENTRYPOINT []`) clears the entrypoint.
    Entrypoint(Command),
    Copy(CopyArgs),
    Add(CopyArgs),
    Workdir(String),
    /// Name/value pairs, both forms (`ENV k v` and `ENV k=v ...`).
    Env(Vec<(String, String)>),
    Label(Vec<(String, String)>),
    User(String),
    Expose(Vec<String>),
}

/// A command in exec form (`["a","b"]`, run as is) or shell form (run by `/bin/sh -c`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Command {
    Exec(Vec<String>),
    Shell(String),
}

impl Command {
    /// The argv the command runs as: the exec form as is, the shell form as
    /// `["/bin/sh", "-c", text]`.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Exec(argv) => argv.clone(),
            Command::Shell(text) => vec!["/bin/sh".into(), "-c".into(), text.clone()],
        }
    }
}

/// One `name[=default]` of an ARG instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDecl {
    pub name: String,
    pub default: Option<String>,
}

/// The arguments of COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyArgs {
    pub sources: Vec<String>,
    pub dest: String,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    /// `--link`: accepted; it only changes how Docker caches layers.
    pub link: bool,
}

/// The suffix of every refusal of an instruction or flag.
const NOT_SUPPORTED: &str = "is not supported by Hearth's builder";

fn err(line: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        line,
        message: message.into(),
    }
}

/// Parses a Dockerfile. Errors name the 1-based line of the offending instruction's first
/// line (or of the directive).
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut directives = Directives::default();
    let mut instructions = Vec::new();
    let mut structure = Structure::default();
    let mut i = 0;
    while i < lines.len() {
        let line_no = i + 1;
        let token = trim_newline(lines[i]).trim_start();
        directives.feed(token, line_no)?;
        let token = if is_comment(token) { "" } else { token };
        i += 1;
        let start = line_no;
        let (first, mut end_of_line) = trim_continuation(token, directives.escape);
        if end_of_line && first.is_empty() {
            continue;
        }
        let mut joined = first.to_string();
        let mut end = line_no;
        while !end_of_line && i < lines.len() {
            let raw = trim_newline(lines[i]);
            end = i + 1;
            i += 1;
            // Docker skips comment lines and empty lines inside a continuation.
            if is_comment(raw) || raw.trim_start().is_empty() {
                continue;
            }
            let (part, eol) = trim_continuation(raw, directives.escape);
            joined.push_str(part);
            end_of_line = eol;
        }
        let instruction = parse_instruction(&joined, start, end, directives.escape)?;
        structure.check(&instruction)?;
        instructions.push(instruction);
    }
    structure.finish(&instructions, lines.len().max(1))?;
    Ok(Dockerfile {
        escape: directives.escape,
        instructions,
    })
}

/// The number of lines Docker counts in `text` (lines end at `\n`).
pub(crate) fn line_count(text: &str) -> usize {
    text.split_inclusive('\n').count()
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// Removes a line-continuation escape at the end of `line` (followed only by spaces and
/// tabs, and not itself escaped). Returns the line and whether the instruction ends here.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let body = line.trim_end_matches([' ', '\t']);
    let Some(before) = body.strip_suffix(escape) else {
        return (line, true);
    };
    if before.ends_with(escape) {
        return (line, true);
    }
    (before, false)
}

/// Docker's parser directives: only at the top, before any other line.
struct Directives {
    escape: char,
    done: bool,
    seen_escape: bool,
    seen_syntax: bool,
    seen_check: bool,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            escape: '\\',
            done: false,
            seen_escape: false,
            seen_syntax: false,
            seen_check: false,
        }
    }
}

impl Directives {
    fn feed(&mut self, line: &str, line_no: usize) -> Result<(), ParseError> {
        if self.done {
            return Ok(());
        }
        let Some((name, value)) = directive(line) else {
            self.done = true;
            return Ok(());
        };
        let seen = match name.as_str() {
            "escape" => &mut self.seen_escape,
            "syntax" => &mut self.seen_syntax,
            "check" => &mut self.seen_check,
            _ => {
                // Unknown directives are comments and end the directives.
                self.done = true;
                return Ok(());
            }
        };
        if *seen {
            return Err(err(
                line_no,
                format!("only one {name} parser directive can be used"),
            ));
        }
        *seen = true;
        if name == "escape" {
            self.escape = match value {
                "\\" => '\\',
                "`" => '`',
                other => {
                    return Err(err(
                        line_no,
                        format!("invalid escape token '{other}' does not match ` or \\"),
                    ))
                }
            };
        }
        Ok(())
    }
}

/// `# name = value` (name: a letter then letters and digits), lower-cased name.
fn directive(line: &str) -> Option<(String, &str)> {
    let rest = line.strip_prefix('#')?.trim_start();
    let name_len = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map_or(rest.len(), |(i, _)| i);
    if name_len == 0 {
        return None;
    }
    let (name, after) = rest.split_at(name_len);
    let value = after.trim_start().strip_prefix('=')?.trim();
    if value.is_empty() {
        return None;
    }
    Some((name.to_ascii_lowercase(), value))
}

/// Docker's instruction/argument separator (`[\t\v\f\r ]+`).
fn is_arg_space(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

fn split_ws(s: &str) -> Vec<String> {
    s.split(is_arg_space)
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

fn collapse_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Instructions Docker knows that Hearth's builder refuses.
const REFUSED: &[(&str, &str)] = &[
    ("ONBUILD", ""),
    ("HEALTHCHECK", ""),
    ("STOPSIGNAL", ""),
    (
        "SHELL",
        " (RUN, CMD and ENTRYPOINT use /bin/sh -c; use the exec form to run another shell)",
    ),
    ("VOLUME", ""),
    ("MAINTAINER", " (use LABEL maintainer=\"...\")"),
];

fn keyword_for_message(keyword: &str) -> String {
    let mut shown: String = keyword.chars().take(40).collect();
    if shown.len() < keyword.len() {
        shown.push('…');
    }
    shown
}

fn parse_instruction(
    line: &str,
    start: usize,
    end: usize,
    escape: char,
) -> Result<Instruction, ParseError> {
    let trimmed = line.trim();
    let (keyword, after_keyword) = match trimmed.find(is_arg_space) {
        Some(at) => (
            &trimmed[..at],
            trimmed[at..].trim_start_matches(is_arg_space),
        ),
        None => (trimmed, ""),
    };
    let upper = keyword.to_ascii_uppercase();
    let text = if after_keyword.is_empty() {
        upper.clone()
    } else {
        format!("{upper} {}", collapse_ws(after_keyword))
    };
    if let Some((name, hint)) = REFUSED.iter().find(|(name, _)| *name == upper) {
        return Err(err(start, format!("{name} {NOT_SUPPORTED}{hint}")));
    }
    let (flag_words, rest) = extract_flags(after_keyword, escape);
    let rest = rest.trim();
    let mut flags = Flags::parse(&upper, &flag_words, start)?;
    let kind = match upper.as_str() {
        "FROM" => {
            flags.refuse("platform", "FROM --platform")?;
            flags.finish()?;
            parse_from(rest, start)?
        }
        "ARG" => {
            flags.finish()?;
            parse_arg(rest, escape, start)?
        }
        "RUN" => {
            flags.refuse("mount", "RUN --mount")?;
            flags.refuse("network", "RUN --network")?;
            flags.refuse("security", "RUN --security")?;
            flags.refuse("device", "RUN --device")?;
            flags.finish()?;
            let command = match maybe_json(rest, start)? {
                None => return Err(err(start, "RUN needs a command")),
                Some(Command::Exec(argv)) if argv.is_empty() => {
                    return Err(err(start, "RUN needs a command"))
                }
                Some(command) => command,
            };
            if let Command::Shell(text) = &command {
                refuse_heredoc("RUN", text, escape, start)?;
            }
            InstructionKind::Run(command)
        }
        "CMD" => {
            flags.finish()?;
            InstructionKind::Cmd(maybe_json(rest, start)?.unwrap_or(Command::Shell(String::new())))
        }
        "ENTRYPOINT" => {
            flags.finish()?;
            InstructionKind::Entrypoint(
                maybe_json(rest, start)?.unwrap_or(Command::Shell(String::new())),
            )
        }
        "COPY" | "ADD" => {
            let is_add = upper == "ADD";
            if is_add {
                flags.refuse("from", "ADD --from")?;
                flags.refuse("checksum", "ADD --checksum")?;
                flags.refuse("keep-git-dir", "ADD --keep-git-dir")?;
                flags.refuse("unpack", "ADD --unpack")?;
                flags.refuse("exclude", "ADD --exclude")?;
            } else {
                flags.refuse_with(
                    "from",
                    "COPY --from",
                    " (multi-stage builds and copying from other images are not supported)",
                )?;
                flags.refuse("parents", "COPY --parents")?;
                flags.refuse("exclude", "COPY --exclude")?;
            }
            let chown = flags.string("chown")?;
            let chmod = flags.string("chmod")?;
            let link = flags.boolean("link")?;
            flags.finish()?;
            let mut sources = parse_copy_args(&upper, rest, escape, start)?;
            let dest = sources.pop().unwrap_or_default();
            let copy = CopyArgs {
                sources,
                dest,
                chown,
                chmod,
                link,
            };
            if is_add {
                InstructionKind::Add(copy)
            } else {
                InstructionKind::Copy(copy)
            }
        }
        "WORKDIR" => {
            flags.finish()?;
            if rest.is_empty() {
                return Err(err(start, "WORKDIR requires exactly one argument"));
            }
            InstructionKind::Workdir(rest.to_string())
        }
        "USER" => {
            flags.finish()?;
            if rest.is_empty() {
                return Err(err(start, "USER requires exactly one argument"));
            }
            InstructionKind::User(rest.to_string())
        }
        "ENV" => {
            flags.finish()?;
            InstructionKind::Env(parse_name_values("ENV", rest, escape, start)?)
        }
        "LABEL" => {
            flags.finish()?;
            InstructionKind::Label(parse_name_values("LABEL", rest, escape, start)?)
        }
        "EXPOSE" => {
            flags.finish()?;
            let ports = split_ws(rest);
            if ports.is_empty() {
                return Err(err(start, "EXPOSE requires at least one argument"));
            }
            InstructionKind::Expose(ports)
        }
        _ => {
            return Err(err(
                start,
                format!("unknown instruction: {}", keyword_for_message(keyword)),
            ))
        }
    };
    Ok(Instruction {
        line: start,
        end_line: end,
        text,
        kind,
    })
}

/// The flags of one instruction, consumed by name; [`Flags::finish`] refuses the rest.
struct Flags {
    instruction: String,
    line: usize,
    /// (name, value after `=` if any), in order, each consumed at most once.
    given: Vec<(String, Option<String>)>,
}

impl Flags {
    fn parse(instruction: &str, words: &[String], line: usize) -> Result<Flags, ParseError> {
        let mut given: Vec<(String, Option<String>)> = Vec::new();
        for word in words {
            let body = word.strip_prefix("--").unwrap_or(word);
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (body.to_string(), None),
            };
            if given.iter().any(|(n, _)| *n == name) {
                return Err(err(line, format!("duplicate flag specified: --{name}")));
            }
            given.push((name, value));
        }
        Ok(Flags {
            instruction: instruction.to_string(),
            line,
            given,
        })
    }

    fn take(&mut self, name: &str) -> Option<Option<String>> {
        let at = self.given.iter().position(|(n, _)| n == name)?;
        Some(self.given.remove(at).1)
    }

    fn refuse(&mut self, name: &str, what: &str) -> Result<(), ParseError> {
        self.refuse_with(name, what, "")
    }

    fn refuse_with(&mut self, name: &str, what: &str, hint: &str) -> Result<(), ParseError> {
        match self.take(name) {
            Some(_) => Err(err(self.line, format!("{what} {NOT_SUPPORTED}{hint}"))),
            None => Ok(()),
        }
    }

    fn string(&mut self, name: &str) -> Result<Option<String>, ParseError> {
        match self.take(name) {
            None => Ok(None),
            Some(None) => Err(err(self.line, format!("missing a value on flag: --{name}"))),
            Some(Some(v)) => Ok(Some(v)),
        }
    }

    fn boolean(&mut self, name: &str) -> Result<bool, ParseError> {
        match self.take(name) {
            None => Ok(false),
            Some(None) => Ok(true),
            Some(Some(v)) => match v.to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                "" => Err(err(self.line, format!("missing a value on flag: --{name}"))),
                _ => Err(err(
                    self.line,
                    format!("expecting boolean value for flag --{name}, not: {v}"),
                )),
            },
        }
    }

    fn finish(self) -> Result<(), ParseError> {
        match self.given.first() {
            None => Ok(()),
            Some((name, _)) => Err(err(
                self.line,
                format!("unknown flag for {}: --{name}", self.instruction),
            )),
        }
    }
}

fn parse_from(rest: &str, line: usize) -> Result<InstructionKind, ParseError> {
    let args = split_ws(rest);
    match args.as_slice() {
        [image] => Ok(InstructionKind::From {
            image: image.clone(),
            stage_name: None,
        }),
        [image, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
            let name = name.to_lowercase();
            let mut chars = name.chars();
            let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
                && chars.all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')
                });
            if !valid {
                return Err(err(
                    line,
                    format!("invalid name for build stage: {name:?}, name can't start with a number or contain symbols"),
                ));
            }
            Ok(InstructionKind::From {
                image: image.clone(),
                stage_name: Some(name),
            })
        }
        _ => Err(err(line, "FROM requires either one or three arguments")),
    }
}

fn parse_arg(rest: &str, escape: char, line: usize) -> Result<InstructionKind, ParseError> {
    let words = parse_words(rest, escape);
    if words.is_empty() {
        return Err(err(line, "ARG requires at least one argument"));
    }
    let mut decls = Vec::new();
    for word in words {
        let decl = match word.split_once('=') {
            Some((name, value)) => ArgDecl {
                name: name.to_string(),
                default: Some(value.to_string()),
            },
            None => ArgDecl {
                name: word,
                default: None,
            },
        };
        if decl.name.is_empty() {
            return Err(err(line, "ARG names can not be blank"));
        }
        decls.push(decl);
    }
    Ok(InstructionKind::Arg(decls))
}

/// `ENV name value` (old form) or `ENV n1=v1 n2="v 2"` (Docker's `parseNameVal`).
fn parse_name_values(
    keyword: &str,
    rest: &str,
    escape: char,
    line: usize,
) -> Result<Vec<(String, String)>, ParseError> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else {
        return Err(err(
            line,
            format!("{keyword} requires at least one argument"),
        ));
    };
    let pairs = if !first.contains('=') {
        match rest.split_once(is_arg_space) {
            Some((name, value)) => vec![(
                name.to_string(),
                value.trim_start_matches(is_arg_space).to_string(),
            )],
            None => return Err(err(line, format!("{keyword} must have two arguments"))),
        }
    } else {
        let mut pairs = Vec::new();
        for word in &words {
            let Some((name, value)) = word.split_once('=') else {
                return Err(err(
                    line,
                    format!(
                        "Syntax error - can't find = in {word:?}. Must be of the form: name=value"
                    ),
                ));
            };
            pairs.push((name.to_string(), value.to_string()));
        }
        pairs
    };
    if pairs.iter().any(|(name, _)| name.is_empty()) {
        return Err(err(line, format!("{keyword} names can not be blank")));
    }
    Ok(pairs)
}

/// The JSON exec form if `rest` is a JSON array (of strings only), else the shell form;
/// `None` when there are no arguments (Docker's `parseMaybeJSON`).
fn maybe_json(rest: &str, line: usize) -> Result<Option<Command>, ParseError> {
    if rest.is_empty() {
        return Ok(None);
    }
    match json_array(rest, line)? {
        Some(argv) => Ok(Some(Command::Exec(argv))),
        None => Ok(Some(Command::Shell(rest.to_string()))),
    }
}

/// `Some(strings)` if `rest` is a JSON array of strings; `None` if it is not JSON (the
/// shell form applies); an error if it is a JSON array holding anything but strings.
fn json_array(rest: &str, line: usize) -> Result<Option<Vec<String>>, ParseError> {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return Ok(None);
    }
    let Ok(values) = serde_json::from_str::<Vec<serde_json::Value>>(rest) else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(values.len());
    for value in values {
        match value {
            serde_json::Value::String(s) => out.push(s),
            _ => {
                return Err(err(
                    line,
                    "when using JSON array syntax, arrays must be comprised of strings only",
                ))
            }
        }
    }
    Ok(Some(out))
}

fn parse_copy_args(
    keyword: &str,
    rest: &str,
    escape: char,
    line: usize,
) -> Result<Vec<String>, ParseError> {
    let args = match json_array(rest, line)? {
        Some(args) => args,
        None => {
            refuse_heredoc(keyword, rest, escape, line)?;
            split_ws(rest)
        }
    };
    if args.len() < 2 {
        return Err(err(
            line,
            format!("{keyword} requires at least two arguments, but only one was provided. Destination could not be determined"),
        ));
    }
    Ok(args)
}

/// Refuses a heredoc (`<<EOF`, `<<-EOF`, `2<<"EOF"`, `<< EOF`) in a shell-form RUN, COPY or
/// ADD, where Docker would read the following lines as a document.
fn refuse_heredoc(keyword: &str, text: &str, escape: char, line: usize) -> Result<(), ParseError> {
    if !text.contains("<<") {
        return Ok(());
    }
    let words = heredoc_words(text, escape);
    if words.iter().any(|w| is_heredoc_word(w)) {
        return Err(err(
            line,
            format!("{keyword} with a heredoc (<<EOF) {NOT_SUPPORTED}"),
        ));
    }
    Ok(())
}

/// Splits at unquoted whitespace keeping quotes and escapes; `<<` followed by blanks stays
/// glued to the next word, as in Docker's heredoc detection.
fn heredoc_words(text: &str, escape: char) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == escape {
            cur.push(c);
            if let Some(&n) = chars.get(i + 1) {
                cur.push(n);
            }
            i += 2;
            continue;
        }
        if c == '\'' || c == '"' {
            cur.push(c);
            i += 1;
            while i < chars.len() && chars[i] != c {
                if c == '"' && chars[i] == escape && i + 1 < chars.len() {
                    cur.push(chars[i]);
                    i += 1;
                }
                cur.push(chars[i]);
                i += 1;
            }
            if i < chars.len() {
                cur.push(c);
                i += 1;
            }
            continue;
        }
        if c == '<' && chars.get(i + 1) == Some(&'<') {
            cur.push_str("<<");
            i += 2;
            while i < chars.len() && matches!(chars[i], ' ' | '\t' | '\r') {
                i += 1;
            }
            continue;
        }
        if c.is_whitespace() {
            if !cur.is_empty() {
                words.push(std::mem::take(&mut cur));
            }
            i += 1;
            continue;
        }
        cur.push(c);
        i += 1;
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// Docker's `^(\d*)<<(-?)\s*([^<]*)$` with a non-empty word after it.
fn is_heredoc_word(word: &str) -> bool {
    let after_digits = word.trim_start_matches(|c: char| c.is_ascii_digit());
    let Some(rest) = after_digits.strip_prefix("<<") else {
        return false;
    };
    let rest = rest.strip_prefix('-').unwrap_or(rest).trim_start();
    let name: String = rest.chars().filter(|c| !matches!(c, '"' | '\'')).collect();
    !name.is_empty() && !rest.contains('<')
}

/// One FROM, preceded only by ARGs; checked as instructions arrive so that the first
/// problem in the file is the one reported.
#[derive(Default)]
struct Structure {
    seen_from: bool,
}

impl Structure {
    fn check(&mut self, inst: &Instruction) -> Result<(), ParseError> {
        match &inst.kind {
            InstructionKind::From { .. } if self.seen_from => Err(err(
                inst.line,
                format!("a second FROM {NOT_SUPPORTED} (multi-stage builds are not supported)"),
            )),
            InstructionKind::From { .. } => {
                self.seen_from = true;
                Ok(())
            }
            InstructionKind::Arg(_) => Ok(()),
            _ if !self.seen_from => {
                let keyword = inst.text.split(' ').next().unwrap_or_default();
                Err(err(
                    inst.line,
                    format!("{keyword} before FROM: a Dockerfile must start with FROM (only ARG may come before it)"),
                ))
            }
            _ => Ok(()),
        }
    }

    fn finish(&self, instructions: &[Instruction], line_count: usize) -> Result<(), ParseError> {
        if self.seen_from {
            return Ok(());
        }
        let line = instructions.last().map_or(line_count, |i| i.line);
        let message = if instructions.is_empty() {
            "the Dockerfile has no instructions (it needs a FROM)"
        } else {
            "the Dockerfile has no FROM instruction"
        };
        Err(err(line, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<InstructionKind> {
        parse(text)
            .unwrap()
            .instructions
            .into_iter()
            .map(|i| i.kind)
            .collect()
    }

    fn error(text: &str) -> ParseError {
        parse(text).unwrap_err()
    }

    #[test]
    fn continuation_joins_lines_and_keeps_the_first_line_number() {
        let df =
            parse("FROM x\n\nRUN apt-get update && \\\n    apt-get install -y curl\nUSER app\n")
                .unwrap();
        let run = &df.instructions[1];
        assert_eq!((run.line, run.end_line), (3, 4));
        assert_eq!(
            run.kind,
            InstructionKind::Run(Command::Shell(
                "apt-get update &&     apt-get install -y curl".into()
            ))
        );
        assert_eq!(df.instructions[2].line, 5);
    }

    #[test]
    fn comments_and_blank_lines_inside_a_continuation_are_skipped() {
        let k = kinds("FROM x\nRUN a \\\n# a comment \\\n\n   # indented comment\n  b\n");
        assert_eq!(k[1], InstructionKind::Run(Command::Shell("a   b".into())));
    }

    #[test]
    fn escaped_escape_at_end_of_line_is_not_a_continuation() {
        let k = kinds("FROM x\nRUN echo a\\\\\nRUN echo b\n");
        assert_eq!(
            k[1],
            InstructionKind::Run(Command::Shell("echo a\\\\".into()))
        );
        assert_eq!(k[2], InstructionKind::Run(Command::Shell("echo b".into())));
    }

    #[test]
    fn continuation_allows_trailing_blanks_and_a_lone_escape_line() {
        let k = kinds("FROM x\nRUN a \\  \t\n\\\n b\n");
        assert_eq!(k[1], InstructionKind::Run(Command::Shell("a  b".into())));
    }

    #[test]
    fn continuation_at_end_of_file_ends_the_instruction() {
        let k = kinds("FROM x\nRUN a \\");
        assert_eq!(k[1], InstructionKind::Run(Command::Shell("a".into())));
    }

    #[test]
    fn crlf_line_endings_are_accepted() {
        let k = kinds("FROM x\r\nRUN a \\\r\n  b\r\n");
        assert_eq!(k[1], InstructionKind::Run(Command::Shell("a   b".into())));
    }

    #[test]
    fn backtick_escape_directive_changes_continuation_and_keeps_backslashes() {
        let df = parse("# escape=`\nFROM x\nRUN dir C:\\ `\n  /w\n").unwrap();
        assert_eq!(df.escape, '`');
        assert_eq!(
            df.instructions[1].kind,
            InstructionKind::Run(Command::Shell("dir C:\\   /w".into()))
        );
    }

    #[test]
    fn directives_only_count_at_the_top() {
        // After a comment, an escape directive is just a comment.
        let df = parse("# hello\n# escape=`\nFROM x\n").unwrap();
        assert_eq!(df.escape, '\\');
        // After a blank line too.
        let df = parse("\n# escape=`\nFROM x\n").unwrap();
        assert_eq!(df.escape, '\\');
        // syntax is accepted and ignored, and directive names are case-insensitive.
        let df = parse("# syntax=docker/dockerfile:1\n#  ESCAPE = `\nFROM x\n").unwrap();
        assert_eq!(df.escape, '`');
    }

    #[test]
    fn bad_or_repeated_escape_directive_is_an_error_on_its_line() {
        let e = error("# escape=x\nFROM a\n");
        assert_eq!(e.line, 1);
        assert!(e.message.contains("invalid escape token"), "{e}");
        let e = error("# escape=`\n# escape=\\\nFROM a\n");
        assert_eq!(e.line, 2);
        assert!(
            e.message.contains("only one escape parser directive"),
            "{e}"
        );
    }

    #[test]
    fn keywords_are_case_insensitive() {
        let k = kinds("from x\nrun a\nCoPy a b\n");
        assert!(matches!(k[1], InstructionKind::Run(_)));
        assert!(matches!(k[2], InstructionKind::Copy(_)));
    }

    #[test]
    fn exec_form_is_json_with_string_escapes() {
        let k = kinds("FROM x\nCMD [\"echo\", \"a\\\"b\", \"\\u00e9\\n\"]\n");
        assert_eq!(
            k[1],
            InstructionKind::Cmd(Command::Exec(vec![
                "echo".into(),
                "a\"b".into(),
                "é\n".into()
            ]))
        );
    }

    #[test]
    fn invalid_json_falls_back_to_shell_form() {
        let k = kinds("FROM x\nCMD [\"a\", 'b']\nRUN [ -f x ] && echo y\n");
        assert_eq!(
            k[1],
            InstructionKind::Cmd(Command::Shell("[\"a\", 'b']".into()))
        );
        assert_eq!(
            k[2],
            InstructionKind::Run(Command::Shell("[ -f x ] && echo y".into()))
        );
    }

    #[test]
    fn json_array_of_non_strings_is_an_error() {
        let e = error("FROM x\nCMD [\"a\", 1]\n");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("strings only"), "{e}");
    }

    #[test]
    fn env_both_forms() {
        let k = kinds("FROM x\nENV A 1 2  3\nENV B=x C=\"y z\" D='q'\n");
        assert_eq!(
            k[1],
            InstructionKind::Env(vec![("A".into(), "1 2  3".into())])
        );
        assert_eq!(
            k[2],
            InstructionKind::Env(vec![
                ("B".into(), "x".into()),
                ("C".into(), "\"y z\"".into()),
                ("D".into(), "'q'".into())
            ])
        );
    }

    #[test]
    fn env_errors() {
        assert!(error("FROM x\nENV A\n").message.contains("two arguments"));
        assert!(error("FROM x\nENV A=1 B\n")
            .message
            .contains("can't find ="));
        assert!(error("FROM x\nENV =1\n").message.contains("blank"));
        assert!(error("FROM x\nENV\n").message.contains("at least one"));
    }

    #[test]
    fn arg_with_and_without_default() {
        let k = kinds("ARG V=1 W\nFROM x\n");
        assert_eq!(
            k[0],
            InstructionKind::Arg(vec![
                ArgDecl {
                    name: "V".into(),
                    default: Some("1".into())
                },
                ArgDecl {
                    name: "W".into(),
                    default: None
                }
            ])
        );
    }

    #[test]
    fn from_with_stage_name() {
        let k = kinds("FROM python:3.12 AS Build\n");
        assert_eq!(
            k[0],
            InstructionKind::From {
                image: "python:3.12".into(),
                stage_name: Some("build".into())
            }
        );
        assert!(error("FROM a b\n").message.contains("one or three"));
        assert!(error("FROM a AS 1x\n").message.contains("invalid name"));
    }

    #[test]
    fn copy_flags_and_forms() {
        let k = kinds(
            "FROM x\nCOPY --chown=app:app --chmod=0644 --link a b /d/\nCOPY [\"a b\", \"/c d\"]\n",
        );
        assert_eq!(
            k[1],
            InstructionKind::Copy(CopyArgs {
                sources: vec!["a".into(), "b".into()],
                dest: "/d/".into(),
                chown: Some("app:app".into()),
                chmod: Some("0644".into()),
                link: true,
            })
        );
        assert_eq!(
            k[2],
            InstructionKind::Copy(CopyArgs {
                sources: vec!["a b".into()],
                dest: "/c d".into(),
                chown: None,
                chmod: None,
                link: false,
            })
        );
    }

    #[test]
    fn flag_errors_name_the_line() {
        let e = error("FROM x\n\nCOPY --nope a b\n");
        assert_eq!(e.line, 3);
        assert!(e.message.contains("unknown flag for COPY: --nope"), "{e}");
        assert!(error("FROM x\nCOPY --chown a b\n")
            .message
            .contains("missing a value"));
        assert!(error("FROM x\nCOPY --link=maybe a b\n")
            .message
            .contains("boolean"));
        assert!(error("FROM x\nCOPY --chown=a --chown=b a b\n")
            .message
            .contains("duplicate"));
        assert!(error("FROM x\nCMD --help\n")
            .message
            .contains("unknown flag for CMD"));
    }

    #[test]
    fn copy_needs_a_destination() {
        let e = error("FROM x\nCOPY onlyone\n");
        assert!(e.message.contains("at least two arguments"), "{e}");
    }

    #[test]
    fn refused_instructions_name_line_and_instruction() {
        for (kw, rest) in [
            ("VOLUME", "/data"),
            ("ONBUILD", "RUN x"),
            ("HEALTHCHECK", "CMD curl -f localhost"),
            ("STOPSIGNAL", "SIGTERM"),
            ("SHELL", "[\"/bin/bash\", \"-c\"]"),
            ("MAINTAINER", "me"),
        ] {
            let text = format!("FROM x\nRUN a\n\n# c\nENV A=1\n\n{kw} {rest}\n");
            let e = error(&text);
            assert_eq!(e.line, 7, "{kw}");
            assert!(
                e.to_string().starts_with(&format!(
                    "line 7: {kw} is not supported by Hearth's builder"
                )),
                "{e}"
            );
        }
        let e = error("FROM x\nvolume /data\n");
        assert_eq!(
            e.to_string(),
            "line 2: VOLUME is not supported by Hearth's builder"
        );
    }

    #[test]
    fn refused_flags_name_line_and_flag() {
        for (text, what) in [
            ("FROM --platform=linux/arm64 x\n", "FROM --platform"),
            (
                "FROM x\nRUN --mount=type=cache,target=/root/.cache pip install x\n",
                "RUN --mount",
            ),
            ("FROM x\nRUN --network=none make\n", "RUN --network"),
            ("FROM x\nCOPY --from=builder /a /b\n", "COPY --from"),
            ("FROM x\nADD --from=builder /a /b\n", "ADD --from"),
            ("FROM x\nADD --checksum=sha256:00 a b\n", "ADD --checksum"),
        ] {
            let e = error(text);
            assert!(
                e.message
                    .starts_with(&format!("{what} is not supported by Hearth's builder")),
                "{text}: {e}"
            );
            assert_eq!(e.line, text.lines().count(), "{text}");
        }
    }

    #[test]
    fn unknown_instruction_is_an_error() {
        let e = error("FROM x\nFOO bar\n");
        assert_eq!(e.to_string(), "line 2: unknown instruction: FOO");
    }

    #[test]
    fn heredocs_are_refused_on_the_instruction_line() {
        for text in [
            "FROM x\nRUN <<EOF\necho hi\nEOF\n",
            "FROM x\nRUN cat <<-'EOT' > f\n\tx\nEOT\n",
            "FROM x\nRUN python3 << \"PY\"\nprint(1)\nPY\n",
            "FROM x\nCOPY <<EOF /etc/conf\nx\nEOF\n",
        ] {
            let e = error(text);
            assert_eq!(e.line, 2, "{text}");
            assert!(e.message.contains("heredoc"), "{e}");
        }
        // Not heredocs: a here-string, quoted text, and the exec form.
        kinds("FROM x\nRUN cat <<< \"$x\"\nRUN echo \"a<<b\"\nRUN [\"cat\", \"<<EOF\"]\n");
    }

    #[test]
    fn a_second_from_is_refused() {
        let e = error("FROM a AS build\nRUN make\nFROM b\nCOPY --link x y\n");
        assert_eq!(e.line, 3);
        assert!(
            e.to_string()
                .starts_with("line 3: a second FROM is not supported"),
            "{e}"
        );
    }

    #[test]
    fn only_arg_may_precede_from_and_from_is_required() {
        let e = error("ARG A\nRUN x\nFROM y\n");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("before FROM"), "{e}");
        let e = error("# only a comment\n\n");
        assert_eq!(e.line, 2);
        assert!(error("ARG A\n").message.contains("no FROM"));
        assert_eq!(error("").line, 1);
    }

    #[test]
    fn run_needs_a_command() {
        assert!(error("FROM x\nRUN\n").message.contains("needs a command"));
        assert!(error("FROM x\nRUN []\n")
            .message
            .contains("needs a command"));
    }

    #[test]
    fn text_collapses_whitespace_and_capitalises_the_keyword() {
        let df = parse("FROM x\nrun  pip   install \\\n   -r requirements.txt\n").unwrap();
        assert_eq!(
            df.instructions[1].text,
            "RUN pip install -r requirements.txt"
        );
    }

    #[test]
    fn bom_is_stripped() {
        let df = parse("\u{feff}# escape=`\nFROM x\n").unwrap();
        assert_eq!(df.escape, '`');
    }
}

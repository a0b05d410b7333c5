//! The build planner: a parsed [`Dockerfile`] plus build-arg values to a [`BuildPlan`] (the
//! base image reference, the steps the builder runs in order, and the final image config).
//! It owns Docker's variable scoping (ARGs before FROM, ARGs and ENV in the stage), the
//! substitution of the instructions Docker expands, path resolution against WORKDIR, and
//! the ENTRYPOINT/CMD rules. Pure; runs on the caller's task.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::copy::{clean_path, is_archive_name, normalize_source, ADD_ARCHIVE_REFUSED};
use crate::lex::{process_word, process_words, EnvList, LexError};
use crate::parse::{Command, CopyArgs, Dockerfile, Instruction, InstructionKind};
use crate::ParseError;

/// Docker's PATH for an image that does not set one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The platform ARGs Docker predefines. Hearth's guests are linux/amd64. As in Docker they
/// are in scope before FROM, and after FROM only when declared (`ARG TARGETARCH`).
pub const PREDEFINED_ARGS: &[(&str, &str)] = &[
    ("TARGETPLATFORM", "linux/amd64"),
    ("TARGETOS", "linux"),
    ("TARGETARCH", "amd64"),
    ("TARGETVARIANT", ""),
    ("BUILDPLATFORM", "linux/amd64"),
    ("BUILDOS", "linux"),
    ("BUILDARCH", "amd64"),
    ("BUILDVARIANT", ""),
];

/// The most ports EXPOSE may declare in total (ranges are expanded).
pub const MAX_EXPOSED_PORTS: usize = 4096;

/// Step descriptions are cut to this many characters.
pub const DESCRIPTION_MAX_CHARS: usize = 100;

/// What the builder does, in order, and the image config that results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildPlan {
    /// The FROM image reference after substitution (the builder maps it to a base image).
    pub from: String,
    /// The `AS name` of the FROM, if any (lower-cased).
    pub stage_name: Option<String>,
    pub steps: Vec<Step>,
    pub config: ImageConfig,
    /// Build args given to [`plan`] that no ARG declares, sorted. Docker ignores them with
    /// a warning; the builder should log them.
    pub unused_build_args: Vec<String>,
}

/// One thing the builder does inside the builder microVM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Run a command and fail the build if it exits non-zero.
    Run {
        line: usize,
        description: String,
        /// Not substituted (the shell does that); run it as [`Command::argv`].
        argv_or_shell: Command,
        /// The complete environment of the command: the base image's, then ENV and the
        /// ARGs in scope, in Docker's order (a later setting of a name replaces it in place).
        env: Vec<(String, String)>,
        /// Absolute working directory (the builder creates it if missing, as Docker does).
        workdir: String,
        /// `user[:group]` (names or ids) to run as; `None` is root.
        user: Option<String>,
    },
    /// Copy files from the build context: resolve `sources` with
    /// [`crate::resolve_copy`] against the context listing and `dest`.
    Copy {
        line: usize,
        description: String,
        /// Substituted sources, relative to the context root as written.
        sources: Vec<String>,
        /// Absolute destination; a trailing `/` means "a directory".
        dest: String,
        /// `--chown` as `user[:group]`; `None` is root:root (Docker's COPY ignores USER).
        chown: Option<String>,
        /// `--chmod` in octal (at most 0o7777).
        chmod: Option<u32>,
        /// ADD rather than COPY: the builder must refuse every copied file that
        /// [`crate::is_archive`] recognises (Docker would unpack it; Hearth does not).
        is_add: bool,
    },
    /// Create the WORKDIR (`mkdir -p`), owned by `user` as Docker does.
    Workdir {
        line: usize,
        description: String,
        path: String,
        user: Option<String>,
    },
}

impl Step {
    /// The 1-based line of the instruction this step comes from.
    pub fn line(&self) -> usize {
        match self {
            Step::Run { line, .. } | Step::Copy { line, .. } | Step::Workdir { line, .. } => *line,
        }
    }

    /// A short description for logs, such as `RUN pip install -r requirements.txt`.
    pub fn description(&self) -> &str {
        match self {
            Step::Run { description, .. }
            | Step::Copy { description, .. }
            | Step::Workdir { description, .. } => description,
        }
    }
}

/// A port protocol of EXPOSE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

/// The runtime config of an image, as Docker keeps it: the base image's, changed by the
/// Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// ENV only (ARGs are not kept), in Docker's order.
    pub env: Vec<(String, String)>,
    /// Absolute; `/` when nothing set it.
    pub workdir: String,
    pub user: Option<String>,
    /// Shell forms are stored as `["/bin/sh", "-c", text]`, as Docker does.
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// Sorted and without duplicates.
    pub exposed_ports: Vec<(u16, Proto)>,
    pub labels: BTreeMap<String, String>,
}

impl Default for ImageConfig {
    /// An image with nothing set (Docker adds [`DEFAULT_PATH`] when planning on it).
    fn default() -> Self {
        ImageConfig {
            env: Vec::new(),
            workdir: "/".to_string(),
            user: None,
            entrypoint: None,
            cmd: None,
            exposed_ports: Vec::new(),
            labels: BTreeMap::new(),
        }
    }
}

impl ImageConfig {
    /// The process a container of this image runs: the entrypoint followed by the cmd,
    /// as Docker starts it. `None` when both are unset or empty.
    ///
    /// This gives Docker's ENTRYPOINT/CMD table:
    /// - CMD only: the CMD (a shell-form CMD is `/bin/sh -c text`).
    /// - exec ENTRYPOINT: the ENTRYPOINT with the CMD as extra arguments.
    /// - shell-form ENTRYPOINT: `/bin/sh -c text` followed by the CMD's words, which `sh`
    ///   only sees as `$0 $1 ...`, so the CMD has no effect unless the text uses them.
    /// - An ENTRYPOINT in the Dockerfile drops a CMD inherited from the base image (see
    ///   [`plan`]); a CMD given in the Dockerfile, before or after it, is kept.
    pub fn process_argv(&self) -> Option<Vec<String>> {
        let mut argv: Vec<String> = self.entrypoint.clone().unwrap_or_default();
        argv.extend(self.cmd.iter().flatten().cloned());
        if argv.is_empty() {
            None
        } else {
            Some(argv)
        }
    }
}

/// Plans `df` on a base image with no config (so PATH is [`DEFAULT_PATH`], the workdir `/`,
/// the user root, and no entrypoint or cmd). `build_args` set declared ARGs only.
pub fn plan(
    df: &Dockerfile,
    build_args: &BTreeMap<String, String>,
) -> Result<BuildPlan, ParseError> {
    plan_on_base(df, build_args, &ImageConfig::default())
}

/// Plans `df` on a base image whose config is `base`: its env is visible to substitution
/// and to RUN, its workdir, user, entrypoint, cmd, ports and labels are inherited, as
/// Docker does. PATH is set to [`DEFAULT_PATH`] if `base` has none.
pub fn plan_on_base(
    df: &Dockerfile,
    build_args: &BTreeMap<String, String>,
    base: &ImageConfig,
) -> Result<BuildPlan, ParseError> {
    let mut planner = Planner::new(df.escape, build_args);
    for inst in &df.instructions {
        planner.instruction(inst, base)?;
    }
    planner.finish()
}

struct Planner<'a> {
    escape: char,
    build_args: &'a BTreeMap<String, String>,
    /// ARGs in scope before FROM (with the predefined ones).
    global_args: EnvList,
    declared: BTreeSet<String>,
    from: Option<(String, Option<String>)>,
    stage: Option<Stage>,
    last_line: usize,
}

/// The state of the one build stage (Docker's dispatch state).
struct Stage {
    /// What substitution and RUN see: the image env plus ENV plus ARGs in scope.
    env: EnvList,
    /// The image config's env: the image env plus ENV.
    config_env: EnvList,
    config: ImageConfig,
    /// Whether a CMD in this Dockerfile set the cmd (an ENTRYPOINT then keeps it).
    cmd_set: bool,
    exposed: BTreeSet<(u16, Proto)>,
    steps: Vec<Step>,
}

impl<'a> Planner<'a> {
    fn new(escape: char, build_args: &'a BTreeMap<String, String>) -> Planner<'a> {
        let mut global_args = EnvList::default();
        for (k, v) in PREDEFINED_ARGS {
            global_args.set(k, v);
        }
        Planner {
            escape,
            build_args,
            global_args,
            declared: BTreeSet::new(),
            from: None,
            stage: None,
            last_line: 1,
        }
    }

    fn expand(&self, word: &str, env: &EnvList, inst: &Instruction) -> Result<String, ParseError> {
        process_word(word, self.escape, env).map_err(|e| lex_error(inst, e))
    }

    fn instruction(&mut self, inst: &Instruction, base: &ImageConfig) -> Result<(), ParseError> {
        self.last_line = inst.line;
        if self.stage.is_none() {
            return self.before_stage(inst, base);
        }
        match &inst.kind {
            InstructionKind::Arg(decls) => {
                for decl in decls {
                    self.declared.insert(decl.name.clone());
                    let value = match (self.build_args.get(&decl.name), &decl.default) {
                        (Some(v), _) => Some(v.clone()),
                        (None, Some(default)) => {
                            Some(self.expand(default, &self.stage_ref().env, inst)?)
                        }
                        (None, None) => self.global_args.get(&decl.name).map(str::to_string),
                    };
                    if let Some(value) = value {
                        self.stage_mut().env.set(&decl.name, &value);
                    }
                }
            }
            InstructionKind::Env(pairs) => {
                let expanded = self.expand_pairs(pairs, inst)?;
                let stage = self.stage_mut();
                for (k, v) in expanded {
                    stage.env.set(&k, &v);
                    stage.config_env.set(&k, &v);
                }
            }
            InstructionKind::Label(pairs) => {
                let expanded = self.expand_pairs(pairs, inst)?;
                self.stage_mut().config.labels.extend(expanded);
            }
            InstructionKind::Run(command) => {
                let stage = self.stage_mut();
                let step = Step::Run {
                    line: inst.line,
                    description: describe(&inst.text),
                    argv_or_shell: command.clone(),
                    env: stage.env.pairs().to_vec(),
                    workdir: stage.config.workdir.clone(),
                    user: stage.config.user.clone(),
                };
                stage.steps.push(step);
            }
            InstructionKind::Cmd(command) => {
                let stage = self.stage_mut();
                stage.config.cmd = Some(command.argv());
                stage.cmd_set = true;
            }
            InstructionKind::Entrypoint(command) => {
                let stage = self.stage_mut();
                stage.config.entrypoint = match command {
                    Command::Exec(argv) if argv.is_empty() => None,
                    other => Some(other.argv()),
                };
                if !stage.cmd_set {
                    stage.config.cmd = None;
                }
            }
            InstructionKind::Copy(args) => self.copy(inst, args, false)?,
            InstructionKind::Add(args) => self.copy(inst, args, true)?,
            InstructionKind::Workdir(path) => {
                let path = self.expand(path, &self.stage_ref().env, inst)?;
                let stage = self.stage_mut();
                let workdir = normalize_workdir(&stage.config.workdir, &path);
                stage.config.workdir = workdir.clone();
                if workdir != "/" {
                    let step = Step::Workdir {
                        line: inst.line,
                        description: describe(&inst.text),
                        path: workdir,
                        user: stage.config.user.clone(),
                    };
                    stage.steps.push(step);
                }
            }
            InstructionKind::User(user) => {
                let user = self.expand(user, &self.stage_ref().env, inst)?;
                self.stage_mut().config.user = (!user.is_empty()).then_some(user);
            }
            InstructionKind::Expose(ports) => {
                for raw in ports {
                    let words = process_words(raw, self.escape, &self.stage_ref().env)
                        .map_err(|e| lex_error(inst, e))?;
                    for word in words {
                        let parsed = parse_port(&word).map_err(|message| ParseError {
                            line: inst.line,
                            message: format!("EXPOSE {word}: {message}"),
                        })?;
                        let exposed = &mut self.stage_mut().exposed;
                        exposed.extend(parsed);
                        if exposed.len() > MAX_EXPOSED_PORTS {
                            return Err(ParseError {
                                line: inst.line,
                                message: format!(
                                    "EXPOSE declares more than {MAX_EXPOSED_PORTS} ports"
                                ),
                            });
                        }
                    }
                }
            }
            InstructionKind::From { .. } => {
                return Err(ParseError {
                    line: inst.line,
                    message: "a second FROM is not supported by Hearth's builder (multi-stage builds are not supported)".into(),
                })
            }
        }
        Ok(())
    }

    fn before_stage(&mut self, inst: &Instruction, base: &ImageConfig) -> Result<(), ParseError> {
        match &inst.kind {
            InstructionKind::Arg(decls) => {
                for decl in decls {
                    self.declared.insert(decl.name.clone());
                    let value = match (self.build_args.get(&decl.name), &decl.default) {
                        (Some(v), _) => Some(v.clone()),
                        (None, Some(default)) => {
                            Some(self.expand(default, &self.global_args, inst)?)
                        }
                        (None, None) => None,
                    };
                    if let Some(value) = value {
                        self.global_args.set(&decl.name, &value);
                    }
                }
                Ok(())
            }
            InstructionKind::From { image, stage_name } => {
                let image = self.expand(image, &self.global_args, inst)?;
                if image.is_empty() {
                    return Err(ParseError {
                        line: inst.line,
                        message: "FROM: the image name is empty after substitution".into(),
                    });
                }
                self.from = Some((image, stage_name.clone()));
                self.stage = Some(Stage::new(base));
                Ok(())
            }
            _ => Err(ParseError {
                line: inst.line,
                message: "a Dockerfile must start with FROM (only ARG may come before it)".into(),
            }),
        }
    }

    fn stage_ref(&self) -> &Stage {
        self.stage.as_ref().expect("called after FROM")
    }

    fn stage_mut(&mut self) -> &mut Stage {
        self.stage.as_mut().expect("called after FROM")
    }

    /// Substitutes names and values of ENV or LABEL, all against the env before the
    /// instruction (as Docker does: `ENV A=1 B=$A` gives B the old A).
    fn expand_pairs(
        &self,
        pairs: &[(String, String)],
        inst: &Instruction,
    ) -> Result<Vec<(String, String)>, ParseError> {
        let env = &self.stage_ref().env;
        let mut out = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            let key = self.expand(k, env, inst)?;
            let value = self.expand(v, env, inst)?;
            let keyword = keyword(inst);
            if key.is_empty() {
                return Err(ParseError {
                    line: inst.line,
                    message: format!("{keyword}: a name is empty after substitution"),
                });
            }
            if keyword == "ENV" && key.contains('=') {
                return Err(ParseError {
                    line: inst.line,
                    message: format!("ENV: the name {key:?} contains '='"),
                });
            }
            out.push((key, value));
        }
        Ok(out)
    }

    fn copy(
        &mut self,
        inst: &Instruction,
        args: &CopyArgs,
        is_add: bool,
    ) -> Result<(), ParseError> {
        let keyword = if is_add { "ADD" } else { "COPY" };
        let fail = |message: String| ParseError {
            line: inst.line,
            message,
        };
        let env = &self.stage_ref().env;
        let mut sources = Vec::with_capacity(args.sources.len());
        for raw in &args.sources {
            let src = self.expand(raw, env, inst)?;
            if src.is_empty() {
                return Err(fail(format!(
                    "{keyword}: a source is empty after substitution"
                )));
            }
            let lower = src.to_ascii_lowercase();
            if lower.contains("://") || lower.starts_with("git@") {
                return Err(fail(if is_add {
                    format!("ADD from a URL or git repository is not supported by Hearth's builder ({src}); download it in a RUN step")
                } else {
                    format!("COPY: source can't be a URL ({src})")
                }));
            }
            let Some(normalized) = normalize_source(&src) else {
                return Err(fail(format!(
                    "{keyword}: source {src} is outside the build context"
                )));
            };
            if is_add && is_archive_name(&normalized) {
                return Err(fail(format!("{ADD_ARCHIVE_REFUSED} ({src})")));
            }
            sources.push(src);
        }
        let dest = self.expand(&args.dest, env, inst)?;
        let chown = match &args.chown {
            Some(raw) => Some(self.expand(raw, env, inst)?).filter(|c| !c.is_empty()),
            None => None,
        };
        let chmod = match &args.chmod {
            Some(raw) => {
                let text = self.expand(raw, env, inst)?;
                if text.is_empty() {
                    None
                } else {
                    Some(parse_chmod(&text).map_err(|m| fail(format!("{keyword}: {m}")))?)
                }
            }
            None => None,
        };
        let stage = self.stage_mut();
        let dest = resolve_dest(&stage.config.workdir, &dest);
        if sources.len() > 1 && !dest.ends_with('/') {
            return Err(fail(format!(
                "When using {keyword} with more than one source file, the destination must be a directory and end with a / (got {dest})"
            )));
        }
        stage.steps.push(Step::Copy {
            line: inst.line,
            description: describe(&inst.text),
            sources,
            dest,
            chown,
            chmod,
            is_add,
        });
        Ok(())
    }

    fn finish(self) -> Result<BuildPlan, ParseError> {
        let (Some((from, stage_name)), Some(stage)) = (self.from, self.stage) else {
            return Err(ParseError {
                line: self.last_line,
                message: "the Dockerfile has no FROM instruction".into(),
            });
        };
        let unused_build_args = self
            .build_args
            .keys()
            .filter(|k| !self.declared.contains(*k))
            .cloned()
            .collect();
        let mut config = stage.config;
        config.env = stage.config_env.pairs().to_vec();
        config.exposed_ports = stage.exposed.into_iter().collect();
        Ok(BuildPlan {
            from,
            stage_name,
            steps: stage.steps,
            config,
            unused_build_args,
        })
    }
}

impl Stage {
    fn new(base: &ImageConfig) -> Stage {
        let mut config_env = EnvList::from_pairs(&base.env);
        if !config_env.contains("PATH") {
            config_env.set("PATH", DEFAULT_PATH);
        }
        let mut config = base.clone();
        config.workdir = normalize_workdir("/", &base.workdir);
        config.user = base.user.clone().filter(|u| !u.is_empty());
        Stage {
            env: config_env.clone(),
            exposed: base.exposed_ports.iter().copied().collect(),
            config_env,
            config,
            cmd_set: false,
            steps: Vec::new(),
        }
    }
}

fn keyword(inst: &Instruction) -> &str {
    inst.text.split(' ').next().unwrap_or_default()
}

fn lex_error(inst: &Instruction, e: LexError) -> ParseError {
    ParseError {
        line: inst.line,
        message: format!("{}: {e}", keyword(inst)),
    }
}

/// `text` cut to [`DESCRIPTION_MAX_CHARS`] characters (ending with `…` when cut).
fn describe(text: &str) -> String {
    if text.chars().count() <= DESCRIPTION_MAX_CHARS {
        return text.to_string();
    }
    let mut out: String = text.chars().take(DESCRIPTION_MAX_CHARS - 1).collect();
    out.push('…');
    out
}

/// Docker's WORKDIR rule: relative paths are joined to the current one; empty keeps it.
fn normalize_workdir(current: &str, path: &str) -> String {
    if path.is_empty() {
        return clean_path(&format!("/{current}"));
    }
    if path.starts_with('/') {
        clean_path(path)
    } else {
        clean_path(&format!("/{current}/{path}"))
    }
}

/// Docker's COPY destination rule: relative to WORKDIR, `.` is the WORKDIR itself as a
/// directory, and a trailing `/` (or `/.`) marks a directory.
fn resolve_dest(workdir: &str, dest: &str) -> String {
    let dest = if dest.is_empty() || dest == "." {
        "./"
    } else {
        dest
    };
    let mut out = normalize_workdir(workdir, dest);
    let is_dir = dest.ends_with('/') || dest.ends_with("/.");
    if is_dir && !out.ends_with('/') {
        out.push('/');
    }
    out
}

/// Octal `--chmod`, at most 0o7777. Symbolic modes (`u+x`) are refused.
fn parse_chmod(text: &str) -> Result<u32, String> {
    let non_octal = || {
        format!(
            "invalid chmod parameter: '{text}'. it should be octal string and between 0 and 07777"
        )
    };
    if text.bytes().all(|b| b.is_ascii_digit()) {
        let mode = u32::from_str_radix(text, 8).map_err(|_| non_octal())?;
        if mode > 0o7777 {
            return Err(non_octal());
        }
        return Ok(mode);
    }
    Err(format!(
        "symbolic --chmod modes such as '{text}' are not supported by Hearth's builder; use an octal mode such as 0755"
    ))
}

/// `port`, `port/proto` or `start-end[/proto]`; proto tcp (default), udp or sctp.
fn parse_port(spec: &str) -> Result<Vec<(u16, Proto)>, String> {
    if spec.contains(':') {
        return Err(
            "a host address or host port is not supported; EXPOSE takes a container port such as 8080 or 8080/tcp".into(),
        );
    }
    let (ports, proto) = spec.split_once('/').unwrap_or((spec, ""));
    if ports.is_empty() {
        return Err("no port specified".into());
    }
    let proto = match proto.to_ascii_lowercase().as_str() {
        "" | "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        "sctp" => Proto::Sctp,
        other => return Err(format!("invalid proto: {other}")),
    };
    let number = |s: &str| {
        s.parse::<u16>()
            .map_err(|_| format!("invalid port number '{s}' (0-65535)"))
    };
    let (start, end) = match ports.split_once('-') {
        Some((a, b)) if a != b => (number(a)?, number(b)?),
        Some((a, _)) => (number(a)?, number(a)?),
        None => (number(ports)?, number(ports)?),
    };
    if end < start {
        return Err(format!("invalid port range: {ports}"));
    }
    Ok((start..=end).map(|p| (p, proto)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    fn plan_of(text: &str) -> BuildPlan {
        plan(&parse(text).unwrap(), &BTreeMap::new()).unwrap()
    }

    fn plan_err(text: &str) -> ParseError {
        plan(&parse(text).unwrap(), &BTreeMap::new()).unwrap_err()
    }

    fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn env_of(step: &Step) -> BTreeMap<String, String> {
        match step {
            Step::Run { env, .. } => env.iter().cloned().collect(),
            other => panic!("not a RUN: {other:?}"),
        }
    }

    #[test]
    fn clean_path_matches_go() {
        for (input, want) in [
            ("/a/b/../c/./d/", "/a/c/d"),
            ("/../x", "/x"),
            ("a/../../b", "../b"),
            ("", "."),
            ("/", "/"),
            ("./", "."),
            ("a//b", "a/b"),
        ] {
            assert_eq!(clean_path(input), want, "{input}");
        }
    }

    #[test]
    fn workdir_is_relative_to_the_previous_one_and_creates_steps() {
        let p = plan_of("FROM x\nWORKDIR /app\nWORKDIR src\nWORKDIR ../lib/\nWORKDIR /\n");
        assert_eq!(p.config.workdir, "/");
        let paths: Vec<_> = p
            .steps
            .iter()
            .map(|s| match s {
                Step::Workdir { path, .. } => path.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(paths, vec!["/app", "/app/src", "/app/lib"]);
    }

    #[test]
    fn copy_dest_resolves_against_workdir_and_keeps_the_trailing_slash() {
        let p = plan_of(
            "FROM x\nWORKDIR /app\nCOPY a .\nCOPY a ./\nCOPY a b\nCOPY a sub/\nCOPY a /abs/./x/.\nCOPY a /\n",
        );
        let dests: Vec<_> = p
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Copy { dest, .. } => Some(dest.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            dests,
            vec!["/app/", "/app/", "/app/b", "/app/sub/", "/abs/x/", "/"]
        );
    }

    #[test]
    fn copy_flags_are_substituted_and_chmod_is_octal() {
        let p = plan_of("FROM x\nARG U=app\nCOPY --chown=$U:$U --chmod=750 a /d/\n");
        match &p.steps[0] {
            Step::Copy { chown, chmod, .. } => {
                assert_eq!(chown.as_deref(), Some("app:app"));
                assert_eq!(*chmod, Some(0o750));
            }
            other => panic!("{other:?}"),
        }
        assert!(plan_err("FROM x\nCOPY --chmod=8 a b\n")
            .message
            .contains("octal"));
        assert!(plan_err("FROM x\nCOPY --chmod=17777 a b\n")
            .message
            .contains("octal"));
        assert!(plan_err("FROM x\nCOPY --chmod=u+x a b\n")
            .message
            .contains("symbolic"));
    }

    #[test]
    fn multiple_sources_need_a_directory_destination() {
        let e = plan_err("FROM x\nCOPY a b /app\n");
        assert_eq!(e.line, 2);
        assert!(
            e.message.contains("must be a directory and end with a /"),
            "{e}"
        );
        plan_of("FROM x\nCOPY a b /app/\nWORKDIR /w\nCOPY a b .\n");
    }

    #[test]
    fn copy_sources_outside_the_context_or_urls_are_refused() {
        let e = plan_err("FROM x\n\nCOPY ../secret /s\n");
        assert_eq!(e.line, 3);
        assert!(e.message.contains("outside the build context"), "{e}");
        assert!(plan_err("FROM x\nCOPY a/../../b /s\n")
            .message
            .contains("outside"));
        assert!(plan_err("FROM x\nCOPY https://example.com/f /f\n")
            .message
            .contains("URL"));
        let e = plan_err("FROM x\nADD https://example.com/f.tgz /f\n");
        assert!(e.message.starts_with("ADD from a URL"), "{e}");
        assert!(plan_err("FROM x\nADD git@github.com:a/b.git /src\n")
            .message
            .contains("git"));
    }

    #[test]
    fn add_of_an_archive_name_is_refused_and_other_adds_are_copies() {
        let e = plan_err("FROM x\nADD app.tar.gz /opt/\n");
        assert!(
            e.message
                .starts_with("ADD of an archive is not supported, use COPY and RUN tar"),
            "{e}"
        );
        let p = plan_of("FROM x\nADD --chown=1000 conf.yaml /etc/app/\n");
        match &p.steps[0] {
            Step::Copy { is_add, chown, .. } => {
                assert!(*is_add);
                assert_eq!(chown.as_deref(), Some("1000"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn run_is_not_substituted_but_sees_env_and_args() {
        let p = plan_with_args(
            "ARG GLOBAL=g\nFROM x\nARG VERSION=1.0\nENV HOME_DIR=/home/app\nRUN echo $VERSION $HOME_DIR\n",
            &[],
        );
        match &p.steps[0] {
            Step::Run { argv_or_shell, .. } => assert_eq!(
                argv_or_shell.argv(),
                vec!["/bin/sh", "-c", "echo $VERSION $HOME_DIR"]
            ),
            other => panic!("{other:?}"),
        }
        let env = env_of(&p.steps[0]);
        assert_eq!(env["VERSION"], "1.0");
        assert_eq!(env["HOME_DIR"], "/home/app");
        assert_eq!(env["PATH"], DEFAULT_PATH);
        // An ARG before FROM is not in the stage unless declared again.
        assert!(!env.contains_key("GLOBAL"));
        // ARGs are not kept in the image.
        assert!(p.config.env.iter().all(|(k, _)| k != "VERSION"));
    }

    fn plan_with_args(text: &str, build_args: &[(&str, &str)]) -> BuildPlan {
        plan(&parse(text).unwrap(), &args(build_args)).unwrap()
    }

    #[test]
    fn build_args_set_declared_args_only() {
        let p = plan_with_args(
            "FROM x\nARG A=default\nARG B\nRUN env\n",
            &[("A", "given"), ("B", "b"), ("C", "undeclared")],
        );
        let env = env_of(&p.steps[0]);
        assert_eq!(env["A"], "given");
        assert_eq!(env["B"], "b");
        assert!(!env.contains_key("C"));
        assert_eq!(p.unused_build_args, vec!["C"]);
    }

    #[test]
    fn build_arg_values_are_not_substituted() {
        let p = plan_with_args("FROM x\nARG A\nENV B=$A\n", &[("A", "$HOME")]);
        assert!(p.config.env.contains(&("B".into(), "$HOME".into())));
    }

    #[test]
    fn args_before_from_expand_in_from_and_reach_the_stage_when_redeclared() {
        let p = plan_with_args(
            "ARG PY=3.11\nARG BASE=python:${PY}-slim\nFROM $BASE AS app\nARG PY\nARG BASE\nENV V=$PY\n",
            &[("PY", "3.12")],
        );
        assert_eq!(p.from, "python:3.12-slim");
        assert_eq!(p.stage_name.as_deref(), Some("app"));
        assert!(p.config.env.contains(&("V".into(), "3.12".into())));
        let p = plan_of("ARG TAG=1\nFROM img:$TAG\nENV T=x${TAG}x\n");
        assert_eq!(p.from, "img:1");
        assert!(p.config.env.contains(&("T".into(), "xx".into())));
    }

    #[test]
    fn predefined_platform_args_need_a_declaration_in_the_stage() {
        let p = plan_of("FROM x\nENV A=${TARGETARCH}\nARG TARGETARCH\nENV B=$TARGETARCH\n");
        assert!(p.config.env.contains(&("A".into(), "".into())));
        assert!(p.config.env.contains(&("B".into(), "amd64".into())));
    }

    #[test]
    fn from_substitutes_only_args_before_it() {
        let e = plan_err("FROM $NOPE\n");
        assert_eq!(e.line, 1);
        assert!(e.message.contains("empty"), "{e}");
    }

    #[test]
    fn env_in_one_instruction_sees_the_values_before_it() {
        let p = plan_of("FROM x\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\n");
        let env: BTreeMap<_, _> = p.config.env.iter().cloned().collect();
        assert_eq!(env["def"], "hello");
        assert_eq!(env["ghi"], "bye");
    }

    #[test]
    fn env_and_arg_later_setting_wins_for_run() {
        let p = plan_with_args(
            "FROM x\nARG V\nENV V=env\nRUN a\nARG V\nRUN b\n",
            &[("V", "arg")],
        );
        assert_eq!(env_of(&p.steps[0])["V"], "env");
        assert_eq!(env_of(&p.steps[1])["V"], "arg");
        // The image keeps the ENV value.
        assert!(p.config.env.contains(&("V".into(), "env".into())));
    }

    #[test]
    fn env_prepending_path_uses_the_base_path() {
        let p = plan_of("FROM x\nENV PATH=\"/opt/venv/bin:$PATH\"\n");
        let env: BTreeMap<_, _> = p.config.env.iter().cloned().collect();
        assert_eq!(env["PATH"], format!("/opt/venv/bin:{DEFAULT_PATH}"));
        assert_eq!(p.config.env.len(), 1);
    }

    #[test]
    fn base_config_is_inherited() {
        let base = ImageConfig {
            env: vec![
                ("PATH".into(), "/base/bin".into()),
                ("LANG".into(), "C.UTF-8".into()),
            ],
            workdir: "/srv".into(),
            user: Some("nobody".into()),
            entrypoint: None,
            cmd: Some(vec!["bash".into()]),
            exposed_ports: vec![(22, Proto::Tcp)],
            labels: [("vendor".to_string(), "hearth".to_string())].into(),
        };
        let df = parse("FROM x\nENV PATH=/app/bin:$PATH\nCOPY a b\nRUN id\nEXPOSE 80\n").unwrap();
        let p = plan_on_base(&df, &BTreeMap::new(), &base).unwrap();
        assert_eq!(
            p.config.env,
            vec![
                ("PATH".to_string(), "/app/bin:/base/bin".to_string()),
                ("LANG".to_string(), "C.UTF-8".to_string())
            ]
        );
        assert_eq!(p.config.workdir, "/srv");
        assert_eq!(p.config.cmd, Some(vec!["bash".to_string()]));
        assert_eq!(
            p.config.exposed_ports,
            vec![(22, Proto::Tcp), (80, Proto::Tcp)]
        );
        assert_eq!(p.config.labels["vendor"], "hearth");
        match &p.steps[0] {
            Step::Copy { dest, .. } => assert_eq!(dest, "/srv/b"),
            other => panic!("{other:?}"),
        }
        match &p.steps[1] {
            Step::Run { user, workdir, .. } => {
                assert_eq!(user.as_deref(), Some("nobody"));
                assert_eq!(workdir, "/srv");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn user_and_workdir_are_substituted_and_apply_to_later_steps() {
        let p = plan_of("FROM x\nENV U=app D=/home/app\nUSER $U:$U\nWORKDIR ${D}\nRUN id\n");
        assert_eq!(p.config.user.as_deref(), Some("app:app"));
        match &p.steps[0] {
            Step::Workdir { path, user, .. } => {
                assert_eq!(path, "/home/app");
                assert_eq!(user.as_deref(), Some("app:app"));
            }
            other => panic!("{other:?}"),
        }
        match &p.steps[1] {
            Step::Run { user, workdir, .. } => {
                assert_eq!(user.as_deref(), Some("app:app"));
                assert_eq!(workdir, "/home/app");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn labels_accept_quotes_and_several_pairs() {
        let p = plan_of(
            "FROM x\nENV V=2\nLABEL org.opencontainers.image.title=\"My App\" version=$V \"quoted key\"='x y'\nLABEL single value here\n",
        );
        assert_eq!(p.config.labels["org.opencontainers.image.title"], "My App");
        assert_eq!(p.config.labels["version"], "2");
        assert_eq!(p.config.labels["quoted key"], "x y");
        assert_eq!(p.config.labels["single"], "value here");
    }

    #[test]
    fn expose_forms_ranges_and_substitution() {
        let p =
            plan_of("FROM x\nENV P=9000\nEXPOSE 8080 53/udp 8080/TCP $P 7000-7002/tcp 5000/sctp\n");
        assert_eq!(
            p.config.exposed_ports,
            vec![
                (53, Proto::Udp),
                (5000, Proto::Sctp),
                (7000, Proto::Tcp),
                (7001, Proto::Tcp),
                (7002, Proto::Tcp),
                (8080, Proto::Tcp),
                (9000, Proto::Tcp),
            ]
        );
        for bad in ["80/http", "70000", "9-1", "127.0.0.1:80:80", "x", "/tcp"] {
            let e = plan_err(&format!("FROM x\nEXPOSE {bad}\n"));
            assert_eq!(e.line, 2, "{bad}");
            assert!(e.message.starts_with(&format!("EXPOSE {bad}")), "{e}");
        }
        assert!(plan_err("FROM x\nEXPOSE 1-65535\n")
            .message
            .contains("more than"));
    }

    #[test]
    fn substitution_errors_name_the_line_and_instruction() {
        let e = plan_err("FROM x\nRUN ok\nWORKDIR ${oops\n");
        assert_eq!(e.line, 3);
        assert!(e.message.starts_with("WORKDIR: failed to process"), "{e}");
    }

    #[test]
    fn descriptions_are_the_instruction_cut_to_100_chars() {
        let long = "x".repeat(300);
        let p = plan_of(&format!(
            "FROM x\nRUN pip install -r requirements.txt\nRUN echo {long}\n"
        ));
        assert_eq!(
            p.steps[0].description(),
            "RUN pip install -r requirements.txt"
        );
        assert_eq!(p.steps[1].description().chars().count(), 100);
        assert!(p.steps[1].description().ends_with('…'));
        assert_eq!(p.steps[1].line(), 3);
    }

    fn process(text: &str, base: &ImageConfig) -> Option<Vec<String>> {
        let df = parse(text).unwrap();
        plan_on_base(&df, &BTreeMap::new(), base)
            .unwrap()
            .config
            .process_argv()
    }

    fn strings(v: &[&str]) -> Option<Vec<String>> {
        Some(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn entrypoint_and_cmd_table() {
        let none = ImageConfig::default();
        assert_eq!(process("FROM x\n", &none), None);
        assert_eq!(
            process("FROM x\nCMD [\"a\",\"b\"]\n", &none),
            strings(&["a", "b"])
        );
        assert_eq!(
            process("FROM x\nCMD a b\n", &none),
            strings(&["/bin/sh", "-c", "a b"])
        );
        assert_eq!(
            process("FROM x\nENTRYPOINT [\"e\",\"1\"]\n", &none),
            strings(&["e", "1"])
        );
        assert_eq!(
            process("FROM x\nENTRYPOINT [\"e\"]\nCMD [\"c\"]\n", &none),
            strings(&["e", "c"])
        );
        assert_eq!(
            process("FROM x\nENTRYPOINT [\"e\"]\nCMD c d\n", &none),
            strings(&["e", "/bin/sh", "-c", "c d"])
        );
        // Shell-form ENTRYPOINT: the CMD's words only reach sh as $0...
        assert_eq!(
            process("FROM x\nENTRYPOINT e 1\n", &none),
            strings(&["/bin/sh", "-c", "e 1"])
        );
        assert_eq!(
            process("FROM x\nENTRYPOINT e 1\nCMD [\"c\"]\n", &none),
            strings(&["/bin/sh", "-c", "e 1", "c"])
        );
        // The last one of each wins.
        assert_eq!(
            process("FROM x\nCMD [\"a\"]\nCMD [\"b\"]\n", &none),
            strings(&["b"])
        );
    }

    #[test]
    fn entrypoint_drops_an_inherited_cmd_but_keeps_one_from_the_dockerfile() {
        let base = ImageConfig {
            cmd: Some(vec!["bash".into()]),
            ..ImageConfig::default()
        };
        assert_eq!(process("FROM x\n", &base), strings(&["bash"]));
        assert_eq!(
            process("FROM x\nENTRYPOINT [\"e\"]\n", &base),
            strings(&["e"])
        );
        assert_eq!(
            process("FROM x\nCMD [\"c\"]\nENTRYPOINT [\"e\"]\n", &base),
            strings(&["e", "c"])
        );
        assert_eq!(
            process("FROM x\nENTRYPOINT [\"e\"]\nCMD [\"c\"]\n", &base),
            strings(&["e", "c"])
        );
        let base = ImageConfig {
            entrypoint: Some(vec!["/entry.sh".into()]),
            cmd: Some(vec!["serve".into()]),
            ..ImageConfig::default()
        };
        assert_eq!(
            process("FROM x\nCMD [\"worker\"]\n", &base),
            strings(&["/entry.sh", "worker"])
        );
        // ENTRYPOINT [] clears the entrypoint (and, not set here, the inherited CMD).
        assert_eq!(process("FROM x\nENTRYPOINT []\n", &base), None);
        assert_eq!(
            process("FROM x\nENTRYPOINT []\nCMD [\"x\"]\n", &base),
            strings(&["x"])
        );
        // CMD [] sets an empty CMD.
        assert_eq!(process("FROM x\nCMD []\n", &base), strings(&["/entry.sh"]));
    }
}

//! Dockerfiles for Hearth's image builder: parsing, build planning, COPY source resolution
//! and `.dockerignore`, all pure (no I/O). The builder calls these on its own task: it
//! [`parse`]s the Dockerfile of an artifact, [`plan`]s it, then runs the [`Step`]s inside
//! the builder microVM, resolving each COPY with [`resolve_copy`] against the context
//! listing filtered by [`parse_dockerignore`].
//!
//! # Dockerfiles in Hearth
//!
//! Hearth runs your Dockerfile the way Docker (BuildKit) does, on a Hearth base image,
//! inside a builder microVM. There is no Docker daemon, so a few Dockerfile features are
//! refused; the build then fails before anything runs, with the line of the instruction,
//! for example `line 7: VOLUME is not supported by Hearth's builder`.
//!
//! ## Instructions
//!
//! | Instruction | Supported forms |
//! |---|---|
//! | `FROM` | `FROM image[:tag]`, `FROM image AS name`. Exactly one FROM. |
//! | `ARG` | `ARG name`, `ARG name=default`, several per line; before FROM (usable in FROM) and after it. |
//! | `RUN` | shell form (`/bin/sh -c`) and exec form (`["cmd", "arg"]`). |
//! | `COPY` | files, directories, globs; `--chown=user[:group]`, `--chmod=<octal>`, `--link` (accepted, no effect); JSON form for paths with spaces. |
//! | `ADD` | as COPY, for local files that are not archives. |
//! | `WORKDIR` | absolute or relative to the previous WORKDIR; created if missing. |
//! | `ENV` | `ENV name value` and `ENV name=value name2="value 2" ...`. |
//! | `USER` | `user`, `user:group`, names or numeric ids. |
//! | `EXPOSE` | `8080`, `8080/tcp`, `53/udp`, `5000/sctp`, ranges such as `8000-8010` (at most 4096 ports in all). |
//! | `CMD`, `ENTRYPOINT` | shell and exec forms, combined as Docker does. |
//! | `LABEL` | `LABEL key=value "other key"="other value" ...`. |
//!
//! ## Refused
//!
//! - Instructions: `ONBUILD`, `HEALTHCHECK`, `STOPSIGNAL`, `SHELL`, `VOLUME`, `MAINTAINER`
//!   (use `LABEL maintainer="..."`), and any unknown keyword.
//! - A second `FROM`: multi-stage builds, and so `COPY --from`.
//! - Any instruction other than `ARG` before `FROM`.
//! - `FROM --platform` (guests are linux/amd64).
//! - `RUN --mount`, `--network`, `--security`, `--device`.
//! - Heredocs (`RUN <<EOF`, `COPY <<EOF /file`).
//! - `COPY --parents`, `--exclude`; `ADD --checksum`, `--keep-git-dir`, `--unpack`,
//!   `--exclude`.
//! - `ADD` from a URL or a git repository: download it in a `RUN` step instead.
//! - `ADD` of an archive (a tar file, or a gzip, bzip2, xz or zstd file, recognised by its
//!   name when planning and by its content when copying): Docker would unpack it, Hearth
//!   refuses with "ADD of an archive is not supported, use COPY and RUN tar". `COPY` it and
//!   unpack it with `RUN tar -xf ...` (COPY of a compressed file that is not a tar archive
//!   is exactly what Docker's ADD does with it).
//! - `--chmod` in symbolic form (`u+x`): use octal (`0755`).
//! - A COPY/ADD source outside the build context (`../x`); Docker silently treats a
//!   leading `..` as the context root, Hearth refuses it.
//! - Flags an instruction does not know (`unknown flag for COPY: --foo`).
//!
//! ## Syntax
//!
//! - Parser directives on the first lines: `# escape=\` or `` # escape=` `` (the backtick
//!   then escapes and continues lines, and `\` is an ordinary character);
//!   `# syntax=...` and `# check=...` are accepted and ignored. Directives end at the first
//!   line that is not one (a comment, a blank line or an instruction).
//! - Comments are lines starting with `#` (after blanks); blank lines are ignored.
//! - An escape character at the end of a line (followed only by blanks) continues the
//!   instruction on the next line; comment lines and empty lines inside a continuation
//!   are skipped, as Docker does. Errors name the instruction's first line.
//! - Keywords are case-insensitive (`run` is `RUN`).
//! - Exec form is a JSON array of strings with JSON escapes (`["echo", "a\"b"]`); text
//!   that is not valid JSON is the shell form, as in Docker; a JSON array with anything
//!   but strings is an error.
//!
//! ## Variables
//!
//! `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:+alt}`, `${VAR+alt}`,
//! `${VAR:?message}`, `${VAR?message}`, `${VAR#pattern}`, `${VAR##pattern}`,
//! `${VAR%pattern}`, `${VAR%%pattern}`, `${VAR/pattern/repl}` and `${VAR//pattern/repl}`
//! are substituted, with quotes and escapes (`\$VAR` stays literal, single quotes keep
//! their content), in the instructions Docker substitutes: `ADD`, `COPY` (including
//! `--chown`/`--chmod`), `ENV`, `EXPOSE`, `LABEL`, `USER`, `WORKDIR`, ARG defaults, and
//! `FROM` (with the ARGs declared before it only). `RUN`, `CMD` and `ENTRYPOINT` are not
//! substituted: the shell expands them when they run.
//!
//! Scoping follows Docker: ARGs before FROM are visible to FROM only, unless declared
//! again after FROM (`ARG NAME` without a value then takes the earlier value). ARGs after
//! FROM are visible to later instructions and in the environment of RUN, but are not kept
//! in the image. ENV values are kept. Within one ENV or LABEL, every value is substituted
//! with the variables as they were before the instruction. Build arguments set declared
//! ARGs only (others are reported as unused). The platform ARGs `TARGETPLATFORM`,
//! `TARGETOS`, `TARGETARCH`, `TARGETVARIANT`, `BUILDPLATFORM`, `BUILDOS`, `BUILDARCH`,
//! `BUILDVARIANT` are predefined for linux/amd64.
//!
//! ## COPY and ADD
//!
//! - Sources are relative to the build context root (a leading `/` changes nothing) and
//!   cannot leave it.
//! - `*`, `?` and `[...]` glob within one directory level (`*` does not match `/`).
//! - A directory copies its contents, not the directory itself; `COPY . .` copies the
//!   whole context into the WORKDIR.
//! - The destination is relative to WORKDIR; `.` is the WORKDIR. A destination ending in
//!   `/` is a directory: files go inside it. Several sources, or a glob matching several
//!   entries, need such a destination. One file to a destination without `/` is written
//!   at that path, or inside it if it is an existing directory.
//! - A missing source is an error naming it; a glob may match nothing as long as the
//!   instruction copies something (`COPY package.json yarn.lock* ./`).
//! - Files are owned by root unless `--chown` says otherwise (USER does not apply).
//!
//! ## .dockerignore
//!
//! A `.dockerignore` at the context root excludes paths from the context, as in Docker:
//! one pattern a line, `#` comments, `*`, `?`, `[...]`, `**` for any number of
//! directories, `!pattern` to re-include, the last matching pattern wins, and a pattern
//! matching a directory excludes everything under it.
//!
//! ## The process
//!
//! The image's process is the ENTRYPOINT followed by the CMD, as Docker starts it (see
//! [`ImageConfig::process_argv`]): a shell-form CMD runs as `/bin/sh -c "..."`; a
//! shell-form ENTRYPOINT ignores CMD (its words only reach the shell as `$0 ...`); an
//! ENTRYPOINT drops a CMD inherited from the base image unless the Dockerfile sets one.

mod copy;
mod ignore;
mod lex;
mod parse;
mod plan;

pub use copy::{
    check_add_file, is_archive, resolve_copy, ContextEntry, CopyError, CopyOp, EntryKind,
    ADD_ARCHIVE_REFUSED, ARCHIVE_SNIFF_BYTES,
};
pub use ignore::{parse_dockerignore, DockerIgnore, DockerIgnoreError};
pub use parse::{parse, ArgDecl, Command, CopyArgs, Dockerfile, Instruction, InstructionKind};
pub use plan::{
    plan, plan_on_base, BuildPlan, ImageConfig, Proto, Step, DEFAULT_PATH, DESCRIPTION_MAX_CHARS,
    MAX_EXPOSED_PORTS, PREDEFINED_ARGS,
};

/// A Dockerfile that Hearth's builder cannot run, with the 1-based line of the instruction
/// (its first line) or directive at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// How many lines [`parse`] counts in `text` (every error's line is within 1..=max(1, n)).
pub fn line_count(text: &str) -> usize {
    parse::line_count(text)
}

//! COPY/ADD source resolution against a listing of the build context: Docker's rules for
//! globs, directories, destinations and the context boundary, as a list of [`CopyOp`]s the
//! builder carries out in order. Also the archive check of ADD. Pure; runs on the
//! builder's task.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The refusal of ADD with an archive (Docker would unpack it; Hearth does not).
pub const ADD_ARCHIVE_REFUSED: &str = "ADD of an archive is not supported, use COPY and RUN tar";

/// How many leading bytes of a file [`is_archive`] needs to recognise every format.
pub const ARCHIVE_SNIFF_BYTES: usize = 512;

/// Whether a context entry is a file or a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    File,
    Dir,
}

/// One entry of the build context: a path relative to the context root, with `/`
/// separators (`app/main.py`), and its kind. Parents need not be listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextEntry {
    pub path: String,
    pub kind: EntryKind,
}

impl ContextEntry {
    pub fn file(path: impl Into<String>) -> ContextEntry {
        ContextEntry {
            path: path.into(),
            kind: EntryKind::File,
        }
    }

    pub fn dir(path: impl Into<String>) -> ContextEntry {
        ContextEntry {
            path: path.into(),
            kind: EntryKind::Dir,
        }
    }
}

/// One thing to copy: a context entry to a path in the guest.
///
/// Carry the ops out in order (a directory comes before its contents; a later op to the
/// same destination overwrites an earlier one). A `Dir` op means "make sure this
/// directory exists" (`mkdir -p`, applying the step's chown/chmod to what is created).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyOp {
    /// Relative path in the context (`.` for the context root).
    pub src: String,
    /// Absolute path in the guest, without a trailing `/`.
    pub dest: String,
    pub kind: EntryKind,
    /// Docker's rule for one file copied to a destination without a trailing `/`: if
    /// `dest` is an existing directory in the guest, the file goes inside it as
    /// `dest/<file name of src>`; otherwise it is written at `dest`. Only ever true for a
    /// `File` op.
    pub into_existing_dir: bool,
}

/// Why the sources of a COPY or ADD cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    #[error("the destination {dest} is not an absolute path")]
    DestNotAbsolute { dest: String },
    #[error("no source to copy")]
    NoSources,
    #[error("source {src} is outside the build context")]
    OutsideContext { src: String },
    #[error("source {src} not found in the build context (is it excluded by .dockerignore?)")]
    NotFound { src: String },
    #[error("no file in the build context matches {sources}")]
    NoMatch { sources: String },
    #[error("bad pattern {src}: {reason}")]
    BadPattern { src: String, reason: String },
    #[error("When using COPY with more than one source file, the destination must be a directory and end with a / (got {dest})")]
    DestNotDir { dest: String },
    #[error("the context listing has a path outside the context: {path}")]
    BadContextEntry { path: String },
    #[error("{message} ({src})", message = ADD_ARCHIVE_REFUSED)]
    AddArchive { src: String },
}

/// Resolves the sources of a COPY or ADD step ([`crate::Step::Copy`]) against the build
/// context (already filtered by `.dockerignore`) into the ops to carry out.
///
/// Docker's rules: sources are relative to the context root (a leading `/` changes
/// nothing) and may not leave it; `*`, `?` and `[...]` glob as Go's `path.Match` (`*` and
/// `?` do not match `/`); a directory copies its contents, not itself; more than one
/// source (or a glob matching more than one entry) needs `dest` to end with `/`; a file
/// copied to a `dest` ending with `/` goes inside it. A missing plain source is an error
/// naming it; a glob may match nothing as long as something is copied.
pub fn resolve_copy(
    sources: &[String],
    dest: &str,
    context: &[ContextEntry],
) -> Result<Vec<CopyOp>, CopyError> {
    if !dest.starts_with('/') {
        return Err(CopyError::DestNotAbsolute {
            dest: dest.to_string(),
        });
    }
    if sources.is_empty() {
        return Err(CopyError::NoSources);
    }
    let dest_is_dir = dest.ends_with('/');
    if sources.len() > 1 && !dest_is_dir {
        return Err(CopyError::DestNotDir {
            dest: dest.to_string(),
        });
    }
    let dest_dir = clean_path(dest);
    let index = ContextIndex::new(context)?;
    let mut ops = Vec::new();
    let mut matched_any = false;
    for source in sources {
        let Some(path) = normalize_source(source) else {
            return Err(CopyError::OutsideContext {
                src: source.clone(),
            });
        };
        let matches: Vec<(&str, EntryKind)> = if contains_wildcards(&path) {
            if let Err(BadPattern) = path_match(&path, "") {
                return Err(CopyError::BadPattern {
                    src: source.clone(),
                    reason: "syntax error in pattern".into(),
                });
            }
            let found: Vec<_> = index
                .entries
                .iter()
                .filter(|(p, _)| p.as_str() != "." && path_match(&path, p) == Ok(true))
                .map(|(p, k)| (p.as_str(), *k))
                .collect();
            if found.len() > 1 && !dest_is_dir {
                return Err(CopyError::DestNotDir {
                    dest: dest.to_string(),
                });
            }
            found
        } else {
            match index.entries.get_key_value(path.as_str()) {
                Some((p, k)) => vec![(p.as_str(), *k)],
                None => {
                    return Err(CopyError::NotFound {
                        src: source.clone(),
                    })
                }
            }
        };
        for (path, kind) in matches {
            matched_any = true;
            match kind {
                EntryKind::File => {
                    let (dest, into_existing_dir) = if dest_is_dir {
                        (join(&dest_dir, base_name(path)), false)
                    } else {
                        (dest_dir.clone(), true)
                    };
                    ops.push(CopyOp {
                        src: path.to_string(),
                        dest,
                        kind,
                        into_existing_dir,
                    });
                }
                EntryKind::Dir => {
                    ops.push(CopyOp {
                        src: path.to_string(),
                        dest: dest_dir.clone(),
                        kind,
                        into_existing_dir: false,
                    });
                    for (child, child_kind) in index.under(path) {
                        let relative = if path == "." {
                            child
                        } else {
                            &child[path.len() + 1..]
                        };
                        ops.push(CopyOp {
                            src: child.to_string(),
                            dest: join(&dest_dir, relative),
                            kind: child_kind,
                            into_existing_dir: false,
                        });
                    }
                }
            }
        }
    }
    if !matched_any {
        return Err(CopyError::NoMatch {
            sources: sources.join(" "),
        });
    }
    Ok(ops)
}

/// Whether the first bytes of a file (at least [`ARCHIVE_SNIFF_BYTES`] of them, or the
/// whole file if shorter) are a tar archive or a gzip, bzip2, xz or zstd stream, which
/// Docker's ADD would try to unpack.
pub fn is_archive(header: &[u8]) -> bool {
    const MAGICS: &[&[u8]] = &[
        &[0x1f, 0x8b],                         // gzip
        b"BZh",                                // bzip2
        &[0xfd, b'7', b'z', b'X', b'Z', 0x00], // xz
        &[0x28, 0xb5, 0x2f, 0xfd],             // zstd
    ];
    let tar = header.len() >= 262 && &header[257..262] == b"ustar";
    tar || MAGICS.iter().any(|m| header.starts_with(m))
}

/// For an ADD step ([`crate::Step::Copy`] with `is_add`): refuses a file whose first bytes
/// [`is_archive`] recognises.
pub fn check_add_file(src: &str, header: &[u8]) -> Result<(), CopyError> {
    if is_archive(header) {
        return Err(CopyError::AddArchive {
            src: src.to_string(),
        });
    }
    Ok(())
}

/// Whether a file name has the extension of an archive ADD would unpack.
pub(crate) fn is_archive_name(path: &str) -> bool {
    const EXTENSIONS: &[&str] = &[
        ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tbz2", ".tar.xz", ".txz", ".tar.zst",
        ".tzst", ".gz", ".bz2", ".xz", ".zst",
    ];
    let lower = path.to_ascii_lowercase();
    EXTENSIONS.iter().any(|ext| lower.ends_with(ext))
}

/// A source relative to the context root, cleaned (`.` for the root); `None` if it leaves
/// the context.
pub(crate) fn normalize_source(source: &str) -> Option<String> {
    let relative = source.trim_start_matches('/');
    let cleaned = clean_path(if relative.is_empty() { "." } else { relative });
    if cleaned == ".." || cleaned.starts_with("../") {
        return None;
    }
    Some(cleaned)
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Docker's `containsWildcards`: an unescaped `*`, `?` or `[`.
fn contains_wildcards(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'*' | b'?' | b'[' => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

/// Every path of the context, with the parents of listed entries as directories, and `.`.
struct ContextIndex {
    entries: BTreeMap<String, EntryKind>,
}

impl ContextIndex {
    fn new(context: &[ContextEntry]) -> Result<ContextIndex, CopyError> {
        let mut entries = BTreeMap::new();
        entries.insert(".".to_string(), EntryKind::Dir);
        for entry in context {
            let Some(path) = normalize_source(&entry.path) else {
                return Err(CopyError::BadContextEntry {
                    path: entry.path.clone(),
                });
            };
            if path == "." {
                continue;
            }
            let mut parent = path.as_str();
            while let Some((p, _)) = parent.rsplit_once('/') {
                entries.entry(p.to_string()).or_insert(EntryKind::Dir);
                parent = p;
            }
            entries.insert(path, entry.kind);
        }
        Ok(ContextIndex { entries })
    }

    /// The entries strictly under `dir`, in path order (parents first).
    fn under<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a str, EntryKind)> + 'a {
        let (lo, hi) = if dir == "." {
            (String::new(), None)
        } else {
            // '/' + 1 == '0': every "dir/..." sorts in [dir/, dir0).
            (format!("{dir}/"), Some(format!("{dir}0")))
        };
        self.entries
            .range(lo.clone()..)
            .take_while(move |(p, _)| match &hi {
                Some(h) => p.as_str() < h.as_str(),
                None => true,
            })
            .filter(|(p, _)| p.as_str() != ".")
            .map(|(p, k)| (p.as_str(), *k))
    }
}

/// Go's `path.ErrBadPattern`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadPattern;

/// Go's `path.Match`: whether `name` matches the shell pattern `pattern` (`*` and `?` do
/// not match `/`; `[...]`/`[^...]` classes with ranges; `\` escapes).
pub(crate) fn path_match(pattern: &str, name: &str) -> Result<bool, BadPattern> {
    let mut pattern = pattern.as_bytes();
    let mut name = name.as_bytes();
    'pattern: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            // A trailing * matches the rest of the name unless it has a /.
            return Ok(!name.contains(&b'/'));
        }
        match match_chunk(chunk, name) {
            Ok(Some(t)) if t.is_empty() || !pattern.is_empty() => {
                name = t;
                continue;
            }
            Err(e) => return Err(e),
            _ => {}
        }
        if star {
            let mut i = 0;
            while i < name.len() && name[i] != b'/' {
                match match_chunk(chunk, &name[i + 1..]) {
                    Ok(Some(t)) => {
                        if pattern.is_empty() && !t.is_empty() {
                            i += 1;
                            continue;
                        }
                        name = t;
                        continue 'pattern;
                    }
                    Err(e) => return Err(e),
                    Ok(None) => {}
                }
                i += 1;
            }
        }
        // Before failing, check that the rest of the pattern is well formed.
        while !pattern.is_empty() {
            let (_, chunk, rest) = scan_chunk(pattern);
            pattern = rest;
            match_chunk(chunk, b"")?;
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

fn scan_chunk(pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut p = pattern;
    let mut star = false;
    while let [b'*', rest @ ..] = p {
        p = rest;
        star = true;
    }
    let mut in_range = false;
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'\\' if i + 1 < p.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (star, &p[..i], &p[i..])
}

fn decode_char(bytes: &[u8]) -> (char, usize) {
    for len in 1..=bytes.len().min(4) {
        if let Ok(s) = std::str::from_utf8(&bytes[..len]) {
            if let Some(c) = s.chars().next() {
                return (c, len);
            }
        }
    }
    (char::REPLACEMENT_CHARACTER, 1)
}

/// Matches one chunk (no `*`) at the start of `s`: the rest of `s` on a match.
fn match_chunk<'a>(chunk: &[u8], s: &'a [u8]) -> Result<Option<&'a [u8]>, BadPattern> {
    let mut chunk = chunk;
    let mut s = s;
    let mut failed = false;
    while !chunk.is_empty() {
        if !failed && s.is_empty() {
            failed = true;
        }
        match chunk[0] {
            b'[' => {
                let mut r = '\0';
                if !failed {
                    let (c, n) = decode_char(s);
                    r = c;
                    s = &s[n..];
                }
                chunk = &chunk[1..];
                let mut negated = false;
                if chunk.first() == Some(&b'^') {
                    negated = true;
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut n_ranges = 0;
                loop {
                    if chunk.first() == Some(&b']') && n_ranges > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let (lo, rest) = get_esc(chunk)?;
                    chunk = rest;
                    let mut hi = lo;
                    if chunk[0] == b'-' {
                        let (h, rest) = get_esc(&chunk[1..])?;
                        hi = h;
                        chunk = rest;
                    }
                    if lo <= r && r <= hi {
                        matched = true;
                    }
                    n_ranges += 1;
                }
                if matched == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if s[0] == b'/' {
                        failed = true;
                    }
                    let (_, n) = decode_char(s);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
            }
            c => {
                let literal = if c == b'\\' {
                    chunk = &chunk[1..];
                    match chunk.first() {
                        Some(&l) => l,
                        None => return Err(BadPattern),
                    }
                } else {
                    c
                };
                if !failed {
                    if literal != s[0] {
                        failed = true;
                    }
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    if failed {
        Ok(None)
    } else {
        Ok(Some(s))
    }
}

/// One character of a class (possibly escaped); the rest of the chunk must not be empty.
fn get_esc(chunk: &[u8]) -> Result<(char, &[u8]), BadPattern> {
    let mut chunk = chunk;
    match chunk.first() {
        None | Some(b'-') | Some(b']') => return Err(BadPattern),
        Some(b'\\') => {
            chunk = &chunk[1..];
            if chunk.is_empty() {
                return Err(BadPattern);
            }
        }
        Some(_) => {}
    }
    let (r, n) = decode_char(chunk);
    if r == char::REPLACEMENT_CHARACTER && n == 1 {
        return Err(BadPattern);
    }
    let rest = &chunk[n..];
    if rest.is_empty() {
        return Err(BadPattern);
    }
    Ok((r, rest))
}

/// Go's `path.Clean` for a slash path.
pub(crate) fn clean_path(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, name: &str) -> bool {
        path_match(pattern, name).unwrap()
    }

    #[test]
    fn path_match_follows_go() {
        assert!(m("*.py", "app.py"));
        assert!(!m("*.py", "src/app.py"));
        assert!(m("src/*.py", "src/app.py"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "a/c"));
        assert!(m("[a-c]x", "bx"));
        assert!(!m("[^a-c]x", "bx"));
        assert!(m("[^a-c]x", "dx"));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "x"));
        assert!(m("*", ""));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        assert!(m("réa*", "réaliste"));
        assert!(m("[é]", "é"));
        for bad in ["[", "[a-", "a\\", "[]", "[x-]"] {
            assert_eq!(path_match(bad, "a"), Err(BadPattern), "{bad}");
        }
    }

    fn ctx(entries: &[&str]) -> Vec<ContextEntry> {
        entries
            .iter()
            .map(|e| match e.strip_suffix('/') {
                Some(d) => ContextEntry::dir(d),
                None => ContextEntry::file(*e),
            })
            .collect()
    }

    fn ops(
        sources: &[&str],
        dest: &str,
        context: &[ContextEntry],
    ) -> Vec<(String, String, EntryKind, bool)> {
        let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        resolve_copy(&sources, dest, context)
            .unwrap()
            .into_iter()
            .map(|o| (o.src, o.dest, o.kind, o.into_existing_dir))
            .collect()
    }

    fn op(src: &str, dest: &str, kind: EntryKind, into: bool) -> (String, String, EntryKind, bool) {
        (src.into(), dest.into(), kind, into)
    }

    use EntryKind::{Dir, File};

    #[test]
    fn a_file_to_a_slash_dest_goes_inside_it() {
        let c = ctx(&["requirements.txt", "app.py"]);
        assert_eq!(
            ops(&["requirements.txt"], "/app/", &c),
            vec![op("requirements.txt", "/app/requirements.txt", File, false)]
        );
    }

    #[test]
    fn a_file_to_a_plain_dest_is_written_there_unless_it_is_a_directory() {
        let c = ctx(&["conf/app.yaml"]);
        assert_eq!(
            ops(&["conf/app.yaml"], "/etc/app.yaml", &c),
            vec![op("conf/app.yaml", "/etc/app.yaml", File, true)]
        );
    }

    #[test]
    fn a_directory_copies_its_contents_not_itself() {
        let c = ctx(&[
            "src/",
            "src/a.py",
            "src/pkg/",
            "src/pkg/b.py",
            "src-other.txt",
            "top.txt",
        ]);
        assert_eq!(
            ops(&["src"], "/app", &c),
            vec![
                op("src", "/app", Dir, false),
                op("src/a.py", "/app/a.py", File, false),
                op("src/pkg", "/app/pkg", Dir, false),
                op("src/pkg/b.py", "/app/pkg/b.py", File, false),
            ]
        );
    }

    #[test]
    fn dot_copies_the_whole_context_and_parents_are_implied() {
        let c = ctx(&["app.py", "static/css/site.css"]);
        assert_eq!(
            ops(&["."], "/app/", &c),
            vec![
                op(".", "/app", Dir, false),
                op("app.py", "/app/app.py", File, false),
                op("static", "/app/static", Dir, false),
                op("static/css", "/app/static/css", Dir, false),
                op(
                    "static/css/site.css",
                    "/app/static/css/site.css",
                    File,
                    false
                ),
            ]
        );
        assert_eq!(ops(&["/"], "/", &c)[0], op(".", "/", Dir, false));
        assert_eq!(ops(&["./"], "/w/", &c).len(), 5);
    }

    #[test]
    fn globs_match_one_level_and_copy_matched_directories_contents() {
        let c = ctx(&[
            "a.py",
            "b.py",
            "c.txt",
            "lib/x.py",
            "pydir/",
            "pydir/inner.txt",
        ]);
        assert_eq!(
            ops(&["*.py"], "/app/", &c),
            vec![
                op("a.py", "/app/a.py", File, false),
                op("b.py", "/app/b.py", File, false)
            ]
        );
        assert_eq!(
            ops(&["py*"], "/app/", &c),
            vec![
                op("pydir", "/app", Dir, false),
                op("pydir/inner.txt", "/app/inner.txt", File, false)
            ]
        );
        assert_eq!(
            ops(&["*/*.py"], "/app/", &c),
            vec![op("lib/x.py", "/app/x.py", File, false)]
        );
        assert_eq!(ops(&["[ab].py"], "/app/", &c).len(), 2);
    }

    #[test]
    fn a_glob_with_several_matches_needs_a_slash_dest_but_one_match_does_not() {
        let c = ctx(&["a.py", "b.py", "only.txt"]);
        let e = resolve_copy(&["*.py".into()], "/app", &c).unwrap_err();
        assert!(matches!(e, CopyError::DestNotDir { .. }), "{e}");
        assert_eq!(
            ops(&["*.txt"], "/app/conf", &c),
            vec![op("only.txt", "/app/conf", File, true)]
        );
    }

    #[test]
    fn several_sources_need_a_slash_dest() {
        let c = ctx(&["a", "b"]);
        let e = resolve_copy(&["a".into(), "b".into()], "/x", &c).unwrap_err();
        assert!(e.to_string().contains("end with a /"), "{e}");
        assert_eq!(ops(&["a", "b"], "/x/", &c).len(), 2);
    }

    #[test]
    fn a_missing_source_is_an_error_naming_it() {
        let c = ctx(&["a"]);
        let e = resolve_copy(&["a".into(), "missing.txt".into()], "/x/", &c).unwrap_err();
        assert_eq!(
            e,
            CopyError::NotFound {
                src: "missing.txt".into()
            }
        );
        assert!(e.to_string().contains("missing.txt"));
    }

    #[test]
    fn an_empty_glob_is_fine_only_if_something_else_is_copied() {
        let c = ctx(&["package.json"]);
        assert_eq!(ops(&["package.json", "yarn.lock*"], "/app/", &c).len(), 1);
        let e = resolve_copy(&["*.lock".into()], "/app/", &c).unwrap_err();
        assert_eq!(
            e,
            CopyError::NoMatch {
                sources: "*.lock".into()
            }
        );
        assert!(e.to_string().contains("*.lock"));
    }

    #[test]
    fn sources_cannot_leave_the_context() {
        let c = ctx(&["a"]);
        for bad in ["..", "../a", "x/../../a", "/../a"] {
            let e = resolve_copy(&[bad.into()], "/x/", &c).unwrap_err();
            assert_eq!(e, CopyError::OutsideContext { src: bad.into() }, "{bad}");
        }
        // A `..` that stays inside is fine, and a leading / is the context root.
        assert_eq!(ops(&["x/../a"], "/d/", &c).len(), 1);
        assert_eq!(ops(&["/a"], "/d/", &c).len(), 1);
    }

    #[test]
    fn bad_patterns_and_relative_dest_are_errors() {
        let c = ctx(&["a"]);
        assert!(matches!(
            resolve_copy(&["[a".into()], "/d/", &c),
            Err(CopyError::BadPattern { .. })
        ));
        assert!(matches!(
            resolve_copy(&["a".into()], "d/", &c),
            Err(CopyError::DestNotAbsolute { .. })
        ));
    }

    #[test]
    fn archives_are_recognised_by_content() {
        let mut tar = vec![0u8; 512];
        tar[257..263].copy_from_slice(b"ustar\0");
        assert!(is_archive(&tar));
        assert!(is_archive(&[0x1f, 0x8b, 8, 0]));
        assert!(is_archive(b"BZh91AY"));
        assert!(is_archive(&[0xfd, b'7', b'z', b'X', b'Z', 0, 1]));
        assert!(is_archive(&[0x28, 0xb5, 0x2f, 0xfd, 1]));
        assert!(!is_archive(b"#!/bin/sh\necho hi\n"));
        assert!(!is_archive(&[0u8; 100]));
        let e = check_add_file("data.bin", &[0x1f, 0x8b]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ADD of an archive is not supported, use COPY and RUN tar (data.bin)"
        );
        assert!(check_add_file("x.txt", b"hello").is_ok());
    }
}

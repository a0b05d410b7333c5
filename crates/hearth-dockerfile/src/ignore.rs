//! `.dockerignore`: Docker's file format and matching rules (moby's `ignorefile` and
//! `patternmatcher`), to filter the build context listing before COPY resolution. Pure;
//! runs on the builder's task.

use crate::copy::clean_path;
use crate::copy::{path_match, BadPattern, ContextEntry};

/// Why a `.dockerignore` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerIgnoreError {
    #[error(".dockerignore line {line}: illegal exclusion pattern: \"!\"")]
    LoneExclamation { line: usize },
    #[error(".dockerignore line {line}: syntax error in pattern {pattern:?}")]
    BadPattern { line: usize, pattern: String },
}

/// The parsed patterns of a `.dockerignore`, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DockerIgnore {
    patterns: Vec<IgnorePattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct IgnorePattern {
    /// A `!` pattern: re-includes what earlier patterns excluded.
    exception: bool,
    /// The cleaned pattern without `!`.
    text: String,
    matcher: Matcher,
}

/// Docker compiles a pattern to a regexp but short-cuts three simple shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    Exact,
    /// `prefix**`: any path starting with the prefix.
    Prefix(String),
    /// `**suffix`.
    Suffix(String),
    Tokens(Vec<Tok>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    /// `*`: any run of characters but `/`.
    Star,
    /// `?`: one character but `/`.
    Quest,
    /// `**` (and `**/`) inside a pattern: nothing, or anything ending with `/`.
    DirsAny,
    /// `**` at the end: anything.
    Any,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// Parses a `.dockerignore`: one pattern a line; lines starting with `#` are comments;
/// blank lines are skipped; surrounding whitespace is removed; patterns are cleaned
/// (`./a/` is `a`, a leading `/` is dropped); `!pattern` re-includes paths.
/// Patterns use Go's `filepath.Match` syntax plus `**` for any number of directories.
pub fn parse_dockerignore(text: &str) -> Result<DockerIgnore, DockerIgnoreError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut patterns = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.starts_with('#') {
            continue;
        }
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            continue;
        }
        let (exception, body) = match trimmed.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, trimmed),
        };
        if body.is_empty() {
            return Err(DockerIgnoreError::LoneExclamation { line });
        }
        let mut cleaned = clean_path(body);
        if cleaned.len() > 1 && cleaned.starts_with('/') {
            cleaned.remove(0);
        }
        if path_match(&cleaned, ".") == Err(BadPattern) {
            return Err(DockerIgnoreError::BadPattern {
                line,
                pattern: raw.trim().to_string(),
            });
        }
        patterns.push(IgnorePattern {
            exception,
            matcher: compile(&cleaned),
            text: cleaned,
        });
    }
    Ok(DockerIgnore { patterns })
}

impl DockerIgnore {
    /// Whether `path` (relative to the context root, `/`-separated) is excluded from the
    /// build context: the last pattern matching it or one of its parent directories
    /// decides (a `!` pattern re-includes). The context root itself is never ignored.
    pub fn ignored(&self, path: &str) -> bool {
        let file = clean_path(path.trim_start_matches('/'));
        if file == "." || file.is_empty() {
            return false;
        }
        let parents: Vec<&str> = match file.rsplit_once('/') {
            Some((parent, _)) => parent.split('/').collect(),
            None => Vec::new(),
        };
        let mut matched = false;
        for pattern in &self.patterns {
            // An inclusion cannot change an ignored path, an exception a kept one.
            if pattern.exception != matched {
                continue;
            }
            let mut hit = pattern.matches(&file);
            if !hit {
                hit = (1..=parents.len()).any(|n| pattern.matches(&parents[..n].join("/")));
            }
            if hit {
                matched = !pattern.exception;
            }
        }
        matched
    }

    /// Whether any `!` pattern exists: then a walk of the context must not skip an
    /// ignored directory, since something under it may be re-included.
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exception)
    }

    /// The entries that are not [`ignored`](DockerIgnore::ignored).
    pub fn filter(&self, entries: &[ContextEntry]) -> Vec<ContextEntry> {
        entries
            .iter()
            .filter(|e| !self.ignored(&e.path))
            .cloned()
            .collect()
    }
}

fn should_escape(c: char) -> bool {
    matches!(c, '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$')
}

/// Docker's `Pattern.compile`, producing tokens instead of a regexp.
fn compile(pattern: &str) -> Matcher {
    #[derive(PartialEq)]
    enum Shape {
        Exact,
        Prefix,
        Suffix,
        Regexp,
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut toks = Vec::new();
    let mut shape = Shape::Exact;
    let mut pos = 0;
    let mut index = 0;
    while pos < chars.len() {
        let ch = chars[pos];
        pos += 1;
        match ch {
            '*' if chars.get(pos) == Some(&'*') => {
                pos += 1;
                if chars.get(pos) == Some(&'/') {
                    pos += 1;
                }
                if pos == chars.len() {
                    if shape == Shape::Exact {
                        shape = Shape::Prefix;
                    } else {
                        toks.push(Tok::Any);
                        shape = Shape::Regexp;
                    }
                } else {
                    toks.push(Tok::DirsAny);
                    shape = Shape::Regexp;
                }
                if index == 0 {
                    shape = Shape::Suffix;
                }
            }
            '*' => {
                toks.push(Tok::Star);
                shape = Shape::Regexp;
            }
            '?' => {
                toks.push(Tok::Quest);
                shape = Shape::Regexp;
            }
            c if should_escape(c) => toks.push(Tok::Lit(c)),
            '\\' => match chars.get(pos) {
                Some(&next) => {
                    pos += 1;
                    toks.push(Tok::Lit(next));
                    shape = Shape::Regexp;
                }
                None => toks.push(Tok::Lit('\\')),
            },
            '[' => {
                shape = Shape::Regexp;
                let (tok, next) = parse_class(&chars, pos);
                toks.push(tok);
                pos = next;
            }
            ']' => {
                shape = Shape::Regexp;
                toks.push(Tok::Lit(']'));
            }
            c => toks.push(Tok::Lit(c)),
        }
        index += 1;
    }
    match shape {
        Shape::Exact => Matcher::Exact,
        Shape::Prefix => Matcher::Prefix(pattern[..pattern.len() - 2].to_string()),
        Shape::Suffix => Matcher::Suffix(pattern[2..].to_string()),
        Shape::Regexp => Matcher::Tokens(toks),
    }
}

/// A `[...]` class starting after the `[` at `pos`; returns the token and the position
/// after the closing `]`. (The pattern was validated by `path_match`, so it is closed.)
fn parse_class(chars: &[char], mut pos: usize) -> (Tok, usize) {
    let mut negated = false;
    if chars.get(pos) == Some(&'^') {
        negated = true;
        pos += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    while pos < chars.len() {
        let mut c = chars[pos];
        if c == ']' && !first {
            pos += 1;
            break;
        }
        first = false;
        pos += 1;
        if c == '\\' && pos < chars.len() {
            c = chars[pos];
            pos += 1;
        }
        let mut hi = c;
        if chars.get(pos) == Some(&'-') && chars.get(pos + 1).is_some_and(|&n| n != ']') {
            hi = chars[pos + 1];
            pos += 2;
            if hi == '\\' && pos < chars.len() {
                hi = chars[pos];
                pos += 1;
            }
        }
        ranges.push((c, hi));
    }
    (Tok::Class { negated, ranges }, pos)
}

impl IgnorePattern {
    fn matches(&self, path: &str) -> bool {
        match &self.matcher {
            Matcher::Exact => path == self.text,
            Matcher::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Matcher::Suffix(suffix) => {
                path.ends_with(suffix.as_str())
                    || suffix.strip_prefix('/').is_some_and(|bare| path == bare)
            }
            Matcher::Tokens(toks) => tokens_match(toks, &path.chars().collect::<Vec<_>>()),
        }
    }
}

/// Whether `toks` match all of `s` (dynamic programming from the end).
fn tokens_match(toks: &[Tok], s: &[char]) -> bool {
    let n = s.len();
    // next[i]: toks[t+1..] match s[i..].
    let mut next = vec![false; n + 1];
    next[n] = true;
    for tok in toks.iter().rev() {
        let mut row = vec![false; n + 1];
        // For DirsAny: whether some '/' at j >= i has next[j + 1].
        let mut slash_then_rest = false;
        for i in (0..=n).rev() {
            if i < n && s[i] == '/' && next[i + 1] {
                slash_then_rest = true;
            }
            row[i] = match tok {
                Tok::Lit(c) => i < n && s[i] == *c && next[i + 1],
                Tok::Quest => i < n && s[i] != '/' && next[i + 1],
                Tok::Star => next[i] || (i < n && s[i] != '/' && row[i + 1]),
                Tok::Any => next[i] || (i < n && row[i + 1]),
                Tok::DirsAny => next[i] || slash_then_rest,
                Tok::Class { negated, ranges } => {
                    i < n
                        && ranges.iter().any(|&(lo, hi)| lo <= s[i] && s[i] <= hi) != *negated
                        && next[i + 1]
                }
            };
        }
        next = row;
    }
    next[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ig(text: &str) -> DockerIgnore {
        parse_dockerignore(text).unwrap()
    }

    #[test]
    fn plain_names_match_the_path_and_everything_under_it() {
        let d = ig("node_modules\n.git\n");
        assert!(d.ignored("node_modules"));
        assert!(d.ignored("node_modules/x/y.js"));
        assert!(d.ignored(".git/HEAD"));
        assert!(!d.ignored("src/node_modules"));
        assert!(!d.ignored("node_modules_old"));
    }

    #[test]
    fn star_does_not_cross_directories_but_double_star_does() {
        let d = ig("*.pyc\n");
        assert!(d.ignored("a.pyc"));
        assert!(!d.ignored("pkg/a.pyc"));
        let d = ig("**/*.pyc\n");
        assert!(d.ignored("a.pyc"));
        assert!(d.ignored("pkg/sub/a.pyc"));
        let d = ig("**/__pycache__\n");
        assert!(d.ignored("__pycache__/x.pyc"));
        assert!(d.ignored("a/b/__pycache__/x.pyc"));
        let d = ig("docs/**\n");
        assert!(d.ignored("docs/a/b.md"));
        assert!(!d.ignored("docs"));
        let d = ig("a/**/z\n");
        assert!(d.ignored("a/z"));
        assert!(d.ignored("a/b/c/z"));
        assert!(!d.ignored("ab/z"));
        let d = ig("*/temp*\n");
        assert!(d.ignored("somedir/temporary.txt"));
        assert!(!d.ignored("temp.txt"));
        let d = ig("temp?\n");
        assert!(d.ignored("tempa"));
        assert!(!d.ignored("temp/"));
    }

    #[test]
    fn exceptions_reinclude_and_the_last_match_wins() {
        let d = ig("*.md\n!README.md\n");
        assert!(d.ignored("CHANGES.md"));
        assert!(!d.ignored("README.md"));
        assert!(d.has_exceptions());
        let d = ig("*.md\n!README*.md\nREADME-secret.md\n");
        assert!(!d.ignored("README-public.md"));
        assert!(d.ignored("README-secret.md"));
        let d = ig("build\n!build/keep.txt\n");
        assert!(d.ignored("build/other"));
        assert!(!d.ignored("build/keep.txt"));
    }

    #[test]
    fn comments_blank_lines_leading_slash_and_cleaning() {
        let d = ig("# comment\n\n   /secrets/  \n./tmp/../cache\n  # not a comment\n");
        assert!(d.ignored("secrets/key"));
        assert!(d.ignored("cache"));
        assert!(!d.ignored("tmp"));
        assert!(d.ignored("# not a comment"));
        assert!(!d.ignored("comment"));
    }

    #[test]
    fn classes_and_escapes() {
        let d = ig("file[0-9].txt\n\\*star\n");
        assert!(d.ignored("file3.txt"));
        assert!(!d.ignored("filex.txt"));
        assert!(d.ignored("*star"));
        assert!(!d.ignored("xstar"));
        let d = ig("[^a]x\n");
        assert!(d.ignored("bx"));
        assert!(!d.ignored("ax"));
    }

    #[test]
    fn the_root_is_never_ignored() {
        let d = ig("*\n");
        assert!(!d.ignored("."));
        assert!(d.ignored("anything"));
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(
            parse_dockerignore("a\n!\n"),
            Err(DockerIgnoreError::LoneExclamation { line: 2 })
        );
        assert!(matches!(
            parse_dockerignore("ok\n\n[unclosed\n"),
            Err(DockerIgnoreError::BadPattern { line: 3, .. })
        ));
    }

    #[test]
    fn filter_drops_ignored_entries() {
        let d = ig(".venv\n*.log\n");
        let kept = d.filter(&[
            ContextEntry::file("app.py"),
            ContextEntry::dir(".venv"),
            ContextEntry::file(".venv/bin/python"),
            ContextEntry::file("debug.log"),
        ]);
        assert_eq!(kept, vec![ContextEntry::file("app.py")]);
    }
}

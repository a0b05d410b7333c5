//! String `pattern` constraints: translating the model's Java-style regular
//! expressions into the `regex` crate's dialect and matching them as a *full*
//! match, the way AWS's Java servers (`Matcher::matches`) do.
//!
//! This module owns only the dialect translation and the anchoring; which
//! strings are checked against which pattern is decided by `validate`.
//!
//! Translation rules (Java semantics without `UNICODE_CHARACTER_CLASS`):
//! - `\d`, `\s`, `\w` are ASCII classes in Java but Unicode classes in the
//!   `regex` crate, so they are rewritten to explicit ASCII sets
//!   (`\s` = `[ \t\n\x0B\f\r]`), inside and outside bracket expressions.
//!   Outside brackets, `\D`, `\S`, `\W` become the negated ASCII sets.
//! - `\Q...\E` quoting is expanded to escaped literals.
//! - Everything else (`\p{L}`, `\p{Z}`, `\p{N}`, ranges, alternation, ...) is
//!   passed through unchanged; Java constructs the `regex` crate lacks
//!   (possessive quantifiers, look-around, back-references) make compilation
//!   fail, which [`crate::Model::parse`] reports as a model error.

use regex::Regex;

/// Java's `\s` (ASCII whitespace) written for use inside a bracket expression.
const JAVA_SPACE: &str = r"\t\n\x0B\x0C\r\x20";
const JAVA_DIGIT: &str = "0-9";
const JAVA_WORD: &str = "a-zA-Z0-9_";

/// A compiled string pattern from the model.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    regex: Regex,
}

impl Pattern {
    /// Compile a model (Java-style) pattern, anchored as a full match.
    pub fn new(java_pattern: &str) -> Result<Self, regex::Error> {
        let translated = translate_java(java_pattern);
        let regex = Regex::new(&format!(r"\A(?:{translated})\z"))?;
        Ok(Self {
            source: java_pattern.to_string(),
            regex,
        })
    }

    /// The pattern exactly as written in the model (used in error messages).
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the *whole* of `s` matches the pattern.
    pub fn is_match(&self, s: &str) -> bool {
        self.regex.is_match(s)
    }
}

/// Rewrite a Java regular expression into the `regex` crate's dialect (not
/// anchored). See the module documentation for the rules.
pub fn translate_java(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 16);
    let chars: Vec<char> = pattern.chars().collect();
    let mut class_depth = 0usize;
    // Position in `out` right after the most recent unescaped `[` or `[^`, so
    // that a `]` immediately following it is recognised as a literal.
    let mut class_open_at: Option<usize> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' if i + 1 < chars.len() => {
                let e = chars[i + 1];
                i += 2;
                let in_class = class_depth > 0;
                match e {
                    'd' => push_set(&mut out, JAVA_DIGIT, in_class, false),
                    's' => push_set(&mut out, JAVA_SPACE, in_class, false),
                    'w' => push_set(&mut out, JAVA_WORD, in_class, false),
                    'D' if !in_class => push_set(&mut out, JAVA_DIGIT, false, true),
                    'S' if !in_class => push_set(&mut out, JAVA_SPACE, false, true),
                    'W' if !in_class => push_set(&mut out, JAVA_WORD, false, true),
                    'Q' => {
                        // Literal text up to `\E` (or the end of the pattern).
                        let mut lit = String::new();
                        while i < chars.len() {
                            if chars[i] == '\\' && i + 1 < chars.len() && chars[i + 1] == 'E' {
                                i += 2;
                                break;
                            }
                            lit.push(chars[i]);
                            i += 1;
                        }
                        for ch in lit.chars() {
                            out.push_str(&regex::escape(&ch.to_string()));
                        }
                    }
                    other => {
                        out.push('\\');
                        out.push(other);
                    }
                }
                continue;
            }
            '[' => {
                class_depth += 1;
                out.push('[');
                if chars.get(i + 1) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                class_open_at = Some(out.len());
            }
            ']' if class_depth > 0 => {
                if class_open_at == Some(out.len()) {
                    // `[]...]` / `[^]...]`: a literal bracket.
                    out.push_str(r"\]");
                } else {
                    class_depth -= 1;
                    out.push(']');
                }
            }
            _ => out.push(c),
        }
        i += 1;
    }
    out
}

fn push_set(out: &mut String, body: &str, in_class: bool, negated: bool) {
    if in_class {
        out.push_str(body);
    } else {
        out.push('[');
        if negated {
            out.push('^');
        }
        out.push_str(body);
        out.push(']');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_match_only() {
        let p = Pattern::new("[a-z]+").unwrap();
        assert!(p.is_match("abc"));
        assert!(!p.is_match("abc1"));
        assert!(!p.is_match("1abc"));
        assert!(!p.is_match(""));
    }

    #[test]
    fn alternation_is_grouped_before_anchoring() {
        let p = Pattern::new("ab|cd").unwrap();
        assert!(p.is_match("ab"));
        assert!(p.is_match("cd"));
        assert!(!p.is_match("abcd"));
        assert!(!p.is_match("abx"));
    }

    #[test]
    fn java_classes_are_ascii() {
        let d = Pattern::new(r"\d{2}").unwrap();
        assert!(d.is_match("12"));
        assert!(!d.is_match("١٢")); // Arabic-Indic digits: not digits in Java.
        let s = Pattern::new(r"[^\s]+").unwrap();
        assert!(s.is_match("a\u{a0}b")); // NBSP is not `\s` in Java.
        assert!(!s.is_match("a b"));
        assert!(!s.is_match("a\tb"));
        let ns = Pattern::new(r"\S+").unwrap();
        assert!(ns.is_match("ab"));
        assert!(!ns.is_match("a b"));
    }

    #[test]
    fn quoting_and_literal_bracket() {
        let q = Pattern::new(r"\Qa.b\E+").unwrap();
        assert!(q.is_match("a.bbb"));
        assert!(!q.is_match("axb"));
        let b = Pattern::new(r"[]a]+").unwrap();
        assert!(b.is_match("]a]"));
    }

    #[test]
    fn source_is_kept_verbatim() {
        let p = Pattern::new(r"[^\s]+").unwrap();
        assert_eq!(p.as_str(), r"[^\s]+");
    }
}

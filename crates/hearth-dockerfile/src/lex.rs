//! Docker's word processing: variable substitution with quote and escape removal (what
//! Docker calls `ProcessWord`/`ProcessWords`), the quote-preserving word splitter of ENV,
//! LABEL and ARG (`parseWords`), and the extraction of `--flag` words at the start of an
//! instruction. Pure functions, called by the parser and the planner on the caller's task.

use std::fmt;

/// An ordered list of variables with Docker's update rule: setting an existing name
/// replaces its value in place, a new name is appended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct EnvList {
    vars: Vec<(String, String)>,
}

impl EnvList {
    pub(crate) fn from_pairs(pairs: &[(String, String)]) -> EnvList {
        let mut env = EnvList::default();
        for (k, v) in pairs {
            env.set(k, v);
        }
        env
    }

    pub(crate) fn set(&mut self, key: &str, value: &str) {
        match self.vars.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.vars.push((key.to_string(), value.to_string())),
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub(crate) fn pairs(&self) -> &[(String, String)] {
        &self.vars
    }
}

/// Why a word could not be processed (Docker's messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LexError(pub(crate) String);

impl fmt::Display for LexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn lex_err<T>(msg: impl Into<String>) -> Result<T, LexError> {
    Err(LexError(msg.into()))
}

/// Substitutes variables in `word` and removes quotes and escapes, as Docker does for the
/// arguments of ADD, COPY, ENV, EXPOSE, FROM, LABEL, USER, WORKDIR and ARG defaults.
pub(crate) fn process_word(word: &str, escape: char, env: &EnvList) -> Result<String, LexError> {
    let mut lexer = Lexer::new(word, escape, env);
    lexer
        .process_stop_on(None, false, None)
        .map_err(|e| LexError(format!("failed to process {word:?}: {e}")))
}

/// Like [`process_word`], then splits the result into words (quoted text stays one word,
/// the value of a variable is split at whitespace), as Docker does for EXPOSE.
pub(crate) fn process_words(
    word: &str,
    escape: char,
    env: &EnvList,
) -> Result<Vec<String>, LexError> {
    let mut lexer = Lexer::new(word, escape, env);
    let mut words = Words::default();
    lexer
        .process_stop_on(None, false, Some(&mut words))
        .map_err(|e| LexError(format!("failed to process {word:?}: {e}")))?;
    Ok(words.finish())
}

#[derive(Default)]
struct Words {
    words: Vec<String>,
    buf: String,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.buf.is_empty() {
                self.words.push(std::mem::take(&mut self.buf));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        self.buf.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, s: &str) {
        for ch in s.chars() {
            self.add_char(ch);
        }
    }

    fn add_raw_string(&mut self, s: &str) {
        self.buf.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.buf.is_empty() {
            self.words.push(std::mem::take(&mut self.buf));
        }
        self.words
    }
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    raw_escapes: bool,
    env: &'a EnvList,
}

impl<'a> Lexer<'a> {
    fn new(word: &str, escape: char, env: &'a EnvList) -> Lexer<'a> {
        Lexer {
            chars: word.chars().collect(),
            pos: 0,
            escape,
            raw_escapes: false,
            env,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let ch = self.peek();
        if ch.is_some() {
            self.pos += 1;
        }
        ch
    }

    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
        words: Option<&mut Words>,
    ) -> Result<String, LexError> {
        let saved = self.raw_escapes;
        self.raw_escapes = raw_escapes;
        let result = self.stop_on(stop, words);
        self.raw_escapes = saved;
        result
    }

    fn stop_on(
        &mut self,
        stop: Option<char>,
        mut words: Option<&mut Words>,
    ) -> Result<String, LexError> {
        let mut result = String::new();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.next();
                return Ok(result);
            }
            match ch {
                '$' => {
                    let value = self.process_dollar()?;
                    result.push_str(&value);
                    if let Some(w) = words.as_deref_mut() {
                        w.add_string(&value);
                    }
                }
                '\'' | '"' | '<' => {
                    let text = match ch {
                        '\'' => self.single_quote()?,
                        '"' => self.double_quote()?,
                        _ => self.possible_heredoc(),
                    };
                    result.push_str(&text);
                    if let Some(w) = words.as_deref_mut() {
                        w.add_raw_string(&text);
                    }
                }
                _ => {
                    self.next();
                    if ch == self.escape {
                        if self.raw_escapes {
                            result.push(ch);
                            if let Some(w) = words.as_deref_mut() {
                                w.add_raw_char(ch);
                            }
                        }
                        // The escape character escapes the next one; at the end it is dropped.
                        let Some(escaped) = self.next() else { break };
                        result.push(escaped);
                        if let Some(w) = words.as_deref_mut() {
                            w.add_raw_char(escaped);
                        }
                    } else {
                        result.push(ch);
                        if let Some(w) = words.as_deref_mut() {
                            w.add_char(ch);
                        }
                    }
                }
            }
        }
        if let Some(stop) = stop {
            return lex_err(format!(
                "unexpected end of statement while looking for matching {stop}"
            ));
        }
        Ok(result)
    }

    fn single_quote(&mut self) -> Result<String, LexError> {
        self.next();
        let mut out = String::new();
        loop {
            match self.next() {
                None => {
                    return lex_err(
                        "unexpected end of statement while looking for matching single-quote",
                    )
                }
                Some('\'') => return Ok(out),
                Some(ch) => out.push(ch),
            }
        }
    }

    fn double_quote(&mut self) -> Result<String, LexError> {
        self.next();
        let mut out = String::new();
        loop {
            match self.peek() {
                None => {
                    return lex_err(
                        "unexpected end of statement while looking for matching double-quote",
                    )
                }
                Some('"') => {
                    self.next();
                    return Ok(out);
                }
                Some('$') => {
                    let value = self.process_dollar()?;
                    out.push_str(&value);
                }
                Some(_) => {
                    let mut ch = self.next().unwrap_or_default();
                    if ch == self.escape {
                        if self.raw_escapes {
                            out.push(ch);
                        }
                        match self.peek() {
                            // An escape at the very end is dropped (the quote is unterminated).
                            None => continue,
                            Some(next) if next == '"' || next == '$' || next == self.escape => {
                                ch = next;
                                self.next();
                            }
                            // Other escapes stay as written inside double quotes.
                            Some(_) => {}
                        }
                    }
                    out.push(ch);
                }
            }
        }
    }

    fn possible_heredoc(&mut self) -> String {
        self.next();
        if self.peek() != Some('<') {
            return "<".to_string();
        }
        self.next();
        let mut out = "<<".to_string();
        while let Some(ch @ ('\t' | '\r' | ' ')) = self.peek() {
            out.push(ch);
            self.next();
        }
        out
    }

    fn lookup(&self, name: &str) -> Option<String> {
        self.env.get(name).map(str::to_string)
    }

    fn process_dollar(&mut self) -> Result<String, LexError> {
        self.next();
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok(self.lookup(&name).unwrap_or_default());
        }
        self.next();
        match self.peek() {
            None => return lex_err("syntax error: missing '}'"),
            Some('{' | '}' | ':') => return lex_err("syntax error: bad substitution"),
            Some(_) => {}
        }
        let name = self.process_name();
        let Some(first) = self.next() else {
            return lex_err("syntax error: missing '}'");
        };
        match first {
            '}' => Ok(self.lookup(&name).unwrap_or_default()),
            ':' | '+' | '-' | '?' | '#' | '%' => {
                let mut modifier = first.to_string();
                let mut op = first;
                let null_is_unset = first == ':';
                if null_is_unset {
                    let Some(after) = self.next() else {
                        return lex_err("syntax error: missing '}'");
                    };
                    op = after;
                    modifier.push(after);
                }
                let pattern_op = op == '#' || op == '%';
                if null_is_unset && pattern_op {
                    return lex_err(format!("unsupported modifier ({modifier}) in substitution"));
                }
                let word = self.stop_on_closing(pattern_op)?;
                let value = self.lookup(&name);
                let empty_or_unset = match &value {
                    None => true,
                    Some(v) => null_is_unset && v.is_empty(),
                };
                match op {
                    '-' => Ok(if empty_or_unset {
                        word
                    } else {
                        value.unwrap_or_default()
                    }),
                    '+' => Ok(if empty_or_unset { String::new() } else { word }),
                    '?' => match value {
                        None => {
                            let msg = if word.is_empty() {
                                "is not allowed to be unset".to_string()
                            } else {
                                word
                            };
                            lex_err(format!("{name}: {msg}"))
                        }
                        Some(v) if null_is_unset && v.is_empty() => {
                            let msg = if word.is_empty() {
                                "is not allowed to be empty".to_string()
                            } else {
                                word
                            };
                            lex_err(format!("{name}: {msg}"))
                        }
                        Some(v) => Ok(v),
                    },
                    '#' | '%' => {
                        let value = value.unwrap_or_default();
                        let (greedy, pattern) = match word.strip_prefix(op) {
                            Some(rest) => (true, rest.to_string()),
                            None => (false, word),
                        };
                        let pattern = ShellPattern::parse(&pattern)?;
                        Ok(if op == '#' {
                            pattern.trim_prefix(&value, greedy)
                        } else {
                            pattern.trim_suffix(&value, greedy)
                        })
                    }
                    _ => lex_err(format!("unsupported modifier ({modifier}) in substitution")),
                }
            }
            '/' => {
                let replace_all = self.peek() == Some('/');
                if replace_all {
                    self.next();
                }
                let pattern = match self.process_stop_on(Some('/'), true, None) {
                    Ok(p) => p,
                    Err(_) if self.peek().is_none() => {
                        return lex_err("syntax error: missing '/' in ${}")
                    }
                    Err(e) => return Err(e),
                };
                let replacement = self.stop_on_closing(true)?;
                let value = self.lookup(&name).unwrap_or_default();
                let pattern = ShellPattern::parse(&pattern)?;
                Ok(pattern.replace(&value, &replacement, replace_all))
            }
            other => lex_err(format!("unsupported modifier ({other}) in substitution")),
        }
    }

    fn stop_on_closing(&mut self, raw_escapes: bool) -> Result<String, LexError> {
        match self.process_stop_on(Some('}'), raw_escapes, None) {
            Ok(word) => Ok(word),
            Err(_) if self.peek().is_none() => lex_err("syntax error: missing '}'"),
            Err(e) => Err(e),
        }
    }

    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_numeric() {
                while let Some(d) = self.peek().filter(|c| c.is_numeric()) {
                    name.push(d);
                    self.next();
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.next();
                return ch.to_string();
            }
            if !(ch.is_alphabetic() || ch.is_numeric() || ch == '_') {
                break;
            }
            name.push(ch);
            self.next();
        }
        name
    }
}

/// A shell pattern of `${var#pattern}`, `${var%pattern}` and `${var/pattern/repl}`:
/// `*` any string, `?` any character, `\` escapes `*`, `?`, `\`, `}` and `/`.
#[derive(Debug)]
struct ShellPattern {
    toks: Vec<PatTok>,
}

#[derive(Debug, Clone, Copy)]
enum PatTok {
    Lit(char),
    AnyString,
    AnyChar,
}

impl ShellPattern {
    fn parse(pattern: &str) -> Result<ShellPattern, LexError> {
        let mut toks = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(ch) = chars.next() {
            match ch {
                '*' => toks.push(PatTok::AnyString),
                '?' => toks.push(PatTok::AnyChar),
                '\\' => match chars.peek().copied() {
                    Some('}' | '/') => {}
                    Some(next @ ('*' | '?' | '\\')) => {
                        chars.next();
                        toks.push(PatTok::Lit(next));
                    }
                    Some(other) => {
                        return lex_err(format!(
                        "invalid pattern ({pattern}) in substitution: invalid escape '\\{other}'"
                    ))
                    }
                    None => {
                        return lex_err(format!(
                            "invalid pattern ({pattern}) in substitution: trailing backslash"
                        ))
                    }
                },
                other => toks.push(PatTok::Lit(other)),
            }
        }
        Ok(ShellPattern { toks })
    }

    /// Whether the pattern matches all of `s`.
    fn matches(&self, s: &[char]) -> bool {
        // ok[t][i]: toks[t..] matches s[i..].
        let (n_toks, n) = (self.toks.len(), s.len());
        let mut next_row = vec![false; n + 1];
        next_row[n] = true;
        for t in (0..n_toks).rev() {
            let mut row = vec![false; n + 1];
            for i in (0..=n).rev() {
                row[i] = match self.toks[t] {
                    PatTok::Lit(c) => i < n && s[i] == c && next_row[i + 1],
                    PatTok::AnyChar => i < n && next_row[i + 1],
                    PatTok::AnyString => next_row[i] || (i < n && row[i + 1]),
                };
            }
            next_row = row;
        }
        next_row[0]
    }

    fn trim_prefix(&self, value: &str, longest: bool) -> String {
        let chars: Vec<char> = value.chars().collect();
        let mut lengths: Vec<usize> = (0..=chars.len()).collect();
        if longest {
            lengths.reverse();
        }
        for len in lengths {
            if self.matches(&chars[..len]) {
                return chars[len..].iter().collect();
            }
        }
        value.to_string()
    }

    fn trim_suffix(&self, value: &str, longest: bool) -> String {
        let chars: Vec<char> = value.chars().collect();
        let mut lengths: Vec<usize> = (0..=chars.len()).collect();
        if longest {
            lengths.reverse();
        }
        for len in lengths {
            let start = chars.len() - len;
            if self.matches(&chars[start..]) {
                return chars[..start].iter().collect();
            }
        }
        value.to_string()
    }

    /// The longest match starting at `start`, as an end index.
    fn longest_match_at(&self, chars: &[char], start: usize) -> Option<usize> {
        (start..=chars.len())
            .rev()
            .find(|&end| self.matches(&chars[start..end]))
    }

    fn replace(&self, value: &str, replacement: &str, all: bool) -> String {
        let chars: Vec<char> = value.chars().collect();
        let mut out = String::new();
        let mut i = 0;
        let mut replaced_once = false;
        let mut last_match_end: Option<usize> = None;
        while i <= chars.len() {
            if all || !replaced_once {
                if let Some(end) = self.longest_match_at(&chars, i) {
                    // An empty match right after a previous match is skipped, as Go does.
                    if !(end == i && last_match_end == Some(i)) {
                        out.push_str(replacement);
                        replaced_once = true;
                        last_match_end = Some(end);
                        if end > i {
                            i = end;
                            continue;
                        }
                    }
                }
            }
            if let Some(&c) = chars.get(i) {
                out.push(c);
            }
            i += 1;
        }
        out
    }
}

/// Splits the arguments of ENV, LABEL and ARG into words at unquoted whitespace, keeping
/// quotes and escapes (they are removed later by [`process_word`]). Docker's `parseWords`.
pub(crate) fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut buf = String::new();
    let mut pos = 0;
    while pos < chars.len() {
        let mut ch = chars[pos];
        if phase == Phase::Spaces {
            if ch.is_whitespace() {
                pos += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if blank_ok || !buf.is_empty() {
                    words.push(std::mem::take(&mut buf));
                }
                buf.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if ch == escape {
                if pos + 1 == chars.len() {
                    pos += 1;
                    continue;
                }
                // Outside quotes the escape and the escaped character are both kept.
                buf.push(ch);
                pos += 1;
                ch = chars[pos];
            }
            buf.push(ch);
            pos += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
        }
        if ch == escape && quote != '\'' {
            if pos + 1 == chars.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            buf.push(ch);
            pos += 1;
            ch = chars[pos];
        }
        buf.push(ch);
        pos += 1;
    }
    if phase != Phase::Spaces && (blank_ok || !buf.is_empty()) {
        words.push(buf);
    }
    words
}

/// Splits the leading `--flag[=value]` words off an instruction's arguments (quotes and
/// escapes inside a flag word are processed). Returns the flags and the remaining text.
/// A `--` word ends the flags. Docker's `extractBuilderFlags`.
pub(crate) fn extract_flags(line: &str, escape: char) -> (Vec<String>, String) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<char> = line.chars().collect();
    let rest_from = |pos: usize| chars[pos..].iter().collect::<String>();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut pos = 0;
    loop {
        let at_end = pos == chars.len();
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            let ch = chars[pos];
            if ch.is_whitespace() {
                pos += 1;
                continue;
            }
            if ch != '-' || chars.get(pos + 1) != Some(&'-') {
                return (words, rest_from(pos));
            }
            phase = Phase::Word;
        }
        if at_end {
            if word != "--" && (blank_ok || !word.is_empty()) {
                words.push(word);
            }
            break;
        }
        let mut ch = chars[pos];
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if word == "--" {
                    return (words, rest_from(pos));
                }
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                pos += 1;
                continue;
            }
            if ch == escape {
                if pos + 1 == chars.len() {
                    pos += 1;
                    continue;
                }
                pos += 1;
                ch = chars[pos];
            }
            word.push(ch);
            pos += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
            pos += 1;
            continue;
        }
        if ch == escape {
            if pos + 1 == chars.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            ch = chars[pos];
        }
        word.push(ch);
        pos += 1;
    }
    (words, String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> EnvList {
        let mut e = EnvList::default();
        for (k, v) in pairs {
            e.set(k, v);
        }
        e
    }

    fn word(w: &str, e: &EnvList) -> String {
        process_word(w, '\\', e).unwrap()
    }

    #[test]
    fn plain_and_braced_variables_expand_and_unset_ones_are_empty() {
        let e = env(&[("A", "x"), ("B_2", "y")]);
        assert_eq!(word("$A/${B_2}/$C/${C}", &e), "x/y//");
        assert_eq!(word("$A$B_2", &e), "xy");
        assert_eq!(word("pre${A}post", &e), "prexpost");
    }

    #[test]
    fn a_dollar_without_a_name_stays_literal() {
        let e = env(&[]);
        assert_eq!(word("cost: 5$", &e), "cost: 5$");
        assert_eq!(word("a$/b", &e), "a$/b");
    }

    #[test]
    fn default_and_alternative_modifiers_follow_the_shell() {
        let e = env(&[("SET", "v"), ("EMPTY", "")]);
        assert_eq!(word("${SET:-d}", &e), "v");
        assert_eq!(word("${EMPTY:-d}", &e), "d");
        assert_eq!(word("${EMPTY-d}", &e), "");
        assert_eq!(word("${UNSET-d}", &e), "d");
        assert_eq!(word("${UNSET:-d}", &e), "d");
        assert_eq!(word("${SET:+alt}", &e), "alt");
        assert_eq!(word("${EMPTY:+alt}", &e), "");
        assert_eq!(word("${EMPTY+alt}", &e), "alt");
        assert_eq!(word("${UNSET:+alt}", &e), "");
        assert_eq!(word("${UNSET:-$SET/x}", &e), "v/x");
        assert_eq!(word("${UNSET:-${ALSO:-deep}}", &e), "deep");
    }

    #[test]
    fn required_modifier_fails_with_the_message() {
        let e = env(&[("EMPTY", "")]);
        let err = process_word("${NOPE?must be set}", '\\', &e).unwrap_err();
        assert!(err.0.contains("NOPE: must be set"), "{err}");
        let err = process_word("${EMPTY:?}", '\\', &e).unwrap_err();
        assert!(err.0.contains("EMPTY: is not allowed to be empty"), "{err}");
        assert_eq!(word("${EMPTY?}", &e), "");
    }

    #[test]
    fn prefix_suffix_and_replace_modifiers_use_shell_patterns() {
        let e = env(&[("V", "v1.2.3"), ("P", "a/b/c.tar.gz")]);
        assert_eq!(word("${V#v}", &e), "1.2.3");
        assert_eq!(word("${P#*/}", &e), "b/c.tar.gz");
        assert_eq!(word("${P##*/}", &e), "c.tar.gz");
        assert_eq!(word("${P%.*}", &e), "a/b/c.tar");
        assert_eq!(word("${P%%.*}", &e), "a/b/c");
        assert_eq!(word("${V/./-}", &e), "v1-2.3");
        assert_eq!(word("${V//./-}", &e), "v1-2-3");
        assert!(process_word("${V:#v}", '\\', &e).is_err());
    }

    #[test]
    fn escapes_and_quotes_are_removed() {
        let e = env(&[("A", "x")]);
        assert_eq!(word(r"\$A", &e), "$A");
        assert_eq!(word(r"'$A'", &e), "$A");
        assert_eq!(word(r#""$A""#, &e), "x");
        assert_eq!(word(r#""\$A""#, &e), "$A");
        assert_eq!(word(r#""a\b""#, &e), r"a\b");
        assert_eq!(word(r#""say \"hi\"""#, &e), r#"say "hi""#);
        assert_eq!(word(r"a\ b", &e), "a b");
        assert_eq!(word(r"trailing\", &e), "trailing");
    }

    #[test]
    fn backtick_escape_replaces_backslash() {
        let e = env(&[("A", "x")]);
        assert_eq!(process_word(r"C:\dir\`$A", '`', &e).unwrap(), r"C:\dir\$A");
    }

    #[test]
    fn bad_substitutions_are_errors() {
        let e = env(&[]);
        for bad in [
            "${", "${}", "${:x}", "${A", "${A:-x", "'open", "\"open", "${A:x}",
        ] {
            assert!(process_word(bad, '\\', &e).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn process_words_splits_variable_values_but_not_quotes() {
        let e = env(&[("PORTS", "80 443")]);
        assert_eq!(
            process_words("$PORTS 8080", '\\', &e).unwrap(),
            vec!["80", "443", "8080"]
        );
        assert_eq!(
            process_words("\"$PORTS\"", '\\', &e).unwrap(),
            vec!["80 443"]
        );
    }

    #[test]
    fn parse_words_keeps_quotes_and_splits_at_unquoted_space() {
        assert_eq!(
            parse_words(r#"a=1 b="x y" c='q r' d=e\ f"#, '\\'),
            vec!["a=1", r#"b="x y""#, "c='q r'", r"d=e\ f"]
        );
        assert_eq!(parse_words(r#"k="""#, '\\'), vec![r#"k="""#]);
        assert_eq!(parse_words("  ", '\\'), Vec::<String>::new());
    }

    #[test]
    fn flags_are_extracted_until_the_first_plain_word() {
        let (flags, rest) = extract_flags("--chown=app:app --chmod=644 src dst", '\\');
        assert_eq!(flags, vec!["--chown=app:app", "--chmod=644"]);
        assert_eq!(rest, "src dst");
        let (flags, rest) = extract_flags(r#"--chown="a b" -- --weird dst"#, '\\');
        assert_eq!(flags, vec!["--chown=a b"]);
        assert_eq!(rest.trim(), "--weird dst");
        let (flags, rest) = extract_flags("-x", '\\');
        assert!(flags.is_empty());
        assert_eq!(rest, "-x");
        let (flags, rest) = extract_flags("--link", '\\');
        assert_eq!(flags, vec!["--link"]);
        assert_eq!(rest, "");
    }
}

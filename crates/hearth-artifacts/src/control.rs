//! Debian control-format text (`apt-cache show`, `dpkg` status files):
//! stanzas of `Field: value` lines separated by blank lines, continuation
//! lines starting with a space or tab. Pure parsing, no I/O.

/// One stanza: its fields in order, continuation lines joined with a space.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Stanza(Vec<(String, String)>);

impl Stanza {
    /// The value of `name` (case-insensitive), if present.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Every stanza of `text`.
pub(crate) fn stanzas(text: &str) -> Vec<Stanza> {
    let mut out = vec![Stanza::default()];
    for line in text.lines() {
        let current = out.last_mut().expect("never empty");
        if line.trim().is_empty() {
            if !current.0.is_empty() {
                out.push(Stanza::default());
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = current.0.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            current.0.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out.retain(|s| !s.0.is_empty());
    out
}

/// Field `field` of the first stanza of `text`.
pub(crate) fn first_field(text: &str, field: &str) -> Option<String> {
    stanzas(text)
        .first()
        .and_then(|s| s.get(field))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanzas_and_continuations() {
        let text =
            "Package: a\nVersion: 1\nDescription: one\n two\n\n\nPackage: b\nSource: s (2)\n";
        let s = stanzas(text);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].get("description"), Some("one two"));
        assert_eq!(s[1].get("Source"), Some("s (2)"));
        assert_eq!(s[1].get("Version"), None);
        assert_eq!(first_field(text, "Version").as_deref(), Some("1"));
        assert!(stanzas("").is_empty());
    }
}

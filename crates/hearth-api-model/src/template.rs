//! `requestUri` templates (`/lit/{label}/{greedy+}`): their syntax, and
//! how one template matches a request path:
//! - the raw path (which routing has already checked: no `?`/`#`, no dot or
//!   empty segments) is split on `/`, and each segment percent-decoded on
//!   its own, so an ARN label sent as `arn%3Aaws%3A...%2Fx` arrives as one
//!   label value;
//! - literal segments must equal the decoded segment exactly; a `{label}`
//!   takes exactly one non-empty segment; a `{label+}` takes one or more
//!   non-empty segments, joined back with `/`;
//! - empty segments (`//`, a trailing `/`) never match, and a segment that
//!   does not decode to UTF-8 matches nothing.
//!
//! Pure functions; no I/O.

use percent_encoding::percent_decode_str;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Literal(String),
    Label(String),
    Greedy(String),
}

/// A parsed `requestUri` (path part only; a `?query` part of the template is
/// kept verbatim but not used for routing — this model has none).
#[derive(Debug, Clone)]
pub(crate) struct UriTemplate {
    segments: Vec<Segment>,
}

impl UriTemplate {
    pub(crate) fn parse(uri: &str) -> Result<Self, String> {
        let path = uri.split('?').next().unwrap_or_default();
        let rest = path
            .strip_prefix('/')
            .ok_or_else(|| "does not start with '/'".to_string())?;
        let mut segments = Vec::new();
        if !rest.is_empty() {
            for seg in rest.split('/') {
                if seg.is_empty() {
                    return Err("empty segment".into());
                }
                if let Some(inner) = seg.strip_prefix('{') {
                    let inner = inner
                        .strip_suffix('}')
                        .ok_or_else(|| format!("unterminated label in {seg:?}"))?;
                    let (name, greedy) = match inner.strip_suffix('+') {
                        Some(n) => (n, true),
                        None => (inner, false),
                    };
                    if name.is_empty() || name.contains(['{', '}']) {
                        return Err(format!("bad label {seg:?}"));
                    }
                    segments.push(if greedy {
                        Segment::Greedy(name.to_string())
                    } else {
                        Segment::Label(name.to_string())
                    });
                } else if seg.contains(['{', '}']) {
                    return Err(format!("labels must span a whole segment: {seg:?}"));
                } else {
                    segments.push(Segment::Literal(seg.to_string()));
                }
            }
        }
        if segments
            .iter()
            .filter(|s| matches!(s, Segment::Greedy(_)))
            .count()
            > 1
        {
            return Err("more than one greedy label".into());
        }
        Ok(Self { segments })
    }

    pub(crate) fn label_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Label(n) | Segment::Greedy(n) => Some(n.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// A key that identifies templates matching the same set of paths.
    pub(crate) fn route_key(&self) -> String {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => format!("/{l}"),
                Segment::Label(_) => "/{}".to_string(),
                Segment::Greedy(_) => "/{+}".to_string(),
            })
            .collect()
    }

    pub(crate) fn literal_count(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count()
    }

    /// Match decoded segments (`None` = segment not valid UTF-8).
    pub(crate) fn matches(&self, segs: &[Option<String>]) -> Option<Vec<(String, String)>> {
        let mut labels = Vec::new();
        if match_from(&self.segments, segs, &mut labels) {
            Some(labels)
        } else {
            None
        }
    }
}

fn match_from(
    tpl: &[Segment],
    segs: &[Option<String>],
    labels: &mut Vec<(String, String)>,
) -> bool {
    let Some((first, tpl_rest)) = tpl.split_first() else {
        return segs.is_empty();
    };
    match first {
        Segment::Literal(lit) => match segs.split_first() {
            Some((Some(s), rest)) if s == lit => match_from(tpl_rest, rest, labels),
            _ => false,
        },
        Segment::Label(name) => match segs.split_first() {
            Some((Some(s), rest)) if !s.is_empty() => {
                labels.push((name.clone(), s.clone()));
                if match_from(tpl_rest, rest, labels) {
                    true
                } else {
                    labels.pop();
                    false
                }
            }
            _ => false,
        },
        Segment::Greedy(name) => {
            // Longest first; at least one segment; every segment non-empty.
            let max_take = segs.len().saturating_sub(tpl_rest.len());
            for take in (1..=max_take).rev() {
                let taken = &segs[..take];
                if !taken
                    .iter()
                    .all(|s| matches!(s.as_deref(), Some(x) if !x.is_empty()))
                {
                    continue;
                }
                let value = taken
                    .iter()
                    .map(|s| s.as_deref().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join("/");
                labels.push((name.clone(), value));
                if match_from(tpl_rest, &segs[take..], labels) {
                    return true;
                }
                labels.pop();
            }
            false
        }
    }
}

/// Split a raw path into percent-decoded segments; `None` if the path does
/// not start with `/`. The whole path is split: a `?` or `#` in it is
/// segment text here (routing refuses such paths before this).
pub(crate) fn decode_segments(raw_path: &str) -> Option<Vec<Option<String>>> {
    let path = raw_path.strip_prefix('/')?;
    if path.is_empty() {
        return Some(Vec::new());
    }
    Some(
        path.split('/')
            .map(|seg| {
                percent_decode_str(seg)
                    .decode_utf8()
                    .ok()
                    .map(|s| s.into_owned())
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(p: &str) -> Vec<Option<String>> {
        decode_segments(p).unwrap()
    }

    #[test]
    fn template_parsing() {
        let t = UriTemplate::parse("/a/{b}/c/{d+}").unwrap();
        assert_eq!(t.label_names().collect::<Vec<_>>(), ["b", "d"]);
        assert_eq!(t.route_key(), "/a/{}/c/{+}");
        assert!(UriTemplate::parse("a/b").is_err());
        assert!(UriTemplate::parse("/a//b").is_err());
        assert!(UriTemplate::parse("/a/x{b}").is_err());
        assert!(UriTemplate::parse("/{a+}/{b+}").is_err());
        assert!(UriTemplate::parse("/").unwrap().segments.is_empty());
    }

    #[test]
    fn greedy_labels() {
        let t = UriTemplate::parse("/k/{key+}/meta").unwrap();
        let m = t.matches(&segs("/k/a/b%2Fc/d/meta")).unwrap();
        assert_eq!(m, [("key".to_string(), "a/b/c/d".to_string())]);
        assert!(t.matches(&segs("/k/meta")).is_none());
        assert!(t.matches(&segs("/k/a//b/meta")).is_none());
        let t = UriTemplate::parse("/k/{key+}").unwrap();
        assert_eq!(t.matches(&segs("/k/x")).unwrap()[0].1, "x");
        assert!(t.matches(&segs("/k/x/")).is_none());
    }

    #[test]
    fn invalid_utf8_segment_matches_nothing() {
        let t = UriTemplate::parse("/a/{b}").unwrap();
        assert!(t.matches(&segs("/a/%FF")).is_none());
        assert!(t.matches(&segs("/a/%C3%A9")).is_some());
    }

    #[test]
    fn root_and_relative_paths() {
        assert!(decode_segments("").is_none());
        assert!(decode_segments("x/y").is_none());
        assert_eq!(decode_segments("/").unwrap().len(), 0);
        assert_eq!(decode_segments("/a?x=/b").unwrap().len(), 2);
    }
}

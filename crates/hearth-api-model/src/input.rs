//! Request decoding: turning a routed request's labels, raw query string,
//! headers and body into the operation's validated input object.
//!
//! This module owns where each input member is read from and how text is
//! converted to typed JSON values:
//! - `uri` members from the route's decoded labels;
//! - `querystring` members from the raw query, cut into parameters and
//!   percent-decoded exactly as the SigV4 canonical query covers them
//!   ([`hearth_sigv4::query_params`]; `+` stays a literal plus, AWS clients
//!   send spaces as `%20`; a leading `?` is part of the first key). A query
//!   with more than [`MAX_QUERY_PARAMS`] parameters (more than a signature
//!   covers) is refused whole, never read in part. The canonical query is
//!   sorted, so the signature does not fix the order of repeated keys:
//!   list members take repeated keys (`tagKeys=a&tagKeys=b`) in the order
//!   sent, which their meaning must not depend on; every other member, and
//!   every key of a map member, must appear at most once
//!   ([`ConstraintKind::Repeated`]: no copy of `maxResults=1&maxResults=50`
//!   may win). Unknown keys are ignored, repeated or not;
//! - `header` members case-insensitively (list headers split on `,`);
//! - every other member from the JSON body, by its JSON key
//!   (`locationName`, else its name). The body is parsed only when the input
//!   has body members: an empty (or all-whitespace) body is `{}`, anything
//!   else must be a JSON object. Unknown members are ignored and dropped;
//!   `null` means "not set".
//!
//! Text is converted by the target shape: integers/longs from decimal text
//! (`"abc"` is a type error, `"51"` a range error), booleans from
//! `true`/`false`, timestamps from epoch seconds. Checking the converted
//! values is delegated to `validate`.

use serde_json::{Map, Number, Value};

use crate::model::{Location, Model, Operation, Shape, ShapeKind};
use crate::validate::{type_constraint, ConstraintKind, Echo, Mode, ValidationError, Validator};

/// Why a request's input was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// One or more constraints broken: answer 400 `ValidationException`
    /// with the `Display` text as `message`.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// The body is not JSON, or not a JSON object at the top level.
    #[error("{detail}")]
    BodyNotJson { detail: String },
    /// The query string has more than `max` ([`MAX_QUERY_PARAMS`])
    /// parameters: more than a signature covers, so none of it is read.
    #[error("The query string has more than {max} parameters.")]
    TooManyQueryParameters { max: usize },
}

/// Most query parameters read: [`hearth_sigv4::MAX_QUERY_PARAMS`], the most a
/// verified signature covers.
pub const MAX_QUERY_PARAMS: usize = hearth_sigv4::MAX_QUERY_PARAMS;

impl InputError {
    /// The AWS error type the server should report (`x-amzn-errortype`);
    /// all are HTTP 400. `SerializationException` is what AWS rest-json
    /// services answer for unparseable bodies; it is not a modelled shape,
    /// so SDKs surface it as a generic service error with that code.
    pub fn error_type(&self) -> &'static str {
        match self {
            InputError::Validation(_) | InputError::TooManyQueryParameters { .. } => {
                "ValidationException"
            }
            InputError::BodyNotJson { .. } => "SerializationException",
        }
    }
}

/// A value read from the request before type checking.
enum Raw {
    Absent,
    Present(Value),
    /// Conversion failed; the error is already recorded.
    Failed,
}

/// One `key=value` pair of the query, key decoded (lossily), value decoded
/// (`None` if it is not UTF-8 after decoding).
type QueryPair = (String, Option<String>);

/// The query's parameters, split and decoded exactly as the signature covers
/// them ([`hearth_sigv4::query_params`], [`hearth_sigv4::percent_decode`]);
/// more than [`MAX_QUERY_PARAMS`] is an error, never a truncation.
fn parse_query(raw_query: &str) -> Result<Vec<QueryPair>, InputError> {
    let mut out = Vec::new();
    for (k, v) in hearth_sigv4::query_params(raw_query) {
        if out.len() == MAX_QUERY_PARAMS {
            return Err(InputError::TooManyQueryParameters {
                max: MAX_QUERY_PARAMS,
            });
        }
        let key = String::from_utf8_lossy(&hearth_sigv4::percent_decode(k)).into_owned();
        let value = String::from_utf8(hearth_sigv4::percent_decode(v)).ok();
        out.push((key, value));
    }
    Ok(out)
}

fn parse_body(body: &[u8]) -> Result<Map<String, Value>, InputError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(other) => Err(InputError::BodyNotJson {
            detail: format!(
                "The request body must be a JSON object, not {}",
                json_kind(&other)
            ),
        }),
        Err(e) => Err(InputError::BodyNotJson {
            detail: format!("The request body is not valid JSON: {e}"),
        }),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn is_decimal_integer(s: &str) -> bool {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Records that query parameter `key`, which holds one value, was repeated.
fn repeated_failure(v: &mut Validator<'_>, key: &str, path: &str) {
    v.push(
        path,
        Echo::Hidden,
        ConstraintKind::Repeated,
        format!("Query parameter '{key}' must not be repeated"),
    );
}

impl Model {
    /// Decode and validate an operation's input.
    ///
    /// `labels` are the route's decoded path labels, `raw_query` the query
    /// string as received and as signed, without the `?` that separates it
    /// from the path (a leading `?` belongs to the first key, as in the
    /// signature), `headers` the request headers (names in any case).
    /// Returns the input object with members under their model names,
    /// unknown members dropped.
    pub fn parse_input(
        &self,
        op: &Operation,
        labels: &[(String, String)],
        raw_query: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Value, InputError> {
        let Some(st) = op.input.as_deref().and_then(|i| self.structure(i)) else {
            return Ok(Value::Object(Map::new()));
        };
        let query = parse_query(raw_query)?;
        let has_body_members = st.members.iter().any(|m| m.location == Location::Body);
        let body_obj = if has_body_members {
            parse_body(body)?
        } else {
            Map::new()
        };

        let mut v = Validator::new(self, Mode::Input);
        let mut out = Map::new();
        for m in &st.members {
            let shape = self.shape_unchecked(&m.shape);
            let raw = match m.location {
                Location::Body => match body_obj.get(&m.location_name) {
                    None | Some(Value::Null) => Raw::Absent,
                    Some(val) => Raw::Present(val.clone()),
                },
                Location::Uri => match labels.iter().find(|(n, _)| *n == m.location_name) {
                    None => Raw::Absent,
                    Some((_, text)) => self.read_text(&mut v, shape, text, &m.name),
                },
                Location::QueryString => {
                    self.read_query(&mut v, shape, &query, &m.location_name, &m.name, st)
                }
                Location::Header => {
                    let values: Vec<&str> = headers
                        .iter()
                        .filter(|(n, _)| n.eq_ignore_ascii_case(&m.location_name))
                        .map(|(_, val)| val.as_str())
                        .collect();
                    self.read_header(&mut v, shape, &values, &m.name)
                }
                Location::Headers => {
                    let prefix = m.location_name.to_ascii_lowercase();
                    let mut map = Map::new();
                    for (n, val) in headers {
                        let lower = n.to_ascii_lowercase();
                        if let Some(rest) = lower.strip_prefix(&prefix) {
                            map.entry(rest.to_string())
                                .or_insert_with(|| Value::String(val.clone()));
                        }
                    }
                    if map.is_empty() {
                        Raw::Absent
                    } else {
                        Raw::Present(Value::Object(map))
                    }
                }
                Location::StatusCode => Raw::Absent,
            };
            match raw {
                Raw::Absent => {
                    if st.is_required(&m.name) {
                        v.missing(&m.name);
                    }
                }
                Raw::Failed => {}
                Raw::Present(val) => {
                    if let Some(clean) = v.check(shape, &val, &m.name) {
                        out.insert(m.name.clone(), clean);
                    }
                }
            }
        }
        v.finish()?;
        Ok(Value::Object(out))
    }

    /// The name of the idempotency-token member if the input sets it, with
    /// its value (convenience over [`Model::op_idempotency_member`]).
    pub fn idempotency_token<'v>(&self, op: &Operation, input: &'v Value) -> Option<&'v str> {
        input.get(self.op_idempotency_member(op)?)?.as_str()
    }

    fn type_failure(
        &self,
        v: &mut Validator<'_>,
        shape: &Shape,
        text: Option<&str>,
        path: &str,
    ) -> Raw {
        let echo = match text {
            Some(t) if !shape.sensitive => v.echo(shape, &Value::String(t.to_string())),
            _ => Echo::Hidden,
        };
        v.push(
            path,
            echo,
            ConstraintKind::Type,
            type_constraint(&shape.kind),
        );
        Raw::Failed
    }

    /// Convert label/query/header text to a JSON value of the shape's type.
    fn read_text(&self, v: &mut Validator<'_>, shape: &Shape, text: &str, path: &str) -> Raw {
        let value = match &shape.kind {
            ShapeKind::String { .. } | ShapeKind::Blob { .. } => {
                Some(Value::String(text.to_string()))
            }
            ShapeKind::Integer { .. } | ShapeKind::Long { .. } => {
                if let Ok(i) = text.parse::<i64>() {
                    Some(Value::Number(i.into()))
                } else if is_decimal_integer(text) {
                    // Too large for i64: let the range check report it.
                    text.parse::<f64>()
                        .ok()
                        .and_then(Number::from_f64)
                        .map(Value::Number)
                } else {
                    None
                }
            }
            ShapeKind::Timestamp if text.parse::<i64>().is_ok() => {
                text.parse::<i64>().ok().map(|i| Value::Number(i.into()))
            }
            ShapeKind::Float { .. } | ShapeKind::Timestamp => text
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .and_then(Number::from_f64)
                .map(Value::Number),
            ShapeKind::Boolean => match text {
                "true" => Some(Value::Bool(true)),
                "false" => Some(Value::Bool(false)),
                _ => None,
            },
            ShapeKind::List { .. } | ShapeKind::Map { .. } | ShapeKind::Structure(_) => None,
        };
        match value {
            Some(val) => Raw::Present(val),
            None => self.type_failure(v, shape, Some(text), path),
        }
    }

    fn read_query(
        &self,
        v: &mut Validator<'_>,
        shape: &Shape,
        query: &[QueryPair],
        key: &str,
        path: &str,
        st: &crate::model::StructureShape,
    ) -> Raw {
        match &shape.kind {
            ShapeKind::List { member, .. } => {
                let member_shape = self.shape_unchecked(member);
                let mut items = Vec::new();
                let mut failed = false;
                let mut any = false;
                for (i, (_, val)) in query.iter().filter(|(k, _)| k == key).enumerate() {
                    any = true;
                    let item_path = format!("{path}.{}.member", i + 1);
                    let raw = match val {
                        Some(text) => self.read_text(v, member_shape, text, &item_path),
                        None => self.type_failure(v, member_shape, None, &item_path),
                    };
                    match raw {
                        Raw::Present(x) => items.push(x),
                        _ => failed = true,
                    }
                }
                match (any, failed) {
                    (false, _) => Raw::Absent,
                    (true, true) => Raw::Failed,
                    (true, false) => Raw::Present(Value::Array(items)),
                }
            }
            ShapeKind::Map { .. } => {
                // A map-typed query member takes every parameter that no
                // other query member claims.
                let claimed = |k: &str| {
                    st.members.iter().any(|m| {
                        m.location == Location::QueryString
                            && m.location_name == k
                            && !matches!(self.shape_unchecked(&m.shape).kind, ShapeKind::Map { .. })
                    })
                };
                let mut map = Map::new();
                let mut repeated: Vec<&str> = Vec::new();
                for (i, (k, val)) in query.iter().enumerate() {
                    if claimed(k) {
                        continue;
                    }
                    if query[..i].iter().any(|(earlier, _)| earlier == k) {
                        if !repeated.contains(&k.as_str()) {
                            repeated.push(k);
                        }
                        continue;
                    }
                    if let Some(text) = val {
                        map.insert(k.clone(), Value::String(text.clone()));
                    }
                }
                if !repeated.is_empty() {
                    for k in repeated {
                        repeated_failure(v, k, path);
                    }
                    Raw::Failed
                } else if map.is_empty() {
                    Raw::Absent
                } else {
                    Raw::Present(Value::Object(map))
                }
            }
            _ => {
                let mut found = query.iter().filter(|(k, _)| k == key);
                match (found.next(), found.next()) {
                    (None, _) => Raw::Absent,
                    (Some(_), Some(_)) => {
                        repeated_failure(v, key, path);
                        Raw::Failed
                    }
                    (Some((_, Some(text))), None) => self.read_text(v, shape, text, path),
                    (Some((_, None)), None) => self.type_failure(v, shape, None, path),
                }
            }
        }
    }

    fn read_header(
        &self,
        v: &mut Validator<'_>,
        shape: &Shape,
        values: &[&str],
        path: &str,
    ) -> Raw {
        if values.is_empty() {
            return Raw::Absent;
        }
        match &shape.kind {
            ShapeKind::List { member, .. } => {
                let member_shape = self.shape_unchecked(member);
                let mut items = Vec::new();
                let mut i = 0;
                for part in values.iter().flat_map(|h| h.split(',')) {
                    i += 1;
                    let item_path = format!("{path}.{i}.member");
                    match self.read_text(v, member_shape, part.trim(), &item_path) {
                        Raw::Present(x) => items.push(x),
                        _ => return Raw::Failed,
                    }
                }
                Raw::Present(Value::Array(items))
            }
            _ => self.read_text(v, shape, values[0].trim(), path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = parse_query("?a=1&b=x%20y&&c&d=%2B+&e=%FF&a=2").unwrap();
        assert_eq!(
            q,
            vec![
                ("?a".into(), Some("1".into())),
                ("b".into(), Some("x y".into())),
                ("c".into(), Some(String::new())),
                ("d".into(), Some("++".into())),
                ("e".into(), None),
                ("a".into(), Some("2".into())),
            ]
        );
    }

    #[test]
    fn query_limit() {
        let q = vec!["k=v"; MAX_QUERY_PARAMS].join("&");
        assert_eq!(parse_query(&q).unwrap().len(), MAX_QUERY_PARAMS);
        assert_eq!(
            parse_query(&format!("{q}&x")),
            Err(InputError::TooManyQueryParameters {
                max: MAX_QUERY_PARAMS
            })
        );
        assert!(parse_query(&format!("&&{q}&&")).is_ok());
    }

    /// The pairs a canonical query stands for, read the way `parse_query`
    /// reads pairs, sorted.
    fn signed_view(raw_query: &str) -> Vec<QueryPair> {
        let canonical = hearth_sigv4::canonical_query(raw_query);
        let mut v = parse_query(&canonical).unwrap();
        v.sort();
        v
    }

    proptest::proptest! {
        /// What `parse_query` reads is exactly what the signature covers:
        /// the same pairs, and two queries with the same canonical form
        /// (hence the same signature) read the same up to order.
        #[test]
        fn the_parsed_query_is_the_signed_query(
            q in "[a-zA-Z0-9=&%+?. ~\\u{e9}]{0,40}",
            i in proptest::prelude::any::<proptest::sample::Index>(),
            b in proptest::prelude::prop::sample::select(b"=&%+?.aA0 ".to_vec()),
        ) {
            let mut parsed = parse_query(&q).unwrap();
            parsed.sort();
            proptest::prop_assert_eq!(&parsed, &signed_view(&q));
            if !q.is_empty() {
                let mut bytes = q.clone().into_bytes();
                let i = i.index(bytes.len());
                bytes[i] = b;
                if let Ok(q2) = String::from_utf8(bytes) {
                    if hearth_sigv4::canonical_query(&q2) == hearth_sigv4::canonical_query(&q) {
                        let mut parsed2 = parse_query(&q2).unwrap();
                        parsed2.sort();
                        proptest::prop_assert_eq!(parsed2, parsed);
                    }
                }
            }
        }
    }

    #[test]
    fn body_forms() {
        assert!(parse_body(b"").unwrap().is_empty());
        assert!(parse_body(b" \r\n").unwrap().is_empty());
        assert!(parse_body(b"{}").unwrap().is_empty());
        assert!(matches!(
            parse_body(b"[]"),
            Err(InputError::BodyNotJson { .. })
        ));
        assert!(matches!(
            parse_body(b"{"),
            Err(InputError::BodyNotJson { .. })
        ));
        assert!(matches!(
            parse_body(b"null"),
            Err(InputError::BodyNotJson { .. })
        ));
    }

    #[test]
    fn decimal_detection() {
        assert!(is_decimal_integer("123"));
        assert!(is_decimal_integer("-5"));
        assert!(!is_decimal_integer("-"));
        assert!(!is_decimal_integer("1e3"));
        assert!(!is_decimal_integer("1.0"));
    }
}

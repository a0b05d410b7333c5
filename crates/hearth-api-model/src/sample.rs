//! Synthesising valid values and whole HTTP requests from the model, for
//! tests (this crate's and the API server's).
//!
//! This module owns the sample generator: strings come from the enum, from a
//! hand-picked table for the model's patterned shapes (checked against the
//! pattern at generation time), or from filler text within the length
//! bounds; numbers are the minimum (or 1); unions set their first member;
//! lists and maps get `min` entries (at least one in "full" mode, and
//! always at least one for lists sent in the query string or headers). A request
//! is rendered the way the AWS clients send it: labels fully
//! percent-encoded into the path, query lists as repeated keys, body members
//! as compact JSON (an empty body when there are none).

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{Map, Number, Value};

use crate::model::{Location, Model, Operation, Shape, ShapeKind};

/// Characters the AWS clients percent-encode in labels and query values:
/// everything but RFC 3986 unreserved characters.
pub const AWS_ENCODE_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Hand-picked values for patterned shapes, by shape name.
const PATTERN_SAMPLES: &[(&str, &str)] = &[
    ("AuthTokenKey", "X-aws-proxy-auth"),
    (
        "CloudWatchLoggingLogGroupString",
        "/aws/lambda-microvms/sample",
    ),
    ("CloudWatchLoggingLogStreamString", "sample-stream"),
    ("EnvironmentVariableKey", "SAMPLE_VAR"),
    ("ImageName", "sample-image"),
    ("KmsKeyIdentifier", "alias/sample-key"),
    (
        "MicrovmImageArn",
        "arn:aws:lambda:us-east-1:123456789012:microvm-image:sample-image",
    ),
    ("NonBlankString", "sample"),
    ("RoleArn", "arn:aws:iam::123456789012:role/sample-role"),
    ("TagKey", "sample-key"),
    ("TagValue", "sample-value"),
    (
        "TaggableResource",
        "arn:aws:lambda:us-east-1:123456789012:microvm-image:sample-image",
    ),
    ("Version", "1"),
];

/// Fallbacks tried for patterned shapes missing from the table.
const GENERIC_SAMPLES: &[&str] = &[
    "sample",
    "a",
    "1",
    "A",
    "sample-1",
    "arn:aws:lambda:us-east-1:123456789012:microvm-image:sample",
];

/// A request rendered from a sample input.
#[derive(Debug, Clone)]
pub struct SampleRequest {
    pub method: String,
    /// Raw path, labels percent-encoded.
    pub path: String,
    /// Raw query string (no leading `?`), may be empty.
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The decoded labels a correct router extracts from `path`.
    pub labels: Vec<(String, String)>,
    /// The input object `parse_input` must return for this request.
    pub input: Value,
}

/// A valid value for `shape_name`. With `full`, every optional member is set
/// too (unions still set exactly one); otherwise only required members.
pub fn sample_value(model: &Model, shape_name: &str, full: bool) -> Result<Value, String> {
    gen(model, shape_name, full, 0)
}

/// A valid request for `op` (see [`sample_value`] for `full`).
pub fn sample_request(model: &Model, op: &Operation, full: bool) -> Result<SampleRequest, String> {
    let input = match op.input.as_deref() {
        Some(name) => sample_value(model, name, full)?,
        None => Value::Object(Map::new()),
    };
    render_request(model, op, &input)
}

/// Render an input object as the HTTP request an AWS client would send.
pub fn render_request(
    model: &Model,
    op: &Operation,
    input: &Value,
) -> Result<SampleRequest, String> {
    let mut labels = Vec::new();
    let mut query = Vec::new();
    let mut headers = Vec::new();
    let mut body = Map::new();
    if let (Some(st), Some(obj)) = (
        op.input.as_deref().and_then(|i| model.structure(i)),
        input.as_object(),
    ) {
        for m in &st.members {
            let Some(val) = obj.get(&m.name) else {
                continue;
            };
            match m.location {
                Location::Body => {
                    body.insert(m.location_name.clone(), val.clone());
                }
                Location::Uri => labels.push((m.location_name.clone(), text_of(val)?)),
                Location::QueryString => match val {
                    Value::Array(items) => {
                        for it in items {
                            query.push((m.location_name.clone(), text_of(it)?));
                        }
                    }
                    Value::Object(map) => {
                        for (k, it) in map {
                            query.push((k.clone(), text_of(it)?));
                        }
                    }
                    other => query.push((m.location_name.clone(), text_of(other)?)),
                },
                Location::Header => {
                    let text = match val {
                        Value::Array(items) => items
                            .iter()
                            .map(text_of)
                            .collect::<Result<Vec<_>, _>>()?
                            .join(","),
                        other => text_of(other)?,
                    };
                    headers.push((m.location_name.clone(), text));
                }
                Location::Headers => {
                    if let Value::Object(map) = val {
                        for (k, it) in map {
                            headers.push((format!("{}{k}", m.location_name), text_of(it)?));
                        }
                    }
                }
                Location::StatusCode => {}
            }
        }
    }
    let template = op.request_uri.split('?').next().unwrap_or_default();
    let mut path = String::new();
    for seg in template.split('/').skip(1) {
        path.push('/');
        let label = seg
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .map(|s| s.strip_suffix('+').map_or((s, false), |n| (n, true)));
        match label {
            None => path.push_str(seg),
            Some((name, greedy)) => {
                let value = labels
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str())
                    .ok_or_else(|| format!("{}: no value for label {name}", op.name))?;
                if greedy {
                    let parts: Vec<String> = value
                        .split('/')
                        .map(|p| utf8_percent_encode(p, AWS_ENCODE_SET).to_string())
                        .collect();
                    path.push_str(&parts.join("/"));
                } else {
                    path.push_str(&utf8_percent_encode(value, AWS_ENCODE_SET).to_string());
                }
            }
        }
    }
    if path.is_empty() {
        path.push('/');
    }
    let query = query
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, AWS_ENCODE_SET),
                utf8_percent_encode(v, AWS_ENCODE_SET)
            )
        })
        .collect::<Vec<_>>()
        .join("&");
    let body = if body.is_empty() {
        Vec::new()
    } else {
        serde_json::to_vec(&Value::Object(body)).map_err(|e| e.to_string())?
    };
    Ok(SampleRequest {
        method: op.http_method.clone(),
        path,
        query,
        headers,
        body,
        labels,
        input: input.clone(),
    })
}

fn text_of(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("cannot put {other} in a URI, query or header")),
    }
}

fn gen(model: &Model, shape_name: &str, full: bool, depth: usize) -> Result<Value, String> {
    if depth > 32 {
        return Err(format!("{shape_name}: shapes nest too deeply"));
    }
    let shape = model
        .shape(shape_name)
        .ok_or_else(|| format!("no shape {shape_name}"))?;
    Ok(match &shape.kind {
        ShapeKind::String { .. } => Value::String(sample_string(shape, 0)?),
        ShapeKind::Integer { min, max } | ShapeKind::Long { min, max } => {
            let n = match (min, max) {
                (Some(lo), _) => *lo,
                (None, Some(hi)) if *hi < 1 => *hi,
                _ => 1,
            };
            Value::Number(n.into())
        }
        ShapeKind::Float { min, max } => {
            let f = match (min, max) {
                (Some(lo), _) => *lo,
                (None, Some(hi)) if *hi < 1.0 => *hi,
                _ => 1.0,
            };
            Value::Number(Number::from_f64(f).ok_or("non-finite float bound")?)
        }
        ShapeKind::Boolean => Value::Bool(true),
        ShapeKind::Timestamp => Value::Number(1_700_000_000.into()),
        ShapeKind::Blob { .. } => Value::String("AA==".into()),
        ShapeKind::List { member, min, max } => {
            let n = entry_count(*min, *max, full);
            let mut items = Vec::new();
            for _ in 0..n {
                items.push(gen(model, member, full, depth + 1)?);
            }
            Value::Array(items)
        }
        ShapeKind::Map {
            key,
            value,
            min,
            max,
        } => {
            let n = entry_count(*min, *max, full);
            let key_shape = model.shape(key).ok_or_else(|| format!("no shape {key}"))?;
            let mut map = Map::new();
            for i in 0..n {
                map.insert(
                    sample_string(key_shape, i)?,
                    gen(model, value, full, depth + 1)?,
                );
            }
            Value::Object(map)
        }
        ShapeKind::Structure(st) => {
            let mut obj = Map::new();
            if st.union {
                if let Some(m) = st.members.first() {
                    obj.insert(m.name.clone(), gen(model, &m.shape, full, depth + 1)?);
                }
            } else {
                for m in &st.members {
                    if full || st.is_required(&m.name) {
                        // An empty list cannot travel in a query string or
                        // header (it would read back as absent): give such
                        // lists at least one element.
                        let off_body =
                            matches!(m.location, Location::QueryString | Location::Header);
                        let member_full = full || off_body;
                        obj.insert(
                            m.name.clone(),
                            gen(model, &m.shape, member_full, depth + 1)?,
                        );
                    }
                }
            }
            Value::Object(obj)
        }
    })
}

fn entry_count(min: Option<u64>, max: Option<u64>, full: bool) -> u64 {
    let want = min.unwrap_or(0).max(u64::from(full));
    max.map_or(want, |m| want.min(m))
}

/// A valid string for a string shape; `variant > 0` asks for a distinct
/// value (for map keys).
fn sample_string(shape: &Shape, variant: u64) -> Result<String, String> {
    let ShapeKind::String {
        min,
        max,
        pattern,
        enum_values,
    } = &shape.kind
    else {
        return Err(format!("{} is not a string shape", shape.name));
    };
    if !enum_values.is_empty() {
        return enum_values
            .get(variant as usize)
            .cloned()
            .ok_or_else(|| format!("{}: not enough enum values", shape.name));
    }
    let fits = |s: &str| {
        let len = s.chars().count() as u64;
        min.map_or(true, |b| len >= b)
            && max.map_or(true, |b| len <= b)
            && pattern.as_ref().map_or(true, |p| p.is_match(s))
    };
    let suffix = |s: &str| {
        if variant == 0 {
            s.to_string()
        } else {
            format!("{s}{variant}")
        }
    };
    let mut candidates: Vec<String> = Vec::new();
    if let Some((_, s)) = PATTERN_SAMPLES.iter().find(|(n, _)| *n == shape.name) {
        candidates.push(suffix(s));
    }
    if pattern.is_some() {
        candidates.extend(GENERIC_SAMPLES.iter().map(|s| suffix(s)));
    } else {
        let len = min.unwrap_or(0).max(1);
        let len = max.map_or(len, |m| len.min(m));
        let filler = "x".repeat(len as usize);
        candidates.push(if variant == 0 {
            filler
        } else {
            // Keep the length: replace the tail with the variant number.
            let v = variant.to_string();
            let keep = (len as usize).saturating_sub(v.len());
            format!("{}{v}", &filler[..keep])
        });
    }
    candidates
        .into_iter()
        .find(|c| fits(c))
        .ok_or_else(|| format!("{}: no sample value satisfies its constraints", shape.name))
}

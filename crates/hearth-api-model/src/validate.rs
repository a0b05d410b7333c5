//! Constraint checking of JSON values against shapes, and the AWS-style
//! validation error ([`ValidationError`], [`FieldError`]).
//!
//! This module owns the checking rules for every shape type, the error
//! wording and paths, and the two modes:
//! - *input* (lenient about the unknown): unknown members are dropped from
//!   the returned value (forward compatibility), `null` means "not set";
//! - *output* ([`Model::check_output`], [`Model::check_shape`]): unknown
//!   members are errors, so a server test catches a misspelt field.
//!
//! Paths name fields the way AWS does: `idlePolicy.maxIdleDurationSeconds`,
//! list elements as `allowedPorts.1.member.port` (1-based). Map keys and
//! scalar map values that break their constraints are reported at the map's
//! path as `Map keys must satisfy constraint: [...]` /
//! `Map value must satisfy constraint: [...]`.

use std::fmt;

use serde_json::{Map, Number, Value};

use crate::model::{Location, Model, Operation, Shape, ShapeKind, StructureShape};

/// At most this many field errors are collected for one request.
pub const MAX_FIELD_ERRORS: usize = 100;
/// Echoed values are cut to this many characters (then `...` is appended).
pub const MAX_ECHO_CHARS: usize = 64;

/// Which constraint a field broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstraintKind {
    /// A required member is absent or `null` (`Member must not be null`).
    Required,
    /// Wrong JSON type, or a query/header/label value that does not parse.
    Type,
    /// String length, list length or map size.
    Length,
    /// Numeric range (model `min`/`max`, or the 32/64-bit bounds).
    Range,
    /// Regular expression pattern.
    Pattern,
    /// Enum value set.
    Enum,
    /// A union with zero or several members set.
    Union,
    /// A member the model does not define (output checks only).
    Unknown,
    /// A map key broke its constraints.
    MapKey,
    /// A scalar map value broke its constraints.
    MapValue,
    /// A query parameter that holds one value was sent more than once (the
    /// signature does not fix the order, so no copy may win).
    Repeated,
}

/// One broken constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path, e.g. `idlePolicy.maxIdleDurationSeconds`.
    pub path: String,
    pub kind: ConstraintKind,
    /// The constraint alone, e.g. `Member must not be null`.
    pub constraint: String,
    /// The full AWS-style sentence, e.g. `Value null at 'imageIdentifier'
    /// failed to satisfy constraint: Member must not be null`.
    pub message: String,
}

/// One or more broken constraints; `Display` gives the AWS message
/// (`N validation error(s) detected: ...; ...`), the `message` of a
/// `ValidationException`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub messages: Vec<FieldError>,
}

impl ValidationError {
    /// Whether some field error has this exact path.
    pub fn has_path(&self, path: &str) -> bool {
        self.messages.iter().any(|m| m.path == path)
    }

    /// The field errors for one path.
    pub fn at<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'a FieldError> + 'a {
        self.messages.iter().filter(move |m| m.path == path)
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.messages.len();
        write!(
            f,
            "{n} validation error{} detected: ",
            if n == 1 { "" } else { "s" }
        )?;
        for (i, m) in self.messages.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            f.write_str(&m.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationError {}

/// How the offending value is shown in a message.
#[derive(Debug, Clone)]
pub(crate) enum Echo {
    /// `Value null at ...`
    Null,
    /// `Value at ...` (sensitive or composite values are not echoed).
    Hidden,
    /// `Value '<text>' at ...`
    Text(String),
}

fn truncate(s: &str) -> String {
    let mut out: String = s.chars().take(MAX_ECHO_CHARS).collect();
    if s.chars().nth(MAX_ECHO_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(truncate(s)),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub(crate) fn join_path(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

fn type_name(kind: &ShapeKind) -> &'static str {
    match kind {
        ShapeKind::String { .. } => "string",
        ShapeKind::Integer { .. } => "integer",
        ShapeKind::Long { .. } => "long",
        ShapeKind::Float { .. } => "number",
        ShapeKind::Boolean => "boolean",
        ShapeKind::Timestamp => "timestamp (epoch seconds)",
        ShapeKind::Blob { .. } => "blob (base64 string)",
        ShapeKind::List { .. } => "list",
        ShapeKind::Map { .. } => "map",
        ShapeKind::Structure(_) => "structure",
    }
}

pub(crate) fn type_constraint(kind: &ShapeKind) -> String {
    format!("Member must be of type {}", type_name(kind))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Input,
    Output,
}

pub(crate) struct Validator<'m> {
    model: &'m Model,
    mode: Mode,
    errors: Vec<FieldError>,
}

impl<'m> Validator<'m> {
    pub(crate) fn new(model: &'m Model, mode: Mode) -> Self {
        Self {
            model,
            mode,
            errors: Vec::new(),
        }
    }

    pub(crate) fn push(
        &mut self,
        path: &str,
        echo: Echo,
        kind: ConstraintKind,
        constraint: String,
    ) {
        if self.errors.len() >= MAX_FIELD_ERRORS {
            return;
        }
        let message = match &echo {
            Echo::Null => {
                format!("Value null at '{path}' failed to satisfy constraint: {constraint}")
            }
            Echo::Hidden => format!("Value at '{path}' failed to satisfy constraint: {constraint}"),
            Echo::Text(t) => {
                format!("Value '{t}' at '{path}' failed to satisfy constraint: {constraint}")
            }
        };
        self.errors.push(FieldError {
            path: path.to_string(),
            kind,
            constraint,
            message,
        });
    }

    pub(crate) fn missing(&mut self, path: &str) {
        self.push(
            path,
            Echo::Null,
            ConstraintKind::Required,
            "Member must not be null".into(),
        );
    }

    pub(crate) fn finish(self) -> Result<(), ValidationError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationError {
                messages: self.errors,
            })
        }
    }

    fn full(&self) -> bool {
        self.errors.len() >= MAX_FIELD_ERRORS
    }

    /// How to show `v` (of `shape`) in a message.
    pub(crate) fn echo(&self, shape: &Shape, v: &Value) -> Echo {
        if shape.sensitive {
            return Echo::Hidden;
        }
        match v {
            Value::Null => Echo::Null,
            Value::Array(items) => {
                let member_sensitive = match &shape.kind {
                    ShapeKind::List { member, .. } => self.model.shape_unchecked(member).sensitive,
                    _ => false,
                };
                if member_sensitive {
                    return Echo::Hidden;
                }
                let mut text = String::from("[");
                for (i, item) in items.iter().enumerate() {
                    let Some(t) = scalar_text(item) else {
                        return Echo::Hidden;
                    };
                    if i > 0 {
                        text.push_str(", ");
                    }
                    text.push_str(&t);
                    if text.chars().count() > MAX_ECHO_CHARS {
                        break;
                    }
                }
                text.push(']');
                Echo::Text(truncate(&text))
            }
            other => scalar_text(other).map_or(Echo::Hidden, Echo::Text),
        }
    }

    fn type_error(&mut self, shape: &Shape, v: &Value, path: &str) -> Option<Value> {
        let echo = self.echo(shape, v);
        self.push(
            path,
            echo,
            ConstraintKind::Type,
            type_constraint(&shape.kind),
        );
        None
    }

    fn length(
        &mut self,
        shape: &Shape,
        v: &Value,
        path: &str,
        len: u64,
        min: Option<u64>,
        max: Option<u64>,
    ) {
        if let Some(min) = min.filter(|m| len < *m) {
            let echo = self.echo(shape, v);
            self.push(
                path,
                echo,
                ConstraintKind::Length,
                format!("Member must have length greater than or equal to {min}"),
            );
        }
        if let Some(max) = max.filter(|m| len > *m) {
            let echo = self.echo(shape, v);
            self.push(
                path,
                echo,
                ConstraintKind::Length,
                format!("Member must have length less than or equal to {max}"),
            );
        }
    }

    fn integer(
        &mut self,
        shape: &Shape,
        v: &Value,
        path: &str,
        min: Option<i64>,
        max: Option<i64>,
        bits32: bool,
    ) -> Option<Value> {
        let Value::Number(n) = v else {
            return self.type_error(shape, v, path);
        };
        let (type_min, type_max) = if bits32 {
            (i64::from(i32::MIN), i64::from(i32::MAX))
        } else {
            (i64::MIN, i64::MAX)
        };
        let lo = min.map_or(type_min, |m| m.max(type_min));
        let hi = max.map_or(type_max, |m| m.min(type_max));
        // Work in i128 so that u64 values above i64::MAX compare correctly.
        let value: i128 = if let Some(i) = n.as_i64() {
            i128::from(i)
        } else if let Some(u) = n.as_u64() {
            i128::from(u)
        } else {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if !f.is_finite() || f.fract() != 0.0 {
                return self.type_error(shape, v, path);
            }
            // Saturating conversion; anything beyond i64 is out of range anyway.
            f as i128
        };
        let echo = self.echo(shape, v);
        if value < i128::from(lo) {
            self.push(
                path,
                echo,
                ConstraintKind::Range,
                format!("Member must have value greater than or equal to {lo}"),
            );
            return None;
        }
        if value > i128::from(hi) {
            self.push(
                path,
                echo,
                ConstraintKind::Range,
                format!("Member must have value less than or equal to {hi}"),
            );
            return None;
        }
        // In range, so it fits i64; normalises `5.0` to `5`.
        Some(Value::Number(Number::from(value as i64)))
    }

    /// Check `v` against `shape`; returns the cleaned value (unknown members
    /// dropped) when it is valid.
    pub(crate) fn check(&mut self, shape: &Shape, v: &Value, path: &str) -> Option<Value> {
        if self.full() {
            return None;
        }
        match &shape.kind {
            ShapeKind::String {
                min,
                max,
                pattern,
                enum_values,
            } => {
                let Value::String(s) = v else {
                    return self.type_error(shape, v, path);
                };
                let before = self.errors.len();
                if min.is_some() || max.is_some() {
                    let len = s.chars().count() as u64;
                    self.length(shape, v, path, len, *min, *max);
                }
                if let Some(p) = pattern {
                    if !p.is_match(s) {
                        let echo = self.echo(shape, v);
                        self.push(
                            path,
                            echo,
                            ConstraintKind::Pattern,
                            format!(
                                "Member must satisfy regular expression pattern: {}",
                                p.as_str()
                            ),
                        );
                    }
                }
                if !enum_values.is_empty() && !enum_values.iter().any(|e| e == s) {
                    let echo = self.echo(shape, v);
                    self.push(
                        path,
                        echo,
                        ConstraintKind::Enum,
                        format!(
                            "Member must satisfy enum value set: [{}]",
                            enum_values.join(", ")
                        ),
                    );
                }
                (self.errors.len() == before).then(|| v.clone())
            }
            ShapeKind::Integer { min, max } => self.integer(shape, v, path, *min, *max, true),
            ShapeKind::Long { min, max } => self.integer(shape, v, path, *min, *max, false),
            ShapeKind::Float { min, max } => {
                let Some(f) = v.as_f64() else {
                    return self.type_error(shape, v, path);
                };
                let echo = self.echo(shape, v);
                if let Some(m) = min.filter(|m| f < *m) {
                    self.push(
                        path,
                        echo,
                        ConstraintKind::Range,
                        format!("Member must have value greater than or equal to {m}"),
                    );
                    return None;
                }
                if let Some(m) = max.filter(|m| f > *m) {
                    self.push(
                        path,
                        echo,
                        ConstraintKind::Range,
                        format!("Member must have value less than or equal to {m}"),
                    );
                    return None;
                }
                Some(v.clone())
            }
            ShapeKind::Boolean => match v {
                Value::Bool(_) => Some(v.clone()),
                _ => self.type_error(shape, v, path),
            },
            ShapeKind::Timestamp => match v {
                Value::Number(n) if n.as_f64().is_some_and(f64::is_finite) => Some(v.clone()),
                _ => self.type_error(shape, v, path),
            },
            ShapeKind::Blob { .. } => match v {
                Value::String(_) => Some(v.clone()),
                _ => self.type_error(shape, v, path),
            },
            ShapeKind::List { member, min, max } => {
                let Value::Array(items) = v else {
                    return self.type_error(shape, v, path);
                };
                let before = self.errors.len();
                self.length(shape, v, path, items.len() as u64, *min, *max);
                let member_shape = self.model.shape_unchecked(member);
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    if self.full() {
                        break;
                    }
                    let item_path = format!("{}.member", join_path(path, &(i + 1).to_string()));
                    if item.is_null() {
                        self.missing(&item_path);
                        continue;
                    }
                    if let Some(c) = self.check(member_shape, item, &item_path) {
                        out.push(c);
                    }
                }
                (self.errors.len() == before).then_some(Value::Array(out))
            }
            ShapeKind::Map {
                key,
                value,
                min,
                max,
            } => {
                let Value::Object(entries) = v else {
                    return self.type_error(shape, v, path);
                };
                let before = self.errors.len();
                self.length(shape, v, path, entries.len() as u64, *min, *max);
                let key_shape = self.model.shape_unchecked(key);
                let value_shape = self.model.shape_unchecked(value);
                let value_is_scalar = !matches!(
                    value_shape.kind,
                    ShapeKind::List { .. } | ShapeKind::Map { .. } | ShapeKind::Structure(_)
                );
                let mut out = Map::new();
                for (k, val) in entries {
                    if self.full() {
                        break;
                    }
                    let key_value = Value::String(k.clone());
                    let key_errors = self.sub_constraints(key_shape, &key_value);
                    if !key_errors.is_empty() {
                        let echo = self.echo(key_shape, &key_value);
                        self.push(
                            path,
                            echo,
                            ConstraintKind::MapKey,
                            format!(
                                "Map keys must satisfy constraint: [{}]",
                                key_errors.join(", ")
                            ),
                        );
                        continue;
                    }
                    if val.is_null() {
                        self.missing(&join_path(path, k));
                        continue;
                    }
                    if value_is_scalar {
                        let value_errors = self.sub_constraints(value_shape, val);
                        if value_errors.is_empty() {
                            out.insert(k.clone(), val.clone());
                        } else {
                            let echo = self.echo(value_shape, val);
                            self.push(
                                path,
                                echo,
                                ConstraintKind::MapValue,
                                format!(
                                    "Map value must satisfy constraint: [{}]",
                                    value_errors.join(", ")
                                ),
                            );
                        }
                    } else if let Some(c) = self.check(value_shape, val, &join_path(path, k)) {
                        out.insert(k.clone(), c);
                    }
                }
                (self.errors.len() == before).then_some(Value::Object(out))
            }
            ShapeKind::Structure(st) => {
                let Value::Object(obj) = v else {
                    return self.type_error(shape, v, path);
                };
                self.structure(shape, st, obj, path, false)
            }
        }
    }

    /// The constraint texts `v` breaks, checked in isolation.
    fn sub_constraints(&self, shape: &Shape, v: &Value) -> Vec<String> {
        let mut sub = Validator::new(self.model, self.mode);
        sub.check(shape, v, "");
        sub.errors.into_iter().map(|e| e.constraint).collect()
    }

    /// Check a structure's members. With `body_only`, members bound to the
    /// URI, query or headers are skipped (top level of an output).
    pub(crate) fn structure(
        &mut self,
        shape: &Shape,
        st: &StructureShape,
        obj: &Map<String, Value>,
        path: &str,
        body_only: bool,
    ) -> Option<Value> {
        let before = self.errors.len();
        let mut out = Map::new();
        let mut set = 0usize;
        for m in &st.members {
            if body_only && m.location != Location::Body {
                continue;
            }
            let member_path = join_path(path, &m.name);
            match obj.get(&m.location_name) {
                None | Some(Value::Null) => {
                    if st.is_required(&m.name) {
                        self.missing(&member_path);
                    }
                }
                Some(val) => {
                    set += 1;
                    let member_shape = self.model.shape_unchecked(&m.shape);
                    if let Some(c) = self.check(member_shape, val, &member_path) {
                        out.insert(m.name.clone(), c);
                    }
                }
            }
        }
        if st.union && set != 1 {
            let names: Vec<&str> = st.members.iter().map(|m| m.name.as_str()).collect();
            self.push(
                path,
                Echo::Hidden,
                ConstraintKind::Union,
                format!("Member must have exactly one of [{}] set", names.join(", ")),
            );
        }
        if self.mode == Mode::Output {
            for k in obj.keys() {
                let known = st
                    .members
                    .iter()
                    .any(|m| &m.location_name == k && (!body_only || m.location == Location::Body));
                if !known {
                    self.push(
                        &join_path(path, k),
                        Echo::Hidden,
                        ConstraintKind::Unknown,
                        format!("Member is not defined in shape {}", shape.name),
                    );
                }
            }
        }
        (self.errors.len() == before).then_some(Value::Object(out))
    }
}

impl Model {
    /// Check an operation's response body against its output shape:
    /// required members present, types, enums, lengths, ranges, patterns,
    /// unions, and no members the model does not define. Members bound to
    /// headers are not expected in the body. For an operation without an
    /// output shape (TagResource, UntagResource: 204), the body must be
    /// `null` or `{}`.
    pub fn check_output(&self, op: &Operation, body: &Value) -> Result<(), ValidationError> {
        let mut v = Validator::new(self, Mode::Output);
        match op.output.as_deref() {
            None => match body {
                Value::Null => {}
                Value::Object(o) if o.is_empty() => {}
                _ => v.push(
                    "",
                    Echo::Hidden,
                    ConstraintKind::Type,
                    format!("{} has no output: the body must be empty", op.name),
                ),
            },
            Some(name) => self.check_body(&mut v, name, body),
        }
        v.finish()
    }

    /// Check a JSON body against any structure shape in output mode (e.g. an
    /// error body against `ResourceNotFoundException`).
    pub fn check_shape(&self, shape_name: &str, body: &Value) -> Result<(), ValidationError> {
        let mut v = Validator::new(self, Mode::Output);
        match self.shape(shape_name) {
            Some(_) => self.check_body(&mut v, shape_name, body),
            None => v.push(
                "",
                Echo::Hidden,
                ConstraintKind::Unknown,
                format!("No shape named {shape_name}"),
            ),
        }
        v.finish()
    }

    fn check_body(&self, v: &mut Validator<'_>, shape_name: &str, body: &Value) {
        let shape = self.shape_unchecked(shape_name);
        match (&shape.kind, body) {
            (ShapeKind::Structure(st), Value::Object(obj)) => {
                v.structure(shape, st, obj, "", true);
            }
            (ShapeKind::Structure(_), _) => {
                let echo = v.echo(shape, body);
                v.push("", echo, ConstraintKind::Type, type_constraint(&shape.kind));
            }
            _ => {
                v.check(shape, body, "");
            }
        }
    }
}

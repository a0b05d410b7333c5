//! (Tests only.) Holds every operation's typed input and output against the
//! embedded service model, so that the types cannot drift from it.
//!
//! Two checks per operation ([`check`]):
//! - *names, both ways, at every level*: a probe deserializer walks the
//!   model's shapes while the type deserializes itself from it. Serde tells
//!   the probe the field names of every struct and the variant names of
//!   every enum it meets; the probe compares them with the structure's
//!   members and the union's members (every member has a field, every field
//!   is a member) and feeds each field from its member's shape. It runs
//!   once per union member, so every variant is walked.
//! - *samples*: the full and the minimal sample requests of
//!   `hearth_api_model::sample`, decoded by `Model::parse_input` exactly as
//!   the pipeline does, deserialize into the input type (inputs deny unknown
//!   fields); full and minimal sample outputs deserialize into the output
//!   type and serialize back unchanged, and `Model::check_output` accepts
//!   the result (every output member is representable, `None`s are left
//!   out, names are the model's).
//!
//! Run by `cargo test` through the handler registry: every registered
//! operation carries a pointer to `check::<ItsMarker>`.

use std::cell::RefCell;
use std::collections::BTreeSet;

use hearth_api_model::sample::{sample_request, sample_value};
use hearth_api_model::{Location, Member, Model, Shape, ShapeKind, StructureShape};
use serde::de::value::StringDeserializer;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};
use serde_json::Value;

use super::Operation;

type Error = serde_json::Error;

/// Check `O`'s input and output types against the model (see the module
/// docs). `Err` lists every problem found.
pub(crate) fn check<O: Operation>() -> Result<(), String> {
    let model = Model::get();
    let op = model
        .operation(O::NAME)
        .ok_or_else(|| format!("{} is not an operation of the model", O::NAME))?;
    let mut problems = Vec::new();

    match op.input.as_deref() {
        Some(shape) => problems.extend(probe::<O::Input>(model, shape, Top::Input)),
        None => problems.push("the model gives this operation no input shape".into()),
    }
    for full in [true, false] {
        let what = if full { "full" } else { "minimal" };
        let req = sample_request(model, op, full)?;
        let input = model
            .parse_input(op, &req.labels, &req.query, &req.headers, &req.body)
            .map_err(|e| format!("the {what} sample request does not validate: {e}"))?;
        if let Err(e) = serde_json::from_value::<O::Input>(input.clone()) {
            problems.push(format!(
                "the {what} sample input does not deserialize: {e}\n  {input}"
            ));
        }
    }

    match op.output.as_deref() {
        Some(shape) => {
            problems.extend(probe::<O::Output>(model, shape, Top::Output));
            for full in [true, false] {
                let what = if full { "full" } else { "minimal" };
                let sample = sample_value(model, shape, full)?;
                match serde_json::from_value::<O::Output>(sample.clone()) {
                    Err(e) => problems.push(format!(
                        "the {what} sample output does not deserialize: {e}\n  {sample}"
                    )),
                    Ok(typed) => problems.extend(round_trip(model, op, &sample, &typed, what)),
                }
            }
        }
        None => {
            // No output shape (204): the typed output is empty.
            let empty = Value::Object(Default::default());
            match serde_json::from_value::<O::Output>(empty.clone()) {
                Err(e) => problems.push(format!("the output must be empty: {e}")),
                Ok(typed) => problems.extend(round_trip(model, op, &empty, &typed, "empty")),
            }
        }
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

fn round_trip<T: serde::Serialize>(
    model: &Model,
    op: &hearth_api_model::Operation,
    sample: &Value,
    typed: &T,
    what: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    match serde_json::to_value(typed) {
        Err(e) => problems.push(format!("the {what} sample output does not serialize: {e}")),
        Ok(back) => {
            if &back != sample {
                problems.push(format!(
                    "the {what} sample output changes in a round trip:\n  {sample}\n  {back}"
                ));
            }
            if let Err(e) = model.check_output(op, &back) {
                problems.push(format!("the {what} output is off-model: {e}"));
            }
        }
    }
    problems
}

/// How the members of the top-level structure are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Top {
    /// The pipeline's input object: every member, by model name.
    Input,
    /// A response body: body members, by JSON key.
    Output,
}

#[derive(Default)]
struct Log {
    problems: Vec<String>,
    /// Most members of any union met: how many passes cover every variant.
    widest_union: usize,
}

/// Walk `T` against `shape`, once per union member.
fn probe<T: DeserializeOwned>(model: &Model, shape: &str, top: Top) -> Vec<String> {
    let mut problems = BTreeSet::new();
    let mut pass = 0;
    loop {
        let log = RefCell::new(Log::default());
        let Some(shape) = model.shape(shape) else {
            return vec![format!("no shape {shape}")];
        };
        let p = Probe {
            model,
            shape,
            path: shape.name.clone(),
            top: Some(top),
            pass,
            log: &log,
        };
        if let Err(e) = T::deserialize(p) {
            problems.insert(format!("{}: {e}", shape.name));
        }
        let log = log.into_inner();
        problems.extend(log.problems);
        pass += 1;
        if pass >= log.widest_union {
            break;
        }
    }
    problems.into_iter().collect()
}

/// A deserializer that produces a sample of `shape` and checks the names
/// the type asks for on the way.
struct Probe<'a> {
    model: &'a Model,
    shape: &'a Shape,
    path: String,
    /// `Some` at the top level only.
    top: Option<Top>,
    /// Which member every union sets (clamped to its size).
    pass: usize,
    log: &'a RefCell<Log>,
}

impl<'a> Probe<'a> {
    fn problem(&self, msg: String) -> Error {
        self.log
            .borrow_mut()
            .problems
            .push(format!("{}: {msg}", self.path));
        de::Error::custom(msg)
    }

    fn child(&self, shape: &str, key: &str) -> Result<Probe<'a>, Error> {
        let shape = self
            .model
            .shape(shape)
            .ok_or_else(|| self.problem(format!("no shape {shape}")))?;
        Ok(Probe {
            model: self.model,
            shape,
            path: format!("{}.{key}", self.path),
            top: None,
            pass: self.pass,
            log: self.log,
        })
    }

    /// The structure's members under the keys the type must use.
    fn members(&self, st: &'a StructureShape) -> Vec<(&'a str, &'a Member)> {
        st.members
            .iter()
            .filter(|m| self.top != Some(Top::Output) || m.location == Location::Body)
            .map(|m| {
                let key = match self.top {
                    Some(Top::Input) => m.name.as_str(),
                    _ => m.location_name.as_str(),
                };
                (key, m)
            })
            .collect()
    }

    /// Compare a type's names with the members; the members both have.
    fn compare(
        &self,
        kind: &str,
        type_name: &str,
        names: &[&str],
        members: Vec<(&'a str, &'a Member)>,
    ) -> Vec<(&'a str, &'a Member)> {
        let names: BTreeSet<&str> = names.iter().copied().collect();
        for (key, _) in members.iter().filter(|(k, _)| !names.contains(k)) {
            self.problem(format!(
                "member {key} of {} has no {kind} in {type_name}",
                self.shape.name
            ));
        }
        for name in names
            .iter()
            .filter(|n| !members.iter().any(|(k, _)| k == *n))
        {
            self.problem(format!(
                "{kind} {name} of {type_name} is not a member of {}",
                self.shape.name
            ));
        }
        members
            .into_iter()
            .filter(|(k, _)| names.contains(k))
            .collect()
    }
}

impl<'de, 'a> de::Deserializer<'de> for Probe<'a> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.shape.kind {
            ShapeKind::Structure(_) => Err(self.problem(format!(
                "{} is a structure: the type must be a struct (or an enum for a union)",
                self.shape.name
            ))),
            ShapeKind::List { member, .. } => {
                let element = self.child(member, "member")?;
                visitor.visit_seq(One(Some(element)))
            }
            ShapeKind::Map { key, value, .. } => {
                let k = sample_value(self.model, key, true).map_err(de::Error::custom)?;
                let k = k.as_str().unwrap_or("key").to_string();
                let v = self.child(value, &k)?;
                visitor.visit_map(Entries::new(vec![(k, v)]))
            }
            _ => {
                let v =
                    sample_value(self.model, &self.shape.name, true).map_err(de::Error::custom)?;
                v.clone()
                    .deserialize_any(visitor)
                    .map_err(|e| self.problem(format!("{} ({v}): {e}", self.shape.name)))
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let ShapeKind::Structure(st) = &self.shape.kind else {
            return Err(self.problem(format!(
                "{name} is a struct but {} is not a structure",
                self.shape.name
            )));
        };
        if st.union {
            return Err(self.problem(format!(
                "{name} is a struct but {} is a union: use an enum",
                self.shape.name
            )));
        }
        let members = self.compare("field", name, fields, self.members(st));
        let mut entries = Vec::new();
        for (key, m) in members {
            entries.push((key.to_string(), self.child(&m.shape, key)?));
        }
        visitor.visit_map(Entries::new(entries))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let ShapeKind::Structure(st) = &self.shape.kind else {
            return Err(self.problem(format!(
                "{name} is an enum but {} is not a union (enum-valued members are strings)",
                self.shape.name
            )));
        };
        if !st.union {
            return Err(self.problem(format!(
                "{name} is an enum but {} is a structure, not a union",
                self.shape.name
            )));
        }
        {
            let mut log = self.log.borrow_mut();
            log.widest_union = log.widest_union.max(st.members.len());
        }
        let members = self.compare("variant", name, variants, self.members(st));
        let Some((key, m)) = members
            .get(self.pass.min(members.len().saturating_sub(1)))
            .copied()
        else {
            return Err(self.problem(format!("{name} shares no variant with the model")));
        };
        let inner = self.child(&m.shape, key)?;
        visitor.visit_enum(Variant {
            key: key.to_string(),
            inner,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct newtype_struct seq tuple tuple_struct
        map identifier ignored_any
    }
}

/// A structure's or a map's entries.
struct Entries<'a> {
    items: std::vec::IntoIter<(String, Probe<'a>)>,
    value: Option<Probe<'a>>,
}

impl<'a> Entries<'a> {
    fn new(items: Vec<(String, Probe<'a>)>) -> Self {
        Entries {
            items: items.into_iter(),
            value: None,
        }
    }
}

impl<'de, 'a> MapAccess<'de> for Entries<'a> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((key, value)) = self.items.next() else {
            return Ok(None);
        };
        self.value = Some(value);
        let key: StringDeserializer<Error> = key.into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let value = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("value before key"))?;
        seed.deserialize(value)
    }
}

/// A list with one element.
struct One<'a>(Option<Probe<'a>>);

impl<'de, 'a> SeqAccess<'de> for One<'a> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        match self.0.take() {
            Some(p) => seed.deserialize(p).map(Some),
            None => Ok(None),
        }
    }
}

/// The union member a pass sets.
struct Variant<'a> {
    key: String,
    inner: Probe<'a>,
}

impl<'de, 'a> EnumAccess<'de> for Variant<'a> {
    type Error = Error;
    type Variant = Probe<'a>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Probe<'a>), Error> {
        let key: StringDeserializer<Error> = self.key.into_deserializer();
        Ok((seed.deserialize(key)?, self.inner))
    }
}

impl<'de, 'a> VariantAccess<'de> for Probe<'a> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Err(self.problem(
            "a union member must be a newtype variant of the member's type, not a unit variant"
                .into(),
        ))
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _visitor: V) -> Result<V::Value, Error> {
        Err(self.problem("a union member cannot be a tuple variant".into()))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_struct(self, "struct variant", fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::ops::shapes::Empty;

    #[test]
    fn every_registered_operation_matches_the_model() {
        let mut failures = Vec::new();
        for reg in crate::handlers::registrations() {
            if let Err(e) = (reg.check)() {
                failures.push(format!("{}:\n{e}", reg.name));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
    }

    // The checker itself: types that drift from the model are caught.

    #[allow(dead_code)]
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct ExtraField {
        image_identifier: String,
        image_version: Option<String>,
    }

    #[allow(dead_code)]
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct MissingField {
        image_identifier: String,
    }

    #[allow(dead_code)]
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Tokens {
        microvm_identifier: String,
        expiration_in_minutes: i32,
        allowed_ports: Vec<PortSpec>,
    }

    #[allow(dead_code)]
    #[derive(Deserialize, Serialize)]
    #[serde(rename_all = "camelCase")]
    enum PortSpec {
        Port(i32),
        Range(Range),
        AllPorts(Empty),
    }

    #[allow(dead_code)]
    #[derive(Deserialize, Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Range {
        start_port: i32,
        // `end_port` missing, `last_port` extra: only the second variant
        // reaches this struct.
        last_port: Option<i32>,
    }

    #[allow(dead_code)]
    #[derive(Deserialize, Serialize)]
    #[serde(rename_all = "camelCase")]
    enum TwoPorts {
        Port(i32),
        Ports(Vec<i32>),
    }

    #[allow(dead_code)]
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct TwoPortTokens {
        microvm_identifier: String,
        expiration_in_minutes: i32,
        allowed_ports: Vec<TwoPorts>,
    }

    #[test]
    fn the_probe_finds_extra_and_missing_fields_at_every_level_and_variant() {
        let m = Model::get();
        let extra = probe::<ExtraField>(m, "GetMicrovmImageInput", Top::Input);
        assert_eq!(extra.len(), 1, "{extra:?}");
        assert!(extra[0].contains("field imageVersion"), "{extra:?}");

        let missing = probe::<MissingField>(m, "GetMicrovmImageVersionInput", Top::Input);
        assert!(
            missing.iter().any(|p| p.contains("member imageVersion")),
            "{missing:?}"
        );

        let nested = probe::<Tokens>(m, "CreateMicrovmAuthTokenRequest", Top::Input);
        assert!(
            nested.iter().any(|p| p.contains("member endPort")),
            "{nested:?}"
        );
        assert!(
            nested.iter().any(|p| p.contains("field lastPort")),
            "{nested:?}"
        );

        let variants = probe::<TwoPortTokens>(m, "CreateMicrovmAuthTokenRequest", Top::Input);
        assert!(
            variants.iter().any(|p| p.contains("member range")),
            "{variants:?}"
        );
        assert!(
            variants.iter().any(|p| p.contains("variant ports")),
            "{variants:?}"
        );
    }

    #[test]
    fn a_misnamed_output_member_is_caught() {
        #[derive(Deserialize, Serialize)]
        #[serde(rename_all = "snake_case")]
        struct Wrong {
            auth_token: std::collections::BTreeMap<String, String>,
        }
        let m = Model::get();
        let problems = probe::<Wrong>(m, "CreateMicrovmAuthTokenResponse", Top::Output);
        assert!(
            problems.iter().any(|p| p.contains("member authToken")),
            "{problems:?}"
        );
    }
}

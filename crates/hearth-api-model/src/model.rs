//! The typed service model: loading the botocore JSON (`metadata`,
//! `operations`, `shapes`) into [`Model`], [`Operation`] and [`Shape`], with
//! every cross-reference checked and every pattern compiled up front.
//!
//! This module owns the data structures and the load-time consistency checks
//! (unknown shapes, labels without `uri` members, duplicate routes, patterns
//! that do not compile). Routing lives in `route`, request decoding in
//! `input`, constraint checking in `validate`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::pattern::Pattern;
use crate::template::UriTemplate;

/// The botocore model of the Lambda MicroVMs API, gzip-compressed.
static EMBEDDED_MODEL_GZ: &[u8] = include_bytes!("../model/lambda-microvms-2025-09-09.json.gz");

/// Errors found while loading a service model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model is not valid gzip: {0}")]
    Gzip(#[from] std::io::Error),
    #[error("model is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid model: {0}")]
    Invalid(String),
    #[error("shape {shape}: pattern {pattern:?} does not compile: {source}")]
    Pattern {
        shape: String,
        pattern: String,
        source: regex::Error,
    },
}

fn invalid(msg: impl Into<String>) -> ModelError {
    ModelError::Invalid(msg.into())
}

/// A loaded, cross-checked service model.
#[derive(Debug)]
pub struct Model {
    api_version: String,
    signing_name: String,
    protocol: String,
    /// Sorted by name.
    operations: Vec<Operation>,
    by_name: HashMap<String, usize>,
    shapes: BTreeMap<String, Shape>,
}

/// One API operation.
#[derive(Debug)]
pub struct Operation {
    /// Operation name, e.g. `RunMicrovm`.
    pub name: String,
    /// HTTP method, upper case (`GET`, `POST`, `PUT`, `PATCH`, `DELETE`).
    pub http_method: String,
    /// The `requestUri` template exactly as in the model.
    pub request_uri: String,
    /// Success status code (`http.responseCode`, 200 when absent).
    pub response_code: u16,
    /// Input structure shape name.
    pub input: Option<String>,
    /// Output structure shape name (absent for TagResource/UntagResource).
    pub output: Option<String>,
    /// Modelled error shape names.
    pub errors: Vec<String>,
    /// `idempotent: true` in the model.
    pub idempotent: bool,
    /// `readonly: true` in the model.
    pub readonly: bool,
    pub(crate) template: UriTemplate,
}

/// A named shape.
#[derive(Debug)]
pub struct Shape {
    pub name: String,
    pub kind: ShapeKind,
    /// `sensitive: true`: values are never echoed in error messages.
    pub sensitive: bool,
    /// Present on error (exception) structures.
    pub error: Option<ErrorInfo>,
}

/// The type of a shape and its constraints.
#[derive(Debug)]
pub enum ShapeKind {
    String {
        /// Minimum length in characters (Unicode scalar values).
        min: Option<u64>,
        /// Maximum length in characters.
        max: Option<u64>,
        pattern: Option<Pattern>,
        /// Allowed values; empty means unconstrained.
        enum_values: Vec<String>,
    },
    /// 32-bit integer.
    Integer {
        min: Option<i64>,
        max: Option<i64>,
    },
    /// 64-bit integer.
    Long {
        min: Option<i64>,
        max: Option<i64>,
    },
    /// `float` / `double`.
    Float {
        min: Option<f64>,
        max: Option<f64>,
    },
    Boolean,
    /// Epoch seconds as a JSON number in rest-json bodies.
    Timestamp,
    /// Base64 string in JSON bodies.
    Blob {
        min: Option<u64>,
        max: Option<u64>,
    },
    List {
        member: String,
        min: Option<u64>,
        max: Option<u64>,
    },
    Map {
        key: String,
        value: String,
        min: Option<u64>,
        max: Option<u64>,
    },
    Structure(StructureShape),
}

/// Members of a structure (or union) shape.
#[derive(Debug)]
pub struct StructureShape {
    /// In model order.
    pub members: Vec<Member>,
    /// Names of required members.
    pub required: Vec<String>,
    /// `union: true`: exactly one member must be set.
    pub union: bool,
}

impl StructureShape {
    /// Look up a member by its model name.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// Whether the member is required.
    pub fn is_required(&self, name: &str) -> bool {
        self.required.iter().any(|r| r == name)
    }
}

/// A structure member.
#[derive(Debug)]
pub struct Member {
    /// Model name: the key in the parsed input object.
    pub name: String,
    /// Target shape name.
    pub shape: String,
    pub location: Location,
    /// Label / query key / header name / JSON key (`locationName`), or the
    /// member name when the model gives none.
    pub location_name: String,
    /// `idempotencyToken: true`.
    pub idempotency_token: bool,
}

/// Where a member travels on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// JSON body member.
    Body,
    /// Path label.
    Uri,
    /// Query-string parameter.
    QueryString,
    /// A single HTTP header.
    Header,
    /// A map of headers sharing a prefix (not used by this model).
    Headers,
    /// The HTTP status code (not used by this model).
    StatusCode,
}

/// Whose fault an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Server,
}

/// HTTP mapping of an error shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorInfo {
    /// `error.httpStatusCode`.
    pub http_status: u16,
    pub fault: Fault,
    /// `retryable` present on the shape.
    pub retryable: bool,
    /// `retryable.throttling == true`.
    pub throttling: bool,
}

impl Model {
    /// The embedded Lambda MicroVMs model, parsed once.
    ///
    /// # Panics
    /// Only if the embedded model is broken (a test asserts it is not).
    pub fn get() -> &'static Model {
        static MODEL: OnceLock<Model> = OnceLock::new();
        MODEL.get_or_init(|| {
            Model::from_gzip(EMBEDDED_MODEL_GZ).expect("embedded service model must load")
        })
    }

    /// Parse a gzip-compressed botocore JSON model.
    pub fn from_gzip(gz: &[u8]) -> Result<Model, ModelError> {
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(gz).read_to_end(&mut json)?;
        Model::parse(&json)
    }

    /// Parse a botocore JSON model (uncompressed).
    pub fn parse(json: &[u8]) -> Result<Model, ModelError> {
        let doc: RawDoc = serde_json::from_slice(json)?;
        let meta_str = |k: &str| {
            doc.metadata
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };

        let mut shapes = BTreeMap::new();
        for (name, raw) in doc.shapes {
            let members = raw.members.as_ref().map(|m| m.0.as_slice());
            let shape = parse_shape(&name, &Value::Object(raw.rest), members)?;
            shapes.insert(name, shape);
        }

        let mut operations = Vec::new();
        for (name, def) in &doc.operations {
            operations.push(parse_operation(name, def)?);
        }
        operations.sort_by(|a, b| a.name.cmp(&b.name));
        let by_name = operations
            .iter()
            .enumerate()
            .map(|(i, o)| (o.name.clone(), i))
            .collect();

        let model = Model {
            api_version: meta_str("apiVersion"),
            signing_name: meta_str("signingName"),
            protocol: meta_str("protocol"),
            operations,
            by_name,
            shapes,
        };
        model.check()?;
        Ok(model)
    }

    /// `metadata.apiVersion`, e.g. `2025-09-09`.
    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    /// `metadata.signingName` (the SigV4 service name), e.g. `lambda`.
    pub fn signing_name(&self) -> &str {
        &self.signing_name
    }

    /// `metadata.protocol`, e.g. `rest-json`.
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// All operations, sorted by name.
    pub fn operations(&self) -> impl Iterator<Item = &Operation> {
        self.operations.iter()
    }

    /// An operation by name.
    pub fn operation(&self, name: &str) -> Option<&Operation> {
        self.by_name.get(name).map(|&i| &self.operations[i])
    }

    /// A shape by name.
    pub fn shape(&self, name: &str) -> Option<&Shape> {
        self.shapes.get(name)
    }

    /// All shapes, sorted by name.
    pub fn shapes(&self) -> impl Iterator<Item = &Shape> {
        self.shapes.values()
    }

    /// The structure definition of a shape, if it is a structure.
    pub fn structure(&self, name: &str) -> Option<&StructureShape> {
        match &self.shape(name)?.kind {
            ShapeKind::Structure(s) => Some(s),
            _ => None,
        }
    }

    /// HTTP status and fault of an error shape (`None` if the shape is not
    /// an error shape).
    pub fn error_shape(&self, name: &str) -> Option<ErrorInfo> {
        self.shape(name)?.error
    }

    /// The member of the operation's input marked `idempotencyToken`
    /// (`clientToken` for CreateMicrovmImage, UpdateMicrovmImage, RunMicrovm).
    pub fn op_idempotency_member(&self, op: &Operation) -> Option<&str> {
        let input = self.structure(op.input.as_deref()?)?;
        input
            .members
            .iter()
            .find(|m| m.idempotency_token)
            .map(|m| m.name.as_str())
    }

    pub(crate) fn shape_unchecked(&self, name: &str) -> &Shape {
        // `check()` guarantees every referenced shape exists.
        &self.shapes[name]
    }

    /// Load-time consistency checks.
    fn check(&self) -> Result<(), ModelError> {
        let exists = |s: &str, what: &str| {
            if self.shapes.contains_key(s) {
                Ok(())
            } else {
                Err(invalid(format!("{what} refers to unknown shape {s}")))
            }
        };
        for shape in self.shapes.values() {
            match &shape.kind {
                ShapeKind::List { member, .. } => exists(member, &shape.name)?,
                ShapeKind::Map { key, value, .. } => {
                    exists(key, &shape.name)?;
                    exists(value, &shape.name)?;
                    if !matches!(self.shapes[key].kind, ShapeKind::String { .. }) {
                        return Err(invalid(format!("map {} has a non-string key", shape.name)));
                    }
                }
                ShapeKind::Structure(st) => {
                    for m in &st.members {
                        exists(&m.shape, &format!("{}.{}", shape.name, m.name))?;
                    }
                    for r in &st.required {
                        if st.member(r).is_none() {
                            return Err(invalid(format!(
                                "{} requires unknown member {r}",
                                shape.name
                            )));
                        }
                    }
                }
                _ => {}
            }
        }
        let mut routes = BTreeSet::new();
        for op in &self.operations {
            for s in op.input.iter().chain(&op.output).chain(&op.errors) {
                exists(s, &op.name)?;
            }
            if let Some(e) = op.errors.iter().find(|e| self.shapes[*e].error.is_none()) {
                return Err(invalid(format!("{}: {e} is not an error shape", op.name)));
            }
            // Every label needs a uri member and every uri member a label.
            let uri_members: BTreeSet<&str> = op
                .input
                .as_deref()
                .and_then(|i| self.structure(i))
                .map(|st| {
                    st.members
                        .iter()
                        .filter(|m| m.location == Location::Uri)
                        .map(|m| m.location_name.as_str())
                        .collect()
                })
                .unwrap_or_default();
            let labels: BTreeSet<&str> = op.template.label_names().collect();
            if uri_members != labels {
                return Err(invalid(format!(
                    "{}: uri labels {labels:?} do not match uri members {uri_members:?}",
                    op.name
                )));
            }
            if !routes.insert((op.http_method.clone(), op.template.route_key())) {
                return Err(invalid(format!(
                    "{}: another operation has the same method and path",
                    op.name
                )));
            }
        }
        Ok(())
    }
}

fn get_u64(def: &Value, key: &str) -> Option<u64> {
    let v = def.get(key)?;
    v.as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

fn get_i64(def: &Value, key: &str) -> Option<i64> {
    let v = def.get(key)?;
    v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
}

fn get_bool(def: &Value, key: &str) -> bool {
    def.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn target(def: &Value, key: &str, shape: &str) -> Result<String, ModelError> {
    def.get(key)
        .and_then(|v| v.get("shape"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| invalid(format!("{shape}: missing {key}.shape")))
}

/// The parts of a botocore document this crate reads.
#[derive(Deserialize)]
struct RawDoc {
    #[serde(default)]
    metadata: Value,
    operations: Map<String, Value>,
    shapes: BTreeMap<String, RawShape>,
}

/// A shape definition with its `members` kept in document order (a
/// `serde_json::Map` sorts keys unless `preserve_order` is enabled somewhere
/// in the build, and member order decides the order of error messages).
#[derive(Deserialize)]
struct RawShape {
    #[serde(default)]
    members: Option<OrderedObject>,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

struct OrderedObject(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<OrderedObject, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    out.push(entry);
                }
                Ok(OrderedObject(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn parse_shape(
    name: &str,
    def: &Value,
    ordered_members: Option<&[(String, Value)]>,
) -> Result<Shape, ModelError> {
    let ty = def
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{name}: missing type")))?;
    let kind = match ty {
        "string" => {
            let pattern = match def.get("pattern").and_then(Value::as_str) {
                Some(p) => Some(Pattern::new(p).map_err(|source| ModelError::Pattern {
                    shape: name.to_string(),
                    pattern: p.to_string(),
                    source,
                })?),
                None => None,
            };
            let enum_values = def
                .get("enum")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            ShapeKind::String {
                min: get_u64(def, "min"),
                max: get_u64(def, "max"),
                pattern,
                enum_values,
            }
        }
        "integer" => ShapeKind::Integer {
            min: get_i64(def, "min"),
            max: get_i64(def, "max"),
        },
        "long" => ShapeKind::Long {
            min: get_i64(def, "min"),
            max: get_i64(def, "max"),
        },
        "float" | "double" => ShapeKind::Float {
            min: def.get("min").and_then(Value::as_f64),
            max: def.get("max").and_then(Value::as_f64),
        },
        "boolean" => ShapeKind::Boolean,
        "timestamp" => ShapeKind::Timestamp,
        "blob" => ShapeKind::Blob {
            min: get_u64(def, "min"),
            max: get_u64(def, "max"),
        },
        "list" => ShapeKind::List {
            member: target(def, "member", name)?,
            min: get_u64(def, "min"),
            max: get_u64(def, "max"),
        },
        "map" => ShapeKind::Map {
            key: target(def, "key", name)?,
            value: target(def, "value", name)?,
            min: get_u64(def, "min"),
            max: get_u64(def, "max"),
        },
        "structure" => {
            let mut members = Vec::new();
            if let Some(ms) = ordered_members {
                for (mname, mdef) in ms {
                    let shape = mdef
                        .get("shape")
                        .and_then(Value::as_str)
                        .ok_or_else(|| invalid(format!("{name}.{mname}: missing shape")))?;
                    let location = match mdef.get("location").and_then(Value::as_str) {
                        None => Location::Body,
                        Some("uri") => Location::Uri,
                        Some("querystring") => Location::QueryString,
                        Some("header") => Location::Header,
                        Some("headers") => Location::Headers,
                        Some("statusCode") => Location::StatusCode,
                        Some(other) => {
                            return Err(invalid(format!(
                                "{name}.{mname}: unknown location {other}"
                            )))
                        }
                    };
                    members.push(Member {
                        name: mname.clone(),
                        shape: shape.to_string(),
                        location,
                        location_name: mdef
                            .get("locationName")
                            .and_then(Value::as_str)
                            .unwrap_or(mname)
                            .to_string(),
                        idempotency_token: get_bool(mdef, "idempotencyToken"),
                    });
                }
            }
            let required = def
                .get("required")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            ShapeKind::Structure(StructureShape {
                members,
                required,
                union: get_bool(def, "union"),
            })
        }
        other => return Err(invalid(format!("{name}: unsupported type {other}"))),
    };
    let error = def.get("error").map(|e| {
        let http_status = e
            .get("httpStatusCode")
            .and_then(Value::as_u64)
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(if get_bool(def, "fault") { 500 } else { 400 });
        let fault = if get_bool(def, "fault") {
            Fault::Server
        } else if get_bool(e, "senderFault") || http_status < 500 {
            Fault::Client
        } else {
            Fault::Server
        };
        let retryable = def.get("retryable");
        ErrorInfo {
            http_status,
            fault,
            retryable: retryable.is_some(),
            throttling: retryable
                .map(|r| get_bool(r, "throttling"))
                .unwrap_or(false),
        }
    });
    Ok(Shape {
        name: name.to_string(),
        kind,
        sensitive: get_bool(def, "sensitive"),
        error,
    })
}

fn parse_operation(name: &str, def: &Value) -> Result<Operation, ModelError> {
    let http = def
        .get("http")
        .ok_or_else(|| invalid(format!("{name}: missing http")))?;
    let http_method = http
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{name}: missing http.method")))?
        .to_ascii_uppercase();
    let request_uri = http
        .get("requestUri")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{name}: missing http.requestUri")))?
        .to_string();
    let template = UriTemplate::parse(&request_uri)
        .map_err(|e| invalid(format!("{name}: bad requestUri {request_uri:?}: {e}")))?;
    let response_code = http
        .get("responseCode")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .unwrap_or(200);
    let shape_of = |k: &str| {
        def.get(k)
            .and_then(|v| v.get("shape"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let errors = def
        .get("errors")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| e.get("shape").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Ok(Operation {
        name: def
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or(name)
            .to_string(),
        http_method,
        request_uri,
        response_code,
        input: shape_of("input"),
        output: shape_of("output"),
        errors,
        idempotent: get_bool(def, "idempotent"),
        readonly: get_bool(def, "readonly"),
        template,
    })
}

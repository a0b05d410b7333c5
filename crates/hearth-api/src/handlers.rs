//! Operation handlers.
//!
//! Owns what each of the 24 operations does with a validated input: reads and
//! writes through the store, ARNs in the caller's account and region, and
//! outputs shaped as the model says. Runs on the request task; store calls go
//! through `spawn_blocking`. Operations whose engine work lands in later
//! issues (image builds, running microVMs) answer `NotImplementedException`
//! and change nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use hearth_store::{
    AccountId, Cursor, ImageFilter, MicrovmFilter, Page, PageRequest, Store, StoreError,
    VersionUpdate,
};
use serde_json::{json, Map, Value};

use crate::context::{blocking, unix_secs, AppState, Caller};
use crate::error::ApiError;

/// Default page size when `maxResults` is absent.
const DEFAULT_PAGE: u32 = 50;

async fn run<T: Send + 'static>(
    state: &Arc<AppState>,
    what: &'static str,
    f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = state.store.clone();
    blocking(what, move || f(store.as_ref())).await
}

fn s<'a>(input: &'a Value, key: &str) -> Option<&'a str> {
    input.get(key).and_then(Value::as_str)
}

fn required<'a>(input: &'a Value, key: &str) -> Result<&'a str, ApiError> {
    s(input, key).ok_or_else(|| {
        ApiError::Validation(format!(
            "Value null at '{key}' failed to satisfy constraint: Member must not be null"
        ))
    })
}

fn page_request(
    state: &AppState,
    caller: &Caller,
    op: &str,
    input: &Value,
) -> Result<PageRequest, ApiError> {
    let limit = input
        .get("maxResults")
        .and_then(Value::as_u64)
        .map(|n| n as u32)
        .unwrap_or(DEFAULT_PAGE);
    Ok(match s(input, "nextToken") {
        Some(tok) => PageRequest::after(
            limit,
            state
                .sealer
                .open::<Cursor>(caller.account_id.as_str(), op, tok)?,
        ),
        None => PageRequest::first(limit),
    })
}

fn list_output<T>(
    state: &AppState,
    caller: &Caller,
    op: &str,
    page: Page<T>,
    item: impl Fn(&T) -> Value,
) -> Value {
    let mut out = Map::new();
    out.insert(
        "items".into(),
        Value::Array(page.items.iter().map(item).collect()),
    );
    if let Some(c) = page.next {
        out.insert(
            "nextToken".into(),
            json!(state.sealer.seal(caller.account_id.as_str(), op, &c)),
        );
    }
    Value::Object(out)
}

/// Merge a stored document with fields derived from the row.
fn merge(doc: &Value, fields: Value) -> Value {
    let mut out = doc.as_object().cloned().unwrap_or_default();
    if let Value::Object(f) = fields {
        out.extend(f);
    }
    Value::Object(out)
}

fn managed_arn(region: &str, name: &str) -> String {
    format!("arn:aws:lambda:{region}:aws:microvm-image:{name}")
}

/// Resolve an image identifier (ARN, id or name) in the caller's account.
async fn find_image(
    state: &Arc<AppState>,
    caller: &Caller,
    ident: &str,
) -> Result<hearth_store::Image, ApiError> {
    let (acct, ident) = (caller.account_id.clone(), ident.to_string());
    let not_found = ApiError::not_found("MicroVM image", ident.clone());
    let found = run(state, "reading an image", move |st| {
        let r = if ident.starts_with("arn:") {
            st.get_image_by_arn(&acct, &ident)
        } else {
            st.get_image(&acct, &ident).or_else(|e| match e {
                StoreError::NotFound { .. } => st.get_image_by_name(&acct, &ident),
                e => Err(e),
            })
        };
        match r {
            Ok(i) => Ok(Some(i)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    })
    .await?;
    found.ok_or(not_found)
}

fn image_summary(i: &hearth_store::Image) -> Value {
    let mut v = json!({
        "imageArn": i.arn,
        "name": i.name,
        "state": i.state,
        "createdAt": i.created_at_secs,
    });
    for k in ["latestActiveImageVersion", "latestFailedImageVersion"] {
        if let Some(x) = i.doc.get(k) {
            v[k] = x.clone();
        }
    }
    v
}

fn version_output(i: &hearth_store::Image, v: &hearth_store::ImageVersion) -> Value {
    merge(
        &v.doc,
        json!({
            "imageArn": i.arn,
            "imageVersion": v.version,
            "state": v.state,
            "status": v.status,
            "createdAt": v.created_at_secs,
            "updatedAt": v.updated_at_secs,
        }),
    )
}

fn build_output(i: &hearth_store::Image, b: &hearth_store::Build) -> Value {
    merge(
        &b.doc,
        json!({
            "imageArn": i.arn,
            "imageVersion": b.version,
            "buildId": b.build_id,
            "buildState": b.state,
            "createdAt": b.created_at_secs,
        }),
    )
}

fn microvm_item(m: &hearth_store::Microvm) -> Value {
    json!({
        "microvmId": m.microvm_id,
        "state": m.state,
        "imageArn": m.image_arn,
        "imageVersion": m.image_version,
        "startedAt": m.doc.get("startedAt").cloned().unwrap_or(json!(m.created_at_secs)),
    })
}

/// Tags apply to image ARNs of the caller's own account.
async fn tag_target(state: &Arc<AppState>, caller: &Caller, arn: &str) -> Result<String, ApiError> {
    let image = find_image(state, caller, arn).await?;
    Ok(image.arn)
}

fn not_yet(op: &str, issue: &str) -> ApiError {
    ApiError::NotImplemented(format!(
        "{op} is not available in this Hearth build yet ({issue}); nothing was changed"
    ))
}

/// Run one operation.
pub async fn dispatch(
    state: &Arc<AppState>,
    caller: &Caller,
    op: &str,
    input: Value,
) -> Result<Value, ApiError> {
    let acct: AccountId = caller.account_id.clone();
    match op {
        "ListManagedMicrovmImages" => {
            let start = match s(&input, "nextToken") {
                Some(t) => state
                    .sealer
                    .open::<usize>(caller.account_id.as_str(), op, t)?,
                None => 0,
            };
            let limit = input
                .get("maxResults")
                .and_then(Value::as_u64)
                .unwrap_or(DEFAULT_PAGE as u64) as usize;
            let all = &state.managed_images;
            let items: Vec<Value> = all
                .iter()
                .skip(start)
                .take(limit)
                .map(|m| json!({ "imageArn": managed_arn(&caller.region, &m.name), "createdAt": m.created_at_secs, "updatedAt": m.created_at_secs }))
                .collect();
            let mut out = json!({ "items": items });
            if start + limit < all.len() {
                out["nextToken"] =
                    json!(state
                        .sealer
                        .seal(caller.account_id.as_str(), op, &(start + limit)));
            }
            Ok(out)
        }
        "ListManagedMicrovmImageVersions" => {
            let ident = required(&input, "imageIdentifier")?;
            let name = ident.rsplit(':').next().unwrap_or(ident);
            let arn_ok = !ident.starts_with("arn:") || ident == managed_arn(&caller.region, name);
            let m = state
                .managed_images
                .iter()
                .find(|m| m.name == name && arn_ok)
                .ok_or_else(|| ApiError::not_found("Managed MicroVM image", ident))?;
            if s(&input, "nextToken").is_some() {
                // One version per managed image: there is never a second page.
                return Err(ApiError::Validation("Invalid nextToken".into()));
            }
            Ok(json!({ "items": [{
                "imageArn": managed_arn(&caller.region, &m.name),
                "imageVersion": m.version,
                "status": "AVAILABLE",
                "createdAt": m.created_at_secs,
                "updatedAt": m.created_at_secs,
            }]}))
        }
        "GetMicrovmImage" => {
            let image = find_image(state, caller, required(&input, "imageIdentifier")?).await?;
            let arn = image.arn.clone();
            let tags = run(state, "reading tags", move |st| st.list_tags(&acct, &arn)).await?;
            let mut out = image_summary(&image);
            out["updatedAt"] = json!(image.updated_at_secs);
            if !tags.is_empty() {
                out["tags"] = json!(tags);
            }
            Ok(out)
        }
        "ListMicrovmImages" => {
            let page = page_request(state, caller, op, &input)?;
            let filter = ImageFilter {
                name_contains: s(&input, "nameFilter").map(str::to_owned),
            };
            let p = run(state, "listing images", move |st| {
                st.list_images(&acct, &filter, &page)
            })
            .await?;
            Ok(list_output(state, caller, op, p, image_summary))
        }
        "DeleteMicrovmImage" => {
            let image = find_image(state, caller, required(&input, "imageIdentifier")?).await?;
            let (a2, arn) = (acct.clone(), image.arn.clone());
            let users = run(state, "counting microVMs", move |st| {
                let f = MicrovmFilter {
                    image_arn: Some(arn),
                    image_version: None,
                    states: live_states(),
                };
                st.list_microvms(&a2, &f, &PageRequest::first(1))
            })
            .await?;
            if !users.items.is_empty() {
                return Err(ApiError::Conflict {
                    message: format!("MicroVM image {} still has running microVMs", image.arn),
                    resource_id: Some(image.arn.clone()),
                    resource_type: Some("MicroVM image"),
                });
            }
            let id = image.image_id.clone();
            run(state, "deleting an image", move |st| {
                st.delete_image(&acct, &id)
            })
            .await?;
            Ok(
                json!({ "imageIdentifier": required(&input, "imageIdentifier")?, "state": "DELETED" }),
            )
        }
        "GetMicrovmImageVersion" | "DeleteMicrovmImageVersion" | "UpdateMicrovmImageVersion" => {
            let ident = required(&input, "imageIdentifier")?.to_string();
            let image = find_image(state, caller, &ident).await?;
            let version = required(&input, "imageVersion")?.to_string();
            let (a2, id, ver) = (acct.clone(), image.image_id.clone(), version.clone());
            let v = run(state, "reading an image version", move |st| {
                st.get_image_version(&a2, &id, &ver)
            })
            .await?;
            match op {
                "GetMicrovmImageVersion" => {
                    let mut out = version_output(&image, &v);
                    let (a3, arn) = (acct.clone(), format!("{}:{}", image.arn, v.version));
                    let tags =
                        run(state, "reading tags", move |st| st.list_tags(&a3, &arn)).await?;
                    if !tags.is_empty() {
                        out["tags"] = json!(tags);
                    }
                    Ok(out)
                }
                "DeleteMicrovmImageVersion" => {
                    let (id, ver) = (image.image_id.clone(), v.version.clone());
                    run(state, "deleting an image version", move |st| {
                        st.delete_image_version(&acct, &id, &ver)
                    })
                    .await?;
                    Ok(
                        json!({ "imageIdentifier": ident, "imageVersion": version, "state": "DELETED" }),
                    )
                }
                _ => {
                    let status = required(&input, "status")?.to_string();
                    let update = VersionUpdate {
                        state: v.state.clone(),
                        status,
                        doc: v.doc.clone(),
                        updated_at_secs: unix_secs(),
                        expected_state: Some(v.state.clone()),
                    };
                    let (id, ver) = (image.image_id.clone(), v.version.clone());
                    let v2 = run(state, "updating an image version", move |st| {
                        st.update_image_version(&acct, &id, &ver, &update)
                    })
                    .await?;
                    Ok(version_output(&image, &v2))
                }
            }
        }
        "ListMicrovmImageVersions" => {
            let image = find_image(state, caller, required(&input, "imageIdentifier")?).await?;
            let page = page_request(state, caller, op, &input)?;
            let id = image.image_id.clone();
            let p = run(state, "listing image versions", move |st| {
                st.list_image_versions(&acct, &id, &page)
            })
            .await?;
            Ok(list_output(state, caller, op, p, |v| {
                version_output(&image, v)
            }))
        }
        "GetMicrovmImageBuild" => {
            let image = find_image(state, caller, required(&input, "imageIdentifier")?).await?;
            let (id, ver, build) = (
                image.image_id.clone(),
                required(&input, "imageVersion")?.to_string(),
                required(&input, "buildId")?.to_string(),
            );
            let b = run(state, "reading a build", move |st| {
                st.get_build(&acct, &id, &ver, &build)
            })
            .await?;
            Ok(build_output(&image, &b))
        }
        "ListMicrovmImageBuilds" => {
            let image = find_image(state, caller, required(&input, "imageIdentifier")?).await?;
            let page = page_request(state, caller, op, &input)?;
            let filter = hearth_store::BuildFilter {
                architecture: s(&input, "architecture").map(str::to_owned),
                chipset: s(&input, "chipset").map(str::to_owned),
                chipset_generation: s(&input, "chipsetGeneration").map(str::to_owned),
            };
            let (id, ver) = (
                image.image_id.clone(),
                required(&input, "imageVersion")?.to_string(),
            );
            let (a2, id2, ver2) = (acct.clone(), id.clone(), ver.clone());
            // The version must exist: listing builds of a missing version is a 404.
            run(state, "reading an image version", move |st| {
                st.get_image_version(&a2, &id2, &ver2)
            })
            .await?;
            let p = run(state, "listing builds", move |st| {
                st.list_builds(&acct, &id, &ver, &filter, &page)
            })
            .await?;
            Ok(list_output(state, caller, op, p, |b| {
                let mut v = build_output(&image, b);
                if let Some(o) = v.as_object_mut() {
                    o.remove("snapshotBuild");
                }
                v
            }))
        }
        "GetMicrovm" => {
            let id = required(&input, "microvmIdentifier")?.to_string();
            let m = run(state, "reading a microVM", move |st| {
                st.get_microvm(&acct, &id)
            })
            .await?;
            Ok(merge(
                &m.doc,
                json!({ "microvmId": m.microvm_id, "state": m.state, "imageArn": m.image_arn, "imageVersion": m.image_version }),
            ))
        }
        "ListMicrovms" => {
            let page = page_request(state, caller, op, &input)?;
            let image_arn = match s(&input, "imageIdentifier") {
                Some(ident) => Some(find_image(state, caller, ident).await?.arn),
                None => None,
            };
            let filter = MicrovmFilter {
                image_arn,
                image_version: s(&input, "imageVersion").map(str::to_owned),
                states: vec![],
            };
            let p = run(state, "listing microVMs", move |st| {
                st.list_microvms(&acct, &filter, &page)
            })
            .await?;
            Ok(list_output(state, caller, op, p, microvm_item))
        }
        "SuspendMicrovm"
        | "ResumeMicrovm"
        | "TerminateMicrovm"
        | "CreateMicrovmAuthToken"
        | "CreateMicrovmShellAuthToken" => {
            // The microVM must exist in this account; acting on it needs the
            // engine integration of the RunMicrovm issue.
            let id = required(&input, "microvmIdentifier")?.to_string();
            run(state, "reading a microVM", move |st| {
                st.get_microvm(&acct, &id)
            })
            .await?;
            Err(not_yet(
                op,
                "microVM lifecycle operations arrive with RunMicrovm",
            ))
        }
        "CreateMicrovmImage" | "UpdateMicrovmImage" => {
            Err(not_yet(op, "image builds arrive with the builder"))
        }
        "RunMicrovm" => Err(not_yet(
            op,
            "running microVMs arrives with the RunMicrovm issue",
        )),
        "TagResource" => {
            let arn = tag_target(state, caller, required(&input, "Resource")?).await?;
            let tags: BTreeMap<String, String> =
                serde_json::from_value(input.get("Tags").cloned().unwrap_or(json!({})))
                    .map_err(|e| ApiError::Validation(format!("Tags: {e}")))?;
            run(state, "tagging", move |st| st.put_tags(&acct, &arn, &tags)).await?;
            Ok(json!({}))
        }
        "UntagResource" => {
            let arn = tag_target(state, caller, required(&input, "Resource")?).await?;
            let keys: Vec<String> =
                serde_json::from_value(input.get("TagKeys").cloned().unwrap_or(json!([])))
                    .map_err(|e| ApiError::Validation(format!("TagKeys: {e}")))?;
            run(state, "untagging", move |st| {
                st.remove_tags(&acct, &arn, &keys)
            })
            .await?;
            Ok(json!({}))
        }
        "ListTags" => {
            let arn = tag_target(state, caller, required(&input, "Resource")?).await?;
            let tags = run(state, "reading tags", move |st| st.list_tags(&acct, &arn)).await?;
            Ok(json!({ "Tags": tags }))
        }
        other => Err(ApiError::internal(
            "dispatching",
            format!("operation {other} has no handler"),
        )),
    }
}

fn live_states() -> Vec<String> {
    [
        "PENDING",
        "RUNNING",
        "SUSPENDING",
        "SUSPENDED",
        "TERMINATING",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

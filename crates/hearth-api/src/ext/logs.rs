//! Logs, streamed:
//! `GET /hearth/v1/images/{image}/versions/{version}/builds/{buildId}/logs`
//! (a build's log; lines starting with `==> ` are phases; the image named
//! by id or name) and `GET /hearth/v1/microvms/{microvmId}/logs` (the app's
//! stdout and stderr in that microVM, across its suspends). `?follow=1`
//! keeps the answer open and sends output as it is written, ending when
//! the build or the microVM ends; `?offset=N` starts N bytes in. The answer
//! is `text/plain`, chunked. Runs on the request task, then on a task of
//! its own that reads the log file.

use std::io::SeekFrom;

use hearth_http::Response;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::SignedRequest;
use crate::error::ApiError;
use crate::handlers::control_error;

/// Chunks a follower may have in flight.
const CHANNEL_CHUNKS: usize = 16;
const READ_CHUNK_BYTES: usize = 64 * 1024;

pub(crate) async fn get(
    r: SignedRequest,
    image: String,
    version: String,
    build_id: String,
) -> Result<Response, ApiError> {
    let account = r.caller.account_id.clone();
    let (store, acct, ident) = (r.state.store.clone(), account.clone(), image.clone());
    let found = tokio::task::spawn_blocking(move || {
        store
            .get_image(&acct, &ident)
            .or_else(|_| store.get_image_by_name(&acct, &ident))
    })
    .await
    .map_err(|e| ApiError::internal("finding an image", e))?
    .map_err(|_| ApiError::not_found("MicroVM image", image.clone()))?;
    let handle = r
        .state
        .images
        .open_log(&account, &found.image_id, &version, &build_id)
        .await
        .map_err(control_error)?;
    stream(r.parts.uri.query().unwrap_or(""), handle)
}

/// `GET /hearth/v1/microvms/{microvmId}/logs`.
pub(crate) async fn get_microvm(
    r: SignedRequest,
    microvm_id: String,
) -> Result<Response, ApiError> {
    let handle = r
        .state
        .microvms
        .open_log(&r.caller.account_id, &microvm_id)
        .await
        .map_err(control_error)?;
    stream(r.parts.uri.query().unwrap_or(""), handle)
}

/// Answer with the log of `handle`, as the query asks.
fn stream(query: &str, handle: hearth_control::LogHandle) -> Result<Response, ApiError> {
    let mut follow = false;
    let mut offset = 0u64;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "follow" => follow = matches!(v, "1" | "true" | ""),
            "offset" => {
                offset = v.parse().map_err(|_| {
                    ApiError::Validation(format!("offset {v:?} is not a byte count"))
                })?
            }
            _ => {
                return Err(ApiError::Validation(format!(
                    "unknown query parameter {k:?}; use follow and offset"
                )))
            }
        }
    }
    let (tx, body) = hearth_http::body_channel(CHANNEL_CHUNKS);
    tokio::spawn(async move {
        let mut progress = handle.progress;
        let mut file = None;
        let mut buf = vec![0u8; READ_CHUNK_BYTES];
        loop {
            if file.is_none() {
                if let Ok(mut f) = tokio::fs::File::open(&handle.path).await {
                    if f.seek(SeekFrom::Start(offset)).await.is_err() {
                        return;
                    }
                    file = Some(f);
                }
            }
            let n = match file.as_mut() {
                Some(f) => f.read(&mut buf).await.unwrap_or(0),
                None => 0,
            };
            if n > 0 {
                if tx.send(buf[..n].to_vec()).await.is_err() {
                    return;
                }
                continue;
            }
            // At the end of what is written.
            let Some(rx) = progress.as_mut().filter(|_| follow) else {
                break;
            };
            if rx.borrow_and_update().finished {
                // One more read catches the last lines, then stop.
                if let Some(f) = file.as_mut() {
                    while let Ok(n) = f.read(&mut buf).await {
                        if n == 0 || tx.send(buf[..n].to_vec()).await.is_err() {
                            break;
                        }
                    }
                }
                break;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { progress = None; },
                _ = tx.closed() => return,
            }
        }
        let _ = tx.finish().await;
    });
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(resp)
}

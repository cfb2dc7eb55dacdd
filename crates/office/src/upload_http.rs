//! The terminals' HTTP service (axum): batches in, answers and loss-list deltas out.
//!
//! Contract (terminal clients are built against it):
//!
//! - `POST /v1/batches`, header `Authorization: Bearer <terminal token>`, JSON body an
//!   `iccard_pos::record::Batch` → `200` with a JSON `iccard_pos::record::BatchResults`
//!   ([`Office::ingest_batch`]; a batch sent again answers what it was answered);
//! - `GET /v1/loss-list?since=N`, same header → `200` with a JSON
//!   [`crate::losslist::LossListDelta`] (the changes after version `N`);
//! - every error is a JSON `{"error": "<precise message>"}` with `401` (no or bad token),
//!   `403` (the batch is another terminal's), `409` (the batch does not follow the last one
//!   accepted: a gap, a reordering or a fork; nothing stored), `422` (the body is not a batch,
//!   its hash does not match, or `since` is not a version), `500` (the back office failed).
//!
//! The service holds no state of its own: the token decides the terminal, the database the
//! rest. It only speaks HTTP; TLS is a reverse proxy's job.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use iccard_pos::record::Batch;

use iccard_crypto::PurseAlg;
use zeroize::Zeroizing;

use crate::keystore::{CardKey, CeremonyEvent, KeyInfo, Keystore, KsResult, LoadRequest, TacInput};
use crate::office::Office;
use crate::upload::{UploadError, UploadTerminal};

/// What the handlers share.
#[derive(Clone)]
struct AppState {
    office: Arc<Office>,
    keys: Arc<dyn Keystore + Send + Sync>,
}

/// An error answer: status and `{"error": message}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> Self {
        let status = match &e {
            UploadError::Unauthorized => StatusCode::UNAUTHORIZED,
            UploadError::Terminal { .. } => StatusCode::FORBIDDEN,
            UploadError::Chain { .. } => StatusCode::CONFLICT,
            UploadError::Malformed(_) => StatusCode::UNPROCESSABLE_ENTITY,
            UploadError::Office(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

/// The router of the terminals' service.
pub fn router(office: Arc<Office>, keys: Arc<dyn Keystore + Send + Sync>) -> Router {
    Router::new()
        .route("/v1/batches", post(post_batch))
        .route("/v1/loss-list", get(get_loss_list))
        .with_state(AppState { office, keys })
}

/// Serves the router on `listener` until the task is dropped or the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    office: Arc<Office>,
    keys: Arc<dyn Keystore + Send + Sync>,
) -> std::io::Result<()> {
    axum::serve(listener, router(office, keys)).await
}

async fn terminal(state: &AppState, headers: &HeaderMap) -> Result<UploadTerminal, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError(
                StatusCode::UNAUTHORIZED,
                "no upload token: send `Authorization: Bearer <terminal token>`".into(),
            )
        })?;
    Ok(state.office.authenticate_terminal(token).await?)
}

async fn post_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let t = terminal(&state, &headers).await?;
    let batch: Batch = serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the body is not a JSON batch: {e}"),
        )
    })?;
    if batch.terminal_id != t.terminal_id {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "the batch is terminal {}'s but the token is terminal {}'s",
                batch.terminal_id, t.terminal_id
            ),
        ));
    }
    let results = state.office.ingest_batch(&*state.keys, &batch).await?;
    Ok(Json(results).into_response())
}

async fn get_loss_list(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    terminal(&state, &headers).await?;
    let since = query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("since="))
        .unwrap_or("0");
    let since: i64 = since.parse().ok().filter(|v| *v >= 0).ok_or_else(|| {
        ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("since={since:?} is not a loss-list version (a number from 0)"),
        )
    })?;
    let delta = state
        .office
        .loss_list_since(since)
        .await
        .map_err(|e| match e {
            crate::OfficeError::Invalid { .. } => {
                ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
            e => ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        })?;
    Ok(Json(delta).into_response())
}

/// A keystore that is `Send` but not `Sync` (a file keystore, a PKCS#11 session), made
/// shareable between the service's tasks behind a mutex: one computation at a time.
pub struct SharedKeystore(std::sync::Mutex<Box<dyn Keystore + Send>>);

impl SharedKeystore {
    /// Wraps a keystore.
    pub fn new(inner: Box<dyn Keystore + Send>) -> Self {
        SharedKeystore(std::sync::Mutex::new(inner))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Box<dyn Keystore + Send>> {
        // A panic while holding the lock leaves no half-done state in a keystore computation.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Debug for SharedKeystore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedKeystore(..)")
    }
}

impl Keystore for SharedKeystore {
    fn load_mac1_ok(&self, load: &LoadRequest, mac1: &[u8; 4]) -> KsResult<bool> {
        self.lock().load_mac1_ok(load, mac1)
    }
    fn load_mac2(&self, load: &LoadRequest, when: &[u8; 7]) -> KsResult<[u8; 4]> {
        self.lock().load_mac2(load, when)
    }
    fn verify_tac(&self, card: &CardKey, input: &TacInput, tac: &[u8; 4]) -> KsResult<bool> {
        self.lock().verify_tac(card, input, tac)
    }
    fn unload_mac3_ok(
        &self,
        unload: &LoadRequest,
        new_balance: u32,
        when: &[u8; 7],
        mac3: &[u8; 4],
    ) -> KsResult<bool> {
        self.lock().unload_mac3_ok(unload, new_balance, when, mac3)
    }
    fn generate(&mut self, name: &str, alg: PurseAlg, operator: &str) -> KsResult<KeyInfo> {
        self.lock().generate(name, alg, operator)
    }
    fn import(
        &mut self,
        name: &str,
        version: u8,
        alg: PurseAlg,
        bytes: &[u8],
        operator: &str,
    ) -> KsResult<KeyInfo> {
        self.lock().import(name, version, alg, bytes, operator)
    }
    fn activate(&mut self, name: &str, version: u8, operator: &str) -> KsResult<()> {
        self.lock().activate(name, version, operator)
    }
    fn retire(&mut self, name: &str, version: u8, operator: &str) -> KsResult<()> {
        self.lock().retire(name, version, operator)
    }
    fn card_key(
        &self,
        name: &str,
        version: u8,
        alg: PurseAlg,
        data: &[u8; 8],
    ) -> KsResult<Zeroizing<[u8; 16]>> {
        self.lock().card_key(name, version, alg, data)
    }
    fn list(&self) -> Vec<KeyInfo> {
        self.lock().list()
    }
    fn ceremony_log(&self) -> Vec<CeremonyEvent> {
        self.lock().ceremony_log()
    }
}

/// Binds a TCP listener for [`serve`] (`HOST:PORT`; port 0 takes any free port).
pub async fn bind(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

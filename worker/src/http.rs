//! The worker's HTTP endpoints: `/` (the job page, drawn from `/progress` by its script),
//! `/progress` (JSON), `/healthz` (ready: live and the brokers
//! answer), `/livez` (the batch loop goes on), `/metrics` (Prometheus).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::progress::{Progress, KEPT_BATCHES};

/// The job page: static, with no external assets, built into the binary (no build toolchain).
const PAGE: &str = include_str!("page.html");

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

#[derive(Deserialize)]
struct ProgressQuery {
    last: Option<usize>,
}

async fn progress(
    State(p): State<Arc<Progress>>,
    Query(q): Query<ProgressQuery>,
) -> impl IntoResponse {
    Json(p.snapshot(q.last.unwrap_or(10).min(KEPT_BATCHES)))
}

async fn healthz(State(p): State<Arc<Progress>>) -> impl IntoResponse {
    match p.health() {
        Ok(()) => (StatusCode::OK, "ok".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn livez(State(p): State<Arc<Progress>>) -> impl IntoResponse {
    match p.liveness() {
        Ok(()) => (StatusCode::OK, "ok".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn metrics(State(p): State<Arc<Progress>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        p.metrics_text(),
    )
}

pub fn router(p: Arc<Progress>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/progress", get(progress))
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/metrics", get(metrics))
        .with_state(p)
}

/// Binds `addr` and serves until `stop` is cancelled. Returns the bound address (useful with
/// port 0) and the server task.
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve(
    addr: &str,
    p: Arc<Progress>,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(p);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    Ok((bound, task))
}

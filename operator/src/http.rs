//! The operator's own HTTP endpoint: `/metrics` for Prometheus, `/healthz` for the kubelet,
//! and `PUT /loglevel` to change the log filter without a restart.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::Router;

use crate::metrics::Metrics;
use crate::telemetry::LogLevel;

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    log_level: Option<LogLevel>,
}

pub fn router(metrics: Metrics, log_level: Option<LogLevel>) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/loglevel", put(set_log_level))
        .with_state(AppState { metrics, log_level })
}

async fn render_metrics(State(s): State<AppState>) -> ([(&'static str, &'static str); 1], String) {
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn set_log_level(State(s): State<AppState>, body: String) -> (StatusCode, String) {
    match &s.log_level {
        None => (
            StatusCode::NOT_IMPLEMENTED,
            "logging is not reloadable here\n".into(),
        ),
        Some(l) => match l.set(body.trim()) {
            Ok(()) => (
                StatusCode::OK,
                format!("log filter is now {}\n", body.trim()),
            ),
            Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")),
        },
    }
}

/// Serves until `shutdown` completes.
///
/// # Errors
/// When the address cannot be bound or the server fails.
pub async fn serve(
    addr: std::net::SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics and /healthz");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_health_and_metrics_until_shutdown() {
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let metrics = Metrics::new().unwrap();
            metrics.reconciled("applied", std::time::Duration::from_millis(5));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            drop(listener);
            let token = tokio_util::sync::CancellationToken::new();
            let server = tokio::spawn(serve(
                addr,
                router(metrics, None),
                token.clone().cancelled_owned(),
            ));
            let mut health = String::new();
            for _ in 0..100 {
                if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                    s.shutdown().await.ok();
                    health = get(addr, "/healthz").await;
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert!(
                health.starts_with("HTTP/1.1 200") && health.ends_with("ok"),
                "{health}"
            );
            let m = get(addr, "/metrics").await;
            assert!(
                m.contains("weir_operator_reconciles_total{outcome=\"applied\""),
                "{m}"
            );
            token.cancel();
            server.await.unwrap().unwrap();
        })
        .await
        .expect("test timed out");
    }
}

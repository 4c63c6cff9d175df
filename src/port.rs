//! The HTTP port: SQL (`POST /sql`, from `paicha-query`), the ingest
//! gateway (`POST /ingest/{source}`, from `paicha-ingest`), `GET /metrics`
//! (Prometheus text exposition), `GET /healthz` (the process answers) and
//! `GET /readyz` (it has its partitions), on one listener whose
//! connections are capped and timed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use paicha_query::http::SqlGauges;
use prometheus::{Encoder, TextEncoder};
use tokio::sync::Semaphore;

/// How long a client may take to send a request's headers, and how long
/// an idle keep-alive connection is kept (hyper's header read timeout
/// covers both): a slow or silent client cannot hold a connection.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the port serves.
pub struct Port {
    /// `POST /sql` and the gauges of its queries.
    pub sql: (Router, SqlGauges),
    /// The process's metrics.
    pub metrics: prometheus::Registry,
    /// The ingest gateway's routes, on a live instance.
    pub gateway: Option<Router>,
    /// Set once the instance serves what it should: for `run`, once it has
    /// its partition tasks from the consumer group.
    pub ready: Arc<AtomicBool>,
}

/// What `/metrics` and `/readyz` read.
struct Health {
    metrics: prometheus::Registry,
    gauges: SqlGauges,
    ready: Arc<AtomicBool>,
}

impl Port {
    /// Every route of the port.
    pub fn router(self) -> Router {
        let (sql, gauges) = self.sql;
        let health = Arc::new(Health {
            metrics: self.metrics,
            gauges,
            ready: self.ready,
        });
        let router = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .with_state(health)
            .merge(sql);
        match self.gateway {
            Some(gateway) => router.merge(gateway),
            None => router,
        }
    }
}

async fn metrics(State(health): State<Arc<Health>>) -> Response {
    let mut families = health.metrics.gather();
    families.extend(health.gauges.collect());
    let mut buf = Vec::new();
    match TextEncoder::new().encode(&families, &mut buf) {
        Ok(()) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "error": e.to_string() }).to_string(),
        )
            .into_response(),
    }
}

/// 200 once the instance is ready, 503 before: a load balancer sends
/// queries (and the ingest gateway's posts) only to ready instances.
async fn readyz(State(health): State<Arc<Health>>) -> Response {
    if health.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for partitions from the consumer group\n",
        )
            .into_response()
    }
}

/// Serves `router` on `listener` until the process ends, with at most
/// `max_connections` connections open: one more is closed at once (its
/// client sees the connection refused, not a hang).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    max_connections: usize,
) -> std::io::Result<()> {
    let max = max_connections.max(1);
    let open = Arc::new(Semaphore::new(max));
    // Clients told they are too many, at once: past these, a connection is
    // just closed, so a flood cannot hold descriptors the pipeline needs.
    let refusing = Arc::new(Semaphore::new(64));
    let service = hyper_util::service::TowerToHyperService::new(router);
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept an HTTP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            if let Ok(refusal) = refusing.clone().try_acquire_owned() {
                tokio::spawn(refuse(socket, max, refusal));
            }
            continue;
        };
        let service = service.clone();
        tokio::spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, %peer, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// Tells a client past the `max` connections so, and closes.
async fn refuse(
    mut socket: tokio::net::TcpStream,
    max: usize,
    _refusal: tokio::sync::OwnedSemaphorePermit,
) {
    use tokio::io::AsyncWriteExt;
    let body = format!(
        "{{\"error\":\"too many connections: the server's --max-connections is {max}\"}}\n"
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         connection: close\r\nretry-after: 1\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let write = socket.write_all(response.as_bytes());
    let _ = tokio::time::timeout(Duration::from_secs(5), write).await;
}

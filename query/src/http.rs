//! The HTTP endpoint: `POST /sql` (the SQL text as the body) and
//! `GET /metrics` (Prometheus text exposition).
//!
//! Results are JSON (an array of row objects) by default, CSV for
//! `Accept: text/csv`, JSON lines for `Accept: application/x-ndjson`, an
//! Arrow IPC stream for `Accept: application/vnd.apache.arrow.stream`. A SQL
//! error is a 400 with `{"error": "…"}`.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use prometheus::{Encoder, TextEncoder};

/// What the HTTP handlers need.
#[derive(Clone)]
pub struct HttpState {
    /// The data directory queries read.
    pub data_dir: PathBuf,
    /// The metrics to expose.
    pub metrics: prometheus::Registry,
    /// The running pipeline's in-memory rows, if there is one.
    pub live: Option<crate::Live>,
}

/// The router of the HTTP port.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/sql", post(sql))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(Arc::new(state))
}

/// Serves the router on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, state: HttpState) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({ "error": msg.to_string() }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn sql(State(state): State<Arc<HttpState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "the SQL text is not UTF-8");
    };
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let ctx = match crate::open_with(&state.data_dir, state.live.as_ref()).await {
        Ok(c) => c,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
    };
    let (schema, batches) = match crate::query(&ctx, text).await {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e:#}")),
    };
    let (content_type, rendered) = if accept.contains(ARROW_STREAM) {
        (ARROW_STREAM, arrow_stream(&schema, &batches))
    } else if accept.contains("text/csv") {
        (
            "text/csv",
            crate::render(crate::Format::Csv, &schema, &batches),
        )
    } else if accept.contains("application/x-ndjson") {
        (
            "application/x-ndjson",
            crate::render(crate::Format::Json, &schema, &batches),
        )
    } else {
        ("application/json", json_array(&batches))
    };
    match rendered {
        Ok(bytes) => ([(header::CONTENT_TYPE, content_type)], bytes).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

/// The media type of an Arrow IPC stream.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

fn arrow_stream(
    schema: &arrow::datatypes::SchemaRef,
    batches: &[arrow::record_batch::RecordBatch],
) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, schema)?;
    for b in batches {
        w.write(b)?;
    }
    w.finish()?;
    drop(w);
    Ok(out)
}

fn json_array(batches: &[arrow::record_batch::RecordBatch]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut w = arrow::json::ArrayWriter::new(&mut out);
    for b in batches {
        w.write(b)?;
    }
    w.finish()?;
    if out.is_empty() {
        out.extend_from_slice(b"[]");
    }
    Ok(out)
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    let mut buf = Vec::new();
    match TextEncoder::new().encode(&state.metrics.gather(), &mut buf) {
        Ok(()) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

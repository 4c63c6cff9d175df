//! SQL over HTTP: `POST /sql`, the SQL text as the body ([`routes`]; the
//! `paicha` binary serves it on its HTTP port with the other routes).
//!
//! Results are JSON (an array of row objects) by default, CSV for
//! `Accept: text/csv`, JSON lines for `Accept: application/x-ndjson`, an
//! Arrow IPC stream for `Accept: application/vnd.apache.arrow.stream`.
//! They are streamed batch by batch as the query produces them, never
//! buffered whole.
//!
//! Errors are JSON `{"error": "…"}`: 400 for SQL that fails to plan or run
//! before the first row, 401 without a valid bearer token (when tokens are
//! configured), 503 when the concurrent-query limit is reached, 504 when
//! the timeout passes before the first row. A result that goes over the
//! row limit or the timeout after rows were sent is cut off: the chunked
//! response ends without its final chunk, so no client mistakes part of a
//! result for all of it.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::time::Instant;

pub use crate::bounds::Limits;
pub use paicha_ingest::bearer::Tokens;

/// What `POST /sql` needs.
#[derive(Clone)]
pub struct HttpState {
    /// The session every query runs in.
    pub ctx: Arc<SessionContext>,
    /// Tokens `POST /sql` requires; none: open.
    pub tokens: Tokens,
    /// Per-query bounds.
    pub limits: Limits,
    /// The runtime queries run on, apart from the one serving the port (and
    /// the ingest gateway on it); `None`: the port's own.
    pub queries: Option<tokio::runtime::Handle>,
}

struct Shared {
    state: HttpState,
    running: Arc<Semaphore>,
    /// `paicha_sql_queries_running`, read off `running` at each scrape.
    queries_running: prometheus::IntGauge,
    /// `paicha_query_memory_reserved_bytes`, read off the query memory
    /// pool at each scrape, and the pool's limit, set once.
    query_memory: prometheus::IntGauge,
    query_memory_limit: prometheus::IntGauge,
}

/// The `POST /sql` route, and the gauges of the queries it runs for the
/// port's `/metrics` (the server that serves it is the binary's).
pub fn routes(state: HttpState) -> (Router, SqlGauges) {
    let running = Arc::new(Semaphore::new(state.limits.max_concurrent.max(1)));
    let query_memory_limit = prometheus::IntGauge::new(
        "paicha_query_memory_limit_bytes",
        "The query memory pool's size (--query-memory)",
    )
    .expect("a valid metric name");
    if let datafusion::execution::memory_pool::MemoryLimit::Finite(limit) =
        state.ctx.runtime_env().memory_pool.memory_limit()
    {
        query_memory_limit.set(limit as i64);
    }
    let shared = Arc::new(Shared {
        state,
        running,
        queries_running: prometheus::IntGauge::new(
            "paicha_sql_queries_running",
            "SQL queries over HTTP holding one of the --max-concurrent-queries slots",
        )
        .expect("a valid metric name"),
        query_memory: prometheus::IntGauge::new(
            "paicha_query_memory_reserved_bytes",
            "Bytes the running queries hold in the query memory pool (--query-memory)",
        )
        .expect("a valid metric name"),
        query_memory_limit,
    });
    let router = Router::new()
        .route("/sql", post(sql))
        .with_state(shared.clone());
    (router, SqlGauges { shared })
}

/// The queries' gauges, read at each scrape.
#[derive(Clone)]
pub struct SqlGauges {
    shared: Arc<Shared>,
}

impl SqlGauges {
    /// The queries running and the memory they hold, now.
    pub fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let shared = &self.shared;
        let max = shared.state.limits.max_concurrent.max(1);
        let free = shared.running.available_permits();
        shared.queries_running.set(max.saturating_sub(free) as i64);
        let pool = &shared.state.ctx.runtime_env().memory_pool;
        shared.query_memory.set(pool.reserved() as i64);
        [
            &shared.queries_running,
            &shared.query_memory,
            &shared.query_memory_limit,
        ]
        .into_iter()
        .flat_map(prometheus::core::Collector::collect)
        .collect()
    }
}

/// The longest SQL text accepted.
pub const MAX_SQL_BYTES: usize = 1 << 20;

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({ "error": msg.to_string() }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn sql(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let state = &shared.state;
    let permit = match admit(&shared, &headers) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let body = match paicha_ingest::gateway::read_body(body, MAX_SQL_BYTES, "SQL text", "").await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "the SQL text is not UTF-8");
    };
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let limits = state.limits;
    let deadline = Instant::now() + limits.timeout;
    let (schema, stream, first) = match start(state, text.to_string(), deadline).await {
        Ok(started) => started,
        Err(r) => return *r,
    };
    if first
        .as_ref()
        .is_some_and(|b| b.num_rows() > limits.max_rows)
    {
        return error(StatusCode::BAD_REQUEST, too_many_rows(limits.max_rows));
    }
    let mut encoder = Encoding::for_accept(accept);
    let content_type = encoder.content_type();
    let head = match encoder.start(&schema) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    };
    let chunks = rows(head, first, stream, encoder, limits, deadline, permit);
    // Encoding a large result costs as much as computing it: on the query
    // runtime too, so the port's (and the ingest gateway's) stays free.
    let body = match &state.queries {
        Some(queries) => Body::from_stream(drive_on(queries, chunks)),
        None => Body::from_stream(chunks),
    };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Lets a query in: its token is valid and a place among the queries
/// running is free; else the answer refusing it.
fn admit(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
) -> Result<tokio::sync::OwnedSemaphorePermit, Box<Response>> {
    if !shared.state.tokens.admits(headers) {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required (Authorization: Bearer TOKEN)",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Err(Box::new(r));
    }
    shared.running.clone().try_acquire_owned().map_err(|_| {
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many concurrent queries: the limit is {}; retry shortly",
                shared.state.limits.max_concurrent
            ),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        Box::new(r)
    })
}

/// A started query: its schema, its stream, and its first batch.
type Started = (SchemaRef, SendableRecordBatchStream, Option<RecordBatch>);

/// Plans `text`, starts it and waits for its first batch, by `deadline`;
/// else the answer saying why not.
async fn start(
    state: &HttpState,
    text: String,
    deadline: Instant,
) -> Result<Started, Box<Response>> {
    let limits = state.limits;
    let timed_out = || {
        error(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the query did not finish within the {} s timeout",
                limits.timeout.as_secs_f64()
            ),
        )
    };
    let ctx = state.ctx.clone();
    let run = async move {
        let df = crate::plan(&ctx, &text).await?;
        // One row past the limit tells a full result from a cut one. An
        // EXPLAIN's few rows are not limited: DataFusion plans ANALYZE
        // only at the root.
        let explains = matches!(
            df.logical_plan(),
            datafusion::logical_expr::LogicalPlan::Explain(_)
                | datafusion::logical_expr::LogicalPlan::Analyze(_)
        );
        let df = if explains {
            df
        } else {
            df.limit(0, Some(limits.max_rows.saturating_add(1)))?
        };
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        anyhow::Ok((schema, df.execute_stream().await?))
    };
    let planned = tokio::time::timeout_at(deadline, async {
        let (schema, mut stream) = match &state.queries {
            Some(queries) => on_runtime(queries, run, deadline).await?,
            None => run.await?,
        };
        let first = stream.next().await.transpose()?;
        anyhow::Ok((schema, stream, first))
    })
    .await;
    match planned {
        Err(_) => Err(Box::new(timed_out())),
        Ok(Err(e)) => {
            let text = format!("{e:#}");
            // The plan's own deadline can fire a moment before this one:
            // the same timeout, the same answer.
            if text.contains(crate::bounds::TIMED_OUT) {
                return Err(Box::new(timed_out()));
            }
            let text = crate::bounds::over_the_pool(&text).unwrap_or(text);
            Err(Box::new(error(StatusCode::BAD_REQUEST, text)))
        }
        Ok(Ok(p)) => Ok(p),
    }
}

/// Plans and runs a query on `queries`, a runtime of its own: its batches
/// come back through a channel of one, so the query computes no further
/// ahead than the client reads, and stops (its tasks dropped) when the
/// client goes or stops reading past the deadline. The last message says
/// the result is whole: a channel closed without it (the query's task
/// panicked) ends the response as cut off, never as complete.
async fn on_runtime(
    queries: &tokio::runtime::Handle,
    run: impl std::future::Future<Output = anyhow::Result<(SchemaRef, SendableRecordBatchStream)>>
        + Send
        + 'static,
    deadline: Instant,
) -> anyhow::Result<(SchemaRef, SendableRecordBatchStream)> {
    let (started, planned) = tokio::sync::oneshot::channel();
    let (tx, rx) = tokio::sync::mpsc::channel::<Option<datafusion::error::Result<RecordBatch>>>(1);
    // A client that goes away drops the receiver: the query stops then,
    // even while it computes its first row.
    let gone = tx.clone();
    queries.spawn(async move {
        let work = async move {
            let mut stream = match run.await {
                Ok((schema, stream)) => {
                    if started.send(Ok(schema)).is_err() {
                        return;
                    }
                    stream
                }
                Err(e) => {
                    let _ = started.send(Err(e));
                    return;
                }
            };
            while let Some(batch) = stream.next().await {
                let sent = tokio::time::timeout_at(deadline, tx.send(Some(batch))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return;
                }
            }
            let _ = tokio::time::timeout_at(deadline, tx.send(None)).await;
        };
        tokio::select! {
            () = work => {}
            () = gone.closed() => {}
        }
    });
    let schema = planned
        .await
        .map_err(|_| anyhow::anyhow!("the query stopped before it started"))??;
    let batches = futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(Some(batch)) => Some((batch, Some(rx))),
            Some(None) => None,
            None => Some((
                Err(datafusion::error::DataFusionError::Execution(
                    "the query stopped before its end".into(),
                )),
                None,
            )),
        }
    });
    let stream =
        datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema.clone(), batches);
    Ok((schema, Box::pin(stream)))
}

/// Polls `stream` on `runtime`, one item ahead of the reader; stops when
/// the reader goes.
fn drive_on<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    stream: impl futures::Stream<Item = T> + Send + 'static,
) -> impl futures::Stream<Item = T> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel::<T>(1);
    runtime.spawn(async move {
        let gone = tx.clone();
        let forward = async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            () = forward => {}
            () = gone.closed() => {}
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// The response body: `head`, the encoded batches (`first`, then the rest
/// of `stream`), then the encoding's end. An error item aborts the response.
fn rows(
    head: Vec<u8>,
    first: Option<RecordBatch>,
    stream: SendableRecordBatchStream,
    encoder: Encoding,
    limits: Limits,
    deadline: Instant,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    struct Rest {
        batches: futures::stream::BoxStream<'static, datafusion::error::Result<RecordBatch>>,
        encoder: Encoding,
        rows: usize,
        // Held until the last row is sent: the query still runs until then.
        _permit: tokio::sync::OwnedSemaphorePermit,
    }
    let rest = Rest {
        batches: futures::stream::iter(first.map(Ok)).chain(stream).boxed(),
        encoder,
        rows: 0,
        _permit: permit,
    };
    let cut = |m: String| Err(std::io::Error::other(m));
    let body = futures::stream::unfold(Some(rest), move |state| async move {
        // `None`: the end was sent, or the response was cut.
        let mut s = state?;
        let Ok(next) = tokio::time::timeout_at(deadline, s.batches.next()).await else {
            let m = format!(
                "query cut off: the {} s timeout passed",
                limits.timeout.as_secs_f64()
            );
            return Some((cut(m), None));
        };
        let chunk = match next {
            None => return Some((as_chunk(s.encoder.finish()), None)),
            Some(Err(e)) => return Some((cut(format!("query failed: {e}")), None)),
            Some(Ok(batch)) => {
                s.rows += batch.num_rows();
                if s.rows > limits.max_rows {
                    let m = format!("query cut off: {}", too_many_rows(limits.max_rows));
                    return Some((cut(m), None));
                }
                as_chunk(s.encoder.batch(&batch))
            }
        };
        Some((chunk, Some(s)))
    });
    futures::stream::once(async move { Ok(Bytes::from(head)) }).chain(body)
}

fn as_chunk(encoded: anyhow::Result<Vec<u8>>) -> Result<Bytes, std::io::Error> {
    encoded
        .map(Bytes::from)
        .map_err(|e| std::io::Error::other(format!("{e:#}")))
}

fn too_many_rows(max_rows: usize) -> String {
    format!(
        "the result has more than {max_rows} rows (the server's --max-rows); \
         add a LIMIT or aggregate"
    )
}

/// The media type of an Arrow IPC stream.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// Encodes a result incrementally in the format `Accept` asked for.
enum Encoding {
    JsonArray { rows_written: bool },
    JsonLines,
    Csv { header: bool },
    Arrow(Option<Box<arrow::ipc::writer::StreamWriter<Vec<u8>>>>),
}

impl Encoding {
    fn for_accept(accept: &str) -> Self {
        if accept.contains(ARROW_STREAM) {
            Encoding::Arrow(None)
        } else if accept.contains("text/csv") {
            Encoding::Csv { header: true }
        } else if accept.contains("application/x-ndjson") {
            Encoding::JsonLines
        } else {
            Encoding::JsonArray {
                rows_written: false,
            }
        }
    }

    fn content_type(&self) -> &'static str {
        match self {
            Encoding::JsonArray { .. } => "application/json",
            Encoding::JsonLines => "application/x-ndjson",
            Encoding::Csv { .. } => "text/csv",
            Encoding::Arrow(_) => ARROW_STREAM,
        }
    }

    fn start(&mut self, schema: &SchemaRef) -> anyhow::Result<Vec<u8>> {
        match self {
            Encoding::JsonArray { .. } => Ok(b"[".to_vec()),
            Encoding::JsonLines => Ok(Vec::new()),
            Encoding::Csv { header } => {
                // The header row even for an empty result.
                let mut out = Vec::new();
                arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut out)
                    .write(&crate::csv_ready(&RecordBatch::new_empty(schema.clone()))?)?;
                *header = false;
                Ok(out)
            }
            Encoding::Arrow(w) => {
                let mut writer = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), schema)?;
                let out = std::mem::take(writer.get_mut());
                *w = Some(Box::new(writer));
                Ok(out)
            }
        }
    }

    fn batch(&mut self, batch: &RecordBatch) -> anyhow::Result<Vec<u8>> {
        if batch.num_rows() == 0 {
            return Ok(Vec::new());
        }
        match self {
            Encoding::JsonArray { rows_written } => {
                let mut lines = Vec::new();
                let mut w = arrow::json::LineDelimitedWriter::new(&mut lines);
                w.write(batch)?;
                w.finish()?;
                drop(w);
                let mut out = Vec::with_capacity(lines.len() + 1);
                for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    if *rows_written {
                        out.push(b',');
                    }
                    out.extend_from_slice(line);
                    *rows_written = true;
                }
                Ok(out)
            }
            Encoding::JsonLines => {
                let mut out = Vec::new();
                let mut w = arrow::json::LineDelimitedWriter::new(&mut out);
                w.write(batch)?;
                w.finish()?;
                drop(w);
                Ok(out)
            }
            Encoding::Csv { header } => {
                let mut out = Vec::new();
                arrow::csv::WriterBuilder::new()
                    .with_header(*header)
                    .build(&mut out)
                    .write(&crate::csv_ready(batch)?)?;
                Ok(out)
            }
            Encoding::Arrow(w) => {
                let w = w
                    .as_mut()
                    .ok_or_else(|| anyhow::anyhow!("Arrow stream not started"))?;
                w.write(batch)?;
                Ok(std::mem::take(w.get_mut()))
            }
        }
    }

    fn finish(&mut self) -> anyhow::Result<Vec<u8>> {
        match self {
            Encoding::JsonArray { .. } => Ok(b"]".to_vec()),
            Encoding::JsonLines | Encoding::Csv { .. } => Ok(Vec::new()),
            Encoding::Arrow(w) => match w.as_mut() {
                Some(w) => {
                    w.finish()?;
                    Ok(std::mem::take(w.get_mut()))
                }
                None => Ok(Vec::new()),
            },
        }
    }
}

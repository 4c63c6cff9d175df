//! What one query may take, on every path: a memory pool every operator
//! reserves from (an aggregate that outgrows it fails with a clear error
//! instead of taking the machine), a deadline enforced while the query
//! runs (the server's `--query-timeout`, or a PostgreSQL client's shorter
//! `statement_timeout`), and cancellation by a PostgreSQL CancelRequest.
//!
//! The deadline is a node at the root of every physical plan, so it holds
//! however the plan is driven: the HTTP endpoint, psql's simple queries,
//! a driver's extended ones, or rows streamed long after the first.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use futures::task::AtomicWaker;
use futures::Stream;

/// Bounds on what one query may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall time from receipt to the last row.
    pub timeout: Duration,
    /// Rows in one result.
    pub max_rows: usize,
    /// HTTP queries running at once; more are refused, not queued.
    pub max_concurrent: usize,
    /// Bytes every query running at once may hold together.
    pub memory: usize,
    /// Connections open at once, per port.
    pub max_connections: usize,
    /// Threads queries run on: fewer than the cores, so ingestion keeps
    /// one.
    pub threads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(30),
            max_rows: 1_000_000,
            max_concurrent: 16,
            memory: default_query_memory(),
            max_connections: 256,
            threads: query_threads(),
        }
    }
}

/// The default query threads: one less than the cores, at least one.
pub fn query_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .saturating_sub(1)
        .max(1)
}

/// The compute a query may take before it is long: a long query runs only
/// with one of the long lane's permits (one per query thread), taken per
/// step in turn, so however many long queries run, a short one (an
/// analyst's count, a dashboard's refresh) still gets about half a thread
/// and answers in its own time, not in a share of the crowd's.
pub const SHORT_COMPUTE: Duration = Duration::from_millis(200);

/// The default `--query-memory`: a quarter of the machine's memory (or of
/// the container's limit), so queries can never take what the pipeline
/// needs; 1 GiB where neither can be read.
pub fn default_query_memory() -> usize {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb.saturating_mul(1024))
    });
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let total = match (meminfo, cgroup) {
        (Some(m), Some(c)) => m.min(c),
        (m, c) => m.or(c).unwrap_or(4 << 30),
    };
    usize::try_from(total / 4).unwrap_or(usize::MAX)
}

/// The error text of a query stopped by its deadline; the PostgreSQL wire
/// answers it with SQLSTATE 57014, as PostgreSQL does.
pub const TIMED_OUT: &str = "canceling statement due to statement timeout";
/// The error text of a query stopped by a CancelRequest.
pub const CANCELED: &str = "canceling statement due to user request";

/// One PostgreSQL connection's say over its queries: its
/// `statement_timeout` and its CancelRequests.
#[derive(Debug, Default)]
pub struct Connection {
    /// `statement_timeout` in ms; 0: the server's timeout alone.
    timeout_ms: AtomicU64,
    /// CancelRequests received so far.
    cancels: AtomicU64,
    waker: AtomicWaker,
}

impl Connection {
    /// Sets the client's `statement_timeout` (`None`: off).
    pub fn set_timeout(&self, timeout: Option<Duration>) {
        let ms = timeout.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.timeout_ms.store(ms, Ordering::Release);
    }

    fn timeout(&self) -> Option<Duration> {
        match self.timeout_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Stops the query running on this connection, if any.
    pub fn cancel(&self) {
        self.cancels.fetch_add(1, Ordering::AcqRel);
        self.waker.wake();
    }
}

tokio::task_local! {
    /// The PostgreSQL connection a task serves.
    pub static CONNECTION: Arc<Connection>;
}

/// Parses a `statement_timeout` value as PostgreSQL does: a number of
/// milliseconds, or a number with a unit (`ms`, `s`, `min`, `h`, `d`); 0
/// turns it off.
pub fn parse_timeout(value: &str) -> Option<Option<Duration>> {
    let v = value.trim().trim_matches(|c| c == '\'' || c == '"').trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let number: f64 = number.parse().ok()?;
    let ms = match unit.trim() {
        "" | "ms" => 1.0,
        "s" => 1e3,
        "min" => 60e3,
        "h" => 3600e3,
        "d" => 86_400e3,
        _ => return None,
    };
    let total = number * ms;
    if !total.is_finite() || total < 0.0 {
        return None;
    }
    Some((total >= 1.0).then(|| Duration::from_millis(total.min(u64::MAX as f64) as u64)))
}

/// What a CancelRequest names a connection by: its pid and secret key.
pub type CancelKey = (i32, Vec<u8>);

/// Connections by the key their CancelRequests name.
#[derive(Debug, Default)]
pub struct Connections(Mutex<HashMap<CancelKey, Arc<Connection>>>);

impl Connections {
    /// Records that `key` names `connection`.
    pub fn register(&self, key: CancelKey, connection: &Arc<Connection>) {
        if let Ok(mut m) = self.0.lock() {
            m.entry(key).or_insert_with(|| connection.clone());
        }
    }

    /// Forgets a closed connection.
    pub fn forget(&self, connection: &Arc<Connection>) {
        if let Ok(mut m) = self.0.lock() {
            m.retain(|_, c| !Arc::ptr_eq(c, connection));
        }
    }

    /// Cancels the query of the connection `key` names, if any.
    pub fn cancel(&self, key: &CancelKey) {
        if let Some(c) = self.0.lock().ok().and_then(|m| m.get(key).cloned()) {
            c.cancel();
        }
    }
}

/// Plans as DataFusion does, then puts a [`DeadlineExec`] at the root.
#[derive(Debug)]
pub struct BoundedPlanner {
    /// The server's timeout.
    pub timeout: Duration,
    /// The long lane: one permit per query thread.
    pub long_lane: Arc<tokio::sync::Semaphore>,
}

impl BoundedPlanner {
    /// A planner for queries with `limits`.
    pub fn new(limits: &Limits) -> Self {
        BoundedPlanner {
            timeout: limits.timeout,
            long_lane: Arc::new(tokio::sync::Semaphore::new(limits.threads.max(1))),
        }
    }
}

#[async_trait]
impl QueryPlanner for BoundedPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn datafusion::catalog::Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = DefaultPhysicalPlanner::default()
            .create_physical_plan(logical_plan, session)
            .await?;
        let connection = CONNECTION.try_with(Arc::clone).ok();
        let timeout = match connection.as_ref().and_then(|c| c.timeout()) {
            Some(t) => t.min(self.timeout),
            None => self.timeout,
        };
        Ok(Arc::new(DeadlineExec::new(
            plan,
            timeout,
            connection,
            self.long_lane.clone(),
        )))
    }
}

/// Passes its input through until the deadline or a CancelRequest, then
/// ends it with an error; once the query has computed for
/// [`SHORT_COMPUTE`], it goes on only in the long lane.
#[derive(Debug)]
pub struct DeadlineExec {
    input: Arc<dyn ExecutionPlan>,
    timeout: Duration,
    /// When the query started: set when it is planned, as it runs next.
    started: tokio::time::Instant,
    connection: Option<Arc<Connection>>,
    /// The connection's cancels when the query started.
    cancels: u64,
    long_lane: Arc<tokio::sync::Semaphore>,
}

impl DeadlineExec {
    fn new(
        input: Arc<dyn ExecutionPlan>,
        timeout: Duration,
        connection: Option<Arc<Connection>>,
        long_lane: Arc<tokio::sync::Semaphore>,
    ) -> Self {
        let cancels = connection
            .as_ref()
            .map_or(0, |c| c.cancels.load(Ordering::Acquire));
        DeadlineExec {
            input,
            timeout,
            started: tokio::time::Instant::now(),
            connection,
            cancels,
            long_lane,
        }
    }
}

impl DisplayAs for DeadlineExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeadlineExec: timeout={:?}", self.timeout)
    }
}

impl ExecutionPlan for DeadlineExec {
    fn name(&self) -> &str {
        "DeadlineExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(
                "DeadlineExec has one input".into(),
            ));
        }
        Ok(Arc::new(DeadlineExec {
            input: children.swap_remove(0),
            timeout: self.timeout,
            started: self.started,
            connection: self.connection.clone(),
            cancels: self.cancels,
            long_lane: self.long_lane.clone(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        Ok(Box::pin(Bounded {
            schema: input.schema(),
            input: Some(input),
            sleep: Box::pin(tokio::time::sleep_until(self.started + self.timeout)),
            timeout: self.timeout,
            connection: self.connection.clone(),
            cancels: self.cancels,
            computed: Duration::ZERO,
            long_lane: tokio_util::sync::PollSemaphore::new(self.long_lane.clone()),
        }))
    }
}

struct Bounded {
    schema: SchemaRef,
    /// `None` once ended.
    input: Option<SendableRecordBatchStream>,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    connection: Option<Arc<Connection>>,
    cancels: u64,
    /// Time spent in the input's polls so far.
    computed: Duration,
    long_lane: tokio_util::sync::PollSemaphore,
}

impl Stream for Bounded {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.input.is_none() {
            return Poll::Ready(None);
        }
        if let Some(c) = &self.connection {
            c.waker.register(cx.waker());
            if c.cancels.load(Ordering::Acquire) != self.cancels {
                // Dropping the input stops every task it spawned.
                self.input = None;
                return Poll::Ready(Some(Err(DataFusionError::Execution(CANCELED.into()))));
            }
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.input = None;
            let m = format!(
                "{TIMED_OUT} ({} s; the server's --query-timeout or the client's statement_timeout)",
                self.timeout.as_secs_f64()
            );
            return Poll::Ready(Some(Err(DataFusionError::Execution(m))));
        }
        // Taken for one step and given back after it: the semaphore is
        // fair, so the long queries step in turn.
        let _permit = if self.computed >= SHORT_COMPUTE {
            match self.long_lane.poll_acquire(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(permit) => permit,
            }
        } else {
            None
        };
        let started = std::time::Instant::now();
        let polled = self
            .input
            .as_mut()
            .map_or(Poll::Ready(None), |s| s.as_mut().poll_next(cx));
        self.computed += started.elapsed();
        if let Poll::Ready(None) = polled {
            self.input = None;
        }
        polled
    }
}

impl RecordBatchStream for Bounded {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_timeouts_parse_as_postgresql_reads_them() {
        let ms = |n| Some(Some(Duration::from_millis(n)));
        assert_eq!(parse_timeout("1000"), ms(1000));
        assert_eq!(parse_timeout("'1s'"), ms(1000));
        assert_eq!(parse_timeout("1.5s"), ms(1500));
        assert_eq!(parse_timeout("2min"), ms(120_000));
        assert_eq!(parse_timeout("250ms"), ms(250));
        assert_eq!(parse_timeout("0"), Some(None));
        assert_eq!(parse_timeout("soon"), None);
        assert_eq!(parse_timeout("-1"), None);
    }
}

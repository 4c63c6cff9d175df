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
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
    TrackConsumersPool,
};
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
    /// Threads queries run on (at a lower priority than ingestion); long
    /// queries step on one fewer at a time, so a short one always finds
    /// a thread.
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

/// The default query threads: one per core, at least two (one for long
/// queries, one kept for short ones).
pub fn query_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2)
}

/// The compute a query may take before it is long: a long query runs only
/// with one of the long lane's permits (one fewer than the query threads), taken per
/// step in turn, so however many long queries run, a short one (an
/// analyst's count, a dashboard's refresh) still gets about half a thread
/// and answers in its own time, not in a share of the crowd's.
pub const SHORT_COMPUTE: Duration = Duration::from_millis(200);

/// The query memory pool: `limit` bytes, of which the last quarter only
/// small reservations may take.
///
/// DataFusion's greedy pool lets whoever asks first take everything: a few
/// analysts' sorts and scans of whole tables filled it, and a dashboard's
/// point lookup, needing a hundred kilobytes for a file's footer and bloom
/// filter, was refused. Here a reservation that is or would grow past
/// [`SMALL_RESERVATION`] stops short of the last quarter (a sort spills
/// there, an aggregate fails), so small queries still run while large
/// ones are turned away. The quarter is also room for what running
/// queries hold without reserving it (batches between operators, pages
/// being decoded, the live rows they read): 190–400 MiB beside a full
/// 1 GiB pool in the hostile benchmark (docs/benchmarks.md), which the
/// process's memory must stay within with the pool.
pub fn query_pool(limit: usize) -> Arc<dyn MemoryPool> {
    let limit = limit.max(1 << 20);
    Arc::new(SmallFirst {
        inner: TrackConsumersPool::new(
            GreedyMemoryPool::new(limit),
            std::num::NonZeroUsize::new(5).unwrap_or(std::num::NonZeroUsize::MIN),
        ),
        limit,
        large_limit: limit - limit / 4,
    })
}

/// The message for an error that is the pool refusing a query, on either
/// port: what to do first, DataFusion's own words after; `None` for any
/// other error.
pub(crate) fn over_the_pool(error: &str) -> Option<String> {
    error.contains("Resources exhausted").then(|| {
        format!(
            "the query needs more memory than the server's --query-memory allows; \
             filter or aggregate more ({})",
            error.lines().next().unwrap_or_default()
        )
    })
}

/// The largest reservation [`query_pool`] counts as small.
pub const SMALL_RESERVATION: usize = 2 << 20;

#[derive(Debug)]
struct SmallFirst {
    inner: TrackConsumersPool<GreedyMemoryPool>,
    limit: usize,
    /// What reservations past [`SMALL_RESERVATION`] may bring the pool to.
    large_limit: usize,
}

impl fmt::Display for SmallFirst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "query pool of {} bytes, the last {} for small reservations",
            self.limit,
            self.limit - self.large_limit
        )
    }
}

impl MemoryPool for SmallFirst {
    fn name(&self) -> &str {
        "small-first"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer)
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer)
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.inner.grow(reservation, additional)
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.inner.shrink(reservation, shrink)
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        let large = reservation.size().saturating_add(additional) > SMALL_RESERVATION;
        if large && self.inner.reserved().saturating_add(additional) > self.large_limit {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{} cannot take {additional} more bytes: the query memory pool \
                 (--query-memory) has {} of {} bytes in use, and its last quarter is kept \
                 for small queries",
                reservation.consumer().name(),
                self.inner.reserved(),
                self.limit,
            )));
        }
        self.inner.try_grow(reservation, additional)
    }

    fn reserved(&self) -> usize {
        self.inner.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.inner.memory_limit()
    }
}

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

/// Plans as DataFusion does, then puts a [`Deadline`] at the root.
#[derive(Debug)]
pub struct BoundedPlanner {
    /// The server's timeout.
    pub timeout: Duration,
    /// The long lane: one permit fewer than the query threads.
    pub long_lane: Arc<tokio::sync::Semaphore>,
    /// The compute after which a query is long ([`SHORT_COMPUTE`]).
    pub short_compute: Duration,
}

impl BoundedPlanner {
    /// A planner for queries with `limits`.
    pub fn new(limits: &Limits) -> Self {
        BoundedPlanner {
            timeout: limits.timeout,
            long_lane: Arc::new(tokio::sync::Semaphore::new(
                limits.threads.saturating_sub(1).max(1),
            )),
            short_compute: SHORT_COMPUTE,
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
        let lane = Arc::new(Lane {
            long: self.long_lane.clone(),
            short_nanos: u64::try_from(self.short_compute.as_nanos()).unwrap_or(u64::MAX),
            computed_nanos: AtomicU64::new(0),
        });
        let plan = gate_spawned_inputs(plan, &lane)?;
        Ok(Arc::new(GateExec {
            input: plan,
            gate: Deadline::new(timeout, connection, lane),
        }))
    }
}

/// Operators that drive their inputs from tasks of their own: the root's
/// step does not cover those tasks, so each input is stepped on its own.
fn spawns_inputs(plan: &dyn ExecutionPlan) -> bool {
    matches!(
        plan.name(),
        "RepartitionExec" | "CoalescePartitionsExec" | "SortPreservingMergeExec"
    )
}

/// Puts a lane step (`LaneExec`) above every input of an operator that spawns tasks
/// to drive them.
fn gate_spawned_inputs(
    plan: Arc<dyn ExecutionPlan>,
    lane: &Arc<Lane>,
) -> Result<Arc<dyn ExecutionPlan>> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::physical_plan::execution_plan::{
        ChildrenPropertiesMode, ReplaceChildrenOptions,
    };
    plan.transform_up(|node| {
        if !spawns_inputs(node.as_ref()) {
            return Ok(Transformed::no(node));
        }
        let children = node
            .children()
            .into_iter()
            .map(|c| {
                Arc::new(GateExec {
                    input: c.clone(),
                    gate: LaneStep(lane.clone()),
                }) as Arc<dyn ExecutionPlan>
            })
            .collect();
        // A lane node has its input's properties: the parent's stay.
        let keep = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep);
        Ok(Transformed::yes(node.replace_children(children, keep)?))
    })
    .map(|t| t.data)
}

/// One query's place in the lanes, shared by every task it runs: its
/// compute so far, and the long lane it steps in once that passes
/// [`SHORT_COMPUTE`].
#[derive(Debug)]
struct Lane {
    long: Arc<tokio::sync::Semaphore>,
    short_nanos: u64,
    computed_nanos: AtomicU64,
}

std::thread_local! {
    /// Set while a step polls: a stream polled inside another's step (an
    /// operator that drives its input inline) is part of that step.
    static IN_STEP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Clears [`IN_STEP`] when a step ends, even by a panic.
struct StepGuard;

impl Drop for StepGuard {
    fn drop(&mut self) {
        IN_STEP.with(|s| s.set(false));
    }
}

/// A stream of one query, polled in steps: short while the query has
/// computed less than [`SHORT_COMPUTE`], then only holding a long-lane
/// permit, taken for one step and given back after it (the semaphore is
/// fair, so long queries step in turn).
struct Stepped {
    input: SendableRecordBatchStream,
    lane: Arc<Lane>,
    permits: tokio_util::sync::PollSemaphore,
}

impl Stepped {
    fn new(input: SendableRecordBatchStream, lane: Arc<Lane>) -> Self {
        let permits = tokio_util::sync::PollSemaphore::new(lane.long.clone());
        Stepped {
            input,
            lane,
            permits,
        }
    }

    fn step(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<RecordBatch>>> {
        if IN_STEP.with(|s| s.get()) {
            return self.input.as_mut().poll_next(cx);
        }
        let long = self.lane.computed_nanos.load(Ordering::Relaxed) >= self.lane.short_nanos;
        let _permit = if long {
            match self.permits.poll_acquire(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(permit) => permit,
            }
        } else {
            None
        };
        IN_STEP.with(|s| s.set(true));
        let _guard = StepGuard;
        let started = std::time::Instant::now();
        let polled = self.input.as_mut().poll_next(cx);
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.lane.computed_nanos.fetch_add(took, Ordering::Relaxed);
        polled
    }
}

impl Stream for Stepped {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.step(cx)
    }
}

impl RecordBatchStream for Stepped {
    fn schema(&self) -> SchemaRef {
        self.input.schema()
    }
}

/// What a node that passes its input through adds to the input's stream.
trait Gate: fmt::Debug + Clone + Send + Sync + 'static {
    /// The node's name in plans.
    const NAME: &'static str;
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
    fn wrap(&self, input: SendableRecordBatchStream) -> SendableRecordBatchStream;
}

/// A plan node passing its input through a [`Gate`]: with the input's
/// properties, so the plan around it is unchanged.
#[derive(Debug)]
struct GateExec<G: Gate> {
    input: Arc<dyn ExecutionPlan>,
    gate: G,
}

impl<G: Gate> DisplayAs for GateExec<G> {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.gate.describe(f)
    }
}

impl<G: Gate> ExecutionPlan for GateExec<G> {
    fn name(&self) -> &str {
        G::NAME
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
            return Err(DataFusionError::Internal(format!(
                "{} has one input",
                G::NAME
            )));
        }
        Ok(Arc::new(GateExec {
            input: children.swap_remove(0),
            gate: self.gate.clone(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        Ok(self.gate.wrap(self.input.execute(partition, context)?))
    }
}

/// Steps its input in its query's lane (see [`Stepped`]); put above the
/// inputs an operator drives from tasks of its own.
#[derive(Debug, Clone)]
struct LaneStep(Arc<Lane>);

impl Gate for LaneStep {
    const NAME: &'static str = "LaneExec";

    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Self::NAME)
    }

    fn wrap(&self, input: SendableRecordBatchStream) -> SendableRecordBatchStream {
        Box::pin(Stepped::new(input, self.0.clone()))
    }
}

/// Passes its input through until the deadline or a CancelRequest, then
/// ends it with an error; once the query has computed for
/// [`SHORT_COMPUTE`], it goes on only in the long lane. The root of every
/// plan (`DeadlineExec`).
#[derive(Debug, Clone)]
struct Deadline {
    timeout: Duration,
    /// When the query started: set when it is planned, as it runs next.
    started: tokio::time::Instant,
    connection: Option<Arc<Connection>>,
    /// The connection's cancels when the query started.
    cancels: u64,
    lane: Arc<Lane>,
}

impl Deadline {
    fn new(timeout: Duration, connection: Option<Arc<Connection>>, lane: Arc<Lane>) -> Self {
        let cancels = connection
            .as_ref()
            .map_or(0, |c| c.cancels.load(Ordering::Acquire));
        Deadline {
            timeout,
            started: tokio::time::Instant::now(),
            connection,
            cancels,
            lane,
        }
    }
}

impl Gate for Deadline {
    const NAME: &'static str = "DeadlineExec";

    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: timeout={:?}", Self::NAME, self.timeout)
    }

    fn wrap(&self, input: SendableRecordBatchStream) -> SendableRecordBatchStream {
        Box::pin(Bounded {
            schema: input.schema(),
            input: Some(Stepped::new(input, self.lane.clone())),
            sleep: Box::pin(tokio::time::sleep_until(self.started + self.timeout)),
            timeout: self.timeout,
            connection: self.connection.clone(),
            cancels: self.cancels,
        })
    }
}

struct Bounded {
    schema: SchemaRef,
    /// `None` once ended.
    input: Option<Stepped>,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    connection: Option<Arc<Connection>>,
    cancels: u64,
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
        let polled = self
            .input
            .as_mut()
            .map_or(Poll::Ready(None), |s| s.step(cx));
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
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// A session whose queries are all long from their first step, with one
    /// long-lane permit.
    fn long_from_the_start(partitions: usize) -> (SessionContext, Arc<tokio::sync::Semaphore>) {
        let limits = Limits {
            threads: 1,
            ..Limits::default()
        };
        let mut planner = BoundedPlanner::new(&limits);
        planner.short_compute = Duration::ZERO;
        let lane = planner.long_lane.clone();
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_config(SessionConfig::new().with_target_partitions(partitions))
            .with_query_planner(Arc::new(planner))
            .build();
        (SessionContext::new_with_state(state), lane)
    }

    #[test]
    fn the_last_quarter_of_the_pool_is_kept_for_small_reservations() {
        let pool = query_pool(64 << 20);
        let sort = MemoryConsumer::new("a sort").register(&pool);
        sort.try_grow(48 << 20).expect("three quarters");
        let refused = sort.try_grow(1).expect_err("past three quarters");
        assert!(
            refused.to_string().contains("kept for small queries"),
            "{refused}"
        );
        // A read of a footer and a bloom filter still fits, up to the limit.
        let lookup = MemoryConsumer::new("a lookup").register(&pool);
        lookup
            .try_grow(SMALL_RESERVATION)
            .expect("a small reservation");
        let scan = MemoryConsumer::new("a row group").register(&pool);
        assert!(scan.try_grow(SMALL_RESERVATION + 1).is_err());
        let others: Vec<_> = (0..7)
            .map(|_| {
                let r = MemoryConsumer::new("a lookup").register(&pool);
                r.try_grow(SMALL_RESERVATION).map(|()| r)
            })
            .collect();
        assert!(others.iter().all(Result::is_ok));
        let past = MemoryConsumer::new("a lookup").register(&pool);
        assert!(past.try_grow(1).is_err(), "the pool's limit holds for all");
        drop((sort, others));
        scan.try_grow(SMALL_RESERVATION + 1).expect("room again");
    }

    const SPAWNING: &str = "SELECT value % 7 AS k, COUNT(*) AS n FROM generate_series(1, 200000) \
                            GROUP BY value % 7 ORDER BY k";

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn every_input_driven_by_a_task_of_its_own_steps_in_the_lane() -> Result<()> {
        let (ctx, _) = long_from_the_start(2);
        let plan = ctx.sql(SPAWNING).await?.create_physical_plan().await?;
        let mut spawners = 0;
        let mut nodes = vec![plan];
        while let Some(node) = nodes.pop() {
            if spawns_inputs(node.as_ref()) {
                spawners += 1;
                for c in node.children() {
                    assert_eq!(c.name(), "LaneExec", "{} has an ungated input", node.name());
                }
            }
            nodes.extend(node.children().into_iter().cloned());
        }
        assert!(
            spawners > 0,
            "the query plans no operator that spawns tasks"
        );
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn long_queries_finish_with_one_permit_however_their_steps_nest() -> Result<()> {
        for partitions in [1, 2, 4] {
            let (ctx, _) = long_from_the_start(partitions);
            let rows = ctx.sql(SPAWNING).await?.collect().await?;
            let n: usize = rows.iter().map(RecordBatch::num_rows).sum();
            assert_eq!(n, 7, "with {partitions} partitions");
        }
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_long_query_waits_while_the_lane_is_taken() -> Result<()> {
        let (ctx, lane) = long_from_the_start(2);
        let taken = lane.clone().acquire_owned().await;
        let query = tokio::spawn(async move { ctx.sql(SPAWNING).await?.collect().await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!query.is_finished(), "a long query ran without a permit");
        drop(taken);
        let rows = tokio::time::timeout(Duration::from_secs(60), query)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .map_err(|e| DataFusionError::External(Box::new(e)))??;
        assert_eq!(rows.iter().map(RecordBatch::num_rows).sum::<usize>(), 7);
        Ok(())
    }

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

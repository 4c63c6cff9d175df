//! Tables that find their rows when a query scans them.
//!
//! A server keeps one session for its whole life; what a table holds changes
//! with every checkpoint. So a table here is not a list of files fixed when
//! it was registered: at each scan it takes the newest [`LiveView`] (the
//! last committed manifest and, while the pipeline runs, its rows in memory)
//! and plans over exactly those files and rows. A query sees one consistent
//! checkpoint per table, and files a later compaction retires stay readable
//! for minutes after it (see `compact`), longer than a query takes.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::{MemTable, TableProvider, TableType};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, LogicalPlan, TableProviderFilterPushDown};
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::ExecutionPlan;
use paicha_contract::registry::Registry;
use paicha_processors::remote::Remote;
use paicha_processors::store::{Manifest, Store, META_DIR};
use paicha_processors::tasks::TASK_PREFIX;
use paicha_processors::LiveView;

use crate::Live;

/// Where a table's rows come from: every partition task's directory under
/// the data directory (shared by all instances of a consumer group), read
/// from its committed manifest, except the tasks this process runs, whose
/// rows in memory it publishes in [`Live`].
pub(crate) struct Snapshots {
    data_dir: PathBuf,
    registry: Registry,
    live: Option<Live>,
    /// Shared storage every task commits to (`--storage`), if not the data
    /// directory.
    remote: Option<Arc<Remote>>,
    /// Each stored task directory's view, by prefix, with the manifest stamp
    /// it was read at: rebuilt only when that task commits.
    stored: Mutex<BTreeMap<String, (Stamp, Arc<LiveView>)>>,
    /// The last merged view and the identity of every part it came from.
    merged: Mutex<Option<(Identity, Arc<LiveView>)>>,
}

/// The parts a merged view was built from: each task's prefix and the
/// address of its view (a new view is a new `Arc`).
type Identity = Vec<(String, usize)>;

/// What identifies a committed manifest without reading it all: its file's
/// metadata locally; in an object store, when it was last fetched (a task
/// another instance runs is re-read at most every [`REMOTE_REFRESH`]) and
/// its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stamp {
    Local {
        inode: u64,
        len: u64,
        modified: Option<std::time::SystemTime>,
    },
    Remote {
        fetched: std::time::Instant,
        bytes: bytes::Bytes,
    },
}

/// How stale the view of a task in the object store may get: about one
/// checkpoint interval, so the other instances' rows show up as soon as
/// they are committed without a request per task per query.
const REMOTE_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

impl Snapshots {
    pub(crate) fn new(
        data_dir: &Path,
        registry: Registry,
        live: Option<Live>,
        remote: Option<Arc<Remote>>,
    ) -> Self {
        Snapshots {
            data_dir: data_dir.to_path_buf(),
            registry,
            live,
            remote,
            stored: Mutex::new(BTreeMap::new()),
            merged: Mutex::new(None),
        }
    }

    /// The task directories under the data directory, by prefix: the root
    /// itself (`""`; it holds tables only in a directory written before
    /// partition tasks) and every `partition=N/`.
    fn task_dirs(&self) -> Result<Vec<(String, Option<i32>)>> {
        let mut dirs = vec![(String::new(), None)];
        if let Some(remote) = &self.remote {
            dirs.extend(
                remote
                    .tasks()?
                    .into_iter()
                    .map(|n| (format!("{TASK_PREFIX}{n}/"), Some(n))),
            );
            return Ok(dirs);
        }
        let entries = std::fs::read_dir(&self.data_dir)
            .with_context(|| format!("cannot read {}", self.data_dir.display()))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_prefix(TASK_PREFIX))
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            dirs.push((format!("{TASK_PREFIX}{n}/"), Some(n)));
        }
        dirs.sort();
        Ok(dirs)
    }

    /// The view of every task now, merged.
    pub(crate) fn current(&self) -> Result<Arc<LiveView>> {
        let live = match &self.live {
            Some(l) => l
                .read()
                .map_err(|_| anyhow::anyhow!("the pipeline's live state is unavailable"))?
                .clone(),
            None => Default::default(),
        };
        let mut parts: Vec<(String, Arc<LiveView>)> = Vec::new();
        {
            let mut stored = self
                .stored
                .lock()
                .map_err(|_| anyhow::anyhow!("the catalog cache is unavailable"))?;
            for (prefix, task) in self.task_dirs()? {
                let dir = self.data_dir.join(&prefix);
                if let Some(view) = task.and_then(|t| live.get(&t)) {
                    // This process runs the task: its files are local.
                    parts.push((prefix, view.clone()));
                    continue;
                }
                let (place, view) = match &self.remote {
                    Some(remote) => match self.remote_view(remote, &prefix, &mut stored)? {
                        Some(view) => (remote.url_of(&prefix), view),
                        None => continue,
                    },
                    None => match self.local_view(&dir, &prefix, &mut stored)? {
                        Some(view) => (prefix.clone(), view),
                        None => continue,
                    },
                };
                parts.push((place, view));
            }
        }
        let identity: Identity = parts
            .iter()
            .map(|(p, v)| (p.clone(), Arc::as_ptr(v) as usize))
            .collect();
        let mut merged = self
            .merged
            .lock()
            .map_err(|_| anyhow::anyhow!("the catalog cache is unavailable"))?;
        if let Some((id, view)) = merged.as_ref() {
            if *id == identity {
                return Ok(view.clone());
            }
        }
        let view = Arc::new(merge(&parts)?);
        *merged = Some((identity, view.clone()));
        Ok(view)
    }

    /// The committed view of the task directory `dir`, `None` while it has
    /// no manifest (being created).
    fn local_view(
        &self,
        dir: &Path,
        prefix: &str,
        stored: &mut BTreeMap<String, (Stamp, Arc<LiveView>)>,
    ) -> Result<Option<Arc<LiveView>>> {
        let Some(stamp) = stamp(dir) else {
            return Ok(None);
        };
        if let Some((s, view)) = stored.get(prefix) {
            if *s == stamp {
                return Ok(Some(view.clone()));
            }
        }
        let m = Store::open(dir)?.manifest()?.unwrap_or_default();
        let view = Arc::new(LiveView::from_manifest(dir, &m, &self.registry)?);
        stored.insert(prefix.to_string(), (stamp, view.clone()));
        Ok(Some(view))
    }

    /// The committed view of the task under `prefix` in the object store.
    fn remote_view(
        &self,
        remote: &Remote,
        prefix: &str,
        stored: &mut BTreeMap<String, (Stamp, Arc<LiveView>)>,
    ) -> Result<Option<Arc<LiveView>>> {
        let cached = stored.get(prefix).and_then(|(s, view)| match s {
            Stamp::Remote { fetched, bytes } => Some((*fetched, bytes.clone(), view.clone())),
            Stamp::Local { .. } => None,
        });
        if let Some((fetched, _, view)) = &cached {
            if fetched.elapsed() < REMOTE_REFRESH {
                return Ok(Some(view.clone()));
            }
        }
        let Some((m, bytes)) = remote.manifest(prefix)? else {
            return Ok(None);
        };
        let view = match cached {
            Some((_, old, view)) if old == bytes => view,
            _ => {
                let read = |rel: &str| -> Result<Vec<u8>> {
                    remote
                        .get(&format!("{prefix}{rel}"))?
                        .map(|b| b.to_vec())
                        .with_context(|| {
                            format!("{} is missing", remote.url_of(&format!("{prefix}{rel}")))
                        })
                };
                Arc::new(LiveView::from_files(&read, &m, &self.registry)?)
            }
        };
        let stamp = Stamp::Remote {
            fetched: std::time::Instant::now(),
            bytes,
        };
        stored.insert(prefix.to_string(), (stamp, view.clone()));
        Ok(Some(view))
    }

    /// Where the files of `table` are: absolute paths and URLs as the merged
    /// manifest gives them, or paths relative to the data directory.
    fn files(&self, view: &LiveView, table: &str) -> Vec<String> {
        view.manifest
            .table_files(table)
            .map(|f| {
                if f.contains("://") || Path::new(f).is_absolute() {
                    f.clone()
                } else {
                    self.data_dir.join(f).to_string_lossy().into_owned()
                }
            })
            .collect()
    }
}

/// The stamp of a task directory's committed manifest (`None` if it has none).
fn stamp(dir: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(dir.join(META_DIR).join("manifest.json")).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp::Local {
        inode,
        len: meta.len(),
        modified: meta.modified().ok(),
    })
}

/// One view of several tasks: their rows side by side, and one manifest
/// listing every task's files prefixed by where its directory is (relative
/// to the data directory, an absolute path, or an object store URL).
/// Districts never share a task, so no key appears in two parts.
fn merge(parts: &[(String, Arc<LiveView>)]) -> Result<LiveView> {
    let Some((_, first)) = parts.first() else {
        anyhow::bail!("the data directory has no manifest");
    };
    let mut manifest = Manifest::clone(&first.manifest);
    manifest.tables.clear();
    manifest.sealed.clear();
    manifest.sealed_files = Default::default();
    manifest.offsets.clear();
    let mut rows: BTreeMap<&'static str, Vec<RecordBatch>> = BTreeMap::new();
    for (prefix, part) in parts {
        for table in part.manifest.table_names() {
            manifest.tables.entry(table.clone()).or_default().extend(
                part.manifest
                    .table_files(table)
                    .map(|f| format!("{prefix}{f}")),
            );
        }
        manifest
            .offsets
            .extend(part.manifest.offsets.iter().cloned());
        if !part.manifest.time_zone.is_empty() {
            manifest.time_zone = part.manifest.time_zone.clone();
        }
        for (table, batches) in &part.rows {
            rows.entry(table)
                .or_default()
                .extend(batches.iter().cloned());
        }
    }
    let view = LiveView {
        manifest: Arc::new(manifest),
        rows,
    };
    Ok(view)
}

#[derive(Debug)]
pub(crate) struct Current {
    name: &'static str,
    schema: SchemaRef,
    source: Arc<Snapshots>,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl Current {
    /// The table `name`: its files in the manifest and its rows in the
    /// live view.
    pub(crate) fn new(name: &'static str, schema: SchemaRef, source: Arc<Snapshots>) -> Arc<Self> {
        Arc::new(Current {
            name,
            schema,
            source,
        })
    }
}

fn external(e: anyhow::Error) -> DataFusionError {
    DataFusionError::External(e.into())
}

#[async_trait::async_trait]
impl TableProvider for Current {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        // Parquet prunes row groups with them; the filter is applied again
        // above the scan, so memory rows need not honor it.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let view = self.source.current().map_err(external)?;
        let mut plans = Vec::with_capacity(2);
        let files = self.source.files(&view, self.name);
        if !files.is_empty() {
            let table = parquet_table(files, self.schema.clone())?;
            plans.push(table.scan(state, projection, filters, limit).await?);
        }
        let rows = view.rows(self.name);
        let memory = MemTable::try_new(self.schema.clone(), vec![rows])?;
        plans.push(memory.scan(state, projection, filters, limit).await?);
        UnionExec::try_new(plans)
    }
}

fn parquet_table(files: Vec<String>, schema: SchemaRef) -> datafusion::error::Result<ListingTable> {
    let urls = files
        .iter()
        .map(ListingTableUrl::parse)
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(schema);
    ListingTable::try_new(config)
}

/// A view listed as a table.
///
/// The contract's tables are views over stored rows, but clients list them
/// the way PostgreSQL lists tables (psql's `\dt` shows relations of kind
/// `r` only), so they are reported as base tables.
#[derive(Debug)]
pub(crate) struct AsTable(pub(crate) Arc<dyn TableProvider>);

#[async_trait::async_trait]
impl TableProvider for AsTable {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn get_table_definition(&self) -> Option<&str> {
        self.0.get_table_definition()
    }

    fn get_logical_plan(&'_ self) -> Option<Cow<'_, LogicalPlan>> {
        self.0.get_logical_plan()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        self.0.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        self.0.scan(state, projection, filters, limit).await
    }
}

/// Results of recent queries, valid while the tables' snapshot is.
///
/// A wall of dashboards sends the same queries every refresh, from every
/// screen, and the answer can only change when a checkpoint publishes a new
/// snapshot. So a query whose plan calls nothing volatile (`now()`,
/// `random()`, …) is answered from here when the same text ran on the same
/// snapshot; concurrent identical queries wait for the first one rather
/// than each running it.
pub(crate) struct Results {
    source: Arc<Snapshots>,
    current: Mutex<Generation>,
    /// Rows one result may have (the server's `--max-rows`).
    max_rows: usize,
}

type Cell = Arc<tokio::sync::OnceCell<(SchemaRef, Arc<Vec<RecordBatch>>)>>;

#[derive(Default)]
struct Generation {
    /// Held so that its address, the generation's identity, is not reused.
    view: Option<Arc<LiveView>>,
    results: std::collections::HashMap<String, Cell>,
    /// Bytes of the results kept, and which are counted in them.
    bytes: usize,
    counted: std::collections::HashSet<String>,
}

/// Most results kept per snapshot.
const RESULTS_KEPT: usize = 512;
/// Largest result kept, in bytes.
const RESULT_BYTES_KEPT: usize = 8 << 20;
/// Bytes of all the results kept: a wall of dashboards needs far less.
const RESULTS_BYTES_KEPT: usize = 64 << 20;

impl Results {
    pub(crate) fn new(source: Arc<Snapshots>, max_rows: usize) -> Self {
        Results {
            source,
            current: Mutex::new(Generation::default()),
            max_rows,
        }
    }

    /// The snapshot a query would read now.
    pub(crate) fn snapshot(&self) -> Result<Arc<LiveView>> {
        self.source.current()
    }

    /// The rows of `df`, from the cache when `key` ran on this snapshot.
    pub(crate) async fn rows(
        &self,
        key: &str,
        df: datafusion::dataframe::DataFrame,
    ) -> datafusion::error::Result<(SchemaRef, Arc<Vec<RecordBatch>>)> {
        let max_rows = self.max_rows;
        let collect = |df| async move {
            let (schema, batches) = collect(df, max_rows).await?;
            datafusion::error::Result::Ok((schema, Arc::new(batches)))
        };
        if volatile(df.logical_plan()) {
            return collect(df).await;
        }
        let view = self.source.current().map_err(external)?;
        let cell = {
            let mut g = self.current.lock().map_err(|_| {
                DataFusionError::Execution("the result cache is unavailable".into())
            })?;
            if !g.view.as_ref().is_some_and(|v| Arc::ptr_eq(v, &view)) {
                g.view = Some(view);
                g.results.clear();
                g.bytes = 0;
                g.counted.clear();
            }
            if g.results.len() >= RESULTS_KEPT && !g.results.contains_key(key) {
                g.results.clear();
                g.bytes = 0;
                g.counted.clear();
            }
            g.results.entry(key.to_string()).or_default().clone()
        };
        let rows = cell.get_or_try_init(|| collect(df)).await?.clone();
        let bytes: usize = rows.1.iter().map(|b| b.get_array_memory_size()).sum();
        if let Ok(mut guard) = self.current.lock() {
            let g = &mut *guard;
            // Counted once per result: the first caller to finish decides.
            let kept = g.results.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell));
            if kept && g.counted.insert(key.to_string()) {
                if bytes > RESULT_BYTES_KEPT || g.bytes.saturating_add(bytes) > RESULTS_BYTES_KEPT {
                    // Not kept: the next run computes again, and is
                    // weighed again.
                    g.results.remove(key);
                    g.counted.remove(key);
                } else {
                    g.bytes += bytes;
                }
            }
        }
        Ok(rows)
    }
}

/// The rows of `df` and their schema; an error past `max_rows` rows.
pub(crate) async fn collect(
    df: datafusion::dataframe::DataFrame,
    max_rows: usize,
) -> datafusion::error::Result<(SchemaRef, Vec<RecordBatch>)> {
    use datafusion::execution::memory_pool::MemoryConsumer;
    use futures::StreamExt;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    // A result gathered whole (the wire's simple protocol caches it) is
    // memory a query holds: it counts against the query pool like an
    // operator's, so four clients each gathering a million rows cannot
    // take what the pool keeps for everyone.
    let pool = df.task_ctx().memory_pool().clone();
    let reservation = MemoryConsumer::new("a result gathered for the wire").register(&pool);
    let mut stream = df.execute_stream().await?;
    let (mut batches, mut rows) = (Vec::new(), 0usize);
    while let Some(b) = stream.next().await {
        let b = b?;
        reservation.try_grow(b.get_array_memory_size())?;
        rows = rows.saturating_add(b.num_rows());
        if rows > max_rows {
            return Err(DataFusionError::Execution(format!(
                "the result has more than {max_rows} rows (the server's --max-rows); \
                 add a LIMIT or aggregate"
            )));
        }
        batches.push(b);
    }
    Ok((schema, batches))
}

/// Whether the plan calls a function whose answer may change between two
/// runs on the same data.
fn volatile(plan: &LogicalPlan) -> bool {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::Volatility;
    let mut found = false;
    let _ = plan.apply_with_subqueries(|node| {
        for e in node.expressions() {
            let _ = e.apply(|e| {
                if let Expr::ScalarFunction(f) = e {
                    if f.func.signature().volatility != Volatility::Immutable {
                        found = true;
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            });
        }
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

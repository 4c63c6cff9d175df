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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Result;
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
use paicha_ingest::registry::Registry;
use paicha_processors::store::{Store, META_DIR};
use paicha_processors::LiveView;

use crate::Live;

/// Picks a table's in-memory rows out of a [`LiveView`].
pub(crate) type Rows = fn(&LiveView) -> Vec<RecordBatch>;

/// Where the newest [`LiveView`] comes from.
pub(crate) struct Snapshots {
    data_dir: PathBuf,
    kind: Kind,
}

enum Kind {
    /// A running pipeline publishes its view at every checkpoint.
    Live(Live),
    /// A stopped directory: the view is rebuilt when the manifest changes.
    Stored {
        store: Store,
        registry: Box<Registry>,
        cached: Mutex<Option<(Stamp, Arc<LiveView>)>>,
    },
}

/// Identifies one committed manifest: each commit renames a new file into
/// place, so the inode changes even when size and time do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl Snapshots {
    pub(crate) fn live(data_dir: &Path, live: Live) -> Self {
        Snapshots {
            data_dir: data_dir.to_path_buf(),
            kind: Kind::Live(live),
        }
    }

    pub(crate) fn stored(data_dir: &Path, store: Store, registry: Registry) -> Self {
        Snapshots {
            data_dir: data_dir.to_path_buf(),
            kind: Kind::Stored {
                store,
                registry: Box::new(registry),
                cached: Mutex::new(None),
            },
        }
    }

    /// The newest view.
    pub(crate) fn current(&self) -> Result<Arc<LiveView>> {
        match &self.kind {
            Kind::Live(l) => Ok(l
                .read()
                .map_err(|_| anyhow::anyhow!("the pipeline's live state is unavailable"))?
                .clone()),
            Kind::Stored {
                store,
                registry,
                cached,
            } => {
                let stamp = self.stamp();
                let mut cached = cached
                    .lock()
                    .map_err(|_| anyhow::anyhow!("the catalog cache is unavailable"))?;
                if let (Some(stamp), Some((s, view))) = (stamp, cached.as_ref()) {
                    if stamp == *s {
                        return Ok(view.clone());
                    }
                }
                let m = store.manifest()?.unwrap_or_default();
                let view = Arc::new(LiveView::from_manifest(&self.data_dir, &m, registry)?);
                if let Some(stamp) = stamp {
                    *cached = Some((stamp, view.clone()));
                }
                Ok(view)
            }
        }
    }

    fn stamp(&self) -> Option<Stamp> {
        let meta = std::fs::metadata(self.data_dir.join(META_DIR).join("manifest.json")).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Some(Stamp {
            inode,
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }

    fn files(&self, view: &LiveView, table: &str) -> Vec<String> {
        view.manifest
            .tables
            .get(table)
            .map(|files| {
                files
                    .iter()
                    .map(|rel| self.data_dir.join(rel).to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One stored table: its committed Parquet files and its rows in memory.
#[derive(Debug)]
pub(crate) struct Current {
    name: &'static str,
    schema: SchemaRef,
    source: Arc<Snapshots>,
    rows: Rows,
    stored: bool,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl Current {
    /// A table named `name` in the manifest (when `stored`) whose in-memory
    /// rows `rows` picks.
    pub(crate) fn new(
        name: &'static str,
        schema: SchemaRef,
        source: Arc<Snapshots>,
        rows: Rows,
        stored: bool,
    ) -> Arc<Self> {
        Arc::new(Current {
            name,
            schema,
            source,
            rows,
            stored,
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
        let files = if self.stored {
            self.source.files(&view, self.name)
        } else {
            Vec::new()
        };
        if !files.is_empty() {
            let table = parquet_table(files, self.schema.clone())?;
            plans.push(table.scan(state, projection, filters, limit).await?);
        }
        let rows = (self.rows)(&view);
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
}

type Cell = Arc<tokio::sync::OnceCell<(SchemaRef, Arc<Vec<RecordBatch>>)>>;

#[derive(Default)]
struct Generation {
    /// Held so that its address, the generation's identity, is not reused.
    view: Option<Arc<LiveView>>,
    results: std::collections::HashMap<String, Cell>,
}

/// Most results kept per snapshot.
const RESULTS_KEPT: usize = 512;
/// Largest result kept, in bytes.
const RESULT_BYTES_KEPT: usize = 8 << 20;

impl Results {
    pub(crate) fn new(source: Arc<Snapshots>) -> Self {
        Results {
            source,
            current: Mutex::new(Generation::default()),
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
        let collect = |df| async move {
            let (schema, batches) = collect(df).await?;
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
            }
            if g.results.len() >= RESULTS_KEPT && !g.results.contains_key(key) {
                g.results.clear();
            }
            g.results.entry(key.to_string()).or_default().clone()
        };
        let rows = cell.get_or_try_init(|| collect(df)).await?.clone();
        let bytes: usize = rows.1.iter().map(|b| b.get_array_memory_size()).sum();
        if bytes > RESULT_BYTES_KEPT {
            if let Ok(mut g) = self.current.lock() {
                g.results.remove(key);
            }
        }
        Ok(rows)
    }
}

/// The rows of `df` and their schema.
pub(crate) async fn collect(
    df: datafusion::dataframe::DataFrame,
) -> datafusion::error::Result<(SchemaRef, Vec<RecordBatch>)> {
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    Ok((schema, df.collect().await?))
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

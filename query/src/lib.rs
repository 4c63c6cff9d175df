//! The SQL surface of paicha: a DataFusion catalog over a data directory's
//! committed Parquet files and registries, and the formats results are
//! printed in.
//!
//! Only files the manifest lists are read, so a query never sees the files of
//! a checkpoint that has not committed. Stored windowed tables may hold
//! correction rows for late events; the public tables are views that fold
//! them, so `SELECT * FROM symptom_counts` shows one row per key. While the
//! pipeline runs, the rows it holds in memory join the stored ones.

pub mod bounds;
mod catalog;
pub mod http;
pub mod pg;
mod reads;

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{ArrayRef, BooleanBuilder, Int64Builder, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::SessionConfig;

use paicha_contract::registry::Registry;
use paicha_processors::store::{Store, META_DIR};
use paicha_processors::tables::{self, Kind, View};
use paicha_processors::{beds, LiveView};

/// The DataFusion session type [`open`] returns.
pub use datafusion::prelude::SessionContext;

/// Schema holding the stored rows behind the folding views.
pub const INTERNAL_SCHEMA: &str = "paicha_internal";

/// The [`LiveView`] of each partition task this process runs, by partition
/// number, as the pipeline last published them; the catalog reads every
/// other task's committed files from the data directory.
pub type Live = Arc<std::sync::RwLock<Arc<std::collections::BTreeMap<i32, Arc<LiveView>>>>>;

/// A session over a data directory. Every table is read when a query scans
/// it, so one session stays current as checkpoints commit.
pub async fn open(data_dir: &Path) -> Result<SessionContext> {
    open_with(data_dir, None).await
}

/// A session over a data directory and, while the pipeline runs, the rows
/// it holds in memory: every table answers from both. The session is meant
/// to live as long as the server: each scan takes the newest committed
/// manifest and live rows.
pub async fn open_with(data_dir: &Path, live: Option<&Live>) -> Result<SessionContext> {
    open_shared(data_dir, live, None).await
}

/// [`open_with`] over data whose partition tasks commit to shared storage
/// (`remote`): the tasks this process runs are in `live`, and every other
/// task is read from the store, Parquet included.
pub async fn open_shared(
    data_dir: &Path,
    live: Option<&Live>,
    remote: Option<Arc<paicha_processors::remote::Remote>>,
) -> Result<SessionContext> {
    open_bounded(data_dir, live, remote, &bounds::Limits::default()).await
}

/// [`open_shared`] with the bounds every query of the session keeps: its
/// memory pool, its deadline and the rows a cached result may hold.
pub async fn open_bounded(
    data_dir: &Path,
    live: Option<&Live>,
    remote: Option<Arc<paicha_processors::remote::Remote>>,
    limits: &bounds::Limits,
) -> Result<SessionContext> {
    let registry = registry_of(data_dir, remote.as_deref())?;
    let source = Arc::new(catalog::Snapshots::new(
        data_dir,
        registry.clone(),
        live.cloned(),
        remote.clone(),
    ));
    let first = source.current()?;
    // `day` is the directory partition of the raw files; the view derives
    // the same calendar day from `event_time` in the data's time zone.
    let tz = if first.manifest.time_zone.is_empty() {
        "Asia/Shanghai"
    } else {
        first.manifest.time_zone.as_str()
    };
    if tz.parse::<chrono_tz::Tz>().is_err() {
        anyhow::bail!("the manifest names an unknown time zone `{tz}`");
    }
    let planning = SessionContext::new_with_config(
        SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("datafusion", "public"),
    );
    if let Some(r) = &remote {
        planning.register_object_store(r.url(), r.object_store());
    }
    planning.register_table("districts", districts_table(&registry)?)?;
    planning.register_table("hospitals", hospitals_table(&registry)?)?;
    register_tables(&planning, &source, tz).await?;
    view(&planning, "suspicious_rates", SUSPICIOUS_RATES).await?;

    // The session clients get holds the public tables only: the stored rows
    // behind them are reached through the plans above, not by name, so they
    // do not show in `\dt`, `information_schema` or SQL.
    let ctx = bounded_session(limits, &source, remote.as_deref())?;
    let public = planning
        .catalog("datafusion")
        .and_then(|c| c.schema("public"))
        .context("DataFusion has no public schema")?;
    for name in public.table_names() {
        if let Some(table) = public.table(&name).await? {
            ctx.register_table(name.as_str(), table)?;
        }
    }
    datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog(
        &ctx,
        "datafusion",
        datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider,
    )
    .map_err(|e| anyhow::anyhow!("cannot set up pg_catalog: {e}"))?;
    Ok(ctx)
}

/// Suspicious events of every source per window and district, and per
/// 100,000 residents of the district (the registry's `population`), so
/// districts of different sizes compare.
const SUSPICIOUS_RATES: &str = "\
    SELECT s.window_start, s.window_end, s.district, s.district_name, \
           SUM(s.suspicious) AS suspicious, d.population, \
           CAST(SUM(s.suspicious) AS DOUBLE) * 100000.0 / d.population AS suspicious_per_100k \
    FROM symptom_counts s JOIN districts d ON s.district = d.district \
    GROUP BY s.window_start, s.window_end, s.district, s.district_name, d.population";

/// The registry the data was validated with, from the data directory or
/// the shared storage.
fn registry_of(
    data_dir: &Path,
    remote: Option<&paicha_processors::remote::Remote>,
) -> Result<Registry> {
    let Some(r) = remote else {
        Store::open(data_dir)?;
        return read_registry(data_dir);
    };
    if r.manifest("")?.is_none() {
        anyhow::bail!(
            "{} holds no paicha data (no {META_DIR}/manifest.json)",
            r.url()
        );
    }
    let read = |name: &str| -> Result<String> {
        let rel = format!("{META_DIR}/registry/{name}");
        let bytes = r
            .get(&rel)?
            .with_context(|| format!("{} is missing", r.url_of(&rel)))?;
        String::from_utf8(bytes.to_vec()).with_context(|| format!("{rel} is not UTF-8"))
    };
    Registry::from_csv(&read("districts.csv")?, &read("hospitals.csv")?)
}

/// Registers in `ctx` every table the processors declare: stored rows plus
/// the rows in memory, shown as its declaration says (the held tables as
/// they are), days in the time zone `tz`. The stored rows behind a view go
/// to a schema of their own.
async fn register_tables(
    ctx: &SessionContext,
    source: &Arc<catalog::Snapshots>,
    tz: &str,
) -> Result<()> {
    let internal = Arc::new(MemorySchemaProvider::new());
    ctx.catalog("datafusion")
        .context("DataFusion has no default catalog")?
        .register_schema(INTERNAL_SCHEMA, internal.clone())?;
    use datafusion::catalog::SchemaProvider;
    for table in tables::all() {
        let name = table.name;
        let rows = catalog::Current::new(name, table.schema.clone(), source.clone());
        if table.kind == Kind::Held {
            // Rows final past the retention are archived to files; the rest
            // are in the state.
            ctx.register_table(name, rows)?;
            continue;
        }
        internal.register_table(name.into(), rows)?;
        let stored = format!("{INTERNAL_SCHEMA}.{name}");
        match table.view {
            View::AsStored => view(ctx, name, &format!("SELECT * FROM {stored}")).await?,
            View::WithDay => {
                view(
                    ctx,
                    name,
                    &format!(
                        "SELECT *, \
                           CAST(arrow_cast(event_time, 'Timestamp(Microsecond, Some(\"{tz}\"))') AS DATE) AS day \
                         FROM {stored}"
                    ),
                )
                .await?
            }
            View::Folded { keys, counts } => folding_view(ctx, name, keys, counts).await?,
            View::Custom => custom_views(ctx, name).await?,
        }
    }
    Ok(())
}

/// A session whose queries keep `limits`: a memory pool that the bytes read
/// from files count against too, spills bounded, a planner that enforces
/// the deadline and the row cap.
fn bounded_session(
    limits: &bounds::Limits,
    source: &Arc<catalog::Snapshots>,
    remote: Option<&paicha_processors::remote::Remote>,
) -> Result<SessionContext> {
    // Operators that can spill (sorts, joins, grouped aggregates) do, to
    // the OS's temp directory; the rest fail once the pool is spent.
    let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
        .with_memory_pool(bounds::query_pool(limits.memory))
        // Spills stay a small share of the disk the data shares.
        .with_max_temp_directory_size((limits.memory as u64).saturating_mul(4))
        .build_arc()?;
    // What queries fetch from files counts against the same pool.
    let pool = runtime.memory_pool.clone();
    let local = url::Url::parse("file://").context("the file URL")?;
    runtime.register_object_store(
        &local,
        reads::Counted::new(
            Arc::new(object_store::local::LocalFileSystem::new()),
            pool.clone(),
        ),
    );
    if let Some(r) = remote {
        runtime.register_object_store(r.url(), reads::Counted::new(r.object_store(), pool));
    }
    let state = datafusion::execution::SessionStateBuilder::new()
        .with_config(
            SessionConfig::new()
                .with_information_schema(true)
                .with_default_catalog_and_schema("datafusion", "public")
                .with_extension(Arc::new(catalog::Results::new(
                    source.clone(),
                    limits.max_rows,
                ))),
        )
        .with_runtime_env(runtime)
        .with_default_features()
        .with_query_planner(Arc::new(bounds::BoundedPlanner::new(limits)))
        .build();
    Ok(SessionContext::new_with_state(state))
}

/// Registers `select` as the public table `name`. It is planned like a view,
/// but listed as a table: these are the contract's tables, and clients such
/// as psql's `\dt` list only tables.
async fn view(ctx: &SessionContext, name: &str, select: &str) -> Result<()> {
    let plan = ctx.sql(select).await?.into_unoptimized_plan();
    let view = datafusion::catalog::view::ViewTable::new(plan, Some(select.to_string()));
    ctx.register_table(name, Arc::new(catalog::AsTable(Arc::new(view))))?;
    Ok(())
}

/// `bed_occupancy` (stored rows and corrections folded, utilization
/// derived) and `bed_occupancy_now`: every hospital of the registry at the
/// latest window, or at its registry capacity and no patients if it never
/// had a bed event.
/// The public views of a table declared [`View::Custom`].
async fn custom_views(ctx: &SessionContext, table: &str) -> Result<()> {
    match table {
        "bed_occupancy" => bed_views(ctx).await,
        _ => anyhow::bail!("no views are defined for the table `{table}`"),
    }
}

async fn bed_views(ctx: &SessionContext) -> Result<()> {
    let keys = "window_start, window_end, hospital_id, hospital_name, district, designated";
    let sums = beds::COUNT_COLUMNS
        .iter()
        .map(|c| format!("CAST(SUM({c}) AS BIGINT) AS {c}"))
        .collect::<Vec<_>>()
        .join(", ");
    view(
        ctx,
        "bed_occupancy",
        &format!(
            "SELECT {keys}, beds_total, occupied, admissions, discharges, \
           CASE WHEN beds_total = 0 THEN NULL ELSE CAST(occupied AS DOUBLE) / beds_total END \
             AS utilization, \
           repeat_admissions, unmatched_discharges \
         FROM (SELECT {keys}, {sums} FROM \
                 {INTERNAL_SCHEMA}.bed_occupancy \
               GROUP BY {keys})"
        ),
    )
    .await?;
    view(
        ctx,
        "bed_occupancy_now",
        "SELECT h.hospital_id, h.name AS hospital_name, h.district, h.designated, \
           b.window_end AS as_of, \
           COALESCE(b.beds_total, h.beds_total) AS beds_total, \
           COALESCE(b.occupied, 0) AS occupied, \
           CASE WHEN COALESCE(b.beds_total, h.beds_total) = 0 THEN NULL \
             ELSE CAST(COALESCE(b.occupied, 0) AS DOUBLE) / COALESCE(b.beds_total, h.beds_total) \
           END AS utilization \
         FROM hospitals h LEFT JOIN \
           (SELECT * FROM (SELECT *, ROW_NUMBER() OVER \
              (PARTITION BY hospital_id ORDER BY window_start DESC) AS latest \
              FROM bed_occupancy) WHERE latest = 1) b \
         ON h.hospital_id = b.hospital_id",
    )
    .await?;
    Ok(())
}

/// The public view of a windowed table: one row per key, its stored rows
/// (first writes and late corrections) summed. A key whose counts sum to
/// zero (a first report that moved to an earlier window) has no row, as a
/// window without events has none — whether or not the move crossed a
/// checkpoint.
async fn folding_view(
    ctx: &SessionContext,
    table: &str,
    keys: &str,
    counts: &[&str],
) -> Result<()> {
    let sums = counts
        .iter()
        .map(|c| format!("CAST(SUM({c}) AS BIGINT) AS {c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let nonzero = counts
        .iter()
        .map(|c| format!("{c} <> 0"))
        .collect::<Vec<_>>()
        .join(" OR ");
    view(
        ctx,
        table,
        &format!(
            "SELECT * FROM (SELECT {keys}, {sums} \
         FROM {INTERNAL_SCHEMA}.{table} \
         GROUP BY {keys}) WHERE {nonzero}"
        ),
    )
    .await?;
    Ok(())
}

fn read_registry(data_dir: &Path) -> Result<Registry> {
    let dir = data_dir.join(META_DIR).join("registry");
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .with_context(|| format!("cannot read {}", dir.join(name).display()))
    };
    Registry::from_csv(&read("districts.csv")?, &read("hospitals.csv")?)
}

fn districts_table(r: &Registry) -> Result<Arc<dyn TableProvider>> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("district", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("name_zh", DataType::Utf8, false),
        Field::new("population", DataType::Int64, false),
    ]));
    let mut code = StringBuilder::new();
    let mut name = StringBuilder::new();
    let mut zh = StringBuilder::new();
    let mut pop = Int64Builder::new();
    for d in r.districts() {
        code.append_value(&d.district);
        name.append_value(&d.name);
        zh.append_value(&d.name_zh);
        pop.append_value(d.population as i64);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(code.finish()),
        Arc::new(name.finish()),
        Arc::new(zh.finish()),
        Arc::new(pop.finish()),
    ];
    let batch = RecordBatch::try_new(schema.clone(), cols)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

fn hospitals_table(r: &Registry) -> Result<Arc<dyn TableProvider>> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("hospital_id", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("district", DataType::Utf8, false),
        Field::new("designated", DataType::Boolean, false),
        Field::new("beds_total", DataType::Int64, false),
    ]));
    let mut id = StringBuilder::new();
    let mut name = StringBuilder::new();
    let mut district = StringBuilder::new();
    let mut designated = BooleanBuilder::new();
    let mut beds = Int64Builder::new();
    for h in r.hospitals() {
        id.append_value(&h.hospital_id);
        name.append_value(&h.name);
        district.append_value(&h.district);
        designated.append_value(h.designated());
        beds.append_value(h.beds_total as i64);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(name.finish()),
        Arc::new(district.finish()),
        Arc::new(designated.finish()),
        Arc::new(beds.finish()),
    ];
    let batch = RecordBatch::try_new(schema.clone(), cols)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

/// Plans one read-only statement. Anything that would change data, schema,
/// files or settings is refused with the same rule the PostgreSQL wire
/// applies ([`pg::refusal`]), and DataFusion's own checks refuse DDL, DML
/// and statements again.
pub async fn plan(ctx: &SessionContext, sql: &str) -> Result<datafusion::dataframe::DataFrame> {
    use datafusion::sql::parser::{DFParser, Statement as DfStatement};
    let statements = DFParser::parse_sql(sql)?;
    if statements.len() != 1 {
        anyhow::bail!("expected one SQL statement, found {}", statements.len());
    }
    let refused = match &statements[0] {
        DfStatement::Statement(s) => pg::refusal(s),
        DfStatement::Explain(e) => match e.statement.as_ref() {
            DfStatement::Statement(s) => pg::refusal(s),
            _ => Some("paicha is read-only: only queries can be explained".to_string()),
        },
        DfStatement::CreateExternalTable(_) => Some(
            "paicha is read-only: `CREATE EXTERNAL TABLE` is refused (only queries are allowed)"
                .to_string(),
        ),
        DfStatement::CopyTo(_) => {
            Some("paicha is read-only: `COPY` is refused (only queries are allowed)".to_string())
        }
        _ => Some("paicha is read-only: only queries are allowed".to_string()),
    };
    if let Some(reason) = refused {
        anyhow::bail!(reason);
    }
    // Planned, then checked by its plan: a query by its text can still
    // write (`SELECT … INTO` creates a table).
    let state = ctx.state();
    let plan = state.statement_to_plan(statements[0].clone()).await?;
    if read_only().verify_plan(&plan).is_err() {
        anyhow::bail!(READS_ONLY);
    }
    Ok(ctx.execute_logical_plan(plan).await?)
}

/// Why a query that would write is refused, on either protocol.
pub(crate) const READS_ONLY: &str = "paicha is read-only: this query would create or change a table (`SELECT … INTO`?); only queries that read are allowed";

/// DataFusion's own check that a plan only reads: no DDL (which includes
/// `SELECT … INTO`, a new table), no DML, no statements.
pub(crate) fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// Runs one read-only statement (see [`plan`]) and collects its rows.
pub async fn query(ctx: &SessionContext, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    Ok(catalog::collect(plan(ctx, sql).await?, usize::MAX).await?)
}

/// The snapshot the tables of a session from [`open_with`] read now: the
/// newest committed manifest and, under a running pipeline, its rows in
/// memory. The same `Arc` comes back until a checkpoint changes it.
pub fn snapshot(ctx: &SessionContext) -> Result<Arc<LiveView>> {
    ctx.state()
        .config()
        .get_extension::<catalog::Results>()
        .context("the session was not opened by paicha")?
        .snapshot()
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// An aligned table for people.
    #[default]
    Table,
    /// CSV with a header row, RFC 4180 quoting.
    Csv,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "table" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            _ => Err(format!("unknown format `{s}` (table, csv or json)")),
        }
    }
}

/// Renders results in `format`.
pub fn render(format: Format, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match format {
        Format::Table => {
            let text = if batches.is_empty() {
                arrow::util::pretty::pretty_format_batches(&[RecordBatch::new_empty(
                    schema.clone(),
                )])?
            } else {
                arrow::util::pretty::pretty_format_batches(batches)?
            };
            out.extend_from_slice(text.to_string().as_bytes());
            out.push(b'\n');
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            if batches.is_empty() {
                w.write(&csv_ready(&RecordBatch::new_empty(schema.clone()))?)?;
            }
            for b in batches {
                w.write(&csv_ready(b)?)?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
    }
    Ok(out)
}

/// CSV has no lists, so a list column (`symptoms`) is written in
/// PostgreSQL's array text form, `{fever,cough}`, as psql would show it.
pub fn csv_ready(batch: &RecordBatch) -> Result<RecordBatch> {
    use arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::util::display::{ArrayFormatter, FormatOptions};

    let schema = batch.schema();
    if !schema
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::List(_)))
    {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (f, c) in schema.fields().iter().zip(batch.columns()) {
        if !matches!(f.data_type(), DataType::List(_)) {
            fields.push(f.as_ref().clone());
            columns.push(c.clone());
            continue;
        }
        let list = c.as_list::<i32>();
        let mut out = StringBuilder::with_capacity(list.len(), list.len() * 16);
        for i in 0..list.len() {
            if list.is_null(i) {
                out.append_null();
                continue;
            }
            let items = list.value(i);
            let fmt = ArrayFormatter::try_new(items.as_ref(), &FormatOptions::default())?;
            let mut text = String::from("{");
            for j in 0..items.len() {
                if j > 0 {
                    text.push(',');
                }
                if items.is_null(j) {
                    text.push_str("NULL");
                    continue;
                }
                let v = fmt.value(j).to_string();
                if v.is_empty() || v.contains(|c: char| "{},\"\\ ".contains(c)) {
                    text.push('"');
                    text.push_str(&v.replace('\\', "\\\\").replace('"', "\\\""));
                    text.push('"');
                } else {
                    text.push_str(&v);
                }
            }
            text.push('}');
            out.append_value(text);
        }
        fields.push(Field::new(f.name(), DataType::Utf8, f.is_nullable()));
        columns.push(Arc::new(out.finish()));
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

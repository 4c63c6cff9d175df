//! The SQL surface of paicha: a DataFusion catalog over a data directory's
//! committed Parquet files and registries, and the formats results are
//! printed in.
//!
//! Only files the manifest lists are read, so a query never sees the files of
//! a checkpoint that has not committed. Stored windowed tables may hold
//! correction rows for late events; the public tables are views that fold
//! them, so `SELECT * FROM symptom_counts` shows one row per key. While the
//! pipeline runs, the rows it holds in memory join the stored ones.

pub mod http;

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{ArrayRef, BooleanBuilder, Int64Builder, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::SessionConfig;
use paicha_ingest::event::Source;
use paicha_ingest::registry::Registry;
use paicha_processors::store::{Store, META_DIR};
use paicha_processors::symptoms::COUNT_COLUMNS;
use paicha_processors::{beds, confirmations, dead_letters, raw, symptoms, LiveView};

/// The DataFusion session type [`open`] returns.
pub use datafusion::prelude::SessionContext;

/// Schema holding the stored rows behind the folding views.
pub const INTERNAL_SCHEMA: &str = "paicha_internal";

/// The processors' published [`LiveView`], shared with the query side.
pub type Live = Arc<std::sync::RwLock<Arc<LiveView>>>;

/// A session over the committed state of a data directory.
pub async fn open(data_dir: &Path) -> Result<SessionContext> {
    open_with(data_dir, None).await
}

/// A session over a data directory and, while the pipeline runs, the rows
/// it holds in memory: every table answers from both.
pub async fn open_with(data_dir: &Path, live: Option<&Live>) -> Result<SessionContext> {
    let store = Store::open(data_dir)?;
    let registry = read_registry(data_dir)?;
    let live: Arc<LiveView> = match live {
        Some(l) => l
            .read()
            .map_err(|_| anyhow::anyhow!("the pipeline's live state is unavailable"))?
            .clone(),
        None => {
            let m = store.manifest()?.unwrap_or_default();
            Arc::new(LiveView::from_manifest(data_dir, &m, &registry)?)
        }
    };
    let manifest = &live.manifest;
    let ctx = SessionContext::new_with_config(
        SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("datafusion", "public"),
    );
    let internal = Arc::new(MemorySchemaProvider::new());
    let catalog = ctx
        .catalog("datafusion")
        .context("DataFusion has no default catalog")?;
    catalog.register_schema(INTERNAL_SCHEMA, internal.clone())?;

    let files = |table: &str| -> Vec<String> {
        manifest
            .tables
            .get(table)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|rel| data_dir.join(rel).to_string_lossy().into_owned())
            .collect()
    };
    use datafusion::catalog::SchemaProvider;
    let tables = [
        (
            "symptom_counts",
            symptoms::schema(),
            vec![live.symptom_counts.clone()],
        ),
        (
            "confirmations",
            confirmations::schema(),
            vec![live.confirmations.clone()],
        ),
        (
            "bed_occupancy",
            beds::schema(),
            vec![live.bed_occupancy.clone()],
        ),
        (
            "dead_letters",
            dead_letters::schema(),
            vec![live.dead_letters.clone()],
        ),
    ]
    .into_iter()
    .chain(
        Source::ALL
            .into_iter()
            .zip(&live.raw)
            .map(|(s, rows)| (raw::table(s), raw::schema(s), rows.clone())),
    );
    for (name, schema, rows) in tables {
        internal.register_table(
            name.into(),
            parquet_table(files(name), schema.clone()).await?,
        )?;
        internal.register_table(
            format!("{name}_live"),
            Arc::new(MemTable::try_new(schema, vec![rows])?),
        )?;
    }
    ctx.sql(&format!(
        "CREATE VIEW dead_letters AS SELECT * FROM {INTERNAL_SCHEMA}.dead_letters \
         UNION ALL SELECT * FROM {INTERNAL_SCHEMA}.dead_letters_live"
    ))
    .await?;
    // `day` is the directory partition of the raw files; the view derives
    // the same calendar day from `event_time` in the data's time zone.
    let tz = if manifest.time_zone.is_empty() {
        "Asia/Shanghai"
    } else {
        manifest.time_zone.as_str()
    };
    if tz.parse::<chrono_tz::Tz>().is_err() {
        anyhow::bail!("the manifest names an unknown time zone `{tz}`");
    }
    for name in raw::TABLES {
        ctx.sql(&format!(
            "CREATE VIEW {name} AS SELECT *, \
               CAST(arrow_cast(event_time, 'Timestamp(Microsecond, Some(\"{tz}\"))') AS DATE) AS day \
             FROM (SELECT * FROM {INTERNAL_SCHEMA}.{name} \
                   UNION ALL SELECT * FROM {INTERNAL_SCHEMA}.{name}_live)"
        ))
        .await?;
    }

    for (name, rows) in [
        ("follow_ups", &live.follow_ups),
        ("alerts", &live.alerts),
        ("aberrations", &live.aberrations),
    ] {
        ctx.register_table(
            name,
            Arc::new(MemTable::try_new(rows.schema(), vec![vec![rows.clone()]])?),
        )?;
    }
    ctx.register_table("districts", districts_table(&registry)?)?;
    ctx.register_table("hospitals", hospitals_table(&registry)?)?;

    folding_view(
        &ctx,
        "symptom_counts",
        "window_start, window_end, district, district_name, source",
        &COUNT_COLUMNS,
    )
    .await?;
    folding_view(
        &ctx,
        "confirmations",
        "window_start, window_end, district, district_name",
        &confirmations::COUNT_COLUMNS,
    )
    .await?;
    bed_views(&ctx).await?;
    Ok(ctx)
}

/// `bed_occupancy` (stored rows and corrections folded, utilization
/// derived) and `bed_occupancy_now`: every hospital of the registry at the
/// latest window, or at its registry capacity and no patients if it never
/// had a bed event.
async fn bed_views(ctx: &SessionContext) -> Result<()> {
    let keys = "window_start, window_end, hospital_id, hospital_name, district, designated";
    let sums = beds::COUNT_COLUMNS
        .iter()
        .map(|c| format!("CAST(SUM({c}) AS BIGINT) AS {c}"))
        .collect::<Vec<_>>()
        .join(", ");
    ctx.sql(&format!(
        "CREATE VIEW bed_occupancy AS SELECT {keys}, beds_total, occupied, admissions, discharges, \
           CASE WHEN beds_total = 0 THEN NULL ELSE CAST(occupied AS DOUBLE) / beds_total END \
             AS utilization, \
           repeat_admissions, unmatched_discharges \
         FROM (SELECT {keys}, {sums} FROM \
                 (SELECT * FROM {INTERNAL_SCHEMA}.bed_occupancy \
                  UNION ALL SELECT * FROM {INTERNAL_SCHEMA}.bed_occupancy_live) \
               GROUP BY {keys})"
    ))
    .await?;
    ctx.sql(
        "CREATE VIEW bed_occupancy_now AS \
         SELECT h.hospital_id, h.name AS hospital_name, h.district, h.designated, \
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
    ctx.sql(&format!(
        "CREATE VIEW {table} AS SELECT * FROM (SELECT {keys}, {sums} \
         FROM (SELECT * FROM {INTERNAL_SCHEMA}.{table} \
               UNION ALL SELECT * FROM {INTERNAL_SCHEMA}.{table}_live) \
         GROUP BY {keys}) WHERE {nonzero}"
    ))
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

async fn parquet_table(files: Vec<String>, schema: SchemaRef) -> Result<Arc<dyn TableProvider>> {
    if files.is_empty() {
        return Ok(Arc::new(MemTable::try_new(schema, vec![vec![]])?));
    }
    let urls = files
        .iter()
        .map(ListingTableUrl::parse)
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(schema);
    Ok(Arc::new(ListingTable::try_new(config)?))
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

/// Runs one read-only statement: DDL, DML and `SET` are refused.
pub async fn query(ctx: &SessionContext, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx.sql_with_options(sql, options).await?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await?;
    Ok((schema, batches))
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
                w.write(&RecordBatch::new_empty(schema.clone()))?;
            }
            for b in batches {
                w.write(b)?;
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

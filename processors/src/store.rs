//! The data directory: Parquet files per table partitioned by day, and the
//! manifest that commits them.
//!
//! Layout:
//!
//! ```text
//! DATA/
//!   _paicha/manifest.json         the commit point: files, offsets, state
//!   _paicha/state/dedupe-N.bin    ids added by checkpoint N
//!   _paicha/state/NAME-N.*        an operator's state saved by checkpoint N
//!   _paicha/registry/*.csv        the registries the data was validated with
//!   _paicha/tmp/                  files being written (never read)
//!   symptom_counts/day=YYYY-MM-DD/part-N.parquet
//!   confirmations/day=YYYY-MM-DD/part-N.parquet
//!   dead_letters/day=YYYY-MM-DD/part-N.parquet
//!   bed_occupancy/…, checkpoint_events/…, pharmacy_events/…, door_visits/…,
//!   case_events/…, bed_events/…   the same way
//! ```
//!
//! A checkpoint writes its files under `_paicha/tmp/`, renames each into
//! place (an atomic rename: no reader sees a half-written file), then
//! replaces `manifest.json` by an atomic rename. Only files the manifest
//! lists are part of a table; anything else under a table directory is the
//! leftover of a checkpoint that crashed before its commit, and is deleted
//! when the pipeline next opens the directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

/// The manifest's format marker.
pub const FORMAT: &str = "paicha/1";

/// The partitioner paicha's producers place districts with: Kafka's murmur2.
/// A district's state lives in the task of its partition, so data placed by
/// another partitioner cannot be resumed.
pub const PARTITIONER: &str = "murmur2";
pub use crate::layout::{META_DIR, STATE_DIR};
/// Most rows in a Parquet row group. A reader fetches every column chunk of
/// a row group it reads before decoding any, so this bounds what one scan
/// holds at a time (a compacted day of door visits, all columns, about
/// 5 MB instead of Parquet's default million rows, 40 MB), at the cost of
/// a little more footer. DuckDB writes groups of 122,880 rows.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Kafka position of one partition covered by the committed files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offset {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// The next offset to consume.
    pub next: i64,
    /// Highest event time delivered so far (for the watermark), if any.
    #[serde(default)]
    pub max_event_time: Option<i64>,
}

/// A file that left the manifest (merged by compaction), kept until
/// readers of older manifests are done with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retired {
    /// Path relative to the data directory.
    pub path: String,
    /// Unix seconds when it left the manifest.
    pub since: i64,
}

/// The commit point of the data directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Sequence number of the last committed checkpoint.
    pub checkpoint: u64,
    /// Window size the data was built with, µs.
    pub window_micros: i64,
    /// Reporting time zone the day partitions use.
    pub time_zone: String,
    /// Files of each table, relative to the data directory: the days not
    /// sealed yet.
    pub tables: BTreeMap<String, Vec<String>>,
    /// Months sealed: their table files listed once, in a file of their
    /// own, so the manifest a checkpoint rewrites stays as long as the
    /// retention, not the uptime.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sealed: Vec<Sealed>,
    /// The table files of every sealed month, read from their files.
    #[serde(skip)]
    pub sealed_files: Arc<BTreeMap<String, Vec<String>>>,
    /// The pipeline clock the operators stood at, µs.
    #[serde(default)]
    pub follow_up_clock: Option<i64>,
    /// Kafka positions the committed files cover.
    pub offsets: Vec<Offset>,
    /// The pipeline watermark at the commit, µs.
    pub watermark: Option<i64>,
    /// Follow-up episodes, alerts and EARS days final before this instant
    /// (a day's start) are in the `follow_ups`, `alerts` and `aberrations`
    /// files, no longer in the state; µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived_before: Option<i64>,
    /// Files merged away by compaction, deleted after a grace period.
    #[serde(default)]
    pub retired: Vec<Retired>,
    /// How producers placed districts on partitions when the data was
    /// written ([`PARTITIONER`]); only the root manifest says it. Absent in
    /// a directory written before paicha partitioned with murmur2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitioner: Option<String>,
    /// What the dedupe and each operator saved for a restart, by the key
    /// each chose: lists of its files under [`STATE_DIR`] and the values it
    /// needs. At the top
    /// level of the JSON, as these keys were before operators saved their
    /// own, so directories of either age read the same.
    #[serde(flatten)]
    pub state: BTreeMap<String, serde_json::Value>,
}

/// The state files a saved value names: its strings under [`STATE_DIR`].
fn state_files(v: &serde_json::Value) -> Vec<&String> {
    match v {
        serde_json::Value::String(s) if s.starts_with(STATE_DIR) => vec![s],
        serde_json::Value::Array(items) => items.iter().flat_map(state_files).collect(),
        _ => Vec::new(),
    }
}

/// Where a store's commits are copied as well (shared storage): the files
/// a manifest names, then the manifest.
pub trait Mirror: Send + Sync + std::fmt::Debug {
    fn commit(&self, root: &Path, m: &Manifest, manifest_bytes: &[u8]) -> Result<()>;
}

/// A sealed month: its table files, listed in `path`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sealed {
    /// `YYYY-MM`, in the reporting calendar.
    pub month: String,
    /// The file listing them, relative to the directory: JSON, table name
    /// to files.
    pub path: String,
}

impl Manifest {
    /// Every file of `table`, sealed months and the rest.
    pub fn table_files<'a>(&'a self, table: &str) -> impl Iterator<Item = &'a String> + 'a {
        self.sealed_files
            .get(table)
            .into_iter()
            .flatten()
            .chain(self.tables.get(table).into_iter().flatten())
    }

    /// Every table with files, sealed or not.
    pub fn table_names(&self) -> BTreeSet<&String> {
        self.sealed_files.keys().chain(self.tables.keys()).collect()
    }

    /// Reads the files of the sealed months with `read` (a path relative to
    /// the manifest's directory to its bytes).
    pub fn read_sealed(&mut self, read: &dyn Fn(&str) -> Result<Vec<u8>>) -> Result<()> {
        let mut all: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for s in &self.sealed {
            let bytes = read(&s.path)?;
            let month: BTreeMap<String, Vec<String>> =
                serde_json::from_slice(&bytes).with_context(|| format!("{} is corrupt", s.path))?;
            for (table, files) in month {
                all.entry(table).or_default().extend(files);
            }
        }
        self.sealed_files = Arc::new(all);
        Ok(())
    }

    /// Every file the manifest names (tables, sealed months, state, alerts,
    /// and retired files still in their grace period), relative to its
    /// directory.
    pub fn files(&self) -> impl Iterator<Item = &String> {
        self.tables
            .values()
            .flatten()
            .chain(self.sealed_files.values().flatten())
            .chain(self.sealed.iter().map(|s| &s.path))
            .chain(self.state.values().flat_map(state_files))
            .chain(self.retired.iter().map(|r| &r.path))
    }

    /// The value operator state `key` was saved as; `None` if it never was.
    pub fn state<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.state.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => T::deserialize(v)
                .map(Some)
                .with_context(|| format!("the manifest's {key} is corrupt")),
        }
    }

    /// Saves operator state `key` as `value`.
    pub fn set_state<T: Serialize>(&mut self, key: &str, value: &T) -> Result<()> {
        self.state
            .insert(key.to_string(), serde_json::to_value(value)?);
        Ok(())
    }
}

/// A paicha data directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// Where commits go after the local directory, with `--storage`.
    mirror: Option<std::sync::Arc<dyn Mirror>>,
}

impl Store {
    /// Opens `root` for writing, creating it if needed. Refuses a directory
    /// that holds other files but is not paicha's.
    pub fn create(root: &Path) -> Result<Self> {
        if root.exists() {
            if !root.is_dir() {
                bail!("data directory {} is not a directory", root.display());
            }
            let has_files = fs::read_dir(root)
                .with_context(|| format!("cannot read data directory {}", root.display()))?
                .next()
                .is_some();
            if has_files && !root.join(META_DIR).is_dir() {
                bail!(
                    "{} is not a paicha data directory (it has files but no {META_DIR}/); give an empty or new directory",
                    root.display()
                );
            }
        }
        for d in ["state", "tmp", "registry"] {
            let p = root.join(META_DIR).join(d);
            fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
            mirror: None,
        })
    }

    /// Opens an existing data directory for reading.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.join(META_DIR).join("manifest.json").is_file() {
            bail!(
                "{} is not a paicha data directory (no {META_DIR}/manifest.json)",
                root.display()
            );
        }
        Ok(Store {
            root: root.to_path_buf(),
            mirror: None,
        })
    }

    /// Makes every commit upload to `mirror` as well: the store's manifest,
    /// not the local one, is then the commit point.
    pub fn mirrored(mut self, mirror: Option<std::sync::Arc<dyn Mirror>>) -> Self {
        self.mirror = mirror;
        self
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn manifest_path(&self) -> PathBuf {
        self.root.join(META_DIR).join("manifest.json")
    }

    /// The committed manifest, or `None` for a new directory.
    pub fn manifest(&self) -> Result<Option<Manifest>> {
        let path = self.manifest_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let mut m: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("{} is corrupt", path.display()))?;
        m.read_sealed(&|rel| {
            fs::read(self.root.join(rel)).with_context(|| format!("cannot read {rel}"))
        })?;
        if m.format != FORMAT {
            bail!(
                "{} has format `{}`, this paicha reads `{FORMAT}`",
                path.display(),
                m.format
            );
        }
        Ok(Some(m))
    }

    /// Commits `manifest` atomically: the files it lists must already be in
    /// place.
    pub fn commit(&self, manifest: &Manifest) -> Result<()> {
        let tmp = self
            .root
            .join(META_DIR)
            .join("tmp")
            .join(format!("manifest.json.{}", std::process::id()));
        let bytes = serde_json::to_vec(manifest)?;
        write_synced(&tmp, &bytes)?;
        fs::rename(&tmp, self.manifest_path()).context("cannot commit manifest")?;
        sync_dir(&self.root.join(META_DIR))?;
        match &self.mirror {
            Some(mirror) => mirror.commit(&self.root, manifest, &bytes),
            None => Ok(()),
        }
    }

    /// Writes `bytes` to `rel` (relative to the data directory) by way of a
    /// temporary file and a rename.
    pub fn write_file(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        let tmp = self.tmp_path(rel);
        write_synced(&tmp, bytes)?;
        self.place(&tmp, rel)
    }

    /// Writes record batches as one Parquet file at `rel`, atomically, in
    /// row groups of at most [`ROW_GROUP_ROWS`] rows.
    pub fn write_parquet(&self, rel: &str, batches: &[RecordBatch]) -> Result<()> {
        let Some(first) = batches.first() else {
            bail!("no rows to write to {rel}");
        };
        let tmp = self.tmp_path(rel);
        let file =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let rows = batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
        // Ids are unique per row: a dictionary for them only costs an
        // interner lookup per value before the writer gives up on it.
        let mut props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
        for (id, pseudonym) in [
            ("event_id", false),
            ("person_id", true),
            ("household_id", true),
            ("vehicle_id", true),
            ("alert_id", false),
        ] {
            if first.schema().field_with_name(id).is_ok() {
                // A lookup of one event or one person (tracing a contact)
                // reads each file's filter instead of the whole column.
                props = props
                    .set_column_dictionary_enabled(id.into(), false)
                    .set_column_bloom_filter_fpp(id.into(), 0.01)
                    .set_column_bloom_filter_max_ndv(
                        id.into(),
                        rows.clamp(1, ROW_GROUP_ROWS as u64),
                    );
                if pseudonym {
                    // Random hex: Snappy finds nothing to shorten and only
                    // costs time.
                    props = props.set_column_compression(id.into(), Compression::UNCOMPRESSED);
                }
            }
        }
        let props = props.build();
        let mut w = ArrowWriter::try_new(file, first.schema(), Some(props))?;
        for b in batches {
            w.write(b)?;
        }
        let file = w.into_inner()?;
        file.sync_all()?;
        self.place(&tmp, rel)
    }

    /// Where `rel` is written before its rename. Named by process too:
    /// instances starting together on one shared directory write its
    /// registries and first manifest at the same time.
    fn tmp_path(&self, rel: &str) -> PathBuf {
        self.root.join(META_DIR).join("tmp").join(format!(
            "{}.{}",
            rel.replace('/', "__"),
            std::process::id()
        ))
    }

    fn place(&self, tmp: &Path, rel: &str) -> Result<()> {
        let dst = self.root.join(rel);
        if let Some(dir) = dst.parent() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        fs::rename(tmp, &dst).with_context(|| format!("cannot move file into {}", dst.display()))
    }

    /// Deletes files under the table directories and `_paicha/state` that
    /// `manifest` does not list, and everything in `_paicha/tmp`: the
    /// leftovers of a checkpoint that never committed. Returns how many.
    pub fn remove_uncommitted(&self, manifest: &Manifest, tables: &[&str]) -> Result<usize> {
        let keep: BTreeSet<PathBuf> = manifest.files().map(|rel| self.root.join(rel)).collect();
        let mut removed = 0;
        let mut dirs: Vec<PathBuf> = tables.iter().map(|t| self.root.join(t)).collect();
        dirs.push(self.root.join(META_DIR).join("state"));
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if !keep.contains(&path) {
                    fs::remove_file(&path)
                        .with_context(|| format!("cannot remove {}", path.display()))?;
                    removed += 1;
                }
            }
        }
        if let Ok(entries) = fs::read_dir(self.root.join(META_DIR).join("tmp")) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(removed)
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn sync_dir(dir: &Path) -> Result<()> {
    // A directory fsync makes the rename durable; not every platform allows
    // opening a directory, and there the rename is the best we can do.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_directory_that_is_not_paichas() {
        let dir = std::env::temp_dir().join(format!("paicha-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("thesis.docx"), b"x").unwrap();
        let err = Store::create(&dir).unwrap_err().to_string();
        assert!(err.contains("not a paicha data directory"), "{err}");
        assert!(Store::open(&dir).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_lookup_by_id_is_answered_by_bloom_filters() {
        use arrow::array::{ArrayRef, StringArray};
        use parquet::file::properties::ReaderProperties;
        use parquet::file::reader::{FileReader, SerializedFileReader};
        use parquet::file::serialized_reader::ReadOptionsBuilder;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let ids: ArrayRef = Arc::new(StringArray::from_iter_values(
            (0..5000).map(|i| format!("evt-{i:06}")),
        ));
        let batch =
            RecordBatch::try_from_iter([("event_id", ids.clone()), ("source", ids)]).unwrap();
        store.write_parquet("t/day=1/a.parquet", &[batch]).unwrap();
        let file = File::open(dir.path().join("t/day=1/a.parquet")).unwrap();
        let read = ReaderProperties::builder()
            .set_read_bloom_filter(true)
            .build();
        let options = ReadOptionsBuilder::new()
            .with_reader_properties(read)
            .build();
        let reader = SerializedFileReader::new_with_options(file, options).unwrap();
        let group = reader.get_row_group(0).unwrap();
        let filter = group
            .get_column_bloom_filter(0)
            .expect("event_id has a filter");
        assert!(filter.check(&"evt-001234"));
        // Inside the column's min and max, so only the filter can skip it.
        let absent = (0..100).filter(|i| filter.check(&format!("evt-0012{i:02}x").as_str()));
        assert!(absent.count() <= 5, "the filter is not selective");
        assert!(
            group.get_column_bloom_filter(1).is_none(),
            "only id columns"
        );
    }

    #[test]
    fn commit_and_cleanup_of_uncommitted_files() {
        let dir = std::env::temp_dir().join(format!("paicha-store2-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = Store::create(&dir).unwrap();
        assert!(store.manifest().unwrap().is_none());
        store.write_file("t/day=1/a.bin", b"a").unwrap();
        store.write_file("t/day=1/b.bin", b"b").unwrap();
        let m = Manifest {
            format: FORMAT.into(),
            checkpoint: 1,
            tables: [("t".to_string(), vec!["t/day=1/a.bin".to_string()])].into(),
            ..Default::default()
        };
        store.commit(&m).unwrap();
        assert_eq!(
            Store::open(&dir).unwrap().manifest().unwrap(),
            Some(m.clone())
        );
        assert_eq!(store.remove_uncommitted(&m, &["t"]).unwrap(), 1);
        assert!(dir.join("t/day=1/a.bin").exists());
        assert!(!dir.join("t/day=1/b.bin").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}

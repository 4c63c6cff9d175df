//! Compaction: the many small files that checkpoints and late corrections
//! leave in a day partition are merged in the background, and windowed
//! tables' correction rows are folded into their first rows on the way.
//!
//! A reader never sees a missing or doubled row: the merged file is written
//! next to its inputs, and one manifest commit swaps the inputs for it. The
//! inputs are not deleted then but retired: listed in the manifest with the
//! time they left it, and removed only after [`RETIRE_AFTER_SECS`], so a
//! query that started from the previous manifest can still read them.
//!
//! What is merged (size-tiered, so a busy day is not rewritten every few
//! seconds):
//! - in a day partition with [`SMALL_FILES`] or more files under
//!   [`SMALL_BYTES`], those small files;
//! - in a closed day (wholly before the pipeline clock), every file, once.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{ArrayRef, Int64Array, Int64Builder};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use arrow::row::{OwnedRow, RowConverter, SortField};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::store::{Manifest, Retired, Store};

/// Files this small or smaller are merged once enough of them gather.
pub const SMALL_BYTES: u64 = 8 << 20;
/// How many small files of a day trigger a merge.
pub const SMALL_FILES: usize = 8;
/// Checkpoints a closed day must go without a new file before its files
/// are merged into one: late events trickle into recent days for a while,
/// and rewriting a whole day for each would write that day again at every
/// checkpoint (25 GB in ten minutes at 20,000 events/s, of copies waiting
/// to be deleted).
pub const SETTLE_CHECKPOINTS: u64 = 30;
/// How long a retired file stays readable after leaving the manifest.
pub const RETIRE_AFTER_SECS: i64 = 300;

/// The windowed tables, whose rows with equal keys are summed when merged:
/// every `Int64` column is a count, every other column part of the key.
pub const FOLDED: [&str; 3] = ["symptom_counts", "confirmations", "bed_occupancy"];

/// One merge: `inputs` of `table` become `output`.
#[derive(Debug, Clone, PartialEq)]
pub struct Merge {
    /// The table.
    pub table: String,
    /// Files merged, relative to the data directory.
    pub inputs: Vec<String>,
    /// The merged file, relative to the data directory.
    pub output: String,
}

/// The day partition of a file path `TABLE/day=YYYY-MM-DD/…`.
pub(crate) fn day_of(rel: &str) -> Option<&str> {
    rel.split('/').find_map(|p| p.strip_prefix("day="))
}

/// The checkpoint a file was written (`part-N`) or planned (`merged-N`) at.
fn checkpoint_of(path: &str) -> Option<u64> {
    let name = path.rsplit('/').next()?.strip_suffix(".parquet")?;
    name.rsplit('-').next()?.parse().ok()
}

/// The merges worth doing in `m`'s files now: a day's small files once
/// [`SMALL_FILES`] of them gather, and all of a closed day's files once it
/// has settled ([`SETTLE_CHECKPOINTS`]), so no file is rewritten for each
/// late event. `closed_before` is the first day not yet closed
/// (`YYYY-MM-DD`); output names carry `tag`, unique per planning; a closed
/// day has settled once its newest file is `settle` checkpoints behind it
/// (0 at the end of a replay: every closed day).
pub fn plan(store: &Store, m: &Manifest, closed_before: &str, tag: u64, settle: u64) -> Vec<Merge> {
    let mut merges = Vec::new();
    for (table, files) in &m.tables {
        let mut by_day: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
        for f in files {
            if let Some(day) = day_of(f) {
                by_day.entry(day).or_default().push(f);
            }
        }
        for (day, files) in by_day {
            let newest = files.iter().filter_map(|f| checkpoint_of(f)).max();
            let settled = newest.is_none_or(|n| n.saturating_add(settle) <= tag);
            let inputs: Vec<String> = if day < closed_before && settled {
                if files.len() < 2 {
                    continue;
                }
                files.into_iter().cloned().collect()
            } else {
                let small: Vec<String> = files
                    .into_iter()
                    .filter(|f| {
                        std::fs::metadata(store.root().join(f))
                            .map(|md| md.len() <= SMALL_BYTES)
                            .unwrap_or(false)
                    })
                    .cloned()
                    .collect();
                if small.len() < SMALL_FILES {
                    continue;
                }
                small
            };
            merges.push(Merge {
                table: table.clone(),
                output: format!("{table}/day={day}/merged-{tag:010}.parquet"),
                inputs,
            });
        }
    }
    merges
}

/// Does the merges: reads each one's inputs, folds them if the table is
/// windowed, and writes the output (atomically). The manifest is not
/// touched; see [`commit`].
pub fn run(store: &Store, merges: &[Merge]) -> Result<()> {
    for merge in merges {
        let mut batches = Vec::new();
        for rel in &merge.inputs {
            let path = store.root().join(rel);
            let file =
                File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .with_context(|| format!("cannot read {}", path.display()))?
                .with_batch_size(64 * 1024)
                .build()?;
            for b in reader {
                batches.push(b?);
            }
        }
        if FOLDED.contains(&merge.table.as_str()) {
            batches = vec![fold(&batches)?];
        }
        batches.retain(|b| b.num_rows() > 0);
        if batches.is_empty() {
            anyhow::bail!("{} has no rows to merge", merge.table);
        }
        store.write_parquet(&merge.output, &batches)?;
    }
    Ok(())
}

/// Sums the `Int64` columns of rows whose other columns are equal; rows
/// come out sorted by those key columns.
pub fn fold(batches: &[RecordBatch]) -> Result<RecordBatch> {
    let Some(first) = batches.first() else {
        anyhow::bail!("nothing to fold");
    };
    let schema = first.schema();
    let (counts, keys): (Vec<usize>, Vec<usize>) =
        (0..schema.fields().len()).partition(|i| schema.field(*i).data_type() == &DataType::Int64);
    let converter = RowConverter::new(
        keys.iter()
            .map(|i| SortField::new(schema.field(*i).data_type().clone()))
            .collect(),
    )?;
    let mut groups: HashMap<OwnedRow, Vec<i64>> = HashMap::new();
    for b in batches {
        let key_cols: Vec<ArrayRef> = keys.iter().map(|i| b.column(*i).clone()).collect();
        let rows = converter.convert_columns(&key_cols)?;
        let values: Vec<&Int64Array> = counts
            .iter()
            .map(|i| {
                b.column(*i)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .context("a count column is not Int64")
            })
            .collect::<Result<_>>()?;
        for r in 0..b.num_rows() {
            let sums = groups
                .entry(rows.row(r).owned())
                .or_insert_with(|| vec![0; counts.len()]);
            for (s, v) in sums.iter_mut().zip(&values) {
                *s += v.value(r);
            }
        }
    }
    let mut groups: Vec<(OwnedRow, Vec<i64>)> = groups.into_iter().collect();
    groups.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let key_arrays = converter.convert_rows(groups.iter().map(|(k, _)| k.row()))?;
    let mut builders: Vec<Int64Builder> = counts
        .iter()
        .map(|_| Int64Builder::with_capacity(groups.len()))
        .collect();
    for (_, sums) in &groups {
        for (b, v) in builders.iter_mut().zip(sums) {
            b.append_value(*v);
        }
    }
    let mut columns: Vec<Option<ArrayRef>> = vec![None; schema.fields().len()];
    for (i, a) in keys.iter().zip(key_arrays) {
        columns[*i] = Some(a);
    }
    for (i, mut b) in counts.iter().zip(builders) {
        columns[*i] = Some(Arc::new(b.finish()));
    }
    let columns: Vec<ArrayRef> = columns.into_iter().flatten().collect();
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// Swaps each merge's inputs for its output in `m`, retiring the inputs at
/// `now` (Unix seconds). A merge whose inputs are no longer all listed is
/// skipped (its output becomes an unlisted leftover, removed at the next
/// open).
pub fn commit(m: &mut Manifest, merges: &[Merge], now: i64) -> usize {
    let mut done = 0;
    for merge in merges {
        let Some(files) = m.tables.get_mut(&merge.table) else {
            continue;
        };
        if !merge.inputs.iter().all(|f| files.contains(f)) {
            continue;
        }
        files.retain(|f| !merge.inputs.contains(f));
        files.push(merge.output.clone());
        m.retired.extend(merge.inputs.iter().map(|p| Retired {
            path: p.clone(),
            since: now,
        }));
        done += 1;
    }
    done
}

/// Deletes retired files older than [`RETIRE_AFTER_SECS`] and drops them
/// from `m`.
pub fn expire(store: &Store, m: &mut Manifest, now: i64, grace_secs: i64) {
    m.retired.retain(|r| {
        if now.saturating_sub(r.since) < grace_secs {
            return true;
        }
        let path = store.root().join(&r.path);
        match std::fs::remove_file(&path) {
            Ok(()) => false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot remove a retired file");
                true
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symptoms;
    use crate::time::{Windows, HOUR_MICROS};
    use paicha_contract::event::Source;
    use paicha_contract::registry::Registry;

    #[test]
    fn folding_sums_corrections_into_one_row_per_key() {
        let reg = Registry::builtin().unwrap();
        let w = Windows::new(HOUR_MICROS);
        let a = symptoms::batch(
            &[
                ((0, 1, Source::Checkpoint), [3, 1, 0, 0, 0, 0, 0, 0]),
                ((0, 2, Source::Pharmacy), [1, 1, 1, 0, 0, 0, 0, 0]),
            ],
            w,
            &reg,
        )
        .unwrap();
        let b = symptoms::batch(
            &[((0, 1, Source::Checkpoint), [2, 0, 0, 1, 0, 0, 0, 0])],
            w,
            &reg,
        )
        .unwrap();
        let folded = fold(&[a, b]).unwrap();
        let want = symptoms::batch(
            &[
                ((0, 1, Source::Checkpoint), [5, 1, 0, 1, 0, 0, 0, 0]),
                ((0, 2, Source::Pharmacy), [1, 1, 1, 0, 0, 0, 0, 0]),
            ],
            w,
            &reg,
        )
        .unwrap();
        assert_eq!(folded, want);
    }

    #[test]
    fn a_closed_day_is_not_rewritten_for_each_late_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let day = "t/day=2020-01-20";
        std::fs::create_dir_all(dir.path().join(day)).unwrap();
        let big = format!("{day}/merged-0000000100.parquet");
        std::fs::write(dir.path().join(&big), vec![0u8; (SMALL_BYTES + 1) as usize]).unwrap();
        let mut files = vec![big];
        for seq in [101, 102] {
            let late = format!("{day}/part-{seq:010}.parquet");
            std::fs::write(dir.path().join(&late), b"x").unwrap();
            files.push(late);
        }
        let m = Manifest {
            tables: [("t".to_string(), files)].into(),
            ..Default::default()
        };
        let at = |tag| plan(&store, &m, "2020-01-21", tag, SETTLE_CHECKPOINTS);
        // Late files still arriving: the big file stays, two small ones wait.
        assert!(at(103).is_empty());
        // Settled: the whole day becomes one file, once.
        let merges = at(102 + SETTLE_CHECKPOINTS);
        assert_eq!(merges.len(), 1);
        assert_eq!(merges[0].inputs.len(), 3);
        // The end of a replay merges it at once.
        assert_eq!(plan(&store, &m, "2020-01-21", 103, 0).len(), 1);
        // An open day is left to its small files.
        assert!(plan(&store, &m, "2020-01-20", 1000, SETTLE_CHECKPOINTS).is_empty());
    }

    #[test]
    fn commit_swaps_inputs_for_the_output_and_retires_them() {
        let mut m = Manifest::default();
        m.tables.insert(
            "t".into(),
            vec!["t/day=1/a".into(), "t/day=1/b".into(), "t/day=2/c".into()],
        );
        let merge = Merge {
            table: "t".into(),
            inputs: vec!["t/day=1/a".into(), "t/day=1/b".into()],
            output: "t/day=1/m".into(),
        };
        assert_eq!(commit(&mut m, std::slice::from_ref(&merge), 100), 1);
        assert_eq!(m.tables["t"], vec!["t/day=2/c", "t/day=1/m"]);
        assert_eq!(m.retired.len(), 2);
        // The same merge again finds its inputs gone and changes nothing.
        assert_eq!(commit(&mut m, &[merge], 101), 0);
        assert_eq!(m.tables["t"].len(), 2);
    }
}

//! Windowed counters shared by the windowed tables: counts per (window
//! start, district, tag), finalized by the watermark, carried across
//! checkpoints while open.

use foldhash::{HashMap, HashMapExt};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;

use paicha_contract::event::Source;
use paicha_contract::registry::Registry;

use crate::time::Windows;
use serde::{Deserialize, Serialize};

/// An open window's counts carried from one checkpoint to the next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenWindow {
    /// Window start, µs since the epoch.
    pub window_start: i64,
    /// District code.
    pub district: String,
    /// Source name.
    pub source: String,
    /// Counts in the order of the table's count columns.
    pub counts: Vec<i64>,
}

/// What besides window and district keys a table's rows, stored by name in
/// the checkpoint.
pub trait Tag: Copy + Ord + Hash + Debug {
    /// The name saved in the checkpoint.
    fn name(self) -> &'static str;
    /// Parses a saved name.
    fn parse(s: &str) -> Option<Self>;
}

impl Tag for Source {
    fn name(self) -> &'static str {
        self.as_str()
    }

    fn parse(s: &str) -> Option<Self> {
        Source::parse(s)
    }
}

/// The only tag of tables keyed by window and district alone (from case
/// events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Case;

impl Tag for Case {
    fn name(self) -> &'static str {
        "case"
    }

    fn parse(s: &str) -> Option<Self> {
        (s == "case").then_some(Case)
    }
}

/// One row of a windowed table: (window start, district index, tag) and
/// its counts.
pub type Row<T, const N: usize> = ((i64, u16, T), [i64; N]);

/// Counts of windows still in memory: open, or final but not yet written.
#[derive(Debug)]
pub struct WindowCounts<T, const N: usize> {
    windows: Windows,
    state: HashMap<(i64, u16, T), [i64; N]>,
}

impl<T: Tag, const N: usize> WindowCounts<T, N> {
    /// Empty state for windows of the given size.
    pub fn new(windows: Windows) -> Self {
        WindowCounts {
            windows,
            state: HashMap::with_capacity(1024),
        }
    }

    /// The window arithmetic in use.
    pub fn windows(&self) -> Windows {
        self.windows
    }

    /// The counts of the window holding event time `t`.
    pub fn at(&mut self, t: i64, district: u16, tag: T) -> &mut [i64; N] {
        let key = (self.windows.start(t), district, tag);
        self.state.entry(key).or_insert([0; N])
    }

    /// Removes and returns, sorted by key, every window whose end is at or
    /// before `watermark`; windows whose counts cancelled out are dropped.
    pub fn take_final(&mut self, watermark: i64) -> Vec<Row<T, N>> {
        let size = self.windows.size();
        let mut done = Vec::new();
        self.state.retain(|k, c| {
            if k.0.saturating_add(size) <= watermark {
                if c.iter().any(|x| *x != 0) {
                    done.push((*k, *c));
                }
                false
            } else {
                true
            }
        });
        done.sort_unstable_by_key(|(k, _)| *k);
        done
    }

    /// Every window held, sorted: what SQL adds to the stored rows.
    pub fn snapshot(&self) -> Vec<Row<T, N>> {
        let mut rows: Vec<_> = self.state.iter().map(|(k, c)| (*k, *c)).collect();
        rows.sort_unstable_by_key(|(k, _)| *k);
        rows
    }

    /// The windows held, for the checkpoint.
    pub fn open(&self, registry: &Registry) -> Vec<OpenWindow> {
        self.snapshot()
            .into_iter()
            .map(|((start, d, tag), c)| OpenWindow {
                window_start: start,
                district: registry.district(d).district.clone(),
                source: tag.name().to_string(),
                counts: c.to_vec(),
            })
            .collect()
    }

    /// Restores windows saved by [`WindowCounts::open`].
    pub fn restore(&mut self, rows: &[OpenWindow], registry: &Registry) -> Result<(), String> {
        for r in rows {
            let d = registry
                .district_id(&r.district)
                .ok_or_else(|| format!("checkpoint names unknown district {}", r.district))?;
            let tag = T::parse(&r.source)
                .ok_or_else(|| format!("checkpoint names unknown source {}", r.source))?;
            let c: [i64; N] = r
                .counts
                .as_slice()
                .try_into()
                .map_err(|_| "checkpoint window has the wrong number of counts".to_string())?;
            self.state.insert((r.window_start, d, tag), c);
        }
        Ok(())
    }

    /// Number of windows held.
    pub fn len(&self) -> usize {
        self.state.len()
    }

    /// Whether no window is held.
    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }
}

/// The schema of a windowed table: window bounds, district and its name,
/// the tag column if the table has one, then the counts.
pub fn schema(tag_column: Option<&str>, counts: &[&str]) -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let mut fields = vec![
        Field::new("window_start", ts.clone(), false),
        Field::new("window_end", ts, false),
        Field::new("district", DataType::Utf8, false),
        Field::new("district_name", DataType::Utf8, false),
    ];
    fields.extend(tag_column.map(|c| Field::new(c, DataType::Utf8, false)));
    fields.extend(
        counts
            .iter()
            .map(|c| Field::new(*c, DataType::Int64, false)),
    );
    Arc::new(Schema::new(fields))
}

/// Builds rows of a windowed table with `schema` (from [`schema`]); the tag
/// is written when the schema has a column for it.
pub fn batch<T: Tag, const N: usize>(
    schema: SchemaRef,
    rows: &[Row<T, N>],
    windows: Windows,
    registry: &Registry,
) -> arrow::error::Result<RecordBatch> {
    let n = rows.len();
    let with_tag = schema.fields().len() == 4 + 1 + N;
    let mut start = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut end = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut district = StringBuilder::with_capacity(n, n * 6);
    let mut name = StringBuilder::with_capacity(n, n * 10);
    let mut tag = StringBuilder::with_capacity(n, n * 10);
    let mut counts: Vec<Int64Builder> = (0..N).map(|_| Int64Builder::with_capacity(n)).collect();
    for ((s, d, t), c) in rows {
        start.append_value(*s);
        end.append_value(windows.end(*s));
        let dist = registry.district(*d);
        district.append_value(&dist.district);
        name.append_value(&dist.name);
        tag.append_value(t.name());
        for (b, v) in counts.iter_mut().zip(c) {
            b.append_value(*v);
        }
    }
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(start.finish()),
        Arc::new(end.finish()),
        Arc::new(district.finish()),
        Arc::new(name.finish()),
    ];
    if with_tag {
        cols.push(Arc::new(tag.finish()));
    }
    cols.extend(counts.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    RecordBatch::try_new(schema, cols)
}

//! The processors of paicha: event time and watermarks, windows,
//! deduplication, and the Parquet sink with its checkpoints.
//!
//! [`Processor`] is the stateful core the Kafka consumer feeds. It is
//! synchronous and single-threaded on purpose: one consumer thread owns it,
//! so the hot path takes no locks. Everything it has counted becomes durable
//! at a [`Processor::checkpoint`], which writes the final windows, the dead
//! letters and the dedupe ids, and commits them in one manifest together with
//! the Kafka offsets they cover.

pub mod confirmations;
pub mod dead_letters;
pub mod dedupe;
pub mod store;
pub mod symptoms;
pub mod time;
pub mod watermark;
pub mod window_counts;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use paicha_ingest::event::Event;
use paicha_ingest::registry::Registry;

use crate::confirmations::Confirmations;
use crate::dead_letters::DeadLetter;
use crate::dedupe::Dedupe;
use crate::store::{Manifest, Offset, Store, FORMAT};
use crate::symptoms::SymptomWindows;
use crate::time::{Calendar, Windows, DAY_MICROS, HOUR_MICROS};
use crate::watermark::Watermarks;

/// What the processors hold that SQL should see together with the stored
/// files: the manifest those files belong to, and the rows still in memory.
/// Published as one value so a query never pairs a new manifest with an old
/// snapshot (which would count a window twice) or the reverse.
#[derive(Debug, Clone)]
pub struct LiveView {
    /// The manifest of the last checkpoint.
    pub manifest: Manifest,
    /// `symptom_counts` rows in memory.
    pub symptom_counts: arrow::record_batch::RecordBatch,
    /// `confirmations` rows in memory.
    pub confirmations: arrow::record_batch::RecordBatch,
    /// `dead_letters` rows in memory.
    pub dead_letters: arrow::record_batch::RecordBatch,
}

impl LiveView {
    /// The view of a stopped pipeline: the committed files, plus the windows
    /// its last checkpoint carried as open (committed counts too, only not
    /// yet final).
    pub fn from_manifest(m: &Manifest, registry: &Registry) -> Result<Self> {
        let windows = Windows::new(m.window_micros);
        let mut s = SymptomWindows::new(windows);
        s.restore(&m.open_windows, registry)
            .map_err(anyhow::Error::msg)?;
        let mut c = Confirmations::new(windows);
        c.counts_mut()
            .restore(&m.open_confirmations, registry)
            .map_err(anyhow::Error::msg)?;
        Ok(LiveView {
            manifest: m.clone(),
            symptom_counts: symptoms::batch(&s.snapshot(), windows, registry)?,
            confirmations: confirmations::batch(&c.counts().snapshot(), windows, registry)?,
            dead_letters: dead_letters::batch(&[])?,
        })
    }
}

/// Names of the tables the processors write.
pub const TABLES: [&str; 3] = ["symptom_counts", "confirmations", "dead_letters"];

/// How the processors count and where they write.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Window size, µs (default one hour).
    pub window_micros: i64,
    /// Allowed out-of-orderness, µs (default one hour).
    pub lateness_micros: i64,
    /// A partition silent this long stops holding the watermark back.
    pub idle_after: Duration,
    /// The reporting calendar for day partitions.
    pub calendar: Calendar,
}

impl Config {
    /// Defaults for a data directory.
    pub fn new(data_dir: PathBuf) -> Self {
        Config {
            data_dir,
            window_micros: HOUR_MICROS,
            lateness_micros: HOUR_MICROS,
            idle_after: Duration::from_secs(10),
            calendar: Calendar::default(),
        }
    }
}

/// Running totals since the processor was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events counted (new ids).
    pub accepted: u64,
    /// Events whose id was already counted.
    pub duplicates: u64,
    /// Dead-letter rows recorded.
    pub dead_letters: u64,
    /// Checkpoints committed.
    pub checkpoints: u64,
    /// Parquet files written.
    pub files: u64,
    /// Table rows written.
    pub rows: u64,
}

/// The stateful core: windows, dedupe, watermarks and the sink.
pub struct Processor {
    cfg: Config,
    registry: Arc<Registry>,
    store: Store,
    manifest: Manifest,
    symptoms: SymptomWindows,
    confirmations: Confirmations,
    dedupe: Dedupe,
    watermarks: Watermarks,
    offsets: BTreeMap<(String, i32), i64>,
    dead_letters: Vec<DeadLetter>,
    dirty: bool,
    stats: Stats,
}

impl Processor {
    /// Opens (or creates) the data directory and restores the state of its
    /// last committed checkpoint.
    pub fn open(cfg: Config, registry: Arc<Registry>) -> Result<Self> {
        let store = Store::create(&cfg.data_dir)?;
        let windows = Windows::new(cfg.window_micros);
        let mut p = Processor {
            symptoms: SymptomWindows::new(windows),
            confirmations: Confirmations::new(windows),
            watermarks: Watermarks::new(cfg.lateness_micros, cfg.idle_after),
            manifest: Manifest {
                format: FORMAT.into(),
                window_micros: cfg.window_micros,
                time_zone: cfg.calendar.name().into(),
                ..Default::default()
            },
            dedupe: Dedupe::default(),
            offsets: BTreeMap::new(),
            dead_letters: Vec::new(),
            dirty: false,
            stats: Stats::default(),
            cfg,
            registry,
            store,
        };
        let (districts, hospitals) = p.registry.to_csv();
        p.store
            .write_file("_paicha/registry/districts.csv", districts.as_bytes())?;
        p.store
            .write_file("_paicha/registry/hospitals.csv", hospitals.as_bytes())?;
        match p.store.manifest()? {
            Some(m) => p.restore(m)?,
            // Commit an empty manifest at once, so the directory is a
            // queryable paicha data directory from the start.
            None => p.store.commit(&p.manifest)?,
        }
        Ok(p)
    }

    fn restore(&mut self, m: Manifest) -> Result<()> {
        if m.window_micros != self.cfg.window_micros {
            anyhow::bail!(
                "{} was built with {}-second windows, not {}; use a new data directory to change the window",
                self.cfg.data_dir.display(),
                m.window_micros / 1_000_000,
                self.cfg.window_micros / 1_000_000
            );
        }
        self.store.remove_uncommitted(&m, &TABLES)?;
        for rel in &m.dedupe {
            let path = self.store.root().join(rel);
            let mut f =
                File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            self.dedupe
                .load(&mut f)
                .with_context(|| format!("cannot read {}", path.display()))?;
        }
        for rel in &m.cases {
            let path = self.store.root().join(rel);
            let mut f =
                File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            self.confirmations
                .load(&mut f)
                .with_context(|| format!("cannot read {}", path.display()))?;
        }
        self.symptoms
            .restore(&m.open_windows, &self.registry)
            .map_err(anyhow::Error::msg)?;
        self.confirmations
            .counts_mut()
            .restore(&m.open_confirmations, &self.registry)
            .map_err(anyhow::Error::msg)?;
        let now = Instant::now();
        for o in &m.offsets {
            self.offsets.insert((o.topic.clone(), o.partition), o.next);
            if let Some(t) = o.max_event_time {
                self.watermarks.restore(&o.topic, o.partition, t, now);
            }
        }
        self.manifest = m;
        Ok(())
    }

    /// The Kafka positions the committed data covers: where to resume.
    pub fn committed_offsets(&self) -> &[Offset] {
        &self.manifest.offsets
    }

    /// The registry in use.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Totals since open.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Counts an event unless its id was counted before. Returns whether it
    /// counted.
    pub fn event(&mut self, e: &Event) -> bool {
        let day = e.event_time.div_euclid(DAY_MICROS) as i32;
        if !self
            .dedupe
            .insert(day, dedupe::key(e.source().as_str(), &e.event_id))
        {
            self.stats.duplicates += 1;
            return false;
        }
        self.symptoms.add(e);
        self.confirmations.add(e);
        self.stats.accepted += 1;
        self.dirty = true;
        true
    }

    /// Records a dead letter unless the same rejected message was recorded
    /// before. Returns whether it was new.
    pub fn dead_letter(&mut self, dl: DeadLetter) -> bool {
        // Dead letters are few; one bucket that retention never evicts.
        if !self
            .dedupe
            .insert(i32::MIN, dedupe::key("dead_letter", &dl.id()))
        {
            return false;
        }
        self.dead_letters.push(dl);
        self.stats.dead_letters += 1;
        self.dirty = true;
        true
    }

    /// Marks a message consumed: `offset` is done, and its events reached
    /// `max_event_time`.
    pub fn consumed(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_event_time: Option<i64>,
        now: Instant,
    ) {
        match self.offsets.get_mut(&(topic.to_string(), partition)) {
            Some(next) => *next = (*next).max(offset + 1),
            None => {
                self.offsets
                    .insert((topic.to_string(), partition), offset + 1);
            }
        }
        if let Some(t) = max_event_time {
            self.watermarks.observe(topic, partition, t, now);
        }
        self.dirty = true;
    }

    /// Writes `rows` of `table` as one Parquet file per calendar day of the
    /// instant `at` gives, and lists the files in `m`.
    fn write_by_day<R>(
        &mut self,
        m: &mut Manifest,
        table: &str,
        rows: Vec<R>,
        at: impl Fn(&R) -> i64,
        batch: impl Fn(&[R]) -> arrow::error::Result<arrow::record_batch::RecordBatch>,
    ) -> Result<()> {
        let mut by_day: BTreeMap<String, Vec<R>> = BTreeMap::new();
        for row in rows {
            by_day
                .entry(self.cfg.calendar.day(at(&row)).to_string())
                .or_default()
                .push(row);
        }
        for (day, rows) in by_day {
            let rel = format!("{table}/day={day}/part-{:010}.parquet", m.checkpoint);
            self.store.write_parquet(&rel, &[batch(&rows)?])?;
            self.stats.files += 1;
            self.stats.rows += rows.len() as u64;
            m.tables.entry(table.into()).or_default().push(rel);
        }
        Ok(())
    }

    /// The committed manifest and the rows in memory, consistent with it.
    pub fn live_view(&self) -> Result<LiveView> {
        let windows = self.symptoms.windows();
        Ok(LiveView {
            manifest: self.manifest.clone(),
            symptom_counts: symptoms::batch(&self.symptoms.snapshot(), windows, &self.registry)?,
            confirmations: confirmations::batch(
                &self.confirmations.counts().snapshot(),
                windows,
                &self.registry,
            )?,
            dead_letters: dead_letters::batch(&self.dead_letters)?,
        })
    }

    /// Forgets the consumed positions: the embedded cluster is new each run,
    /// so its offsets start again from zero.
    pub fn forget_offsets(&mut self) {
        self.offsets.clear();
    }

    /// The next offset to consume of each partition seen.
    pub fn positions(&self) -> &BTreeMap<(String, i32), i64> {
        &self.offsets
    }

    /// The pipeline watermark now.
    pub fn watermark(&mut self, now: Instant) -> i64 {
        self.watermarks.advance(now)
    }

    /// Writes what is final and commits it with the offsets consumed so far.
    /// With `finish`, every window is final (the end of a replay: the clock
    /// stands at the highest event time and nothing more is coming).
    pub fn checkpoint(&mut self, finish: bool, now: Instant) -> Result<()> {
        let watermark = self.watermarks.advance(now);
        let cut = if finish { i64::MAX } else { watermark };
        let finals = self.symptoms.take_final(cut);
        let confirmed = self.confirmations.counts_mut().take_final(cut);
        if !self.dirty && finals.is_empty() && confirmed.is_empty() {
            return Ok(());
        }
        let seq = self.manifest.checkpoint + 1;
        let mut m = self.manifest.clone();
        m.checkpoint = seq;

        let windows = self.symptoms.windows();
        let registry = self.registry.clone();
        let letters = std::mem::take(&mut self.dead_letters);
        self.write_by_day(
            &mut m,
            "symptom_counts",
            finals,
            |r| r.0 .0,
            |rows| symptoms::batch(rows, windows, &registry),
        )?;
        self.write_by_day(
            &mut m,
            "confirmations",
            confirmed,
            |r| r.0 .0,
            |rows| confirmations::batch(rows, windows, &registry),
        )?;
        self.write_by_day(
            &mut m,
            "dead_letters",
            letters,
            |r| r.received_at,
            dead_letters::batch,
        )?;

        if self.dedupe.has_pending() {
            let rel = format!("_paicha/state/dedupe-{seq:010}.bin");
            let mut buf = Vec::new();
            self.dedupe.write_pending(&mut buf)?;
            self.store.write_file(&rel, &buf)?;
            m.dedupe.push(rel);
        }

        if self.confirmations.has_pending() {
            let rel = format!("_paicha/state/cases-{seq:010}.bin");
            let mut buf = Vec::new();
            self.confirmations.write_pending(&mut buf)?;
            self.store.write_file(&rel, &buf)?;
            m.cases.push(rel);
        }

        m.open_windows = self.symptoms.open(&self.registry);
        m.open_confirmations = self.confirmations.counts().open(&self.registry);
        let marks: BTreeMap<_, _> = self.watermarks.marks().collect();
        m.offsets = self
            .offsets
            .iter()
            .map(|((topic, partition), next)| Offset {
                topic: topic.clone(),
                partition: *partition,
                next: *next,
                max_event_time: marks.get(&(topic.clone(), *partition)).copied(),
            })
            .collect();
        m.watermark = (watermark != i64::MIN).then_some(watermark);
        self.store.commit(&m)?;
        self.manifest = m;
        self.dirty = false;
        self.stats.checkpoints += 1;
        Ok(())
    }
}

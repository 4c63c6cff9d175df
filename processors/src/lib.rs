//! The processors of paicha: event time and watermarks, windows,
//! deduplication, and the Parquet sink with its checkpoints.
//!
//! [`Processor`] is the stateful core the Kafka consumer feeds. One consumer
//! thread owns it, so the hot path takes no locks. Everything it has counted
//! becomes durable at a [`Processor::checkpoint`], which takes the final
//! windows, the raw events, the dead letters and the dedupe ids, and has the
//! [`writer`] thread write them and commit them in one manifest together
//! with the Kafka offsets they cover, in order, while counting goes on.

pub mod compact;
pub mod dedupe;
pub mod layout;
pub mod operators;
pub mod remote;
pub mod store;
pub mod tables;
pub mod tasks;
pub mod time;
pub mod watermark;
pub mod writer;

// The operators' modules, by their old paths too: the query layer builds
// its rows with their schemas and batches.
pub use operators::{
    aberrations, alerts, beds, confirmations, dead_letters, ears, follow_ups, raw, symptoms,
    window_counts,
};

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arrow::record_batch::RecordBatch;
use paicha_contract::event::Event;
use paicha_contract::registry::Registry;

use crate::alerts::Alert;
use crate::compact::Merge;
use crate::dead_letters::DeadLetter;
use crate::dedupe::Dedupe;
use crate::follow_ups::FollowUps;
use crate::operators::{load_state, Cx, Final, LogSize, Operators, ReadFile, StateFiles};
use crate::store::{Manifest, Offset, Store, FORMAT, META_DIR};
use crate::tables::Kind;
use crate::time::{Calendar, Windows, DAY_MICROS, HOUR_MICROS};
use crate::watermark::Watermarks;
use crate::writer::{Commit, Content, Writer};

/// What the processors hold that SQL should see together with the stored
/// files: the manifest those files belong to, and the rows still in memory.
/// Published as one value so a query never pairs a new manifest with an old
/// snapshot (which would count a window twice) or the reverse.
#[derive(Debug, Clone)]
pub struct LiveView {
    /// The manifest of the last checkpoint, shared: a view is published
    /// five times a second and the manifest is most of its bookkeeping.
    pub manifest: Arc<Manifest>,
    /// Each table's rows in memory (of [`tables::all`]): windows being
    /// written or not yet final, raw rows and dead letters not yet written,
    /// the follow-ups, alerts and EARS days the state holds.
    pub rows: BTreeMap<&'static str, Vec<RecordBatch>>,
}

impl LiveView {
    /// The view of a stopped pipeline: the committed files, plus the windows
    /// its last checkpoint carried as open (committed counts too, only not
    /// yet final).
    pub fn from_manifest(root: &Path, m: &Manifest, registry: &Registry) -> Result<Self> {
        Self::from_files(&|rel| read_local(root, rel), m, registry)
    }

    /// The view of a stopped pipeline's manifest `m`, reading the files it
    /// names (relative to its directory) with `read`: from a local
    /// directory or an object store.
    pub fn from_files(read: &ReadFile, m: &Manifest, registry: &Registry) -> Result<Self> {
        let windows = Windows::new(m.window_micros);
        let calendar = Calendar::new(&m.time_zone).unwrap_or_default();
        let max_time = m.offsets.iter().filter_map(|o| o.max_event_time).max();
        let cx = context(registry, windows, calendar, max_time.unwrap_or(i64::MIN));
        // The alert share and what is kept only matter to counting and the
        // archive, which a view never runs.
        let mut ops = Operators::new(windows, calendar, 1.0, i64::MAX);
        ops.restore(m, read, &cx, true)?;
        let mut rows: BTreeMap<&'static str, Vec<RecordBatch>> = BTreeMap::new();
        for op in ops.each() {
            for (table, batch) in op.live(&cx)? {
                rows.entry(table).or_default().push(batch);
            }
        }
        Ok(LiveView {
            manifest: Arc::new(m.clone()),
            rows,
        })
    }

    /// The rows of `table` in memory.
    pub fn rows(&self, table: &str) -> Vec<RecordBatch> {
        self.rows.get(table).cloned().unwrap_or_default()
    }
}

/// Seals every month wholly behind the archive's horizon whose days are
/// each down to one file per table: its files leave the manifest's list for
/// a file of their own, written once. A month gets no new file once behind
/// the retention, so the manifest each checkpoint rewrites lists the
/// retention's days and one line per month before.
fn seal(m: &mut Manifest, files: &mut Vec<(String, Content)>) -> Result<()> {
    let Some(before) = m.archived_before else {
        return Ok(());
    };
    // Days in paths are reporting-calendar days, as the horizon's is.
    let calendar = Calendar::new(&m.time_zone).unwrap_or_default();
    let horizon_month = calendar.day(before).format("%Y-%m").to_string();
    let mut months: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut crowded: std::collections::BTreeSet<String> = Default::default();
    for (table, list) in &m.tables {
        let mut per_day: BTreeMap<&str, usize> = BTreeMap::new();
        for f in list {
            let Some(day) = compact::day_of(f) else {
                continue;
            };
            let month = day.get(..7).unwrap_or(day).to_string();
            if month >= horizon_month {
                continue;
            }
            *per_day.entry(day).or_default() += 1;
            months
                .entry(month)
                .or_default()
                .entry(table.clone())
                .or_default()
                .push(f.clone());
        }
        // A day still in several files is compacted first.
        for (day, n) in per_day {
            if n > 1 {
                crowded.insert(day.get(..7).unwrap_or(day).to_string());
            }
        }
    }
    for (month, tables) in months {
        if crowded.contains(&month) {
            continue;
        }
        let path = format!("{META_DIR}/sealed/{month}-{:010}.json", m.checkpoint);
        let sealed_files = Arc::make_mut(&mut m.sealed_files);
        for (table, list) in &tables {
            if let Some(open) = m.tables.get_mut(table) {
                open.retain(|f| !list.contains(f));
            }
            sealed_files
                .entry(table.clone())
                .or_default()
                .extend(list.iter().cloned());
        }
        m.tables.retain(|_, list| !list.is_empty());
        files.push((path.clone(), Content::Bytes(serde_json::to_vec(&tables)?)));
        m.sealed.push(store::Sealed { month, path });
    }
    Ok(())
}

/// A file of the data directory `root`.
fn read_local(root: &Path, rel: &str) -> Result<Vec<u8>> {
    let path = root.join(rel);
    std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
}

/// How the processors count and where they write.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Window size, µs (default one hour).
    pub window_micros: i64,
    /// Allowed out-of-orderness, µs (default one hour).
    pub lateness_micros: i64,
    /// How far behind the pipeline clock an event may be and still count,
    /// µs (default 30 days); dedupe ids older than this are forgotten.
    pub retention_micros: i64,
    /// Utilization of a designated hospital above which a `bed_utilization`
    /// alert is raised (default 0.85).
    pub bed_alert_share: f64,
    /// A partition silent this long stops holding the watermark back.
    pub idle_after: Duration,
    /// The reporting calendar for day partitions.
    pub calendar: Calendar,
    /// Return from [`Processor::checkpoint`] once the checkpoint is handed
    /// to the writer thread, instead of once it is committed (the consumer
    /// sets this; a caller that reads the files right after keeps it off).
    pub background_writes: bool,
    /// How long a file that left the manifest stays readable before it is
    /// deleted (default [`compact::RETIRE_AFTER_SECS`]); an accelerated
    /// soak shortens it as it shortens time.
    pub retire_after_secs: i64,
    /// Shared storage the partition tasks commit to (`--storage`).
    pub remote: Option<Arc<remote::Remote>>,
    /// This processor's directory in that storage.
    pub mirror: Option<Arc<remote::Mirror>>,
}

impl Config {
    /// Defaults for a data directory.
    pub fn new(data_dir: PathBuf) -> Self {
        Config {
            data_dir,
            window_micros: HOUR_MICROS,
            lateness_micros: HOUR_MICROS,
            retention_micros: 30 * DAY_MICROS,
            bed_alert_share: 0.85,
            idle_after: Duration::from_secs(10),
            calendar: Calendar::default(),
            retire_after_secs: compact::RETIRE_AFTER_SECS,
            background_writes: false,
            remote: None,
            mirror: None,
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
    /// Merges committed by compaction.
    pub merges: u64,
    /// Final window rows written (first writes and corrections).
    pub windows: u64,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// What became of an event handed to [`Processor::event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Counted: its id was new.
    Counted,
    /// Its id was counted before; nothing changed.
    Duplicate,
    /// Older than the clock minus the retention: not counted, and the caller
    /// should dead-letter it as `too_late`.
    TooLate,
}

/// The stateful core: windows, dedupe, watermarks and the sink.
pub struct Processor {
    cfg: Config,
    registry: Arc<Registry>,
    store: Store,
    manifest: Manifest,
    scope: Scope,
    /// Every table's operator.
    ops: Operators,
    /// Tables whose rows are windows, for [`Stats::windows`].
    windowed: Vec<&'static str>,
    /// Tables the state holds whole (see [`Processor::live_view`]).
    held: Vec<&'static str>,
    dedupe: Dedupe,
    watermarks: Watermarks,
    offsets: BTreeMap<(String, i32), i64>,
    /// Highest event time of any event consumed, µs.
    max_time: i64,
    /// The merges running in the background, if any.
    compaction: Option<(Vec<Merge>, std::thread::JoinHandle<Result<()>>)>,
    /// The last manifest on disk: what SQL reads files by and compaction
    /// plans from. `manifest` runs ahead of it while checkpoints are written.
    committed: Arc<Manifest>,
    writer: Writer,
    /// Checkpoints handed to the writer, oldest first, with the rows SQL
    /// must keep seeing from memory until each is committed.
    in_flight: VecDeque<(Arc<Manifest>, Writing)>,
    dirty: bool,
    /// The size of the dedupe log.
    dedupe_log: LogSize,
    stats: Stats,
}

impl Processor {
    /// Opens (or creates) the data directory and restores the state of its
    /// last committed checkpoint.
    pub fn open(cfg: Config, registry: Arc<Registry>) -> Result<Self> {
        let mirror = cfg.mirror.clone().map(|m| m as Arc<dyn store::Mirror>);
        let store = Store::create(&cfg.data_dir)?.mirrored(mirror);
        let windows = Windows::new(cfg.window_micros);
        let mut p = Processor {
            scope: Scope {
                registry: registry.clone(),
                windows,
                calendar: cfg.calendar,
            },
            ops: Operators::new(
                windows,
                cfg.calendar,
                cfg.bed_alert_share,
                keep_micros(&cfg),
            ),
            windowed: tables_of(Kind::Windowed),
            held: tables_of(Kind::Held),
            watermarks: Watermarks::new(cfg.lateness_micros, cfg.idle_after),
            manifest: empty_manifest(&cfg, &registry)?,
            dedupe: Dedupe::default(),
            offsets: BTreeMap::new(),
            max_time: i64::MIN,
            compaction: None,
            committed: Default::default(),
            writer: Writer::start(store.clone())?,
            in_flight: VecDeque::new(),
            dirty: false,
            dedupe_log: LogSize::default(),
            stats: Stats::default(),
            cfg,
            registry,
            store,
        };
        p.committed = Arc::new(p.manifest.clone());
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
        self.store.remove_uncommitted(&m, &tables::names())?;
        let root = self.store.root().to_path_buf();
        let read = |rel: &str| read_local(&root, rel);
        load_state(&read, &m, DEDUPE, |f| self.dedupe.load(f).map(|_| ()))?;
        let cx = self.scope.at(i64::MIN);
        self.ops.restore(&m, &read, &cx, false)?;
        let now = Instant::now();
        for o in &m.offsets {
            self.offsets.insert((o.topic.clone(), o.partition), o.next);
            if let Some(t) = o.max_event_time {
                self.max_time = self.max_time.max(t);
                self.watermarks.restore(&o.topic, o.partition, t, now);
            }
        }
        self.committed = Arc::new(m.clone());
        self.manifest = m;
        Ok(())
    }

    /// The sequence number of the last checkpoint committed to disk.
    pub fn committed_checkpoint(&self) -> u64 {
        self.committed.checkpoint
    }

    /// The Kafka positions the committed data covers: where to resume.
    pub fn committed_offsets(&self) -> &[Offset] {
        &self.manifest.offsets
    }

    /// The Kafka positions of the last checkpoint on disk: a crash resumes
    /// from these.
    pub fn durable_offsets(&self) -> &[Offset] {
        &self.committed.offsets
    }

    /// The registry in use.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Totals since open.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The highest event time a partition has delivered so far.
    pub fn high_mark(&self, topic: &str, partition: i32) -> Option<i64> {
        self.watermarks.high_mark(topic, partition)
    }

    /// The oldest event time that still counts in a partition whose highest
    /// event time so far is `high_mark`: that minus the allowed lateness and
    /// the retention. Per partition rather than from the pipeline watermark
    /// because a partition's order is fixed in Kafka, so a rerun after a
    /// crash decides exactly as the first run did.
    pub fn horizon(&self, high_mark: Option<i64>) -> i64 {
        high_mark.map_or(i64::MIN, |t| self.behind(t))
    }

    fn behind(&self, t: i64) -> i64 {
        t.saturating_sub(self.cfg.lateness_micros)
            .saturating_sub(self.cfg.retention_micros)
    }

    /// Counts an event unless it is older than `horizon` (from
    /// [`Processor::horizon`]) or its id was counted before.
    pub fn event(&mut self, e: &Event, horizon: i64) -> Accepted {
        if e.event_time < horizon {
            return Accepted::TooLate;
        }
        self.max_time = self.max_time.max(e.event_time);
        let day = e.event_time.div_euclid(DAY_MICROS) as i32;
        if !self
            .dedupe
            .insert(day, dedupe::key(e.source().as_str(), &e.event_id))
        {
            self.stats.duplicates += 1;
            return Accepted::Duplicate;
        }
        let cx = self.scope.at(self.max_time);
        self.ops.add(e, &cx);
        self.stats.accepted += 1;
        self.dirty = true;
        Accepted::Counted
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
        self.ops.dead_letters.push(dl);
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
        let clock = self.watermarks.advance(now);
        self.ops.advance(clock, &self.scope.at(self.max_time));
        self.dirty = true;
    }

    /// Registers a partition that has events coming (a replay's), so the
    /// clock waits for it.
    pub fn expect_partition(&mut self, topic: &str, partition: i32, now: Instant) {
        self.watermarks.expect(topic, partition, now);
    }

    /// Follow-up state: episodes, counts, alerts.
    pub fn follow_ups(&self) -> &FollowUps {
        &self.ops.follow_ups.state
    }

    /// Each hospital with bed events: (index, beds_total, occupied) at the
    /// latest window.
    pub fn beds_now(&self) -> Vec<(u16, i64, i64)> {
        self.ops.beds.state.latest(self.clock_end(), &self.registry)
    }

    /// Alerts raised or resolved since the last call, to publish.
    pub fn take_alert_news(&mut self) -> Vec<Alert> {
        self.ops.alerts.take_news()
    }

    /// Lists the rows `finals` in `m` as Parquet files of checkpoint
    /// `m.checkpoint`, shows them to SQL until committed (`shown`), and
    /// counts them.
    fn write_finals(
        &mut self,
        m: &mut Manifest,
        files: &mut Vec<(String, Content)>,
        shown: &mut Writing,
        finals: Vec<Final>,
    ) {
        for Final {
            table,
            day,
            batches,
        } in finals
        {
            let rows = batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
            if self.windowed.contains(&table) {
                self.stats.windows += rows;
            }
            let rel = format!("{table}/day={day}/part-{:010}.parquet", m.checkpoint);
            self.stats.files += 1;
            self.stats.rows += rows;
            m.tables.entry(table.into()).or_default().push(rel.clone());
            shown
                .entry(table)
                .or_default()
                .extend(batches.iter().cloned());
            files.push((rel, Content::Parquet(batches)));
        }
    }

    /// Once a day: moves what can no longer change (follow-up episodes
    /// and alerts final, EARS days closed, before the start of the day the
    /// retention and lateness reach back to) out of the operators' state
    /// into their tables' files, so the state, its files, a checkpoint and
    /// a restart stay as large as the retention holds, however long paicha
    /// runs.
    fn archive(
        &mut self,
        m: &mut Manifest,
        files: &mut Vec<(String, Content)>,
        shown: &mut Writing,
    ) -> Result<()> {
        let clock = self.ops.clock();
        if clock == i64::MIN {
            return Ok(());
        }
        let reach = clock.saturating_sub(keep_micros(&self.cfg));
        let (before, ..) = self.cfg.calendar.day_bounds(reach);
        if m.archived_before.is_some_and(|b| b >= before) {
            return Ok(());
        }
        let cx = self.scope.at(self.max_time);
        let finals = self.ops.archive(before, &cx)?;
        m.archived_before = Some(before);
        self.write_finals(m, files, shown, finals);
        Ok(())
    }

    /// The committed manifest and the rows in memory, consistent with it.
    pub fn live_view(&mut self) -> Result<LiveView> {
        self.settle(usize::MAX)?;
        let mut now: Vec<(&'static str, RecordBatch)> = Vec::new();
        let cx = self.scope.at(self.max_time);
        for op in self.ops.each() {
            now.extend(op.live(&cx)?);
        }
        // Rows of checkpoints being written first, then the state's.
        let mut rows: BTreeMap<&'static str, Vec<RecordBatch>> = BTreeMap::new();
        for (_, writing) in &self.in_flight {
            for (table, batches) in writing {
                rows.entry(table)
                    .or_default()
                    .extend(batches.iter().cloned());
            }
        }
        for (table, batch) in now {
            rows.entry(table).or_default().push(batch);
        }
        // The held tables as one batch: rows an archive being written took
        // out of the state are in neither it nor the committed files yet.
        // Without such rows (every day but one) the batch is shared, not
        // copied.
        for table in &self.held {
            let Some(all) = rows.get_mut(table) else {
                continue;
            };
            let Some(schema) = all.first().map(|b| b.schema()) else {
                continue;
            };
            all.retain(|b| b.num_rows() > 0);
            *all = vec![arrow::compute::concat_batches(&schema, all.iter())?];
        }
        Ok(LiveView {
            manifest: self.committed.clone(),
            rows,
        })
    }

    /// The end of the window holding the highest event time consumed: the
    /// last window that has begun.
    fn clock_end(&self) -> i64 {
        clock_end(self.scope.windows, self.max_time)
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

    /// Highest event time of any event this processor counted (`i64::MIN`
    /// before the first).
    pub fn max_event_time(&self) -> i64 {
        self.max_time
    }

    /// Moves the clock a finishing checkpoint stands at up to `t`: at the
    /// end of a replay every partition task stops at the highest event time
    /// of the whole input, not only of its own partitions, so the tables
    /// do not depend on how districts fall into partitions.
    pub fn finish_at(&mut self, t: i64) {
        self.max_time = self.max_time.max(t);
    }

    /// The pipeline watermark now.
    pub fn watermark(&mut self, now: Instant) -> i64 {
        self.watermarks.advance(now)
    }

    /// Writes what is final and commits it with the offsets consumed so far:
    /// hands it to the writer thread and, unless [`Config::background_writes`]
    /// is set, waits for the commit. With `finish`, every window is final
    /// (the end of a replay: the clock stands at the highest event time and
    /// nothing more is coming) and the commit is always waited for. An error
    /// of an earlier checkpoint's write is returned here.
    pub fn checkpoint(&mut self, finish: bool, now: Instant) -> Result<()> {
        self.settle(usize::MAX)?;
        let watermark = self.watermark(now);
        // Partitions that went idle let the clock move without a message
        // arriving to move it.
        let cx = self.scope.at(self.max_time);
        self.ops.advance(watermark, &cx);
        if finish && self.max_time != i64::MIN {
            // The end of a replay: the clock stands at the highest event time.
            self.ops.advance(self.max_time, &cx);
        }
        // Ids of days wholly behind every partition's horizon can only come
        // again as too late, never as a duplicate to recognise.
        if let Some(low) = self.watermarks.lowest_high_mark() {
            self.dedupe
                .evict_before(self.behind(low).div_euclid(DAY_MICROS) as i32);
        }
        let cut = if finish { i64::MAX } else { watermark };
        let mut finals = Vec::new();
        for op in self.ops.each() {
            finals.extend(op.take_final(cut, &cx)?);
        }
        let merged = self.finished_merges();
        if !self.dirty && finals.is_empty() && merged.is_empty() {
            return Ok(());
        }
        let seq = self.manifest.checkpoint + 1;
        let mut m = self.manifest.clone();
        m.checkpoint = seq;
        let mut files = Vec::new();
        let mut shown = Writing::new();
        self.write_finals(&mut m, &mut files, &mut shown, finals);
        // Alerts first, from the whole state; then what is final leaves it.
        self.ops.detect(&self.scope.at(self.max_time));
        self.archive(&mut m, &mut files, &mut shown)?;
        let now_secs = unix_now();
        let superseded = self.save_state(&mut m, &mut files, now_secs)?;
        self.record_positions(&mut m, watermark);
        self.stats.merges += compact::commit(&mut m, &merged, now_secs) as u64;
        compact::expire(&self.store, &mut m, now_secs, self.cfg.retire_after_secs);
        if self.compaction.is_none() {
            seal(&mut m, &mut files)?;
        }
        self.manifest = m.clone();
        self.dirty = false;
        self.stats.checkpoints += 1;
        // At most one checkpoint queued behind the one being written.
        self.settle(1)?;
        self.in_flight.push_back((Arc::new(m.clone()), shown));
        self.writer.submit(Commit {
            files,
            manifest: m,
            superseded,
        })?;
        if finish || !self.cfg.background_writes {
            self.settle(0)?;
        }
        if self.compaction.is_none() {
            self.start_compaction(seq, watermark)?;
        }
        Ok(())
    }

    /// Saves the state a restart needs into `m`: the dedupe ids and each
    /// operator's. Returns the files the new ones supersede.
    fn save_state(
        &mut self,
        m: &mut Manifest,
        files: &mut Vec<(String, Content)>,
        now_secs: i64,
    ) -> Result<Vec<String>> {
        let mut state = StateFiles {
            seq: m.checkpoint,
            now_secs,
            files,
            superseded: Vec::new(),
        };
        state.log(m, DEDUPE, &mut self.dedupe_log, &mut self.dedupe)?;
        let cx = self.scope.at(self.max_time);
        for op in self.ops.each() {
            op.save(m, &mut state, &cx)?;
        }
        let clock = self.ops.clock();
        m.follow_up_clock = (clock != i64::MIN).then_some(clock);
        Ok(state.superseded)
    }

    /// Records in `m` the Kafka positions and watermark its files cover.
    fn record_positions(&self, m: &mut Manifest, watermark: i64) {
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
    }

    /// Starts merging small files in the background, if any day has them.
    fn start_compaction(&mut self, seq: u64, watermark: i64) -> Result<()> {
        // Planned from what is on disk: the files of checkpoints still
        // being written cannot be merged yet.
        let merges = compact::plan(
            &self.store,
            &self.committed,
            &self.cfg.calendar.day(watermark).to_string(),
            seq,
            compact::SETTLE_CHECKPOINTS,
        );
        if merges.is_empty() {
            return Ok(());
        }
        let store = self.store.clone();
        let job = merges.clone();
        let handle = std::thread::Builder::new()
            .name("paicha-compact".into())
            .spawn(move || compact::run(&store, &job))
            .context("cannot start the compaction thread")?;
        self.compaction = Some((merges, handle));
        Ok(())
    }

    /// The merges of the background compaction if it has finished (empty if
    /// it is still running, or failed: the inputs then stay as they are).
    fn finished_merges(&mut self) -> Vec<Merge> {
        match self.compaction.take() {
            Some((merges, handle)) if handle.is_finished() => match handle.join() {
                Ok(Ok(())) => merges,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "compaction failed; the files stay as they are");
                    Vec::new()
                }
                Err(_) => {
                    tracing::warn!("compaction panicked; the files stay as they are");
                    Vec::new()
                }
            },
            running => {
                self.compaction = running;
                Vec::new()
            }
        }
    }

    /// Merges every day partition down to one file per table and commits
    /// it, waiting for any compaction already running: the tidy end of a
    /// replay.
    pub fn compact_all(&mut self) -> Result<()> {
        self.settle(0)?;
        if let Some((merges, handle)) = self.compaction.take() {
            if let Ok(Ok(())) = handle.join() {
                self.commit_merges(&merges)?;
            }
        }
        let merges = compact::plan(
            &self.store,
            &self.manifest,
            "9999-12-31",
            self.manifest.checkpoint + 1,
            0,
        );
        if merges.is_empty() {
            return Ok(());
        }
        compact::run(&self.store, &merges)?;
        self.commit_merges(&merges)
    }

    fn commit_merges(&mut self, merges: &[Merge]) -> Result<()> {
        let mut m = self.manifest.clone();
        m.checkpoint += 1;
        let now_secs = unix_now();
        self.stats.merges += compact::commit(&mut m, merges, now_secs) as u64;
        compact::expire(&self.store, &mut m, now_secs, self.cfg.retire_after_secs);
        self.store.commit(&m)?;
        self.committed = Arc::new(m.clone());
        self.manifest = m;
        Ok(())
    }

    /// Takes in what the writer has committed, waiting until at most
    /// `in_flight` checkpoints are left uncommitted; a failed write is
    /// returned here.
    fn settle(&mut self, in_flight: usize) -> Result<()> {
        loop {
            let seq = if self.in_flight.len() > in_flight {
                Some(self.writer.committed()?)
            } else {
                self.writer.try_committed()?
            };
            let Some(seq) = seq else {
                return Ok(());
            };
            while self
                .in_flight
                .front()
                .is_some_and(|(m, _)| m.checkpoint <= seq)
            {
                if let Some((m, _)) = self.in_flight.pop_front() {
                    self.committed = m;
                }
            }
        }
    }

    /// Checkpoints handed to the writer thread and not yet committed.
    pub fn checkpoints_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Waits until every checkpoint handed to the writer is committed.
    pub fn settle_writes(&mut self) -> Result<()> {
        self.settle(0)
    }
}

/// Rows of checkpoints handed to the writer and not yet committed, by
/// table: SQL keeps seeing them from memory until their manifest is on disk,
/// so a query never misses a row in between.
type Writing = BTreeMap<&'static str, Vec<RecordBatch>>;

/// A manifest of no data, each operator's empty state under its key: an
/// earlier paicha, whose manifest had some of these keys as required
/// fields (`dedupe`, `open_windows`), reads a directory this one created.
pub fn empty_manifest(cfg: &Config, registry: &Registry) -> Result<Manifest> {
    let mut m = Manifest {
        format: FORMAT.into(),
        window_micros: cfg.window_micros,
        time_zone: cfg.calendar.name().into(),
        ..Default::default()
    };
    let mut files = Vec::new();
    let mut state = StateFiles {
        seq: 0,
        now_secs: 0,
        files: &mut files,
        superseded: Vec::new(),
    };
    state.log(
        &mut m,
        DEDUPE,
        &mut LogSize::default(),
        &mut Dedupe::default(),
    )?;
    let windows = Windows::new(cfg.window_micros);
    let cx = context(registry, windows, cfg.calendar, i64::MIN);
    let mut ops = Operators::new(windows, cfg.calendar, cfg.bed_alert_share, keep_micros(cfg));
    for op in ops.each() {
        op.save(&mut m, &mut state, &cx)?;
    }
    Ok(m)
}

/// The manifest's key of the dedupe files.
const DEDUPE: &str = "dedupe";

/// The names of the tables of `kind`.
fn tables_of(kind: Kind) -> Vec<&'static str> {
    tables::all()
        .into_iter()
        .filter(|t| t.kind == kind)
        .map(|t| t.name)
        .collect()
}

/// How far behind the clock an event can still count: what the state keeps
/// before the archive takes it.
fn keep_micros(cfg: &Config) -> i64 {
    cfg.retention_micros.saturating_add(cfg.lateness_micros)
}

/// What the operators read that stays the same for a processor's life.
struct Scope {
    registry: Arc<Registry>,
    windows: Windows,
    calendar: Calendar,
}

impl Scope {
    /// What the operators read at the clock `max_time` stands for.
    fn at(&self, max_time: i64) -> Cx<'_> {
        context(&self.registry, self.windows, self.calendar, max_time)
    }
}

/// What the operators read, at the clock `max_time` (the highest event time
/// consumed) stands for.
fn context(registry: &Registry, windows: Windows, calendar: Calendar, max_time: i64) -> Cx<'_> {
    Cx {
        registry,
        windows,
        calendar,
        clock_end: clock_end(windows, max_time),
    }
}

/// The end of the window holding `max_time`: the last window that has
/// begun.
fn clock_end(windows: Windows, max_time: i64) -> i64 {
    if max_time == i64::MIN {
        return i64::MIN;
    }
    windows.end(windows.start(max_time))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory this paicha created is read by the one before operators
    /// kept their own state, whose manifest required these fields.
    #[test]
    fn a_new_directory_has_the_fields_an_earlier_paicha_requires() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::builtin().unwrap());
        Processor::open(Config::new(dir.path().to_path_buf()), registry).unwrap();
        let bytes = std::fs::read(dir.path().join(layout::MANIFEST)).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        for field in [
            "format",
            "checkpoint",
            "window_micros",
            "time_zone",
            "tables",
            "dedupe",
            "open_windows",
            "offsets",
            "watermark",
        ] {
            assert!(json.get(field).is_some(), "{field} missing: {json}");
        }
    }
}

//! Partition tasks: partition *p* of every consumed topic is one task with
//! its own [`Processor`] and its own directory, `partition=p/`, under the
//! data directory.
//!
//! Producers key every topic by district and the topics have the same
//! number of partitions, so a district's checkpoint, pharmacy, door-visit,
//! case and bed events all sit in partition *p* of their topics, and every
//! per-district and per-person state lives in one task. A task is the unit
//! that moves between the instances of a consumer group: the instance that
//! loses it commits a last checkpoint and drops it; the one that gains it
//! opens the directory, restores the state of its last committed manifest,
//! and resumes Kafka at the offsets that manifest covers. Nothing is counted
//! twice or lost, for the same reason a restart after `kill -9` is exact.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use paicha_contract::registry::Registry;

use crate::remote::Mirror;
use crate::store::{Manifest, Store, META_DIR, PARTITIONER};
use crate::{Config, Processor, Stats};

/// Where a task's directory is (also in [`crate::layout`]).
pub use crate::layout::{task_dir, TASK_PREFIX};

/// The partition tasks one instance runs.
pub struct Tasks {
    template: Config,
    registry: Arc<Registry>,
    open: BTreeMap<i32, Processor>,
}

impl Tasks {
    /// Prepares the data directory `cfg.data_dir` for partition tasks: its
    /// own `_paicha/` holds the registries and an empty manifest, so it is a
    /// paicha directory that `serve` and `sql` accept before any task has
    /// committed. Refuses a directory written by a paicha older than
    /// partition tasks (its tables sit at the top, with no per-partition
    /// state to resume).
    pub fn open(cfg: Config, registry: Arc<Registry>) -> Result<Self> {
        let root = cfg.data_dir.clone();
        let store = Store::create(&root)?;
        let marker = match &cfg.remote {
            // With shared storage the local directory is a working copy; the
            // store's root says what the data is.
            Some(remote) => remote.manifest("")?.map(|(m, _)| m),
            None => store.manifest()?,
        };
        let place = match &cfg.remote {
            Some(remote) => remote.url().to_string(),
            None => root.display().to_string(),
        };
        match marker {
            Some(m) if m.checkpoint > 0 || !m.tables.is_empty() || !m.sealed.is_empty() => bail!(
                "{place} holds data written before partition tasks (one directory per partition); replay it into a new data directory"
            ),
            Some(m) if m.partitioner.as_deref() != Some(PARTITIONER) => bail!(
                "{place} holds data that an earlier paicha placed on partitions with FNV-1a, not Kafka's murmur2; replay its input into a new data directory"
            ),
            Some(m) if m.window_micros != cfg.window_micros => bail!(
                "{place} was built with {}-second windows, not {}; use a new data directory to change the window",
                m.window_micros / 1_000_000,
                cfg.window_micros / 1_000_000
            ),
            Some(_) => {}
            None => {
                let m = Manifest {
                    partitioner: Some(PARTITIONER.into()),
                    ..crate::empty_manifest(&cfg, &registry)?
                };
                if let Some(remote) = &cfg.remote {
                    remote.put(
                        &format!("{META_DIR}/manifest.json"),
                        serde_json::to_vec(&m)?.into(),
                    )?;
                }
                if store.manifest()?.is_none() {
                    store.commit(&m)?;
                }
            }
        }
        let (districts, hospitals) = registry.to_csv();
        for (name, csv) in [("districts.csv", districts), ("hospitals.csv", hospitals)] {
            let rel = format!("{META_DIR}/registry/{name}");
            store.write_file(&rel, csv.as_bytes())?;
            if let Some(remote) = &cfg.remote {
                remote.put(&rel, csv.into_bytes().into())?;
            }
        }
        Ok(Tasks {
            template: cfg,
            registry,
            open: BTreeMap::new(),
        })
    }

    /// The processor of `partition`, opened (and its state restored from its
    /// last committed checkpoint) if this instance does not run it yet.
    pub fn start(&mut self, partition: i32) -> Result<&mut Processor> {
        if !self.open.contains_key(&partition) {
            let mut cfg = self.template.clone();
            cfg.data_dir = task_dir(&self.template.data_dir, partition);
            if let Some(remote) = &cfg.remote {
                // The task as the store last committed it, by whichever
                // instance ran it.
                cfg.mirror = Some(Arc::new(Mirror::sync(remote, partition, &cfg.data_dir)?));
            }
            let p = Processor::open(cfg, self.registry.clone())?;
            self.open.insert(partition, p);
        }
        match self.open.get_mut(&partition) {
            Some(p) => Ok(p),
            None => bail!("partition task {partition} did not open"),
        }
    }

    /// Stops running `partition`, committing nothing more: what it counted
    /// since its last checkpoint is counted again by whoever runs it next,
    /// from that checkpoint's offsets. Waits for checkpoints already handed
    /// to the writer.
    pub fn release(&mut self, partition: i32) -> Result<()> {
        if let Some(mut p) = self.open.remove(&partition) {
            p.settle_writes()?;
        }
        Ok(())
    }

    /// Commits a checkpoint of every task and waits for it: the consumer
    /// group may give any of them to another instance once this returns.
    pub fn commit_all(&mut self) -> Result<()> {
        for p in self.open.values_mut() {
            p.checkpoint(false, Instant::now())?;
            p.settle_writes()?;
        }
        Ok(())
    }

    /// The processor of `partition`, if this instance runs it.
    pub fn get_mut(&mut self, partition: i32) -> Option<&mut Processor> {
        self.open.get_mut(&partition)
    }

    /// Whether this instance runs `partition` and nobody else committed to
    /// it since its own last commit (so its state in memory is current).
    pub fn is_current(&self, partition: i32) -> Result<bool> {
        let Some(p) = self.open.get(&partition) else {
            return Ok(false);
        };
        let committed = match &self.template.remote {
            Some(remote) => remote
                .manifest(&format!("{TASK_PREFIX}{partition}/"))?
                .map(|(m, _)| m.checkpoint),
            None => {
                let dir = task_dir(&self.template.data_dir, partition);
                Store::open(&dir)
                    .ok()
                    .map(|s| s.manifest())
                    .transpose()?
                    .flatten()
                    .map(|m| m.checkpoint)
            }
        };
        Ok(committed == Some(p.committed_checkpoint()))
    }

    /// The partitions this instance runs.
    pub fn partitions(&self) -> Vec<i32> {
        self.open.keys().copied().collect()
    }

    /// Every task this instance runs, by partition.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&i32, &mut Processor)> {
        self.open.iter_mut()
    }

    /// The next offset to consume of every topic partition of every task.
    pub fn positions(&self) -> BTreeMap<(String, i32), i64> {
        self.open
            .values()
            .flat_map(|p| p.positions().iter().map(|(k, v)| (k.clone(), *v)))
            .collect()
    }

    /// The positions of every task's last checkpoint on disk.
    pub fn durable_positions(&self) -> BTreeMap<(String, i32), i64> {
        self.open
            .values()
            .flat_map(|p| {
                p.durable_offsets()
                    .iter()
                    .map(|o| ((o.topic.clone(), o.partition), o.next))
            })
            .collect()
    }

    /// Totals of every task since it was opened here.
    pub fn stats(&self) -> Stats {
        let mut all = Stats::default();
        for p in self.open.values() {
            let s = p.stats();
            all.accepted += s.accepted;
            all.duplicates += s.duplicates;
            all.dead_letters += s.dead_letters;
            all.checkpoints += s.checkpoints;
            all.files += s.files;
            all.rows += s.rows;
            all.merges += s.merges;
            all.windows += s.windows;
        }
        all
    }

    /// The highest event time any task has counted.
    pub fn max_event_time(&self) -> i64 {
        self.open
            .values()
            .map(Processor::max_event_time)
            .max()
            .unwrap_or(i64::MIN)
    }
}

//! The last line of defence against an input no check foresaw: a message
//! that crashes processing is remembered, in the data directory, by topic,
//! partition and offset. The next start processes it alone (checkpointing
//! right after it, so a crash that only shows at a checkpoint is pinned to
//! it); a message that has crashed twice is dead-lettered as `poison` on
//! the start after, so the pipeline recovers without a person.
//!
//! A crash at a checkpoint cannot name its message: it is remembered as the
//! range of offsets since the last checkpoint on disk, each of which the next
//! start processes alone. Only a message pinned by a crash of its own (and
//! whose bytes are the same, so a new cluster's offsets cannot poison
//! another message) is ever set aside.

use std::any::Any;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One crash: the messages that were being processed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Crash {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset of the range.
    pub from: i64,
    /// End of the range (exclusive).
    pub to: i64,
    /// xxh3 of the payload, when the crash is pinned to one message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<u64>,
}

impl Crash {
    fn holds(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.topic == topic && self.partition == partition && (self.from..self.to).contains(&offset)
    }
}

/// What to do with a message, given the crashes it was part of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Never part of a crash.
    Process,
    /// Part of one: process it alone and checkpoint right after it.
    Isolate,
    /// Crashed twice, once pinned to itself: dead-letter it as `poison`.
    Poison,
}

/// The crashes remembered in `DATA/_paicha/crashes.json`.
#[derive(Debug)]
pub struct Crashes {
    path: PathBuf,
    records: Vec<Crash>,
    /// Keys the payload digests with the deployment's secret: a payload may
    /// hold raw ids, and an unkeyed hash of one would let guesses be tested.
    seed: u64,
}

impl Crashes {
    /// The crashes remembered under `data` (none if the file is absent).
    pub fn load(data: &Path, key: &paicha_contract::pseudonym::Pseudonymizer) -> Result<Self> {
        let seed = xxhash_rust::xxh3::xxh3_64(key.key("paicha crash digest").as_bytes());
        let path = data.join("_paicha").join("crashes.json");
        let records = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a list of crashes", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(Crashes {
            path,
            records,
            seed,
        })
    }

    /// A crash pinned to one message.
    pub fn at(&self, topic: &str, partition: i32, offset: i64, payload: &[u8]) -> Crash {
        Crash {
            topic: topic.to_string(),
            partition,
            from: offset,
            to: offset.saturating_add(1),
            digest: Some(self.digest(payload)),
        }
    }

    fn digest(&self, payload: &[u8]) -> u64 {
        xxhash_rust::xxh3::xxh3_64_with_seed(payload, self.seed)
    }

    /// Whether any message is under suspicion.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// What to do with the message at `offset` whose bytes are `payload`.
    pub fn verdict(&self, topic: &str, partition: i32, offset: i64, payload: &[u8]) -> Verdict {
        let held: Vec<&Crash> = self
            .records
            .iter()
            .filter(|c| c.holds(topic, partition, offset))
            .collect();
        if held.is_empty() {
            return Verdict::Process;
        }
        let digest = self.digest(payload);
        let pinned = held.iter().any(|c| c.digest == Some(digest));
        if pinned && held.len() >= 2 {
            Verdict::Poison
        } else {
            Verdict::Isolate
        }
    }

    /// Remembers a crash (durably: it is written before the process ends)
    /// and returns the error the pipeline stops with.
    pub fn crashed(&mut self, what: Vec<Crash>, panic: Box<dyn Any + Send>) -> anyhow::Error {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        let at = match what.as_slice() {
            [c] if c.digest.is_some() => format!("{}/{}@{}", c.topic, c.partition, c.from),
            _ => "a checkpoint".to_string(),
        };
        if what.is_empty() {
            // Nothing consumed since the last checkpoint on disk: no input
            // to suspect; the restart starts from that checkpoint.
            return anyhow::anyhow!(
                "processing crashed at {at} ({message}) with no message since the last checkpoint"
            );
        }
        let crashes_here = what
            .first()
            .map_or(0, |c| self.count(&c.topic, c.partition, c.from))
            + 1;
        let next = if crashes_here >= 2 {
            "the next start dead-letters it as poison"
        } else {
            "the next start processes it alone"
        };
        self.records.extend(what);
        let saved = self.save();
        let error = anyhow::anyhow!("processing crashed at {at} ({message}); {next}");
        match saved {
            Ok(()) => error,
            Err(e) => e.context(error.to_string()),
        }
    }

    fn count(&self, topic: &str, partition: i32, offset: i64) -> usize {
        self.records
            .iter()
            .filter(|c| c.holds(topic, partition, offset))
            .count()
    }

    /// Forgets the crashes wholly behind the positions a checkpoint on disk
    /// covers: those messages were processed or set aside since. Keeps the
    /// file as small as the suspicions.
    pub fn settle(&mut self, durable: &BTreeMap<(String, i32), i64>) -> Result<()> {
        let before = self.records.len();
        self.records.retain(|c| {
            durable
                .get(&(c.topic.clone(), c.partition))
                .is_none_or(|next| *next < c.to)
        });
        if self.records.len() == before {
            return Ok(());
        }
        self.save()
    }

    fn save(&self) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(&self.records)?;
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_poison_after_two_crashes_one_pinned_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let key = paicha_contract::pseudonym::Pseudonymizer::new(b"key");
        let mut c = Crashes::load(dir.path(), &key).unwrap();
        let t = "screening.checkpoint";
        assert_eq!(c.verdict(t, 0, 7, b"x"), Verdict::Process);
        // A checkpoint crash: every message since the last checkpoint.
        let range = Crash {
            topic: t.into(),
            partition: 0,
            from: 5,
            to: 9,
            digest: None,
        };
        c.crashed(vec![range.clone()], Box::new("boom"));
        assert_eq!(c.verdict(t, 0, 7, b"x"), Verdict::Isolate);
        assert_eq!(c.verdict(t, 0, 9, b"x"), Verdict::Process);
        assert_eq!(c.verdict(t, 1, 7, b"x"), Verdict::Process);
        // Two ranges alone never poison anything.
        c.crashed(vec![range], Box::new("boom"));
        assert_eq!(c.verdict(t, 0, 7, b"x"), Verdict::Isolate);
        // Pinned: the same bytes are poison, others (a new cluster's
        // message at that offset) only suspected.
        let e = c.crashed(vec![c.at(t, 0, 7, b"x")], Box::new("boom".to_string()));
        assert!(e.to_string().contains("poison"), "{e}");
        let again = Crashes::load(dir.path(), &key).unwrap();
        assert_eq!(again.verdict(t, 0, 7, b"x"), Verdict::Poison);
        assert_eq!(again.verdict(t, 0, 7, b"y"), Verdict::Isolate);
        // Once a checkpoint on disk is past them, they are forgotten.
        let mut again = again;
        again
            .settle(&BTreeMap::from([((t.to_string(), 0), 9)]))
            .unwrap();
        assert!(again.is_empty());
        assert!(Crashes::load(dir.path(), &key).unwrap().is_empty());
    }
}

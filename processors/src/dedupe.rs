//! Deduplication by `event_id`: an event delivered twice counts once.
//!
//! Ids are kept as 128-bit hashes (xxh3) of source and id, bucketed by the
//! event's day so that days past retention can be dropped whole. The chance of
//! two distinct ids colliding is about n²/2¹²⁹: for a billion ids, 10⁻²¹.
//! What was added since the last checkpoint is written with that checkpoint,
//! so a restart rebuilds exactly the set the committed counts were built from.

use std::collections::BTreeMap;

// The keys are already hashes, but of ids a sender chooses: a per-process
// seed keeps crafted ids from piling into one bucket.
use foldhash::HashSet;
use std::io::{Read, Write};

use xxhash_rust::xxh3::Xxh3;

/// The set of ids seen, with the ids added since the last checkpoint.
#[derive(Debug, Default)]
pub struct Dedupe {
    days: BTreeMap<i32, HashSet<u128>>,
    pending: Vec<(i32, u128)>,
}

/// The dedupe key of an id within a namespace (the source, or `dead_letter`).
pub fn key(namespace: &str, id: &str) -> u128 {
    // Streaming over the parts hashes the same bytes as the concatenation
    // without allocating a buffer per event.
    let mut h = Xxh3::new();
    h.update(namespace.as_bytes());
    h.update(&[0]);
    h.update(id.as_bytes());
    h.digest128()
}

impl Dedupe {
    /// Records `key` on `day`; true if it was new (the event should count).
    pub fn insert(&mut self, day: i32, key: u128) -> bool {
        let new = self.days.entry(day).or_default().insert(key);
        if new {
            self.pending.push((day, key));
        }
        new
    }

    /// Number of ids held.
    pub fn len(&self) -> usize {
        self.days.values().map(HashSet::len).sum()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.days.is_empty()
    }

    /// Forgets days before `first_day` (past retention). The bucket
    /// `i32::MIN` (dead letters, which have no event day) is kept.
    pub fn evict_before(&mut self, first_day: i32) {
        let kept = self.days.split_off(&first_day);
        let timeless = self.days.remove(&i32::MIN);
        self.days = kept;
        if let Some(ids) = timeless {
            self.days.insert(i32::MIN, ids);
        }
    }

    /// Writes the ids added since the last call and clears them: 20 bytes
    /// each (day as i32 LE, key as u128 LE).
    pub fn write_pending(&mut self, out: &mut impl Write) -> std::io::Result<usize> {
        let n = self.pending.len();
        let mut buf = Vec::with_capacity(n * 20);
        for (day, key) in self.pending.drain(..) {
            buf.extend_from_slice(&day.to_le_bytes());
            buf.extend_from_slice(&key.to_le_bytes());
        }
        out.write_all(&buf)?;
        Ok(n)
    }

    /// Whether ids were added since the last checkpoint.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Marks every id held as pending, so the next write is a full copy of
    /// the state that replaces every earlier file.
    pub fn pend_all(&mut self) {
        self.pending = self
            .days
            .iter()
            .flat_map(|(d, ids)| ids.iter().map(move |k| (*d, *k)))
            .collect();
    }

    /// Loads ids written by [`Dedupe::write_pending`], without marking them
    /// pending.
    pub fn load(&mut self, input: &mut impl Read) -> std::io::Result<usize> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        if bytes.len() % 20 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "dedupe file length is not a multiple of 20 bytes",
            ));
        }
        for rec in bytes.chunks_exact(20) {
            let mut d = [0u8; 4];
            d.copy_from_slice(&rec[..4]);
            let mut k = [0u8; 16];
            k.copy_from_slice(&rec[4..]);
            self.days
                .entry(i32::from_le_bytes(d))
                .or_default()
                .insert(u128::from_le_bytes(k));
        }
        Ok(bytes.len() / 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_forgets_old_days_but_not_dead_letters() {
        let mut d = Dedupe::default();
        assert!(d.insert(i32::MIN, 1));
        assert!(d.insert(10, 2));
        assert!(d.insert(20, 3));
        d.evict_before(15);
        assert!(!d.insert(i32::MIN, 1), "dead letters are never forgotten");
        assert!(d.insert(10, 2), "day 10 was forgotten");
        assert!(!d.insert(20, 3));
    }

    #[test]
    fn key_hashes_namespace_nul_id() {
        assert_eq!(
            key("checkpoint", "a"),
            xxhash_rust::xxh3::xxh3_128(b"checkpoint\0a")
        );
    }

    #[test]
    fn counts_an_id_once_and_round_trips() {
        let mut d = Dedupe::default();
        assert!(d.insert(1, key("checkpoint", "a")));
        assert!(!d.insert(1, key("checkpoint", "a")));
        assert!(d.insert(1, key("pharmacy", "a")));
        assert!(d.insert(2, key("checkpoint", "b")));
        let mut file = Vec::new();
        assert_eq!(d.write_pending(&mut file).unwrap(), 3);
        assert!(!d.has_pending());
        let mut e = Dedupe::default();
        assert_eq!(e.load(&mut file.as_slice()).unwrap(), 3);
        assert!(!e.insert(2, key("checkpoint", "b")));
        assert!(!e.has_pending());
        e.evict_before(2);
        assert_eq!(e.len(), 1);
        assert!(e.load(&mut [0u8; 7].as_slice()).is_err());
    }
}

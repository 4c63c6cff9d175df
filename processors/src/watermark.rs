//! Event-time watermarks.
//!
//! Each partition's watermark is the highest event time it has delivered
//! minus the allowed out-of-orderness. The pipeline's watermark is the
//! minimum over the partitions that are not idle. The idle rule: a partition
//! that has delivered nothing for `idle_after` of wall-clock time, or that has
//! never delivered anything, does not hold the watermark back; it rejoins the
//! minimum as soon as it delivers again. Without that rule a district with no
//! traffic would stall every window forever.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A partition of a topic.
pub type PartitionId = (String, i32);

#[derive(Debug, Clone)]
struct PartitionMark {
    max_event_time: i64,
    last_seen: Instant,
}

/// Per-partition watermarks and the pipeline watermark derived from them.
#[derive(Debug, Clone)]
pub struct Watermarks {
    lateness: i64,
    idle_after: Duration,
    partitions: BTreeMap<PartitionId, PartitionMark>,
    /// Never moves backwards, even when a partition rejoins behind it.
    current: i64,
}

impl Watermarks {
    /// `lateness_micros` is the allowed out-of-orderness.
    pub fn new(lateness_micros: i64, idle_after: Duration) -> Self {
        Watermarks {
            lateness: lateness_micros,
            idle_after,
            partitions: BTreeMap::new(),
            current: i64::MIN,
        }
    }

    /// Records that a partition delivered events up to `max_event_time`.
    pub fn observe(&mut self, topic: &str, partition: i32, max_event_time: i64, now: Instant) {
        match self.partitions.get_mut(&(topic.to_string(), partition)) {
            Some(m) => {
                m.max_event_time = m.max_event_time.max(max_event_time);
                m.last_seen = now;
            }
            None => {
                self.partitions.insert(
                    (topic.to_string(), partition),
                    PartitionMark {
                        max_event_time,
                        last_seen: now,
                    },
                );
            }
        }
    }

    /// The highest event time a partition has delivered, if any.
    pub fn high_mark(&self, topic: &str, partition: i32) -> Option<i64> {
        self.partitions
            .get(&(topic.to_string(), partition))
            .map(|m| m.max_event_time)
            .filter(|t| *t != i64::MIN)
    }

    /// The lowest high mark over every partition, idle or not.
    pub fn lowest_high_mark(&self) -> Option<i64> {
        self.partitions
            .values()
            .map(|m| m.max_event_time)
            .filter(|t| *t != i64::MIN)
            .min()
    }

    /// Registers a partition that will deliver events: until it does (or
    /// goes idle), it holds the watermark where it is. A replay registers
    /// every partition, so the partition read first cannot move the clock
    /// past events still waiting in the others.
    pub fn expect(&mut self, topic: &str, partition: i32, now: Instant) {
        self.partitions
            .entry((topic.to_string(), partition))
            .or_insert(PartitionMark {
                max_event_time: i64::MIN,
                last_seen: now,
            });
    }

    /// Restores a partition's high mark from a checkpoint.
    pub fn restore(&mut self, topic: &str, partition: i32, max_event_time: i64, now: Instant) {
        self.observe(topic, partition, max_event_time, now);
    }

    /// The pipeline watermark at `now`: events before it are final.
    pub fn advance(&mut self, now: Instant) -> i64 {
        let active = self
            .partitions
            .values()
            .filter(|m| now.duration_since(m.last_seen) < self.idle_after)
            .map(|m| m.max_event_time)
            .min();
        let candidate = match active {
            Some(t) => t,
            // Everything idle: nothing is coming, the highest time stands.
            None => self.max_event_time(),
        };
        if candidate != i64::MIN {
            self.current = self.current.max(candidate.saturating_sub(self.lateness));
        }
        self.current
    }

    /// The highest event time of any partition (the clock at end of replay).
    pub fn max_event_time(&self) -> i64 {
        self.partitions
            .values()
            .map(|m| m.max_event_time)
            .max()
            .unwrap_or(i64::MIN)
    }

    /// Per-partition high marks, for the checkpoint.
    pub fn marks(&self) -> impl Iterator<Item = (&PartitionId, i64)> {
        self.partitions
            .iter()
            .filter(|(_, m)| m.max_event_time != i64::MIN)
            .map(|(k, m)| (k, m.max_event_time))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_over_active_partitions_minus_lateness() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(10, Duration::from_secs(5));
        assert_eq!(w.advance(t0), i64::MIN);
        w.observe("a", 0, 100, t0);
        w.observe("a", 1, 50, t0);
        assert_eq!(w.advance(t0), 40);
        w.observe("a", 1, 80, t0);
        assert_eq!(w.advance(t0), 70);
    }

    #[test]
    fn an_idle_partition_stops_holding_it_back_and_it_never_regresses() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(0, Duration::from_secs(5));
        w.observe("a", 0, 100, t0);
        w.observe("a", 1, 10, t0);
        assert_eq!(w.advance(t0), 10);
        let later = t0 + Duration::from_secs(6);
        w.observe("a", 0, 200, later);
        assert_eq!(w.advance(later), 200);
        w.observe("a", 1, 20, later);
        assert_eq!(w.advance(later), 200);
    }
}

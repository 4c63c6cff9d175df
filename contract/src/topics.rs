//! The topics and how a producer keys and partitions them (events.md,
//! Topics and keys).

use crate::event::{Source, ALERTS_TOPIC, DEAD_LETTER_TOPIC, REPARTITION_TOPIC};

/// Every topic paicha creates in the embedded cluster.
pub fn all_topics() -> Vec<&'static str> {
    let mut t: Vec<&'static str> = Source::ALL.iter().map(|s| s.topic()).collect();
    t.push(DEAD_LETTER_TOPIC);
    t.push(REPARTITION_TOPIC);
    t.push(ALERTS_TOPIC);
    t
}

/// The partition a district's events go to: Kafka's standard partitioner
/// for keyed messages (the Java client's default, librdkafka's
/// `murmur2_random`, kafkajs's default), so other clients keyed by district
/// put a district where paicha does (events.md, Topics and keys).
pub fn partition_for(district: &str, partitions: i32) -> i32 {
    ((murmur2(district.as_bytes()) & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

/// Kafka's murmur2 hash (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut h = SEED ^ data.len() as u32;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        let mut k = u32::from_le_bytes([w[0], w[1], w[2], w[3]]).wrapping_mul(M);
        k ^= k >> 24;
        h = h.wrapping_mul(M) ^ k.wrapping_mul(M);
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        for (i, b) in tail.iter().enumerate() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_test_vectors() {
        // Kafka's UtilsTest.testMurmur2 (the Java client), as signed ints;
        // kafka-python's murmur2 gives the same.
        for (key, want) in [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ] {
            assert_eq!(murmur2(key.as_bytes()) as i32, want, "{key}");
        }
        // kafkajs, kafka-python and the Java client put 500103 in
        // partition 3 of 4: (murmur2 & 0x7fffffff) % 4.
        assert_eq!(partition_for("500103", 4), 3);
        assert_eq!(partition_for("", 4), 1);
    }

    #[test]
    fn partitioning_is_stable_and_in_range() {
        for p in 1..8 {
            let x = partition_for("500103", p);
            assert!((0..p).contains(&x));
            assert_eq!(x, partition_for("500103", p));
        }
    }
}

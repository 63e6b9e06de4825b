//! Partition choice compatible with the Java producer: a keyed record goes to
//! `toPositive(murmur2(key)) % partitions`, so the same key lands on the same partition
//! whether it was written by this CLI or by a Java/librdkafka (`murmur2_random`) producer.

/// Chooses partitions for records without an explicit `--partition`.
#[derive(Debug)]
pub struct Partitioner {
    partition_count: u32,
    /// Next partition for keyless records; advances by one per record.
    round_robin_next: u32,
}

impl Partitioner {
    pub fn new(partition_count: u32) -> Partitioner {
        assert!(partition_count > 0, "a topic has at least one partition");
        Partitioner { partition_count, round_robin_next: 0 }
    }

    pub fn partition(&mut self, key: Option<&[u8]>) -> i32 {
        let chosen = match key {
            Some(key) => partition_for_key(key, self.partition_count),
            None => {
                let chosen = self.round_robin_next;
                self.round_robin_next = (self.round_robin_next + 1) % self.partition_count;
                chosen
            }
        };
        assert!(chosen < self.partition_count);
        // partition_count came from an i32 partition count, so this cannot truncate.
        chosen as i32
    }
}

/// Kafka's `Utils.toPositive(Utils.murmur2(key)) % numPartitions`.
pub fn partition_for_key(key: &[u8], partition_count: u32) -> u32 {
    assert!(partition_count > 0, "a topic has at least one partition");
    to_positive(murmur2(key)) % partition_count
}

/// Java's `Utils.toPositive`: clears the sign bit (not `abs`, which overflows on MIN).
pub fn to_positive(number: i32) -> u32 {
    (number & 0x7fff_ffff) as u32
}

/// Kafka's `Utils.murmur2` (MurmurHash2, 32-bit, seed 0x9747b28c), bit for bit. Java `int`
/// arithmetic wraps and `>>>` is a logical shift, hence u32 throughout.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // Java uses the int length; keys are far below 2^31 bytes, and wrapping matches Java anyway.
    let mut hash = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        hash = hash.wrapping_mul(M);
        hash ^= k;
    }
    let tail = chunks.remainder();
    // Java's switch falls through from case 3 to case 1.
    if tail.len() >= 3 {
        hash ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        hash ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        hash ^= u32::from(tail[0]);
        hash = hash.wrapping_mul(M);
    }
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(M);
    hash ^= hash >> 15;
    hash as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From Apache Kafka's `UtilsTest.testMurmur2` (the Java implementation's own results).
    #[test]
    fn murmur2_matches_kafka_utils_test_vectors() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key), expected, "murmur2({:?})", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn to_positive_clears_only_the_sign_bit() {
        assert_eq!(to_positive(-1), 0x7fff_ffff);
        assert_eq!(to_positive(i32::MIN), 0);
        assert_eq!(to_positive(0), 0);
        assert_eq!(to_positive(123), 123);
        // Differs from abs(): -973932308 & 0x7fffffff = 1173551340.
        assert_eq!(to_positive(-973_932_308), 1_173_551_340);
    }

    #[test]
    fn keyed_partition_is_the_java_formula() {
        // toPositive(murmur2("21")) = 1173551340; 1173551340 % 3 = 0, % 7 = 3, % 10 = 0.
        assert_eq!(partition_for_key(b"21", 3), 0);
        assert_eq!(partition_for_key(b"21", 7), 3);
        assert_eq!(partition_for_key(b"21", 10), 0);
        // toPositive(murmur2("abc")) = 479470107; % 4 = 3, % 7 = 4.
        assert_eq!(partition_for_key(b"abc", 4), 3);
        assert_eq!(partition_for_key(b"abc", 7), 4);
        assert_eq!(partition_for_key(b"anything", 1), 0);
    }

    #[test]
    fn keyless_records_rotate_and_keyed_records_do_not_disturb_the_rotation() {
        let mut partitioner = Partitioner::new(3);
        let keyless: Vec<i32> = (0..4).map(|_| partitioner.partition(None)).collect();
        assert_eq!(keyless, vec![0, 1, 2, 0]);
        // 479470107 % 3 = 0.
        assert_eq!(partitioner.partition(Some(b"abc")), 0);
        assert_eq!(partitioner.partition(None), 1);
    }
}

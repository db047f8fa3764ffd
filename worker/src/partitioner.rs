//! Which partition a producer puts a key in: the hashes of the Kafka clients' default
//! partitioners, so that a shuffle can bring records to the partition a table's producers
//! chose for the same key (a partitioned join), and a table's rows can be checked against it.

use crate::spec::Partitioner;

/// The partition of `key` among `n` (at least 1) under `p`.
pub fn partition(p: Partitioner, key: &[u8], n: i32) -> i32 {
    let n = n.max(1) as u32;
    let h = match p {
        // Java's `Utils.toPositive(Utils.murmur2(key)) % n`.
        Partitioner::Murmur2 => murmur2(key) & 0x7fff_ffff,
        // librdkafka's consistent partitioner: `rd_crc32(key) % n`.
        Partitioner::Crc32 => crc32(key),
    };
    (h % n) as i32
}

/// The 32-bit murmur2 hash with the Kafka clients' seed.
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if let Some(&b) = rest.first() {
        h ^= u32::from(b);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// CRC-32 (IEEE 802.3, reflected), as zlib and librdkafka compute it.
fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    !data.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hashes_match_the_kafka_clients_published_values() {
        // Kafka's own test vectors for its murmur2 (UtilsTest), as signed 32-bit results.
        for (key, want) in [
            (&b"21"[..], -973_932_308_i32),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ] {
            assert_eq!(
                murmur2(key) as i32,
                want,
                "{}",
                String::from_utf8_lossy(key)
            );
        }
        // The CRC-32 check value, and zlib's of the empty input.
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(
            partition(Partitioner::Murmur2, b"21", 5),
            (-973_932_308_i32 & 0x7fff_ffff) % 5
        );
        assert!((0..7).contains(&partition(Partitioner::Crc32, b"x", 7)));
    }
}

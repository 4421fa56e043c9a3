//! A hasher for the model's maps, keyed by tids, kernel pointers and small tuples of them.
//!
//! std's SipHash guards against keys chosen to collide; these keys come from the kernel (or a
//! trace of it), and hashing them was the model's largest single cost on a replay. This is the
//! multiply-rotate scheme rustc uses for its own tables: a few cycles per word.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<WordHasher>>;
#[cfg(test)]
pub(crate) type FastSet<K> = std::collections::HashSet<K, BuildHasherDefault<WordHasher>>;

/// Mixes each word in with a rotate, xor and multiply by an odd constant.
#[derive(Default, Clone, Copy)]
pub(crate) struct WordHasher(u64);

const K: u64 = 0x517c_c1b7_2722_0a95;

impl WordHasher {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
    }
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8-byte chunk")));
        }
        for &b in chunks.remainder() {
            self.add(u64::from(b));
        }
    }
    fn write_u8(&mut self, v: u8) {
        self.add(v.into());
    }
    fn write_u32(&mut self, v: u32) {
        self.add(v.into());
    }
    fn write_u64(&mut self, v: u64) {
        self.add(v);
    }
    fn write_usize(&mut self, v: usize) {
        self.add(v as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_keyed_by_tids_and_pointers_work_and_spread() {
        let mut m: FastMap<u32, u32> = FastMap::default();
        for tid in 0..10_000 {
            m.insert(tid, tid * 2);
        }
        assert!((0..10_000).all(|t| m[&t] == t * 2));
        // Pointers that differ only in high or aligned-away bits still hash apart.
        let hash = |v: u64| {
            let mut h = WordHasher::default();
            h.write_u64(v);
            h.finish()
        };
        let ptrs: FastSet<u64> = (0..4096u64).map(|i| hash(0xffff_8880_0000_0000 + i * 0x100)).collect();
        assert_eq!(ptrs.len(), 4096);
        let buckets: FastSet<u64> = (0..4096u64).map(|i| hash(0xffff_8880_0000_0000 + i * 0x100) >> 52).collect();
        assert!(buckets.len() > 2000, "top 12 bits take only {} values", buckets.len());
    }
}

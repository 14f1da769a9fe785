//! Fast, stable 64-bit hashing for fingerprints (not cryptographic).
//!
//! Dedup keys must not change between runs or Rust releases, which rules out
//! `std::collections::hash_map::DefaultHasher`; this is a small wyhash-style hash (64×64→128-bit
//! multiply-fold), stable by construction.

use std::hash::{BuildHasherDefault, Hasher};

const P0: u64 = 0xa076_1d64_78bd_642f;
const P1: u64 = 0xe703_7ed1_a0b4_28db;
const P2: u64 = 0x8ebc_6af0_9c88_c6e3;

/// Multiply two 64-bit values to 128 bits and fold the halves.
#[inline]
pub(crate) fn mum(a: u64, b: u64) -> u64 {
    let r = (a as u128) * (b as u128);
    (r as u64) ^ ((r >> 64) as u64)
}

/// A well-mixed 64-bit hash of `bytes` under `seed`.
pub(crate) fn hash64(bytes: &[u8], seed: u64) -> u64 {
    let mut h = seed ^ P0 ^ (bytes.len() as u64).wrapping_mul(P1);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = mum(h ^ w, P1);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut buf = [0u8; 8];
        buf[..rest.len()].copy_from_slice(rest);
        h = mum(h ^ u64::from_le_bytes(buf), P2);
    }
    fmix64(h)
}

/// MurmurHash3's 64-bit finalizer: every input bit affects every output bit.
#[inline]
pub(crate) fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// SplitMix64: a tiny, fully specified generator, so seeded streams (masking, corpus
/// generation) stay the same across versions of every dependency.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        fmix_splitmix(self.0)
    }

    /// Uniform in `0..n` (`n > 0`), by 128-bit multiply (Lemire), bias below 2^-64·n.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn fmix_splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A hasher for keys that are already uniform hashes: passes the bits through.
#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = hash64(bytes, self.0);
    }
    fn write_u64(&mut self, x: u64) {
        self.0 ^= x;
    }
    fn write_u128(&mut self, x: u128) {
        self.0 ^= x as u64 ^ (x >> 64) as u64;
    }
}

/// `HashMap`/`HashSet` state for pre-hashed keys.
pub(crate) type BuildPreHashed = BuildHasherDefault<PreHashed>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_and_seed_dependent() {
        assert_eq!(hash64(b"kiln", 0), hash64(b"kiln", 0));
        assert_ne!(hash64(b"kiln", 0), hash64(b"kiln", 1));
        assert_ne!(hash64(b"kiln", 0), hash64(b"kilm", 0));
        assert_ne!(hash64(b"", 0), hash64(b"\0", 0));
        // Pinned so that a change of the function (which would change every dedup key and
        // every masking pattern) cannot go unnoticed.
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn splitmix_below_is_in_range_and_roughly_uniform() {
        let mut rng = SplitMix64::new(7);
        let mut counts = [0usize; 10];
        for _ in 0..10_000 {
            counts[rng.below(10) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (850..1150).contains(&c)),
            "{counts:?}"
        );
    }
}

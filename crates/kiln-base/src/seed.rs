//! Everything seeded in kiln draws from here, so that the same seed gives the same run on every
//! platform and with every version of kiln's dependencies.
//!
//! - [`mix`] derives independent seeds from one (`(seed, stream)` → seed), with SplitMix64's
//!   finalizer, a fully specified function.
//! - [`rng`] is the one generator: ChaCha8 (rand_chacha), whose output rand_chacha documents
//!   as reproducible across its versions, unlike rand's `StdRng`.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

/// The seed of stream `stream` of `seed`: for example the data order of epoch 3, or the
/// dropout masks of step 12. Distinct streams give unrelated seeds.
pub fn mix(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A ChaCha8 generator seeded with `seed`.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::RngCore;

    #[test]
    fn streams_differ_and_are_fixed_functions() {
        let seeds: Vec<u64> = (0..100).map(|s| mix(42, s)).collect();
        let mut unique = seeds.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seeds.len());
        assert_ne!(mix(1, 0), mix(2, 0));
        // Both are fixed functions: pinned, so that a dependency update that changed them
        // fails here rather than silently changing every seeded run.
        assert_eq!(mix(42, 0), 13_679_457_532_755_275_413);
        assert_eq!(rng(7).next_u64(), 2_910_824_217_569_608_635);
        assert_ne!(rng(7).next_u64(), rng(8).next_u64());
    }
}

//! MinHash signatures over character shingles (Broder 1997) and the banding scheme of
//! locality-sensitive hashing (LSH) that finds candidate near-duplicates without comparing
//! every pair.
//!
//! For two sets with Jaccard similarity `J`, each signature slot agrees with probability `J`,
//! so the fraction of agreeing slots estimates `J` with standard error `sqrt(J(1-J)/n)` for `n`
//! slots. Banding splits the `n` slots into `b` bands of `r` rows; two documents become
//! candidates when any band agrees entirely, which happens with probability
//! `1 - (1 - J^r)^b`, an S-curve whose position the threshold picks.

use crate::DataError;
use crate::hash::{SplitMix64, fmix64, mum};

/// Computes MinHash signatures. Slot `i` is the minimum over the document's shingles of
/// `(a_i·x + b_i) mod 2^32` for the high 32 bits `x` of each shingle's 64-bit hash.
#[derive(Clone, Debug)]
pub struct MinHasher {
    mul: Vec<u32>,
    add: Vec<u32>,
    shingle_chars: usize,
}

impl MinHasher {
    /// `num_perm` hash functions drawn from `seed`, over shingles of `shingle_chars` characters.
    pub fn new(num_perm: usize, shingle_chars: usize, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let mul = (0..num_perm)
            .map(|_| (rng.next_u64() >> 32) as u32 | 1)
            .collect();
        let add = (0..num_perm)
            .map(|_| (rng.next_u64() >> 32) as u32)
            .collect();
        Self {
            mul,
            add,
            shingle_chars: shingle_chars.max(1),
        }
    }

    /// The signature length.
    pub fn num_perm(&self) -> usize {
        self.mul.len()
    }

    /// The signature of `text`'s set of `shingle_chars`-character shingles (a text shorter
    /// than one shingle is one shingle). Pass text normalized by the caller.
    pub fn signature(&self, text: &str) -> Vec<u32> {
        let mut hashes = Vec::with_capacity(text.len());
        for_each_shingle(text, self.shingle_chars, |x| hashes.push((x >> 32) as u32));
        self.signature_of_mixed(&hashes)
    }

    /// The signature of a set given as 64-bit element hashes (any hashes: they are mixed
    /// again here).
    pub fn signature_of_hashes(&self, hashes: impl IntoIterator<Item = u64>) -> Vec<u32> {
        let hashes: Vec<u32> = hashes
            .into_iter()
            .map(|x| (fmix64(x) >> 32) as u32)
            .collect();
        self.signature_of_mixed(&hashes)
    }

    /// The signature of well-mixed 64-bit hashes. The arithmetic is the same on every CPU; on
    /// x86-64 the same code is compiled for AVX-512 and AVX2 too, and picked at run time.
    fn signature_of_mixed(&self, hashes: &[u32]) -> Vec<u32> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                // SAFETY: the CPU has AVX-512F/DQ/VL (checked just above).
                return unsafe { signature_avx512(&self.mul, &self.add, hashes) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2 (checked just above).
                return unsafe { signature_avx2(&self.mul, &self.add, hashes) };
            }
        }
        signature_portable(&self.mul, &self.add, hashes)
    }
}

/// Slots computed together: the running minima of one block stay in registers while every
/// shingle streams past.
const BLOCK: usize = 32;

/// Slot `i` of the signature is `min over x of (mul[i]·x + add[i]) mod 2^32`: each slot is a
/// bijection of the 32-bit shingle hashes (`mul[i]` is odd), so its minimum falls on any element
/// of the union of two sets with equal probability, and the slots' rankings are nearly
/// independent because the multipliers scramble the high bits differently. 32-bit lanes let
/// one AVX-512 instruction handle 16 slots.
#[inline(always)]
fn signature_portable(mul: &[u32], add: &[u32], hashes: &[u32]) -> Vec<u32> {
    let n = mul.len();
    let mut sig = vec![u32::MAX; n];
    let mut start = 0;
    while start < n {
        let end = (start + BLOCK).min(n);
        if end - start == BLOCK {
            let a: [u32; BLOCK] = mul[start..end].try_into().expect("a full block");
            let b: [u32; BLOCK] = add[start..end].try_into().expect("a full block");
            let mut m = [u32::MAX; BLOCK];
            for &x in hashes {
                for j in 0..BLOCK {
                    let v = a[j].wrapping_mul(x).wrapping_add(b[j]);
                    m[j] = m[j].min(v);
                }
            }
            sig[start..end].copy_from_slice(&m);
        } else {
            for i in start..end {
                for &x in hashes {
                    let v = mul[i].wrapping_mul(x).wrapping_add(add[i]);
                    sig[i] = sig[i].min(v);
                }
            }
        }
        start = end;
    }
    sig
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn signature_avx2(mul: &[u32], add: &[u32], hashes: &[u32]) -> Vec<u32> {
    signature_portable(mul, add, hashes)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
unsafe fn signature_avx512(mul: &[u32], add: &[u32], hashes: &[u32]) -> Vec<u32> {
    signature_portable(mul, add, hashes)
}

/// Calls `f` with a 64-bit hash of every run of `k` consecutive characters (a rolling
/// polynomial hash, then a finalizer). A text of fewer than `k` characters is one shingle; an
/// empty text has none.
pub fn for_each_shingle(text: &str, k: usize, mut f: impl FnMut(u64)) {
    const BASE: u64 = 0x100_0000_01b3;
    // A ring of the last k characters, needed only when the text can hold k of them (a
    // character is at least a byte): the ring and `BASE^(k-1)` cost at most the text's length,
    // whatever `k` is asked for.
    let ring_len = if text.len() >= k { k.max(1) } else { 1 };
    let base_k = (1..ring_len).fold(1u64, |acc, _| acc.wrapping_mul(BASE)); // BASE^(k-1)
    let mut ring = vec![0u64; ring_len];
    let (mut h, mut seen, mut slot) = (0u64, 0usize, 0usize);
    for c in text.chars() {
        let c = c as u64 + 1;
        if seen >= k {
            h = h.wrapping_sub(ring[slot].wrapping_mul(base_k));
        }
        h = h.wrapping_mul(BASE).wrapping_add(c);
        ring[slot] = c;
        slot += 1;
        if slot == ring_len {
            slot = 0;
        }
        seen += 1;
        if seen >= k {
            f(mum(h, 0x9e37_79b9_7f4a_7c15) ^ h);
        }
    }
    if seen > 0 && seen < k {
        f(mum(h, 0x9e37_79b9_7f4a_7c15) ^ h);
    }
}

/// The fraction of agreeing slots: the MinHash estimate of Jaccard similarity. Signatures of
/// different lengths (from different [`MinHasher`]s) are an error.
pub fn estimate_jaccard(a: &[u32], b: &[u32]) -> Result<f64, DataError> {
    if a.len() != b.len() {
        return Err(DataError::InvalidConfig(format!(
            "signatures of {} and {} slots cannot be compared",
            a.len(),
            b.len()
        )));
    }
    Ok(agreement(a, b))
}

/// The fraction of agreeing slots of two signatures of the same length.
pub(crate) fn agreement(a: &[u32], b: &[u32]) -> f64 {
    if a.is_empty() {
        return 0.0;
    }
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    same as f64 / a.len() as f64
}

/// How the signature is cut into bands for LSH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LshBands {
    /// Number of bands `b`.
    pub bands: usize,
    /// Rows (signature slots) per band `r`.
    pub rows: usize,
}

impl LshBands {
    /// The most selective banding (largest `r`, so fewest chance candidates) that still makes
    /// a pair at exactly `threshold` a candidate with probability at least `min_recall`.
    /// Candidates are then verified against the threshold on the full signature, so the LSH
    /// stage should find nearly all of them. For 256 slots at 0.8 this is 32 bands × 8 rows
    /// (candidate probability 0.997 at J = 0.8, 0.42 at 0.6); for 128 slots, 21 bands × 6 rows
    /// (candidate probability 0.998 at J = 0.8, 0.63 at 0.6, 0.0013 at 0.2).
    pub fn for_threshold(num_perm: usize, threshold: f64, min_recall: f64) -> Self {
        let mut best = Self {
            bands: num_perm.max(1),
            rows: 1,
        };
        for rows in 1..=num_perm.max(1) {
            let bands = num_perm / rows;
            if bands == 0 {
                break;
            }
            let candidate = Self { bands, rows };
            if candidate.probability(threshold) >= min_recall {
                best = candidate;
            }
        }
        best
    }

    /// The probability that a pair with Jaccard similarity `j` becomes a candidate.
    pub fn probability(&self, j: f64) -> f64 {
        1.0 - (1.0 - j.powi(self.rows as i32)).powi(self.bands as i32)
    }

    /// The hash of each band of `signature` (one per band; the signature has at least
    /// `bands × rows` slots).
    pub(crate) fn band_hashes<'a>(&self, signature: &'a [u32]) -> impl Iterator<Item = u64> + 'a {
        let rows = self.rows;
        (0..self.bands).map(move |band| {
            let slots = &signature[band * rows..(band + 1) * rows];
            let mut h = (band as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            for &s in slots {
                h = mum(h ^ s as u64, 0xe703_7ed1_a0b4_28db);
            }
            fmix64(h)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shingles_roll_like_direct_hashes() {
        let mut rolled = Vec::new();
        for_each_shingle("abcdefg", 3, |h| rolled.push(h));
        assert_eq!(rolled.len(), 5);
        for (i, w) in ["abc", "bcd", "cde", "def", "efg"].iter().enumerate() {
            let mut direct = Vec::new();
            for_each_shingle(w, 3, |h| direct.push(h));
            assert_eq!(direct, vec![rolled[i]], "{w}");
        }
        let mut short = Vec::new();
        for_each_shingle("ab", 5, |h| short.push(h));
        assert_eq!(short.len(), 1);
        for_each_shingle("", 5, |_| panic!("no shingles in empty text"));
        // A shingle longer than the text allocates nothing for it: the text is one shingle.
        let mut huge = Vec::new();
        for_each_shingle("ab", usize::MAX, |h| huge.push(h));
        assert_eq!(huge, short);
    }

    #[test]
    fn banding_for_the_default_threshold() {
        let b = LshBands::for_threshold(256, 0.8, 0.99);
        assert_eq!((b.bands, b.rows), (32, 8));
        assert!(b.probability(0.8) >= 0.99);
        assert!(b.probability(0.2) < 1e-4);
        let b = LshBands::for_threshold(128, 0.8, 0.99);
        assert_eq!((b.bands, b.rows), (21, 6));
        assert!(b.probability(0.8) >= 0.99);
        assert!(b.probability(0.2) < 2e-3);
    }

    #[test]
    fn every_instruction_set_gives_the_same_signature() {
        let m = MinHasher::new(128 + 5, 5, 3); // a partial last block too
        let mut hashes = Vec::new();
        for_each_shingle(
            "some text to shingle, long enough for many shingles",
            5,
            |h| hashes.push((h >> 32) as u32),
        );
        assert_eq!(
            m.signature_of_mixed(&hashes),
            signature_portable(&m.mul, &m.add, &hashes)
        );
    }

    #[test]
    fn signatures_of_different_lengths_are_an_error() {
        let (a, b) = (MinHasher::new(8, 5, 0), MinHasher::new(16, 5, 0));
        assert!(estimate_jaccard(&a.signature("text"), &b.signature("text")).is_err());
    }

    #[test]
    fn identical_sets_have_identical_signatures() {
        let m = MinHasher::new(64, 5, 1);
        assert_eq!(m.signature("the same text"), m.signature("the same text"));
        assert_eq!(
            estimate_jaccard(&m.signature("abcdefgh"), &m.signature("abcdefgh")).unwrap(),
            1.0
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Two sets built with a known overlap: the estimate must be within 4.5 standard
        /// errors of the true Jaccard similarity (a false alarm about once in 10^5 cases).
        #[test]
        fn jaccard_estimate_is_within_its_statistical_error(
            shared in 0usize..400,
            only_a in 0usize..400,
            only_b in 0usize..400,
            seed in any::<u64>(),
        ) {
            prop_assume!(shared + only_a + only_b > 0);
            let n = 256;
            let m = MinHasher::new(n, 5, seed);
            let mut rng = SplitMix64::new(seed ^ 0xabcdef);
            let common: Vec<u64> = (0..shared).map(|_| rng.next_u64()).collect();
            let a: Vec<u64> = common.iter().copied().chain((0..only_a).map(|_| rng.next_u64())).collect();
            let b: Vec<u64> = common.iter().copied().chain((0..only_b).map(|_| rng.next_u64())).collect();
            let truth = shared as f64 / (shared + only_a + only_b) as f64;
            let est = estimate_jaccard(&m.signature_of_hashes(a), &m.signature_of_hashes(b)).unwrap();
            let se = (truth * (1.0 - truth) / n as f64).sqrt();
            prop_assert!((est - truth).abs() <= 4.5 * se + 1e-9,
                "estimate {est} truth {truth} se {se}");
        }
    }
}

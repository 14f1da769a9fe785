//! Choosing the next token from a row of logits: greedy, temperature, top-k and top-p.

use burn::config::Config;
use rand::Rng;

use crate::error::{ModelError, Result};

/// How [`Gpt::generate`](crate::gpt::Gpt::generate) picks tokens. The defaults are greedy
/// decoding, as HF's `generate` with `do_sample=False`.
#[derive(Config, Debug)]
pub struct GenerateConfig {
    /// How many tokens to append to each prompt.
    #[config(default = 32)]
    pub max_new_tokens: usize,
    /// Sample from the distribution (true) or take the most likely token (false).
    #[config(default = false)]
    pub do_sample: bool,
    /// Logits are divided by this before sampling (< 1 sharpens, > 1 flattens).
    #[config(default = 1.0)]
    pub temperature: f64,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p` (nucleus
    /// sampling, Holtzman et al. 2019).
    pub top_p: Option<f64>,
    /// Seed of the sampler, a [`ChaCha8Rng`](rand_chacha::ChaCha8Rng) whose stream does not
    /// change across versions: the same seed gives the same tokens.
    #[config(default = 0)]
    pub seed: u64,
    /// Stop a sequence once it emits this token (the batch stops when all have).
    pub eos_token: Option<u32>,
}

impl GenerateConfig {
    /// Checks the sampling parameters.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(ModelError::config(format!(
                "temperature must be > 0, got {}",
                self.temperature
            )));
        }
        if self.top_k == Some(0) {
            return Err(ModelError::config("top_k must be >= 1"));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(ModelError::config(format!(
                "top_p must be in (0, 1], got {p}"
            )));
        }
        Ok(())
    }
}

/// Picks a token id from one row of logits (greedy: the first maximum; sampling: one draw from
/// `rng`). [`Gpt::generate`](crate::gpt::Gpt::generate) passes a seeded
/// [`ChaCha8Rng`](rand_chacha::ChaCha8Rng).
pub fn sample_token(logits: &[f32], config: &GenerateConfig, rng: &mut impl Rng) -> u32 {
    if !config.do_sample {
        return argmax(logits) as u32;
    }
    // (logit/temperature, token), most likely first.
    let mut candidates: Vec<(f64, u32)> = logits
        .iter()
        .zip(0u32..)
        .map(|(&l, token)| (l as f64 / config.temperature, token))
        .collect();
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
    if let Some(k) = config.top_k {
        candidates.truncate(k.max(1));
    }
    let max = candidates[0].0;
    let mut probs: Vec<f64> = candidates.iter().map(|(l, _)| (l - max).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(top_p) = config.top_p {
        // Keep tokens until the mass before them reaches top_p (HF: the first token always stays).
        let mut mass = 0.0;
        let keep = probs
            .iter()
            .take_while(|&&p| {
                let before = mass;
                mass += p;
                before < top_p
            })
            .count()
            .max(1);
        candidates.truncate(keep);
        probs.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let mut u: f64 = rng.random();
    for (p, (_, token)) in probs.iter().zip(&candidates) {
        if u < *p {
            return *token;
        }
        u -= p;
    }
    candidates[candidates.len() - 1].1
}

/// Index of the largest value; the first one on ties, as `torch.argmax`.
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let config = GenerateConfig::new();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(sample_token(&[0.1, 3.0, 3.0, -1.0], &config, &mut rng), 1);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let config = GenerateConfig::new()
            .with_do_sample(true)
            .with_top_k(Some(1));
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..50 {
            assert_eq!(sample_token(&[0.5, 0.2, 2.0, 1.9], &config, &mut rng), 2);
        }
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Probabilities ~[0.64, 0.24, 0.09, 0.03]: top_p 0.8 keeps the first two tokens only.
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let config = GenerateConfig::new()
            .with_do_sample(true)
            .with_top_p(Some(0.8));
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut seen = [0usize; 4];
        for _ in 0..2000 {
            seen[sample_token(&logits, &config, &mut rng) as usize] += 1;
        }
        assert_eq!(seen[2] + seen[3], 0, "{seen:?}");
        assert!(seen[0] > seen[1] && seen[1] > 0, "{seen:?}");
    }

    #[test]
    fn sampling_follows_the_softmax() {
        let logits = [0.0f32, (3.0f32).ln()];
        let config = GenerateConfig::new().with_do_sample(true);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let ones = (0..20_000)
            .filter(|_| sample_token(&logits, &config, &mut rng) == 1)
            .count();
        let frac = ones as f64 / 20_000.0;
        assert!((frac - 0.75).abs() < 0.02, "{frac}");
    }

    /// The sampler's stream is ChaCha8's, which rand_chacha keeps fixed across versions (rand's
    /// `StdRng` does not): these draws, recorded once, must never change.
    #[test]
    fn seeded_draws_are_stable_across_versions() {
        let uniform = [0.0f32; 10];
        let config = GenerateConfig::new().with_do_sample(true);
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let draws: Vec<u32> = (0..12)
            .map(|_| sample_token(&uniform, &config, &mut rng))
            .collect();
        assert_eq!(draws, [6, 9, 4, 6, 2, 1, 3, 8, 7, 2, 5, 9]);
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(
            GenerateConfig::new()
                .with_temperature(0.0)
                .validate()
                .is_err()
        );
        assert!(
            GenerateConfig::new()
                .with_top_p(Some(1.5))
                .validate()
                .is_err()
        );
        assert!(
            GenerateConfig::new()
                .with_top_k(Some(0))
                .validate()
                .is_err()
        );
    }
}

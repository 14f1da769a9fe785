//! Linear warmup from zero, then cosine decay: the schedule of GPT-3 and nanoGPT.

use std::f64::consts::PI;

/// The learning rate at `step` (0-based): `peak·(step+1)/warmup` during the first `warmup`
/// steps, then a half cosine from `peak` down to `min_lr` at `total` steps, and `min_lr` after.
pub fn warmup_cosine(step: usize, warmup: usize, total: usize, peak: f64, min_lr: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    if step >= total || total <= warmup {
        return min_lr;
    }
    let progress = (step - warmup) as f64 / (total - warmup) as f64;
    min_lr + 0.5 * (peak - min_lr) * (1.0 + (PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_decays_to_the_floor() {
        let lr = |s| warmup_cosine(s, 10, 110, 1.0, 0.1);
        assert!((lr(0) - 0.1).abs() < 1e-12);
        assert!((lr(9) - 1.0).abs() < 1e-12);
        assert!((lr(10) - 1.0).abs() < 1e-12);
        assert!((lr(60) - 0.55).abs() < 1e-12, "midpoint is halfway");
        assert!((lr(110) - 0.1).abs() < 1e-12);
        let mut previous = f64::INFINITY;
        for s in 10..110 {
            assert!(lr(s) <= previous && lr(s) >= 0.1);
            previous = lr(s);
        }
    }
}

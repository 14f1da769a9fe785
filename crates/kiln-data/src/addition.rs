//! The 3-digit addition task of kiln's main job, generated in code.
//!
//! Each example is `aaa+bbb=` followed by the 4-digit sum with its digits reversed (`9750` for
//! 579), which lets a left-to-right model produce the carry digit by digit, the way one adds by
//! hand. About 2% of the million pairs are held out, chosen by a fixed hash so the split never
//! changes; held-out accuracy is exact match on problems the model never saw.

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::{Dataset, DatasetError};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::DataError;
use crate::batch::{IGNORE_INDEX, LmBatch};

/// Token id of `+`.
pub const PLUS: u32 = 10;
/// Token id of `=`.
pub const EQUALS: u32 = 11;
/// Digits 0-9, `+` and `=`.
pub const VOCAB_SIZE: usize = 12;
/// `aaa+bbb=`.
pub const PROMPT_LEN: usize = 8;
/// The reversed 4-digit sum.
pub const ANSWER_LEN: usize = 4;
/// The model's context: the prompt and all answer digits but the last.
pub const SEQ_LEN: usize = PROMPT_LEN + ANSWER_LEN - 1;

/// One problem, `a + b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdditionProblem {
    /// The first operand, `0..1000`.
    pub a: usize,
    /// The second operand, `0..1000`.
    pub b: usize,
}

impl AdditionProblem {
    /// Whether this pair belongs to the held-out split (about 2% of pairs, by a fixed hash).
    pub fn is_held_out(self) -> bool {
        let mut x = (self.a * 1000 + self.b) as u64 ^ 0x9E37_79B9_7F4A_7C15;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (x ^ (x >> 31)).is_multiple_of(50)
    }

    /// `a+b=` as tokens.
    pub fn prompt(self) -> Vec<u32> {
        let mut tokens = digits(self.a, 3);
        tokens.push(PLUS);
        tokens.extend(digits(self.b, 3));
        tokens.push(EQUALS);
        tokens
    }

    /// The answer digits, least significant first.
    pub fn answer(self) -> Vec<u32> {
        let mut d = digits(self.a + self.b, ANSWER_LEN);
        d.reverse();
        d
    }

    /// Whether a generated sequence (prompt followed by at least [`ANSWER_LEN`] tokens) holds
    /// the right answer.
    pub fn is_solved_by(self, generated: &[u32]) -> bool {
        generated.get(PROMPT_LEN..PROMPT_LEN + ANSWER_LEN) == Some(&self.answer()[..])
    }
}

fn digits(n: usize, len: usize) -> Vec<u32> {
    (0..len)
        .rev()
        .map(|i| (n / 10usize.pow(i as u32) % 10) as u32)
        .collect()
}

/// One split of the addition task as a Burn [`Dataset`], in a fixed order (shuffle it with
/// the loader or the trainer).
#[derive(Clone, Debug)]
pub struct AdditionDataset {
    problems: Vec<AdditionProblem>,
}

impl AdditionDataset {
    /// The training split: every pair that is not held out (about 980,000).
    pub fn train() -> Self {
        Self::split(false)
    }

    /// The held-out split (about 20,000 pairs).
    pub fn held_out() -> Self {
        Self::split(true)
    }

    fn split(held_out: bool) -> Self {
        let problems = (0..1000)
            .flat_map(|a| (0..1000).map(move |b| AdditionProblem { a, b }))
            .filter(|p| p.is_held_out() == held_out)
            .collect();
        Self { problems }
    }

    /// The problems of this split, in order.
    pub fn problems(&self) -> &[AdditionProblem] {
        &self.problems
    }
}

impl Dataset<AdditionProblem> for AdditionDataset {
    fn get(&self, index: usize) -> Result<AdditionProblem, DatasetError> {
        self.problems.get(index).copied().ok_or_else(|| {
            DatasetError::new(DataError::IndexOutOfRange {
                index,
                len: self.problems.len(),
            })
        })
    }

    fn len(&self) -> usize {
        self.problems.len()
    }
}

/// Turns problems into next-token batches with loss only on the answer digits (the prompt
/// digits are random: there is nothing to learn there).
#[derive(Clone, Copy, Debug, Default)]
pub struct AdditionBatcher;

impl Batcher<AdditionProblem, LmBatch> for AdditionBatcher {
    fn batch(&self, items: Vec<AdditionProblem>, device: &Device) -> LmBatch {
        let batch = items.len();
        let mut inputs = Vec::with_capacity(batch * SEQ_LEN);
        let mut targets = Vec::with_capacity(batch * SEQ_LEN);
        for problem in items {
            let mut seq = problem.prompt();
            seq.extend(problem.answer());
            for (i, &next) in seq[1..].iter().enumerate() {
                let is_answer = i + 1 >= PROMPT_LEN;
                targets.push(if is_answer { next as i64 } else { IGNORE_INDEX });
            }
            inputs.extend(seq[..SEQ_LEN].iter().map(|&t| t as i64));
        }
        LmBatch {
            inputs: Tensor::<2, Int>::from_data(TensorData::new(inputs, [batch, SEQ_LEN]), device),
            targets: Tensor::<2, Int>::from_data(
                TensorData::new(targets, [batch, SEQ_LEN]),
                device,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_are_disjoint_and_cover_every_pair() {
        let (train, held_out) = (AdditionDataset::train(), AdditionDataset::held_out());
        assert_eq!(train.len() + held_out.len(), 1_000_000);
        assert!(
            (15_000..25_000).contains(&held_out.len()),
            "{}",
            held_out.len()
        );
        assert!(held_out.problems().iter().all(|p| p.is_held_out()));
        assert!(train.problems().iter().all(|p| !p.is_held_out()));
    }

    #[test]
    fn answer_is_the_reversed_sum() {
        let p = AdditionProblem { a: 123, b: 456 };
        assert_eq!(p.prompt(), vec![1, 2, 3, PLUS, 4, 5, 6, EQUALS]);
        assert_eq!(p.answer(), vec![9, 7, 5, 0]);
        let mut generated = p.prompt();
        generated.extend([9, 7, 5, 0]);
        assert!(p.is_solved_by(&generated));
        generated[PROMPT_LEN] = 8;
        assert!(!p.is_solved_by(&generated));
    }

    #[test]
    fn batches_take_loss_only_on_the_answer() {
        let device = Device::flex();
        let batch = AdditionBatcher.batch(vec![AdditionProblem { a: 999, b: 1 }], &device);
        let targets: Vec<i64> = batch
            .targets
            .to_data()
            .convert::<i64>()
            .try_into_vec()
            .unwrap();
        let inputs: Vec<i64> = batch
            .inputs
            .to_data()
            .convert::<i64>()
            .try_into_vec()
            .unwrap();
        assert_eq!(inputs, vec![9, 9, 9, 10, 0, 0, 1, 11, 0, 0, 0]);
        let i = IGNORE_INDEX;
        assert_eq!(targets, vec![i, i, i, i, i, i, i, 0, 0, 0, 1]);
        assert_eq!(batch.target_tokens(), 4);
    }
}

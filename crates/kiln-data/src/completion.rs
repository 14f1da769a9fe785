//! Prompt–completion pairs for supervised fine-tuning: a JSONL file of
//! `{"prompt": "...", "completion": "..."}` lines, tokenized, trained with the loss on the
//! completion's tokens only (TRL's `completion_only_loss`).
//!
//! Each pair is one sequence, `prompt ‖ completion ‖ end-of-text` (the tokenizer's document
//! separator, when it has one, so that the model learns to stop), cut to `max_len + 1`
//! tokens from the end of the completion; a pair whose prompt alone fills the window has no
//! completion token left to train on and is skipped (counted in [`CompletionReport`]). Batches
//! are right-padded: under a causal mask, padding after a sequence changes none of its
//! positions, and padded targets are [`IGNORE_INDEX`](crate::IGNORE_INDEX).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::{Dataset, DatasetError};
use burn::tensor::Device;

use crate::error::DataError;
use crate::limits::DOCUMENT_BYTES;
use crate::packed_lm::next_token_batch;
use crate::tokenizer::Tokenizer;
use kiln_base::batch::LmBatch;

/// One tokenized pair: the tokens and where the completion starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompletionItem {
    /// `prompt ‖ completion ‖ end-of-text`, at most `max_len + 1` tokens.
    pub tokens: Vec<u32>,
    /// The index of the completion's first token (the prompt's length).
    pub completion_start: usize,
}

/// What reading a file of pairs kept and skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompletionReport {
    /// Pairs kept.
    pub kept: usize,
    /// Pairs whose completion was cut to fit the window.
    pub truncated: usize,
    /// Pairs skipped: the prompt fills the window, or the completion is empty.
    pub skipped: usize,
}

/// Tokenized prompt–completion pairs.
#[derive(Clone, Debug, Default)]
pub struct CompletionDataset {
    items: Vec<CompletionItem>,
}

impl CompletionDataset {
    /// A fingerprint of the pairs (the SHA-256 of every item's tokens and completion start),
    /// for a checkpoint to recognise its data by.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for item in &self.items {
            hash.update((item.tokens.len() as u64).to_le_bytes());
            hash.update((item.completion_start as u64).to_le_bytes());
            for t in &item.tokens {
                hash.update(t.to_le_bytes());
            }
        }
        hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads `path` (JSONL, one object with string fields `prompt` and `completion` per line;
    /// blank lines are skipped), tokenized with `tokenizer`, each sequence at most
    /// `max_len + 1` tokens. A line longer than [`DOCUMENT_BYTES`], not UTF-8, not such an
    /// object, or a file without a pair is an error naming the file and line.
    pub fn from_jsonl(
        path: impl AsRef<Path>,
        tokenizer: &Tokenizer,
        max_len: usize,
    ) -> Result<(Self, CompletionReport), DataError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let (file, _) = kiln_base::files::open_regular(path)?;
        if max_len < 2 {
            return Err(DataError::InvalidConfig(format!(
                "a window of {max_len} tokens leaves no room for a prompt and a completion"
            )));
        }
        let end = tokenizer.document_separator();
        let mut reader = BufReader::new(file);
        let mut report = CompletionReport::default();
        let mut items = Vec::new();
        let mut line = Vec::new();
        for number in 1.. {
            line.clear();
            let read = (&mut reader)
                .take(DOCUMENT_BYTES.max().saturating_add(1))
                .read_until(b'\n', &mut line)
                .map_err(|e| DataError::Io {
                    path: name.clone(),
                    message: e.to_string(),
                })?;
            if read == 0 {
                break;
            }
            if line.len() as u64 > DOCUMENT_BYTES.max() && line.last() != Some(&b'\n') {
                return Err(DataError::MalformedJson {
                    path: name,
                    line: number,
                    message: format!(
                        "longer than {} bytes (KILN_LIMIT_DOCUMENT_BYTES raises it)",
                        DOCUMENT_BYTES.max()
                    ),
                });
            }
            let text = std::str::from_utf8(&line).map_err(|_| DataError::InvalidUtf8 {
                path: name.clone(),
                line: number,
            })?;
            if text.trim().is_empty() {
                continue;
            }
            let bad = |message: String| DataError::MalformedJson {
                path: name.clone(),
                line: number,
                message,
            };
            let json: serde_json::Value =
                serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
            let field = |key: &str| {
                json.get(key)
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| bad(format!("no string field `{key}`")))
            };
            let (prompt, completion) = (field("prompt")?, field("completion")?);
            let mut tokens = tokenizer.encode(prompt)?;
            let completion_start = tokens.len();
            tokens.extend(tokenizer.encode(completion)?);
            tokens.extend(end);
            if tokens.len() > max_len + 1 {
                tokens.truncate(max_len + 1);
                report.truncated += 1;
            }
            // At least one target must be a completion token: position `start − 1` predicts it.
            if completion_start == 0 || completion_start >= tokens.len() {
                report.skipped += 1;
                continue;
            }
            items.push(CompletionItem {
                tokens,
                completion_start,
            });
        }
        report.kept = items.len();
        if items.is_empty() {
            return Err(DataError::InvalidConfig(format!(
                "{name}: no prompt–completion pair to train on ({} skipped: an empty prompt or completion, or a prompt of {max_len} tokens or more)",
                report.skipped
            )));
        }
        Ok((Self { items }, report))
    }

    /// Pairs from items already tokenized.
    pub fn from_items(items: Vec<CompletionItem>) -> Self {
        Self { items }
    }

    /// The last `fraction` of the pairs as a held-out set, the rest for training (at least
    /// one pair each when there are two or more).
    pub fn split_off(mut self, fraction: f64) -> (Self, Self) {
        let n = self.items.len();
        let held = ((n as f64 * fraction.clamp(0.0, 1.0)).round() as usize)
            .clamp(usize::from(n > 1), n.saturating_sub(1));
        let tail = self.items.split_off(n - held);
        (self, Self { items: tail })
    }
}

impl Dataset<CompletionItem> for CompletionDataset {
    fn get(&self, index: usize) -> Result<CompletionItem, DatasetError> {
        self.items.get(index).cloned().ok_or_else(|| {
            DatasetError::new(DataError::IndexOutOfRange {
                index,
                len: self.items.len(),
            })
        })
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

/// Pairs to next-token batches: inputs all tokens but the last, targets the next token where it
/// belongs to the completion, [`IGNORE_INDEX`](crate::IGNORE_INDEX) over the prompt and the right padding.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompletionBatcher;

impl Batcher<CompletionItem, LmBatch> for CompletionBatcher {
    fn batch(&self, items: Vec<CompletionItem>, device: &Device) -> LmBatch {
        let rows = items
            .iter()
            .map(|item| (item.tokens.as_slice(), item.completion_start));
        next_token_batch(rows, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_base::batch::IGNORE_INDEX;

    fn tokenizer() -> Tokenizer {
        Tokenizer::char_level("abcdefghij: ").unwrap()
    }

    fn write(lines: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, lines.as_bytes()).unwrap();
        file
    }

    #[test]
    fn the_loss_is_on_the_completion_only_and_padding_is_ignored() {
        let file = write(
            "{\"prompt\": \"ab:\", \"completion\": \"cd\"}\n\n{\"prompt\": \"a\", \"completion\": \"bcdef\"}\n",
        );
        let tok = tokenizer();
        let (data, report) = CompletionDataset::from_jsonl(file.path(), &tok, 16).unwrap();
        assert_eq!(
            report,
            CompletionReport {
                kept: 2,
                truncated: 0,
                skipped: 0
            }
        );
        let batch = CompletionBatcher.batch(
            vec![data.get(0).unwrap(), data.get(1).unwrap()],
            &Device::flex(),
        );
        let targets: Vec<i64> = batch
            .targets
            .into_data()
            .convert::<i64>()
            .try_to_vec()
            .unwrap();
        let id = |s: &str| tok.encode(s).unwrap()[0] as i64;
        let i = IGNORE_INDEX;
        // Row 0: "ab:cd" (5 tokens, 4 inputs) padded to 5 inputs; targets only for c, d.
        assert_eq!(&targets[..5], &[i, i, id("c"), id("d"), i]);
        // Row 1: "abcdef": every target from b on.
        assert_eq!(
            &targets[5..],
            &[id("b"), id("c"), id("d"), id("e"), id("f")]
        );
    }

    #[test]
    fn long_pairs_are_cut_and_prompts_that_fill_the_window_skipped() {
        let file = write(
            "{\"prompt\": \"abc\", \"completion\": \"defghij\"}\n{\"prompt\": \"abcdefgh\", \"completion\": \"ij\"}\n",
        );
        let (data, report) = CompletionDataset::from_jsonl(file.path(), &tokenizer(), 5).unwrap();
        assert_eq!(
            report,
            CompletionReport {
                kept: 1,
                truncated: 2,
                skipped: 1
            }
        );
        assert_eq!(data.get(0).unwrap().tokens.len(), 6);
    }

    #[test]
    fn bad_lines_are_errors_naming_the_line() {
        for (text, needle) in [
            ("{\"prompt\": \"a\"}\n", "completion"),
            ("{\"prompt\": \"a\", \"completion\": 3}\n", "completion"),
            ("not json\n", ":1:"),
        ] {
            let file = write(text);
            let err = CompletionDataset::from_jsonl(file.path(), &tokenizer(), 8).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
    }
}

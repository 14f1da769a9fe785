//! The ceilings on model sizes, checked by [`GptConfig::validate`](crate::gpt::GptConfig::validate)
//! and [`BertConfig::validate`](crate::bert::BertConfig::validate) before anything is allocated,
//! so a config of a HuggingFace folder, a kiln model folder or a flag cannot ask for a model
//! that aborts the process. Each is raised with `KILN_LIMIT_<NAME>=N` (see
//! [`kiln_base::limits`]).

use kiln_base::limits::Limit;

/// Vocabulary size (also segment vocabularies and class counts): 2^24 = 16.7M entries, 64×
/// the largest vocabularies in use (Gemma's 256k).
pub const VOCAB: Limit = Limit::new("VOCAB", 1 << 24);

/// Context length (`block_size`, `max_position_embeddings`): 2^20 = 1M positions, 8× the
/// longest context of current open models.
pub const CONTEXT: Limit = Limit::new("CONTEXT", 1 << 20);

/// Number of Transformer blocks: 1024, 8× the deepest published dense models (~126 layers).
pub const LAYERS: Limit = Limit::new("LAYERS", 1024);

/// Model and feed-forward widths (`d_model`, `d_ff`, `hidden_size`, `intermediate_size`):
/// 2^17 = 131 072, above the feed-forward width of the largest open models (~53k).
pub const WIDTH: Limit = Limit::new("WIDTH", 1 << 17);

/// Parameters of one model (with its rotary tables), counted in u128 from the config before it
/// is built: 2^32 ≈ 4.3 billion. Training one with Adam in f32 (weights, gradients, two
/// moments: 16 bytes a parameter) fills an 80 GB accelerator; a user loading a larger model
/// for inference raises it.
pub const PARAMS: Limit = Limit::new("PARAMS", 1 << 32);

/// Bytes of a `config.json` (HuggingFace or kiln's own), read whole: 16 MiB. Real ones are a
/// few kB (a large `id2label` map some hundred kB).
pub const CONFIG_BYTES: Limit = Limit::new("CONFIG_BYTES", 16 << 20);

/// The sum of `terms`, each a product of sizes, in u128 (saturating: it cannot wrap around to a
/// small number before [`PARAMS`] sees it).
pub(crate) fn count(terms: &[&[usize]]) -> u128 {
    terms
        .iter()
        .map(|factors| {
            factors
                .iter()
                .try_fold(1u128, |acc, &f| acc.checked_mul(f as u128))
                .unwrap_or(u128::MAX)
        })
        .fold(0u128, u128::saturating_add)
}

/// Reads a config file of at most [`CONFIG_BYTES`] as text.
pub(crate) fn read_config_text(file: &std::path::Path) -> crate::Result<String> {
    let meta = std::fs::metadata(file).map_err(|e| crate::ModelError::io(file, e))?;
    CONFIG_BYTES.check(
        &format!("the size of {} in bytes", file.display()),
        meta.len(),
    )?;
    std::fs::read_to_string(file).map_err(|e| crate::ModelError::io(file, e))
}

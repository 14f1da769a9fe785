//! The ceilings on model sizes, checked by [`GptConfig::validate`](crate::gpt::GptConfig::validate)
//! and [`BertConfig::validate`](crate::bert::BertConfig::validate) before anything is allocated,
//! so a config of a HuggingFace folder, a kiln model folder or a flag cannot ask for a model
//! that aborts the process. Each is raised with `KILN_LIMIT_<NAME>=N` (see
//! [`kiln_base::limits`]).

use kiln_base::limits::Limit;
/// The ceilings kiln-model shares with the other crates: [`VOCAB`] (also type vocabularies and
/// class counts), [`CONTEXT`] (`block_size`, `max_position_embeddings`) and [`TEXT_FILE_BYTES`]
/// (a `config.json` or safetensors index, read whole).
pub use kiln_base::limits::{CONTEXT, TEXT_FILE_BYTES, VOCAB};

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

/// Reads a config file of at most [`TEXT_FILE_BYTES`] as text.
pub(crate) fn read_config_text(file: &std::path::Path) -> crate::Result<String> {
    let bytes = kiln_base::limits::read_bounded(file, &TEXT_FILE_BYTES)?;
    String::from_utf8(bytes).map_err(|e| crate::ModelError::format(file, e))
}

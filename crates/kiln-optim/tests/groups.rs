//! Parameter groups on kiln's real models: the default no-decay rule picks exactly the biases,
//! norm weights and position embeddings of Gpt and Bert; rules override by path.

use burn::tensor::Device;
use kiln_model::bert::BertConfig;
use kiln_model::gpt::GptConfig;
use kiln_optim::groups::resolve_groups;
use kiln_optim::{
    AdamWConfig, DEFAULT_NO_DECAY, GroupRule, GroupSettings, LambConfig, OptimError,
    Regularization, param_paths,
};

fn no_decay() -> Vec<String> {
    DEFAULT_NO_DECAY.iter().map(|s| s.to_string()).collect()
}

fn excluded(paths_and_settings: &[(String, GroupSettings)]) -> Vec<&str> {
    paths_and_settings
        .iter()
        .filter(|(_, s)| s.regularization.is_none())
        .map(|(p, _)| p.as_str())
        .collect()
}

#[test]
fn gpt_default_groups_exclude_biases_norms_and_positions() {
    let device = Device::flex();
    let gpt = GptConfig::new(11)
        .with_block_size(8)
        .with_n_layer(2)
        .with_n_head(2)
        .with_d_model(8)
        .with_tie_embeddings(false)
        .init(&device)
        .unwrap();
    let paths = param_paths(&gpt);
    println!("{paths:#?}");
    let base = GroupSettings::new(Regularization::decoupled(0.1));
    let resolved = resolve_groups(&gpt, &base, &no_decay(), &[]).unwrap();
    for (path, settings) in &resolved {
        let is_bias = path.ends_with(".bias") || path.ends_with(".beta");
        let is_norm = path.contains("norm");
        let is_position = path == "position_embedding.weight";
        let should_skip = is_bias || is_norm || is_position;
        assert_eq!(
            settings.regularization.is_none(),
            should_skip,
            "{path}: decay {:?}",
            settings.regularization
        );
        assert_eq!(settings.layer_adaptation, !should_skip, "{path}");
    }
    // The paths kiln's modules produce, checked literally so a rename shows up here.
    let skipped = excluded(&resolved);
    for expected in [
        "position_embedding.weight",
        "blocks.0.attn_norm.gamma",
        "blocks.0.attn_norm.beta",
        "blocks.1.ffn_norm.gamma",
        "final_norm.gamma",
        "final_norm.beta",
    ] {
        assert!(skipped.contains(&expected), "{expected} not in {skipped:?}");
    }
    for decayed in ["token_embedding.weight", "lm_head.weight"] {
        assert!(paths.iter().any(|p| p == decayed), "{decayed} in {paths:?}");
        assert!(!skipped.contains(&decayed));
    }
}

#[test]
fn bert_default_groups_exclude_biases_norms_and_positions() {
    let device = Device::flex();
    let bert = BertConfig::new(13)
        .with_hidden_size(8)
        .with_num_hidden_layers(1)
        .with_num_attention_heads(2)
        .with_intermediate_size(16)
        .with_max_position_embeddings(8)
        .init_masked_lm(&device)
        .unwrap();
    let paths = param_paths(&bert);
    println!("{paths:#?}");
    let base = GroupSettings::new(Regularization::decoupled(0.1));
    let resolved = resolve_groups(&bert, &base, &no_decay(), &[]).unwrap();
    let skipped = excluded(&resolved);
    for expected in [
        "bert.embeddings.position.weight",
        "bert.embeddings.norm.gamma",
        "bert.embeddings.norm.beta",
        "transform_norm.gamma",
        "decoder_bias",
    ] {
        assert!(skipped.contains(&expected), "{expected} not in {skipped:?}");
    }
    for (path, settings) in &resolved {
        let should_skip = path.ends_with("bias")
            || path.ends_with(".beta")
            || path.contains("norm")
            || path.contains("position");
        assert_eq!(settings.regularization.is_none(), should_skip, "{path}");
    }
    assert!(!skipped.contains(&"bert.embeddings.word.weight"));
    assert!(!skipped.contains(&"bert.embeddings.token_type.weight"));
}

#[test]
fn rules_override_field_by_field_and_must_match_something() {
    let device = Device::flex();
    let gpt = GptConfig::new(11)
        .with_block_size(8)
        .with_n_layer(2)
        .with_n_head(2)
        .with_d_model(8)
        .init(&device)
        .unwrap();
    let base = GroupSettings::new(Regularization::decoupled(0.1));
    let rules = [GroupRule::new(r"^blocks\.0\.".into()).with_lr_multiplier(Some(0.5))];
    let resolved = resolve_groups(&gpt, &base, &no_decay(), &rules).unwrap();
    for (path, settings) in &resolved {
        let expected = if path.starts_with("blocks.0.") {
            0.5
        } else {
            1.0
        };
        assert_eq!(settings.lr_multiplier, expected, "{path}");
    }
    // The rule only set the multiplier: blocks.0's norms still skip decay.
    let norm = resolved
        .iter()
        .find(|(p, _)| p == "blocks.0.attn_norm.gamma")
        .unwrap();
    assert!(norm.1.regularization.is_none());

    let typo = AdamWConfig::new()
        .with_groups(vec![
            GroupRule::new("blokcs".into()).with_lr_multiplier(Some(0.1)),
        ])
        .init(&gpt);
    assert!(matches!(
        typo,
        Err(OptimError::PatternMatchesNothing { .. })
    ));
    let bad_regex = LambConfig::new()
        .with_groups(vec![GroupRule::new("(".into())])
        .init(&gpt);
    assert!(matches!(bad_regex, Err(OptimError::InvalidPattern { .. })));
    let negative = AdamWConfig::new()
        .with_groups(vec![
            GroupRule::new("token_embedding".into()).with_lr_multiplier(Some(-1.0)),
        ])
        .init(&gpt);
    assert!(matches!(
        negative,
        Err(OptimError::InvalidHyperparameter {
            name: "lr_multiplier",
            ..
        })
    ));
}

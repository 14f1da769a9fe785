//! Nothing silent, nothing lost (issue 26), kiln-model's cases: a loader uses every tensor it
//! is given or refuses (a config that describes fewer layers than its weights hold, or no bias
//! over weights with biases, is an error naming the tensor, in kiln's folders and in
//! HuggingFace's); a save never replaces files kiln did not write. (Segment ids out of range
//! are named in `bad_input.rs`, with the other ids.)

use std::path::Path;

use burn::tensor::Device;
use kiln_base::OutputDir;
use kiln_model::ModelError;
use kiln_model::gpt::{Gpt, GptConfig};
use kiln_model::hf::{HfLoadConfig, load_pretrained, load_pretrained_with, save_pretrained};
use kiln_model::store::{load_model, save_model};
use serde_json::Value;

fn config() -> GptConfig {
    GptConfig::new(11)
        .with_block_size(8)
        .with_n_layer(2)
        .with_n_head(2)
        .with_d_model(8)
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join("config.json");
    let mut value: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(value.as_object_mut().unwrap());
    std::fs::write(&path, value.to_string()).unwrap();
}

#[test]
fn a_kiln_folder_whose_config_describes_less_than_its_weights_is_refused() {
    let device = Device::flex();
    let gpt = config().init(&device).unwrap();
    let cases: [(&str, Value, &str); 2] = [
        ("n_layer", Value::from(1), "blocks.1."),
        ("bias", Value::from(false), ".bias"),
    ];
    for (field, value, named) in cases {
        let dir = tempfile::tempdir().unwrap();
        save_model(&gpt, &config(), dir.path()).unwrap();
        edit_config(dir.path(), |c| {
            c.insert(field.into(), value.clone());
        });
        let err = load_model::<GptConfig>(dir.path(), &device).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("no place for"), "{field}: {message}");
        assert!(message.contains(named), "{field}: {message}");
    }
}

#[test]
fn an_hf_folder_with_a_layer_its_config_does_not_have_is_refused() {
    let device = Device::flex();
    let gpt: Gpt = config().init(&device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_pretrained(&gpt, dir.path()).unwrap();
    assert!(load_pretrained(dir.path(), &device).is_ok());
    edit_config(dir.path(), |c| {
        c.insert("n_layer".into(), Value::from(1));
    });
    match load_pretrained(dir.path(), &device) {
        Err(ModelError::UnexpectedTensor { name, .. }) => {
            assert!(name.contains("h.1."), "{name}")
        }
        Err(e) => panic!("expected UnexpectedTensor, got {e}"),
        Ok(_) => panic!("a one-layer config loaded two layers' weights"),
    }
    // Left on purpose, by name: the first layer alone loads.
    let names: Vec<String> = safetensors::SafeTensors::deserialize(
        &std::fs::read(dir.path().join("model.safetensors")).unwrap(),
    )
    .unwrap()
    .names()
    .into_iter()
    .filter(|n| n.contains("h.1."))
    .map(|n| n.to_string())
    .collect();
    let config = HfLoadConfig::new().with_ignore_tensors(names);
    assert!(load_pretrained_with(dir.path(), &device, &config).is_ok());
}

#[test]
fn a_save_never_replaces_files_kiln_did_not_write() {
    let device = Device::flex();
    let gpt = config().init(&device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A user's folder with a config.json of their own.
    std::fs::write(dir.path().join("config.json"), "{\"mine\": true}").unwrap();
    for result in [
        save_model(&gpt, &config(), dir.path()).map(|_| ()),
        save_pretrained(&gpt, dir.path()),
    ] {
        let message = result.unwrap_err().to_string();
        assert!(message.contains("did not write"), "{message}");
        assert!(message.contains("config.json"), "{message}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("config.json")).unwrap(),
        "{\"mine\": true}"
    );
    // Forced, kiln writes its files (replacing the same-named one) and leaves the rest.
    std::fs::write(dir.path().join("notes.txt"), "keep").unwrap();
    save_model(&gpt, &config(), OutputDir::forced(dir.path())).unwrap();
    assert!(load_model::<GptConfig>(dir.path(), &device).is_ok());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(),
        "keep"
    );
    // kiln may save again over what it wrote, still refusing the user's file.
    let again = save_model(&gpt, &config(), dir.path()).unwrap_err();
    assert!(again.to_string().contains("notes.txt"), "{again}");
    let own = tempfile::tempdir().unwrap();
    save_model(&gpt, &config(), own.path()).unwrap();
    save_model(&gpt, &config(), own.path()).unwrap();
}

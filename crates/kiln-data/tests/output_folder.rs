//! `prepare_corpus` writes only into folders that are new, empty, or hold its own earlier
//! output (issue 26): a folder with a user's files is refused, naming them, unless forced, and
//! forced, the user's files are left alone. A device as input is refused, not read forever.

use std::path::Path;

use kiln_data::DataError;
use kiln_data::prepare::{PrepareConfig, TokenizerSource, prepare_corpus};

fn corpus(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("corpus.txt");
    let docs: Vec<String> = (0..60)
        .map(|i| {
            format!(
                "document {i} tells of the river {} and the mountain {} beyond the valley {}",
                i * 7,
                i * 13,
                i * 31
            )
        })
        .collect();
    std::fs::write(&path, docs.join("\n\n")).unwrap();
    path
}

fn config(input: &Path, out: &Path) -> PrepareConfig {
    let mut config = PrepareConfig::new(vec![input.to_path_buf()], out);
    config.tokenizer = TokenizerSource::TrainBpe(300);
    config.val_fraction = 0.2;
    config
}

#[test]
fn an_output_folder_with_a_users_files_is_refused_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let input = corpus(dir.path());
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("meta.json"), "my own meta").unwrap();
    std::fs::write(out.join("thesis.tex"), "keep").unwrap();
    let err = prepare_corpus(&config(&input, &out)).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, DataError::File(_)), "{message}");
    assert!(
        message.contains("meta.json") && message.contains("thesis.tex"),
        "{message}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("meta.json")).unwrap(),
        "my own meta"
    );

    let mut forced = config(&input, &out);
    forced.force = true;
    prepare_corpus(&forced).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("thesis.tex")).unwrap(),
        "keep"
    );

    // Its own earlier output kiln replaces without being forced.
    let own = dir.path().join("own");
    prepare_corpus(&config(&input, &own)).unwrap();
    prepare_corpus(&config(&input, &own)).unwrap();
}

#[cfg(unix)]
#[test]
fn a_device_as_input_is_refused_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(Path::new("/dev/zero"), &dir.path().join("out"));
    config.strict = true;
    let err = prepare_corpus(&config).unwrap_err();
    assert!(err.to_string().contains("a device"), "{err}");
}
